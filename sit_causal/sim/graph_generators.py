"""Random task-to-factor graphs for simulations: the graph of the meta-SCM when no file is given.

Every generator returns a :class:`~sit_causal.theory.graph.TaskFactorGraph` whose ``adjacency`` has shape
``(n_tasks, n_factors)``, **rows = tasks, columns = factors**, factors named ``L1..Ln`` and tasks
``T1..Tm``. Every task reads at least one factor (no row is empty) in every mode.

Modes (:func:`generate_graph`, mode strings parsed by :func:`parse_graph_mode`):

* ``"uic"``: satisfies the UIC by construction. The task sets ``C_i`` are ``n`` distinct random
  subsets of the ``m`` tasks, all of one size ``s``, so none contains another (an antichain). ``s`` is
  drawn uniformly among the sizes near ``m / 2`` (``floor(m/2) - 1 .. ceil(m/2) + 1``) that have
  ``binom(m, s) >= n`` distinct subsets and can cover every task (``n * s >= m``); other sizes are used
  only when none of those fit. Impossible iff Sperner's bound ``binom(m, floor(m/2)) < n`` fails: then a
  :class:`~sit_causal.theory.graph.GraphError` names the minimum number of tasks.
* ``"bernoulli:p"``: every edge independently with probability ``p``; an empty row gets one uniformly
  random edge. The UIC may or may not hold.
* ``"block"``: a violating negative control. Factors are split into ``min(m, n // 2)`` blocks of at
  least two factors and tasks into as many groups; group ``b`` reads exactly block ``b``. Factors of one
  block have equal task sets, so each mixes with the rest of its block. Needs ``n >= 2``.
* ``"nested"``: a chain of containments. Factor ``i`` is read by the first ``c_i`` tasks of a random
  task order, with ``1 <= c_i <= m`` (distinct sizes when ``n <= m``) and the largest ``c_i = m``;
  every factor's task set is contained in the next one's. Needs ``n >= 2``.

Factor and task orders are shuffled in every mode, so no mode has a recognisable column order.

Size limit: every mode refuses (``ValueError`` naming the numbers) a graph with more than
:data:`MAX_CELLS` = 10^7 entries ``n_factors * n_tasks`` (a dense boolean matrix of 10 MB, and the
meta-SCM's parameters scale with it). Below it every mode returns in seconds: binomials are never
computed beyond the number they are compared with (Sperner's bound for 100000 tasks is a 30000-digit
number), the ``"uic"`` mode skips random draws that cannot cover every task (expected uncovered tasks
``m (1 - s/m)^n`` over :data:`_HOPELESS`) and goes to its covering construction, caps its random
attempts at about :data:`_WORK` matrix entries, and draws more than :data:`_VECTOR_FROM` distinct subsets
in vectorised batches. For the sizes where none of these applies (the sizes of every recorded experiment)
a seed gives exactly the graph it gave before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sit_causal.theory.graph import GraphError, TaskFactorGraph
from sit_causal.theory.uic import max_factors_for_tasks, min_tasks_for_factors

__all__ = [
    "GRAPH_MODES",
    "MAX_CELLS",
    "GraphMode",
    "bernoulli_graph",
    "block_graph",
    "generate_graph",
    "nested_graph",
    "parse_graph_mode",
    "uic_graph",
]

GRAPH_MODES: tuple[str, ...] = ("uic", "bernoulli", "block", "nested")
MAX_CELLS = 10**7  # largest n_factors * n_tasks any mode draws
_HOPELESS = 25.0  # expected uncovered tasks beyond which random s-subsets never cover (P ~ exp(-25))
_WORK = 2 * 10**8  # matrix entries drawn by the random attempts of the "uic" mode, at most (~2 s)
_VECTOR_FROM = 10_000  # factors from which distinct subsets are drawn in vectorised batches


@dataclass(frozen=True)
class GraphMode:
    """A parsed mode string: ``kind`` in :data:`GRAPH_MODES` and ``p`` (Bernoulli only)."""

    kind: str
    p: float | None = None

    def __str__(self) -> str:
        return f"{self.kind}:{self.p:g}" if self.p is not None else self.kind


def parse_graph_mode(text: str, default_p: float = 0.5) -> GraphMode:
    """Parse ``"uic"``, ``"block"``, ``"nested"``, ``"bernoulli"`` or ``"bernoulli:P"`` (``0 < P <= 1``).

    Raises ``ValueError`` with a one-line message on anything else.
    """
    kind, sep, arg = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in GRAPH_MODES:
        raise ValueError(f"unknown graph mode {text!r}; use one of uic, bernoulli:P, block, nested")
    if kind != "bernoulli":
        if sep:
            raise ValueError(f"graph mode {kind!r} takes no argument, got {text!r}")
        return GraphMode(kind)
    if not sep:
        p = default_p
    else:
        try:
            p = float(arg)
        except ValueError:
            raise ValueError(f"graph mode {text!r}: P must be a number, e.g. bernoulli:0.3") from None
    if not 0.0 < p <= 1.0:
        raise ValueError(f"graph mode {text!r}: P must be in (0, 1]")
    return GraphMode("bernoulli", p)


def _check_sizes(n_factors: int, n_tasks: int) -> None:
    if n_factors < 1:
        raise ValueError(f"n_factors must be >= 1, got {n_factors}")
    if n_tasks < 1:
        raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
    if n_factors * n_tasks > MAX_CELLS:
        raise ValueError(
            f"graph too large: {n_factors} factors x {n_tasks} tasks = {n_factors * n_tasks:,} entries, over the "
            f"limit of {MAX_CELLS:,} (sit_causal.sim.graph_generators.MAX_CELLS)"
        )


def _binom_capped(m: int, s: int, cap: int) -> int:
    """``min(binom(m, s), cap + 1)``, exact below the cap, without computing a huge binomial.

    ``binom(m, k)`` grows with ``k`` up to ``min(s, m - s)``, so the partial products stop as soon as
    one passes ``cap``: a few steps whenever ``m`` is large.
    """
    if s < 0 or s > m:
        return 0
    c = 1
    for k in range(1, min(s, m - s) + 1):
        if c > cap:
            break
        c = c * (m - k + 1) // k  # = binom(m, k), exact
    return min(c, cap + 1)


def _binom_at_least(m: int, s: int, n: int) -> bool:
    """``binom(m, s) >= n``."""
    return _binom_capped(m, s, n) >= n


def _finish(adjacency: np.ndarray, rng: np.random.Generator) -> TaskFactorGraph:
    """Shuffle rows and columns, then wrap (rows = tasks, columns = factors)."""
    m, n = adjacency.shape
    adjacency = adjacency[rng.permutation(m)][:, rng.permutation(n)]
    return TaskFactorGraph.from_matrix(adjacency)


# ---------------------------------------------------------------------- uic
def _uic_sizes(n: int, m: int) -> list[int]:
    """The subset sizes ``s`` the ``"uic"`` mode draws from (module docstring), ascending."""
    def fits(s: int) -> bool:
        return n * s >= m and _binom_at_least(m, s, n)

    near = [s for s in range(max(1, m // 2 - 1), min(m, (m + 1) // 2 + 1) + 1) if fits(s)]
    return near or [s for s in range(1, m + 1) if fits(s)]


def _distinct_subsets_batched(n: int, m: int, s: int, rng: np.random.Generator) -> np.ndarray:
    """As :func:`_distinct_subsets` (sparse regime), drawing the candidate subsets in vectorised batches."""
    seen: set[bytes] = set()
    out = np.zeros((m, n), dtype=bool)
    j = 0
    while j < n:
        k = max(1, min(2 * (n - j), 4 * 10**6 // m))
        picks = np.argpartition(rng.random((k, m)), s - 1, axis=1)[:, :s] if s < m else np.tile(np.arange(m), (k, 1))
        rows = np.zeros((k, m), dtype=bool)
        rows[np.arange(k)[:, None], picks] = True
        for row, key in zip(rows, np.packbits(rows, axis=1), strict=True):
            b = key.tobytes()
            if b not in seen:
                seen.add(b)
                out[:, j] = row
                j += 1
                if j == n:
                    break
    return out


def _distinct_subsets(n: int, m: int, s: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct random ``s``-subsets of ``range(m)`` as an ``(m, n)`` boolean matrix (columns)."""
    total = _binom_capped(m, s, 200_000)  # exact when <= 200000, the only case that needs it
    if n > total // 2 and total <= 200_000:
        # dense regime: enumerate all s-subsets as bit patterns, pick n of them
        from itertools import combinations

        pick = rng.choice(total, size=n, replace=False)
        chosen = set(pick.tolist())
        cols = [c for idx, c in enumerate(combinations(range(m), s)) if idx in chosen]
        mat = np.zeros((m, n), dtype=bool)
        for j, c in enumerate(cols):
            mat[list(c), j] = True
        return mat[:, rng.permutation(n)]
    if n > _VECTOR_FROM:
        return _distinct_subsets_batched(n, m, s, rng)
    seen: set[bytes] = set()
    out = np.zeros((m, n), dtype=bool)
    j = 0
    while j < n:  # sparse regime: rejection of duplicates (accepts with probability >= 1/2)
        col = np.zeros(m, dtype=bool)
        col[rng.choice(m, size=s, replace=False)] = True
        key = col.tobytes()
        if key not in seen:
            seen.add(key)
            out[:, j] = col
            j += 1
    return out


