"""The two deterministic maps of the meta-SCM (:mod:`sit_causal.sim.scm`): the mixing ``f`` and the targets ``g_t``.

Mixing ``f`` (:class:`MixingMLP`): ``mixing_depth`` affine layers with a strictly monotone activation
after every layer but the last. Weights are Haar-random orthogonal (QR of a Gaussian matrix with the
sign of ``diag(R)`` fixed): the first is ``(n, obs_dim)`` with orthonormal rows (full column rank of the
map, condition number 1), the others ``(obs_dim, obs_dim)``. ``f`` is therefore injective with the explicit
left inverse :meth:`MixingMLP.inverse`, and its Jacobian has condition number at most
``slope^-(depth-1)`` for leaky-ReLU (``slope`` = ``activation_slope``).
Activations: ``leaky_relu(x) = x if x > 0 else slope * x``; ``xtanh(x) = tanh(x) + slope * x`` (iVAE's,
strictly increasing with derivative ``>= slope``; inverted by bisection).

Targets ``g_t`` (:class:`TargetMaps`) act on the standardised factors ``z = (L - loc) / scale``
(``loc``, ``scale``: each factor's mean and standard deviation pooled over the datasets, computed
analytically from the natural parameters)::

    g_t(z) = |S_t|^{-1/2} sum_{i in S_t} [ a_ti tanh(w_ti z_i + c_ti) + b_ti z_i ] + v_t . tanh(U_t z + d_t)

with ``sign(a_ti) = sign(b_ti)`` random, ``|a| ~ U[0.5, 1.5]``, ``w ~ U[0.5, 2]``, ``c ~ U[-1, 1]``,
``|b| ~ U[0.2, 0.5]``; ``U_t`` (hidden x n) Gaussian with **zero columns outside S_t**, and ``v_t`` scaled
so that the interaction's partial derivatives never exceed 0.9 times the additive part's slope bound.
Hence ``g_t`` is strictly monotone in every parent (it truly depends on each) and constant in every
non-parent. Classification: ``Y_t = 1[g_t(z) + noise > c_t]`` (int labels 0/1) with ``c_t`` the median of
``g_t`` on a reference draw of the prior (balanced classes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from sit_causal.theory.graph import TaskFactorGraph

__all__ = ["Activation", "MixingMLP", "TargetKind", "TargetMaps", "build_mixing", "build_targets"]

Activation = Literal["leaky_relu", "xtanh"]
"""The mixing's activation: ``leaky_relu(x) = max(x, slope x)`` or ``xtanh(x) = tanh(x) + slope x``."""
TargetKind = Literal["regression", "classification"]
"""``regression``: ``Y_t`` is the noisy ``g_t``; ``classification``: ``1[g_t + noise > c_t]``."""


