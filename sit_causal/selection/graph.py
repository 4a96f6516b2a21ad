"""From per-task factor energies to a task-to-factor graph that satisfies the UIC.

Inputs are plain arrays; every matrix here has **rows = tasks, columns = factors**.

* :func:`task_factor_energies`: ``E`` ``(m, n)``, the mean over each task's samples of non-negative
  per-sample, per-factor contributions ``c`` ``(N, n)``, each row normalised to sum 1. For the synthetic
  selection step the contributions are the diagonal of the rotated gradient matrices
  (:mod:`sit_causal.selection.align`); for a sequence model they are the squared first-order contribution
  of each factor channel to the target log-likelihood, ``c_kj = (sum_{tokens, dims} dNLL/dz_j * z_j)^2``
  (:mod:`sit_nlp.model.task_graph`).
* :func:`graph_from_energies`: per task, the fewest factors whose energies cover ``coverage`` of the row
  (at least one factor per task).
* :func:`repair_to_uic`: the graph nearest to the energies that satisfies the UIC (or its orthogonal
  form): a greedy local search that flips one gate at a time, lexicographically lowering first the
  number of violating factor pairs (:func:`sit_causal.theory.uic.containment_matrix`; a factor read by no task
  violates with every other) and then the energy cost ``sum_{t, j} A_tj (tau - E_tj)`` (an edge is worth
  keeping when its energy exceeds ``tau``). It stops when no single flip improves; the result reports
  whether the condition holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from sit_causal.theory.uic import containment_matrix

__all__ = ["GraphRepair", "graph_from_energies", "repair_to_uic", "task_factor_energies", "uic_violations"]

Form = Literal["linear", "orthogonal"]


def task_factor_energies(contributions: np.ndarray, task_id: np.ndarray, n_tasks: int) -> np.ndarray:
    """``E[t, j] = mean_{k : task(k) = t} c_kj / sum_j mean_{k : task(k) = t} c_kj`` ``(m, n)``.

    Arguments:
        contributions: ``(N, n)`` non-negative per-sample, per-factor contributions.
        task_id: ``(N,)`` int task of each sample in ``[0, n_tasks)``.
        n_tasks: ``m``; a task with no sample (or zero energy) gets a uniform row.
    """
    c = np.asarray(contributions, dtype=np.float64)
    task_id = np.asarray(task_id)
    if c.ndim != 2 or task_id.shape != (c.shape[0],):
        raise ValueError("contributions must be (N, n) and task_id (N,)")
    if np.any(c < 0) or not np.all(np.isfinite(c)):
        raise ValueError("contributions must be finite and non-negative")
    if task_id.size and (task_id.min() < 0 or task_id.max() >= n_tasks):
        raise ValueError(f"task ids must lie in [0, {n_tasks})")
    sums = np.zeros((n_tasks, c.shape[1]))
    np.add.at(sums, task_id, c)
    counts = np.bincount(task_id, minlength=n_tasks)[:, None]
    mean = sums / np.maximum(counts, 1)
    total = mean.sum(axis=1, keepdims=True)
    uniform = np.full_like(mean, 1.0 / c.shape[1])
    return np.where(total > 0, mean / np.where(total > 0, total, 1.0), uniform)


def graph_from_energies(energies: np.ndarray, coverage: float = 0.9) -> np.ndarray:
    """Bool ``(m, n)``: row ``t`` keeps its largest energies until their sum reaches ``coverage`` of the row."""
    e = np.asarray(energies, dtype=np.float64)
    if e.ndim != 2:
        raise ValueError("energies must be (tasks, factors)")
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must be in (0, 1], got {coverage}")
    order = np.argsort(-e, axis=1, kind="stable")
    sorted_e = np.take_along_axis(e, order, axis=1)
    total = sorted_e.sum(axis=1, keepdims=True)
    cum = np.cumsum(sorted_e, axis=1) / np.where(total > 0, total, 1.0)
    # keep position r if the energy before it has not yet reached the coverage
    keep_sorted = np.concatenate([np.ones((e.shape[0], 1), bool), cum[:, :-1] < coverage - 1e-12], axis=1)
    out = np.zeros_like(e, dtype=bool)
    np.put_along_axis(out, order, keep_sorted, axis=1)
    return out


def uic_violations(adjacency: np.ndarray, form: Form = "linear") -> int:
    """Number of ordered factor pairs ``(i, j)`` that break the UIC (``C_i ⊆ C_j``) or, for the orthogonal
    form, its weaker version (``C_i = C_j``); ``adjacency`` ``(m, n)``, rows = tasks."""
    k = containment_matrix(np.asarray(adjacency, dtype=bool))
    if form == "orthogonal":
        k = k & k.T
    return int(k.sum())


@dataclass(frozen=True)
class GraphRepair:
    """Output of :func:`repair_to_uic`: the repaired ``adjacency`` ``(m, n)`` (rows = tasks), the flipped
    gates ``(task, factor, now_open)``, the violations before and after, and whether the condition holds."""

    adjacency: np.ndarray
    flips: tuple[tuple[int, int, bool], ...]
    violations_before: int
    violations_after: int
    form: str

    @property
    def holds(self) -> bool:
        return self.violations_after == 0


def repair_to_uic(adjacency: np.ndarray, energies: np.ndarray, form: Form = "linear", tau: float | None = None,
                  max_flips: int | None = None) -> GraphRepair:
    """Greedy repair of a learned graph towards the UIC (module docstring).

    Arguments:
        adjacency: ``(m, n)`` bool starting graph (e.g. :func:`graph_from_energies`).
        energies: ``(m, n)`` row-normalised energies (:func:`task_factor_energies`).
        form: ``"linear"`` (the UIC) or ``"orthogonal"`` (only identical task sets violate).
        tau: energy an edge must exceed to lower the cost; default ``1 / n`` (a uniform row's energy).
        max_flips: at most this many flips (default ``m * n``).
    """
    a = np.array(adjacency, dtype=bool, copy=True)
    e = np.asarray(energies, dtype=np.float64)
    if a.shape != e.shape or a.ndim != 2:
        raise ValueError("adjacency and energies must both be (tasks, factors)")
    m, n = a.shape
    tau = 1.0 / n if tau is None else float(tau)
    limit = m * n if max_flips is None else int(max_flips)
    gain = tau - e  # cost of an open gate

    def score(mat: np.ndarray) -> tuple[int, float]:
        return uic_violations(mat, form), float(gain[mat].sum())

    current = score(a)
    before = current[0]
    flips: list[tuple[int, int, bool]] = []
    while current[0] > 0 and len(flips) < limit:
        best, best_flip = current, None
        for t in range(m):
            for j in range(n):
                if a[t, j] and a[t].sum() == 1:
                    continue  # every task keeps at least one factor
                a[t, j] = not a[t, j]
                s = score(a)
                a[t, j] = not a[t, j]
                if s < best:
                    best, best_flip = s, (t, j)
        if best_flip is None:
            break
        t, j = best_flip
        a[t, j] = not a[t, j]
        flips.append((t, j, bool(a[t, j])))
        current = best
    return GraphRepair(adjacency=a, flips=tuple(flips), violations_before=before, violations_after=current[0],
                       form=form)
