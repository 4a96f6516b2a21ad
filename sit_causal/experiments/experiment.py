"""The synthetic experiment's configuration, graph, regime and summaries.

The library behind ``sit-causal simulate`` and ``sit-causal validate`` (the commands are
:mod:`sit_causal.cli.simulate` and :mod:`sit_causal.cli.validate`; :mod:`sit_causal.experiments.runner` trains
and scores every seed; :mod:`sit_causal.experiments.report` prints and draws the results).

One run = one task-to-factor graph (from ``--graph`` or drawn with ``--graph-mode`` from ``--seed``;
:func:`run_graph`) and, for each of ``--seeds`` seeds ``s = seed, seed+1, ...``, a fresh mechanism and sample
draw of the meta-SCM (:func:`sit_causal.sim.scm.generate_train_test` with ``SCMConfig.seed = s``: prior
parameters, mixing ``f``, targets ``g_t``, training samples from stream 0, held-out samples from stream 1) and a
fresh model initialisation (``torch.Generator`` seeded with ``s``) for every method. Every method sees the same
data.

:class:`SimulateConfig` checks itself when built: every bad value is a :class:`~sit_causal.inputs.UsageFailure`
naming the command-line option that sets it (one line and exit code 2 on the command line), so a library
caller gets the checks the commands make. A run's size: :func:`estimate_memory_bytes`; what the prior alone
leaves undetermined: :func:`regime`; per-method means over seeds: :func:`summarise_seeds`.

``results.json`` schema::

    {"uic_holds": bool, "graph": {compact matrix form}, "config": {...}, "warnings": [str], "methods": [str],
     "regime": "prior-identifies" | "rotation-left" | "linear-left", "regime_reason": str,
     "identifiable_predicted": [bool per factor], "summary": [{"method", "mcc_pearson_mean", ...}],
     "results": [{"method": str, "seed": int, "mcc_pearson": float, "mcc_spearman": float,
                  "affine_r2": float, "graph_consistent_r2": float, "time_s": float, "train_s": float,
                  "select_s": float, "select_stages": {stage: float} | null,
                  "graph_precision": float | null, "graph_recall": float | null,
                  "learned_graph": [[0/1]] | null, "learned_uic_holds": bool | null,
                  "matched_correlation_matrix": [[float]], "final_losses": {...},
                  "per_factor": [{"factor": str, "matched_corr": float, "identifiable_predicted": bool,
                                  "mixes_with": [str], "learned_mixes": [str], "recovered": bool}]}]}
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sit_causal.experiments.synthetic import (
    DEFAULT_SYNTHETIC_METHODS,
    SYNTHETIC_METHODS,
    SyntheticModelConfig,
    method_configs,
)
from sit_causal.inputs import UsageFailure
from sit_causal.objective import ObjectiveConfig
from sit_causal.selection import AlignConfig
from sit_causal.sim.expfam import FAMILY_NAMES, get_family
from sit_causal.sim.graph_generators import parse_graph_mode
from sit_causal.sim.scm import (
    DEFAULT_FACTORS,
    DEFAULT_TASKS,
    SCMConfig,
    build_mechanism,
    load_or_draw_graph,
)
from sit_causal.theory.graph import TaskFactorGraph
from sit_causal.theory.uic import UICReport, check_uic

__all__ = [
    "DEFAULT_MEMORY_LIMIT_GB",
    "DEFAULT_WORKERS",
    "RECOVERY_THRESHOLD",
    "REGIMES",
    "RUN_FIELDS",
    "SimulateConfig",
    "SyntheticTrainConfig",
    "check_overrides",
    "check_run_values",
    "estimate_memory_bytes",
    "json_safe",
    "regime",
    "run_graph",
    "run_regime",
    "summarise_seeds",
    "theory_warnings",
]

DEFAULT_WORKERS = min(2, os.cpu_count() or 1)
"""``--workers`` default of ``simulate`` and ``validate``: one process per core, at most two."""
RECOVERY_THRESHOLD = 0.9
"""A factor is recovered at a matched ``|rho| >=`` this and a clean residual check
(:func:`sit_causal.experiments.runner.factor_recovered`)."""


@dataclass
class SyntheticTrainConfig:
    """Optimisation settings shared by every method.

    Arguments:
        steps: Adam steps.
        batch_size: mini-batch size (``>= N`` means full batch).
        lr: Adam learning rate (halved for the last quarter of training).
        threads: ``torch.set_num_threads`` during training (1 leaves a core to other jobs).
    """

    steps: int = 1500
    batch_size: int = 2048
    lr: float = 5e-3
    threads: int = 1


@dataclass
class SimulateConfig:
    """Everything a run of ``sit-causal simulate`` needs; checked when built (:meth:`__post_init__`).

    ``samples`` is per dataset (training); ``test_samples`` per dataset (held out, same mechanism);
    ``datasets_per_task`` datasets belong to each task (``K = tasks * datasets_per_task``).
    ``overrides`` are fields of :class:`~sit_causal.experiments.synthetic.SyntheticModelConfig` or of
    :class:`~sit_causal.objective.ObjectiveConfig` applied to every method
    (:func:`~sit_causal.experiments.synthetic.method_configs`).
    ``workers`` processes run the seeds in parallel (each with ``train.threads`` torch threads).
    ``latent_scm`` is :attr:`sit_causal.sim.scm.SCMConfig.latent_scm` (the latents related by a linear SCM within
    each dataset: the ``linear-left`` regime, where the selection step searches over GL(n)).
    """

    factors: int = DEFAULT_FACTORS
    tasks: int = DEFAULT_TASKS
    family: str = "gauss-mean"
    graph_path: str | None = None
    graph_mode: str = "uic"
    seeds: int = 5
    seed: int = 0
    samples: int = 1000
    test_samples: int = 500
    datasets_per_task: int = 5
    obs_dim: int | None = None
    methods: tuple[str, ...] = DEFAULT_SYNTHETIC_METHODS
    train: SyntheticTrainConfig = field(default_factory=SyntheticTrainConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    workers: int = 1
    overrides: dict[str, Any] = field(default_factory=dict)
    latent_scm: float = 0.0

    def __post_init__(self) -> None:
        """Check every value (module docstring): the shared ones (:func:`check_run_values`), then ``factors``,
        ``tasks`` (``>= 1``), ``family``, ``latent_scm`` (finite, ``>= 0``), ``methods``, ``overrides``
        (:func:`check_overrides`) and ``graph_mode``."""
        check_run_values({"seeds": self.seeds, "samples": self.samples, "steps": self.train.steps,
                          "batch_size": self.train.batch_size, "datasets_per_task": self.datasets_per_task,
                          "threads": self.train.threads, "workers": self.workers, "seed": self.seed,
                          "align_restarts": self.align.restarts, "align_steps": self.align.refine_iterations,
                          "lr": self.train.lr})
        for option, value in (("--factors", self.factors), ("--tasks", self.tasks)):
            if value < 1:
                raise UsageFailure(f"{option} must be >= 1, got {value}")
        if self.family not in FAMILY_NAMES:
            raise UsageFailure(f"unknown --family {self.family!r}; choose one of {', '.join(FAMILY_NAMES)}")
        if not (math.isfinite(self.latent_scm) and self.latent_scm >= 0):
            raise UsageFailure(f"--latent-scm must be a finite number >= 0, got {self.latent_scm}")
        _check_methods(self.methods)
        self.overrides = dict(self.overrides)
        check_overrides(self.overrides, self.methods)
        try:
            parse_graph_mode(self.graph_mode)
        except ValueError as err:
            raise UsageFailure(f"--graph-mode: {err}") from None

    def scm_config(self, seed: int) -> SCMConfig:
        """The meta-SCM of seed ``seed`` (``obs_dim`` defaults to ``2 n``)."""
        return SCMConfig(n_factors=self.factors, n_tasks=self.tasks, datasets_per_task=self.datasets_per_task,
                         samples_per_dataset=self.samples, family=self.family,
                         obs_dim=self.obs_dim or 2 * self.factors, seed=seed, graph_mode=self.graph_mode,
                         latent_scm=self.latent_scm)

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready values (``methods`` a list); ``results.json``'s ``config`` and the key
        a resumed run is checked against."""
        out = asdict(self)
        out["methods"] = list(self.methods)
        return out


