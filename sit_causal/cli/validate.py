"""``sit-causal validate``: the command over :mod:`sit_causal.experiments.validate` (the two stages of the
theory check and what they report are described there).

The command reads its options into one :class:`~sit_causal.experiments.options.RunOptions` (checked when
built), checks its own (``--stage``, sizes, ``--functions``, ``--modes``), builds the sweep's base
:class:`~sit_causal.experiments.experiment.SimulateConfig`, hands it to
:func:`~sit_causal.experiments.validate.prepare_validation` (every other check, before any work) and
:func:`~sit_causal.experiments.validate.run_and_save_validation`, and prints both stages' summaries.
"""

from __future__ import annotations

import json
from typing import Any

import typer

from sit_causal.cli.common import interrupted
from sit_causal.cli.run_options import RunFlags
from sit_causal.experiments.landscape import FUNCTIONS
from sit_causal.experiments.options import RunInterrupted, RunOptions
from sit_causal.experiments.validate import (
    DEFAULT_MODES,
    DEFAULT_THEORY_GRAPHS,
    STAGES,
    prepare_validation,
    run_and_save_validation,
)
from sit_causal.inputs import UsageFailure
from sit_causal.sim.graph_generators import parse_graph_mode
from sit_causal.sim.scm import DEFAULT_FACTORS, DEFAULT_TASKS

__all__ = ["validate_command"]


def validate_command(
    factors: int = typer.Option(DEFAULT_FACTORS, "--factors", help="latent factors n"),
    tasks: int = typer.Option(DEFAULT_TASKS, "--tasks", help="tasks m"),
    modes: str = typer.Option(DEFAULT_MODES, "--modes", help="comma-separated graph modes"),
    stage: str = typer.Option("both", "--stage", help="theory (no training), estimator (trained SIT) or both"),
    graphs: int = typer.Option(2, "--graphs", help="random graphs per mode (estimator stage)"),
    theory_graphs: int = typer.Option(DEFAULT_THEORY_GRAPHS, "--theory-graphs",
                                      help="random graphs per mode (theory stage)"),
    functions: str = typer.Option(",".join(FUNCTIONS), "--functions",
                                  help="theory stage: task functions, comma-separated: simulator (the "
                                       "meta-SCM's), interaction (the non-additive negative controls)"),
    seeds: int = typer.Option(2, "--seeds", help="seeds per graph (estimator stage)"),
    out: str | None = typer.Option(None, "--out", metavar="DIR", help="write validate.json and a PNG here"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace validate.json in --out"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run in --out (same settings)"),
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
    """Theory check in two stages: (1) theory, no training: the selection objective's margin along the
    ambiguity directions on exactly linear representations, scored against the UIC checker's labels
    (AUROC); (2) estimator: train SIT on many random graphs and report the recovery of the factors the
    checker calls identifiable (rate with CI, failures listed) and the AUROC of the matched correlation."""
    options = RunOptions(seeds=seeds, seed=seed, samples=samples, datasets_per_task=datasets_per_task, steps=steps,
                         batch_size=batch_size, lr=lr, threads=threads, workers=workers,
                         align_restarts=align_restarts, align_steps=align_steps, executor=executor,
                         scheduler=scheduler, as_json=as_json, quiet=quiet)
    if stage not in STAGES:
        raise UsageFailure(f"--stage must be one of {', '.join(STAGES)}, got {stage!r}")
    for name, value, low in (("--factors", factors, 2), ("--tasks", tasks, 1), ("--graphs", graphs, 1),
                             ("--theory-graphs", theory_graphs, 1)):
        if value < low:
            raise UsageFailure(f"{name} must be >= {low}, got {value}")
    kinds = tuple(k.strip() for k in functions.split(",") if k.strip())
    bad = [k for k in kinds if k not in FUNCTIONS]
    if not kinds or bad:
        raise UsageFailure(f"--functions: unknown kind {bad[0] if bad else functions!r}; choose from "
                           f"{', '.join(FUNCTIONS)}")
    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    if not mode_list:
        raise UsageFailure("--modes is empty")
    for m in mode_list:
        try:
            parse_graph_mode(m)
        except ValueError as err:
            raise UsageFailure(f"--modes: {err}") from None
    base = options.simulate_config(factors, tasks)
    out_dir = prepare_validation(base, stage, mode_list, kinds, theory_graphs, graphs, out, resume, overwrite)
    runner = options.make_executor()
    try:
        result = run_and_save_validation(base, stage, mode_list, kinds, theory_graphs, graphs, out_dir, runner,
                                         quiet=quiet)
    except RunInterrupted as stop:
        raise interrupted("sit-causal", stop.kept) from None
    if as_json:
        print(json.dumps(result))
        return 0
    if result["theory"] is not None:
        _print_theory(result["theory"])
    if result["estimator"] is not None:
        _print_estimator(result["estimator"])
    return 0


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _print_theory(theory: dict[str, Any]) -> None:
    cfg = theory["config"]
    print(f"stage 1 (theory, no training): {cfg['graphs']} graphs per mode, {len(cfg['modes'])} modes")
    for kind, per_form in theory["statistics"].items():
        for form, st in per_form.items():
            el = st["equal_likelihood"]
            print(f"  {kind} functions, {form} form: AUROC {_fmt(st['auroc'])} over {st['factors']} factors "
                  f"({st['identifiable']} identifiable); equal-likelihood: {el['not_identifiable_free']}/"
                  f"{el['not_identifiable']} non-identifiable free, {el['identifiable_pinned']}/{el['identifiable']} "
                  f"identifiable pinned")
            for mode, pm in st["per_mode"].items():
                print(f"    {mode}: AUROC {_fmt(pm['auroc'])}, median score identifiable "
                      f"{_fmt(pm['score_median_identifiable'], 1)}, not {_fmt(pm['score_median_not_identifiable'], 1)}")


def _print_estimator(result: dict[str, Any]) -> None:
    print(f"stage 2 (estimator): {len(result['factors'])} factors observed ({len(result['runs'])} trained models)")
    for title, stats, rec in (("UIC (linear ambiguity)", result, result["recovery"]["linear"]),
                              ("orthogonal ambiguity", result["orthogonal"], result["recovery"]["orthogonal"])):
        c, a, ba = stats["confusion"], stats["auroc"], stats["balanced_accuracy"]
        half = rec["rate_ci95_half_width"]
        print(f"{title}: identifiable factors recovered {rec['recovered']}/{rec['identifiable']}; mean over models "
              f"{_fmt(rec['rate_mean_over_models'])}" + ("" if half is None else f" +/- {half:.3f} (95% CI)")
              + f"; AUROC (matched corr vs. label) {_fmt(a)}, balanced accuracy {_fmt(ba)}")
        print("                       recovered  not recovered")
        print(f"  identifiable         {c['tp']:9d}  {c['fn']:13d}")
        print(f"  not identifiable     {c['fp']:9d}  {c['tn']:13d}")
        for f in rec["failures"]:
            print(f"  failure: {f['mode']} graph {f['graph_index']} seed {f['seed']} {f['factor']} "
                  f"(matched corr {f['matched_corr']:.3f}, mixes {'+'.join(f['learned_mixes']) or '-'})")
        for mode, pm in stats["per_mode"].items():
            print(f"  {mode}: mean corr identifiable {_fmt(pm['identifiable_mean_corr'])}, "
                  f"not identifiable {_fmt(pm['not_identifiable_mean_corr'])}")
