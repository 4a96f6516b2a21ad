"""A representation closer to affine: a small invertible-by-construction-near-identity flow fitted so that,
within every dataset, the corrected representation is Gaussian with one shared covariance.

Why. The selection steps assume ``z = B L + c``; a trained representation is affine in the factors only to
``R^2`` 0.96-0.97, and in the ``linear-left`` regime that residual is what makes the GL(n) step's objective
prefer a wrong unmixing (docs/results/linear_regime.md). Under the ``gauss-mean`` prior (with or without the
latent SCM) the factors of dataset ``d`` are ``N(m_d, S)``: Gaussian, with the dataset moving only the mean.
An affine map keeps that form; a nonlinear distortion ``z = h(L)`` breaks it (within-dataset distributions
that are skewed, or whose covariance changes with the dataset's location). So the correction ``phi`` is
fitted by maximum likelihood of ``phi(w) | d ~ N(m_d, S)`` with ``m_d`` and ``S`` profiled out (their
estimates plugged in)::

    loss(phi) = 1/2 log det S_hat(phi) - mean_k log |det J_phi(w_k)|

with ``w`` the within-dataset whitened representation (:func:`sit_causal.selection.gradients.whitening`),
``S_hat`` the pooled within-dataset covariance of ``phi(w)`` and ``J_phi`` its Jacobian. ``phi`` is
``blocks`` residual layers ``y <- y + V tanh(W y + b)`` with ``V`` initialised at zero (``phi`` starts at the
identity), so ``log |det J|`` is exact and cheap (``n x n`` per sample). The affine part is left to the
selection step (the loss does not see it); no task and no true factor is read, only the dataset ids.

Used by :func:`sit_causal.selection.linear.align_linear_by_task_sparsity` with
``LinearAlignConfig.affinise`` set; measured in docs/results/linear_regime.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sit_causal.selection.gradients import whitening
from sit_causal.threads import torch_threads

__all__ = ["AffiniseConfig", "Affiniser", "fit_affiniser"]


@dataclass(frozen=True)
class AffiniseConfig:
    """Settings of :func:`fit_affiniser`: ``blocks`` residual layers of width ``hidden``, ``steps`` Adam steps
    at ``lr`` on random minibatches of ``batch`` samples; ``threads``: torch threads while fitting."""

    blocks: int = 2
    hidden: int = 32
    steps: int = 600
    lr: float = 3e-3
    batch: int = 4000
    threads: int = 1

    def __post_init__(self) -> None:
        if self.blocks < 1 or self.hidden < 1 or self.steps < 0 or self.lr <= 0 or self.batch < 2 or self.threads < 1:
            raise ValueError("AffiniseConfig: blocks, hidden, threads >= 1, steps >= 0, lr > 0, batch >= 2 required")


@dataclass(frozen=True)
class Affiniser:
    """A fitted correction: ``__call__(z)`` ``(N, n)`` -> ``phi((z - mean) W)`` ``(N, n)``.

    Arguments:
        mean: ``(n,)``; whitening: ``(n, n)`` the within-dataset whitening of the training representation.
        layers: per block ``(W (H, n), b (H,), V (n, H))``.
        loss: the final loss on the full training split; loss_start: at the identity.
    """

    mean: np.ndarray
    whitening: np.ndarray
    layers: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]
    loss: float
    loss_start: float

    def __call__(self, z: np.ndarray) -> np.ndarray:
        y = (np.asarray(z, dtype=np.float64) - self.mean) @ self.whitening
        for w, b, v in self.layers:
            y = y + np.tanh(y @ w.T + b) @ v.T
        return y


def _forward(x: torch.Tensor, layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
             ) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[1]
    eye = torch.eye(n, dtype=x.dtype)
    y, logdet = x, torch.zeros(x.shape[0], dtype=x.dtype)
    for w, b, v in layers:
        t = torch.tanh(y @ w.T + b)
        jac = eye + torch.einsum("jh,ih,hk->ijk", v, 1.0 - t * t, w)  # (N, n, n)
        logdet = logdet + torch.linalg.slogdet(jac)[1]
        y = y + t @ v.T
    return y, logdet


def _loss(y: torch.Tensor, logdet: torch.Tensor, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
    counts = torch.bincount(groups, minlength=n_groups).clamp_min(1).to(y.dtype)
    means = torch.zeros(n_groups, y.shape[1], dtype=y.dtype).index_add_(0, groups, y) / counts[:, None]
    r = y - means[groups]
    return 0.5 * torch.linalg.slogdet(r.T @ r / y.shape[0])[1] - logdet.mean()


def fit_affiniser(z: np.ndarray, dataset_id: np.ndarray, config: AffiniseConfig | None = None,
                  seed: int = 0) -> Affiniser:
    """Fit the correction of the module docstring on the training representation ``z`` ``(N, n)`` with its
    dataset ids ``(N,)``."""
    cfg = AffiniseConfig() if config is None else config
    z = np.asarray(z, dtype=np.float64)
    mu, wmat = whitening(z, dataset_id)
    with torch_threads(cfg.threads):
        gen = torch.Generator().manual_seed(int(seed))
        x = torch.as_tensor((z - mu) @ wmat)
        n = x.shape[1]
        _, inv = np.unique(np.asarray(dataset_id), return_inverse=True)
        groups = torch.as_tensor(inv.ravel(), dtype=torch.long)
        n_groups = int(groups.max()) + 1
        layers = []
        for _ in range(cfg.blocks):
            layers.append((torch.nn.Parameter(torch.randn(cfg.hidden, n, generator=gen, dtype=torch.float64) / n**0.5),
                           torch.nn.Parameter(0.5 * torch.randn(cfg.hidden, generator=gen, dtype=torch.float64)),
                           torch.nn.Parameter(torch.zeros(n, cfg.hidden, dtype=torch.float64))))
        with torch.no_grad():
            start = float(_loss(*_forward(x, layers), groups, n_groups))
        opt = torch.optim.Adam([p for layer in layers for p in layer], lr=cfg.lr)
        batch = min(cfg.batch, x.shape[0])
        for _ in range(cfg.steps):
            idx = torch.randint(x.shape[0], (batch,), generator=gen)
            loss = _loss(*_forward(x[idx], layers), groups[idx], n_groups)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            final = float(_loss(*_forward(x, layers), groups, n_groups))
    return Affiniser(mean=mu, whitening=wmat, layers=tuple(tuple(p.detach().numpy().copy() for p in layer)
                                                           for layer in layers),  # type: ignore[misc]
                     loss=final, loss_start=start)
