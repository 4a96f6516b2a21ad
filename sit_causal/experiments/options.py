"""The options ``sit-causal simulate`` and ``sit-causal validate`` share, as one typed object, and how their runs
end when interrupted.

:class:`RunOptions` is built once by each command from its command-line options and checked once when
built (:func:`~sit_causal.experiments.experiment.check_run_values`: one :class:`~sit_causal.inputs.UsageFailure`
line for the first bad value, before any work). It builds the run's
:class:`~sit_causal.experiments.experiment.SimulateConfig` (:meth:`RunOptions.simulate_config`) and its job
executor (:meth:`RunOptions.make_executor`).

:class:`RunInterrupted` is how a run that Ctrl-C stopped reports what it kept: a ``KeyboardInterrupt`` whose
``kept`` says where the finished pieces are and how to resume; the command prints it as its one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sit_causal.executor import EXECUTORS, Executor, ExecutorError, make_executor
from sit_causal.experiments.experiment import (
    DEFAULT_WORKERS,
    SimulateConfig,
    SyntheticTrainConfig,
    check_run_values,
)
from sit_causal.inputs import UsageFailure
from sit_causal.selection import AlignConfig

__all__ = ["RunInterrupted", "RunOptions"]

_DEFAULTS = SimulateConfig()
_TRAIN = SyntheticTrainConfig()


@dataclass(frozen=True)
class RunOptions:
    """The options of a ``simulate`` or ``validate`` run that are not about its graph.

    Arguments:
        seeds: seeds per graph, ``s = seed, seed + 1, ..., seed + seeds - 1`` (``>= 1``).
        seed: the first seed (``>= 0``; it also draws the random graphs).
        samples: training samples per dataset (``>= 1``).
        datasets_per_task: datasets of each task, ``K = m * datasets_per_task`` (``>= 1``).
        steps, batch_size, lr, threads: :class:`~sit_causal.experiments.experiment.SyntheticTrainConfig`
            (``steps``, ``batch_size``, ``threads >= 1``; ``lr > 0`` and finite).
        workers: processes running the jobs in parallel (``>= 1``).
        align_restarts, align_steps: the selection step's budget, ``AlignConfig.restarts`` (``>= 1``) and
            ``AlignConfig.refine_iterations`` (``>= 0``; :meth:`~sit_causal.selection.AlignConfig.with_budget`).
        executor: where the jobs run, one of :data:`~sit_causal.executor.EXECUTORS`.
        scheduler: ``executor="dask"``: the scheduler's address (``tcp://host:port``); ``None`` starts a
            local cluster of ``workers`` processes.
        as_json: print the results object as one JSON object.
        quiet: no progress output.
    """

    seeds: int = _DEFAULTS.seeds
    seed: int = _DEFAULTS.seed
    samples: int = _DEFAULTS.samples
    datasets_per_task: int = _DEFAULTS.datasets_per_task
    steps: int = _TRAIN.steps
    batch_size: int = _TRAIN.batch_size
    lr: float = _TRAIN.lr
    threads: int = _TRAIN.threads
    workers: int = DEFAULT_WORKERS
    align_restarts: int = AlignConfig.restarts
    align_steps: int = AlignConfig.refine_iterations
    executor: str = "local"
    scheduler: str | None = None
    as_json: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        """One line for the first bad value (:func:`~sit_causal.experiments.experiment.check_run_values`)."""
        check_run_values({"seeds": self.seeds, "samples": self.samples, "steps": self.steps,
                          "batch_size": self.batch_size, "datasets_per_task": self.datasets_per_task,
                          "threads": self.threads, "workers": self.workers, "seed": self.seed,
                          "align_restarts": self.align_restarts, "align_steps": self.align_steps, "lr": self.lr})

    def simulate_config(self, factors: int, tasks: int, **fields: Any) -> SimulateConfig:
        """The :class:`~sit_causal.experiments.experiment.SimulateConfig` of ``factors`` ``n``, ``tasks`` ``m``
        and these options (``fields``: the command's own, e.g. ``family``, ``methods``); it checks itself."""
        return SimulateConfig(
            factors=factors, tasks=tasks, seeds=self.seeds, seed=self.seed, samples=self.samples,
            datasets_per_task=self.datasets_per_task,
            train=SyntheticTrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, threads=self.threads),
            workers=self.workers, align=AlignConfig().with_budget(self.align_restarts, self.align_steps), **fields,
        )

    def make_executor(self) -> Executor:
        """The executor of ``executor``/``scheduler`` (:mod:`sit_causal.executor`), built before any
        work: an unknown name, a scheduler without ``dask``, a missing engine or an unreachable scheduler is one
        :class:`~sit_causal.inputs.UsageFailure` line."""
        if self.executor not in EXECUTORS:
            raise UsageFailure(f"--executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.scheduler is not None and self.executor != "dask":
            raise UsageFailure("--scheduler needs --executor dask")
        if self.scheduler is not None and "://" not in self.scheduler:
            raise UsageFailure(f"--scheduler must be an address like tcp://host:8786, got {self.scheduler!r}")
        try:
            return make_executor(self.executor, self.workers, self.scheduler)
        except (ExecutorError, ValueError) as err:
            raise UsageFailure(str(err)) from None


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; ``kept`` says what was kept and how to continue (``--resume``)."""

    def __init__(self, kept: str) -> None:
        super().__init__(kept)
        self.kept = kept
