"""Task-sparse alignment: SIT's selection step on a frozen, linearly identified representation.

Why a second phase. The prior of the latent module (iVAE's auxiliary variable, docs/design.md section 3) makes
the representation ``z`` ``(N, n)`` an invertible affine map of the true factors ``L``; under the default
mean-modulated Gaussian prior nothing in the likelihood fixes the remaining linear map, and what fixes it
is the task structure: task ``t`` reads only the factors ``S_t`` (row ``t`` of the graph ``A``, rows =
tasks, columns = factors). Learning the masks jointly with the representation (the ``sit-joint`` model)
leaves almost every gate open: while the representation is mixed every task needs every coordinate, so
closing a gate costs target loss, and the representation has no reason to unmix while the gates are open
(docs/results/simulate.md). This module takes the selection out of that deadlock: it learns the gates on
the frozen representation, where the only unknown left is a rotation.

Steps (``m`` tasks, ``n`` factors):

1. **Within-dataset whitening** (:func:`sit_causal.selection.gradients.whitening` with the dataset ids):
   ``w = (z - mu) W`` with ``W`` the inverse square root of the pooled *within-dataset* covariance of
   ``z``. Given the dataset the factors are independent, so their within-dataset covariance is
   diagonal ``D``; if ``z = B L + c`` then ``w = Q D^{-1/2} (L - loc)`` with ``Q`` ``(n, n)``
   **orthogonal**. (The pooled covariance would leave a non-orthogonal residual: the dataset means of
   different factors are correlated in a finite sample.)
2. **Per-task gradient matrices** ``G_t`` ``(n, n)`` (:func:`sit_causal.selection.gradients.fit_task_gradient_matrices`,
   centred statistic, averaged over ``ensemble`` regressors, one by default): ``range(G_t)`` estimates the span of task
   ``t``'s parent directions in ``w`` coordinates. Normalised to unit trace.
3. **Rotation by task sparsity**: for ``R`` in ``SO(n)`` (rows = learned factors, columns = ``w``
   dimensions; ``R = expm(S - S^T) `` with ``S`` free) the energy of learned factor ``j`` in task ``t`` is
   ``E_tj(R) = (R G_t R^T)_jj`` (the ``(m, n)`` matrix ``E``, rows = tasks, columns = learned factors;
   each row sums to 1) and the soft selection mask is ``M_tj = E_tj / (E_tj + eps)``. Minimise::

       J(R) = sum_{t, j} log(1 + E_tj / eps) + b * L_uic(M) + c * L_dis(M)

   with ``L_uic`` and ``L_dis`` the latent module's UIC and task-distinction losses
   (:func:`sit_causal.latent.uic_loss`, :func:`~sit_causal.latent.task_distinction_loss`) on ``M``. The
   first term is a smooth count of the edges (a log penalty, close to L0). Gradient descent (Adam) from
   ``restarts`` random rotations, all optimised together as one batch (:func:`rotation_objective` scores every
   rotation of a batch in one call; :func:`expm_skew` is the matrix exponential); the lowest ``J`` wins and is
   polished by Jacobi sweeps (:func:`jacobi_sweeps`: a grid search over the angle in every plane of two factors,
   every angle of a plane scored in one batch).
4. **Refinement with group-sparse heads** (:func:`refine_rotation`): starting from the winner ``R_0``,
   learn ``R = expm(S - S^T) R_0`` jointly with one head per task on the rotated coordinates
   ``u = R w``, ``head_t(u) = v_t . tanh(W_t^T u + b_t) + c_t`` (``W_t`` ``(n, H)``), minimising::

       mean_t mean_k (head_t(u_k) - y_k)^2 + lam * mean_t sum_j ||W_t[j, :]||_2 + 1e-3 * mean_t ||v_t||^2

   The group lasso on the rows of ``W_t`` is a continuous mask: it drives whole input factors of a head to
   zero, and the rotation turns so that each head needs as few factors as possible, in this step judged
   by the heads' actual fit rather than by separately estimated gradients. The heads train alone for
   ``refine_warmup`` steps first (random heads would otherwise drag the rotation away from ``R_0``), and the
   joint steps stop when the rotation stops moving (``||R_k - R_{k-c}||_F < refine_tol`` between checks
   ``c = refine_check_every`` steps apart) or at ``refine_iterations``. This step is local; step 3 is the
   global search.
5. **Learned graph**: ``A_hat[t, j] = 1`` iff ``E_tj >= edge_threshold`` at the final rotation (rows =
   tasks, columns = learned factors), checkable with :func:`sit_causal.theory.uic.check_uic`. (The refined heads'
   group norms are returned too; after a short refinement they still carry the initial weights of unused
   factors, so the gradient energies are the graph.)

Why the count and not the L1 norm. In the true coordinates ``E_tj = 0`` exactly for every non-parent, so
the number of non-zero entries is ``|A|``; a rotation that mixes factors ``i`` and ``j`` makes every task
that reads one of them but not the other read both, so when the task sets of ``i`` and ``j`` differ (the
UIC: no task set contains another) the count grows. The count is therefore minimised by the true axes
exactly where the UIC holds; a factor whose task set is contained in another's (non-empty mixing set) can
be rotated towards its partner without adding an edge, and stays mixed, as the checker predicts. An
L1-type penalty (``sum sqrt(E)``) instead rewards concentrating a near-linear task onto one direction,
and picks mixed rotations (measured in docs/results/simulate.md). The centred gradient statistic matters
for the same reason: for a nearly linear ``g_t`` the outer product of gradients is nearly rank one.

Measured effect (docs/results/simulate.md, ``n = 10``): the count search alone reaches MCC 0.89-0.91 on
SIT representations whose best rotation gives 0.97; the refinement brings it to 0.94.

Cost: ``ensemble * m`` small regressors (trained as one batch), ``iterations`` batched steps over the
``restarts`` rotations, ``jacobi_sweeps * n (n - 1) / 2`` batched grid evaluations, and at most
``refine_iterations`` steps of ``m`` small heads on ``refine_samples_per_task`` samples each; the refinement
is the largest part (measured in docs/results/selection_speed.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from sit_causal.selection.gradients import GradientConfig, check_task_data, fit_task_gradient_matrices, whitening
from sit_causal.threads import torch_threads

__all__ = [
    "AlignConfig",
    "AlignResult",
    "align_by_task_sparsity",
    "batched_distinction_loss",
    "batched_uic_loss",
    "expm_skew",
    "jacobi_sweeps",
    "linear_energies",
    "optimise_rotation",
    "refine_rotation",
    "rotation_energies",
    "rotation_objective",
    "task_grams",
    "whitened_task_grams",
]


@dataclass(frozen=True)
class AlignConfig:
    """Settings of :func:`align_by_task_sparsity`.

    Arguments:
        restarts: random initial rotations, optimised together (the lowest objective wins).
        iterations: Adam steps on the rotation; ``lr``: its learning rate.
        count_eps: ``eps`` of the edge count ``log(1 + E / eps)`` and of the soft mask ``E / (E + eps)``.
        edge_threshold: energy fraction ``E_tj`` from which ``A_hat[t, j] = 1``.
        w_uic, uic_margin: weight and margin of the UIC loss on the soft masks (0 = off).
        w_distinction, distinction_temperature: weight and temperature of the task distinction loss on
            the soft masks (0 = off).
        jacobi_sweeps: after the gradient search, sweeps of plane-by-plane grid search (every pair of
            learned factors, ``jacobi_angles`` angles in ``[0, pi/2)``; the best angle is kept when it lowers
            ``J``): escapes the local minima where two factors stay partly mixed.
        ensemble: regressors averaged per task for ``G_t`` (different seeds).
        gradients: the per-task regressors (:class:`~sit_causal.selection.gradients.GradientConfig`).
        whiten: ``"within"`` (within-dataset covariance; needs dataset ids) or ``"pooled"``.
        refine_iterations: Adam steps of the refinement (0 = no refinement); ``refine_warmup``: of which the
            first ones train the heads alone; ``refine_lr``: learning rate; ``refine_lambda``: group-lasso
            weight ``lam`` (targets are standardised, so it is relative to a unit-variance target);
            ``refine_hidden``: ``H``; ``refine_samples_per_task``: samples per task (a seeded subset).
        refine_tol, refine_check_every: the refinement's stop. After the warm-up, every ``refine_check_every``
            steps the rotation is compared with the one of the previous check; the refinement stops when
            ``||R_k - R_{k - c}||_F < refine_tol`` (``c = refine_check_every``; a turn by a small angle ``a`` in
            one plane changes ``R`` by ``sqrt(2) a`` in this norm), and at ``refine_iterations`` steps at the
            latest. ``refine_tol = 0`` never stops early.
    """

    restarts: int = 16
    iterations: int = 400
    lr: float = 0.05
    count_eps: float = 0.01
    edge_threshold: float = 0.05
    w_uic: float = 1.0
    uic_margin: float = 0.5
    w_distinction: float = 0.1
    distinction_temperature: float = 0.5
    jacobi_sweeps: int = 3
    jacobi_angles: int = 90
    ensemble: int = 1
    gradients: GradientConfig = field(default_factory=lambda: GradientConfig(steps=300, max_samples_per_task=1000))
    whiten: str = "within"
    refine_iterations: int = 1500
    refine_warmup: int = 400
    refine_lr: float = 1e-2
    refine_lambda: float = 0.01
    refine_hidden: int = 32
    refine_samples_per_task: int = 2000
    refine_tol: float = 0.01
    refine_check_every: int = 50

    def with_budget(self, restarts: int, refine_iterations: int) -> AlignConfig:
        """This configuration with ``restarts`` and ``refine_iterations`` (the CLI's ``--align-restarts``,
        ``--align-steps``), the heads-only warm-up scaled in proportion (400 of 1500 by default)."""
        warmup = self.refine_warmup * refine_iterations // max(1, self.refine_iterations)
        return replace(self, restarts=restarts, refine_iterations=refine_iterations, refine_warmup=warmup)

    def __post_init__(self) -> None:
        if self.restarts < 1 or self.iterations < 0 or self.ensemble < 1:
            raise ValueError("AlignConfig: restarts and ensemble must be >= 1, iterations >= 0")
        if self.count_eps <= 0 or not 0 < self.edge_threshold < 1:
            raise ValueError("AlignConfig: count_eps must be > 0 and edge_threshold in (0, 1)")
        if self.refine_iterations < 0 or self.refine_warmup < 0 or self.refine_lambda < 0:
            raise ValueError("AlignConfig: refine_iterations, refine_warmup and refine_lambda must be >= 0")
        if self.refine_tol < 0 or self.refine_check_every < 1:
            raise ValueError("AlignConfig: refine_tol must be >= 0 and refine_check_every >= 1")
        if self.whiten not in ("within", "pooled"):
            raise ValueError(f"AlignConfig.whiten must be 'within' or 'pooled', got {self.whiten!r}")


@dataclass(frozen=True)
class AlignResult:
    """Output of :func:`align_by_task_sparsity` (``n`` = representation width, ``m`` = tasks).

    Arguments:
        unmixing: ``(n, n)`` rows = learned factors, columns = ``z`` dimensions (``= rotation @ whitening.T``);
            the learned factors are ``(z - mean) @ unmixing.T`` (:meth:`transform`).
        mean: ``(n,)`` training mean of ``z``.
        whitening: ``(n, n)`` symmetric ``W`` with ``w = (z - mean) @ W``.
        rotation: ``(n, n)`` orthogonal ``R``, rows = learned factors, columns = ``w`` dimensions.
        energies: ``(m, n)`` ``E_tj`` at the solution, rows = tasks, columns = learned factors (rows sum to 1).
        head_norms: ``(m, n)`` group norms ``||W_t[j, :]||`` of the refined heads (``None`` without refinement).
        adjacency: ``(m, n)`` bool learned graph (step 5 of the module docstring).
        count_rotation: ``(n, n)`` ``R_0``, the winner of the count search (before refinement).
        objective: ``J`` of ``count_rotation`` (the winning restart after the Jacobi sweeps);
            ``restart_objectives``: ``(restarts,)`` ``J`` of every restart before them.
        gradient_matrices: ``(m, n, n)`` the unit-trace ``G_t`` in ``w`` coordinates.
        task_r2: ``(m,)`` mean training ``R^2`` of the task regressors.
        refine_steps: refinement steps taken (``< refine_iterations`` when the rotation stopped moving first).
        timings: wall seconds of each stage: ``"gradients"`` (whitening and ``G_t``), ``"search"`` (the batched
            count search), ``"jacobi"``, ``"refine"``.
    """

    unmixing: np.ndarray
    mean: np.ndarray
    whitening: np.ndarray
    rotation: np.ndarray
    energies: np.ndarray
    head_norms: np.ndarray | None
    adjacency: np.ndarray
    count_rotation: np.ndarray
    objective: float
    restart_objectives: np.ndarray
    gradient_matrices: np.ndarray
    task_r2: np.ndarray
    refine_steps: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def transform(self, z: np.ndarray) -> np.ndarray:
        """Learned factors of ``z`` ``(N, n)``: ``(z - mean) @ unmixing.T``, shape ``(N, n)``."""
        return (np.asarray(z, dtype=np.float64) - self.mean) @ self.unmixing.T


def rotation_energies(rotation: torch.Tensor, grams: torch.Tensor) -> torch.Tensor:
    """``E[r, t, j] = (R_r G_t R_r^T)_jj`` for rotations ``(r, n, n)`` (rows = learned factors) and unit-trace
    matrices ``(m, n, n)``: ``(r, m, n)``, rows (tasks) summing to 1."""
    return torch.einsum("rjk,tkl,rjl->rtj", rotation, grams, rotation).clamp_min(0.0)


_energies = rotation_energies


def linear_energies(transform: torch.Tensor, grams: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """Energies under a general invertible map (the ``GL(n)`` ambiguity): learned factors ``u = M w``
    (``M`` ``(r, n, n)``, rows = learned factors), so a task's gradient in ``u`` is ``M^{-T}`` times its
    gradient in ``w`` and ``E[r, t, j] = (M_r^{-T} G_t M_r^{-1})_jj`` (rows = tasks, columns = learned
    factors). Shape ``(r, m, n)``.

    ``normalise=True`` divides each task row by its sum: the fractions :func:`rotation_objective` counts;
    for an orthogonal ``M`` this is :func:`rotation_energies`, and it is what the theory check compares
    across forms. ``normalise=False`` keeps the raw energies, which the ``GL(n)`` step
    (:mod:`sit_causal.selection.linear`) optimises: there a per-task renormalisation lets one inflated
    column hide every other edge of its row."""
    inv = torch.linalg.inv(transform)  # (r, n, n): columns = learned factors
    e = torch.einsum("rkj,tkl,rlj->rtj", inv, grams, inv).clamp_min(0.0)
    if not normalise:
        return e
    total = e.sum(dim=2, keepdim=True)
    return e / torch.where(total > 0, total, torch.ones_like(total))


def batched_uic_loss(masks: torch.Tensor, margin: float) -> torch.Tensor:
    """:func:`sit_causal.latent.uic_loss` of every mask matrix of a batch ``(r, m, n)`` (rows = tasks, columns =
    factors) at once: ``(r,)``.

    ``sep[r, i, j] = max_t M[r, t, i] (1 - M[r, t, j])`` (diagonal set to 1) and
    ``L_uic[r] = mean_{i != j} relu(margin - sep[r, i, j])^2``, computed in float32 as the unbatched loss is.
    """
    r, _, n = masks.shape
    if n < 2:
        return masks.new_zeros(r, dtype=torch.float32)
    m = masks.float()
    sep = (m.unsqueeze(3) * (1.0 - m).unsqueeze(2)).amax(dim=1)  # (r, i, j)
    off = ~torch.eye(n, dtype=torch.bool, device=masks.device)
    return torch.relu(margin - sep[:, off]).pow(2).mean(dim=1)


def batched_distinction_loss(masks: torch.Tensor, temperature: float) -> torch.Tensor:
    """:func:`sit_causal.latent.task_distinction_loss` of every mask matrix of a batch ``(r, m, n)`` with one item
    per task (task ids ``0 .. m-1``, so no item has a positive and the loss is the repulsion term alone):
    ``L_dis[r] = mean_a log sum_{b != a} exp(cos(M[r, a], M[r, b]) / temperature)``, float32, ``(r,)``; 0 for one
    task."""
    r, m, _ = masks.shape
    if m < 2:
        return masks.new_zeros(r, dtype=torch.float32)
    unit = torch.nn.functional.normalize(masks.float(), dim=-1)
    sim = unit @ unit.transpose(1, 2) / temperature  # (r, m, m)
    sim = sim.masked_fill(torch.eye(m, dtype=torch.bool, device=masks.device), -math.inf)
    return torch.logsumexp(sim, dim=2).mean(dim=1)


def rotation_objective(energies: torch.Tensor, config: AlignConfig) -> torch.Tensor:
    """``J`` of the module docstring for energies ``(r, m, n)`` (``r`` rotations; rows = tasks, columns = learned
    factors): ``(r,)``, every rotation scored in one batch (:func:`batched_uic_loss`,
    :func:`batched_distinction_loss`; equal to the per-rotation :func:`~sit_causal.latent.uic_loss` and
    :func:`~sit_causal.latent.task_distinction_loss` up to float32 rounding)."""
    eps = config.count_eps
    count = torch.log1p(energies / eps).sum(dim=(1, 2))
    if config.w_uic <= 0 and config.w_distinction <= 0:
        return count
    masks = energies / (energies + eps)
    extra = count.new_zeros(count.shape)
    if config.w_uic > 0:
        extra = extra + config.w_uic * batched_uic_loss(masks, config.uic_margin)
    if config.w_distinction > 0:
        extra = extra + config.w_distinction * batched_distinction_loss(masks, config.distinction_temperature)
    return count + extra


def expm_skew(a: torch.Tensor, order: int = 10) -> torch.Tensor:
    """``exp(A)`` of square matrices ``(..., n, n)`` (here skew-symmetric, so the result is a rotation) by scaling
    and squaring a Taylor series: ``exp(A) = (sum_{k <= order} (A / 2^s)^k / k!)^(2^s)`` with ``s`` the smallest
    integer making ``||A||_F / 2^s <= 1/2``. The truncation error is below ``2^-(order+1) / (order+1)!``
    (``2.4e-11`` relative at ``order = 10``) before squaring: the same matrix as
    :func:`torch.linalg.matrix_exp` to float32 rounding and to about ``1e-10`` in float64, differentiable through
    plain matrix products, which on small matrices is several times cheaper than ``matrix_exp``'s backward."""
    norm = float(torch.linalg.matrix_norm(a.detach()).max()) if a.numel() else 0.0
    squarings = max(0, math.ceil(math.log2(norm / 0.5))) if norm > 0.5 else 0
    x = a / (2.0 ** squarings)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device).expand_as(a)
    term, out = eye, eye
    for k in range(1, order + 1):
        term = term @ x / k
        out = out + term
    for _ in range(squarings):
        out = out @ out
    return out


