"""``sit-causal simulate``: the command over :mod:`sit_causal.experiments.experiment`, and the options it shares with
``sit-causal validate``.

The command only checks its options (every bad value is one line on stderr and exit code 2, before any
work), builds a :class:`~sit_causal.experiments.experiment.SimulateConfig`, resolves the graph once, runs
:func:`~sit_causal.experiments.experiment.run_simulation`, and hands the results to
:mod:`sit_causal.experiments.report`.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import typer

from sit_causal.cli.common import interrupted, warn
from sit_causal.experiments.executor import EXECUTORS, Executor, ExecutorError, make_executor
from sit_causal.experiments.experiment import (
    DEFAULT_MEMORY_LIMIT_GB,
    DEFAULT_WORKERS,
    SimulateConfig,
    SyntheticTrainConfig,
    estimate_memory_bytes,
    json_safe,
    run_graph,
    run_simulation,
)
from sit_causal.experiments.synthetic import DEFAULT_SYNTHETIC_METHODS, SYNTHETIC_METHODS, method_configs
from sit_causal.fileio import check_output_dir, remove_outputs, write_text_atomic
from sit_causal.inputs import UsageFailure
from sit_causal.selection import AlignConfig
from sit_causal.sim.expfam import FAMILY_NAMES
from sit_causal.sim.graph_generators import parse_graph_mode
from sit_causal.sim.scm import DEFAULT_FACTORS, DEFAULT_TASKS
from sit_causal.theory.graph import GraphError, TaskFactorGraph, load_graph

__all__ = ["PROG", "SharedOptions", "check_run_dir", "load_finished_seeds", "save_seed", "simulate_command"]

PROG = "sit-causal"
_DEFAULTS = SimulateConfig()
_TRAIN = SyntheticTrainConfig()


# ---------------------------------------------------------------------- the option set of simulate and validate
class SharedOptions:
    """The options ``simulate`` and ``validate`` share: declared once (typer ``OptionInfo`` objects used as
    defaults in both commands' signatures) and checked once (:meth:`check`, :meth:`config`)."""

    seeds = typer.Option(_DEFAULTS.seeds, "--seeds", help="seeds (data and model draws) per graph")
    seed = typer.Option(_DEFAULTS.seed, "--seed", help="first seed (also draws the random graphs)")
    samples = typer.Option(_DEFAULTS.samples, "--samples", help="training samples per dataset")
    datasets_per_task = typer.Option(_DEFAULTS.datasets_per_task, "--datasets-per-task",
                                     help="datasets of each task")
    steps = typer.Option(_TRAIN.steps, "--steps", help="Adam steps per model")
    batch_size = typer.Option(_TRAIN.batch_size, "--batch-size", help="mini-batch size")
    lr = typer.Option(_TRAIN.lr, "--lr", help="Adam learning rate")
    threads = typer.Option(_TRAIN.threads, "--threads", help="torch threads per worker")
    workers = typer.Option(DEFAULT_WORKERS, "--workers", help="processes running seeds in parallel (min(2, CPU count))")
    align_restarts = typer.Option(AlignConfig.restarts, "--align-restarts",
                                  help="random rotations of the selection step")
    align_steps = typer.Option(AlignConfig.refine_iterations, "--align-steps",
                               help="steps of the selection step's refinement (0 = count search only)")
    executor = typer.Option("local", "--executor",
                            help="where the (graph, seed) jobs run: local (processes of this machine, --workers) "
                                 "or dask (Dask distributed; the [dask] extra)")
    scheduler = typer.Option(None, "--scheduler", metavar="ADDRESS",
                             help="--executor dask: the scheduler's address (tcp://host:port); none starts a "
                                  "LocalCluster of --workers processes")
    as_json = typer.Option(False, "--json", help="print the results object as one JSON object")
    quiet = typer.Option(False, "--quiet", help="no progress output")

    @staticmethod
    def check(seeds: int, seed: int, samples: int, datasets_per_task: int, steps: int, batch_size: int, lr: float,
              threads: int, workers: int, align_restarts: int, align_steps: int) -> None:
        """One line and exit code 2 for the first bad value (raises :class:`UsageFailure`)."""
        for name, value, low in (("--seeds", seeds, 1), ("--samples", samples, 1), ("--steps", steps, 1),
                                 ("--batch-size", batch_size, 1), ("--datasets-per-task", datasets_per_task, 1),
                                 ("--threads", threads, 1), ("--workers", workers, 1), ("--seed", seed, 0),
                                 ("--align-restarts", align_restarts, 1), ("--align-steps", align_steps, 0)):
            if value < low:
                raise UsageFailure(f"{name} must be >= {low}, got {value}")
        if not (lr > 0 and math.isfinite(lr)):
            raise UsageFailure(f"--lr must be a positive number, got {lr}")

    @staticmethod
    def make_executor(name: str, scheduler: str | None, workers: int) -> Executor:
        """The executor of ``--executor``/``--scheduler`` (:mod:`sit_causal.experiments.executor`), built before
        any work:
        an unknown name, a scheduler without ``dask``, a missing engine or an unreachable scheduler is one
        line and exit code 2."""
        if name not in EXECUTORS:
            raise UsageFailure(f"--executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
        if scheduler is not None and name != "dask":
            raise UsageFailure("--scheduler needs --executor dask")
        if scheduler is not None and "://" not in scheduler:
            raise UsageFailure(f"--scheduler must be an address like tcp://host:8786, got {scheduler!r}")
        try:
            return make_executor(name, workers, scheduler)
        except (ExecutorError, ValueError) as err:
            raise UsageFailure(str(err)) from None

    @staticmethod
    def config(factors: int, tasks: int, seeds: int, seed: int, samples: int, datasets_per_task: int, steps: int,
               batch_size: int, lr: float, threads: int, workers: int, align_restarts: int, align_steps: int,
               **more: object) -> SimulateConfig:
        """The :class:`SimulateConfig` of checked shared options (``more``: the command's own fields)."""
        return SimulateConfig(
            factors=factors, tasks=tasks, seeds=seeds, seed=seed, samples=samples,
            datasets_per_task=datasets_per_task,
            train=SyntheticTrainConfig(steps=steps, batch_size=batch_size, lr=lr, threads=threads),
            workers=workers, align=AlignConfig().with_budget(align_restarts, align_steps), **more,  # type: ignore[arg-type]
        )


def parse_methods(text: str) -> tuple[str, ...]:
    """``--methods``: comma-separated names of :data:`~sit_causal.experiments.synthetic.SYNTHETIC_METHODS`, each once."""
    chosen = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in chosen if m not in SYNTHETIC_METHODS]
    if not chosen or bad:
        raise UsageFailure(f"unknown method {bad[0] if bad else text!r} in --methods; "
                           f"choose from {', '.join(SYNTHETIC_METHODS)}")
    dup = sorted({m for m in chosen if chosen.count(m) > 1})
    if dup:
        raise UsageFailure(f"--methods names {', '.join(dup)} more than once")
    return chosen


def parse_overrides(items: list[str], methods: tuple[str, ...]) -> dict[str, object]:
    """``--set KEY=VALUE``: fields of :class:`~sit_causal.experiments.synthetic.SyntheticModelConfig` or
    :class:`~sit_causal.objective.ObjectiveConfig` (values read as YAML scalars), checked against every
    method before any work."""
    import yaml

    from sit_causal.fileio import load_yaml

    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageFailure(f"--set {item!r} must look like KEY=VALUE")
        key = key.strip()
        if key in ("method", "n_factors", "x_dim", "n_tasks", "n_datasets"):
            raise UsageFailure(f"--set {key}: set by the run itself (use --factors, --tasks, --methods)")
        try:
            out[key] = load_yaml(raw)
        except yaml.YAMLError:
            out[key] = raw
    check_override_types(out)
    for method in methods:
        try:
            method_configs(method, **out)
        except (TypeError, ValueError) as err:
            raise UsageFailure(f"--set: {err}") from None
    return out


def check_override_types(values: dict[str, object]) -> None:
    """``--set`` values against the annotation of their field: a boolean is ``true``/``false`` (not the
    string ``maybe``), an integer an integer, a float a finite number (:class:`UsageFailure` otherwise)."""
    import dataclasses
    import typing

    from sit_causal.experiments.synthetic import SyntheticModelConfig
    from sit_causal.objective import ObjectiveConfig

    hints = {**typing.get_type_hints(ObjectiveConfig), **typing.get_type_hints(SyntheticModelConfig)}
    names = {f.name for cls in (ObjectiveConfig, SyntheticModelConfig) for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in names:
            continue  # method_configs names the unknown field
        tp = hints[key]
        options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, __import__("types").UnionType) \
            else (tp,)
        if value is None and type(None) in options:
            continue
        if bool in options and not isinstance(value, bool):
            raise UsageFailure(f"--set {key}: expected true or false, got {value!r}")
        if int in options and float not in options and (isinstance(value, bool) or not isinstance(value, int)):
            raise UsageFailure(f"--set {key}: expected an integer, got {value!r}")
        if float in options:
            if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
                with __import__("contextlib").suppress(ValueError):
                    value = values[key] = float(value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UsageFailure(f"--set {key}: expected a number, got {value!r}")
            if not math.isfinite(value):
                raise UsageFailure(f"--set {key}: expected a finite number, got {value!r}")


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


# ---------------------------------------------------------------------- simulate
def simulate_command(
    factors: int | None = typer.Option(None, "--factors",
                                       help=f"latent factors n [default: {DEFAULT_FACTORS}, or the graph's]"),
    tasks: int | None = typer.Option(None, "--tasks", help=f"tasks m [default: {DEFAULT_TASKS}, or the graph's]"),
    family: str = typer.Option(_DEFAULTS.family, "--family", help=f"prior family: {', '.join(FAMILY_NAMES)}"),
    graph: str | None = typer.Option(None, "--graph", metavar="FILE", help="task-to-factor graph JSON"),
    graph_mode: str = typer.Option(_DEFAULTS.graph_mode, "--graph-mode",
                                   help="random graph: uic, bernoulli:P, block, nested"),
    methods: str = typer.Option(",".join(DEFAULT_SYNTHETIC_METHODS), "--methods",
                                help=f"comma-separated methods of: {', '.join(SYNTHETIC_METHODS)}"),
    out: str | None = typer.Option(None, "--out", metavar="DIR",
                                   help="write results.json, PNG plots and every finished seed (seeds/) here"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out: keep its finished seeds"),
    max_memory_gb: float = typer.Option(DEFAULT_MEMORY_LIMIT_GB, "--max-memory-gb",
                                        help="refuse a run whose estimated peak memory is above this"),
    max_hours: float = typer.Option(DEFAULT_MAX_HOURS, "--max-hours",
                                    help="refuse a run whose estimated duration is above this"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace the run in --out"),
    latent_scm: float = typer.Option(_DEFAULTS.latent_scm, "--latent-scm", metavar="S",
                                     help="relate the latents by a linear SCM of strength S within each dataset "
                                          "(regime linear-left: the selection step searches over GL(n)); 0 = off"),
    overrides: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                        help="a field of the model or of the objective for every method, e.g. "
                                             "--set w_sparsity=2 --set learn_prior=false (repeatable)"),
    seeds: int = SharedOptions.seeds,
    seed: int = SharedOptions.seed,
    samples: int = SharedOptions.samples,
    datasets_per_task: int = SharedOptions.datasets_per_task,
    steps: int = SharedOptions.steps,
    batch_size: int = SharedOptions.batch_size,
    lr: float = SharedOptions.lr,
    threads: int = SharedOptions.threads,
    workers: int = SharedOptions.workers,
    align_restarts: int = SharedOptions.align_restarts,
    align_steps: int = SharedOptions.align_steps,
    executor: str = SharedOptions.executor,
    scheduler: str | None = SharedOptions.scheduler,
    as_json: bool = SharedOptions.as_json,
    quiet: bool = SharedOptions.quiet,
) -> int:
    """Train SIT and the baselines on data from the meta-SCM, several seeds: table, results.json, plots.

    Bad options are one line on stderr and exit code 2; conditions under which the theory cannot hold
    (a UIC-violating graph, too few datasets for the prior's variety) run with a one-line warning.
    """
    SharedOptions.check(seeds, seed, samples, datasets_per_task, steps, batch_size, lr, threads, workers,
                        align_restarts, align_steps)
    out_dir = check_run_dir(out, resume, overwrite)
    for name, value in (("--factors", factors), ("--tasks", tasks)):
        if value is not None and value < 1:
            raise UsageFailure(f"{name} must be >= 1, got {value}")
    if family not in FAMILY_NAMES:
        raise UsageFailure(f"unknown --family {family!r}; choose one of {', '.join(FAMILY_NAMES)}")
    if not (math.isfinite(latent_scm) and latent_scm >= 0):
        raise UsageFailure(f"--latent-scm must be a finite number >= 0, got {latent_scm}")
    chosen = parse_methods(methods)
    fields = parse_overrides(overrides, chosen)
    try:
        parse_graph_mode(graph_mode)
    except ValueError as err:
        raise UsageFailure(f"--graph-mode: {err}") from None
    graph_obj: TaskFactorGraph | None = None
    if graph is not None:
        try:
            graph_obj = load_graph(graph)
        except GraphError as err:
            raise UsageFailure(str(err)) from None
        if factors is not None and factors != graph_obj.n_factors:
            raise UsageFailure(f"--factors {factors} does not match the {graph_obj.n_factors} factors of {graph}")
        if tasks is not None and tasks != graph_obj.n_tasks:
            raise UsageFailure(f"--tasks {tasks} does not match the {graph_obj.n_tasks} tasks of {graph}")
        factors, tasks = graph_obj.n_factors, graph_obj.n_tasks
    config = SharedOptions.config(
        DEFAULT_FACTORS if factors is None else factors, DEFAULT_TASKS if tasks is None else tasks, seeds, seed,
        samples, datasets_per_task, steps, batch_size, lr, threads, workers, align_restarts, align_steps,
        family=family, graph_path=graph, graph_mode=graph_mode, methods=chosen, overrides=fields,
        latent_scm=latent_scm)
    need = estimate_memory_bytes(config) * min(config.workers, config.seeds)
    if not max_memory_gb > 0:
        raise UsageFailure(f"--max-memory-gb must be > 0, got {max_memory_gb}")
    if need > max_memory_gb * 1e9:
        raise UsageFailure(f"the run needs an estimated {need / 1e9:.1f} GB ({config.factors} factors, {config.tasks} "
                           f"tasks, {config.tasks * config.datasets_per_task} datasets x "
                           f"{config.samples + config.test_samples} samples, {min(config.workers, config.seeds)} "
                           f"worker(s)), above --max-memory-gb {max_memory_gb:g}; shrink the run or raise the limit")
    long_run = check_duration(config, max_hours)
    if graph_obj is None:
        try:
            graph_obj = run_graph(config)
        except (GraphError, ValueError) as err:
            raise UsageFailure(f"cannot build a {graph_mode} graph with {config.factors} factors and "
                               f"{config.tasks} tasks: {err}") from None
    done = load_finished_seeds(out_dir, config, graph_obj) if resume and out_dir is not None else {}
    if long_run is not None:
        warn(PROG, long_run)
    if done:
        print(f"{PROG}: resuming: seeds {', '.join(map(str, sorted(done)))} already finished in {out_dir}",
              file=sys.stderr)
    if overwrite and out_dir is not None:
        remove_outputs(out_dir, RUN_FILES)
    saver = None if out_dir is None else (lambda s, rows: save_seed(out_dir, config, graph_obj, s, rows))
    runner = SharedOptions.make_executor(executor, scheduler, config.workers)
    try:
        with runner:
            results = json_safe(run_simulation(config, quiet=quiet, graph=graph_obj, done=done, on_seed=saver,
                                               warn_fn=lambda line: warn(PROG, line), executor=runner))
    except KeyboardInterrupt:
        kept = sorted(int(p.stem.split("_")[1]) for p in (out_dir / "seeds").glob("seed_*.json")) if out_dir else []
        where = (f"finished seeds {', '.join(map(str, kept)) or 'none'} are kept in {out_dir / 'seeds'}; rerun with "
                 "--resume to continue" if out_dir is not None else "nothing was kept (no --out)")
        raise interrupted(PROG, where) from None
    if out_dir is not None:
        from sit_causal.experiments.report import plot_matched_correlation, plot_per_factor_recovery

        write_text_atomic(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
        plot_matched_correlation(results, out_dir / "matched_correlation.png")
        plot_per_factor_recovery(results, out_dir / "per_factor_recovery.png")
    if as_json:
        print(json.dumps(results))
    else:
        from sit_causal.experiments.report import format_table

        verdict = "holds" if results["uic_holds"] else "is violated"
        print(f"graph: {config.factors} factors, {config.tasks} tasks, the UIC {verdict}; {seeds} seed(s); "
              f"regime {results['regime']}")
        print(format_table(results["summary"]))
        if out is not None:
            print(f"wrote {Path(out) / 'results.json'} and plots")
    return 0
