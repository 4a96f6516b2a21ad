"""Figures of ``sit-causal simulate`` and ``sit-causal validate`` (PNG, matplotlib Agg), drawn from the
results objects those commands write, so a figure can be redrawn from ``results.json`` alone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_matched_correlation", "plot_per_factor_recovery", "plot_theory_check"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    plt = _pyplot()
    methods = _methods(results)
    names = results["graph"]["factors"]
    ident = results["identifiable_predicted"]
    labels = [f"{n}{'' if ok else '*'}" for n, ok in zip(names, ident, strict=True)]
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods) + 0.8, 3.4), squeeze=False)
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
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_per_factor_recovery(results: dict[str, Any], path: str | Path,
                             threshold: float | None = None) -> Path:
    """Grouped bars: matched correlation per true factor (mean +/- sd over seeds) for every method;
    hatched bars are factors the UIC checker predicts non-identifiable; the dashed line is the
    recovery threshold."""
    plt = _pyplot()
    methods = _methods(results)
    names = results["graph"]["factors"]
    ident = results["identifiable_predicted"]
    threshold = results["config"].get("recovery_threshold", 0.9) if threshold is None else threshold
    n, k = len(names), len(methods)
    width = 0.8 / k
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * n * k / 2 + 3), 3.4))
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
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_theory_check(scores: Sequence[float], predicted: Sequence[bool], auroc: float, threshold: float,
                      path: str | Path) -> Path:
    """Theory check: distribution of the matched correlation of every (graph, seed, factor) split by the
    checker's verdict (identifiable vs. not), with the recovery threshold and the AUROC in the title."""
    plt = _pyplot()
    s = np.asarray(scores, dtype=float)
    p = np.asarray(predicted, dtype=bool)
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    bins = np.linspace(0.0, 1.0, 41)
    ax.hist(s[p], bins=bins, alpha=0.6, label=f"UIC: identifiable (n={int(p.sum())})")
    ax.hist(s[~p], bins=bins, alpha=0.6, label=f"UIC: not identifiable (n={int((~p).sum())})")
    ax.axvline(threshold, ls="--", color="gray", lw=1, label=f"recovery threshold {threshold:g}")
    ax.set_xlabel("matched |correlation| of the SIT representation")
    ax.set_ylabel("factors")
    ax.set_title(f"theory check: AUROC {auroc:.3f}", fontsize=10)
    ax.legend(fontsize=7)
    out = Path(path)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out
