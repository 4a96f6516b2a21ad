"""The task-free control: identify the factors from the dataset variable alone, no task read.

Given a representation ``z`` ``(N, n)`` that is an invertible affine map of factors that are independent
given the dataset, ``z = B L + c``:

1. **Within-dataset whitening** (:func:`sit_causal.selection.gradients.whitening` with the dataset ids):
   ``w = (z - mu) W`` with ``W`` the inverse square root of the pooled within-dataset covariance. Each
   dataset's factor covariance ``D_d`` is diagonal, so ``w = Q D^{-1/2} (L - loc)`` with ``Q`` orthogonal.
2. **Joint diagonalisation** of the per-dataset covariances ``C_d = Cov(w | d)`` ``(n, n)``: the orthogonal
   ``V`` ``(n, n)`` minimising ``sum_d ||offdiag(V^T C_d V)||_F^2`` (Jacobi rotations with the closed-form
   angle of Cardoso and Souloumiac, 1996). ``C_d = Q D^{-1/2} D_d D^{-1/2} Q^T``, so when the ratios of the
   factor variances vary across datasets, ``V = Q`` up to signs and order: the factors are identified
   without any task. When they do not vary (a mean-modulated prior with a shared covariance: every
   ``C_d`` is the identity) every ``V`` is optimal, the rotation stays free, and the control fails; that is
   the regime where the task graph is needed.

This is the control every SIT table shows beside SIT: where it matches SIT, the prior alone identified the
factors and the task graph added nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sit_causal.selection.gradients import whitening

__all__ = ["TaskFreeResult", "identify_without_tasks", "joint_diagonalisation"]


@dataclass(frozen=True)
class TaskFreeResult:
    """Output of :func:`identify_without_tasks`.

    Arguments:
        unmixing: ``(n, n)`` rows = learned factors, columns = ``z`` dimensions; learned factors are
            ``(z - mean) @ unmixing.T`` (:meth:`transform`).
        mean: ``(n,)`` training mean of ``z``.
        rotation: ``(n, n)`` orthogonal ``V^T``, rows = learned factors, columns = whitened dimensions.
        off_diagonal: ``sum_d ||offdiag(V^T C_d V)||^2 / sum_d ||offdiag(C_d)||^2`` at the solution (how much
            of the datasets' off-diagonal covariance the rotation removed: near 0 = jointly diagonal).
        sweeps: Jacobi sweeps run.
    """

    unmixing: np.ndarray
    mean: np.ndarray
    rotation: np.ndarray
    off_diagonal: float
    sweeps: int

    def transform(self, z: np.ndarray) -> np.ndarray:
        """Learned factors of ``z`` ``(N, n)``: ``(z - mean) @ unmixing.T``."""
        return (np.asarray(z, dtype=np.float64) - self.mean) @ self.unmixing.T


def _off(mats: np.ndarray) -> float:
    d = np.einsum("kii->ki", mats)
    return float((mats**2).sum() - (d**2).sum())


def joint_diagonalisation(mats: np.ndarray, max_sweeps: int = 100, tol: float = 1e-12) -> tuple[np.ndarray, int]:
    """Orthogonal ``V`` ``(n, n)`` making every symmetric ``mats[k]`` (``(K, n, n)``) as diagonal as possible.

    Jacobi sweeps over every plane ``(p, q)``; the angle maximises the summed squared diagonal of the
    ``K`` rotated ``2 x 2`` blocks (closed form). Returns ``V`` and the number of sweeps run (a sweep with
    every rotation below ``tol`` stops).
    """
    a = np.array(mats, dtype=np.float64, copy=True)
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError("mats must be (K, n, n)")
    n = a.shape[1]
    v = np.eye(n)
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):  # noqa: B007 - the count is returned
        rotated = False
        for p in range(n - 1):
            for q in range(p + 1, n):
                g = np.stack([a[:, p, p] - a[:, q, q], a[:, p, q] + a[:, q, p]])  # (2, K)
                gg = g @ g.T
                ton, toff = gg[0, 0] - gg[1, 1], gg[0, 1] + gg[1, 0]
                theta = 0.5 * np.arctan2(toff, ton + np.hypot(ton, toff))
                c, s = np.cos(theta), np.sin(theta)
                if abs(s) <= tol:
                    continue
                rotated = True
                rot = np.array([[c, -s], [s, c]])
                v[:, [p, q]] = v[:, [p, q]] @ rot
                a[:, [p, q], :] = np.einsum("ji,kjl->kil", rot, a[:, [p, q], :])
                a[:, :, [p, q]] = a[:, :, [p, q]] @ rot
        if not rotated:
            break
    return v, sweeps


def identify_without_tasks(z: np.ndarray, dataset_id: np.ndarray, min_samples: int = 10) -> TaskFreeResult:
    """Within-dataset whitening, then joint diagonalisation of the per-dataset covariances (module docstring).

    Arguments:
        z: ``(N, n)`` representation (training split).
        dataset_id: ``(N,)`` int dataset of each sample (the prior's auxiliary variable; no task is read).
        min_samples: datasets with fewer samples are left out of the joint diagonalisation.
    """
    z = np.asarray(z, dtype=np.float64)
    dataset_id = np.asarray(dataset_id)
    if z.ndim != 2 or dataset_id.shape != (z.shape[0],):
        raise ValueError("z must be (N, n) and dataset_id (N,)")
    mu, wmat = whitening(z, dataset_id)
    w = (z - mu) @ wmat
    covs = []
    for d in np.unique(dataset_id):
        rows = w[dataset_id == d]
        if rows.shape[0] >= max(2, min_samples):
            covs.append(np.cov(rows, rowvar=False).reshape(z.shape[1], z.shape[1]))
    if not covs:
        raise ValueError(f"no dataset has at least {min_samples} samples")
    mats = np.stack(covs)
    v, sweeps = joint_diagonalisation(mats)
    before = _off(mats)
    after = _off(np.einsum("ji,kjl,lm->kim", v, mats, v))
    rotation = v.T
    return TaskFreeResult(unmixing=rotation @ wmat.T, mean=mu, rotation=rotation,
                          off_diagonal=after / before if before > 0 else 0.0, sweeps=sweeps)
