"""Repair a task-to-factor graph that violates the UIC by *adding* edges (never removing any).

Matrices here have **rows = tasks, columns = factors** (``A[t, i] = 1`` iff task ``t`` reads factor
``i``). A repair turns every task set ``C_i`` into a superset ``C_i' ⊇ C_i`` such that the ``C_i'``
form an antichain (:mod:`sit_causal.theory.uic`). It may read new tasks: ``r`` extra, initially empty, rows.

What is minimised, in this order:

1. the number ``r`` of new tasks (``r = 0`` whenever edges on the existing tasks can work);
2. the number of added edges (on existing and new tasks together).

Two methods, the report says which one produced a proposal:

* ``exact``: a mixed-integer program solved by HiGHS (``scipy.optimize.milp``). Binary ``x[t, i]``
  for every absent edge; for every ordered pair ``i != j`` continuous witnesses ``y[t, i, j] <=
  A'[t, i]``, ``y[t, i, j] <= 1 - A'[t, j]``, ``sum_t y[t, i, j] >= 1`` (some task reads ``i`` and not
  ``j``). Minimise ``sum x``. Solved for ``r = r_min, r_min + 1, ...``; the first feasible ``r`` and
  its optimum are minimal for (1) then (2) -- a **true minimum**, reported as ``"minimal": true``.
  Used while the model has at most ``exact_max_witnesses`` witness variables (about ``(m + r) n^2``)
  and the solves end within ``time_limit`` seconds in all. ``r`` starts at a counting lower bound
  (:func:`_new_tasks_lower_bound`), so most infeasible sizes are never solved.
* ``greedy`` (larger graphs, or when a solve runs out of time): for each failing factor ``i``, add the
  edge ``t -> i`` that separates ``i`` from the most factors containing it, minus the factors it would
  newly put inside ``i``; repeat until the UIC holds or ``max_greedy_steps`` edges were added. If that
  fails, the failing factors ``F`` get new tasks: ``r`` = the smallest with
  ``binom(r, ceil(r/2)) >= |F|``, and each factor of ``F`` reads a distinct ``ceil(r/2)``-subset of the
  new tasks (no edge on existing tasks). This is valid: new-task codes of one size are pairwise
  incomparable, a non-failing factor ``j`` (whose ``C_j`` lies in no other set) still lies in no
  extended set, and nothing new can lie inside ``C_j``. Not proven minimal (``"minimal": false``).

Existing tasks provably cannot work when ``binom(m, floor(m/2)) < n`` (Sperner) or, for ``n >= 2``,
when a factor is read by every task (its set contains every other); the exact method also proves it by
infeasibility. Every proposal is re-checked by :func:`sit_causal.theory.uic.check_uic` before it is returned.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from math import comb
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from sit_causal.theory.graph import TaskFactorGraph
from sit_causal.theory.uic import UICReport, check_uic, max_factors_for_tasks

__all__ = ["RepairProposal", "propose_repair"]


@dataclass(frozen=True)
class RepairProposal:
    """A set of edges to add (and, if needed, new tasks) after which the UIC holds.

    Arguments:
        added_edges: ``(factor, task)`` pairs, edges ``factor -> task`` on existing tasks.
        new_tasks: ``(task id, factors it reads)`` for every proposed new task.
        method: ``"none needed"``, ``"exact"`` or ``"greedy"`` (module docstring).
        minimal: proven minimal (fewest new tasks, then fewest added edges).
        existing_tasks_suffice: whether edges on existing tasks alone can repair the graph; ``None``
            when the greedy search found no such repair without proving there is none.
        reason: why new tasks are proposed (``None`` if they are not).
        repaired: the repaired graph (existing tasks first, then the new ones).
    """

    added_edges: tuple[tuple[str, str], ...]
    new_tasks: tuple[tuple[str, tuple[str, ...]], ...]
    method: str
    minimal: bool
    existing_tasks_suffice: bool | None
    reason: str | None
    repaired: TaskFactorGraph

    @property
    def n_added_edges(self) -> int:
        """All added edges, on existing and new tasks."""
        return len(self.added_edges) + sum(len(f) for _, f in self.new_tasks)

    def to_json(self) -> dict[str, Any]:
        """The ``"repair"`` object of ``sit-causal check-uic --json --repair``."""
        return {
            "method": self.method,
            "minimal": self.minimal,
            "existing_tasks_suffice": self.existing_tasks_suffice,
            "reason": self.reason,
            "add_edges": [{"factor": f, "task": t} for f, t in self.added_edges],
            "new_tasks": [{"id": t, "reads": list(f)} for t, f in self.new_tasks],
            "n_new_tasks": len(self.new_tasks),
            "n_added_edges": self.n_added_edges,
            "uic_holds_after": check_uic(self.repaired).uic_holds,
        }


# ---------------------------------------------------------------------- exact (MILP)
def _witness_count(a: np.ndarray) -> int:
    """Number of witness variables of the MILP for the ``(m, n)`` matrix ``a``: pairs ``(i, j)`` and
    tasks ``t`` where ``j`` is absent (``sum_j (n - 1) * zeros_j``)."""
    n = a.shape[1]
    return int((n - 1) * (~a).sum())


def _solve_exact(a: np.ndarray, n_fixed: int, time_limit: float) -> tuple[str, np.ndarray | None]:
    """Minimise added edges on the ``(m, n)`` matrix ``a`` (rows = tasks) so that the UIC holds; rows
    from ``n_fixed`` on are new, empty tasks (ordered by decreasing size to break their symmetry).

    Returns ``("optimal", A')``, ``("feasible", A')`` (time limit, not proven), ``("infeasible", None)``
    or ``("unknown", None)``.
    """
    m, n = a.shape
    free_t, free_i = np.nonzero(~a)  # one binary x per absent edge
    n_x = free_t.size
    x_of = -np.ones((m, n), dtype=np.int64)
    x_of[free_t, free_i] = np.arange(n_x)
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    lower: list[float] = []
    upper: list[float] = []
    n_y = 0
    cover_rows: list[list[int]] = []  # for each ordered pair: its witness variable ids

    def add_row(entries: list[tuple[int, float]], lo: float, hi: float) -> None:
        r = len(lower)
        for c, v in entries:
            rows.append(r)
            cols.append(c)
            vals.append(v)
        lower.append(lo)
        upper.append(hi)

    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            ids: list[int] = []
            for t in np.flatnonzero(~a[:, j]).tolist():  # j absent from t now (maybe added later)
                y = n_x + n_y
                n_y += 1
                ids.append(y)
                if not a[t, i]:  # y <= x[t, i]
                    add_row([(y, 1.0), (int(x_of[t, i]), -1.0)], -np.inf, 0.0)
                add_row([(y, 1.0), (int(x_of[t, j]), 1.0)], -np.inf, 1.0)  # y <= 1 - x[t, j]
            cover_rows.append(ids)
    for t in range(n_fixed, m - 1):  # new rows are interchangeable: order them by size (symmetry)
        add_row([(int(x_of[t, i]), 1.0) for i in range(n)] + [(int(x_of[t + 1, i]), -1.0) for i in range(n)],
                0.0, np.inf)
    for ids in cover_rows:
        if not ids:  # j is read by every task: nothing can separate i from j
            return "infeasible", None
        add_row([(y, 1.0) for y in ids], 1.0, np.inf)
    n_var = n_x + n_y
    cost = np.concatenate([np.ones(n_x), np.zeros(n_y)])
    matrix = sparse.csr_array((vals, (rows, cols)), shape=(len(lower), n_var))
    integrality = np.concatenate([np.ones(n_x), np.zeros(n_y)])
    res = milp(
        cost,
        integrality=integrality,
        bounds=Bounds(np.zeros(n_var), np.ones(n_var)),
        constraints=LinearConstraint(matrix, np.array(lower), np.array(upper)),
        options={"time_limit": float(time_limit)},
    )
    if res.status == 2:
        return "infeasible", None
    if res.x is None:
        return "unknown", None
    out = a.copy()
    chosen = np.round(res.x[:n_x]).astype(bool)
    out[free_t[chosen], free_i[chosen]] = True
    return ("optimal" if res.status == 0 else "feasible"), out


# ---------------------------------------------------------------------- greedy
def _greedy_existing(a: np.ndarray, max_steps: int) -> np.ndarray | None:
    """Greedy edge additions on the existing tasks of ``a`` (rows = tasks); ``None`` if it fails."""
    b = a.copy()
    steps = 0
    while True:
        report = check_uic(TaskFactorGraph.from_matrix(b))
        if report.uic_holds:
            return b
        for i in report.failing.tolist():
            while True:
                col = b[:, i]
                sup = b[col].all(axis=0)  # C_i ⊆ C_j
                sup[i] = False
                if not sup.any():
                    break
                cand = np.flatnonzero(~col)
                if cand.size == 0 or steps >= max_steps:
                    return None
                fixes = (~b[cand][:, sup]).sum(axis=1)  # factors containing i that lack task t
                outside = b & ~col[:, None]  # tasks reading k but not i
                count = outside.sum(axis=0)
                count[i] = -1
                single = np.flatnonzero(count == 1)  # C_k \ C_i = {t}: adding t puts k inside i
                breaks = np.bincount(outside[:, single].argmax(axis=0), minlength=b.shape[0])
                t = int(cand[np.argmax(fixes - breaks[cand])])
                b[t, i] = True
                steps += 1


def _new_task_codes(n_codes: int) -> tuple[int, list[tuple[int, ...]]]:
    """Smallest ``r`` with ``binom(r, ceil(r/2)) >= n_codes`` and ``n_codes`` distinct
    ``ceil(r/2)``-subsets of ``range(r)`` (lexicographic), all non-empty."""
    r = 1
    while comb(r, -(-r // 2)) < n_codes:
        r += 1
    return r, list(itertools.islice(itertools.combinations(range(r), -(-r // 2)), n_codes))


# ---------------------------------------------------------------------- driver
def _new_tasks_lower_bound(a: np.ndarray, factors: tuple[str, ...]) -> tuple[int, str | None]:
    """A lower bound ``r_min`` on the new tasks any repair of ``a`` (rows = tasks, columns named
    ``factors``) needs, and, when ``r_min > 0``, the reason existing tasks cannot work.

    Two counting arguments: (Sperner) ``binom(m + r, floor((m + r)/2)) >= n``; (identical sets) ``g >= 2``
    factors that share the task set ``C`` (``|C| = s``) can only be told apart by the ``m - s`` other
    tasks and the new ones, so ``binom(m - s + r, floor(.)) >= g``. A factor read by every task
    (``s = m``, ``g = 1``) with ``n >= 2`` needs one new task.
    """
    m, n = a.shape
    if n < 2:
        return 0, None
    r = 0
    reason: str | None = None
    while max_factors_for_tasks(m + r) < n:
        r += 1
    if r:
        reason = (
            f"{m} tasks can separate at most binom({m}, {m // 2}) = {max_factors_for_tasks(m)} factors "
            f"(Sperner bound), fewer than {n}"
        )
    sizes = a.sum(axis=0)
    _, first, counts = np.unique(
        a.T, axis=0, return_index=True, return_counts=True
    )
    for c in np.argsort(-counts, kind="stable").tolist():
        g, s, i = int(counts[c]), int(sizes[first[c]]), int(first[c])
        need = 0
        if g >= 2:
            while max_factors_for_tasks(m - s + need) < g:
                need += 1
        elif s == m:
            need = 1
        if need > r:
            r = need
            if g >= 2:
                reason = (
                    f"{g} factors ({factors[i]!r}, ...) share one task set; the {m - s} tasks outside it "
                    f"can separate at most {max_factors_for_tasks(m - s)} of them"
                )
            else:
                reason = f"factor {factors[i]!r} is read by every task, so its task set contains all others"
    return r, reason


def _fresh_ids(graph: TaskFactorGraph, r: int) -> list[str]:
    taken = set(graph.factors) | set(graph.tasks)
    out: list[str] = []
    k = 1
    while len(out) < r:
        name = f"new_task_{k}"
        if name not in taken:
            out.append(name)
        k += 1
    return out


def _proposal(
    graph: TaskFactorGraph,
    b: np.ndarray,
    method: str,
    minimal: bool,
    suffice: bool | None,
    reason: str | None,
) -> RepairProposal:
    """Wrap the repaired ``(m + r, n)`` matrix ``b`` (rows = tasks; the last ``r`` rows are new)."""
    m = graph.n_tasks
    r = b.shape[0] - m
    new_ids = _fresh_ids(graph, r)
    repaired = TaskFactorGraph(graph.factors, (*graph.tasks, *new_ids), b)
    if not check_uic(repaired).uic_holds:  # the promise of this module; never expected to fire
        raise RuntimeError(f"internal error: the {method} repair does not satisfy the UIC")
    added_t, added_i = np.nonzero(b[:m] & ~graph.adjacency)
    added = tuple(
        (graph.factors[i], graph.tasks[t]) for t, i in zip(added_t.tolist(), added_i.tolist(), strict=True)
    )
    new_tasks = tuple(
        (new_ids[k], tuple(graph.factors[i] for i in np.flatnonzero(b[m + k]).tolist())) for k in range(r)
    )
    return RepairProposal(added, new_tasks, method, minimal, suffice, reason, repaired)


def propose_repair(
    graph: TaskFactorGraph,
    report: UICReport | None = None,
    *,
    exact_max_witnesses: int = 20_000,
    time_limit: float = 10.0,
    max_greedy_steps: int | None = None,
) -> RepairProposal:
    """Propose edges to add (and new tasks if needed) so that ``graph`` satisfies the UIC.

    Arguments:
        graph: the graph to repair (adjacency rows = tasks, columns = factors).
        report: ``check_uic(graph)`` if already computed.
        exact_max_witnesses: largest MILP (witness variables) solved exactly; beyond it, greedy.
        time_limit: seconds for the whole exact search; running out falls back as described above.
        max_greedy_steps: cap on greedy edge additions (default ``m * n``).

    Returns:
        a :class:`RepairProposal`, re-checked by :func:`check_uic`. See the module docstring for what
        is minimal and when.
    """
    report = check_uic(graph) if report is None else report
    a = np.array(graph.adjacency, dtype=bool)
    m, n = a.shape
    if report.uic_holds:
        return _proposal(graph, a, "none needed", True, True, None)
    failing = report.failing
    r_max, codes = _new_task_codes(failing.size)
    r_min, impossible = _new_tasks_lower_bound(a, graph.factors)
    deadline = time.monotonic() + time_limit
    for r in range(r_min, r_max + 1):
        padded = np.vstack([a, np.zeros((r, n), dtype=bool)])
        if _witness_count(padded) > exact_max_witnesses:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        status, b = _solve_exact(padded, m, remaining)
        if b is not None and not check_uic(TaskFactorGraph.from_matrix(b)).uic_holds:
            b, status = None, "unknown"  # a numerically off solver answer: fall back to greedy
        if b is not None:  # "optimal", or "feasible" when the time limit stopped the proof
            if r == 0:
                return _proposal(graph, b, "exact", status == "optimal", True, None)
            reason = impossible or "no set of added edges on the existing tasks satisfies the UIC (exact search)"
            return _proposal(graph, b, "exact", status == "optimal", False, reason)
        if status == "unknown":  # out of time without a solution
            break
        if r == 0:
            impossible = "no set of added edges on the existing tasks satisfies the UIC (exact search)"
    # greedy: existing tasks first (unless proven impossible), then new-task codes
    suffice: bool | None = False if impossible is not None else None
    if impossible is None:
        steps = m * n if max_greedy_steps is None else max_greedy_steps
        b = _greedy_existing(a, steps)
        if b is not None:
            return _proposal(graph, b, "greedy", False, True, None)
        reason = "the greedy search found no repair on the existing tasks (not a proof that none exists)"
    else:
        reason = impossible
    b = np.vstack([a, np.zeros((r_max, n), dtype=bool)])
    for k, i in enumerate(failing.tolist()):
        b[[m + t for t in codes[k]], i] = True
    return _proposal(graph, b, "greedy", False, suffice, reason)
