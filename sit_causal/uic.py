"""The Uniform Identifiability Condition (UIC) on a task-to-factor graph.

Notation (``A`` = ``graph.adjacency``, shape ``(m, n)``, **rows = tasks, columns = factors**):

* task set of factor ``i``: ``C_i = {t : A[t, i] = 1}``;
* containment matrix ``K`` (``n x n``, rows and columns = factors): ``K[i, j] = 1`` iff ``i != j`` and
  ``C_i ⊆ C_j``. With integer matrices, ``|C_i \\ C_j| = (A^T (1 - A))[i, j]``, so
  ``K = (A^T (1 - A) == 0)`` off the diagonal: one matrix product, no Python double loop;
* mixing set of factor ``i``: ``M_i = {j : K[i, j] = 1}``. If every task reading ``L_i`` also reads
  ``L_j``, then ``L_i' = L_i + a L_j`` is consistent with the graph, so ``L_i`` is only recoverable with
  ``L_j`` mixed in;
* the UIC holds iff every ``M_i`` is empty, i.e. the task sets form an antichain (no one contains
  another; a factor read by no task has ``C_i = ∅ ⊆ C_j`` and fails whenever ``n >= 2``).

Sperner's theorem bounds the antichain: ``n`` factors can satisfy the UIC with ``m`` tasks iff
``binom(m, floor(m/2)) >= n``.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from typing import Any

import numpy as np

from sit_causal.graph import TaskFactorGraph

__all__ = [
    "FactorVerdict",
    "UICReport",
    "check_uic",
    "containment_matrix",
    "max_factors_for_tasks",
    "min_tasks_for_factors",
]


def containment_matrix(adjacency: np.ndarray) -> np.ndarray:
    """Boolean ``(n, n)`` matrix ``K`` with ``K[i, j]`` iff ``i != j`` and ``C_i ⊆ C_j``.

    Arguments:
        adjacency: ``(m, n)`` 0/1 matrix, rows = tasks, columns = factors.

    Returns:
        ``K``, rows and columns = factors. Row ``i`` is the mixing set of factor ``i``.

    Computed as ``A^T (1 - A) == 0`` in float32 BLAS (exact for ``m < 2**24``).
    """
    a = np.asarray(adjacency, dtype=np.float32)
    n = a.shape[1]
    missing = a.T @ (1.0 - a)  # missing[i, j] = |C_i \ C_j|
    k = missing == 0
    k[np.arange(n), np.arange(n)] = False
    return k


def min_tasks_for_factors(n_factors: int) -> int:
    """Smallest ``m`` with ``binom(m, floor(m/2)) >= n_factors`` (Sperner): fewer tasks cannot
    separate that many factors. 1 factor needs 1 task (it must be read by someone)."""
    if n_factors < 1:
        raise ValueError("n_factors must be >= 1")
    m = 1
    while comb(m, m // 2) < n_factors:
        m += 1
    return m


def max_factors_for_tasks(n_tasks: int) -> int:
    """``binom(m, floor(m/2))``: the most factors ``m`` tasks can separate under the UIC."""
    return comb(n_tasks, n_tasks // 2) if n_tasks > 0 else 0


@dataclass(frozen=True)
class FactorVerdict:
    """Diagnostics of one factor.

    Arguments:
        id: factor id.
        tasks: ``C_i``, the tasks that read it.
        mixes_with: ``M_i``, the factors whose task sets contain ``C_i``.
        identifiable: ``M_i`` is empty (and the factor is read by some task, or it is the only factor).
    """

    id: str
    tasks: tuple[str, ...]
    mixes_with: tuple[str, ...]
    identifiable: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tasks": list(self.tasks),
            "mixes_with": list(self.mixes_with),
            "identifiable": self.identifiable,
        }


@dataclass(frozen=True)
class UICReport:
    """The verdict of :func:`check_uic`.

    ``violations`` lists ordered pairs ``(a, b)`` of factor ids meaning "every task reading ``a`` also
    reads ``b``" (so ``a`` mixes with ``b``). ``min_tasks`` is the Sperner bound for this many
    factors and ``enough_tasks`` says whether the graph has at least that many tasks.
    """

    graph: TaskFactorGraph
    factors: tuple[FactorVerdict, ...]
    violations: tuple[tuple[str, str], ...]
    min_tasks: int

    @property
    def uic_holds(self) -> bool:
        return not self.violations and all(f.identifiable for f in self.factors)

    @property
    def enough_tasks(self) -> bool:
        return self.graph.n_tasks >= self.min_tasks

    @property
    def identifiable_mask(self) -> np.ndarray:
        """Boolean vector over factors (column order): the checker's prediction per factor."""
        return np.array([f.identifiable for f in self.factors], dtype=bool)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` object of ``sit-causal check-uic`` (``repair`` is filled in by the CLI)."""
        return {
            "uic_holds": self.uic_holds,
            "n_factors": self.graph.n_factors,
            "n_tasks": self.graph.n_tasks,
            "factors": [f.to_json() for f in self.factors],
            "violations": [list(v) for v in self.violations],
            "min_tasks": self.min_tasks,
            "enough_tasks": self.enough_tasks,
            "repair": None,
        }


def check_uic(graph: TaskFactorGraph) -> UICReport:
    """Decide the UIC for ``graph`` and explain every failure (see the module docstring)."""
    k = containment_matrix(graph.adjacency)
    read = graph.adjacency.any(axis=0)
    task_sets = graph.task_sets()
    rows, cols = np.nonzero(k)
    violations = tuple((graph.factors[i], graph.factors[j]) for i, j in zip(rows, cols, strict=True))
    mixes: list[list[str]] = [[] for _ in range(graph.n_factors)]
    for i, j in zip(rows, cols, strict=True):
        mixes[i].append(graph.factors[j])
    only_factor = graph.n_factors == 1
    verdicts = tuple(
        FactorVerdict(
            id=graph.factors[i],
            tasks=task_sets[i],
            mixes_with=tuple(mixes[i]),
            identifiable=not mixes[i] and (bool(read[i]) or only_factor),
        )
        for i in range(graph.n_factors)
    )
    return UICReport(graph=graph, factors=verdicts, violations=violations,
                     min_tasks=min_tasks_for_factors(graph.n_factors))