# ====================================================================== mixing f
def _haar_orthogonal(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """``(rows, cols)`` with orthonormal columns if rows >= cols (else orthonormal rows), Haar-random."""
    tall = rows >= cols
    g = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(g)
    q = q * np.sign(np.diag(r))[None, :]
    return q if tall else q.T


@dataclass(frozen=True, eq=False)
class MixingMLP:
    """The mixing ``f: R^n -> R^obs_dim`` (row-vector convention: ``h_{l+1} = act(h_l @ W_l + b_l)``).

    Arguments:
        weights: ``W_0`` of shape ``(n, obs_dim)`` with orthonormal rows, then ``(obs_dim, obs_dim)``
            orthogonal matrices.
        biases: ``b_l`` of shape ``(obs_dim,)``.
        activation: ``"leaky_relu"`` or ``"xtanh"``, applied after every layer but the last.
        slope: the activation's slope parameter.
    """

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    activation: Activation
    slope: float

    @property
    def n_factors(self) -> int:
        return int(self.weights[0].shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.weights[-1].shape[1])

    def _act_inv(self, y: np.ndarray) -> np.ndarray:
        if self.activation == "leaky_relu":
            return np.where(y > 0, y, y / self.slope)
        # tanh(x) + a x = y  =>  x in [(y - 1) / a, (y + 1) / a]. Safeguarded Newton: the function is
        # increasing with derivative >= a, a Newton step that leaves the bracket is replaced by bisection.
        a = self.slope
        lo, hi = (y - 1.0) / a, (y + 1.0) / a
        x = y / (1.0 + a)
        for _ in range(100):
            t = np.tanh(x)
            fx = t + a * x - y
            if np.max(np.abs(fx), initial=0.0) < 1e-13 * max(1.0, float(np.max(np.abs(y), initial=0.0))):
                break
            hi = np.where(fx > 0, x, hi)
            lo = np.where(fx > 0, lo, x)
            step = x - fx / (1.0 - t * t + a)
            x = np.where((step >= lo) & (step <= hi), step, 0.5 * (lo + hi))
        return x

    def __call__(self, latents: np.ndarray) -> np.ndarray:
        """``f(L)``: ``(N, n) -> (N, obs_dim)``, noise-free."""
        return self.forward(latents)

    def forward(self, latents: np.ndarray, noise_std: float = 0.0, rng: np.random.Generator | None = None,
                chunk: int = 16384) -> np.ndarray:
        """``f(L) + noise_std * N(0, I)``: ``(N, n) -> (N, obs_dim)``.

        Rows are processed in blocks of ``chunk`` with preallocated buffers, so temporaries stay in cache:
        at millions of rows memory traffic, not arithmetic, dominates. The noise is drawn block by block
        from ``rng`` (row-major order, the same numbers as one ``(N, obs_dim)`` draw).
        """
        latents = np.asarray(latents, dtype=np.float64)
        if latents.ndim != 2 or latents.shape[1] != self.n_factors:
            raise ValueError(f"latents must have shape (N, {self.n_factors}), got {latents.shape}")
        if noise_std > 0 and rng is None:
            raise ValueError("noise needs an explicit rng")
        n_rows, width = latents.shape[0], self.obs_dim
        out = np.empty((n_rows, width), dtype=np.float64)
        buf_a, buf_b = np.empty((chunk, width)), np.empty((chunk, width))
        last = len(self.weights) - 1
        for start in range(0, n_rows, chunk):
            stop = min(n_rows, start + chunk)
            h, spare = buf_a[: stop - start], buf_b[: stop - start]
            np.matmul(latents[start:stop], self.weights[0], out=h)
            for i in range(last + 1):
                if i > 0:
                    target = out[start:stop] if i == last else spare
                    np.matmul(h, self.weights[i], out=target)
                    h, spare = target, h
                h += self.biases[i]
                if i < last:
                    self._act_inplace(h, spare)
            if last == 0:
                out[start:stop] = h
            if noise_std > 0:
                assert rng is not None
                noise = rng.standard_normal(out=spare)
                noise *= noise_std
                out[start:stop] += noise
        return out

    def _act_inplace(self, h: np.ndarray, scratch: np.ndarray) -> None:
        if self.activation == "leaky_relu":  # max(h, a h) = leaky-ReLU for 0 < a <= 1
            np.multiply(h, self.slope, out=scratch)
            np.maximum(h, scratch, out=h)
        else:
            np.multiply(h, self.slope, out=scratch)
            np.tanh(h, out=h)
            h += scratch

    def inverse(self, x: np.ndarray) -> np.ndarray:
        """The left inverse ``f^{-1}``: ``(N, obs_dim) -> (N, n)``; exact on the image of ``f``
        (for noisy ``x`` it returns the inverse of the projection at the first layer)."""
        h = np.asarray(x, dtype=np.float64)
        last = len(self.weights) - 1
        for i in range(last, -1, -1):
            if i < last:
                h = self._act_inv(h)
            h = (h - self.biases[i]) @ self.weights[i].T  # W orthogonal / orthonormal rows
        return h


def build_mixing(n_factors: int, obs_dim: int, depth: int, activation: Activation, slope: float,
                 rng: np.random.Generator, bias_scale: float = 0.5) -> MixingMLP:
    """Draw :class:`MixingMLP` weights (Haar orthogonal) and biases (``N(0, bias_scale^2)``)."""
    if obs_dim < n_factors:
        raise ValueError(f"obs_dim ({obs_dim}) must be >= n_factors ({n_factors})")
    weights = [_haar_orthogonal(obs_dim, n_factors, rng).T]  # (n, obs_dim), orthonormal rows
    weights += [_haar_orthogonal(obs_dim, obs_dim, rng) for _ in range(depth - 1)]
    biases = [bias_scale * rng.standard_normal(obs_dim) for _ in range(depth)]
    return MixingMLP(tuple(weights), tuple(biases), activation, float(slope))


# ====================================================================== targets g_t
@dataclass(frozen=True, eq=False)
class TargetMaps:
    """The random target maps ``g_t`` of all tasks (formula in the module docstring).

    Arrays (``m`` tasks, ``n`` factors, ``H`` hidden units); every ``(m, n)`` array is zero where
    ``adjacency`` is False (**rows = tasks, columns = factors**):

    * ``loc``, ``scale``: ``(n,)`` standardisation of the factors;
    * ``a``, ``w``, ``c``, ``b``: ``(m, n)`` additive part;
    * ``u``: ``(m, H, n)``, ``d``: ``(m, H)``, ``v``: ``(m, H)`` interaction part;
    * ``threshold``: ``(m,)`` class boundary ``c_t`` (classification only; zeros otherwise).
    """

    adjacency: np.ndarray
    loc: np.ndarray
    scale: np.ndarray
    a: np.ndarray
    w: np.ndarray
    c: np.ndarray
    b: np.ndarray
    u: np.ndarray
    d: np.ndarray
    v: np.ndarray
    threshold: np.ndarray
    kind: TargetKind = "regression"

    @property
    def n_tasks(self) -> int:
        return int(self.adjacency.shape[0])

    def task_function(self, latents: np.ndarray, task: int) -> np.ndarray:
        """Noise-free ``g_t(L)`` of one task for every row of ``latents`` ``(N, n)``: shape ``(N,)``.
        Only the parent columns of ``latents`` are read."""
        parents = np.flatnonzero(self.adjacency[task])
        z = (np.asarray(latents, dtype=np.float64)[:, parents] - self.loc[parents]) / self.scale[parents]
        additive = np.tanh(z * self.w[task, parents] + self.c[task, parents]) @ self.a[task, parents]
        additive += z @ self.b[task, parents]
        additive /= math.sqrt(parents.size)
        hidden = np.tanh(z @ self.u[task][:, parents].T + self.d[task])
        return additive + hidden @ self.v[task]

    def all_tasks(self, latents: np.ndarray) -> np.ndarray:
        """Noise-free ``g_t(L)`` of every task for every sample: ``(N, m)``."""
        return np.stack([self.task_function(latents, t) for t in range(self.n_tasks)], axis=1)

    def __call__(self, latents: np.ndarray, task_id: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """Noise-free ``g_{task_id[k]}(L[k])`` for each sample: ``(N,)`` from ``(N, n)`` and ``(N,)``
        (computed task by task, in blocks of ``chunk`` rows)."""
        task_id = np.asarray(task_id)
        out = np.empty(task_id.shape[0], dtype=np.float64)
        for t in range(self.n_tasks):
            rows = np.flatnonzero(task_id == t)
            if rows.size == 0:
                continue
            contiguous = rows[-1] - rows[0] + 1 == rows.size  # the generator's layout: no gather
            for start in range(0, rows.size, chunk):
                if contiguous:
                    sel: slice | np.ndarray = slice(int(rows[0]) + start, int(rows[0]) + min(rows.size, start + chunk))
                else:
                    sel = rows[start:start + chunk]
                out[sel] = self.task_function(latents[sel], t)
        return out

    def labels(self, values: np.ndarray, task_id: np.ndarray) -> np.ndarray:
        """Classification labels ``1[values > threshold[task]]`` as int64 ``(N,)``."""
        return (values > self.threshold[np.asarray(task_id)]).astype(np.int64)


def build_targets(graph: TaskFactorGraph, loc: np.ndarray, scale: np.ndarray, rng: np.random.Generator,
                  hidden: int = 8, kind: TargetKind = "regression",
                  reference_latents: np.ndarray | None = None) -> TargetMaps:
    """Draw the target maps for ``graph`` (see the module docstring).

    ``reference_latents`` ``(N_ref, n)`` (classification only) sets each task's threshold to the median
    of its ``g_t`` on them.
    """
    adj = graph.adjacency
    m, n = adj.shape
    if not adj.any(axis=1).all():
        empty = [graph.tasks[t] for t in np.flatnonzero(~adj.any(axis=1))]
        raise ValueError(f"task(s) {', '.join(empty)} read no factor: their targets would be pure noise")
    mask = adj.astype(np.float64)
    sign = np.where(rng.random((m, n)) < 0.5, -1.0, 1.0)
    a = sign * rng.uniform(0.5, 1.5, (m, n)) * mask
    w = rng.uniform(0.5, 2.0, (m, n)) * mask
    c = rng.uniform(-1.0, 1.0, (m, n)) * mask
    b = sign * rng.uniform(0.2, 0.5, (m, n)) * mask
    u = rng.standard_normal((m, hidden, n)) * mask[:, None, :]
    d = rng.uniform(-1.0, 1.0, (m, hidden))
    v = rng.standard_normal((m, hidden))
    # |d/dz_i interaction| <= sum_h |v_h| |u_hi|; keep it below 0.9 * |b_ti| / sqrt(|S_t|) for every parent
    n_par = adj.sum(axis=1)
    for t in range(m):
        parents = adj[t]
        bound = np.abs(v[t]) @ np.abs(u[t][:, parents])
        floor = np.abs(b[t, parents]) / math.sqrt(n_par[t])
        worst = float(np.max(bound / floor))
        if worst > 0:
            v[t] *= 0.9 / worst
    maps = TargetMaps(adjacency=adj.copy(), loc=loc, scale=scale, a=a, w=w, c=c, b=b, u=u, d=d, v=v,
                      threshold=np.zeros(m), kind=kind)
    if kind == "classification":
        if reference_latents is None:
            raise ValueError("classification targets need reference_latents for their thresholds")
        thr = np.median(maps.all_tasks(reference_latents), axis=0)
        maps = replace(maps, threshold=thr)
    return maps
