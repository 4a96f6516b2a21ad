"""Conditionally factorial exponential-family priors ``p(L | D = d)`` of the meta-SCM.

Each factor ``L_i`` is, given the dataset ``d``, drawn independently from a one-dimensional exponential
family (docs/design.md section 2, iVAE's eq. 7)::

    p(L_i | d) = Q(L_i) / Z(lambda_i(d)) * exp( sum_{j<k} T_j(L_i) * lambda_ij(d) ),

with base measure ``Q``, sufficient statistics ``T = (T_1..T_k)`` and natural parameters
``lambda_i(d) in R^k``. Natural parameters of all datasets are one array ``eta`` of shape
``(n_datasets, n_factors, k)``: **rows = datasets, columns = factors, last axis = statistic**.

Families (``name``: statistics, natural parameters, default ranges of the moment parameters):

* ``"gauss-mean"`` (k = 1, **the default for theory validation**): ``N(mu, 1)``; ``T(z) = z``,
  ``lambda = mu``, ``Q(z) = exp(-z^2 / 2) / sqrt(2 pi)``, ``log Z = mu^2 / 2``. ``mu ~ U[-2, 2]``.
* ``"gauss-meanvar"`` (k = 2): ``N(mu, sigma^2)``; ``T(z) = (z, z^2)``,
  ``lambda = (mu / sigma^2, -1 / (2 sigma^2))``, ``Q = 1 / sqrt(2 pi)``,
  ``log Z = -lambda_1^2 / (4 lambda_2) - log(-2 lambda_2) / 2``. ``mu ~ U[-2, 2]``, ``sigma ~ U[0.5, 3]``.
* ``"laplace-scale"`` (k = 1): ``Laplace(0, b)``; ``T(z) = |z|``, ``lambda = -1 / b``, ``Q = 1``,
  ``log Z = log(2 b) = log(-2 / lambda)``. ``b ~ U[0.5, 3]``.

Ranges. iVAE (Khemakhem et al. 2020) drew standard-deviation factors in ``[0.5, 3]`` and means in
``[-5, 5]``. We keep the standard-deviation/scale range and narrow the default mean range to
``[-2, 2]``: with unit within-dataset variance, means in ``[-5, 5]`` make a factor's pooled variance
``1 + 25/3 ~ 9.3``, dominated by the between-dataset spread, and the random target maps then saturate;
``[-2, 2]`` gives a pooled variance of ``1 + 4/3 ~ 2.3``, still with a clear dataset signal. Pass
``mean_range=5.0`` to a family's constructor for iVAE's setting.

The iVAE variety condition (Thm 1 (iv)) needs at least ``n*k + 1`` datasets whose natural-parameter
differences ``eta[d] - eta[0]`` (flattened to ``n*k`` vectors) span ``R^{n k}``; :func:`variety_condition`
reports it. All arrays here are numpy; :meth:`ExpFamily.log_density_torch` is the same formula on
torch tensors (for training code that scores a prior).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DEFAULT_FAMILY",
    "FAMILY_NAMES",
    "ExpFamily",
    "GaussianMean",
    "GaussianMeanVar",
    "LaplaceScale",
    "VarietyReport",
    "get_family",
    "variety_condition",
]

DEFAULT_FAMILY = "gauss-mean"
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class ExpFamily(ABC):
    """A one-dimensional exponential family applied independently to every factor.

    Shapes: ``z``: ``(N, n)`` samples x factors; ``eta``: ``(n_datasets, n, k)`` per dataset, or
    ``(N, n, k)`` per sample (any shape ``(..., n, k)`` broadcasting against ``z[..., None]``).
    """

    name: ClassVar[str]
    k: ClassVar[int]
    modulates_spread: ClassVar[bool]
    """Whether the dataset moves the factor's spread (variance or scale), not only its location: then, with
    enough datasets, the per-dataset covariances vary and the prior alone identifies the factors (the
    task-free control succeeds); with only the mean modulated, a rotation is left (docs/design.md section 9)."""

    # ------------------------------------------------------------------ the family's maths
    @abstractmethod
    def sufficient_statistics(self, z: np.ndarray) -> np.ndarray:
        """``T(z)``: shape ``z.shape + (k,)``."""

    @abstractmethod
    def log_base_measure(self, z: np.ndarray) -> np.ndarray:
        """``log Q(z)``, elementwise, shape ``z.shape``."""

    @abstractmethod
    def log_normalizer(self, eta: np.ndarray) -> np.ndarray:
        """``log Z(eta)``: shape ``eta.shape[:-1]``."""

    @abstractmethod
    def moment_params(self, eta: np.ndarray) -> dict[str, np.ndarray]:
        """The usual parameters (e.g. ``mean``, ``std``; ``scale``), each of shape ``eta.shape[:-1]``."""

    @abstractmethod
    def natural_params(self, **params: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`moment_params`: natural parameters of shape ``param.shape + (k,)``."""

    @abstractmethod
    def draw_moment_params(self, n_datasets: int, n_factors: int,
                           rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Moment parameters of shape ``(n_datasets, n_factors)`` from the documented ranges."""

    @abstractmethod
    def _sample_standard(self, params: dict[str, np.ndarray], shape: tuple[int, ...],
                         rng: np.random.Generator) -> np.ndarray:
        """Samples of ``shape``; the parameter arrays broadcast against it."""

    @abstractmethod
    def mean_var(self, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of each factor, shape ``eta.shape[:-1]`` each."""

    # ------------------------------------------------------------------ generic API
    def sample_natural_params(self, n_datasets: int, n_factors: int, rng: np.random.Generator) -> np.ndarray:
        """Draw natural parameters ``eta`` of shape ``(n_datasets, n_factors, k)`` (ranges: module doc)."""
        if n_datasets < 1 or n_factors < 1:
            raise ValueError("n_datasets and n_factors must be >= 1")
        return self.natural_params(**self.draw_moment_params(n_datasets, n_factors, rng))

    def sample(self, eta: np.ndarray, rng: np.random.Generator, dataset_id: np.ndarray | None = None,
               samples_per_dataset: int | None = None) -> np.ndarray:
        """Draw ``L``.

        Arguments:
            eta: natural parameters, ``(n_datasets, n, k)``.
            rng: the sample stream.
            dataset_id: ``(N,)`` integer dataset of each sample.
            samples_per_dataset: instead of ``dataset_id``: ``S`` samples of every dataset in dataset
                order (rows ``d*S .. (d+1)*S - 1`` belong to dataset ``d``; faster, no gather).
            With neither, one sample per row of ``eta``.

        Returns:
            ``L`` of shape ``(N, n)`` (``N = n_datasets * S`` with ``samples_per_dataset``).
        """
        eta = np.asarray(eta, dtype=np.float64)
        self._check_eta(eta)
        if dataset_id is not None and samples_per_dataset is not None:
            raise ValueError("give dataset_id or samples_per_dataset, not both")
        params = self.moment_params(eta)
        n_datasets, n = eta.shape[0], eta.shape[-2]
        if samples_per_dataset is not None:
            params = {key: val[:, None, :] for key, val in params.items()}
            out = self._sample_standard(params, (n_datasets, samples_per_dataset, n), rng)
            return out.reshape(n_datasets * samples_per_dataset, n)
        if dataset_id is not None:
            idx = np.asarray(dataset_id)
            params = {key: val[idx] for key, val in params.items()}
        shape = next(iter(params.values())).shape
        return self._sample_standard(params, shape, rng)

    def log_density(self, z: np.ndarray, eta: np.ndarray) -> np.ndarray:
        """Per-factor ``log p(z_i | eta_i) = <T(z_i), eta_i> + log Q(z_i) - log Z(eta_i)``.

        Arguments:
            z: ``(N, n)``; eta: ``(N, n, k)`` (or broadcastable, e.g. ``(n, k)``).

        Returns:
            ``(N, n)``; sum over the last axis for the factorial joint density.
        """
        z = np.asarray(z, dtype=np.float64)
        eta = np.asarray(eta, dtype=np.float64)
        self._check_eta(eta)
        inner = np.sum(self.sufficient_statistics(z) * eta, axis=-1)
        return inner + self.log_base_measure(z) - self.log_normalizer(eta)

    def log_density_torch(self, z: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
        """The same formula as :meth:`log_density` on torch tensors (differentiable in ``z`` and ``eta``)."""
        return self._log_density_torch(z, eta)

    @abstractmethod
    def _log_density_torch(self, z: torch.Tensor, eta: torch.Tensor) -> torch.Tensor: ...

    def _check_eta(self, eta: np.ndarray) -> None:
        if eta.ndim < 1 or eta.shape[-1] != self.k:
            raise ValueError(f"family {self.name!r} has k = {self.k} statistics; eta has shape {eta.shape}")

    def describe(self) -> dict[str, Any]:
        """Name, ``k`` and the parameter ranges, JSON-serialisable."""
        return {"name": self.name, "k": self.k, **self._ranges()}

    @abstractmethod
    def _ranges(self) -> dict[str, Any]: ...


def _uniform(rng: np.random.Generator, lo: float, hi: float, shape: tuple[int, int]) -> np.ndarray:
    return rng.uniform(lo, hi, size=shape)


@dataclass(frozen=True)
class GaussianMean(ExpFamily):
    """``N(mu, 1)`` with the mean modulated per dataset (k = 1); ``mu ~ U[-mean_range, mean_range]``."""

    mean_range: float = 2.0
    name: ClassVar[str] = "gauss-mean"
    k: ClassVar[int] = 1
    modulates_spread: ClassVar[bool] = False

    def sufficient_statistics(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z)[..., None]

    def log_base_measure(self, z: np.ndarray) -> np.ndarray:
        return -0.5 * np.square(z) - _LOG_SQRT_2PI

    def log_normalizer(self, eta: np.ndarray) -> np.ndarray:
        return 0.5 * np.square(eta[..., 0])

    def moment_params(self, eta: np.ndarray) -> dict[str, np.ndarray]:
        return {"mean": eta[..., 0]}

    def natural_params(self, **params: np.ndarray) -> np.ndarray:
        return np.asarray(params["mean"], dtype=np.float64)[..., None]

    def draw_moment_params(self, n_datasets: int, n_factors: int,
                           rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"mean": _uniform(rng, -self.mean_range, self.mean_range, (n_datasets, n_factors))}

    def _sample_standard(self, params: dict[str, np.ndarray], shape: tuple[int, ...],
                         rng: np.random.Generator) -> np.ndarray:
        out = rng.standard_normal(shape)
        out += params["mean"]
        return out

    def mean_var(self, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return eta[..., 0], np.ones(eta.shape[:-1])

    def _log_density_torch(self, z: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
        mu = eta[..., 0]
        return z * mu - 0.5 * z * z - _LOG_SQRT_2PI - 0.5 * mu * mu

    def _ranges(self) -> dict[str, Any]:
        return {"mean_range": [-self.mean_range, self.mean_range], "std": 1.0}


@dataclass(frozen=True)
class GaussianMeanVar(ExpFamily):
    """``N(mu, sigma^2)`` with mean and variance modulated (k = 2);
    ``mu ~ U[-mean_range, mean_range]``, ``sigma ~ U[std_range]``."""

    mean_range: float = 2.0
    std_range: tuple[float, float] = (0.5, 3.0)
    name: ClassVar[str] = "gauss-meanvar"
    k: ClassVar[int] = 2
    modulates_spread: ClassVar[bool] = True

    def sufficient_statistics(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z)
        return np.stack([z, np.square(z)], axis=-1)

    def log_base_measure(self, z: np.ndarray) -> np.ndarray:
        return np.full(np.shape(z), -_LOG_SQRT_2PI)

    def log_normalizer(self, eta: np.ndarray) -> np.ndarray:
        e1, e2 = eta[..., 0], eta[..., 1]
        return -np.square(e1) / (4.0 * e2) - 0.5 * np.log(-2.0 * e2)

    def moment_params(self, eta: np.ndarray) -> dict[str, np.ndarray]:
        e1, e2 = eta[..., 0], eta[..., 1]
        if np.any(e2 >= 0):
            raise ValueError("gauss-meanvar needs eta[..., 1] = -1/(2 sigma^2) < 0")
        var = -0.5 / e2
        return {"mean": e1 * var, "std": np.sqrt(var)}

    def natural_params(self, **params: np.ndarray) -> np.ndarray:
        mean = np.asarray(params["mean"], dtype=np.float64)
        var = np.square(np.asarray(params["std"], dtype=np.float64))
        return np.stack([mean / var, -0.5 / var], axis=-1)

    def draw_moment_params(self, n_datasets: int, n_factors: int,
                           rng: np.random.Generator) -> dict[str, np.ndarray]:
        shape = (n_datasets, n_factors)
        mean = _uniform(rng, -self.mean_range, self.mean_range, shape)
        std = _uniform(rng, self.std_range[0], self.std_range[1], shape)
        return {"mean": mean, "std": std}

    def _sample_standard(self, params: dict[str, np.ndarray], shape: tuple[int, ...],
                         rng: np.random.Generator) -> np.ndarray:
        out = rng.standard_normal(shape)
        out *= params["std"]
        out += params["mean"]
        return out

    def mean_var(self, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = self.moment_params(eta)
        return p["mean"], np.square(p["std"])

    def _log_density_torch(self, z: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
        e1, e2 = eta[..., 0], eta[..., 1]
        log_z = -e1 * e1 / (4.0 * e2) - 0.5 * (-2.0 * e2).log()
        return z * e1 + z * z * e2 - _LOG_SQRT_2PI - log_z

    def _ranges(self) -> dict[str, Any]:
        return {"mean_range": [-self.mean_range, self.mean_range], "std_range": list(self.std_range)}


@dataclass(frozen=True)
class LaplaceScale(ExpFamily):
    """``Laplace(0, b)`` with the scale modulated (k = 1); ``b ~ U[scale_range]``."""

    scale_range: tuple[float, float] = (0.5, 3.0)
    name: ClassVar[str] = "laplace-scale"
    k: ClassVar[int] = 1
    modulates_spread: ClassVar[bool] = True

    def sufficient_statistics(self, z: np.ndarray) -> np.ndarray:
        return np.abs(np.asarray(z))[..., None]

    def log_base_measure(self, z: np.ndarray) -> np.ndarray:
        return np.zeros(np.shape(z))

    def log_normalizer(self, eta: np.ndarray) -> np.ndarray:
        return np.log(-2.0 / eta[..., 0])

    def moment_params(self, eta: np.ndarray) -> dict[str, np.ndarray]:
        e = eta[..., 0]
        if np.any(e >= 0):
            raise ValueError("laplace-scale needs eta = -1/b < 0")
        return {"scale": -1.0 / e}

    def natural_params(self, **params: np.ndarray) -> np.ndarray:
        return (-1.0 / np.asarray(params["scale"], dtype=np.float64))[..., None]

    def draw_moment_params(self, n_datasets: int, n_factors: int,
                           rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"scale": _uniform(rng, self.scale_range[0], self.scale_range[1], (n_datasets, n_factors))}

    def _sample_standard(self, params: dict[str, np.ndarray], shape: tuple[int, ...],
                         rng: np.random.Generator) -> np.ndarray:
        # Laplace(0, b) = b * (E1 - E2) with E1, E2 independent standard exponentials.
        out = rng.standard_exponential(shape)
        out -= rng.standard_exponential(shape)
        out *= params["scale"]
        return out

    def mean_var(self, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        b = self.moment_params(eta)["scale"]
        return np.zeros_like(b), 2.0 * np.square(b)

    def _log_density_torch(self, z: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
        e = eta[..., 0]
        return z.abs() * e - (-2.0 / e).log()

    def _ranges(self) -> dict[str, Any]:
        return {"scale_range": list(self.scale_range), "mean": 0.0}


_FAMILIES: dict[str, type[ExpFamily]] = {
    "gauss-mean": GaussianMean,
    "gauss-meanvar": GaussianMeanVar,
    "laplace-scale": LaplaceScale,
}
FAMILY_NAMES: tuple[str, ...] = tuple(_FAMILIES)


def get_family(name: str, **ranges: Any) -> ExpFamily:
    """The family called ``name`` (one of :data:`FAMILY_NAMES`); ``ranges`` override its defaults,
    e.g. ``get_family("gauss-meanvar", mean_range=5.0)`` for iVAE's ranges."""
    try:
        cls = _FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown prior family {name!r}; choose one of {', '.join(FAMILY_NAMES)}") from None
    return cls(**ranges)


@dataclass(frozen=True)
class VarietyReport:
    """Verdict of :func:`variety_condition`.

    Arguments:
        holds: both parts of the condition hold.
        n_datasets: ``K``, number of datasets.
        required_datasets: ``n*k + 1``.
        rank: numerical rank of the ``(K - 1, n*k)`` difference matrix.
        required_rank: ``n*k``.
        condition_number: ratio of the largest to the ``n*k``-th singular value (``inf`` if rank deficient).
        reason: a human-readable sentence (why it fails, or that it holds).
    """

    holds: bool
    n_datasets: int
    required_datasets: int
    rank: int
    required_rank: int
    condition_number: float
    reason: str

    def to_json(self) -> dict[str, Any]:
        cond = self.condition_number
        return {
            "holds": self.holds, "n_datasets": self.n_datasets, "required_datasets": self.required_datasets,
            "rank": self.rank, "required_rank": self.required_rank,
            "condition_number": cond if math.isfinite(cond) else None, "reason": self.reason,
        }


def variety_condition(eta: np.ndarray, rtol: float = 1e-8) -> VarietyReport:
    """The iVAE variety condition on natural parameters ``eta`` of shape ``(K, n, k)``.

    Holds iff ``K >= n*k + 1`` and the matrix whose rows are ``vec(eta[d]) - vec(eta[0])``,
    ``d = 1..K-1`` (shape ``(K - 1, n*k)``), has rank ``n*k`` (singular values above
    ``rtol * largest``). Using dataset 0 as the reference is no loss: the span of differences does not
    depend on the reference.
    """
    eta = np.asarray(eta, dtype=np.float64)
    if eta.ndim != 3:
        raise ValueError(f"eta must have shape (n_datasets, n_factors, k), got {eta.shape}")
    n_datasets, n, k = eta.shape
    need = n * k
    flat = eta.reshape(n_datasets, need)
    diff = flat[1:] - flat[:1]
    if diff.shape[0] == 0:
        sv = np.zeros(0)
    else:
        sv = np.linalg.svd(diff, compute_uv=False)
    tol = rtol * (sv[0] if sv.size else 0.0)
    rank = int(np.sum(sv > tol)) if sv.size and sv[0] > 0 else 0
    cond = float(sv[0] / sv[need - 1]) if rank >= need else math.inf
    if n_datasets < need + 1:
        reason = (f"{n_datasets} datasets; the iVAE variety condition needs at least n*k + 1 = "
                  f"{n}*{k} + 1 = {need + 1}")
        holds = False
    elif rank < need:
        reason = (f"natural-parameter differences have rank {rank} < n*k = {need}: "
                  f"the datasets do not vary the prior in enough directions")
        holds = False
    else:
        reason = f"{n_datasets} datasets >= {need + 1} and the differences have full rank {need}"
        holds = True
    return VarietyReport(holds=holds, n_datasets=n_datasets, required_datasets=need + 1, rank=rank,
                         required_rank=need, condition_number=cond, reason=reason)
