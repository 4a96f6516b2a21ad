"""Selection that reads the data sources: a task keeps a factor only if its contribution is the same in every
source (invariant causal prediction per task, combined with the energy / coverage / UIC repair step).

Inputs are plain arrays, so the statistic runs on any representation (a testbed's true factors, a sequence
model's factor channels, a synthetic model's latents): factors ``Z`` ``(N, n)`` (rows = examples, columns =
factors), categorical targets ``(N, K)`` (``K`` outputs per example, class ids, ``-1`` where an output does not
apply; continuous targets are cut into quantile classes), the task ``(N,)`` and the data source ``(N,)`` of every
example. Every matrix over tasks and factors has **rows = tasks, columns = factors**.

**The test.** For a task ``t``, an output ``k`` and a candidate set ``S`` of factors, the hypothesis of ICP
(Peters et al. 2016) is ``H_S: Y ⫫ E | Z_S``: given the factors in ``S`` the target's distribution is the same in
every source ``E``. It holds for the task's causal parents (``Y = g(Z_pa) + noise``, whatever the sources do to
the factors' distribution) and fails for a shortcut whose agreement with the label differs between sources
(the anti-causal testbed's spurious factor, 0.95 vs 0.85) and for any set containing it. The conditional law
is a **partition model** (a probe): a decision tree on ``Z_S`` (at most ``max_leaves`` cells of at least
``min_leaf`` examples) fit on one half of the task's examples to predict ``Y`` pooled over sources, so its cells
follow the target's steps wherever they lie (a fixed binning would mix the two sides of a step in one cell,
where two sources with different factor distributions then have different label rates), and one such tree per
source on that source's examples of the same half (the per-source probes). On the **other** half, the default
test (``test="score"``, :func:`source_score_test`) is a score test of

    null:         ``log P(y = k | c, e) = alpha_ck - log Z``                     (a free class law per cell),
    alternative:  ``... + delta_ek + gamma_e h_ck + theta (h^(e)_ck - h_ck)``,

with ``h`` the pooled probe's cross-fitted log-probabilities: a source-dependent base rate (``delta``), a
pooled prediction worth more in one source than another (``gamma``: the anti-causal shortcut), and per-source
laws that beat the pooled one (``theta``) -- the per-source vs pooled (Chow-type) comparison with
``(|E| - 1) K + 1`` degrees of freedom instead of one per cell. It is run twice: (a) on the pooled tree's cells,
``h^(e)`` the cell's law among source ``e``'s fit examples (coarse cells: the power against a shortcut), and
(b) on the cells of the pooled and per-source trees together, ``h^(e)`` the prediction of the example's own
source's tree (a factor whose effect differs between sources, e.g. flips sign, which the pooled tree averages
away); ``p_S = min(1, 2 min(p_a, p_b))`` (Bonferroni). Because the null is saturated in the cells and the
features are functions of (cell, source) only, the probes' own errors are absorbed and only a dependence on
the source is tested. ``test="saturated"`` is the plain likelihood-ratio test of a
per-source class law in each cell of the pooled tree against the pooled one (:func:`stratified_g_test`),

    ``G_S = 2 sum_c sum_e sum_y n_cey log( n_cey n_c / (n_ce n_cy) )``,
    ``df_S = sum_c (|E_c| - 1)(|Y_c| - 1)``   (sources and classes present in the cell),

which spends a degree of freedom per cell (and whose chi-square approximation is liberal in sparse cells).
The two halves swap roles and each test's statistics and degrees of freedom add up, ``p = P(chi2_df > stat)``
(``df = 0``: ``p = 1``). The same cross-fit gives the held-out log-likelihood ``ll_S`` of the pooled probe
(cell laws shrunk towards the pooled law by ``smoothing`` pseudo-examples, fit on the other half).

**The choice.** Among the sets of at most ``max_set_size`` of the output's candidate factors (all factors, or
the ``max_candidates`` most predictive ones), the accepted sets are ``{S : p_S >= alpha}``; the output's
invariant set ``S*`` is the smallest accepted set whose held-out log-likelihood is within one standard error of
the best accepted one (a set that misses a parent predicts worse; one that adds a non-parent predicts no
better). If no set is accepted, ``S*`` is the set with the largest ``p_S`` (reported as ``found = False``). A
task's set is the union of its outputs' sets.

**The graph.** Every factor of ``S*`` is needed (a smaller accepted set fits worse, or no smaller set is
accepted), so the invariant energies of output ``k`` are uniform over ``S*`` (0 outside it) and a task's row
is the mean over its outputs (each output counts the same), as in :mod:`sit_causal.selection.probe`. Given
existing energies (e.g. a probe's removal effects measured on the invariant factors), the row is those
energies restricted to the task's plausible factors instead (the union of the accepted sets within one
standard error of the best accepted fit; renormalised; the invariant energies where the restriction leaves
nothing). Then, as in today's selection, the ``coverage`` graph of these energies
(:func:`sit_causal.selection.graph.graph_from_energies`) and its repair to the UIC
(:func:`sit_causal.selection.graph.repair_to_uic`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.stats import chi2

from sit_causal.selection.graph import GraphRepair, graph_from_energies, repair_to_uic

__all__ = [
    "InvarianceConfig",
    "InvariantSelection",
    "OutputChoice",
    "SetTest",
    "invariance_test",
    "select_invariant",
    "source_score_test",
    "stratified_g_test",
]


@dataclass(frozen=True)
class InvarianceConfig:
    """Settings of :func:`select_invariant` (module docstring).

    Arguments:
        alpha: level of the invariance test (a set with ``p_S >= alpha`` is accepted).
        max_set_size: largest candidate set.
        max_candidates: candidate factors per output (the most predictive single factors; all when ``n`` is
            at most this).
        max_leaves, min_leaf: size of the partition model (cells of a decision tree).
        smoothing: pseudo-examples that shrink a cell's class law towards the pooled one.
        target_bins: quantile classes of a continuous target.
        test: ``"score"`` (:func:`source_score_test`, the default) or ``"saturated"``
            (:func:`stratified_g_test`).
    """

    alpha: float = 0.05
    max_set_size: int = 3
    max_candidates: int = 8
    max_leaves: int = 16
    min_leaf: int = 25
    smoothing: float = 1.0
    target_bins: int = 4
    test: Literal["score", "saturated"] = "score"

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.max_set_size < 1 or self.max_candidates < 1 or self.max_leaves < 2 or self.min_leaf < 1:
            raise ValueError("max_set_size, max_candidates, min_leaf >= 1 and max_leaves >= 2 required")
        if self.smoothing <= 0 or self.target_bins < 2:
            raise ValueError("smoothing > 0 and target_bins >= 2 required")
        if self.test not in ("score", "saturated"):
            raise ValueError(f"test must be 'score' or 'saturated', got {self.test!r}")


@dataclass(frozen=True)
class SetTest:
    """One candidate set's cross-fitted test: ``G``, ``df``, ``p`` (module docstring), the mean held-out
    log-likelihood ``ll`` and the per-example held-out log-likelihoods ``ll_examples``."""

    factors: tuple[int, ...]
    g: float
    df: int
    p: float
    ll: float
    ll_examples: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class OutputChoice:
    """The invariant set of one output of one task: the chosen ``factors``, whether an accepted set existed
    (``found``), its ``p`` and every candidate set's :class:`SetTest`."""

    task: int
    output: int
    factors: tuple[int, ...]
    found: bool
    p: float
    tests: tuple[SetTest, ...] = field(repr=False)


