"""``sit-causal simulate``: the command over :mod:`sit_causal.experiments.simulate`.

The command reads its options into one :class:`~sit_causal.experiments.options.RunOptions` (checked when
built), parses ``--methods`` and ``--set``, loads ``--graph``, builds the run's
:class:`~sit_causal.experiments.experiment.SimulateConfig` (which checks itself), hands it to
:func:`~sit_causal.experiments.simulate.prepare_simulation` (every other check, before any work) and
:func:`~sit_causal.experiments.simulate.run_and_save_simulation`, and prints the table of
:mod:`sit_causal.experiments.report`. Every bad value is one line on stderr and exit code 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from sit_causal.cli.common import interrupted, warn
from sit_causal.cli.run_options import RunFlags
from sit_causal.experiments.experiment import DEFAULT_MEMORY_LIMIT_GB, SimulateConfig
from sit_causal.experiments.options import RunInterrupted, RunOptions
from sit_causal.experiments.simulate import DEFAULT_MAX_HOURS, prepare_simulation, run_and_save_simulation
from sit_causal.experiments.synthetic import DEFAULT_SYNTHETIC_METHODS, SYNTHETIC_METHODS
from sit_causal.inputs import UsageFailure
from sit_causal.sim.expfam import FAMILY_NAMES
from sit_causal.sim.scm import DEFAULT_FACTORS, DEFAULT_TASKS
from sit_causal.theory.graph import GraphError, TaskFactorGraph, load_graph

__all__ = ["PROG", "parse_methods", "parse_overrides", "simulate_command"]

PROG = "sit-causal"
_DEFAULTS = SimulateConfig()


def parse_methods(text: str) -> tuple[str, ...]:
    """``--methods``: the comma-separated names, in order (the config checks each name and that none repeats);
    a list with no name is refused here."""
    chosen = tuple(m.strip() for m in text.split(",") if m.strip())
    if not chosen:
        raise UsageFailure(f"unknown method {text!r} in --methods; choose from {', '.join(SYNTHETIC_METHODS)}")
    return chosen


def parse_overrides(items: list[str]) -> dict[str, object]:
    """``--set KEY=VALUE``: each value read as a YAML scalar (a string where YAML cannot read it); the config
    checks the keys and values (:func:`~sit_causal.experiments.experiment.check_overrides`)."""
    import yaml

    from sit_causal.fileio import load_yaml

    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageFailure(f"--set {item!r} must look like KEY=VALUE")
        key = key.strip()
        try:
            out[key] = load_yaml(raw)
        except yaml.YAMLError:
            out[key] = raw
    return out


def _load_run_graph(path: str) -> TaskFactorGraph:
    try:
        return load_graph(path)
    except GraphError as err:
        raise UsageFailure(str(err)) from None


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
    seeds: int = typer.Option(RunOptions.seeds, "--seeds", help="seeds (data and model draws) per graph"),
    seed: int = RunFlags.seed,
    samples: int = RunFlags.samples,
    datasets_per_task: int = RunFlags.datasets_per_task,
    steps: int = RunFlags.steps,
    batch_size: int = RunFlags.batch_size,
    lr: float = RunFlags.lr,
    threads: int = RunFlags.threads,
    workers: int = RunFlags.workers,
    align_restarts: int = RunFlags.align_restarts,
    align_steps: int = RunFlags.align_steps,
    executor: str = RunFlags.executor,
    scheduler: str | None = RunFlags.scheduler,
    as_json: bool = RunFlags.as_json,
    quiet: bool = RunFlags.quiet,
) -> int:
    """Train SIT and the baselines on data from the meta-SCM, several seeds: table, results.json, plots.

    Bad options are one line on stderr and exit code 2; conditions under which the theory cannot hold
    (a UIC-violating graph, too few datasets for the prior's variety) run with a one-line warning.
    """
    options = RunOptions(seeds=seeds, seed=seed, samples=samples, datasets_per_task=datasets_per_task, steps=steps,
                         batch_size=batch_size, lr=lr, threads=threads, workers=workers,
                         align_restarts=align_restarts, align_steps=align_steps, executor=executor,
                         scheduler=scheduler, as_json=as_json, quiet=quiet)
    chosen, fields = parse_methods(methods), parse_overrides(overrides)
    graph_obj = None if graph is None else _load_run_graph(graph)
    n_factors = factors if factors is not None else DEFAULT_FACTORS if graph_obj is None else graph_obj.n_factors
    n_tasks = tasks if tasks is not None else DEFAULT_TASKS if graph_obj is None else graph_obj.n_tasks
    config = options.simulate_config(n_factors, n_tasks, family=family, graph_path=graph, graph_mode=graph_mode,
                                     methods=chosen, overrides=fields, latent_scm=latent_scm)
    if graph_obj is not None and config.factors != graph_obj.n_factors:
        raise UsageFailure(f"--factors {factors} does not match the {graph_obj.n_factors} factors of {graph}")
    if graph_obj is not None and config.tasks != graph_obj.n_tasks:
        raise UsageFailure(f"--tasks {tasks} does not match the {graph_obj.n_tasks} tasks of {graph}")
    run = prepare_simulation(config, graph_obj, out, resume, overwrite, max_memory_gb, max_hours)
    if run.long_run is not None:
        warn(PROG, run.long_run)
    if run.done:
        print(f"{PROG}: resuming: seeds {', '.join(map(str, sorted(run.done)))} already finished in {run.out_dir}",
              file=sys.stderr)
    runner = options.make_executor()
    try:
        results = run_and_save_simulation(run, runner, quiet=quiet, warn=lambda line: warn(PROG, line))
    except RunInterrupted as stop:
        raise interrupted(PROG, stop.kept) from None
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
