"""The figures of ``sit-nlp masks`` (``masks.png``) and ``sit-nlp compare --plot``.

Each figure is built on a :class:`matplotlib.figure.Figure` (no pyplot state) by a ``*_figure`` function,
so it can be inspected, and written atomically by the matching ``plot_*`` function
(:func:`sit_causal.plotting.save_figure`). Heatmaps keep the project's orientation: **rows = tasks,
columns = factors**.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from sit_causal.plotting import save_figure

__all__ = ["comparison_figure", "masks_figure", "plot_comparison", "plot_masks"]

SEPARATOR_LABEL = "above: training tasks | below: held-out tasks"


def masks_figure(masks: np.ndarray, tasks: list[str], n_train: int, title: str) -> Figure:
    """Heatmap of a ``(tasks, factors)`` mask matrix (rows = tasks, the first ``n_train`` the training
    tasks); a dashed red line, named in the legend, separates the training from the held-out tasks. The
    title is ``title`` (wrapped to the figure's width) above the matrix's size."""
    masks = np.asarray(masks, dtype=float)
    width = 0.35 * masks.shape[1] + 4.5
    fig = Figure(figsize=(width, 0.28 * len(tasks) + 2.2), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(masks, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_yticks(range(len(tasks)), [t[:40] for t in tasks], fontsize=7)
    ax.set_xticks(range(masks.shape[1]), [f"z{i + 1}" for i in range(masks.shape[1])], fontsize=7)
    ax.set_xlabel("learned factor")
    held = len(tasks) - n_train
    ax.set_ylabel(f"task ({n_train} training" + (f", then {held} held-out)" if held > 0 else ")"))
    if 0 < n_train < len(tasks):
        line = ax.axhline(n_train - 0.5, color="tab:red", linestyle="--", linewidth=1.5, label=SEPARATOR_LABEL)
        fig.legend(handles=[line], loc="outside lower center", fontsize=7, frameon=False)
    size = f"{len(tasks)} tasks x {masks.shape[1]} factors; one instruction per task"
    chars = max(30, int(width * 13))
    ax.set_title("\n".join([*textwrap.wrap(title, chars), size]), fontsize=8)
    fig.colorbar(im, ax=ax, label="selection mask m_t (0 = gate closed, 1 = open)")
    return fig


def plot_masks(masks: np.ndarray, tasks: list[str], n_train: int, path: str | Path, title: str) -> Path:
    """Write :func:`masks_figure` to ``path`` (PNG by suffix)."""
    return save_figure(masks_figure(masks, tasks, n_train, title), path, dpi=110)


def comparison_figure(result: dict[str, Any]) -> Figure:
    """Bar plot of the ``primary`` rows of a comparison (:func:`sit_nlp.evaluation.compare.compare_runs`),
    overall and per group: one bar per method, the mean over its runs; error bars are the sample sd over
    runs, drawn only where a method has n >= 2 runs. The legend gives each method's n."""
    rows = [r for r in result["rows"] if r["metric"].endswith("/primary")]
    methods = list(result["methods"])
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(rows))
    fig = Figure(figsize=(2.6 + 1.4 * len(rows), 3.8), layout="constrained")
    ax = fig.subplots()
    ns = []
    for k, m in enumerate(methods):
        xs = x + (k - (len(methods) - 1) / 2) * width
        means = np.array([r["values"][m]["mean"] if r["values"][m]["mean"] is not None else np.nan for r in rows])
        sds = np.array([r["values"][m]["sd"] if r["values"][m]["sd"] is not None else np.nan for r in rows])
        n = max((r["values"][m].get("n", 0) for r in rows), default=0)
        ns.append(n)
        ax.bar(xs, means, width, label=f"{m} (n = {n})")
        ok = ~np.isnan(sds) & ~np.isnan(means)
        if ok.any():
            ax.errorbar(xs[ok], means[ok], yerr=sds[ok], fmt="none", ecolor="black", capsize=3, lw=1)
    ax.set_xticks(x, [r["metric"].split("/")[0] for r in rows])
    ax.set_xlabel("held-out group (primary score: ROUGE-L or accuracy)")
    ax.set_ylabel("primary score (%), mean over runs")
    runs = ", ".join(f"{m} n = {n}" for m, n in zip(methods, ns, strict=True))
    bars_note = "error bars: sample sd over runs (none where n < 2)" if any(n >= 2 for n in ns) else \
        "n = 1 per method: no error bars"
    ax.set_title(f"held-out primary scores by method ({runs})\n{bars_note}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def plot_comparison(result: dict[str, Any], path: str | Path) -> Path:
    """Write :func:`comparison_figure` to ``path`` (format from the suffix)."""
    return save_figure(comparison_figure(result), path, dpi=120)
