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

What it can and cannot recover (docs/uic.md). A shear ``u_i = L_i + a L_j`` keeps every edge exactly when
every task reading ``L_i`` also reads ``L_j`` (``C_i ⊆ C_j``): then ``J_count`` is flat along it and only
the log-det guard moves ``a``, towards making ``u_i`` uncorrelated with the other learned factors, which
is not ``a = 0`` when the true factors are correlated within datasets: such a factor stays mixed, as the
UIC predicts. Where the task sets form an antichain (the UIC) every shear and every rotation adds an edge
and the true factors are the sparsest solution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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
    "align_linear_by_task_sparsity",
    "linear_objective",
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
    """

    iterations: int = 400
    lr: float = 0.02
    w_logdet: float = 0.5
    shear_sweeps: int = 2
    shear_values: int = 41
    shear_range: float = 2.0

    def __post_init__(self) -> None:
        if self.iterations < 0 or self.lr <= 0 or self.w_logdet <= 0:
            raise ValueError("LinearAlignConfig: iterations >= 0, lr > 0 and w_logdet > 0 required")
        if self.shear_sweeps < 0 or self.shear_values < 2 or self.shear_range <= 0:
            raise ValueError("LinearAlignConfig: shear_sweeps >= 0, shear_values >= 2, shear_range > 0 required")


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

    def transform(self, z: np.ndarray) -> np.ndarray:
        """Learned factors of ``z`` ``(N, n)``: ``(z - mean) @ unmixing.T``, shape ``(N, n)``."""
        return (np.asarray(z, dtype=np.float64) - self.mean) @ self.unmixing.T


def _normalise_rows(p: torch.Tensor) -> torch.Tensor:
    return p / p.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def linear_objective(v: torch.Tensor, grams: torch.Tensor, align: AlignConfig,
                     config: LinearAlignConfig) -> torch.Tensor:
    """``J(V)`` of the module docstring for unit-row ``V`` ``(r, n, n)``: ``(r,)``."""
    logdet = torch.linalg.slogdet(v)[1]
    return rotation_objective(linear_energies(v, grams, normalise=False), align) - config.w_logdet * logdet


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


def align_linear_by_task_sparsity(z: np.ndarray, y: np.ndarray, task_id: np.ndarray, n_tasks: int,
                                  dataset_id: np.ndarray | None = None, align: AlignConfig | None = None,
                                  config: LinearAlignConfig | None = None, seed: int = 0) -> LinearAlignResult:
    """Unmix the whitened representation by an invertible matrix so that every task reads as few learned
    factors as possible (module docstring).

    Arguments:
        z: ``(N, n)`` representation of the training split (approximately affine in the factors).
        y: ``(N,)`` target of each sample's own task; task_id: ``(N,)`` in ``[0, n_tasks)``; n_tasks: ``m``.
        dataset_id: ``(N,)`` dataset of each sample (needed by ``align.whiten="within"``).
        align: the shared settings (:class:`AlignConfig`; its refinement fields are not used here).
        config: :class:`LinearAlignConfig`.
        seed: seeds the regressors, their sample subsets and the starting rotations.

    Returns:
        :class:`LinearAlignResult`; ``result.transform(z_new)`` gives the learned factors of new samples.
    """
    acfg = AlignConfig() if align is None else align
    cfg = LinearAlignConfig() if config is None else config
    _, _, _, mu, wmat, grams, r2 = whitened_task_grams(z, y, task_id, n_tasks, dataset_id, acfg, seed)
    with torch_threads(acfg.gradients.threads):
        rots, rot_j = optimise_rotation(grams, acfg, seed)
        best_rot = int(np.argmin(rot_j))
        polished, _ = jacobi_sweeps(rots[best_rot], grams, acfg) if acfg.jacobi_sweeps > 0 else (rots[best_rot], 0.0)
        starts = np.concatenate([rots, polished[None]])
        vs, objectives = _optimise(starts, grams, acfg, cfg)
        finite = np.where(np.isfinite(objectives), objectives, np.inf)
        best = int(np.argmin(finite))
        v, objective = vs[best], float(finite[best])
        if cfg.shear_sweeps > 0:
            v, objective = shear_sweeps(v, grams, acfg, cfg)
        g = torch.as_tensor(grams, dtype=torch.float64)
        energies = linear_energies(torch.as_tensor(v)[None], g, normalise=False)[0].numpy()
    log_det = float(np.linalg.slogdet(v)[1])
    return LinearAlignResult(unmixing=v @ wmat.T, mean=mu, whitening=wmat, mixing=v, energies=energies,
                             adjacency=energies >= acfg.edge_threshold, objective=objective,
                             restart_objectives=objectives, log_det=log_det, gradient_matrices=grams,
                             task_r2=r2)
