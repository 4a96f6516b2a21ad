"""Per-task gradient matrices of a frozen representation: the statistic every selection step starts from.

Inputs are plain arrays: a representation ``z`` ``(N, n)`` (any model's: the synthetic SIT model's
posterior mean, iVAE's, an NLP encoder's pooled factors), each sample's task id ``(N,)`` and target ``(N,)``,
and optionally its dataset id ``(N,)``.

* :func:`whitening`: mean and ``C^{-1/2}`` of the (pooled or within-dataset) covariance.
* :func:`fit_task_gradient_matrices`: one small regressor ``f_t`` per task on the whitened representation;
  ``G_t`` ``(n, n)`` from the per-sample gradients ``grad f_t(w_k)`` (:func:`gradient_matrix`).
  ``range(G_t)`` estimates the span of the directions task ``t`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sit_causal.threads import torch_threads

__all__ = [
    "GradientConfig",
    "check_task_data",
    "fit_task_gradient_matrices",
    "gradient_matrix",
    "whitening",
]


@dataclass(frozen=True)
class GradientConfig:
    """The per-task regressors of :func:`fit_task_gradient_matrices`.

    Arguments:
        hidden: width of the two hidden layers of each task's regressor ``f_t``.
        steps: full-batch Adam steps per regressor; ``lr``: its learning rate.
        max_samples_per_task: at most this many samples of each task fit ``f_t`` and average ``G_t``
            (a seeded random subset when a task has more); ``None`` = all.
        statistic: ``"centred"`` or ``"outer"``, the gradient matrix of :func:`gradient_matrix`.
        threads: ``torch.set_num_threads`` while fitting (restored afterwards).
    """

    hidden: int = 32
    steps: int = 200
    lr: float = 1e-2
    max_samples_per_task: int | None = 2000
    statistic: str = "centred"
    threads: int = 1

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.steps < 0 or self.lr <= 0 or self.threads < 1:
            raise ValueError("GradientConfig: hidden, threads >= 1, steps >= 0 and lr > 0 required")
        if self.statistic not in ("centred", "outer"):
            raise ValueError(f"unknown gradient statistic {self.statistic!r}; use 'outer' or 'centred'")


def whitening(z: np.ndarray, groups: np.ndarray | None = None, eps: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(n,)`` and symmetric whitening matrix ``W = C^{-1/2}`` ``(n, n)`` of ``z`` ``(N, n)``.

    ``C`` is the covariance of ``z`` (``groups=None``) or the pooled *within-group* covariance
    ``sum_k (z_k - mean_{g(k)})(z_k - mean_{g(k)})^T / (N - #groups)`` for ``groups`` ``(N,)`` ints (e.g. the
    dataset ids; used by :mod:`sit_causal.selection.align`).
    """
    z = np.asarray(z, dtype=np.float64)
    mu = z.mean(axis=0)
    if groups is None:
        centred, dof = z - mu, z.shape[0] - 1
    else:
        groups = np.asarray(groups)
        if groups.shape != (z.shape[0],):
            raise ValueError("groups must be (N,) like the rows of z")
        _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
        sums = np.zeros((counts.size, z.shape[1]))
        np.add.at(sums, inverse, z)
        centred, dof = z - (sums / counts[:, None])[inverse], z.shape[0] - counts.size
    cov = centred.T @ centred / max(1, dof)
    s, u = np.linalg.eigh(cov)
    return mu, (u / np.sqrt(np.maximum(s, eps))) @ u.T


