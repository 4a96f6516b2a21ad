"""Identification by task-subspace intersection: remove a linear mixing exactly where the UIC allows it.

Setting. A representation ``z`` ``(N, n)`` is (approximately) an invertible affine map of the true factors
``L`` ``(N, n)``: ``L = B z + c``, so ``L_i = b_i^T z + c_i`` with ``b_i`` (a row of ``B``) the *covector* of
factor ``i``. Task ``t`` reads the factors ``S_t`` (row ``t`` of the graph ``A``, rows = tasks, columns =
factors) and each of its samples carries ``Y_t = g_t(L[S_t]) + noise``. Then

    grad_z E[Y_t | z] = sum_{i in S_t} (d g_t / d L_i) b_i   lies in   V_t = span{b_i : i in S_t},

and for a generic ``g_t`` these gradients span ``V_t``. So ``V_t`` is estimated from data alone:

1. **Whiten** ``z``: ``w = W (z - mu)`` with ``W = Cov(z)^{-1/2}`` (symmetric, ``(n, n)``); all subspaces
   below live in ``w`` coordinates (the covector of ``L_i`` becomes ``W^{-1} b_i``, nearly orthogonal to the
   others when the pooled factors are nearly uncorrelated).
2. **Per-task gradient subspace**: fit ``f_t(w) ~ Y_t`` on task ``t``'s samples (a small torch MLP, full-batch
   Adam, parameters drawn from a seeded ``torch.Generator``), form the gradient matrix ``G_t`` ``(n, n)``
   (:func:`gradient_matrix`: the outer product ``mean_k grad f_t(w_k) grad f_t(w_k)^T``, or by default its
   centred version, normalised covariance plus the mean gradient's direction) with eigenvalues
   ``lambda_1 >= ... >= lambda_n``,
   and keep the top ``d_t`` eigenvectors ``U_t`` ``(n, d_t)``, ``P_t = U_t U_t^T``. Dimension rule
   (:func:`subspace_dimension`): ``d_t`` is the number of eigenvalues with ``lambda_k >= rho * lambda_1``.
   The ratio ``rho`` adapts to the noise floor (:func:`adaptive_energy_ratio`): ``rho = clip(kappa *
   median_t(lambda_{t,n} / lambda_{t,1}), rho_min, rho_max)``; the smallest eigenvalue of a task that does
   not read every factor is pure leakage (regressor noise, the representation's non-linearity), and a
   true parent's energy must stand ``kappa`` times above it. (Parents' energies differ by up to ~100x
   for the simulator's ``g_t``, so a fixed ratio either drops weak parents or admits leakage.)
3. **Intersections**: for a task subset ``T``, ``cap_{t in T} V_t = span{b_j : T ⊆ C_j}`` (``C_j`` the tasks
   reading ``j``). It is computed as the near-null space of ``M_T = sum_{t in T} (I - P_t)``: ``u^T M_T u``
   is the summed squared sine of the angles between ``u`` and the ``V_t``. ``T`` gives a **candidate
   direction** when the intersection is one-dimensional: smallest eigenvector ``u`` with every
   ``sin^2(u, V_t) <= in_threshold`` and second eigenvalue ``>= second_threshold``. Any one-dimensional
   intersection is one true factor's covector (exactly one ``j`` has ``T ⊆ C_j``).
4. **Clustering**: candidates with ``|cos| > cluster_cos`` are one direction; directions are ranked by
   support (number of subsets producing them; then the largest subset, then the smallest eigenvalue) and
   the best ``<= n`` linearly independent ones are kept (**found**). The representative of a cluster is
   the top eigenvector of ``sum u u^T`` over its candidates.
5. **Fill**: the ``n - n_found`` remaining learned factors are an orthonormal basis of the orthogonal
   complement (in ``w`` coordinates) of the found directions, ordered by the gradient energy
   ``sum_t u^T G_t u / tr G_t`` they carry; they are reported as **not identified**.
6. **Learned graph**: ``A_hat[t, j] = 1`` iff ``sin^2(u_j, V_t) <= in_threshold`` (rows = tasks, columns =
   learned factors), checkable with :func:`sit_causal.theory.uic.check_uic`.

Why this is exactly the UIC: the intersection over ``T = C_i`` is ``span{b_j : C_i ⊆ C_j} =
span({b_i} ∪ {b_j : j in M_i})`` with ``M_i`` the mixing set of :mod:`sit_causal.theory.uic`. It is one-dimensional
(factor ``i`` found) iff ``M_i`` is empty; and no subset ``T`` gives ``b_i`` alone when ``M_i`` is not empty,
since ``T ⊆ C_i ⊆ C_j`` keeps ``b_j`` in every intersection that contains ``b_i``. So the directions found
are exactly the covectors of the factors the checker calls identifiable (given exact subspaces).

Cost: one small MLP per task plus ``2^m - 1`` eigendecompositions of ``(n, n)`` matrices; for
``m > IntersectConfig.max_exhaustive_tasks`` only subsets of at most ``max_subset_size`` tasks are tried.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import numpy as np

from sit_causal.selection.gradients import GradientConfig, check_task_data, fit_task_gradient_matrices, whitening

__all__ = [
    "IntersectConfig",
    "IntersectResult",
    "adaptive_energy_ratio",
    "identify_by_intersection",
    "intersect_gradient_subspaces",
    "subspace_dimension",
]


@dataclass(frozen=True)
class IntersectConfig:
    """Settings of :func:`identify_by_intersection`.

    Arguments:
        gradients: the per-task regressors and the gradient statistic
            (:class:`~sit_causal.selection.gradients.GradientConfig`).
        energy_ratio: a fixed ``rho`` of the dimension rule (eigenvalues ``>= rho * lambda_1`` span ``V_t``);
            ``None`` = adaptive (:func:`adaptive_energy_ratio` with ``noise_multiplier``, ``min_ratio``,
            ``max_ratio``).
        in_threshold: largest ``sin^2`` of the angle between a direction and ``V_t`` for "in ``V_t``".
        second_threshold: smallest second eigenvalue of ``M_T`` for a one-dimensional intersection.
        cluster_cos: ``|cos|`` above which two candidate directions are the same factor.
        max_exhaustive_tasks: with at most this many tasks every non-empty subset is tried; with more,
            only subsets of at most ``max_subset_size`` tasks.
        max_subset_size: subset size limit used above ``max_exhaustive_tasks`` tasks.
    """

    gradients: GradientConfig = field(default_factory=GradientConfig)
    energy_ratio: float | None = None
    noise_multiplier: float = 10.0
    min_ratio: float = 0.002
    max_ratio: float = 0.05
    in_threshold: float = 0.1
    second_threshold: float = 0.3
    cluster_cos: float = 0.95
    max_exhaustive_tasks: int = 12
    max_subset_size: int = 3


@dataclass(frozen=True)
class IntersectResult:
    """Output of :func:`identify_by_intersection` (``n`` = representation width, ``m`` = tasks).

    Arguments:
        unmixing: ``(n, n)`` rows = learned factors, columns = ``z`` dimensions; the learned factors are
            ``(z - mean) @ unmixing.T`` (:meth:`transform`). Found factors come first.
        mean: ``(n,)`` training mean of ``z``.
        found: ``(n,)`` bool, ``True`` for directions found as a one-dimensional intersection
            (identified), ``False`` for the filled complement (not identified).
        directions: ``(n, n)`` rows = the unit covectors in whitened coordinates (``unmixing = directions @ W``).
        supports: per learned factor, the task subsets (tuples of task indices) whose intersection gave it
            (empty for filled factors).
        eigenvalues: ``(n, 2)`` smallest and second-smallest eigenvalue of ``M_T`` for the largest supporting
            subset ``T`` (``nan`` for filled factors).
        adjacency: ``(m, n)`` bool learned graph, rows = tasks, columns = learned factors.
        sin2: ``(m, n)`` ``sin^2`` of the angle between learned direction ``j`` and ``V_t``.
        task_dims: ``(m,)`` estimated ``dim V_t``.
        task_spectra: ``(m, n)`` eigenvalues of ``G_t`` (descending, divided by ``trace G_t``).
        task_r2: ``(m,)`` training ``R^2`` of each task regressor.
        n_candidates: number of one-dimensional intersections before clustering.
        energy_ratio: the ``rho`` used by the dimension rule.
    """

    unmixing: np.ndarray
    mean: np.ndarray
    found: np.ndarray
    directions: np.ndarray
    supports: tuple[tuple[tuple[int, ...], ...], ...]
    eigenvalues: np.ndarray
    adjacency: np.ndarray
    sin2: np.ndarray
    task_dims: np.ndarray
    task_spectra: np.ndarray
    task_r2: np.ndarray
    n_candidates: int = 0
    energy_ratio: float = float("nan")

    @property
    def n_found(self) -> int:
        return int(self.found.sum())

    def transform(self, z: np.ndarray) -> np.ndarray:
        """Learned factors of ``z`` ``(N, n)``: ``(z - mean) @ unmixing.T``, shape ``(N, n)``."""
        return (np.asarray(z, dtype=np.float64) - self.mean) @ self.unmixing.T


def adaptive_energy_ratio(grams: np.ndarray, noise_multiplier: float, min_ratio: float, max_ratio: float) -> float:
    """``rho = clip(noise_multiplier * median_t(lambda_{t,min} / lambda_{t,max}), min_ratio, max_ratio)`` for
    gradient matrices ``grams`` ``(m, n, n)`` (tasks with a zero matrix are skipped)."""
    ratios = []
    for g in np.asarray(grams, dtype=np.float64):
        lam = np.linalg.eigvalsh(g)
        if lam[-1] > 0:
            ratios.append(max(float(lam[0]), 0.0) / float(lam[-1]))
    floor = float(np.median(ratios)) if ratios else 0.0
    return float(np.clip(noise_multiplier * floor, min_ratio, max_ratio))


def subspace_dimension(spectrum: np.ndarray, energy_ratio: float) -> int:
    """``d = #{k : lambda_k >= energy_ratio * lambda_1}`` for eigenvalues ``spectrum`` ``(n,)`` (any order);
    at least 1."""
    lam = np.sort(np.asarray(spectrum, dtype=np.float64))[::-1]
    if lam[0] <= 0:
        return 1
    return max(1, int(np.sum(lam >= energy_ratio * lam[0])))


def _task_subsets(m: int, config: IntersectConfig) -> list[tuple[int, ...]]:
    top = m if m <= config.max_exhaustive_tasks else min(m, config.max_subset_size)
    return [s for k in range(1, top + 1) for s in itertools.combinations(range(m), k)]


def intersect_gradient_subspaces(grams: np.ndarray, config: IntersectConfig | None = None) -> IntersectResult:
    """Steps 2 (dimension rule) to 6 of the module docstring on given gradient matrices.

    Arguments:
        grams: ``(m, n, n)`` symmetric PSD matrices ``G_t`` whose range is ``V_t`` (any coordinates; the
            thresholds assume covectors of different factors are far from parallel, as after whitening).
        config: thresholds (defaults: :class:`IntersectConfig`).

    Returns:
        :class:`IntersectResult` in the coordinates of ``grams``: ``unmixing = directions``, ``mean = 0``,
        ``task_r2 = nan``.
    """
    cfg = IntersectConfig() if config is None else config
    grams = np.asarray(grams, dtype=np.float64)
    if grams.ndim != 3 or grams.shape[1] != grams.shape[2]:
        raise ValueError(f"grams must be (m, n, n), got {grams.shape}")
    n_tasks, n = grams.shape[0], grams.shape[1]
    ratio = (adaptive_energy_ratio(grams, cfg.noise_multiplier, cfg.min_ratio, cfg.max_ratio)
             if cfg.energy_ratio is None else cfg.energy_ratio)
    spectra = np.zeros((n_tasks, n))
    dims = np.zeros(n_tasks, dtype=np.int64)
    bases: list[np.ndarray] = []
    for t in range(n_tasks):
        lam, vec = np.linalg.eigh(grams[t])
        lam, vec = lam[::-1], vec[:, ::-1]
        total = max(float(lam.sum()), 1e-300)
        spectra[t] = lam / total
        dims[t] = subspace_dimension(lam, ratio)
        bases.append(vec[:, : dims[t]])
    projectors = np.stack([b @ b.T for b in bases])  # (m, n, n)
    eye = np.eye(n)

    # step 3: one-dimensional intersections
    cands: list[tuple[np.ndarray, tuple[int, ...], float, float]] = []
    for subset in _task_subsets(n_tasks, cfg):
        mat = sum((eye - projectors[t] for t in subset), np.zeros((n, n)))
        lam, vec = np.linalg.eigh(mat)
        u = vec[:, 0]
        sin2 = [1.0 - float(u @ projectors[t] @ u) for t in subset]
        second = float(lam[1]) if n > 1 else np.inf
        if max(sin2) <= cfg.in_threshold and second >= cfg.second_threshold:
            cands.append((u, subset, float(lam[0]), second))

    # step 4: clusters, ranked by support
    order = sorted(range(len(cands)), key=lambda k: (-len(cands[k][1]), cands[k][2]))
    clusters: list[list[int]] = []
    reps: list[np.ndarray] = []
    for k in order:
        u = cands[k][0]
        hit = next((c for c, r in enumerate(reps) if abs(float(u @ r)) > cfg.cluster_cos), None)
        if hit is None:
            clusters.append([k])
            reps.append(u)
        else:
            clusters[hit].append(k)
    ranked = sorted(range(len(clusters)),
                    key=lambda c: (-len(clusters[c]), -len(cands[clusters[c][0]][1]), cands[clusters[c][0]][2]))
    chosen: list[np.ndarray] = []
    chosen_clusters: list[list[int]] = []
    for c in ranked:
        if len(chosen) == n:
            break
        scatter = sum((np.outer(cands[k][0], cands[k][0]) for k in clusters[c]), np.zeros((n, n)))
        rep = np.linalg.eigh(scatter)[1][:, -1]
        if chosen:
            q = np.linalg.qr(np.stack(chosen, axis=1))[0]
            if float(np.sum((q.T @ rep) ** 2)) > cfg.cluster_cos**2:
                continue  # (nearly) in the span of the directions already kept
        chosen.append(rep)
        chosen_clusters.append(clusters[c])

    # step 5: fill with the orthogonal complement, ordered by gradient energy
    n_found = len(chosen)
    norm_grams = sum((grams[t] / max(float(np.trace(grams[t])), 1e-300) for t in range(n_tasks)), np.zeros((n, n)))
    if n_found < n:
        if n_found:
            q = np.linalg.qr(np.stack(chosen, axis=1), mode="complete")[0]
            comp = q[:, n_found:]
        else:
            comp = eye
        lam, vec = np.linalg.eigh(comp.T @ norm_grams @ comp)
        fill = comp @ vec[:, ::-1]
        directions = np.concatenate([np.stack(chosen, axis=0), fill.T], axis=0) if n_found else fill.T
    else:
        directions = np.stack(chosen, axis=0)
    found = np.arange(n) < n_found

    # step 6: learned graph
    sin2 = 1.0 - np.einsum("jn,tnk,jk->tj", directions, projectors, directions)
    adjacency = sin2 <= cfg.in_threshold
    supports = tuple(tuple(cands[k][1] for k in cl) for cl in chosen_clusters) + ((),) * (n - n_found)
    eig = np.full((n, 2), np.nan)
    for j, cl in enumerate(chosen_clusters):
        best = max(cl, key=lambda k: (len(cands[k][1]), -cands[k][2]))
        eig[j] = cands[best][2], cands[best][3]
    return IntersectResult(unmixing=directions, mean=np.zeros(n), found=found, directions=directions,
                           supports=supports, eigenvalues=eig, adjacency=adjacency, sin2=sin2, task_dims=dims,
                           task_spectra=spectra, task_r2=np.full(n_tasks, np.nan), n_candidates=len(cands),
                           energy_ratio=ratio)


def identify_by_intersection(z: np.ndarray, y: np.ndarray, task_id: np.ndarray, n_tasks: int,
                             config: IntersectConfig | None = None, seed: int = 0) -> IntersectResult:
    """Unmix ``z`` by intersecting per-task gradient subspaces (module docstring, steps 1-6).

    Arguments:
        z: ``(N, n)`` representation (training split), approximately an invertible affine map of ``L``.
        y: ``(N,)`` float target of each sample's own task.
        task_id: ``(N,)`` int task of each sample, in ``[0, n_tasks)``.
        n_tasks: ``m``.
        config: thresholds and regressor settings (defaults: :class:`IntersectConfig`).
        seed: seeds every random choice (sample subsets, regressor initialisation).

    Returns:
        :class:`IntersectResult`; ``result.transform(z_new)`` gives the learned factors of new samples.
    """
    cfg = IntersectConfig() if config is None else config
    z, y, task_id = check_task_data(z, y, task_id)
    mu, wmat = whitening(z)
    grams, r2 = fit_task_gradient_matrices((z - mu) @ wmat, y, task_id, n_tasks, cfg.gradients, seed)
    res = intersect_gradient_subspaces(grams, cfg)
    return replace(res, unmixing=res.directions @ wmat, mean=mu, task_r2=r2)

