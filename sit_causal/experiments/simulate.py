"""The ``simulate`` run: its folder, its size, and the run itself (the command is :mod:`sit_causal.cli.simulate`).

Before any work (:func:`prepare_simulation`): the output folder is usable and holds no run unless it is
continued (``--resume``) or replaced (``--overwrite``) (:func:`check_run_dir`); the estimated peak memory
(:func:`~sit_causal.experiments.experiment.estimate_memory_bytes` times the parallel seeds) and duration
(:func:`estimate_seconds`) are within their limits; the run's graph is resolved once
(:func:`~sit_causal.experiments.experiment.run_graph`); a resumed run's finished seeds are read back and
checked to belong to this run (:func:`load_finished_seeds`).

The run (:func:`run_and_save_simulation`): every seed is saved as it ends (``OUT/seeds/seed_S.json``,
:func:`save_seed`), so Ctrl-C loses at most the seeds in progress
(:class:`~sit_causal.experiments.options.RunInterrupted` says which are kept); the finished run writes
``results.json`` and the two plots of :mod:`sit_causal.experiments.report`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sit_causal.executor import Executor
from sit_causal.experiments.experiment import SimulateConfig, estimate_memory_bytes, json_safe, run_graph
from sit_causal.experiments.options import RunInterrupted
from sit_causal.experiments.runner import run_simulation
from sit_causal.fileio import check_output_dir, remove_outputs, write_text_atomic
from sit_causal.inputs import UsageFailure
from sit_causal.theory.graph import GraphError, TaskFactorGraph

__all__ = [
    "DEFAULT_MAX_HOURS",
    "RUN_FILES",
    "WARN_MINUTES",
    "SimulateRun",
    "check_duration",
    "check_memory",
    "check_run_dir",
    "estimate_seconds",
    "load_finished_seeds",
    "prepare_simulation",
    "run_and_save_simulation",
    "save_seed",
]


# ---------------------------------------------------------------------- the run folder
RUN_FILES = ("results.json", "matched_correlation.png", "per_factor_recovery.png", "seeds")


def check_run_dir(out: str | None, resume: bool, overwrite: bool) -> Path | None:
    """Before any work: the output folder is usable, and a folder that holds a run is only continued
    (``--resume``) or replaced (``--overwrite``), never silently overwritten."""
    if resume and overwrite:
        raise UsageFailure("--resume and --overwrite exclude each other")
    if out is None:
        if resume or overwrite:
            raise UsageFailure("--resume and --overwrite need --out")
        return None
    out_dir = check_output_dir(out, "--out")
    held = [name for name in RUN_FILES if (out_dir / name).exists()]
    if resume and not (out_dir / "seeds").is_dir():
        raise UsageFailure(f"--resume: {out_dir} holds no run (no seeds/ folder)")
    if held and not (resume or overwrite):
        raise UsageFailure(f"{out_dir} already holds a run ({', '.join(held)}); pass --resume to continue it or "
                           "--overwrite to replace it")
    return out_dir


def _run_key(config: SimulateConfig, graph: TaskFactorGraph) -> dict[str, Any]:
    key = {k: v for k, v in config.to_dict().items() if k not in ("seeds", "workers")}
    key["train"] = {k: v for k, v in key["train"].items() if k != "threads"}
    return {"config": key, "graph": graph.to_dict()}


def save_seed(out_dir: Path, config: SimulateConfig, graph: TaskFactorGraph, seed: int,
              rows: list[dict[str, Any]]) -> None:
    """``OUT/seeds/seed_S.json``, written atomically the moment seed ``S`` ends: its rows and the run's key
    (config and graph), which ``--resume`` checks."""
    payload = {**_run_key(config, graph), "seed": seed, "rows": json_safe(rows)}
    write_text_atomic(out_dir / "seeds" / f"seed_{seed}.json", json.dumps(payload) + "\n")


def load_finished_seeds(out_dir: Path, config: SimulateConfig, graph: TaskFactorGraph) -> dict[int, list[Any]]:
    """The finished seeds of the run in ``out_dir``; a seed file of a different run is refused, naming the
    differing keys (``--seeds``, ``--workers`` and ``--threads`` may change)."""
    key = _run_key(config, graph)
    done: dict[int, list[Any]] = {}
    for path in sorted((out_dir / "seeds").glob("seed_*.json")):
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UsageFailure(f"--resume: {path} is not readable ({err.__class__.__name__})") from None
        old = {"config": saved.get("config"), "graph": saved.get("graph")}
        if json_safe(old) != json_safe(json.loads(json.dumps(key))):
            new_cfg, old_cfg = json.loads(json.dumps(key["config"])), old["config"] or {}
            diff = sorted(k for k in set(new_cfg) | set(old_cfg) if new_cfg.get(k) != old_cfg.get(k))
            diff += ["graph"] if old["graph"] != key["graph"] else []
            raise UsageFailure(f"--resume: {path} belongs to a different run (differs in {', '.join(diff)}); "
                               "pass --overwrite to start again")
        done[int(saved["seed"])] = saved["rows"]
    return done


# ---------------------------------------------------------------------- the run's size
DEFAULT_MAX_HOURS = 48.0
WARN_MINUTES = 10.0


def estimate_seconds(config: SimulateConfig) -> float:
    """A rough wall-clock estimate of a run (seconds), from measurements on 2 CPU cores.

    The selection step (``align``) of one seed and method takes about ``2.6 n + 0.004 n^3`` s with the
    default budget (16 restarts, 1500 refinement steps; measured with ``m = n`` tasks under load: 28 s at
    ``n = 10``, 48 s at 16, 85 s at 24, over 400 s at 40), scaled by the budget asked for; training about
    4 ms per step and method, more with more factors. Seeds run ``workers`` at a time."""
    from sit_causal.experiments.synthetic import unmixing_step

    n = config.factors
    budget = 0.5 * config.align.restarts / 16 + 0.5 * max(config.align.refine_iterations, 1) / 1500
    selection = (2.6 * n + 0.004 * n**3) * budget
    aligned = sum(unmixing_step(m) == "align" for m in config.methods)
    train = 0.004 * (1 + n / 10) * config.train.steps * len(config.methods)
    per_seed = train + aligned * selection
    return per_seed * math.ceil(config.seeds / max(1, min(config.workers, config.seeds)))


def check_duration(config: SimulateConfig, max_hours: float) -> str | None:
    """Refuse a run estimated above ``max_hours`` (:class:`UsageFailure`), before any work; returns the
    warning for one above :data:`WARN_MINUTES` (printed once every other check has passed), else ``None``."""
    if not (math.isfinite(max_hours) and max_hours > 0):
        raise UsageFailure(f"--max-hours must be a positive number, got {max_hours}")
    seconds = estimate_seconds(config)
    what = (f"{config.seeds} seed(s) x {len(config.methods)} method(s) on {config.factors} factors, "
            f"{min(config.workers, config.seeds)} worker(s)")
    if seconds > max_hours * 3600:
        raise UsageFailure(f"the run would take an estimated {seconds / 3600:.3g} hours ({what}), above --max-hours "
                           f"{max_hours:g}; shrink the run or raise the limit")
    if seconds > WARN_MINUTES * 60:
        return f"the run will take an estimated {seconds / 60:.0f} minutes ({what}; the selection step grows as n^3)"
    return None


def check_memory(config: SimulateConfig, max_memory_gb: float) -> None:
    """Refuse (:class:`UsageFailure`), before any work, a run whose estimated peak memory, one seed's
    :func:`~sit_causal.experiments.experiment.estimate_memory_bytes` times ``min(workers, seeds)`` seeds in
    memory at once, is above ``max_memory_gb`` GB (which must be ``> 0``)."""
    need = estimate_memory_bytes(config) * min(config.workers, config.seeds)
    if not max_memory_gb > 0:
        raise UsageFailure(f"--max-memory-gb must be > 0, got {max_memory_gb}")
    if need > max_memory_gb * 1e9:
        raise UsageFailure(f"the run needs an estimated {need / 1e9:.1f} GB ({config.factors} factors, {config.tasks} "
                           f"tasks, {config.tasks * config.datasets_per_task} datasets x "
                           f"{config.samples + config.test_samples} samples, {min(config.workers, config.seeds)} "
                           f"worker(s)), above --max-memory-gb {max_memory_gb:g}; shrink the run or raise the limit")


# ---------------------------------------------------------------------- the run
@dataclass(frozen=True)
class SimulateRun:
    """A checked run, ready to start (:func:`prepare_simulation`).

    Arguments:
        config: the run's configuration.
        graph: its graph, resolved once.
        out_dir: the output folder (``None``: nothing is written).
        done: the rows of the seeds a resumed run finished before, by seed.
        overwrite: replace the run held in ``out_dir``.
        long_run: the warning of a run estimated above :data:`WARN_MINUTES`, else ``None``.
    """

    config: SimulateConfig
    graph: TaskFactorGraph
    out_dir: Path | None
    done: dict[int, list[Any]]
    overwrite: bool
    long_run: str | None


def prepare_simulation(config: SimulateConfig, graph: TaskFactorGraph | None, out: str | None, resume: bool,
                       overwrite: bool, max_memory_gb: float, max_hours: float) -> SimulateRun:
    """Every check before the work (module docstring), in order: the folder ``out``, the memory, the duration,
    the graph (``graph``, or the one :func:`~sit_causal.experiments.experiment.run_graph` loads or draws),
    the finished seeds of a resumed run. Raises :class:`UsageFailure` with one line."""
    out_dir = check_run_dir(out, resume, overwrite)
    check_memory(config, max_memory_gb)
    long_run = check_duration(config, max_hours)
    if graph is None:
        try:
            graph = run_graph(config)
        except (GraphError, ValueError) as err:
            raise UsageFailure(f"cannot build a {config.graph_mode} graph with {config.factors} factors and "
                               f"{config.tasks} tasks: {err}") from None
    done = load_finished_seeds(out_dir, config, graph) if resume and out_dir is not None else {}
    return SimulateRun(config, graph, out_dir, done, overwrite, long_run)


def run_and_save_simulation(run: SimulateRun, executor: Executor, quiet: bool = False,
                 warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``run`` on ``executor`` (:func:`~sit_causal.experiments.runner.run_simulation`; ``warn`` receives each
    theory warning line) and return its results object (non-finite numbers as ``None``).

    With an output folder: a replaced run's files are removed first, every seed is saved as it ends, and
    ``results.json`` and the plots are written at the end. Ctrl-C raises
    :class:`~sit_causal.experiments.options.RunInterrupted` naming the seeds kept."""
    out_dir, config, graph = run.out_dir, run.config, run.graph
    if run.overwrite and out_dir is not None:
        remove_outputs(out_dir, RUN_FILES)
    saver = None if out_dir is None else (lambda s, rows: save_seed(out_dir, config, graph, s, rows))
    try:
        with executor:
            results = json_safe(run_simulation(config, quiet=quiet, graph=graph, done=run.done, on_seed=saver,
                                               warn_fn=warn, executor=executor))
    except KeyboardInterrupt:
        kept = sorted(int(p.stem.split("_")[1]) for p in (out_dir / "seeds").glob("seed_*.json")) if out_dir else []
        raise RunInterrupted(f"finished seeds {', '.join(map(str, kept)) or 'none'} are kept in {out_dir / 'seeds'}; "
                             "rerun with --resume to continue" if out_dir is not None
                             else "nothing was kept (no --out)") from None
    if out_dir is not None:
        from sit_causal.experiments.report import plot_matched_correlation, plot_per_factor_recovery

        write_text_atomic(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
        plot_matched_correlation(results, out_dir / "matched_correlation.png")
        plot_per_factor_recovery(results, out_dir / "per_factor_recovery.png")
    return results