# ---------------------------------------------------------------------- checks
RUN_FIELDS: tuple[tuple[str, str, int], ...] = (
    ("seeds", "--seeds", 1), ("samples", "--samples", 1), ("steps", "--steps", 1), ("batch_size", "--batch-size", 1),
    ("datasets_per_task", "--datasets-per-task", 1), ("threads", "--threads", 1), ("workers", "--workers", 1),
    ("seed", "--seed", 0), ("align_restarts", "--align-restarts", 1), ("align_steps", "--align-steps", 0),
)
"""The integer values ``simulate`` and ``validate`` share, in the order they are checked: ``(name, option,
least value)``; ``lr`` (a positive finite number) is checked after them."""


def check_run_values(values: typing.Mapping[str, float]) -> None:
    """Refuse the first value of :data:`RUN_FIELDS` below its least value, then an ``lr`` that is not a
    positive finite number (:class:`UsageFailure`: ``--seeds must be >= 1, got 0``)."""
    for name, option, low in RUN_FIELDS:
        if values[name] < low:
            raise UsageFailure(f"{option} must be >= {low}, got {values[name]}")
    lr = values["lr"]
    if not (lr > 0 and math.isfinite(lr)):
        raise UsageFailure(f"--lr must be a positive number, got {lr}")


_SET_BY_THE_RUN = ("method", "n_factors", "x_dim", "n_tasks", "n_datasets")


