"""Every table and figure of both halves: one module, one plotting style.

Tables are plain text (``format_*``); figures are PNG files drawn on :class:`matplotlib.figure.Figure`
objects (Agg canvas), never through pyplot, so importing or calling this module never switches the
process's matplotlib backend or touches pyplot's global figure list. Figures are drawn from the results
objects the commands write (``results.json``, ``validate.json``, a comparison, a mask matrix), so any
figure can be redrawn from those files alone. Every heatmap over tasks and factors keeps the project's
orientation: **rows = tasks, columns = factors**.

* ``sit-causal simulate``: :func:`format_table`, :func:`plot_matched_correlation`,
  :func:`plot_per_factor_recovery`; ``sit-causal validate``: :func:`plot_theory_check`;
* simulated data: :func:`plot_graph`, :func:`plot_latent_marginals`, :func:`plot_dataset`;
* ``sit-nlp masks``: :func:`plot_masks`; ``sit-nlp compare``: :func:`plot_comparison`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from sit_causal.theory.graph import TaskFactorGraph
from sit_causal.theory.uic import check_uic

if TYPE_CHECKING:
    from sit_causal.sim.scm import SCMDataset

__all__ = [
    "difference_ci",
    "format_mean_ci",
    "format_mean_sd",
    "format_table",
    "mean_ci",
    "plot_comparison",
    "plot_dataset",
    "plot_graph",
    "plot_latent_marginals",
    "plot_masks",
    "plot_matched_correlation",
    "plot_per_factor_recovery",
    "plot_theory_check",
    "save_figure",
]


def save_figure(fig: Figure, path: str | Path, **kwargs: Any) -> Path:
    """Write ``fig`` to ``path`` atomically (format from the suffix, PNG by default): a killed run never
    leaves a half-written image (:func:`sit_causal.fileio.atomic_open`)."""
    from sit_causal.fileio import atomic_open

    path = Path(path)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format=path.suffix[1:].lower() or "png", **kwargs)
    return path


# ---------------------------------------------------------------------- tables
def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the ``level`` confidence interval of the mean over seeds (Student's t with
    ``n - 1`` degrees of freedom; half-width ``nan`` for a single value)."""
    from scipy import stats

    a = np.asarray(values, dtype=float)
    if a.size == 0:
        raise ValueError("mean_ci of no values")
    if a.size == 1:
        return float(a[0]), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, a.size - 1) * a.std(ddof=1) / np.sqrt(a.size))
    return float(a.mean()), half


def difference_ci(a: Sequence[float], b: Sequence[float], paired: bool, level: float = 0.95) -> tuple[float, float]:
    """Mean of ``a - b`` and the half-width of its ``level`` confidence interval: paired (``a[i]``, ``b[i]``
    from the same seed: Student's t on the differences) or unpaired (Welch's t with Welch-Satterthwaite
    degrees of freedom). Half-width ``nan`` where the data cannot give one (a single value per side)."""
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size == 0 or y.size == 0:
        raise ValueError("difference_ci of no values")
    if paired:
        if x.size != y.size:
            raise ValueError(f"paired difference of {x.size} and {y.size} values")
        return mean_ci(x - y, level)
    diff = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return diff, float("nan")
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = float(np.sqrt(vx + vy))
    if se == 0.0:
        return diff, 0.0
    dof = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    return diff, float(stats.t.ppf(0.5 + level / 2, dof) * se)


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
    """The table printed by ``simulate``: one row per method, mean +/- sd over seeds."""
    def cell(entry: dict[str, Any], key: str) -> str:
        m, s = entry[f"{key}_mean"], entry[f"{key}_sd"]
        return "-" if m is None else f"{m:.3f} +/- {s:.3f}"

    head = ["method", "MCC pearson", "MCC spearman", "affine R2", "graph P", "graph R", "time s"]
    rows = [[e["method"], cell(e, "mcc_pearson"), cell(e, "mcc_spearman"), cell(e, "affine_r2"),
             cell(e, "graph_precision"), cell(e, "graph_recall"),
             f"{e['time_s_mean']:.1f}"] for e in summary]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]]
    return "\n".join(lines)


