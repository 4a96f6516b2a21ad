"""``sit-nlp testbed``: the known-truth text testbed's commands (imports stay light until one runs).

* ``testbed build`` draws a testbed from the meta-SCM into ``--out`` (:func:`sit_nlp.testbed.build.write_testbed`).
* ``testbed run`` trains every (method, seed) job on it (:mod:`sit_nlp.testbed.jobs`), computes the positive
  controls (:mod:`sit_nlp.testbed.controls`) and writes the report (:mod:`sit_nlp.testbed.report`) into
  ``--out``: ``runs/METHOD/seedS/`` (the training run, predictions, ``result.json``, ``map_2d.json``),
  ``report.json``, ``report.md``, ``report.png`` and ``report_map.png``. Jobs run in ``--jobs`` worker
  processes (spawned; one torch thread each on CPU); a finished job's ``result.json`` is reused on a rerun
  with the same settings (``--overwrite`` starts again).

How they end: a bad option or folder is one line and exit code 2 before any work
(:mod:`sit_nlp.testbed.checks`); a failed positive-control gate writes the report and exits 1 with one line
(the comparison is void); Ctrl-C exits 130 with one line naming the finished runs kept in ``--out``.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from sit_causal.cli.common import interrupted, make_app
from sit_causal.fileio import check_output_dir
from sit_causal.inputs import UsageFailure
from sit_nlp.testbed import jobs as testbed_jobs
from sit_nlp.testbed.backbone import DECODER_FOLDER, ensure_decoder_backbone
from sit_nlp.testbed.build import MECHANISMS, TestbedError, load_testbed_config, write_testbed
from sit_nlp.testbed.checks import check_backbone, check_reuse, check_run_request
from sit_nlp.testbed.controls import oracle_accuracy, prior_accuracy, testbed_controls
from sit_nlp.testbed.jobs import TESTBED_METHODS, default_threads, discard_runs, finished_runs, plan_jobs
from sit_nlp.testbed.report import build_report, default_min_gap, write_report

__all__ = ["testbed_app", "testbed_build_command", "testbed_run_command"]

testbed_app = make_app("A known-truth text testbed: build it from the meta-SCM, run vanilla and SIT on it.")


def _keeps_work_on_interrupt(command: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``testbed run``: Ctrl-C exits 130 with one line naming the finished runs kept in ``--out``."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            out = Path(kwargs.get("out") or ".")
            kept = finished_runs(out)
            what = (f"finished runs {', '.join(kept)} are kept in {out / 'runs'}" if kept
                    else "no run had finished")
            raise interrupted("sit-nlp", f"{what}; rerun the same command to continue") from None

    return wrapper


def _end_on_gate(verdict: dict[str, Any]) -> None:
    """A failed positive-control gate: one line and exit code 1 (the report is written, its comparison void)."""
    if not verdict.get("passed"):
        print("sit-nlp: the positive-control gate failed: the SIT-vs-vanilla comparison is void "
              "(report.json says why)", file=sys.stderr)
        raise typer.Exit(1)


@testbed_app.command("build")
def testbed_build_command(
    out: Path = typer.Option(..., "--out", help="folder to write the testbed into (new or empty)"),
    seed: int = typer.Option(0, "--seed", help="seed of the graph, the dataset parameters and the samples"),
    config: Path | None = typer.Option(None, "--config", help="YAML mapping of testbed keys (sizes, rates, model)"),
    mechanism: str | None = typer.Option(None, "--mechanism", help="backdoor (default: the meta-SCM's spurious "
                                         "correlation through the source) or anti-causal (a label-caused shortcut)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a testbed already in --out"),
) -> None:
    """Draw a known-truth text testbed from the meta-SCM: records, true graph, tokenizer, random BART."""
    if seed < 0:
        raise UsageFailure(f"--seed must be >= 0, got {seed}")
    if mechanism is not None and mechanism not in MECHANISMS:
        raise UsageFailure(f"--mechanism must be one of {', '.join(MECHANISMS)}, got {mechanism!r}")
    try:
        cfg = load_testbed_config(config, {"mechanism": mechanism} if mechanism else None)
    except TestbedError as err:
        raise UsageFailure(str(err)) from None
    if out.exists() and not out.is_dir():
        raise UsageFailure(f"--out {out}: is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageFailure(f"--out {out}: already holds files; pass --overwrite to replace them")
    check_output_dir(out, "--out", replace=True)
    meta = write_testbed(cfg, seed, out)
    c = meta["counts"]
    print(f"wrote the {meta['mechanism']} testbed to {out}: {c['train']} train, {c['validation']} validation, "
          f"{c['heldout']} held-out "
          f"records; {len(meta['tasks'])} training tasks, {len(meta['heldout_tasks'])} held-out; vocabulary "
          f"{meta['vocabulary_size']}; BART {meta['model_parameters']:,} parameters")


@testbed_app.command("run")
@_keeps_work_on_interrupt
def testbed_run_command(
    data: Path = typer.Option(..., "--data", help="a folder written by `sit-nlp testbed build`"),
    out: Path = typer.Option(..., "--out", help="folder for the runs and the report"),
    seeds: int = typer.Option(5, "--seeds", help="paired seeds 0..N-1 (data order and new modules' init)"),
    methods: str = typer.Option("vanilla,sit", "--methods",
                                help=f"comma-separated, from {', '.join(TESTBED_METHODS)}"),
    steps: int = typer.Option(3000, "--steps", help="optimizer steps per run"),
    batch_size: int = typer.Option(32, "--batch-size", help="examples per step"),
    lr: float = typer.Option(2e-3, "--lr", help="learning rate"),
    quick: bool = typer.Option(False, "--quick", help="one seed, vanilla and sit"),
    jobs: int = typer.Option(1, "--jobs", help="runs at once (separate processes)"),
    fewshot_ks: str = typer.Option("8,32", "--fewshot-ks", help="labelled examples per held-out task to adapt on"),
    fewshot_steps: int = typer.Option(100, "--fewshot-steps", help="steps of every few-shot adaptation"),
    threads: int | None = typer.Option(None, "--threads", help="torch threads per run (default 1 on CPU)"),
    oracle_tolerance: float = typer.Option(0.03, "--oracle-tolerance", help="gate (a): oracle >= ceiling - this"),
    min_gap: float | None = typer.Option(None, "--min-gap", help="gate (b): vanilla aligned - flipped >= this "
                                         "(default 0.15 on backdoor, 0.20 on anti-causal)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="discard finished runs in --out and start again"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    backbone: str = typer.Option("encoder-decoder", "--backbone",
                                 help="encoder-decoder (the random BART) or decoder-only / decoder (the random "
                                      "Llama-shaped causal LM of the same size)"),
) -> None:
    """Train vanilla, SIT and ablations on a testbed; gate, evaluate every split, write report.json."""
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if quick:
        seeds, names = 1, ["vanilla", "sit"]
    ks = check_run_request(data, names, seeds=seeds, steps=steps, batch_size=batch_size, jobs=jobs, lr=lr,
                           fewshot_ks=fewshot_ks, fewshot_steps=fewshot_steps, threads=threads,
                           oracle_tolerance=oracle_tolerance, min_gap=min_gap)
    backbone = check_backbone(backbone, names)
    check_output_dir(out, "--out")
    if backbone == "decoder-only" and not (data / DECODER_FOLDER / "config.json").is_file():
        ensure_decoder_backbone(data)  # a testbed built before the decoder-only backbone existed
        print(f"wrote the decoder-only backbone into {data / DECODER_FOLDER}", file=sys.stderr)
    check_reuse(plan_jobs(data, out, names, seeds, steps, batch_size, lr, threads, ks, fewshot_steps, backbone),
                overwrite)
    if (out / "runs").exists() and not overwrite and any((out / "runs").rglob("result.json")):
        print(f"{out}: reusing finished runs (pass --overwrite to start again)", file=sys.stderr)
    if overwrite:
        discard_runs(out)
    meta = json.loads((data / "testbed.json").read_text(encoding="utf-8"))
    if threads is None:
        threads = default_threads()
    job_list = plan_jobs(data, out, names, seeds, steps, batch_size, lr, threads, ks, fewshot_steps, backbone)
    start = time.perf_counter()
    oracle, prior = oracle_accuracy(data), prior_accuracy(data)
    invariant = any(TESTBED_METHODS[m].invariance is not None for m in names)
    controls = testbed_controls(data, meta, invariant=invariant)
    results = testbed_jobs.run_jobs(job_list, jobs, quiet)
    settings = {"methods": names, "seeds": seeds, "steps": steps, "batch_size": batch_size, "lr": lr, "jobs": jobs,
                "threads": threads, "backbone": backbone}
    if min_gap is None:
        min_gap = default_min_gap(meta)
    report, table, gate_line = build_report(data, meta, settings, oracle, prior, controls, results, oracle_tolerance,
                                            min_gap, time.perf_counter() - start)
    out.mkdir(parents=True, exist_ok=True)
    write_report(out, report, table, gate_line, oracle, prior, results)
    print(table + gate_line)
    _end_on_gate(report["gate"])