def check_task_data(z: np.ndarray, y: np.ndarray, task_id: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``z`` ``(N, n)`` and ``y`` ``(N,)`` as float64, ``task_id`` ``(N,)`` as an array; ``ValueError`` on other
    shapes (the inputs of :func:`identify_by_intersection` and :func:`sit_causal.align.align_by_task_sparsity`)."""
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    task_id = np.asarray(task_id)
    if z.ndim != 2 or y.shape != (z.shape[0],) or task_id.shape != (z.shape[0],):
        raise ValueError("z must be (N, n), y and task_id (N,)")
    return z, y, task_id


def _regressor(n: int, hidden: int, generator: torch.Generator) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(n, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, nn.Linear):
                bound = 1.0 / np.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.zero_()
    return net


def _stacked_regressors(nets: list[nn.Sequential]) -> list[torch.nn.Parameter]:
    """The layers of ``k`` regressors of :func:`_regressor` stacked for batched matrix products:
    ``[W1 (k, n, H), b1 (k, 1, H), W2 (k, H, H), b2 (k, 1, H), W3 (k, H, 1), b3 (k, 1, 1)]`` with ``W`` in
    (inputs, outputs) orientation, i.e. the transposes of ``nn.Linear``'s weights."""
    out = []
    for idx in (0, 2, 4):
        weight = torch.stack([net[idx].weight.detach().T for net in nets])
        bias = torch.stack([net[idx].bias.detach()[None, :] for net in nets])
        out += [torch.nn.Parameter(weight.clone()), torch.nn.Parameter(bias.clone())]
    return out


def _stacked_forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``f_t(x_t)`` of every stacked regressor: ``x`` ``(k, P, n)`` -> ``(k, P, 1)`` (Linear, SiLU, Linear, SiLU,
    Linear, as :func:`_regressor`)."""
    w1, b1, w2, b2, w3, b3 = params
    h = torch.nn.functional.silu(torch.baddbmm(b1, x, w1))
    h = torch.nn.functional.silu(torch.baddbmm(b2, h, w2))
    return torch.baddbmm(b3, h, w3)


def fit_task_gradient_matrices(w: np.ndarray, y: np.ndarray, task_id: np.ndarray, n_tasks: int,
                               config: GradientConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gradient outer-product matrices of the per-task regressors.

    Every task's regressor ``f_t`` is trained at once as one batch of networks (stacked weights, batched matrix
    products; Adam acts elementwise, so this is the same as one optimiser per task): full-batch Adam on the
    mean squared error of the task's own (at most ``max_samples_per_task``) samples, tasks with fewer samples
    padded with zero-weight rows. The subsets and the initial weights are drawn task after task in the same
    order as separate fits would draw them.

    Arguments:
        w: ``(N, n)`` whitened representation; y: ``(N,)`` each sample's own task target;
        task_id: ``(N,)`` int in ``[0, n_tasks)``; config: regressor settings; seed: seeds the sample
            subsets (``numpy.random.Generator``) and the regressors' initialisation (``torch.Generator``).

    Returns:
        ``G`` ``(m, n, n)`` with ``G_t = mean_k grad f_t(w_k) grad f_t(w_k)^T`` over task ``t``'s samples
        (targets standardised per task), and the training ``R^2`` of each regressor ``(m,)`` (rows of a
        task with fewer than 2 samples: zero and NaN).
    """
    n = w.shape[1]
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    gen = torch.Generator().manual_seed(int(seed))
    grams = np.zeros((n_tasks, n, n))
    r2 = np.full(n_tasks, np.nan)
    tasks, subsets, nets = [], [], []
    for t in range(n_tasks):
        rows = np.flatnonzero(task_id == t)
        if rows.size < 2:
            continue
        if config.max_samples_per_task is not None and rows.size > config.max_samples_per_task:
            rows = rng.choice(rows, size=config.max_samples_per_task, replace=False)
        tasks.append(t)
        subsets.append(rows)
        nets.append(_regressor(n, config.hidden, gen))
    if not tasks:
        return grams, r2
    k, size = len(tasks), max(r.size for r in subsets)
    x_np = np.zeros((k, size, n), dtype=np.float32)
    y_np = np.zeros((k, size, 1), dtype=np.float32)
    valid_np = np.zeros((k, size, 1), dtype=np.float32)
    for i, rows in enumerate(subsets):
        yt = y[rows].astype(np.float64)
        x_np[i, : rows.size] = w[rows]
        y_np[i, : rows.size, 0] = (yt - yt.mean()) / (yt.std() + 1e-12)
        valid_np[i, : rows.size] = 1.0
    x, target, valid = torch.from_numpy(x_np), torch.from_numpy(y_np), torch.from_numpy(valid_np)
    counts = valid.sum(dim=(1, 2))  # (k,)
    with torch_threads(config.threads):
        params = _stacked_regressors(nets)
        opt = torch.optim.Adam(params, lr=config.lr)
        for _ in range(config.steps):
            # sum over tasks of each task's own mean squared error: each task's gradient is its own
            loss = (((_stacked_forward(params, x) - target).pow(2) * valid).sum(dim=(1, 2)) / counts).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        xg = x.clone().requires_grad_(True)
        pred = _stacked_forward(params, xg)
        (grad,) = torch.autograd.grad(pred.sum(), xg)
        mse = (((pred.detach() - target).pow(2) * valid).sum(dim=(1, 2)) / counts).double().numpy()
    g_all = grad.double().numpy()
    for i, t in enumerate(tasks):
        grams[t] = gradient_matrix(g_all[i, : subsets[i].size], config.statistic)
        r2[t] = 1.0 - float(mse[i])
    return grams, r2


def gradient_matrix(grads: np.ndarray, statistic: str = "centred") -> np.ndarray:
    """The ``(n, n)`` matrix whose range estimates ``V_t``, from per-sample gradients ``grads`` ``(N, n)``.

    * ``"outer"``: ``G = mean g g^T`` (the gradient outer product);
    * ``"centred"``: ``G = C / lambda_max(C) + mbar mbar^T / |mbar|^2`` with ``mbar = mean g`` and ``C`` the
      covariance of the gradients. A nearly linear ``g_t`` has a nearly constant gradient, so the outer
      product is nearly rank one and hides the other parents; the covariance shows every parent whose
      partial derivative varies (each ``L_i`` varies independently given the dataset), and the mean
      direction (in ``V_t`` too) is added with unit weight.
    """
    g = np.asarray(grads, dtype=np.float64)
    n = g.shape[1]
    if statistic == "outer":
        return g.T @ g / g.shape[0]
    if statistic != "centred":
        raise ValueError(f"unknown gradient statistic {statistic!r}; use 'outer' or 'centred'")
    mbar = g.mean(axis=0)
    cov = np.cov(g - mbar, rowvar=False).reshape(n, n)
    top = float(np.linalg.eigvalsh(cov)[-1])
    out = cov / top if top > 0 else np.zeros((n, n))
    norm2 = float(mbar @ mbar)
    return out + (np.outer(mbar, mbar) / norm2 if norm2 > 0 else 0.0)