# ---------------------------------------------------------------------- simulate and validate
def _methods(results: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for r in results["results"]:
        if r["method"] not in seen:
            seen.append(r["method"])
    return seen


def plot_matched_correlation(results: dict[str, Any], path: str | Path) -> Path:
    """One heatmap per method: the absolute correlation matrix (rows = true factors, columns = learned
    factors reordered by the Hungarian matching, so the diagonal holds the matched pairs), averaged over
    seeds. Factors the UIC checker predicts non-identifiable are marked with ``*``."""
    methods = _methods(results)
    names = results["graph"]["factors"]
    ident = results["identifiable_predicted"]
    labels = [f"{n}{'' if ok else '*'}" for n, ok in zip(names, ident, strict=True)]
    fig = Figure(figsize=(3.2 * len(methods) + 0.8, 3.4))
    axes = fig.subplots(1, len(methods), squeeze=False)
    im = None
    for ax, method in zip(axes[0], methods, strict=True):
        mats = [np.asarray(r["matched_correlation_matrix"]) for r in results["results"] if r["method"] == method]
        mean = np.mean(mats, axis=0)
        im = ax.imshow(mean, vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_title(f"{method}\nMCC {np.mean(np.diag(mean)):.2f}", fontsize=9)
        ax.set_xticks(range(len(names)), [f"z({n})" for n in names], rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), labels, fontsize=7)
        if len(names) <= 8:
            for i in range(len(names)):
                for j in range(len(names)):
                    ax.text(j, i, f"{mean[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="black" if mean[i, j] > 0.5 else "white")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="|correlation|")
    fig.suptitle("matched correlation (rows: true factors, * = not identifiable by the UIC)", fontsize=9)
    out = Path(path)
    save_figure(fig, out, dpi=120, bbox_inches="tight")
    return out


def plot_per_factor_recovery(results: dict[str, Any], path: str | Path,
                             threshold: float | None = None) -> Path:
    """Grouped bars: matched correlation per true factor (mean +/- sd over seeds) for every method;
    hatched bars are factors the UIC checker predicts non-identifiable; the dashed line is the
    recovery threshold."""
    methods = _methods(results)
    names = results["graph"]["factors"]
    ident = results["identifiable_predicted"]
    threshold = results["config"].get("recovery_threshold", 0.9) if threshold is None else threshold
    n, k = len(names), len(methods)
    width = 0.8 / k
    fig = Figure(figsize=(max(5.0, 0.6 * n * k / 2 + 3), 3.4))
    ax = fig.subplots()
    for mi, method in enumerate(methods):
        vals = np.array([[f["matched_corr"] for f in r["per_factor"]]
                         for r in results["results"] if r["method"] == method])
        mean, sd = vals.mean(0), vals.std(0)
        xs = np.arange(n) + (mi - (k - 1) / 2) * width
        bars = ax.bar(xs, mean, width, yerr=sd, label=method, capsize=2)
        for b, ok in zip(bars, ident, strict=True):
            if not ok:
                b.set_hatch("//")
    ax.axhline(threshold, ls="--", color="gray", lw=1)
    ax.set_xticks(range(n), [f"{nm}{'' if ok else '*'}" for nm, ok in zip(names, ident, strict=True)])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("matched |correlation|")
    ax.set_title("per-factor recovery (* hatched: not identifiable by the UIC)", fontsize=9)
    ax.legend(fontsize=7, ncol=min(k, 3), loc="lower left")
    out = Path(path)
    save_figure(fig, out, dpi=120, bbox_inches="tight")
    return out


def plot_theory_check(scores: Sequence[float], predicted: Sequence[bool], auroc: float, threshold: float,
                      path: str | Path) -> Path:
    """Theory check: distribution of the matched correlation of every (graph, seed, factor) split by the
    checker's verdict (identifiable vs. not), with the recovery threshold and the AUROC in the title."""
    s = np.asarray(scores, dtype=float)
    p = np.asarray(predicted, dtype=bool)
    fig = Figure(figsize=(5.0, 3.4))
    ax = fig.subplots()
    bins = np.linspace(0.0, 1.0, 41)
    ax.hist(s[p], bins=bins, alpha=0.6, label=f"UIC: identifiable (n={int(p.sum())})")
    ax.hist(s[~p], bins=bins, alpha=0.6, label=f"UIC: not identifiable (n={int((~p).sum())})")
    ax.axvline(threshold, ls="--", color="gray", lw=1, label=f"recovery threshold {threshold:g}")
    ax.set_xlabel("matched |correlation| of the SIT representation")
    ax.set_ylabel("factors")
    ax.set_title(f"theory check: AUROC {auroc:.3f}", fontsize=10)
    ax.legend(fontsize=7)
    out = Path(path)
    save_figure(fig, out, dpi=120, bbox_inches="tight")
    return out


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


# ---------------------------------------------------------------------- sit-nlp
def plot_masks(masks: np.ndarray, tasks: list[str], n_train: int, path: str | Path, title: str) -> None:
    """Heatmap of a ``(tasks, factors)`` mask matrix; a line separates training from held-out tasks."""
    fig = Figure(figsize=(0.35 * masks.shape[1] + 3.5, 0.28 * len(tasks) + 1.5))
    ax = fig.subplots()
    im = ax.imshow(masks, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_yticks(range(len(tasks)), [t[:40] for t in tasks], fontsize=7)
    ax.set_xticks(range(masks.shape[1]), [f"z{i + 1}" for i in range(masks.shape[1])], fontsize=7)
    ax.set_xlabel("factor")
    if 0 < n_train < len(tasks):
        ax.axhline(n_train - 0.5, color="white", linewidth=2)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="mask m_t")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plot_comparison(result: dict[str, Any], path: str | Path) -> Path:
    """Bar plot of the ``primary`` rows (overall and per group): one bar per method, sd as error bars."""
    rows = [r for r in result["rows"] if r["metric"].endswith("/primary")]
    methods = list(result["methods"])
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(rows))
    fig = Figure(figsize=(1.6 + 1.4 * len(rows), 3.6))
    ax = fig.subplots()
    for k, m in enumerate(methods):
        means = [r["values"][m]["mean"] or 0.0 for r in rows]
        sds = [r["values"][m]["sd"] or 0.0 for r in rows]
        ax.bar(x + (k - (len(methods) - 1) / 2) * width, means, width, yerr=sds, capsize=3, label=m)
    ax.set_xticks(x, [r["metric"].split("/")[0] for r in rows])
    ax.set_ylabel("primary score (%)")
    ax.set_title("held-out scores, mean +/- sd over seeds")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path, dpi=120)
    return path


