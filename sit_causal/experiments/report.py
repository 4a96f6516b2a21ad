"""The synthetic half's tables and figures: ``sit-causal simulate``, ``validate`` and simulated data.

Tables are plain text (``format_*``). Figures are drawn on :class:`matplotlib.figure.Figure` objects (Agg
canvas), never through pyplot, so importing or calling this module never switches the process's
matplotlib backend or touches pyplot's global figure list; each ``*_figure`` function returns the figure
and the matching ``plot_*`` function writes it atomically (:func:`sit_causal.plotting.save_figure`).
Figures are drawn from the results objects the commands write (``results.json``, ``validate.json``), so
any figure can be redrawn from those files alone. Every figure states in its title or axes what it
shows, over how many seeds or factors (n), and what its error bars are. Every heatmap over tasks and
factors keeps the project's orientation: **rows = tasks, columns = factors**.

* ``sit-causal simulate``: :func:`format_table`, :func:`plot_matched_correlation`,
  :func:`plot_per_factor_recovery`; ``sit-causal validate``: :func:`plot_theory_check`;
* simulated data: :func:`plot_graph`, :func:`plot_latent_marginals`, :func:`plot_dataset`.

Confidence intervals come from :mod:`sit_causal.stats`; the ``sit-nlp`` figures live in
:mod:`sit_nlp.evaluation.plots` and :mod:`sit_nlp.testbed`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from sit_causal.plotting import save_figure
from sit_causal.stats import mean_ci
from sit_causal.theory.graph import TaskFactorGraph
from sit_causal.theory.uic import check_uic

if TYPE_CHECKING:
    from sit_causal.sim.scm import SCMDataset

__all__ = [
    "format_mean_ci",
    "format_mean_sd",
    "format_table",
    "matched_correlation_figure",
    "per_factor_recovery_figure",
    "plot_dataset",
    "plot_graph",
    "plot_latent_marginals",
    "plot_matched_correlation",
    "plot_per_factor_recovery",
    "plot_theory_check",
    "theory_check_figure",
]


# ---------------------------------------------------------------------- tables
def format_mean_ci(values: Sequence[float], digits: int = 3) -> str:
    """``"mean +/- h (95% CI, n = k)"``: how a quantity over seeds is reported in docs/results."""
    m, h = mean_ci(values)
    return f"{m:.{digits}f} +/- {h:.{digits}f} (95% CI, n = {len(values)})"


def format_mean_sd(values: Sequence[float], digits: int = 3) -> str:
    """``"mean +/- sd"`` of ``values`` (sample sd, ``ddof = 1``; 0 for a single value): how every benchmark
    prints a quantity over seeds."""
    a = np.asarray(values, dtype=float)
    sd = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return f"{a.mean():.{digits}f} +/- {sd:.{digits}f}"


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    """The table printed by ``simulate``: one row per method, each metric as mean +/- sample sd
    (``ddof = 1``) over the method's seeds, and a last line saying so (the sd describes the spread of the
    seeds; it is not a confidence interval: :func:`format_mean_ci` gives those)."""
    def cell(entry: dict[str, Any], key: str) -> str:
        m, s = entry[f"{key}_mean"], entry[f"{key}_sd"]
        return "-" if m is None else f"{m:.3f} +/- {s:.3f}"

    head = ["method", "MCC pearson", "MCC spearman", "affine R2", "graph P", "graph R", "time s"]
    rows = [[e["method"], cell(e, "mcc_pearson"), cell(e, "mcc_spearman"), cell(e, "affine_r2"),
             cell(e, "graph_precision"), cell(e, "graph_recall"),
             f"{e['time_s_mean']:.1f}"] for e in summary]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]]
    seeds = sorted({int(e["n_seeds"]) for e in summary if e.get("n_seeds") is not None})
    n = "n = " + "/".join(map(str, seeds)) + " seed" + ("" if seeds == [1] else "s") if seeds else "the seeds"
    lines.append(f"+/-: sample sd over {n} (ddof = 1; 0 for one seed), not a confidence interval; time s: mean")
    return "\n".join(lines)


# ---------------------------------------------------------------------- simulate and validate
def _methods(results: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for r in results["results"]:
        if r["method"] not in seen:
            seen.append(r["method"])
    return seen


def _seed_list(seeds: Sequence[int]) -> str:
    seeds = sorted(set(int(s) for s in seeds))
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _sd(values: np.ndarray) -> np.ndarray:
    """Sample sd (``ddof = 1``) over axis 0; ``nan`` for a single row."""
    return values.std(0, ddof=1) if values.shape[0] > 1 else np.full(values.shape[1:], np.nan)


def matched_correlation_figure(results: dict[str, Any]) -> Figure:
    """One heatmap per method: the absolute correlation matrix (rows = true factors, columns = learned
    factors reordered by the Hungarian matching, so the diagonal holds the matched pairs), **averaged over
    all the method's seeds** (the title names them and n); each panel's MCC is the mean over those seeds.
    Factors the UIC checker predicts non-identifiable are marked with ``*``."""
    methods = _methods(results)
    names = results["graph"]["factors"]
    ident = results["identifiable_predicted"]
    labels = [f"{n}{'' if ok else '*'}" for n, ok in zip(names, ident, strict=True)]
    fig = Figure(figsize=(3.2 * len(methods) + 1.2, 3.9), layout="constrained")
    axes = fig.subplots(1, len(methods), squeeze=False)
    im = None
    all_seeds: list[int] = []
    for ax, method in zip(axes[0], methods, strict=True):
        runs = [r for r in results["results"] if r["method"] == method]
        all_seeds += [r["seed"] for r in runs if r.get("seed") is not None]
        mean = np.mean([np.asarray(r["matched_correlation_matrix"]) for r in runs], axis=0)
        im = ax.imshow(mean, vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_title(f"{method} (n = {len(runs)} seeds)\nmean MCC {np.mean(np.diag(mean)):.2f}", fontsize=9)
        ax.set_xticks(range(len(names)), [f"z({n})" for n in names], rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), labels, fontsize=7)
        ax.set_xlabel("learned factor (Hungarian-matched)", fontsize=8)
        ax.set_ylabel("true factor", fontsize=8)
        if len(names) <= 8:
            for i in range(len(names)):
                for j in range(len(names)):
                    ax.text(j, i, f"{mean[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if mean[i, j] > 0.5 else "white")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="|correlation|, mean over seeds")
    seeds = _seed_list(all_seeds)
    fig.suptitle(f"matched correlation on held-out data, averaged over seeds {seeds} (n = {len(set(all_seeds))})"
                 "\nrows: true factors, * = not identifiable by the UIC", fontsize=9)
    return fig


def plot_matched_correlation(results: dict[str, Any], path: str | Path) -> Path:
    """Write :func:`matched_correlation_figure` to ``path``."""
    return save_figure(matched_correlation_figure(results), path, dpi=120, bbox_inches="tight")


def per_factor_recovery_figure(results: dict[str, Any], threshold: float | None = None) -> Figure:
    """Grouped bars: matched correlation per true factor, mean over seeds with the sample sd
    (``ddof = 1``) as error bars (none where a method has one seed), for every method; hatched bars are
    factors the UIC checker predicts non-identifiable; the dashed line is the recovery threshold. The
    legend (outside the axes) names every method with its n, the hatching and the threshold line."""
    methods = _methods(results)
    names = results["graph"]["factors"]
    ident = results["identifiable_predicted"]
    threshold = results["config"].get("recovery_threshold", 0.9) if threshold is None else threshold
    n, k = len(names), len(methods)
    width = 0.8 / k
    fig = Figure(figsize=(max(5.0, 0.6 * n * k / 2 + 3) + 2.2, 3.6), layout="constrained")
    ax = fig.subplots()
    counts = []
    for mi, method in enumerate(methods):
        vals = np.array([[f["matched_corr"] for f in r["per_factor"]]
                         for r in results["results"] if r["method"] == method])
        counts.append(vals.shape[0])
        mean, sd = vals.mean(0), _sd(vals)
        xs = np.arange(n) + (mi - (k - 1) / 2) * width
        bars = ax.bar(xs, mean, width, label=f"{method} (n = {vals.shape[0]} seeds)")
        if vals.shape[0] > 1:
            ax.errorbar(xs, mean, yerr=sd, fmt="none", ecolor="black", capsize=2, lw=0.8)
        for b, ok in zip(bars, ident, strict=True):
            if not ok:
                b.set_hatch("//")
    ax.axhline(threshold, ls="--", color="gray", lw=1, label=f"recovery threshold {threshold:g}")
    ax.set_xticks(range(n), [f"{nm}{'' if ok else '*'}" for nm, ok in zip(names, ident, strict=True)])
    ax.set_xlabel("true factor (* = not identifiable by the UIC)")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("matched |correlation|, mean over seeds")
    handles, _ = ax.get_legend_handles_labels()
    if not all(ident):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="not identifiable (UIC)"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    bars_note = "error bars: sample sd over seeds" if max(counts) > 1 else "one seed: no error bars"
    ax.set_title(f"per-factor recovery on held-out data, n = {'/'.join(map(str, sorted(set(counts))))} "
                 f"seeds per method\n{bars_note}", fontsize=9)
    return fig


def plot_per_factor_recovery(results: dict[str, Any], path: str | Path,
                             threshold: float | None = None) -> Path:
    """Write :func:`per_factor_recovery_figure` to ``path``."""
    return save_figure(per_factor_recovery_figure(results, threshold), path, dpi=120, bbox_inches="tight")


def theory_check_figure(scores: Sequence[float], predicted: Sequence[bool], auroc: float, threshold: float,
                        *, label: str = "UIC (linear form)", models: int | None = None,
                        stage1: dict[str, float | None] | None = None) -> Figure:
    """Stage 2 of the theory check (trained SIT): histograms of the matched correlation of every
    (graph, seed, factor), split by the checker's label ``label`` (identifiable vs. not), with the
    recovery threshold. The title names the stage and the score of every number: stage 2's AUROC of the
    matched |correlation| for the label over n factors (of ``models`` trained models) and, when given,
    stage 1's AUROCs (``stage1``: form -> AUROC of the selection objective's margin, no training)."""
    s = np.asarray(scores, dtype=float)
    p = np.asarray(predicted, dtype=bool)
    fig = Figure(figsize=(5.6, 3.9), layout="constrained")
    ax = fig.subplots()
    bins = np.linspace(0.0, 1.0, 41)
    ax.hist(s[p], bins=bins, alpha=0.6, label=f"{label}: identifiable (n = {int(p.sum())})")
    ax.hist(s[~p], bins=bins, alpha=0.6, label=f"{label}: not identifiable (n = {int((~p).sum())})")
    ax.axvline(threshold, ls="--", color="gray", lw=1, label=f"recovery threshold {threshold:g}")
    ax.set_xlabel("matched |correlation| of the trained SIT representation (held-out data)")
    ax.set_ylabel("factors (count)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    of_models = f" of {models} trained models" if models is not None else ""
    value = "n/a" if auroc != auroc else f"{auroc:.3f}"
    lines = [f"stage 2, estimator: AUROC {value} of matched |corr| for the {label} label",
             f"(n = {s.size} factors{of_models})"]
    if stage1:
        got = ", ".join(f"{form} form {'n/a' if v is None else f'{v:.3f}'}" for form, v in stage1.items())
        lines.append(f"stage 1, theory (no training): AUROC of the objective's margin {got}")
    ax.set_title("\n".join(lines), fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    return fig


def plot_theory_check(scores: Sequence[float], predicted: Sequence[bool], auroc: float, threshold: float,
                      path: str | Path, *, label: str = "UIC (linear form)", models: int | None = None,
                      stage1: dict[str, float | None] | None = None) -> Path:
    """Write :func:`theory_check_figure` to ``path``."""
    return save_figure(theory_check_figure(scores, predicted, auroc, threshold, label=label, models=models,
                                           stage1=stage1), path, dpi=120, bbox_inches="tight")


# ---------------------------------------------------------------------- simulated data
def plot_graph(graph: TaskFactorGraph, ax: Axes, title: str | None = None) -> Axes:
    """Heatmap of ``graph.adjacency`` (rows = tasks, columns = factors); factors that the UIC checker
    says are not identifiable get a red tick label."""
    adj = graph.adjacency.astype(float)
    ax.imshow(adj, cmap="Greys", vmin=0, vmax=1.15, aspect="auto")
    ax.set_xticks(range(graph.n_factors), graph.factors)
    ax.set_yticks(range(graph.n_tasks), graph.tasks)
    ax.set_xlabel("factor")
    ax.set_ylabel("task")
    ax.set_xticks(np.arange(-0.5, graph.n_factors), minor=True)
    ax.set_yticks(np.arange(-0.5, graph.n_tasks), minor=True)
    ax.grid(which="minor", color="0.8", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    report = check_uic(graph)
    for label, ok in zip(ax.get_xticklabels(), report.identifiable_mask, strict=True):
        if not ok:
            label.set_color("tab:red")
    verdict = "UIC holds" if report.uic_holds else "UIC fails"
    ax.set_title(title or f"task-to-factor graph ({verdict})")
    return ax


def plot_latent_marginals(dataset: SCMDataset, axes: Sequence[Axes], factors: Sequence[int],
                          datasets: Sequence[int], bins: int = 40) -> None:
    """One panel per factor in ``factors``: histograms (densities) of that factor in each dataset of
    ``datasets``, labelled with the dataset's task."""
    lo, hi = np.percentile(dataset.latents[:, list(factors)], [0.5, 99.5])
    edges = np.linspace(lo, hi, bins + 1)
    for ax, i in zip(axes, factors, strict=True):
        for d in datasets:
            values = dataset.latents[dataset.dataset_id == d, i]
            task = dataset.graph.tasks[int(dataset.dataset_task[d])]
            ax.hist(values, bins=edges, density=True, histtype="step", linewidth=1.2, label=f"D{d} ({task})")
        ax.set_title(f"{dataset.graph.factors[i]} | dataset")
        ax.set_xlabel("value")
        ax.set_yticks([])


