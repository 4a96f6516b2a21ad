"""SIT's selection step over GL(n): task sparsity where a general linear map is left, not only a rotation.

The rotation step (:mod:`sit_causal.selection.align`) relies on within-dataset whitening to leave an
orthogonal map: true when every dataset's factor covariance is diagonal. When the factors are related
within each dataset (a linear SCM among the latents, or any shared non-diagonal covariance: the
``linear-left`` regime, docs/design.md section 9), whitening leaves a general invertible map ``A``
``(n, n)`` with ``L - loc = A w`` and no rotation recovers ``L``. This module searches the unmixing over
invertible matrices.

Steps (``m`` tasks, ``n`` factors; steps 1-2 are the rotation step's):

1. Within-dataset whitening ``w = (z - mu) W`` (:func:`sit_causal.selection.gradients.whitening`).
2. Unit-trace per-task gradient matrices ``G_t`` ``(n, n)`` of ``w`` (:func:`sit_causal.selection.align.task_grams`):
   ``range(G_t)`` estimates the span of task ``t``'s parent directions.
3. **Sparse unmixing over GL(n).** Learned factors ``u = V w`` with ``V`` ``(n, n)`` invertible, **rows =
   learned factors, columns = w dimensions**, parametrised as ``V = diag(1 / ||P_j||) P`` (``P`` free): the
   normalisation guard gives every learned factor unit within-dataset variance, so no factor can be shrunk
   to hide its edges. A task's regressor is ``f_t(w) = f_t(V^{-1} u)``, so its gradient in ``u`` is
   ``V^{-T} grad_w f_t`` and its gradient matrix ``G_t^u = V^{-T} G_t V^{-1}``. The energy of learned factor
   ``j`` in task ``t`` is ``E_tj = (G_t^u)_jj`` (``(m, n)``, rows = tasks): the task's squared sensitivity to
   a unit-variance change of ``u_j`` with the other learned factors held fixed. For a rotation the rows sum
   to 1 (``tr G_t = 1``) and ``E`` is the rotation step's. It is deliberately **not** renormalised per task:
   a near-singular ``V`` inflates the sensitivities of every edge (holding strongly correlated factors
   fixed is a long move in ``w``), which the count penalises, whereas per-task normalisation would let one
   inflated column make every other entry look like zero (measured: all tasks then "read" two learned
   factors, MCC 0.64 on an exactly linear representation of a UIC graph, against 0.97 without it).
   Minimise::

       J(V) = J_count(E) - w_logdet * log |det V|

   with ``J_count`` the rotation step's objective (:func:`sit_causal.selection.align.rotation_objective`:
   the smooth edge count ``sum log(1 + E / eps)`` plus its UIC and distinction terms). ``|det V| <= 1`` with
   equality iff ``V`` is orthogonal; the **log-det guard** keeps ``V`` away from singular matrices (two
   learned factors collapsing onto one direction). Adam from every rotation the rotation step's count
   search ends at (:func:`sit_causal.selection.align.optimise_rotation`), all optimised as one batch; the
   lowest ``J`` wins and is polished by shear sweeps (:func:`shear_sweeps`: a grid search over
   ``u_i <- u_i + a u_j`` for every ordered pair).
4. **Learned graph** ``A_hat[t, j] = 1`` iff ``E_tj >= edge_threshold``.

Two further stages (on by default; measured in docs/results/linear_regime.md): ``affinise`` first
corrects the representation towards affine (:mod:`sit_causal.selection.affinise`: a near-identity flow
fitted so that every dataset's corrected representation is Gaussian with one shared covariance, dataset ids
only), and ``refine`` follows the count search with the rotation step's refinement carried over to GL(n)
(:func:`refine_linear`: ``V`` learned jointly with group-sparse heads, judged by their fit). On trained
representations the count ``J`` ranks a wrong unmixing below the oracle's (the tasks' gradient matrices of a
not-quite-affine representation are not sparse at the truth), and neither more restarts nor other starts
change the answer; the two stages together are what lifted the strict recovery there.

What it can and cannot recover (docs/uic.md). A shear ``u_i = L_i + a L_j`` keeps every edge exactly when
every task reading ``L_i`` also reads ``L_j`` (``C_i ⊆ C_j``): then ``J_count`` is flat along it and only
the log-det guard moves ``a``, towards making ``u_i`` uncorrelated with the other learned factors, which
is not ``a = 0`` when the true factors are correlated within datasets: such a factor stays mixed, as the
UIC predicts. Where the task sets form an antichain (the UIC) every shear and every rotation adds an edge
and the true factors are the sparsest solution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from sit_causal.selection.affinise import AffiniseConfig, Affiniser, fit_affiniser
from sit_causal.selection.align import (
    AlignConfig,
    jacobi_sweeps,
    linear_energies,
    optimise_rotation,
    rotation_objective,
    whitened_task_grams,
)
from sit_causal.threads import torch_threads

__all__ = [
    "LinearAlignConfig",
    "LinearAlignResult",
    "LinearSearch",
    "align_linear_by_task_sparsity",
    "gl_energies",
    "linear_objective",
    "refine_linear",
    "search_linear",
    "shear_sweeps",
]


@dataclass(frozen=True)
class LinearAlignConfig:
    """Settings of the GL(n) search (the shared ones, ``restarts``, ``count_eps``, ``edge_threshold``, the
    UIC and distinction weights, the regressors and the whitening, are :class:`AlignConfig`'s).

    Arguments:
        iterations: Adam steps on ``P``; ``lr``: its learning rate.
        w_logdet: weight of the log-det guard ``-log |det V|``.
        shear_sweeps: passes of :func:`shear_sweeps` (0 = none); ``shear_values``: grid points of ``a`` in
            ``[-shear_range, shear_range]``.
        energies, saturate: other forms of the count's energies (``"dual"``, ``"halfdual"``, :func:`gl_energies`) and
            a count levelling off above ``saturate`` (0 = off); measured, not used by default.
        affinise: first correct the representation towards affine (:mod:`sit_causal.selection.affinise`, dataset
            ids only), then run the step on the corrected one; ``None`` = off (the step before the correction).
        start_taskfree: add the task-free control's rotation (joint diagonalisation of the per-dataset
            covariances of ``w``, :func:`sit_causal.selection.taskfree.joint_diagonalisation`) to the starts.
        refine: after the count search, the refinement with group-sparse heads over GL(n)
            (:func:`refine_linear`, settings ``refine_*`` of :class:`AlignConfig`; ``refine_iterations = 0`` there
            also turns it off); ``refine_candidates``: how
            many of the lowest-``J`` distinct solutions are refined (as one batch), the lowest refinement loss
            wins; ``refine_logdet``: weight of the log-det guard in the refinement's loss.
    """

    iterations: int = 400
    lr: float = 0.02
    w_logdet: float = 0.5
    shear_sweeps: int = 2
    shear_values: int = 41
    shear_range: float = 2.0
    start_taskfree: bool = False
    refine: bool = True
    refine_candidates: int = 1
    refine_logdet: float = 0.0
    energies: str = "raw"
    saturate: float = 0.0
    affinise: AffiniseConfig | None = field(default_factory=AffiniseConfig)

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.lr <= 0 or self.w_logdet <= 0:
            raise ValueError("LinearAlignConfig: iterations >= 0, lr > 0 and w_logdet > 0 required")
        if self.shear_sweeps < 0 or self.shear_values < 2 or self.shear_range <= 0:
            raise ValueError("LinearAlignConfig: shear_sweeps >= 0, shear_values >= 2, shear_range > 0 required")
        if self.energies not in ("raw", "dual", "halfdual"):
            raise ValueError(f"LinearAlignConfig.energies must be 'raw', 'dual' or 'halfdual', got {self.energies!r}")
        if self.saturate < 0:
            raise ValueError("LinearAlignConfig: saturate >= 0 required")
        if self.refine_candidates < 1 or self.refine_logdet < 0:
            raise ValueError("LinearAlignConfig: refine_candidates >= 1 and refine_logdet >= 0 required")


@dataclass(frozen=True)
class LinearAlignResult:
    """Output of :func:`align_linear_by_task_sparsity` (``n`` = representation width, ``m`` = tasks).

    Arguments:
        unmixing: ``(n, n)`` rows = learned factors, columns = ``z`` dimensions (``= V @ whitening.T``).
        mean: ``(n,)`` training mean of ``z``; whitening: ``(n, n)`` symmetric ``W``.
        mixing: ``(n, n)`` ``V`` (unit rows), rows = learned factors, columns = ``w`` dimensions.
        energies: ``(m, n)`` ``E_tj`` at the solution (rows = tasks, columns = learned factors).
        adjacency: ``(m, n)`` bool learned graph.
        objective: ``J`` of the solution; restart_objectives: ``(restarts,)`` ``J`` of every start after Adam.
        log_det: ``log |det V|`` of the solution (0 for an orthogonal ``V``).
        gradient_matrices: ``(m, n, n)`` unit-trace ``G_t`` in ``w`` coordinates; task_r2: ``(m,)``.
        premap: the correction towards affine applied to ``z`` first (``LinearAlignConfig.affinise``), or ``None``;
            ``mean`` and ``whitening`` are then those of the corrected representation.
    """

    unmixing: np.ndarray
    mean: np.ndarray
    whitening: np.ndarray
    mixing: np.ndarray
    energies: np.ndarray
    adjacency: np.ndarray
    objective: float
    restart_objectives: np.ndarray
    log_det: float
    gradient_matrices: np.ndarray
    task_r2: np.ndarray
    premap: Affiniser | None = None

    def transform(self, z: np.ndarray) -> np.ndarray:
        """Learned factors of ``z`` ``(N, n)``: ``(premap(z) - mean) @ unmixing.T`` (``premap`` = identity when
        ``None``), shape ``(N, n)``."""
        z = np.asarray(z, dtype=np.float64)
        return ((z if self.premap is None else self.premap(z)) - self.mean) @ self.unmixing.T


def _normalise_rows(p: torch.Tensor) -> torch.Tensor:
    return p / p.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def gl_energies(v: torch.Tensor, grams: torch.Tensor, config: LinearAlignConfig) -> torch.Tensor:
    """The energies ``E`` ``(r, m, n)`` the GL(n) step counts for unit-row ``V`` ``(r, n, n)``: ``"raw"``,
    ``(V^{-T} G_t V^{-1})_jj``; ``"dual"``, the same divided by ``||V^{-1} e_j||^2`` (the variance inflation
    factor of learned factor ``j``), i.e. ``d_j^T G_t d_j`` with ``d_j`` the unit direction of column ``j`` of
    ``V^{-1}``; ``"halfdual"``, divided by its square root (measured in docs/results/linear_regime.md)."""
    e = linear_energies(v, grams, normalise=False)
    if config.energies == "raw":
        return e
    vif = torch.linalg.inv(v).pow(2).sum(dim=1)  # (r, n): ||V^{-1} e_j||^2 >= 1 for unit rows
    return e / (vif if config.energies == "dual" else vif.sqrt())[:, None, :]


def linear_objective(v: torch.Tensor, grams: torch.Tensor, align: AlignConfig,
                     config: LinearAlignConfig) -> torch.Tensor:
    """``J(V)`` of the module docstring for unit-row ``V`` ``(r, n, n)``: ``(r,)``."""
    logdet = torch.linalg.slogdet(v)[1]
    e = gl_energies(v, grams, config)
    j = rotation_objective(e, align) - config.w_logdet * logdet
    if config.saturate > 0:  # the count's terms level off above saturate: log((1 + E/eps) / (1 + E/saturate))
        j = j - torch.log1p(e / config.saturate).sum(dim=(1, 2))
    return j


def _optimise(starts: np.ndarray, grams: np.ndarray, align: AlignConfig,
              config: LinearAlignConfig) -> tuple[np.ndarray, np.ndarray]:
    """Batched Adam on ``P`` from ``starts`` ``(r, n, n)``; every final unit-row ``V`` ``(r, n, n)`` and its
    ``J`` ``(r,)``."""
    g = torch.as_tensor(grams, dtype=torch.float64)
    p = torch.nn.Parameter(torch.as_tensor(starts, dtype=torch.float64).clone())
    opt = torch.optim.Adam([p], lr=config.lr)
    for _ in range(config.iterations):
        loss = linear_objective(_normalise_rows(p), g, align, config)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()  # the starts are independent: the sum's gradient is each one's own
        opt.step()
    with torch.no_grad():
        v = _normalise_rows(p)
        return v.numpy(), linear_objective(v, g, align, config).numpy()


def shear_sweeps(v: np.ndarray, grams: np.ndarray, align: AlignConfig,
                 config: LinearAlignConfig) -> tuple[np.ndarray, float]:
    """Pairwise grid search on ``J``: for every ordered pair ``(i, j)`` of learned factors, the candidates
    ``V_i <- normalise(V_i + a V_j)`` for ``a`` on a grid of ``[-shear_range, shear_range]`` are scored in
    one batch and the best is kept if it lowers ``J``; ``shear_sweeps`` passes, stopping early when a pass
    changes nothing.

    Arguments:
        v: ``(n, n)`` unit-row start (rows = learned factors); grams: ``(m, n, n)`` unit-trace ``G_t``.

    Returns:
        ``V`` ``(n, n)`` and its ``J``.
    """
    n = v.shape[0]
    g = torch.as_tensor(grams, dtype=torch.float64)
    cur = torch.as_tensor(v, dtype=torch.float64).clone()
    grid = torch.linspace(-config.shear_range, config.shear_range, config.shear_values, dtype=torch.float64)
    with torch.no_grad():
        best = float(linear_objective(cur[None], g, align, config)[0])
        for _ in range(config.shear_sweeps):
            changed = False
            for i in range(n):
                for j in range(n):
                    if i == j:
                        continue
                    cand = cur.expand(grid.numel(), n, n).clone()
                    cand[:, i] = _normalise_rows(cur[i][None] + grid[:, None] * cur[j][None])
                    scores = linear_objective(cand, g, align, config)
                    scores = torch.where(torch.isfinite(scores), scores, torch.full_like(scores, np.inf))
                    k = int(torch.argmin(scores))
                    if float(scores[k]) < best - 1e-9:
                        best, cur, changed = float(scores[k]), cand[k].clone(), True
            if not changed:
                break
    return cur.numpy(), best


def _distinct(vs: np.ndarray, order: np.ndarray, k: int, tol: float = 0.99) -> list[int]:
    """The first ``k`` indices of ``order`` whose unmixings ``vs[i]`` ``(n, n)`` (unit rows) differ from every one
    kept before: two are the same when every row of one has a row of the other with ``|cos| >= tol`` (the same
    learned factors up to order and sign)."""
    kept: list[int] = []
    for i in order:
        if not np.all(np.isfinite(vs[i])):
            continue
        if all(np.abs(vs[i] @ vs[j].T).max(axis=1).min() < tol for j in kept):
            kept.append(int(i))
        if len(kept) == k:
            break
    return kept


def refine_linear(w: np.ndarray, y: np.ndarray, task_id: np.ndarray, n_tasks: int, starts: np.ndarray,
                  align: AlignConfig, config: LinearAlignConfig, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The rotation step's refinement (:func:`sit_causal.selection.align.refine_rotation`) over GL(n), for several
    starting unmixings at once.

    For each start ``V_0`` (``starts`` ``(c, n, n)``, unit rows, rows = learned factors), ``V = diag(1/||P_j||) P``
    with ``P`` initialised at ``V_0`` is learned jointly with one head per task on ``u = V w``,
    ``head_t(u) = v_t . tanh(W_t^T u + b_t) + c_t``, minimising::

        mean_t mean_k (head_t(u_k) - y_k)^2 + lam * mean_t sum_j ||W_t[j, :]||_2 + 1e-3 * mean_t ||v_t||^2
            - refine_logdet * log |det V|

    (the group lasso on the rows of ``W_t`` is the continuous mask: a shear ``u_i = L_i + a L_j`` makes every
    task that reads ``L_i`` but not ``L_j`` read a second learned factor to undo it, which costs group norm
    and is judged by the heads' fit, not by separately estimated gradient matrices). The heads train alone
    for ``refine_warmup`` steps; the joint steps stop when no ``V`` moves by ``refine_tol`` (Frobenius) between
    checks ``refine_check_every`` steps apart, or at ``refine_iterations``. Every start gets the same sample
    subset and the same initial heads, so their final losses compare.

    Returns:
        The refined unit-row ``V`` ``(c, n, n)``, each one's final loss ``(c,)`` and the steps taken.
    """
    c, n = starts.shape[0], w.shape[1]
    counts = np.bincount(task_id, minlength=n_tasks)
    present = np.flatnonzero(counts > 0)
    per = int(min(align.refine_samples_per_task, counts[present].min()))
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    rows = np.stack([rng.choice(np.flatnonzero(task_id == t), per, replace=False) for t in present])  # (k, per)
    ys = y[rows]
    ys = (ys - ys.mean(axis=1, keepdims=True)) / (ys.std(axis=1, keepdims=True) + 1e-12)
    k, h = len(present), align.refine_hidden
    x_cols = torch.as_tensor(w[rows], dtype=torch.float32).transpose(1, 2).contiguous()  # (k, n, per)
    x_cols = x_cols.expand(c, k, n, per).reshape(c * k, n, per)
    target = torch.as_tensor(ys, dtype=torch.float32).expand(c, k, per).reshape(c * k, per)
    gen = torch.Generator().manual_seed(int(seed))
    p = torch.nn.Parameter(torch.as_tensor(starts, dtype=torch.float32).clone())
    w1 = torch.nn.Parameter((torch.randn(k, n, h, generator=gen) / n**0.5).expand(c, k, n, h).clone())
    b1 = torch.nn.Parameter(torch.zeros(c, k, 1, h))
    v = torch.nn.Parameter((torch.randn(k, h, generator=gen) / h**0.5).expand(c, k, h).clone())
    b2 = torch.nn.Parameter(torch.zeros(c, k, 1))
    opt = torch.optim.Adam([p, w1, b1, v, b2], lr=align.refine_lr)
    last_check = _normalise_rows(p.detach()).clone()
    steps = 0

    def losses() -> torch.Tensor:
        mix = _normalise_rows(p)  # (c, n, n)
        # head_t(V w): first-layer weights (V^T W_t)^T on w, tanh(a) = 2 sigmoid(2 a) - 1 as in refine_rotation
        eff = torch.einsum("cji,ckjh->ckhi", mix, w1).reshape(c * k, h, n)
        gate = torch.sigmoid(torch.baddbmm(2.0 * b1.reshape(c * k, h, 1), 2.0 * eff, x_cols))  # (c k, H, per)
        vv = v.reshape(c * k, 1, h)
        pred = torch.bmm(2.0 * vv, gate)[:, 0, :] + (b2.reshape(c * k, 1) - vv.sum(dim=2))  # (c k, per)
        mse = (pred - target).pow(2).mean(dim=1).reshape(c, k).mean(dim=1)
        group = w1.pow(2).sum(-1).add(1e-8).sqrt().sum(dim=(1, 2)) / k
        decay = v.pow(2).sum(dim=(1, 2)) / k
        logdet = torch.linalg.slogdet(mix)[1]
        return mse + align.refine_lambda * group + 1e-3 * decay - config.refine_logdet * logdet

    for it in range(align.refine_iterations):
        warm = it < align.refine_warmup
        done = it - align.refine_warmup
        if not warm and align.refine_tol > 0 and done > 0 and done % align.refine_check_every == 0:
            with torch.no_grad():
                cur = _normalise_rows(p)
                moved = float(torch.linalg.matrix_norm(cur - last_check).max())
                last_check = cur.clone()
            if moved < align.refine_tol:
                break
        loss = losses()
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()  # the starts are independent: the sum's gradient is each one's own
        if warm:
            p.grad = None  # heads alone first
        opt.step()
        steps = it + 1
    with torch.no_grad():
        final = losses()
        return _normalise_rows(p).double().numpy(), final.double().numpy(), steps