@dataclass(frozen=True)
class InvariantSelection:
    """What :func:`select_invariant` found: the invariant sets ``invariant_sets`` ``(m, n)`` (bool, rows =
    tasks), the ``plausible_sets`` (the union of the accepted sets within one standard error of the best
    accepted fit, per task), the ``energies`` ``(m, n)`` (rows sum to 1), the ``coverage_graph``, its ``repair`` (its
    ``adjacency`` is the selected graph) and every output's :class:`OutputChoice`."""

    invariant_sets: np.ndarray
    plausible_sets: np.ndarray
    energies: np.ndarray
    coverage_graph: np.ndarray
    repair: GraphRepair
    outputs: tuple[OutputChoice, ...] = field(repr=False)

    @property
    def adjacency(self) -> np.ndarray:
        return self.repair.adjacency


def stratified_g_test(cell: np.ndarray, y: np.ndarray, source: np.ndarray) -> tuple[float, int]:
    """``(G, df)`` of the likelihood-ratio test of ``Y ⫫ E | cell`` (module docstring): per cell, a
    per-source class law against the pooled one. Cells with one source or one class add nothing."""
    g, df = 0.0, 0
    for c in np.unique(cell):
        rows = cell == c
        ys, es = y[rows], source[rows]
        yu, yi = np.unique(ys, return_inverse=True)
        eu, ei = np.unique(es, return_inverse=True)
        if yu.size < 2 or eu.size < 2:
            continue
        table = np.zeros((eu.size, yu.size))
        np.add.at(table, (ei, yi), 1.0)
        expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
        nz = table > 0
        g += 2.0 * float((table[nz] * np.log(table[nz] / expected[nz])).sum())
        df += (eu.size - 1) * (yu.size - 1)
    return g, df


