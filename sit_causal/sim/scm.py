"""The meta structural causal model of SIT (docs/design.md section 2): configuration, mechanism, samples.

Generative process, for datasets ``d = 0..K-1`` (``K = n_tasks * datasets_per_task``; dataset ``d``
belongs to task ``d // datasets_per_task``)::

    E | D = d   ~  prod_i p(E_i | d)                      exponential family (sit_causal.sim.expfam)
    L           =  M E                                    M = I unless latent_scm > 0 (below)
    X           =  f(L) + obs_noise * N(0, I)             f: invertible MLP, R^n -> R^obs_dim
    Y_t         =  g_t(L[S_t]) + target_noise * N(0, 1)   S_t = {i : A[t, i]}, A rows = tasks

Every sample carries its dataset id, its task id, ``L``, ``X`` and the target of its own task.

Latents related by a linear SCM (``latent_scm = s > 0``, the ``linear-left`` regime of docs/design.md
section 9). Within every dataset the factors obey one shared linear SCM ``L_i = (E_i + sum_{j before i}
B[i, j] L_j) / r_i`` over a random causal order, **every** earlier factor a parent, ``B[i, j] = s * sign *
U[0.5, 1]`` (random signs), and ``r_i`` the norm of row ``i`` of ``(I - B)^{-1}``, so that ``M = diag(1 / r)
(I - B)^{-1}`` ``(n, n)`` (rows = factors ``L``, columns = exogenous ``E``; :attr:`Mechanism.latent_map`)
has unit rows. Under ``gauss-mean`` (unit variances) the within-dataset covariance of ``L`` is then
``M M^T``: shared by all datasets, unit diagonal, non-diagonal. Within-dataset whitening of an affine image
of ``L`` then leaves a general linear map, not a rotation, and only the task graph can remove it: the
UIC's own regime. The tasks read ``L`` (the graph is on ``L``) and ``L`` is what is scored. Drawn from
its own stream (``5``), so ``latent_scm = 0`` leaves every other draw unchanged.

The mixing ``f`` and the targets ``g_t`` are drawn by :mod:`sit_causal.sim.maps` (their formulas are
there); this module draws the prior parameters and the latent SCM, and puts the mechanism together.

Randomness: one integer ``seed``; independent streams ``SeedSequence(seed, spawn_key=(s,))`` for
``s`` = 0 graph, 1 prior parameters, 2 mixing, 3 targets, 5 the latent SCM, and ``(4, j)`` for sample set
``j`` (``j = 0`` the training set; another ``j`` draws fresh samples from the same mechanism, e.g. a test
set). Changing the number of samples never changes the mechanism.

Files (:meth:`SCMDataset.save` / :func:`load_dataset`): ``data.npz`` (arrays, ``allow_pickle=False``),
``graph.json`` (matrix form, rows = tasks) and ``config.json`` (the config, the prior family, the sample
stream, library versions).
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from sit_causal.sim.expfam import (
    DEFAULT_FAMILY,
    FAMILY_NAMES,
    ExpFamily,
    VarietyReport,
    get_family,
    variety_condition,
)
from sit_causal.sim.graph_generators import generate_graph, parse_graph_mode
from sit_causal.sim.maps import Activation, MixingMLP, TargetKind, TargetMaps, build_mixing, build_targets
from sit_causal.theory.graph import TaskFactorGraph, load_graph, parse_graph, save_graph

__all__ = [
    "DEFAULT_FACTORS",
    "DEFAULT_TASKS",
    "Mechanism",
    "SCMConfig",
    "SCMDataset",
    "build_latent_map",
    "build_mechanism",
    "generate",
    "generate_train_test",
    "load_dataset",
    "load_or_draw_graph",
    "random_streams",
]

DEFAULT_FACTORS = 5
"""``n`` of every default experiment (``SCMConfig``, ``simulate``, ``validate``): the one place it is set."""
DEFAULT_TASKS = 8
"""``m`` of every default experiment: the one place it is set."""

_STREAM_GRAPH, _STREAM_PRIOR, _STREAM_MIXING, _STREAM_TARGETS, _STREAM_SAMPLES, _STREAM_LATENT_SCM = range(6)


# ====================================================================== config
@dataclass(frozen=True)
class SCMConfig:
    """Everything that defines a simulated meta-SCM and its samples.

    Arguments:
        n_factors: ``n``, latent factors.
        n_tasks: ``m``, tasks (targets).
        datasets_per_task: datasets of each task; ``K = n_tasks * datasets_per_task`` in all.
        samples_per_dataset: samples drawn from each dataset.
        family: prior family name (:data:`sit_causal.sim.expfam.FAMILY_NAMES`); ``"gauss-mean"`` by default.
        family_options: overrides of the family's parameter ranges, e.g. ``{"mean_range": 5.0}``.
        obs_dim: dimension of ``X`` (``>= n_factors``).
        mixing_depth: number of affine layers of ``f`` (1 = a linear map).
        activation: ``"leaky_relu"`` or ``"xtanh"``.
        activation_slope: leaky-ReLU negative slope, or the linear coefficient of xtanh (``0 < . <= 1``).
        obs_noise: standard deviation of the Gaussian noise added to ``f(L)``.
        target_noise: standard deviation of the Gaussian noise added to ``g_t``.
        target_kind: ``"regression"`` (float targets) or ``"classification"`` (binary int labels).
        target_hidden: hidden width of the interaction MLP inside each ``g_t``.
        seed: the one seed all random streams come from.
        graph_mode: generator mode when no file is given: ``uic``, ``bernoulli:P``, ``block``, ``nested``.
        graph_path: a graph file (either format of ``check-uic``); its sizes must match ``n_factors``
            and ``n_tasks``.
        latent_scm: strength ``s >= 0`` of the linear SCM among the latents within each dataset (module
            docstring); 0 = conditionally independent factors.
    """

    n_factors: int = DEFAULT_FACTORS
    n_tasks: int = DEFAULT_TASKS
    datasets_per_task: int = 10
    samples_per_dataset: int = 1000
    family: str = DEFAULT_FAMILY
    family_options: Mapping[str, Any] = field(default_factory=dict)
    obs_dim: int = 10
    mixing_depth: int = 3
    activation: Activation = "leaky_relu"
    activation_slope: float = 0.2
    obs_noise: float = 0.01
    target_noise: float = 0.1
    target_kind: TargetKind = "regression"
    target_hidden: int = 8
    seed: int = 0
    graph_mode: str = "uic"
    graph_path: str | None = None
    latent_scm: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_factors", "n_tasks", "datasets_per_task", "samples_per_dataset", "obs_dim",
                     "mixing_depth", "target_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"SCMConfig.{name} must be an integer >= 1, got {value!r}")
        if self.obs_dim < self.n_factors:
            raise ValueError(f"SCMConfig.obs_dim ({self.obs_dim}) must be >= n_factors ({self.n_factors}) "
                             "for f to be invertible")
        if self.family not in FAMILY_NAMES:
            raise ValueError(f"SCMConfig.family {self.family!r} is not one of {', '.join(FAMILY_NAMES)}")
        get_family(self.family, **dict(self.family_options))  # rejects unknown options
        if self.activation not in ("leaky_relu", "xtanh"):
            raise ValueError(f"SCMConfig.activation must be 'leaky_relu' or 'xtanh', got {self.activation!r}")
        if not 0.0 < self.activation_slope <= 1.0:
            raise ValueError(f"SCMConfig.activation_slope must be in (0, 1], got {self.activation_slope}")
        for name in ("obs_noise", "target_noise", "latent_scm"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"SCMConfig.{name} must be a finite number >= 0, got {value!r}")
        if self.target_kind not in ("regression", "classification"):
            raise ValueError(f"SCMConfig.target_kind must be 'regression' or 'classification', "
                             f"got {self.target_kind!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"SCMConfig.seed must be an integer >= 0, got {self.seed!r}")
        if self.graph_path is None:
            parse_graph_mode(self.graph_mode)
        for name in ("n_factors", "n_tasks", "datasets_per_task", "samples_per_dataset", "obs_dim",
                     "mixing_depth", "target_hidden", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))  # numpy integers -> JSON-safe ints
        for name in ("activation_slope", "obs_noise", "target_noise", "latent_scm"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.graph_path is not None:
            object.__setattr__(self, "graph_path", str(self.graph_path))
        object.__setattr__(self, "family_options", dict(self.family_options))

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    @property
    def n_datasets(self) -> int:
        """``K = n_tasks * datasets_per_task``."""
        return self.n_tasks * self.datasets_per_task

    @property
    def n_samples(self) -> int:
        """``N = K * samples_per_dataset``."""
        return self.n_datasets * self.samples_per_dataset

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (the inverse of :meth:`from_dict`)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["family_options"] = dict(self.family_options)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SCMConfig:
        """Build from a dict; unknown keys are rejected with a ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SCMConfig key(s): {', '.join(unknown)}")
        return cls(**dict(data))