@dataclass(frozen=True)
class LinearSearch:
    """Output of :func:`search_linear`.

    Arguments:
        mixing: ``(n, n)`` the chosen unit-row ``V``; objective: its ``J``.
        restart_mixing: ``(r, n, n)`` every start after Adam; restart_objectives: ``(r,)`` their ``J``.
        refine_losses: ``(c,)`` the refinement's final loss of every candidate (empty without refinement).
        refine_steps: steps the refinement took (0 without).
    """

    mixing: np.ndarray
    objective: float
    restart_mixing: np.ndarray
    restart_objectives: np.ndarray
    refine_losses: np.ndarray
    refine_steps: int


def search_linear(grams: np.ndarray, align: AlignConfig, config: LinearAlignConfig, seed: int,
                  w: np.ndarray | None = None, y: np.ndarray | None = None, task_id: np.ndarray | None = None,
                  dataset_id: np.ndarray | None = None) -> LinearSearch:
    """Step 3 of the module docstring on given unit-trace ``G_t`` ``(m, n, n)``: the count search over GL(n)
    from the rotation step's restarts (and the task-free rotation with ``start_taskfree``), shear sweeps,
    and with ``refine`` the refinement (:func:`refine_linear`) of the ``refine_candidates`` lowest-``J``
    distinct solutions. ``w`` ``(N, n)``, ``y``, ``task_id`` are needed by the refinement, ``dataset_id`` by
    the task-free start."""
    n = grams.shape[1]
    with torch_threads(align.gradients.threads):
        rots, rot_j = optimise_rotation(grams, align, seed)
        best_rot = int(np.argmin(rot_j))
        polished, _ = jacobi_sweeps(rots[best_rot], grams, align) if align.jacobi_sweeps > 0 else (rots[best_rot], 0.0)
        starts = [rots, polished[None]]
        if config.start_taskfree:
            if w is None or dataset_id is None:
                raise ValueError("start_taskfree needs w and dataset_id")
            from sit_causal.selection.taskfree import joint_diagonalisation

            covs = np.stack([np.cov(w[dataset_id == d], rowvar=False).reshape(n, n)
                             for d in np.unique(dataset_id) if (dataset_id == d).sum() >= 10])
            starts.append(joint_diagonalisation(covs)[0].T[None])
        vs, objectives = _optimise(np.concatenate(starts), grams, align, config)
        finite = np.where(np.isfinite(objectives), objectives, np.inf)
        order = np.argsort(finite, kind="stable")
        picked = _distinct(vs, order, config.refine_candidates if config.refine else 1)
        cands, cand_j = [], []
        for i in picked:
            v, objective = vs[i], float(finite[i])
            if config.shear_sweeps > 0:
                v, objective = shear_sweeps(v, grams, align, config)
            cands.append(v)
            cand_j.append(objective)
        refine_losses, steps = np.zeros(0), 0
        v, objective = cands[0], cand_j[0]
        if config.refine and align.refine_iterations > 0:
            if w is None or y is None or task_id is None:
                raise ValueError("refine needs w, y and task_id")
            refined, refine_losses, steps = refine_linear(w, y, task_id, grams.shape[0], np.stack(cands), align,
                                                          config, seed)
            best = int(np.argmin(refine_losses))
            v = refined[best]
            g = torch.as_tensor(grams, dtype=torch.float64)
            objective = float(linear_objective(torch.as_tensor(v)[None], g, align, config)[0])
    return LinearSearch(mixing=v, objective=objective, restart_mixing=vs, restart_objectives=objectives,
                        refine_losses=refine_losses, refine_steps=steps)


