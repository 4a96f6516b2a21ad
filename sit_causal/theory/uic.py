"""The Uniform Identifiability Condition (UIC) on a task-to-factor graph.

Notation (``A`` = ``graph.adjacency``, shape ``(m, n)``, **rows = tasks, columns = factors**):

* task set of factor ``i``: ``C_i = {t : A[t, i] = 1}``;
* containment matrix ``K`` (``n x n``, rows and columns = factors): ``K[i, j] = 1`` iff ``i != j`` and
  ``C_i ⊆ C_j``;
* mixing set of factor ``i``: ``M_i = {j : K[i, j] = 1}``. If every task reading ``L_i`` also reads
  ``L_j``, then ``L_i' = L_i + a L_j`` is consistent with the graph, so ``L_i`` is only recoverable with
  ``L_j`` mixed in;
* the UIC holds iff every ``M_i`` is empty, i.e. the task sets form an antichain (no one contains
  another). A factor read by no task has ``C_i = ∅ ⊆ C_j`` and fails whenever ``n >= 2``; a single
  factor has nothing to mix with and always passes.

**Orthogonal ambiguity** (``check_uic(graph, ambiguity="orthogonal")``). The mixing ``L_i + a L_j`` above is
the ambiguity of a *general* invertible linear map. When the representation is already known up to an
*orthogonal* map, a mixture must keep the learned factors uncorrelated. Within-dataset whitening gives
that whenever each dataset's factor covariance is diagonal (the factors are uncorrelated, e.g.
independent, given the dataset); the variances may differ across datasets. That rotation is a *real*
ambiguity only if, in addition, the variance ratios do not vary across datasets (else joint
diagonalisation of the per-dataset covariances fixes it with no task) and the factors are conditionally
Gaussian (else ICA fixes it): the mean-modulated Gaussian prior with a shared diagonal covariance. There,
rotating ``L_i`` and ``L_j`` by any angle makes *both* learned factors read by ``C_i ∪ C_j``, which adds
edges unless ``C_i = C_j``. A graph-sparse model then pins every factor whose task set is unique, and the
mixing set shrinks to ``M_i^orth = {j != i : C_j = C_i}`` (identical task sets; with ``C_i`` empty this
includes the other factors read by no task). ``M_i^orth ⊆ M_i``, so the UIC implies this weaker
condition. Latents related within a dataset (a non-diagonal within-dataset covariance) leave a general
linear map and the linear form applies. The numbered assumptions of both forms are in docs/uic.md.
Measured in docs/results/theory_check.md: a sparse rotation recovers the factors of a nested graph, which
the UIC calls mixed, and leaves the equal-task-set blocks mixed.

Sperner's theorem bounds the antichain: ``n`` factors can satisfy the UIC with ``m`` tasks iff
``binom(m, floor(m/2)) >= n``.

How the check scales (no Python double loop, no ``n x n`` matrix):

1. each task set ``C_i`` is bit-packed into ``W = ceil(m / 64)`` ``uint64`` words, so
   ``C_i ⊆ C_j`` iff ``C_i & ~C_j == 0`` word by word;
2. factors with identical task sets are grouped (``np.unique``): two factors of one group mix with each
   other, and the expensive test only runs between the ``u`` *distinct* sets;
3. distinct sets are sorted by size; a strict containment ``C_c ⊂ C_d`` needs ``|C_c| < |C_d|``, so each
   block of rows is only compared with the columns of larger size, in blocks of a few million words.

The report keeps the result in that compressed form (group of each factor, strict supersets of each
group) and expands mixing sets and violation pairs only on demand, so a graph where every factor mixes
with every other (``n (n - 1)`` violations) costs ``O(n)`` memory until someone asks for the full list.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from math import comb
from typing import Any, Literal

import numpy as np

from sit_causal.theory.graph import TaskFactorGraph

__all__ = [
    "AMBIGUITIES",
    "FactorVerdict",
    "UICReport",
    "check_uic",
    "containment_matrix",
    "max_factors_for_tasks",
    "min_tasks_for_factors",
    "pack_task_sets",
]

Ambiguity = Literal["linear", "orthogonal"]
AMBIGUITIES: tuple[str, ...] = ("linear", "orthogonal")
"""``linear``: the UIC (containment mixes); ``orthogonal``: only identical task sets mix (module docstring)."""

_BLOCK_WORDS = 1 << 22  # words compared per block: bounds the temporary memory (~4 M x 8 bytes)


def pack_task_sets(adjacency: np.ndarray) -> np.ndarray:
    """Bit-pack every factor's task set.

    Arguments:
        adjacency: ``(m, n)`` 0/1 matrix, rows = tasks, columns = factors.

    Returns:
        ``(n, W)`` ``uint64`` array, ``W = max(1, ceil(m / 64))``: row ``i`` encodes ``C_i``. Only
        bitwise relations between rows are meaningful (the bit order is an implementation detail).
    """
    a = np.asarray(adjacency, dtype=bool)
    m, n = a.shape
    words = max(1, -(-m // 64))
    padded = np.zeros((words * 64, n), dtype=bool)
    padded[:m] = a
    packed = np.packbits(padded, axis=0, bitorder="little")  # (8 W, n) uint8
    return np.ascontiguousarray(packed.T).view(np.uint64)  # (n, W)


def _strict_containments(codes: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``(c, d)`` of *distinct* packed sets with ``set_c ⊂ set_d``.

    Arguments:
        codes: ``(u, W)`` ``uint64``, pairwise distinct rows.
        sizes: ``(u,)`` number of elements of each set.

    Returns:
        two ``int64`` arrays ``(c, d)`` of equal length, sorted by ``c`` then ``d``.
    """
    u = codes.shape[0]
    if u * u * codes.shape[1] <= 1 << 14:  # small: one broadcast, no sorting or blocks
        inside = ~((codes[:, None, :] & ~codes[None, :, :]) != 0).any(axis=2)
        np.fill_diagonal(inside, False)
        cs, ds = np.nonzero(inside)
        return cs.astype(np.int64), ds.astype(np.int64)
    order = np.argsort(sizes, kind="stable")
    sorted_codes = codes[order]
    sorted_sizes = sizes[order]
    complement = ~sorted_codes
    block = max(1, _BLOCK_WORDS // max(1, u * codes.shape[1]))
    found_c: list[np.ndarray] = []
    found_d: list[np.ndarray] = []
    for start in range(0, u, block):
        stop = min(start + block, u)
        # columns strictly larger than the smallest row of the block; smaller or equal-size distinct
        # sets cannot be supersets, so the only spurious hit left is a row against itself.
        lo = int(np.searchsorted(sorted_sizes, sorted_sizes[start], side="right"))
        if lo >= u:
            break
        outside = np.zeros((stop - start, u - lo), dtype=bool)  # some element of row c is not in d
        for w in range(codes.shape[1]):
            outside |= (sorted_codes[start:stop, w, None] & complement[None, lo:, w]) != 0
        r, c = np.nonzero(~outside)
        r += start
        c += lo
        keep = r != c
        found_c.append(order[r[keep]])
        found_d.append(order[c[keep]])
    if not found_c:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    cs, ds = np.concatenate(found_c).astype(np.int64), np.concatenate(found_d).astype(np.int64)
    idx = np.lexsort((ds, cs))
    return cs[idx], ds[idx]


def _group_sets(adjacency: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct task sets: ``(codes (u, W), sizes (u,), set_index (n,))``."""
    a = np.asarray(adjacency, dtype=bool)
    if a.shape[0] <= 64:  # one word: codes as a weighted sum, cheaper than packbits for small graphs
        weights = np.left_shift(np.uint64(1), np.arange(a.shape[0], dtype=np.uint64))
        codes = (a.T * weights).sum(axis=1, dtype=np.uint64)[:, None]
    else:
        codes = pack_task_sets(a)
    if codes.shape[1] == 1:
        uniq, first, inverse = np.unique(codes[:, 0], return_index=True, return_inverse=True)
        uniq = uniq[:, None]
    else:
        uniq, first, inverse = np.unique(codes, axis=0, return_index=True, return_inverse=True)
    sizes = a.sum(axis=0)[first]
    return uniq, sizes.astype(np.int64), inverse.ravel().astype(np.int64)


def containment_matrix(adjacency: np.ndarray) -> np.ndarray:
    """Boolean ``(n, n)`` matrix ``K`` with ``K[i, j]`` iff ``i != j`` and ``C_i ⊆ C_j``.

    Arguments:
        adjacency: ``(m, n)`` 0/1 matrix, rows = tasks, columns = factors.

    Returns:
        ``K``, rows and columns = factors. Row ``i`` is the mixing set of factor ``i``. This is the dense
        ``O(n^2)`` form; :func:`check_uic` never builds it.
    """
    codes, sizes, set_index = _group_sets(adjacency)
    u = codes.shape[0]
    between = np.eye(u, dtype=bool)  # equal sets contain each other
    c, d = _strict_containments(codes, sizes)
    between[c, d] = True
    k = between[set_index][:, set_index]
    np.fill_diagonal(k, False)
    return k


def min_tasks_for_factors(n_factors: int) -> int:
    """Smallest ``m`` with ``binom(m, floor(m/2)) >= n_factors`` (Sperner): fewer tasks cannot
    separate that many factors. By convention 1 factor needs 1 task (it must be read by someone to be
    learned at all), although it has nothing to mix with."""
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
        mixes_with: ``M_i``, the factors whose task sets contain ``C_i`` (in factor order).
        identifiable: ``M_i`` is empty.
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


@dataclass(frozen=True, eq=False)
class UICReport:
    """The verdict of :func:`check_uic`, stored compressed (see the module docstring).

    Arguments:
        graph: the checked graph.
        set_index: ``(n,)`` int, for each factor (column order) the index of its distinct task set.
        set_members: ``(n,)`` int, factor indices sorted by (``set_index``, factor index); the factors
            of distinct set ``c`` are ``set_members[members_ptr[c]:members_ptr[c + 1]]``.
        members_ptr: ``(u + 1,)`` int, offsets into ``set_members``.
        supersets: ``(p,)`` int, distinct sets; the sets strictly containing set ``c`` are
            ``supersets[supersets_ptr[c]:supersets_ptr[c + 1]]``.
        supersets_ptr: ``(u + 1,)`` int, offsets into ``supersets``.
        mixing_counts: ``(n,)`` int, ``|M_i|`` for every factor.
        min_tasks: the Sperner bound for this many factors (orthogonal: ``ceil(log2 n)``).
        ambiguity: ``"linear"`` (the UIC) or ``"orthogonal"`` (only identical task sets mix; then
            ``supersets`` is empty).

    ``violations`` lists ordered pairs ``(a, b)`` of factor ids meaning "every task reading ``a`` also
    reads ``b``" (so ``a`` mixes with ``b``), ordered by ``a`` then ``b`` in column order. It and
    ``factors`` are expanded lazily (:meth:`iter_violations` yields the pairs without building the list).
    """

    graph: TaskFactorGraph
    set_index: np.ndarray
    set_members: np.ndarray
    members_ptr: np.ndarray
    supersets: np.ndarray
    supersets_ptr: np.ndarray
    mixing_counts: np.ndarray
    min_tasks: int
    ambiguity: str = "linear"

    # ------------------------------------------------------------------ summary
    @property
    def n_violations(self) -> int:
        """Number of violating ordered pairs, ``sum_i |M_i|``."""
        return int(self.mixing_counts.sum())

    @property
    def uic_holds(self) -> bool:
        return self.n_violations == 0

    @property
    def enough_tasks(self) -> bool:
        return self.graph.n_tasks >= self.min_tasks

    @property
    def identifiable_mask(self) -> np.ndarray:
        """Boolean vector over factors (column order): the checker's prediction per factor."""
        return self.mixing_counts == 0

    @property
    def failing(self) -> np.ndarray:
        """Indices (column order) of the factors with a non-empty mixing set."""
        return np.flatnonzero(self.mixing_counts)

    # ------------------------------------------------------------------ expansion
    def mixing_indices(self, i: int) -> np.ndarray:
        """``M_i`` as sorted factor indices."""
        c = int(self.set_index[i])
        groups = [c, *self.supersets[self.supersets_ptr[c] : self.supersets_ptr[c + 1]].tolist()]
        parts = [self.set_members[self.members_ptr[g] : self.members_ptr[g + 1]] for g in groups]
        idx = np.sort(np.concatenate(parts))
        return idx[idx != i]

    def mixes_with(self, i: int) -> tuple[str, ...]:
        """``M_i`` as factor ids, in column order."""
        if not self.mixing_counts[i]:
            return ()
        names = self.graph.factors
        return tuple(names[j] for j in self.mixing_indices(i).tolist())

    def iter_violations(self) -> Iterator[tuple[str, str]]:
        """Every violating ordered pair ``(a, b)`` (``C_a ⊆ C_b``), without building the whole list."""
        names = self.graph.factors
        for i in self.failing.tolist():
            a = names[i]
            for b in self.mixes_with(i):
                yield (a, b)

    @cached_property
    def violations(self) -> tuple[tuple[str, str], ...]:
        return tuple(self.iter_violations())

    def factor_verdict(self, i: int) -> FactorVerdict:
        """The diagnostics of factor ``i`` (column index)."""
        col = self.graph.adjacency[:, i]
        return FactorVerdict(
            id=self.graph.factors[i],
            tasks=tuple(self.graph.tasks[t] for t in np.flatnonzero(col).tolist()),
            mixes_with=self.mixes_with(i),
            identifiable=not self.mixing_counts[i],
        )

    @cached_property
    def factors(self) -> tuple[FactorVerdict, ...]:
        return tuple(self.factor_verdict(i) for i in range(self.graph.n_factors))

    # ------------------------------------------------------------------ JSON
    def json_head(self) -> dict[str, Any]:
        """The keys of :meth:`to_json` before its two lists: the verdict and the graph's size."""
        return {
            "uic_holds": self.uic_holds,
            "n_factors": self.graph.n_factors,
            "n_tasks": self.graph.n_tasks,
            "ambiguity": self.ambiguity,
        }

    def json_tail(self, repair: dict[str, Any] | None) -> dict[str, Any]:
        """The keys of :meth:`to_json` after its two lists: the Sperner bound, the violation count, the repair."""
        return {
            "min_tasks": self.min_tasks,
            "enough_tasks": self.enough_tasks,
            "n_violations": self.n_violations,
            "repair": repair,
        }

    def to_json(self, repair: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``--json`` object of ``sit-causal check-uic`` (``repair`` is filled in by the CLI)."""
        return {
            **self.json_head(),
            "factors": [self.factor_verdict(i).to_json() for i in range(self.graph.n_factors)],
            "violations": [list(v) for v in self.iter_violations()],
            **self.json_tail(repair),
        }


def check_uic(graph: TaskFactorGraph, ambiguity: Ambiguity = "linear") -> UICReport:
    """Decide the UIC for ``graph`` and explain every failure (see the module docstring).

    ``ambiguity="orthogonal"`` checks the weaker condition for a representation known up to a rotation:
    only factors with identical task sets mix (``M_i^orth``).

    Cost: ``O(m n / 64)`` to pack, ``O(u^2 W)`` word operations between the ``u`` distinct task sets
    (halved by the size ordering), ``O(n + p)`` for the report, where ``p`` is the number of strict
    containments between distinct sets.
    """
    codes, sizes, set_index = _group_sets(graph.adjacency)
    u = codes.shape[0]
    if ambiguity == "linear":
        c, d = _strict_containments(codes, sizes)
    elif ambiguity == "orthogonal":
        c = d = np.zeros(0, dtype=np.int64)
    else:
        raise ValueError(f"unknown ambiguity {ambiguity!r}; use one of {', '.join(AMBIGUITIES)}")
    supersets_ptr = np.zeros(u + 1, dtype=np.int64)
    np.cumsum(np.bincount(c, minlength=u), out=supersets_ptr[1:])
    group_size = np.bincount(set_index, minlength=u)
    members_ptr = np.zeros(u + 1, dtype=np.int64)
    np.cumsum(group_size, out=members_ptr[1:])
    set_members = np.argsort(set_index, kind="stable").astype(np.int64)
    # |M_i| = (size of i's group - 1) + sum of the sizes of the groups strictly containing it
    above = np.bincount(c, weights=group_size[d], minlength=u).astype(np.int64)
    mixing_counts = (group_size - 1 + above)[set_index]
    for arr in (set_index, set_members, members_ptr, d, supersets_ptr, mixing_counts):
        arr.setflags(write=False)
    return UICReport(
        graph=graph,
        set_index=set_index,
        set_members=set_members,
        members_ptr=members_ptr,
        supersets=d,
        supersets_ptr=supersets_ptr,
        mixing_counts=mixing_counts,
        # orthogonal: n distinct subsets of m tasks (the empty one included) need 2^m >= n
        min_tasks=(min_tasks_for_factors(graph.n_factors) if ambiguity == "linear"
                   else max(0, (graph.n_factors - 1).bit_length())),
        ambiguity=ambiguity,
    )