def source_score_test(cell: np.ndarray, y: np.ndarray, source: np.ndarray, logp: np.ndarray,
                      own_logp: np.ndarray | None = None) -> tuple[float, int]:
    """``(S, df)`` of the score test of a per-source recalibration on top of a free class law per cell.

    The null model is the saturated partition model, ``P(y = k | c, e) = pi_ck`` (its fit: each cell's class
    frequencies); the alternative adds, for every source ``e`` but the first, a class offset and a slope on
    the pooled probe's cross-fitted log-probabilities ``h_ck`` (``logp``, fit on other examples), and one
    slope on the gap between each example's own source's probe ``h^(e)_ck`` (``own_logp``) and the pooled one:

        ``log P(y = k | c, e) = alpha_ck + delta_ek + gamma_e h_ck + theta (h^(e)_ck - h_ck) - log Z``
        (``delta_e0 = 0``, ``gamma_e0 = 0``).

    ``gamma_e > 0``: the pooled prediction is worth more in source ``e`` (the anti-causal shortcut, 0.95 vs
    0.85 agreement); ``delta_e``: a source-dependent base rate (a factor that only says which source an
    example is from); ``theta > 0``: each source's own probe predicts its examples better than the pooled one
    (a factor whose effect flips sign between sources, which a pooled probe averages away). The features are
    functions of ``(cell, source)`` only (both probes are constant within a cell: the cells refine the
    probes' leaves), the cells' free ``alpha`` absorb any error of ``h``, and so only a source dependence is
    tested. With ``Phi_i`` ``(K, P)`` the features of example ``i`` centred within its cell, ``r_i = onehot(y_i) -
    pi_c`` and ``V_c = diag(pi_c) - pi_c pi_c^T``, the score and the efficient information (the cells' intercepts
    profiled out) are ``U = sum_i Phi_i^T r_i``, ``I = sum_i Phi_i^T V_c Phi_i``, and ``S = U^T I^+ U ~
    chi2_{rank I}`` under ``Y ⫫ E | cell`` (a generalised Cochran-Mantel-Haenszel statistic with a common
    association across cells, whose direction may follow ``h``).

    Arguments:
        cell: ``(N,)`` cell of each example; y: ``(N,)`` class ids in ``[0, K)``; source: ``(N,)``;
        logp: ``(N, K)`` cross-fitted log-probabilities (the same row for every example of a cell).
        own_logp: ``(N, K)`` each example's own source's cross-fitted log-probabilities (``None``: no
            ``theta`` term).
    """
    sources = np.unique(source)
    n, k = logp.shape
    if sources.size < 2 or k < 2 or n == 0:
        return 0.0, 0
    _, ci = np.unique(cell, return_inverse=True)
    n_cells = int(ci.max()) + 1
    onehot_e = (source[:, None] == sources[None, 1:]).astype(np.float64)  # (N, E-1)
    h = logp - logp.mean(1, keepdims=True)
    n_e = sources.size - 1
    extra = 0 if own_logp is None else 1
    phi = np.zeros((n, k, n_e * (k - 1) + n_e + extra))
    for j in range(1, k):  # delta_{e, j}
        phi[:, j, (j - 1) * n_e: j * n_e] = onehot_e
    phi[:, :, n_e * (k - 1): n_e * k] = h[:, :, None] * onehot_e[:, None, :]  # gamma_e
    if own_logp is not None:  # theta
        gap = own_logp - logp
        phi[:, :, -1] = gap - gap.mean(1, keepdims=True)
    counts = np.bincount(ci, minlength=n_cells).astype(np.float64)
    mean_phi = np.zeros((n_cells, *phi.shape[1:]))
    np.add.at(mean_phi, ci, phi)
    phi -= (mean_phi / counts[:, None, None])[ci]
    onehot_y = np.eye(k)[y]
    pi = np.zeros((n_cells, k))
    np.add.at(pi, ci, onehot_y)
    pi /= counts[:, None]
    r = onehot_y - pi[ci]
    u = np.einsum("nkp,nk->p", phi, r)
    v = pi[:, :, None] * np.eye(k)[None] - pi[:, :, None] * pi[:, None, :]  # (cells, K, K)
    info = np.einsum("nkp,nkq->pq", phi, np.einsum("nkl,nlq->nkq", v[ci], phi))
    rank = int(np.linalg.matrix_rank(info, tol=1e-8 * max(1.0, float(np.abs(info).max()))))
    if rank == 0:
        return 0.0, 0
    stat = float(u @ np.linalg.pinv(info, rcond=1e-8, hermitian=True) @ u)
    return max(0.0, stat), rank