def uic_graph(n_factors: int, n_tasks: int, rng: np.random.Generator) -> TaskFactorGraph:
    """A random graph satisfying the UIC (see the module docstring); ``GraphError`` if impossible."""
    _check_sizes(n_factors, n_tasks)
    n, m = n_factors, n_tasks
    if not _binom_at_least(m, m // 2, n):  # then binom(m, m // 2) < n is small: computing it is cheap
        raise GraphError(
            f"no task-to-factor graph with {m} tasks satisfies the UIC for {n} factors: Sperner's bound "
            f"binom(m, floor(m/2)) = {max_factors_for_tasks(m)} < {n}; use at least "
            f"{min_tasks_for_factors(n)} tasks"
        )
    sizes = _uic_sizes(n, m)
    if not sizes:  # only n = 1 with m > 1 could land here, and s = m always fits it
        raise GraphError(f"cannot cover {m} tasks with {n} factors under the UIC")
    # Random draws, unless even the largest size leaves tasks uncovered for sure; at most ~_WORK entries.
    hopeless = m * (1.0 - max(sizes) / m) ** n > _HOPELESS
    for _ in range(0 if hopeless else min(1000, max(1, _WORK // (n * m)))):
        s = int(rng.choice(sizes))
        cols = _distinct_subsets(n, m, s, rng)
        if cols.any(axis=1).all():  # every task reads some factor
            return _finish(cols, rng)
    # Tight covering (n * s close to m): build a cover first, then fill up to size s.
    s = max(sizes)
    for _ in range(1000):
        cols = np.zeros((m, n), dtype=bool)
        order = rng.permutation(m)
        cols[order, np.arange(m) % n] = True
        for j in range(n):
            free = np.flatnonzero(~cols[:, j])
            cols[rng.choice(free, size=s - cols[:, j].sum(), replace=False), j] = True
        if len({cols[:, j].tobytes() for j in range(n)}) == n:
            return _finish(cols, rng)
    raise GraphError(f"could not draw a UIC graph with {n} factors and {m} tasks")  # pragma: no cover


# ---------------------------------------------------------------------- others
def bernoulli_graph(n_factors: int, n_tasks: int, rng: np.random.Generator, p: float = 0.5) -> TaskFactorGraph:
    """Independent edges with probability ``p``; an empty row receives one random edge."""
    _check_sizes(n_factors, n_tasks)
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p must be in (0, 1], got {p}")
    adj = rng.random((n_tasks, n_factors)) < p
    empty = np.flatnonzero(~adj.any(axis=1))
    adj[empty, rng.integers(0, n_factors, size=empty.size)] = True
    return TaskFactorGraph.from_matrix(adj)


def block_graph(n_factors: int, n_tasks: int, rng: np.random.Generator) -> TaskFactorGraph:
    """Block-diagonal graph: blocks of >= 2 factors with identical task sets (always violates the UIC)."""
    _check_sizes(n_factors, n_tasks)
    if n_factors < 2:
        raise ValueError("the block mode needs at least 2 factors to violate the UIC")
    n_blocks = min(n_tasks, n_factors // 2)
    factor_block = np.arange(n_factors) % n_blocks
    task_block = np.arange(n_tasks) % n_blocks
    adj = task_block[:, None] == factor_block[None, :]
    return _finish(adj, rng)


def nested_graph(n_factors: int, n_tasks: int, rng: np.random.Generator) -> TaskFactorGraph:
    """Nested task sets ``C_(1) ⊆ C_(2) ⊆ ...`` (always violates the UIC)."""
    _check_sizes(n_factors, n_tasks)
    if n_factors < 2:
        raise ValueError("the nested mode needs at least 2 factors to violate the UIC")
    if n_factors <= n_tasks:
        sizes = np.sort(rng.choice(np.arange(1, n_tasks), size=n_factors - 1, replace=False))
    else:
        sizes = np.sort(rng.integers(1, n_tasks + 1, size=n_factors - 1))
    sizes = np.append(sizes, n_tasks)  # the largest set is every task: no empty row
    adj = np.arange(n_tasks)[:, None] < sizes[None, :]
    return _finish(adj, rng)


def generate_graph(mode: str | GraphMode, n_factors: int, n_tasks: int, rng: np.random.Generator,
                   p: float = 0.5) -> TaskFactorGraph:
    """Draw a graph of ``mode`` (a :class:`GraphMode` or a string for :func:`parse_graph_mode`).

    ``p`` is the Bernoulli edge probability when the mode string does not give one.
    Returns a graph with ``adjacency`` of shape ``(n_tasks, n_factors)``, rows = tasks.
    """
    parsed = mode if isinstance(mode, GraphMode) else parse_graph_mode(mode, default_p=p)
    if parsed.kind == "uic":
        return uic_graph(n_factors, n_tasks, rng)
    if parsed.kind == "bernoulli":
        return bernoulli_graph(n_factors, n_tasks, rng, p if parsed.p is None else parsed.p)
    if parsed.kind == "block":
        return block_graph(n_factors, n_tasks, rng)
    return nested_graph(n_factors, n_tasks, rng)