def align_linear_by_task_sparsity(z: np.ndarray, y: np.ndarray, task_id: np.ndarray, n_tasks: int,
                                  dataset_id: np.ndarray | None = None, align: AlignConfig | None = None,
                                  config: LinearAlignConfig | None = None, seed: int = 0) -> LinearAlignResult:
    """Unmix the whitened representation by an invertible matrix so that every task reads as few learned
    factors as possible (module docstring).

    Arguments:
        z: ``(N, n)`` representation of the training split (approximately affine in the factors).
        y: ``(N,)`` target of each sample's own task; task_id: ``(N,)`` in ``[0, n_tasks)``; n_tasks: ``m``.
        dataset_id: ``(N,)`` dataset of each sample (needed by ``align.whiten="within"``).
        align: the shared settings (:class:`AlignConfig`; its refinement fields are used only with
            ``config.refine``).
        config: :class:`LinearAlignConfig`.
        seed: seeds the regressors, their sample subsets and the starting rotations.

    Returns:
        :class:`LinearAlignResult`; ``result.transform(z_new)`` gives the learned factors of new samples.
    """
    acfg = AlignConfig() if align is None else align
    cfg = LinearAlignConfig() if config is None else config
    premap = None
    if cfg.affinise is not None:
        if dataset_id is None:
            raise ValueError("LinearAlignConfig.affinise needs dataset_id")
        premap = fit_affiniser(z, np.asarray(dataset_id), cfg.affinise, seed=seed)
        z = premap(z)
    w, y, task_id, mu, wmat, grams, r2 = whitened_task_grams(z, y, task_id, n_tasks, dataset_id, acfg, seed)
    did = None if dataset_id is None else np.asarray(dataset_id)
    found = search_linear(grams, acfg, cfg, seed, w=w, y=y, task_id=task_id, dataset_id=did)
    v, objective = found.mixing, found.objective
    with torch.no_grad():
        g = torch.as_tensor(grams, dtype=torch.float64)
        energies = gl_energies(torch.as_tensor(v)[None], g, cfg)[0].numpy()
    log_det = float(np.linalg.slogdet(v)[1])
    return LinearAlignResult(unmixing=v @ wmat.T, mean=mu, whitening=wmat, mixing=v, energies=energies,
                             adjacency=energies >= acfg.edge_threshold, objective=objective,
                             restart_objectives=found.restart_objectives, log_det=log_det, gradient_matrices=grams,
                             task_r2=r2, premap=premap)