def optimise_rotation(grams: np.ndarray, config: AlignConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Batched Adam over ``restarts`` rotations; returns every final rotation ``(r, n, n)`` and ``J`` ``(r,)``."""
    n = grams.shape[1]
    gen = torch.Generator().manual_seed(int(seed))
    g = torch.as_tensor(grams, dtype=torch.float64)
    skew = torch.nn.Parameter(torch.randn(config.restarts, n, n, generator=gen, dtype=torch.float64))
    opt = torch.optim.Adam([skew], lr=config.lr)
    for _ in range(config.iterations):
        rot = expm_skew(skew - skew.transpose(1, 2))
        loss = rotation_objective(_energies(rot, g), config)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()  # restarts are independent: the sum's gradient is each one's own
        opt.step()
    with torch.no_grad():
        rot = expm_skew(skew - skew.transpose(1, 2))
        final = rotation_objective(_energies(rot, g), config)
    return rot.numpy(), final.numpy()


def refine_rotation(w: np.ndarray, y: np.ndarray, task_id: np.ndarray, n_tasks: int, rotation: np.ndarray,
                    config: AlignConfig, seed: int) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Step 4 of the module docstring: rotation and group-sparse heads learned jointly.

    Arguments:
        w: ``(N, n)`` whitened representation; y: ``(N,)`` targets; task_id: ``(N,)`` in ``[0, n_tasks)``.
        rotation: ``(n, n)`` ``R_0`` (rows = learned factors, columns = ``w`` dimensions).
        config: the ``refine_*`` settings; seed: seeds the sample subsets and the heads' initialisation.

    Returns:
        The refined rotation ``(n, n)``, the heads' group norms ``(m, n)`` (rows = tasks, columns =
        learned factors), the final loss (MSE + group lasso + head decay) and the steps taken: fewer than
        ``refine_iterations`` when the rotation stopped moving (``refine_tol``, ``refine_check_every`` of
        :class:`AlignConfig`).
    """
    n = w.shape[1]
    counts = np.bincount(task_id, minlength=n_tasks)
    present = np.flatnonzero(counts > 0)
    per = int(min(config.refine_samples_per_task, counts[present].min()))
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    rows = np.stack([rng.choice(np.flatnonzero(task_id == t), per, replace=False) for t in present])  # (m', per)
    ys = y[rows]
    ys = (ys - ys.mean(axis=1, keepdims=True)) / (ys.std(axis=1, keepdims=True) + 1e-12)
    x = torch.as_tensor(w[rows], dtype=torch.float32)  # (m', per, n)
    target = torch.as_tensor(ys, dtype=torch.float32)
    gen = torch.Generator().manual_seed(int(seed))
    k, h = len(present), config.refine_hidden
    r0 = torch.as_tensor(rotation, dtype=torch.float32)
    skew = torch.nn.Parameter(torch.zeros(n, n))
    w1 = torch.nn.Parameter(torch.randn(k, n, h, generator=gen) / n**0.5)
    b1 = torch.nn.Parameter(torch.zeros(k, 1, h))
    v = torch.nn.Parameter(torch.randn(k, h, generator=gen) / h**0.5)
    c = torch.nn.Parameter(torch.zeros(k, 1))
    opt = torch.optim.Adam([skew, w1, b1, v, c], lr=config.refine_lr)
    fixed = r0.T.expand(k, n, n)  # the warm-up's rotation: R_0 (heads alone)
    x_cols = x.transpose(1, 2).contiguous()  # (m', n, per): samples in columns
    last_check, steps, loss = r0, 0, torch.zeros(())
    for it in range(config.refine_iterations):
        warm = it < config.refine_warmup
        if warm:
            rot_t = fixed
        else:
            rot = expm_skew(skew - skew.T) @ r0
            rot_t = rot.T.expand(k, n, n)
            done = it - config.refine_warmup
            if config.refine_tol > 0 and done > 0 and done % config.refine_check_every == 0:
                with torch.no_grad():
                    moved = float(torch.linalg.matrix_norm(rot - last_check))
                    last_check = rot.detach().clone()
                if moved < config.refine_tol:
                    break  # the rotation stopped moving
        # head_t(R w) = v_t . tanh(W_t^T R w + b_t) + c_t, with tanh(a) = 2 sigmoid(2 a) - 1 (one sigmoid, much
        # cheaper than tanh on CPU): = (2 v_t) . sigmoid(2 (R^T W_t)^T w + 2 b_t) + (c_t - sum(v_t)); hidden units
        # in rows, samples in columns
        weights = 2.0 * torch.bmm(rot_t, w1).transpose(1, 2)  # (m', H, n)
        b1_cols = 2.0 * b1.transpose(1, 2)  # (m', H, 1)
        gate = torch.sigmoid(torch.baddbmm(b1_cols, weights, x_cols))  # (m', H, per)
        pred = torch.bmm(2.0 * v[:, None, :], gate)[:, 0, :] + (c - v.sum(dim=1, keepdim=True))  # (m', per)
        group = w1.pow(2).sum(-1).add(1e-8).sqrt()  # (m', n)
        loss = (pred - target).pow(2).mean() + config.refine_lambda * group.sum() / k + 1e-3 * v.pow(2).sum() / k
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if warm:
            skew.grad = None  # heads alone first
        opt.step()
        steps = it + 1
    with torch.no_grad():
        rot = expm_skew(skew - skew.T) @ r0
        norms = np.zeros((n_tasks, n))
        norms[present] = w1.pow(2).sum(-1).sqrt().numpy()
    return rot.double().numpy(), norms, float(loss.detach()), steps


def jacobi_sweeps(rotation: np.ndarray, grams: np.ndarray, config: AlignConfig) -> tuple[np.ndarray, float]:
    """Plane-by-plane grid search on ``J`` (Jacobi rotations, as in ICA's pairwise algorithms).

    For every pair ``(i, j)`` of learned factors, the rotations ``P(theta) R`` with ``P`` a Givens rotation
    of rows ``i`` and ``j`` by ``theta`` in ``[0, pi/2)`` (``jacobi_angles`` values; ``pi/2`` only swaps the
    two factors, which ``J`` does not see) are scored in one batch and the best is kept if it lowers
    ``J``; ``jacobi_sweeps`` passes over all pairs, stopping early when a pass changes nothing.

    Arguments:
        rotation: ``(n, n)`` start, rows = learned factors; grams: ``(m, n, n)`` unit-trace ``G_t``.

    Returns:
        The rotation ``(n, n)`` and its ``J``.
    """
    n = rotation.shape[0]
    g = torch.as_tensor(grams, dtype=torch.float64)
    rot = torch.as_tensor(rotation, dtype=torch.float64).clone()
    theta = torch.arange(config.jacobi_angles, dtype=torch.float64) * (np.pi / 2 / config.jacobi_angles)
    cos, sin = torch.cos(theta), torch.sin(theta)
    with torch.no_grad():
        best = float(rotation_objective(_energies(rot[None], g), config)[0])
        for _ in range(config.jacobi_sweeps):
            changed = False
            for i in range(n - 1):
                for j in range(i + 1, n):
                    cand = rot.expand(theta.numel(), n, n).clone()
                    cand[:, i] = cos[:, None] * rot[i] - sin[:, None] * rot[j]
                    cand[:, j] = sin[:, None] * rot[i] + cos[:, None] * rot[j]
                    scores = rotation_objective(_energies(cand, g), config)
                    k = int(torch.argmin(scores))
                    if k != 0 and float(scores[k]) < best - 1e-9:
                        best, rot, changed = float(scores[k]), cand[k].clone(), True
            if not changed:
                break
    return rot.numpy(), best


def task_grams(w: np.ndarray, y: np.ndarray, task_id: np.ndarray, n_tasks: int, config: AlignConfig,
               seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Step 2 of the module docstring: the unit-trace gradient matrices ``G_t`` ``(m, n, n)`` of the whitened
    representation ``w`` ``(N, n)``, averaged over ``config.ensemble`` regressors, and their mean training
    ``R^2`` ``(m,)``."""
    grams = np.zeros((n_tasks, w.shape[1], w.shape[1]))
    r2 = np.zeros(n_tasks)
    for k in range(config.ensemble):
        g, r = fit_task_gradient_matrices(w, y, task_id, n_tasks, config.gradients, seed + 7919 * k)
        grams += g / config.ensemble
        r2 += np.nan_to_num(r) / config.ensemble
    trace = np.trace(grams, axis1=1, axis2=2)
    return grams / np.where(trace > 0, trace, 1.0)[:, None, None], r2


def whitened_task_grams(z: np.ndarray, y: np.ndarray, task_id: np.ndarray, n_tasks: int,
                        dataset_id: np.ndarray | None, cfg: AlignConfig, seed: int
                        ) -> tuple[np.ndarray, ...]:
    """The first steps every selection step shares: check the data, whiten ``z`` (within datasets or
    pooled, ``cfg.whiten``) to ``w = (z - mu) W``, and the per-task gradient matrices of ``w``
    (:func:`task_grams`). Returns ``(w (N, n), y, task_id (checked), mu (n,), W (n, n), grams (m, n, n),
    r2 (m,))``."""
    z, y, task_id = check_task_data(z, y, task_id)
    if cfg.whiten == "within" and dataset_id is None:
        raise ValueError("whiten='within' needs dataset_id (or use AlignConfig(whiten='pooled'))")
    mu, wmat = whitening(z, dataset_id if cfg.whiten == "within" else None)
    w = (z - mu) @ wmat
    grams, r2 = task_grams(w, y, task_id, n_tasks, cfg, seed)
    return w, y, task_id, mu, wmat, grams, r2


def align_by_task_sparsity(z: np.ndarray, y: np.ndarray, task_id: np.ndarray, n_tasks: int,
                           dataset_id: np.ndarray | None = None, config: AlignConfig | None = None,
                           seed: int = 0) -> AlignResult:
    """Rotate the whitened representation so that every task reads as few learned factors as possible.

    Arguments:
        z: ``(N, n)`` representation of the training split (approximately affine in the factors).
        y: ``(N,)`` float target of each sample's own task.
        task_id: ``(N,)`` int task of each sample, in ``[0, n_tasks)``.
        n_tasks: ``m``.
        dataset_id: ``(N,)`` int dataset of each sample (required by ``whiten="within"``).
        config: :class:`AlignConfig` (defaults when ``None``).
        seed: seeds the regressors, their sample subsets and the initial rotations.

    Returns:
        :class:`AlignResult`; ``result.transform(z_new)`` gives the learned factors of new samples.
    """
    cfg = AlignConfig() if config is None else config
    clock = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage], clock = now - clock, now

    w, y, task_id, mu, wmat, grams, r2 = whitened_task_grams(z, y, task_id, n_tasks, dataset_id, cfg, seed)
    lap("gradients")
    steps = 0
    with torch_threads(cfg.gradients.threads):
        rots, objectives = optimise_rotation(grams, cfg, seed)
        best = int(np.argmin(objectives))
        rot0, objective = rots[best], float(objectives[best])
        lap("search")
        if cfg.jacobi_sweeps > 0:
            rot0, objective = jacobi_sweeps(rot0, grams, cfg)
        lap("jacobi")
        rot, norms = rot0, None
        if cfg.refine_iterations > 0:
            rot, norms, _, steps = refine_rotation(w, y, task_id, n_tasks, rot0, cfg, seed)
            # re-orthonormalise in float64 (the refinement runs in float32)
            u_, _, vt_ = np.linalg.svd(rot)
            rot = u_ @ vt_
        lap("refine")
    energies = np.clip(np.einsum("jk,tkl,jl->tj", rot, grams, rot), 0.0, None)
    return AlignResult(unmixing=rot @ wmat.T, mean=mu, whitening=wmat, rotation=rot, energies=energies,
                       head_norms=norms, adjacency=energies >= cfg.edge_threshold, count_rotation=rot0,
                       objective=objective, restart_objectives=objectives, gradient_matrices=grams,
                       task_r2=r2, refine_steps=steps, timings=timings)
