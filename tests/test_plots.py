"""Plots: the dataset overview renders and marks non-identifiable factors; every figure states its
title, axes, n and the kind of its error bars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from sit_causal.experiments.report import (
    format_table,
    matched_correlation_figure,
    per_factor_recovery_figure,
    plot_dataset,
    plot_graph,
    theory_check_figure,
)
from sit_causal.sim.scm import SCMConfig, generate
from sit_causal.theory.graph import TaskFactorGraph


def test_plot_dataset_writes_a_png(tmp_path: Path) -> None:
    ds = generate(SCMConfig(n_factors=4, n_tasks=4, datasets_per_task=2, samples_per_dataset=100))
    fig = plot_dataset(ds, tmp_path / "d.png", factors=[0, 3])
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes) == 3


def test_plot_graph_marks_mixed_factors_red() -> None:
    from matplotlib.figure import Figure

    graph = TaskFactorGraph.from_matrix([[1, 1, 0], [0, 1, 1]])  # L2 ⊇ ... : L1 and L3 are contained in L2
    ax = Figure().subplots()
    plot_graph(graph, ax)
    colors = [label.get_color() for label in ax.get_xticklabels()]
    assert colors[0] == "tab:red" and colors[2] == "tab:red" and colors[1] != "tab:red"
    assert "fails" in ax.get_title()


# ---------------------------------------------------------------------- every figure readable without the code
def _results(seeds: int = 3, ident: tuple[bool, ...] = (True, True, False)) -> dict:
    """A minimal ``results.json`` of ``simulate``: two methods, ``seeds`` seeds, three factors."""
    rng = np.random.default_rng(0)
    names = [f"L{i + 1}" for i in range(len(ident))]
    rows = []
    for method in ("sit", "ivae"):
        for seed in range(seeds):
            corr = rng.uniform(0.5, 1.0, size=len(names))
            mat = np.diag(corr) + 0.05
            per_factor = [{"factor": n, "matched_corr": float(c)} for n, c in zip(names, corr, strict=True)]
            rows.append({"method": method, "seed": seed, "matched_correlation_matrix": mat.tolist(),
                         "per_factor": per_factor})
    return {"graph": {"factors": names}, "identifiable_predicted": list(ident),
            "config": {"recovery_threshold": 0.9}, "results": rows}


def _draw(fig: Figure) -> None:
    """Lay ``fig`` out and draw it as :func:`sit_causal.plotting.save_figure` does (two passes, Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.canvas.draw()
    fig.canvas.draw()


def _inside(inner: Bbox, outer: Bbox, tol: float = 1.0) -> bool:
    return (inner.x0 >= outer.x0 - tol and inner.x1 <= outer.x1 + tol and inner.y0 >= outer.y0 - tol
            and inner.y1 <= outer.y1 + tol)


def _error_bars(ax: Axes) -> int:
    """Error-bar segments drawn on ``ax`` (by ``bar(yerr=...)`` or ``errorbar``)."""
    from matplotlib.container import BarContainer, ErrorbarContainer

    n = 0
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            n += sum(len(seg.get_segments()) for seg in c.lines[2])
        elif isinstance(c, BarContainer) and c.errorbar is not None:
            n += sum(len(seg.get_segments()) for seg in c.errorbar.lines[2])
    return n


def test_per_factor_recovery_legend_names_the_threshold_and_leaves_the_bars_free() -> None:
    fig = per_factor_recovery_figure(_results())
    ax = fig.axes[0]
    _draw(fig)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("threshold 0.9" in t for t in labels)
    assert any("not identifiable" in t for t in labels)
    assert any("sit (n = 3" in t for t in labels)
    # the legend sits beside the axes, so it covers no bar
    legend_box = ax.get_legend().get_window_extent()
    assert legend_box.x0 >= ax.get_window_extent().x1 - 1
    title = ax.get_title()
    assert "n = 3" in title and "sd" in title
    assert ax.get_xlabel() and ax.get_ylabel()
    assert _error_bars(ax) > 0


def test_per_factor_recovery_has_no_error_bars_for_one_seed() -> None:
    fig = per_factor_recovery_figure(_results(seeds=1))
    ax = fig.axes[0]
    assert _error_bars(ax) == 0
    assert "n = 1" in ax.get_title() and "no error bars" in ax.get_title()


def test_matched_correlation_says_which_seeds_it_averages() -> None:
    fig = matched_correlation_figure(_results(seeds=3))
    title = fig._suptitle.get_text()
    assert "seeds 0-2" in title and "n = 3" in title and "averaged" in title
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert all("n = 3" in ax.get_title() for ax in panels)
    colorbars = [ax for ax in fig.axes if not ax.get_title()]
    assert colorbars and "correlation" in colorbars[0].get_ylabel()
    _draw(fig)
    assert fig._suptitle.get_window_extent().y0 >= max(ax.title.get_window_extent().y1 for ax in panels)
    assert _inside(fig._suptitle.get_window_extent(), fig.bbox)


def test_theory_check_names_the_stage_and_the_score_of_every_number() -> None:
    scores = [0.95, 0.97, 0.6, 0.92, 0.5]
    predicted = [True, True, False, True, False]
    fig = theory_check_figure(scores, predicted, 0.701, 0.9, models=2,
                              stage1={"orthogonal": 0.999, "linear": 0.998})
    ax = fig.axes[0]
    _draw(fig)
    title = ax.get_title()
    assert "stage 2" in title and "0.701" in title and "n = 5 factors" in title and "2 trained models" in title
    assert "stage 1" in title and "0.999" in title and "0.998" in title
    assert title.index("stage 2") < title.index("0.701") < title.index("stage 1") < title.index("0.999")
    ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert ax.get_xlabel() and ax.get_ylabel()
    assert any("threshold 0.9" in t.get_text() for t in ax.get_legend().get_texts())


def test_format_table_says_what_the_plus_minus_is() -> None:
    entry = {"method": "sit", "n_seeds": 5, "time_s_mean": 1.0}
    for key in ("mcc_pearson", "mcc_spearman", "affine_r2", "graph_precision", "graph_recall"):
        entry[f"{key}_mean"], entry[f"{key}_sd"] = 0.9, 0.01
    last = format_table([entry]).splitlines()[-1]
    assert "sd" in last and "n = 5 seeds" in last and "not a confidence interval" in last


def _summary(n: int) -> dict:
    vals = [0.8 + 0.01 * i for i in range(n)]
    entry = {"values": vals, "mean": float(np.mean(vals)), "ci95": 0.02 if n > 1 else None}
    return {"methods": {m: {"acc/aligned": entry, "acc/flipped": entry} for m in ("vanilla", "sit")}}


def test_testbed_report_has_a_title_with_n_and_no_error_bars_for_one_seed(tmp_path: Path) -> None:
    from sit_nlp.testbed.report import plot_report

    one = plot_report(_summary(1), {"aligned": 1.0, "flipped": 1.0}, tmp_path / "r1.png")
    ax = one.axes[0]
    assert _error_bars(ax) == 0
    assert "n = 1" in ax.get_title() and "95 % CI" in ax.get_title()
    three = plot_report(_summary(3), {"aligned": 1.0, "flipped": 1.0}, tmp_path / "r3.png", title="testbed seed 0")
    ax = three.axes[0]
    assert _error_bars(ax) == 4
    assert ax.get_title().startswith("testbed seed 0") and "n = 3" in ax.get_title() and "95 % CI" in ax.get_title()
    assert (tmp_path / "r3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_testbed_map_colour_bar_is_labelled(tmp_path: Path) -> None:
    from sit_nlp.testbed.evaluation import plot_factor_maps

    m = {"xy": [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]], "task": ["a", "b", "a"], "spurious_value": [0.0, 1.0, 0.5]}
    fig = plot_factor_maps({"vanilla": m, "sit": m}, tmp_path / "map.png")
    bars = [c.colorbar for ax in fig.axes for c in ax.collections if getattr(c, "colorbar", None) is not None]
    assert len(bars) == 2 and all("spurious" in b.ax.get_ylabel() for b in bars)
    assert fig._suptitle is not None and fig._suptitle.get_text()


def test_masks_title_fits_and_the_separator_is_explained() -> None:
    from sit_nlp.evaluation.plots import SEPARATOR_LABEL, masks_figure

    tasks = [f"family{i // 3}/task_{i}" for i in range(8)]
    title = ("runs/minilm-sit/final: UIC of the learned graph (training tasks, > 0.5) fails (3 violating pairs); "
             "orthogonal form fails")
    fig = masks_figure(np.random.default_rng(0).uniform(size=(8, 4)), tasks, 6, title)
    ax = fig.axes[0]
    _draw(fig)
    assert "violating pairs" in ax.get_title() and "8 tasks x 4 factors" in ax.get_title()
    assert _inside(ax.title.get_window_extent(), fig.bbox), "title cut off"
    legend = fig.legends[0]
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == [SEPARATOR_LABEL] and "training" in labels[0] and "held-out" in labels[0]
    assert _inside(legend.get_window_extent(), fig.bbox)
    assert fig.axes[1].get_ylabel()  # the colour bar


def test_comparison_states_n_and_the_error_bars() -> None:
    from sit_nlp.evaluation.plots import comparison_figure

    def row(metric: str, n: int) -> dict:
        v = {"mean": 50.0, "sd": 2.0 if n > 1 else None, "n": n}
        return {"metric": metric, "values": {"vanilla": v, "sit": v}}

    result = {"methods": {"vanilla": {}, "sit": {}}, "rows": [row("overall/primary", 3), row("ood/primary", 3)]}
    ax = comparison_figure(result).axes[0]
    assert "n = 3" in ax.get_title() and "sd" in ax.get_title() and _error_bars(ax) == 4
    result = {"methods": {"vanilla": {}, "sit": {}}, "rows": [row("overall/primary", 1)]}
    ax = comparison_figure(result).axes[0]
    assert _error_bars(ax) == 0 and "n = 1" in ax.get_title()