def _cells(z_fit: np.ndarray, y_fit: np.ndarray, z_eval: np.ndarray, config: InvarianceConfig,
           seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Cells of the fit and evaluation examples under a tree fit on ``(z_fit, y_fit)`` (one cell if no
    factor)."""
    if z_fit.shape[1] == 0 or np.unique(y_fit).size < 2:
        return np.zeros(len(z_fit), dtype=np.int64), np.zeros(len(z_eval), dtype=np.int64)
    from sklearn.tree import DecisionTreeClassifier

    tree = DecisionTreeClassifier(max_leaf_nodes=config.max_leaves, min_samples_leaf=config.min_leaf,
                                  random_state=seed)
    tree.fit(z_fit, y_fit)
    return tree.apply(z_fit), tree.apply(z_eval)


def _held_out_logp(cell_fit: np.ndarray, y_fit: np.ndarray, cell_eval: np.ndarray, n_classes: int,
                   smoothing: float) -> np.ndarray:
    """``(N_eval, K)`` log-probabilities of every class under each evaluation example's cell law on the fit
    examples, shrunk towards the fit examples' pooled law ``pi`` by ``m = smoothing`` pseudo-examples,
    ``(n_ck + m pi_k) / (n_c + m)`` (a cell the fit half never saw: ``pi``; ``pi`` itself is add-one smoothed)."""
    pooled = np.bincount(y_fit, minlength=n_classes) + 1.0
    pooled = pooled / pooled.sum()
    out = np.tile(np.log(pooled), (len(cell_eval), 1))
    for c in np.unique(cell_eval):
        mine = cell_fit == c
        if not mine.any():
            continue
        counts = np.bincount(y_fit[mine], minlength=n_classes) + smoothing * pooled
        out[cell_eval == c] = np.log(counts / counts.sum())
    return out


def _source_probes(z_fit: np.ndarray, y_fit: np.ndarray, e_fit: np.ndarray, z_eval: np.ndarray,
                   e_eval: np.ndarray, n_classes: int, config: InvarianceConfig,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-source probes: a tree per source on that source's fit examples. Returns every evaluation
    example's leaf under each source's tree ``(N_eval, |E|)`` and its **own** source's tree's smoothed class
    law ``(N_eval, K)`` (log; the pooled fit's law where its source has no fit example)."""
    sources = np.unique(e_fit)
    leaves = np.zeros((len(z_eval), sources.size), dtype=np.int64)
    own = np.full((len(z_eval), n_classes), np.nan)
    for i, e in enumerate(sources):
        mine = e_fit == e
        lf, le = _cells(z_fit[mine], y_fit[mine], z_eval, config, seed)
        leaves[:, i] = le
        logp = _held_out_logp(lf, y_fit[mine], le, n_classes, config.smoothing)
        own[e_eval == e] = logp[e_eval == e]
    return leaves, own


def invariance_test(z: np.ndarray, y: np.ndarray, source: np.ndarray, factors: tuple[int, ...],
                    halves: tuple[np.ndarray, np.ndarray], config: InvarianceConfig | None = None,
                    seed: int = 0) -> SetTest:
    """Cross-fitted test of ``H_S: Y ⫫ E | Z_S`` for ``S = factors`` (module docstring).

    Arguments:
        z: ``(N, n)`` factors of one task's examples (rows = examples, columns = factors).
        y: ``(N,)`` class ids ``>= 0`` of one output.
        source: ``(N,)`` source of each example.
        factors: the candidate set ``S`` (column indices; ``()`` for the empty set).
        halves: two disjoint index arrays; each fits the partition the other is tested on.
        config: partition size, smoothing and which test (``score``: :func:`source_score_test` on the
            cells of the pooled and the per-source probes; ``saturated``: :func:`stratified_g_test` on the
            pooled probe's cells).
        seed: seeds the trees.
    """
    cfg = config or InvarianceConfig()
    _, y = np.unique(np.asarray(y, dtype=np.int64), return_inverse=True)  # classes present: 0..K-1
    n_classes = int(y.max()) + 1 if y.size else 1
    cols = list(factors)
    stats = np.zeros((2, 2))  # rows: the pooled cells' test, the refined cells' test; columns: stat, df
    ll = np.zeros(len(y))
    for fit, ev in (halves, halves[::-1]):
        z_fit, z_ev = z[np.ix_(fit, cols)], z[np.ix_(ev, cols)]
        cf, ce = _cells(z_fit, y[fit], z_ev, cfg, seed)
        logp = _held_out_logp(cf, y[fit], ce, n_classes, cfg.smoothing)
        ll[ev] = logp[np.arange(len(ev)), y[ev]]
        if cfg.test == "saturated":
            stats[0] += stratified_g_test(ce, y[ev], source[ev])
            continue
        # per-source laws of the pooled probe's cells (constant within them): the coarse cells keep the power
        cell_own = np.full_like(logp, np.nan)
        for e in np.unique(source[fit]):
            mine, theirs = source[fit] == e, source[ev] == e
            cell_own[theirs] = _held_out_logp(cf[mine], y[fit][mine], ce[theirs], n_classes, cfg.smoothing)
        stats[0] += source_score_test(ce, y[ev], source[ev], logp, np.where(np.isnan(cell_own), logp, cell_own))
        # per-source probes (their own trees) on the cells they refine: a factor the pooled probe averages away
        leaves, own = _source_probes(z_fit, y[fit], source[fit], z_ev, source[ev], n_classes, cfg, seed)
        _, cells = np.unique(np.column_stack([ce, leaves]), axis=0, return_inverse=True)
        stats[1] += source_score_test(cells.ravel(), y[ev], source[ev], logp, np.where(np.isnan(own), logp, own))
    used = np.concatenate(halves)
    ps = [float(chi2.sf(st, d)) if d > 0 else 1.0 for st, d in stats]
    which = int(np.argmin(ps))
    p = ps[0] if cfg.test == "saturated" else min(1.0, 2.0 * ps[which])  # Bonferroni over the two tests
    return SetTest(factors=tuple(int(f) for f in factors), g=float(stats[which, 0]), df=int(stats[which, 1]), p=p,
                   ll=float(ll[used].mean()), ll_examples=ll[used])


def _choose(tests: list[SetTest], alpha: float) -> tuple[SetTest, bool, tuple[int, ...]]:
    """The smallest accepted set within one standard error of the best accepted held-out log-likelihood
    (ties: the larger ``p``), whether a set was accepted, and the union of the accepted sets within that band
    (the plausible factors); the largest ``p`` when nothing is accepted."""
    accepted = [s for s in tests if s.p >= alpha]
    if not accepted:
        top = max(tests, key=lambda s: (s.p, -len(s.factors)))
        return top, False, top.factors
    best = max(accepted, key=lambda s: s.ll)
    near = []
    for s in accepted:
        diff = s.ll_examples - best.ll_examples
        se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0
        if diff.mean() >= -se:
            near.append(s)
    plausible = tuple(sorted({f for s in near for f in s.factors}))
    return min(near, key=lambda s: (len(s.factors), -s.ll, -s.p)), True, plausible


def _as_classes(targets: np.ndarray, task_id: np.ndarray, bins: int) -> np.ndarray:
    """``(N, K)`` class ids: integer targets as they are, float targets cut into ``bins`` quantile classes
    within each task (``nan``: ``-1``)."""
    t = np.asarray(targets)
    if t.ndim == 1:
        t = t[:, None]
    if np.issubdtype(t.dtype, np.integer):
        return t.astype(np.int64)
    out = np.full(t.shape, -1, dtype=np.int64)
    for task in np.unique(task_id):
        rows = task_id == task
        for k in range(t.shape[1]):
            v = t[rows, k].astype(np.float64)
            ok = np.isfinite(v)
            if ok.sum() < 2:
                continue
            edges = np.quantile(v[ok], np.linspace(0, 1, bins + 1)[1:-1])
            col = np.full(v.shape, -1, dtype=np.int64)
            col[ok] = np.searchsorted(edges, v[ok], side="right")
            out[np.flatnonzero(rows), k] = col
    return out


def select_invariant(z: np.ndarray, targets: np.ndarray, task_id: np.ndarray, source_id: np.ndarray,
                     n_tasks: int, energies: np.ndarray | None = None, coverage: float = 0.8, seed: int = 0,
                     config: InvarianceConfig | None = None) -> InvariantSelection:
    """The selection step that reads the sources (module docstring): invariant sets per task and output,
    energies restricted to them, the coverage graph and its repair to the UIC (rows = tasks, columns =
    factors).

    Arguments:
        z: ``(N, n)`` representation (rows = examples, columns = factors).
        targets: ``(N, K)`` or ``(N,)`` class ids (``-1``: not an output of the example's task), or floats
            (cut into ``config.target_bins`` quantile classes per task and output).
        task_id: ``(N,)`` task of each example in ``[0, n_tasks)``.
        source_id: ``(N,)`` data source of each example (only compared within a task).
        n_tasks: ``m``.
        energies: optional ``(m, n)`` energies of another statistic, restricted to the plausible sets. They
            should be measured without the rejected factors (e.g.
            :func:`sit_causal.selection.probe.removal_effects` on the invariant factors only): a probe on the
            whole representation gives a shortcut the energy, and the causal factors' removal effects ~0.
        coverage: the coverage of :func:`sit_causal.selection.graph.graph_from_energies`.
        seed: seeds the halves' split (``numpy.random.default_rng``) and the trees.
        config: :class:`InvarianceConfig`.
    """
    cfg = config or InvarianceConfig()
    z = np.asarray(z, dtype=np.float64)
    task_id = np.asarray(task_id, dtype=np.int64)
    source_id = np.asarray(source_id, dtype=np.int64)
    if z.ndim != 2 or task_id.shape != (z.shape[0],) or source_id.shape != (z.shape[0],):
        raise ValueError("z must be (N, n), task_id and source_id (N,)")
    y_all = _as_classes(targets, task_id, cfg.target_bins)
    if y_all.shape[0] != z.shape[0]:
        raise ValueError("targets must have one row per example")
    if task_id.size and (task_id.min() < 0 or task_id.max() >= n_tasks):
        raise ValueError(f"task ids must lie in [0, {n_tasks})")
    n = z.shape[1]
    if energies is not None and np.shape(energies) != (n_tasks, n):
        raise ValueError(f"energies must be (n_tasks, n) = ({n_tasks}, {n})")
    rng = np.random.default_rng(seed)
    sets = np.zeros((n_tasks, n), dtype=bool)
    plausible = np.zeros((n_tasks, n), dtype=bool)
    inv_energy = np.full((n_tasks, n), 1.0 / n)
    choices: list[OutputChoice] = []
    for t in range(n_tasks):
        rows = np.flatnonzero(task_id == t)
        shares: list[np.ndarray] = []
        for k in range(y_all.shape[1]):
            r = rows[y_all[rows, k] >= 0]
            if r.size < 4:
                continue
            zt, yt, et = z[r], y_all[r, k], source_id[r]
            order = rng.permutation(r.size)
            halves = (np.sort(order[: r.size // 2]), np.sort(order[r.size // 2:]))
            tree_seed = int(rng.integers(0, 2**31 - 1))
            candidates = list(range(n))
            if n > cfg.max_candidates:
                single = [invariance_test(zt, yt, et, (j,), halves, cfg, tree_seed).ll for j in range(n)]
                candidates = sorted(np.argsort(single)[::-1][: cfg.max_candidates].tolist())
            tests = [invariance_test(zt, yt, et, s, halves, cfg, tree_seed)
                     for size in range(min(cfg.max_set_size, len(candidates)) + 1)
                     for s in itertools.combinations(candidates, size)]
            chosen, found, near = _choose(tests, cfg.alpha)
            plausible[t, list(near)] = True
            choices.append(OutputChoice(task=t, output=k, factors=chosen.factors, found=found, p=chosen.p,
                                        tests=tuple(tests)))
            sets[t, list(chosen.factors)] = True
            if chosen.factors:
                share = np.zeros(n)
                share[list(chosen.factors)] = 1.0 / len(chosen.factors)
                shares.append(share)
        if shares:
            inv_energy[t] = np.mean(shares, axis=0)
    final = inv_energy.copy()
    if energies is not None:
        e = np.clip(np.asarray(energies, dtype=np.float64), 0.0, None) * (plausible | sets)
        total = e.sum(1)
        final = np.where(total[:, None] > 0, e / np.where(total > 0, total, 1.0)[:, None], inv_energy)
    initial = graph_from_energies(final, coverage)
    return InvariantSelection(invariant_sets=sets, plausible_sets=plausible | sets, energies=final,
                              coverage_graph=initial, repair=repair_to_uic(initial, final), outputs=tuple(choices))