def plot_dataset(dataset: SCMDataset, path: str | Path | None = None, factors: Sequence[int] | None = None,
                 datasets: Sequence[int] | None = None, dpi: int = 90) -> Figure:
    """Overview of one simulated dataset: the graph heatmap and a few latent marginals per dataset.

    Arguments:
        dataset: the samples to show.
        path: if given, the figure is saved there (PNG by extension).
        factors: factor columns to show (default: the first three).
        datasets: datasets to overlay (default: the first dataset of each of the first four tasks).
        dpi: resolution of the saved file.
    """
    factors = list(range(min(3, dataset.n_factors))) if factors is None else list(factors)
    if datasets is None:
        firsts = [int(np.flatnonzero(dataset.dataset_task == t)[0]) for t in range(min(4, dataset.n_tasks))]
        datasets = firsts
    fig = Figure(figsize=(3.2 * (len(factors) + 1), 3.2), layout="constrained")
    axes = fig.subplots(1, len(factors) + 1, width_ratios=[1.2] + [1.0] * len(factors))
    plot_graph(dataset.graph, axes[0])
    plot_latent_marginals(dataset, axes[1:], factors, datasets)
    axes[-1].legend(fontsize=7, frameon=False, loc="upper right")
    cfg = dataset.config
    fig.suptitle(f"meta-SCM sample: n={dataset.n_factors} factors, m={dataset.n_tasks} tasks, "
                 f"{cfg.family} prior, {dataset.n_datasets} datasets, seed {cfg.seed}", fontsize=10)
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig
