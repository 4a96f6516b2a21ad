"""Generic plots of simulated data and graphs (matplotlib, no pyplot state: safe in scripts and tests).

Every function draws on axes it is given, or builds its own :class:`matplotlib.figure.Figure`; nothing
touches pyplot's global figure list. Graph heatmaps keep the project's orientation: **rows = tasks,
columns = factors**.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from sit_causal.graph import TaskFactorGraph
from sit_causal.scm import SCMDataset
from sit_causal.uic import check_uic

__all__ = ["plot_dataset", "plot_graph", "plot_latent_marginals"]


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
        fig.savefig(path, dpi=dpi)
    return fig