def check_overrides(values: dict[str, Any], methods: Sequence[str]) -> None:
    """``--set`` values (fields of :class:`~sit_causal.experiments.synthetic.SyntheticModelConfig` or
    :class:`~sit_causal.objective.ObjectiveConfig`), checked against every method before any work.

    Refused (:class:`UsageFailure`): a field the run sets itself; a value of the wrong type for its field's
    annotation (a boolean is ``true``/``false``, not the string ``maybe``; an integer an integer; a float a
    finite number); a value :func:`~sit_causal.experiments.synthetic.method_configs` refuses for any method.
    A float written ``1e-3`` (no dot; YAML 1.1 reads it as a string) is converted in place."""
    for key in values:
        if key in _SET_BY_THE_RUN:
            raise UsageFailure(f"--set {key}: set by the run itself (use --factors, --tasks, --methods)")
    hints = {**typing.get_type_hints(ObjectiveConfig), **typing.get_type_hints(SyntheticModelConfig)}
    names = {f.name for cls in (ObjectiveConfig, SyntheticModelConfig) for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in names:
            continue  # method_configs names the unknown field
        tp = hints[key]
        options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
        if value is None and type(None) in options:
            continue
        if bool in options and not isinstance(value, bool):
            raise UsageFailure(f"--set {key}: expected true or false, got {value!r}")
        if int in options and float not in options and (isinstance(value, bool) or not isinstance(value, int)):
            raise UsageFailure(f"--set {key}: expected an integer, got {value!r}")
        if float in options:
            if isinstance(value, str):
                with contextlib.suppress(ValueError):
                    value = values[key] = float(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UsageFailure(f"--set {key}: expected a number, got {value!r}")
            if not math.isfinite(value):
                raise UsageFailure(f"--set {key}: expected a finite number, got {value!r}")
    for method in methods:
        try:
            method_configs(method, **values)
        except (TypeError, ValueError) as err:
            raise UsageFailure(f"--set: {err}") from None


def _check_methods(methods: Sequence[str]) -> None:
    bad = [m for m in methods if m not in SYNTHETIC_METHODS]
    if not methods or bad:
        raise UsageFailure(f"unknown method {bad[0] if bad else ''!r} in --methods; "
                           f"choose from {', '.join(SYNTHETIC_METHODS)}")
    dup = sorted({m for m in methods if list(methods).count(m) > 1})
    if dup:
        raise UsageFailure(f"--methods names {', '.join(dup)} more than once")


# ---------------------------------------------------------------------- graph and warnings
def run_graph(config: SimulateConfig) -> TaskFactorGraph:
    """The run's graph, resolved once: ``config.graph_path`` if given, else drawn with ``graph_mode`` from the
    graph stream of ``config.seed`` (:func:`sit_causal.sim.scm.load_or_draw_graph`, the stream the meta-SCM itself
    uses). Raises :class:`~sit_causal.theory.graph.GraphError` or ``ValueError``."""
    return load_or_draw_graph(config.scm_config(config.seed))


def theory_warnings(report: UICReport, n_datasets: int, family: str, variety_reason: str | None = None) -> list[str]:
    """One line per condition of the theory that fails for this run (empty list: the theory applies).

    * the UIC (every mixing set empty; :func:`sit_causal.theory.uic.check_uic`);
    * the iVAE variety condition: at least ``n k + 1`` datasets (``k`` sufficient statistics of the prior
      family) with natural parameters varying in every direction (``variety_reason`` from
      :func:`sit_causal.sim.expfam.variety_condition` when it was checked on the drawn parameters).
    """
    out: list[str] = []
    if not report.uic_holds:
        mixed = [f"{f.id} mixes with {'+'.join(f.mixes_with) if f.mixes_with else '(read by no task)'}"
                 for f in report.factors if not f.identifiable]
        orth = check_uic(report.graph, ambiguity="orthogonal")
        still = [f"{f.id} with {'+'.join(f.mixes_with) if f.mixes_with else '(read by no task)'}"
                 for f in orth.factors if not f.identifiable]
        out.append("the graph violates the UIC, so these factors are not predicted identifiable: "
                   + "; ".join(mixed) + " (under the orthogonal ambiguity of SIT's selection step, only "
                   + ("identical task sets mix: " + "; ".join(still) if still else "identical task sets mix: none")
                   + ")")
    k = get_family(family).k
    need = report.graph.n_factors * k + 1
    if n_datasets < need:
        out.append(f"too few datasets for the prior's variety: {n_datasets} < n*k + 1 = "
                   f"{report.graph.n_factors}*{k} + 1 = {need} ({family}); the prior cannot identify the factors")
    elif variety_reason is not None:
        out.append(f"the iVAE variety condition fails: {variety_reason}")
    return out


DEFAULT_MEMORY_LIMIT_GB = 8.0
"""``simulate --max-memory-gb`` default: a run estimated above it is refused before any work."""


def estimate_memory_bytes(config: SimulateConfig, n_factors: int | None = None, n_tasks: int | None = None) -> int:
    """A conservative estimate of the peak memory of one seed of ``config`` (bytes).

    Counted: the meta-SCM's samples in float64 (latents, observations, the mixing MLP's widest
    intermediate, targets and ids), their float32 tensors, the representation and its unmixed copy, the
    selection step's ``(m, n, n)`` gradient matrices and batched ``(restarts, n, n)`` rotations with their
    matrix exponentials, and the model's parameters with Adam's two moments; times 1.5 for temporaries.
    With ``workers`` processes, that many seeds are in memory at once.
    """
    n = config.factors if n_factors is None else n_factors
    m = config.tasks if n_tasks is None else n_tasks
    d = config.obs_dim or 2 * n
    k = m * config.datasets_per_task
    samples = k * (config.samples + config.test_samples)
    data = samples * (n + 2 * d + 4) * 8 + samples * (d + 3) * 4 + 2 * samples * n * 8
    selection = m * n * n * 8 * 4 + config.align.restarts * n * n * 4 * 12
    h = SyntheticModelConfig.hidden_dim
    params = (d * h + 3 * h * h + h * n) * 2 + m * (n * SyntheticModelConfig.head_hidden) + k * 16
    return int(1.5 * (data + selection + params * 4 * 3))


REGIMES = ("prior-identifies", "rotation-left", "linear-left")


def regime(family: str, n_datasets: int, n_factors: int, variety_holds: bool = True,
           latent_scm: float = 0.0) -> tuple[str, str]:
    """What the prior alone leaves undetermined for ``family`` (docs/design.md section 9): ``(name, why)``.

    * ``prior-identifies``: the datasets move the factors' spread (variance or scale) and there are enough
      of them with variety: within-dataset whitening and joint diagonalisation identify the factors with
      no task (the ``taskfree`` control), so the task graph is not needed;
    * ``rotation-left``: only the means move (shared diagonal covariance): after within-dataset whitening a
      rotation is left, and the orthogonal form of the UIC says which factors the task graph pins down;
    * ``linear-left``: a general linear map is left (the latents related by a linear SCM within each dataset,
      ``latent_scm > 0``, so their within-dataset covariance is shared and non-diagonal; or too few datasets
      for the prior's variety, or no variety): the UIC decides, and the selection step searches over GL(n)
      (:func:`sit_causal.selection.linear.align_linear_by_task_sparsity`).
    """
    fam = get_family(family)
    if latent_scm > 0:
        return "linear-left", (f"the latents are related by a linear SCM within each dataset (strength "
                               f"{latent_scm:g}): their within-dataset covariance is not diagonal, whitening leaves "
                               "a general linear map, and the UIC decides (selection step over GL(n))")
    if n_datasets < n_factors * fam.k + 1 or not variety_holds:
        return "linear-left", (f"too few datasets or no variety for the {family} prior: a general linear map is "
                               "left and the UIC decides")
    if fam.modulates_spread:
        return "prior-identifies", (f"the {family} prior moves the factors' spread across {n_datasets} datasets: "
                                    "the prior alone identifies the factors (the task-free control needs no "
                                    "task); the task graph is not needed here")
    return "rotation-left", (f"the {family} prior moves only the means: within-dataset whitening leaves a "
                             "rotation, and the orthogonal form of the UIC decides")


def run_regime(config: SimulateConfig, graph: TaskFactorGraph) -> tuple[str, str]:
    """:func:`regime` of a run: its family, ``K``, ``n``, the variety of the first seed's drawn prior
    parameters, and ``latent_scm``."""
    variety = build_mechanism(config.scm_config(config.seed), graph=graph).variety()
    return regime(config.family, config.tasks * config.datasets_per_task, graph.n_factors, variety.holds,
                  config.latent_scm)



# ---------------------------------------------------------------------- summaries
def summarise_seeds(results: Sequence[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation over seeds of every scalar metric, per method."""
    keys = ("mcc_pearson", "mcc_spearman", "affine_r2", "graph_consistent_r2", "graph_precision",
            "graph_recall", "time_s", "train_s", "select_s")
    out = []
    for method in methods:
        rows = [r for r in results if r["method"] == method]
        if not rows:
            continue
        entry: dict[str, Any] = {"method": method, "n_seeds": len(rows)}
        for key in keys:
            vals = [r[key] for r in rows if r.get(key) is not None]
            entry[f"{key}_mean"] = float(np.mean(vals)) if vals else None
            entry[f"{key}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else (0.0 if vals else None)
        out.append(entry)
    return out



def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (valid JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