def random_streams(seed: int) -> dict[str, np.random.SeedSequence]:
    """The mechanism's independent seed sequences: ``graph``, ``prior``, ``mixing``, ``targets``, ``latent_scm``."""
    names = {"graph": _STREAM_GRAPH, "prior": _STREAM_PRIOR, "mixing": _STREAM_MIXING,
             "targets": _STREAM_TARGETS, "latent_scm": _STREAM_LATENT_SCM}
    return {k: np.random.SeedSequence(seed, spawn_key=(v,)) for k, v in names.items()}


def _sample_stream(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAM_SAMPLES, stream)))


# ====================================================================== latents
def _pooled_moments(family: ExpFamily, eta: np.ndarray,
                    latent_map: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of each factor ``L = M E`` under the equal-weight mixture of the datasets: ``(n,)`` each
    (``latent_map`` ``M`` ``(n, n)``, rows = factors; ``None`` = identity)."""
    mean, var = family.mean_var(eta)  # (K, n), of E
    loc = mean.mean(axis=0)
    if latent_map is None:
        second = (var + np.square(mean)).mean(axis=0)
        return loc, np.sqrt(np.maximum(second - np.square(loc), 1e-12))
    dev = mean - loc
    cov = np.diag(var.mean(axis=0)) + dev.T @ dev / mean.shape[0]  # pooled covariance of E
    return latent_map @ loc, np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", latent_map, cov, latent_map), 1e-12))


def build_latent_map(n_factors: int, strength: float, rng: np.random.Generator) -> np.ndarray | None:
    """``M`` ``(n, n)`` of the latents' linear SCM (module docstring; rows = factors ``L``, columns = exogenous
    ``E``, unit rows), or ``None`` for ``strength == 0``."""
    if strength <= 0:
        return None
    order = rng.permutation(n_factors)
    b = np.zeros((n_factors, n_factors))
    for k, i in enumerate(order):
        for j in order[:k]:
            b[i, j] = strength * (1.0 if rng.random() < 0.5 else -1.0) * rng.uniform(0.5, 1.0)
    m = np.linalg.inv(np.eye(n_factors) - b)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


# ====================================================================== mechanism
@dataclass(frozen=True, eq=False)
class Mechanism:
    """The fixed parts of one meta-SCM: graph, prior parameters, ``f`` and the ``g_t``.

    Arguments:
        config: the config it was built from.
        graph: ``adjacency`` ``(m, n)``, rows = tasks.
        family: the prior family.
        natural_params: ``(K, n, k)`` natural parameters, rows = datasets.
        dataset_task: ``(K,)`` the task of each dataset.
        mixing: ``f``.
        targets: the ``g_t``.
        latent_map: ``M`` ``(n, n)`` of the latents' linear SCM, ``L = M E`` (rows = factors, columns =
            exogenous variables); ``None`` when ``config.latent_scm == 0``.
    """

    config: SCMConfig
    graph: TaskFactorGraph
    family: ExpFamily
    natural_params: np.ndarray
    dataset_task: np.ndarray
    mixing: MixingMLP
    targets: TargetMaps
    latent_map: np.ndarray | None = None

    def variety(self) -> VarietyReport:
        """The iVAE variety condition on :attr:`natural_params`."""
        return variety_condition(self.natural_params)

    def sample(self, samples_per_dataset: int, rng: np.random.Generator, stream: int | None = None,
               timings: dict[str, float] | None = None) -> SCMDataset:
        """Draw ``samples_per_dataset`` samples from every dataset with the sample stream ``rng``.

        ``stream`` is only recorded in the result. ``timings``, if given, receives seconds per stage
        (``prior``, ``mixing``, ``targets``).
        """
        from time import perf_counter

        if samples_per_dataset < 1:
            raise ValueError("samples_per_dataset must be >= 1")
        cfg = self.config
        k_datasets = self.natural_params.shape[0]
        t0 = perf_counter()
        with threadpool_limits(limits=1, user_api="blas"):
            dataset_id = np.repeat(np.arange(k_datasets, dtype=np.int64), samples_per_dataset)
            task_id = self.dataset_task[dataset_id]
            latents = self.family.sample(self.natural_params, rng, samples_per_dataset=samples_per_dataset)
            if self.latent_map is not None:
                latents = latents @ self.latent_map.T
            t1 = perf_counter()
            x = self.mixing.forward(latents, noise_std=cfg.obs_noise, rng=rng)
            t2 = perf_counter()
            values = self.targets(latents, task_id)
            if cfg.target_noise > 0:
                values += cfg.target_noise * rng.standard_normal(values.shape)
            y = self.targets.labels(values, task_id) if cfg.target_kind == "classification" else values
            t3 = perf_counter()
        if timings is not None:
            timings.update(prior=t1 - t0, mixing=t2 - t1, targets=t3 - t2)
        return SCMDataset(dataset_id=dataset_id, task_id=task_id, latents=latents, x=x, y=y,
                          graph=self.graph, natural_params=self.natural_params,
                          dataset_task=self.dataset_task, config=cfg, stream=stream)


def load_or_draw_graph(config: SCMConfig, graph: TaskFactorGraph | None = None) -> TaskFactorGraph:
    """The graph of ``config``: ``graph`` if given (checked against the config's sizes), else
    ``config.graph_path``, else drawn with ``config.graph_mode`` from the ``graph`` stream of
    :func:`random_streams` (``config.seed``). The one place a run's graph is resolved."""
    if graph is None and config.graph_path is not None:
        graph = load_graph(config.graph_path)
    if graph is None:
        rng = np.random.default_rng(random_streams(config.seed)["graph"])
        return generate_graph(config.graph_mode, config.n_factors, config.n_tasks, rng)
    if graph.adjacency.shape != (config.n_tasks, config.n_factors):
        raise ValueError(
            f"the graph has {graph.n_tasks} tasks and {graph.n_factors} factors but the config asks for "
            f"n_tasks={config.n_tasks}, n_factors={config.n_factors}"
        )
    return graph


def build_mechanism(config: SCMConfig, graph: TaskFactorGraph | None = None) -> Mechanism:
    """Build the mechanism of ``config`` (deterministic in ``config.seed``).

    ``graph`` overrides ``config.graph_path`` / ``config.graph_mode`` (used when loading a saved dataset).
    """
    graph = load_or_draw_graph(config, graph)
    streams = random_streams(config.seed)
    family = get_family(config.family, **dict(config.family_options))
    prior_rng = np.random.default_rng(streams["prior"])
    eta = family.sample_natural_params(config.n_datasets, config.n_factors, prior_rng)
    dataset_task = np.repeat(np.arange(config.n_tasks, dtype=np.int64), config.datasets_per_task)
    mixing = build_mixing(config.n_factors, config.obs_dim, config.mixing_depth, config.activation,
                          config.activation_slope, np.random.default_rng(streams["mixing"]))
    latent_map = build_latent_map(config.n_factors, config.latent_scm, np.random.default_rng(streams["latent_scm"]))
    loc, scale = _pooled_moments(family, eta, latent_map)
    reference = None
    if config.target_kind == "classification":  # continues the prior stream after eta
        ref_ids = np.repeat(np.arange(config.n_datasets), max(1, 4096 // config.n_datasets))
        reference = family.sample(eta, prior_rng, ref_ids)
        if latent_map is not None:
            reference = reference @ latent_map.T
    targets = build_targets(graph, loc, scale, np.random.default_rng(streams["targets"]),
                            hidden=config.target_hidden, kind=config.target_kind,
                            reference_latents=reference)
    return Mechanism(config=config, graph=graph, family=family, natural_params=eta,
                     dataset_task=dataset_task, mixing=mixing, targets=targets, latent_map=latent_map)


# ====================================================================== samples
_ARRAYS = ("dataset_id", "task_id", "latents", "x", "y", "natural_params", "dataset_task")


@dataclass(eq=False)
class SCMDataset:
    """Samples of the meta-SCM.

    Arrays (``N`` samples, ``n`` factors, ``K`` datasets):

    * ``dataset_id``: ``(N,)`` int64; ``task_id``: ``(N,)`` int64 (``= dataset_task[dataset_id]``);
    * ``latents``: ``(N, n)`` the true ``L`` (columns = factors in ``graph.factors`` order);
    * ``x``: ``(N, obs_dim)``; ``y``: ``(N,)`` the target of each sample's own task
      (float64 for regression, int64 labels 0/1 for classification);
    * ``natural_params``: ``(K, n, k)``; ``dataset_task``: ``(K,)``.

    ``graph`` (rows = tasks) and ``config`` describe the mechanism; ``stream`` is the sample stream
    index (``None`` for a subset of a split).
    """

    dataset_id: np.ndarray
    task_id: np.ndarray
    latents: np.ndarray
    x: np.ndarray
    y: np.ndarray
    graph: TaskFactorGraph
    natural_params: np.ndarray
    dataset_task: np.ndarray
    config: SCMConfig
    stream: int | None = 0

    @property
    def n_samples(self) -> int:
        return int(self.dataset_id.shape[0])

    @property
    def n_factors(self) -> int:
        return int(self.latents.shape[1])

    @property
    def n_tasks(self) -> int:
        return self.graph.n_tasks

    @property
    def n_datasets(self) -> int:
        return int(self.dataset_task.shape[0])

    def mechanism(self) -> Mechanism:
        """Rebuild the mechanism (``f``, ``g_t``, prior) that produced these samples."""
        return build_mechanism(self.config, graph=self.graph)

    def subset(self, index: np.ndarray | slice) -> SCMDataset:
        """The samples selected by ``index`` (boolean mask, integer indices or slice)."""
        return replace(self, dataset_id=self.dataset_id[index], task_id=self.task_id[index],
                       latents=self.latents[index], x=self.x[index], y=self.y[index], stream=None)

    def split(self, test_fraction: float, rng: np.random.Generator) -> tuple[SCMDataset, SCMDataset]:
        """Random ``(train, test)`` split, stratified by dataset: each dataset puts
        ``round(test_fraction * its size)`` samples into the test part. Order is kept within parts."""
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        order = np.lexsort((rng.random(self.n_samples), self.dataset_id))
        sorted_ids = self.dataset_id[order]
        starts = np.searchsorted(sorted_ids, sorted_ids, side="left")
        rank = np.arange(self.n_samples) - starts
        counts = np.bincount(self.dataset_id, minlength=self.n_datasets)
        n_test = np.rint(test_fraction * counts).astype(np.int64)
        is_test = np.zeros(self.n_samples, dtype=bool)
        is_test[order] = rank < n_test[sorted_ids]
        return self.subset(~is_test), self.subset(is_test)

    # ------------------------------------------------------------------ files
    def save(self, directory: str | Path) -> Path:
        """Write ``data.npz``, ``graph.json`` and ``config.json`` into ``directory`` (created)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "data.npz", **{name: getattr(self, name) for name in _ARRAYS})
        save_graph(self.graph, out / "graph.json")
        family = get_family(self.config.family, **dict(self.config.family_options))
        meta = {
            "config": self.config.to_dict(),
            "family": family.describe(),
            "stream": self.stream,
            "n_samples": self.n_samples,
            "versions": _versions(),
        }
        (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return out


def _versions() -> dict[str, str]:
    import scipy

    import sit_causal

    return {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "sit": getattr(sit_causal, "__version__", "unknown")}


def load_dataset(directory: str | Path) -> SCMDataset:
    """Read a dataset written by :meth:`SCMDataset.save` (no pickles)."""
    src = Path(directory)
    meta = json.loads((src / "config.json").read_text(encoding="utf-8"))
    config = SCMConfig.from_dict(meta["config"])
    graph = parse_graph(json.loads((src / "graph.json").read_text(encoding="utf-8")))
    with np.load(src / "data.npz", allow_pickle=False) as data:
        arrays = {name: data[name] for name in _ARRAYS}
    return SCMDataset(graph=graph, config=config, stream=meta.get("stream"), **arrays)


# ====================================================================== entry points
def generate(config: SCMConfig, stream: int = 0, graph: TaskFactorGraph | None = None) -> SCMDataset:
    """Build the mechanism of ``config`` and draw ``config.samples_per_dataset`` samples per dataset from
    sample stream ``stream`` (0 = training set; any other integer = fresh samples, same mechanism)."""
    mech = build_mechanism(config, graph=graph)
    return mech.sample(config.samples_per_dataset, _sample_stream(config.seed, stream), stream=stream)


def generate_train_test(config: SCMConfig, test_samples_per_dataset: int | None = None,
                        graph: TaskFactorGraph | None = None) -> tuple[SCMDataset, SCMDataset]:
    """Training set (stream 0) and test set (stream 1) from one mechanism; the test set has
    ``test_samples_per_dataset`` samples per dataset (default: as many as the training set)."""
    mech = build_mechanism(config, graph=graph)
    n_test = config.samples_per_dataset if test_samples_per_dataset is None else test_samples_per_dataset
    train = mech.sample(config.samples_per_dataset, _sample_stream(config.seed, 0), stream=0)
    test = mech.sample(n_test, _sample_stream(config.seed, 1), stream=1)
    return train, test
