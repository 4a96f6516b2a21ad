"""The theory check of ``sit-causal validate``, in two stages reported separately (``--stage``; the command is
:mod:`sit_causal.cli.validate`).

**Stage 1, theory** (``--stage theory``; no training; :mod:`sit_causal.experiments.landscape`): for every graph mode
draw ``--theory-graphs`` random graphs; on an exactly linear representation ``B L + c`` of each graph's
meta-SCM, every factor's checker label (each form in its own regime: the orthogonal form with within-dataset
whitening and rotations, the UIC with general linear maps) is scored by the selection objective's margin
along the directions that move the factor (rotations in its planes; shears ``L_i + a L_j``), normalised by
bootstrap noise; reported as the AUROC of that score for the label, per form, pooled over the modes and
per mode, with the equal-likelihood test and the negative controls (``--functions interaction``: task
functions far from additive).

**Stage 2, estimator** (``--stage estimator``): trained SIT. The sweep: for every graph mode of ``--modes``
(default ``uic``, ``bernoulli:0.5``, ``block``, ``nested``; :func:`sit_causal.sim.graph_generators.generate_graph`)
draw ``--graphs`` random graphs with ``n`` factors and ``m`` tasks, and for each train SIT on ``--seeds``
fresh meta-SCMs (the training and scoring of :func:`sit_causal.experiments.runner.run_simulation`, method ``sit``
only). Every (graph, seed, factor) is one observation with

* the checker's label ``identifiable`` (:func:`sit_causal.theory.uic.check_uic`: empty mixing set);
* the score ``matched_corr``: the absolute Pearson correlation of the factor with its Hungarian-matched
  learned factor on held-out data;
* ``recovered``: :func:`sit_causal.experiments.runner.factor_recovered` (matched correlation >= 0.9 **and** the
  residual check: the matched learned factor, regressed on all true factors, names this factor alone);
* ``mix_consistent``: the true factors the matched learned factor mixes are within ``{i} ∪ M_i``
  (the checker's mixing set), i.e. the factor is mixed with at most the factors the checker names.

Reported:

* **AUROC** of the matched correlation as a score for the checker's label (positives = factors the
  checker calls identifiable). This is the threshold-free question "are identifiable factors recovered
  better than non-identifiable ones", computed with the Mann-Whitney formula (:func:`sit_causal.metrics.auroc`). The
  reverse reading (the checker's binary prediction as the score of "recovered") gives only one ROC
  point, an AUROC equal to the balanced accuracy at one arbitrary threshold; it is reported too, as
  ``balanced_accuracy``, together with the confusion table.
* the confusion table (checker's label x recovered), and the rate of mix-consistent non-identifiable factors;
* **the recovery rate of the factors the checker calls identifiable** (each form): pooled, and the mean over
  trained models with its 95 % confidence interval (:func:`sit_causal.stats.mean_ci`), with every failure
  listed as (mode, graph, seed, factor, matched correlation, learned mixes).

``--stage both`` (the default) runs stage 1, then stage 2; ``validate.json`` holds ``{"stage", "theory",
"estimator"}`` (a stage not run is ``null``).

With ``--out``, every finished piece is saved as it ends (``OUT/partial/``: the theory stage once done, then
each graph of the estimator stage), so Ctrl-C or a killed run loses at most the graph in progress;
``--resume`` continues (the saved pieces must have the same settings), and ``partial/`` is removed once
``validate.json`` is written.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from sit_causal.executor import Executor, LocalExecutor
from sit_causal.experiments.experiment import (
    DEFAULT_MEMORY_LIMIT_GB,
    RECOVERY_THRESHOLD,
    SimulateConfig,
    estimate_memory_bytes,
    json_safe,
)
from sit_causal.experiments.landscape import FUNCTIONS, LandscapeConfig, graph_landscape, landscape_statistics
from sit_causal.experiments.options import RunInterrupted
from sit_causal.experiments.runner import run_simulation
from sit_causal.fileio import check_output_dir, write_text_atomic
from sit_causal.inputs import UsageFailure
from sit_causal.metrics import auroc
from sit_causal.sim.graph_generators import generate_graph
from sit_causal.theory.graph import TaskFactorGraph
from sit_causal.theory.uic import check_uic

__all__ = ["DEFAULT_MODES", "DEFAULT_THEORY_GRAPHS", "MAX_ESTIMATOR_JOBS", "MAX_THEORY_JOBS", "PARTIAL", "STAGES",
           "check_sizes", "check_validate_dir", "confusion", "label_statistics", "load_piece", "prepare_validation",
           "recovery_statistics", "run_and_save_validation", "run_theory", "run_validation", "save_piece",
           "theory_job"]

DEFAULT_MODES = "uic,bernoulli:0.5,block,nested"
STAGES = ("theory", "estimator", "both")
DEFAULT_THEORY_GRAPHS = 10
PARTIAL = "partial"  # the folder of --out holding the finished pieces of an unfinished run
MAX_THEORY_JOBS = 100_000  # stage 1: landscape jobs (graphs x modes x functions); ~1 s each on one core
MAX_ESTIMATOR_JOBS = 10_000  # stage 2: trained models (graphs x modes x seeds); ~10 s each with the defaults


def _piece(out_dir: Path, name: str) -> Path:
    return out_dir / PARTIAL / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.json"


def load_piece(out_dir: Path | None, name: str, key: dict[str, Any]) -> Any:
    """The saved piece ``name`` of an unfinished run, or ``None``; a piece saved with other settings
    (``key``) is refused (:class:`UsageFailure`), since mixing it in would report what was not run."""
    if out_dir is None or not _piece(out_dir, name).is_file():
        return None
    path = _piece(out_dir, name)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UsageFailure(f"--resume: {path} is damaged; pass --overwrite to start again") from None
    if not isinstance(saved, dict) or saved.get("key") != json_safe(key):
        raise UsageFailure(f"--resume: {path} was run with other settings; use them, or pass --overwrite")
    return saved.get("value")


def save_piece(out_dir: Path | None, name: str, key: dict[str, Any], value: Any) -> None:
    """Save one finished piece (atomically) so that ``--resume`` skips it."""
    if out_dir is not None:
        write_text_atomic(_piece(out_dir, name), json.dumps(json_safe({"key": key, "value": value})) + "\n")


def confusion(predicted: np.ndarray, recovered: np.ndarray) -> dict[str, int]:
    """Counts of (checker's label, recovered): ``tp`` identifiable & recovered, ``fn`` identifiable & not
    recovered, ``fp`` not identifiable & recovered, ``tn`` neither."""
    p, r = np.asarray(predicted, bool), np.asarray(recovered, bool)
    return {"tp": int(np.sum(p & r)), "fn": int(np.sum(p & ~r)), "fp": int(np.sum(~p & r)),
            "tn": int(np.sum(~p & ~r))}


def theory_job(job: tuple[TaskFactorGraph, int, LandscapeConfig, str], report: Callable[[int], None]) -> list[Any]:
    """One (graph, seed, task-function kind) of stage 1 as an executor job: :func:`graph_landscape`'s rows."""
    graph, seed, cfg, kind = job
    rows = graph_landscape(graph, seed, cfg, kind)
    report(1)
    return rows


def run_theory(modes: list[str], graphs: int, n_factors: int, n_tasks: int, seed: int,
               functions: tuple[str, ...] = FUNCTIONS, config: LandscapeConfig | None = None,
               quiet: bool = False, executor: Executor | None = None) -> dict[str, Any]:
    """Stage 1 (module docstring): ``graphs`` graphs per mode, each with one meta-SCM (seed
    ``seed + 1000 g``), under every task-function kind of ``functions`` (the same graph and data draw), as
    jobs of ``executor`` (default: serial in this process).
    Returns ``{"statistics": {kind: {form: ...}}, "factors": [rows], "config": {...}}``."""
    from tqdm import tqdm

    cfg = LandscapeConfig() if config is None else config
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(8,)))
    jobs, keys = [], []
    for mode in modes:
        for g in range(graphs):
            graph = generate_graph(mode, n_factors, n_tasks, rng)
            for kind in functions:
                jobs.append((graph, seed + 1000 * g, cfg, kind))
                keys.append((mode, g, kind))
    found: dict[int, list[dict[str, Any]]] = {}
    bar = tqdm(total=len(jobs), disable=quiet, file=sys.stderr, desc="theory", unit="graph", mininterval=0.5)
    runner = LocalExecutor(1) if executor is None else executor
    try:
        runner.run(theory_job, jobs, lambda i, rows: found.__setitem__(i, rows), progress=bar.update,
                   weights=[1] * len(jobs))
    finally:
        bar.close()
    rows = [{"mode": keys[i][0], "graph_index": keys[i][1], "functions": keys[i][2], **r}
            for i in range(len(jobs)) for r in found[i]]
    stats = {kind: landscape_statistics([r for r in rows if r["functions"] == kind], modes) for kind in functions}
    return {"statistics": stats, "factors": rows,
            "config": {"modes": modes, "graphs": graphs, "factors": n_factors, "tasks": n_tasks, "seed": seed,
                       "functions": list(functions), **asdict(cfg)}}


def recovery_statistics(rows: list[dict[str, Any]], label: str) -> dict[str, Any]:
    """Stage 2's headline for the checker's label ``rows[k][label]``: how many of the factors it calls
    identifiable were recovered (pooled), the mean over trained models (mode, graph, seed) of each
    model's rate with its 95 % CI, and every failure."""
    from sit_causal.stats import mean_ci

    ident = [r for r in rows if r[label]]
    per_model: dict[tuple[str, int, int], list[bool]] = {}
    for r in ident:
        per_model.setdefault((r["mode"], r["graph_index"], r["seed"]), []).append(bool(r["recovered"]))
    rates = [float(np.mean(v)) for v in per_model.values()]
    mean, half = mean_ci(rates) if rates else (None, None)
    return {
        "identifiable": len(ident),
        "recovered": int(sum(r["recovered"] for r in ident)),
        "rate_pooled": (sum(r["recovered"] for r in ident) / len(ident)) if ident else None,
        "rate_mean_over_models": mean,
        "rate_ci95_half_width": None if half is None or math.isnan(half) else half,
        "models": len(rates),
        "failures": [{"mode": r["mode"], "graph_index": r["graph_index"], "seed": r["seed"], "factor": r["factor"],
                      "matched_corr": r["matched_corr"], "learned_mixes": r["learned_mixes"]}
                     for r in ident if not r["recovered"]],
    }


def run_validation(modes: list[str], graphs: int, base: SimulateConfig, quiet: bool = False,
                   executor: Executor | None = None, out_dir: Path | None = None) -> dict[str, Any]:
    """Stage 2, the sweep (module docstring): every graph's seeds run as jobs of ``executor`` (default: local,
    ``base.workers`` processes); returns the estimator part of ``validate.json``. ``out_dir``: each graph's
    results are saved there as it ends, and a graph saved before is not run again (``--resume``)."""
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    rng = np.random.default_rng(np.random.SeedSequence(base.seed, spawn_key=(7,)))
    for mode in modes:
        for g in range(graphs):
            graph = generate_graph(mode, base.factors, base.tasks, rng)
            report = check_uic(graph)
            cfg = replace(base, methods=("sit",), seed=base.seed + 1000 * g)
            key = {"modes": modes, "graphs": graphs, "config": base.to_dict(), "graph": graph.to_dict()}
            saved = load_piece(out_dir, f"estimator_{mode}_{g}", key)
            if not quiet:
                print(f"validate: {mode} graph {g + 1}/{graphs}, UIC {'holds' if report.uic_holds else 'fails'}"
                      f"{' (saved before)' if saved is not None else ''}", file=sys.stderr)
            if saved is None:
                fresh = run_simulation(cfg, quiet=quiet, graph=graph, executor=executor)["results"]
                res = json.loads(json.dumps(json_safe({"results": fresh})))  # as a resumed run reads it
                save_piece(out_dir, f"estimator_{mode}_{g}", key, res)
            else:
                res = saved
            mixing = {f.id: set(f.mixes_with) for f in report.factors}
            orth = check_uic(graph, ambiguity="orthogonal")
            mixing_orth = {f.id: set(f.mixes_with) for f in orth.factors}
            ident_orth = {f.id: f.identifiable for f in orth.factors}
            for r in res["results"]:
                runs.append({"mode": mode, "graph_index": g, "seed": r["seed"], "uic_holds": report.uic_holds,
                             "orthogonal_holds": orth.uic_holds, "graph": graph.to_dict(),
                             "mcc_pearson": r["mcc_pearson"], "learned_uic_holds": r["learned_uic_holds"]})
                for f in r["per_factor"]:
                    name = f["factor"]
                    rows.append({"mode": mode, "graph_index": g, "seed": r["seed"], "factor": name,
                                 "identifiable_predicted": f["identifiable_predicted"],
                                 "identifiable_orthogonal": ident_orth[name],
                                 "matched_corr": f["matched_corr"], "recovered": f["recovered"],
                                 "mixes_with": f["mixes_with"], "mixes_with_orthogonal": sorted(mixing_orth[name]),
                                 "learned_mixes": f["learned_mixes"],
                                 "mix_consistent": set(f["learned_mixes"]) <= {name, *mixing[name]},
                                 "mix_consistent_orthogonal": set(f["learned_mixes"]) <= {name, *mixing_orth[name]}})
    return {
        **label_statistics(rows, modes, "identifiable_predicted", "mix_consistent"),
        "recovery": {"linear": recovery_statistics(rows, "identifiable_predicted"),
                     "orthogonal": recovery_statistics(rows, "identifiable_orthogonal")},
        "auroc_definition": "Mann-Whitney AUROC of the matched |correlation| (score) for the checker's "
                            "label identifiable (positive)",
        "recovery_threshold": RECOVERY_THRESHOLD,
        "orthogonal": label_statistics(rows, modes, "identifiable_orthogonal", "mix_consistent_orthogonal"),
        "config": {"modes": modes, "graphs": graphs, **base.to_dict()},
        "runs": runs,
        "factors": rows,
    }


def label_statistics(rows: list[dict[str, Any]], modes: list[str], label: str, consistent: str) -> dict[str, Any]:
    """AUROC, balanced accuracy, confusion table, mix-consistency rate and per-mode mean correlations of
    the checker's label ``rows[k][label]`` (``identifiable_predicted``: the UIC; ``identifiable_orthogonal``:
    the orthogonal-ambiguity condition of :func:`sit_causal.theory.uic.check_uic`)."""
    pred = np.array([r[label] for r in rows], bool)
    score = np.array([r["matched_corr"] for r in rows], float)
    rec = np.array([r["recovered"] for r in rows], bool)
    table = confusion(pred, rec)
    positives, negatives = table["tp"] + table["fn"], table["tn"] + table["fp"]
    # balanced accuracy is undefined when one label is absent (a sweep of UIC graphs only): n/a, not a number
    balanced = (0.5 * (table["tp"] / positives + table["tn"] / negatives)) if positives and negatives else None
    non_id = [r for r in rows if not r[label]]
    per_mode = {}
    for mode in modes:
        sel = [r for r in rows if r["mode"] == mode]
        ident = [r["matched_corr"] for r in sel if r[label]]
        not_ident = [r["matched_corr"] for r in sel if not r[label]]
        per_mode[mode] = {"factors": len(sel),
                          "identifiable_mean_corr": float(np.mean(ident)) if ident else None,
                          "not_identifiable_mean_corr": float(np.mean(not_ident)) if not_ident else None}
    a = auroc(score, pred)
    return {
        "auroc": None if math.isnan(a) else a,
        "balanced_accuracy": balanced,
        "confusion": table,
        "mix_consistent_rate_not_identifiable": (float(np.mean([r[consistent] for r in non_id]))
                                                 if non_id else None),
        "per_mode": per_mode,
    }


def check_sizes(stage: str, modes: int, functions: int, theory_graphs: int, graphs: int, seeds: int) -> None:
    """Refuse, before any work, a run whose job count (the estimate of its size) is beyond the limits."""
    theory = modes * functions * theory_graphs
    if stage in ("theory", "both") and theory > MAX_THEORY_JOBS:
        raise UsageFailure(f"--theory-graphs {theory_graphs}: {theory} landscape jobs ({modes} mode(s) x {functions} "
                           f"function kind(s)), about {theory / 3600:.3g} CPU-hours at ~1 s each; at most "
                           f"{MAX_THEORY_JOBS} jobs")
    models = modes * graphs * seeds
    if stage in ("estimator", "both") and models > MAX_ESTIMATOR_JOBS:
        raise UsageFailure(f"--graphs {graphs} x --seeds {seeds} x {modes} mode(s): {models} trained models, about "
                           f"{models * 10 / 3600:.3g} CPU-hours at ~10 s each; at most {MAX_ESTIMATOR_JOBS}")


def check_validate_dir(out: str | None, resume: bool, overwrite: bool) -> Path | None:
    """The ``--out`` folder, checked before any work: a finished ``validate.json`` or an unfinished run
    (``partial/``) is kept unless ``--overwrite`` (or ``--resume`` for the unfinished run)."""
    if resume and overwrite:
        raise UsageFailure("--resume and --overwrite exclude each other")
    if out is None:
        if resume:
            raise UsageFailure("--resume needs --out")
        return None
    out_dir = check_output_dir(out, "--out")
    if (out_dir / "validate.json").exists() and not overwrite:
        raise UsageFailure(f"{out_dir} already holds validate.json; pass --overwrite to replace it")
    if (out_dir / PARTIAL).exists():
        if overwrite:
            shutil.rmtree(out_dir / PARTIAL)
        elif not resume:
            raise UsageFailure(f"{out_dir} holds an interrupted run ({PARTIAL}/); pass --resume to continue it or "
                               "--overwrite to start again")
    elif resume:
        raise UsageFailure(f"--resume: {out_dir} holds no interrupted run (no {PARTIAL}/)")
    return out_dir


# ---------------------------------------------------------------------- the run
def prepare_validation(base: SimulateConfig, stage: str, modes: list[str], functions: tuple[str, ...],
                       theory_graphs: int, graphs: int, out: str | None, resume: bool,
                       overwrite: bool) -> Path | None:
    """Every check of a sweep before the work, in order: one graph's estimated memory (``base.workers`` seeds at
    once) within :data:`~sit_causal.experiments.experiment.DEFAULT_MEMORY_LIMIT_GB`, every mode able to build a
    graph of ``base.factors`` factors and ``base.tasks`` tasks, the job counts (:func:`check_sizes`) and the
    output folder (:func:`check_validate_dir`, returned). Raises :class:`UsageFailure` with one line."""
    factors, tasks, workers, seeds = base.factors, base.tasks, base.workers, base.seeds
    need = estimate_memory_bytes(base) * min(workers, seeds)
    if need > DEFAULT_MEMORY_LIMIT_GB * 1e9:
        raise UsageFailure(f"one graph's run needs an estimated {need / 1e9:.1f} GB ({factors} factors, {tasks} tasks, "
                           f"{min(workers, seeds)} worker(s)), above {DEFAULT_MEMORY_LIMIT_GB:g} GB; shrink the run")
    try:  # every mode must be able to build a graph of this size
        probe = np.random.default_rng(0)
        for m in modes:
            generate_graph(m, factors, tasks, probe)
    except ValueError as err:
        raise UsageFailure(f"cannot build graphs with {factors} factors and {tasks} tasks: {err}") from None
    check_sizes(stage, len(modes), len(functions), theory_graphs, graphs, seeds)
    return check_validate_dir(out, resume, overwrite)


def run_and_save_validation(base: SimulateConfig, stage: str, modes: list[str], functions: tuple[str, ...],
                            theory_graphs: int, graphs: int, out_dir: Path | None, executor: Executor,
                            quiet: bool = False) -> dict[str, Any]:
    """Run the stages ``stage`` asks for on ``executor`` and return ``{"stage", "theory", "estimator"}``.

    Stage 1 (:func:`run_theory`) on ``theory_graphs`` graphs per mode under every kind of ``functions``,
    stage 2 (:func:`run_validation`) on ``graphs`` graphs per mode with the seeds of ``base``. With ``out_dir``
    every finished piece is saved as it ends and a piece saved before is not run again (``--resume``);
    the finished sweep writes ``validate.json`` (and, with stage 2, ``theory_check.png``) and removes
    ``partial/``. Ctrl-C raises :class:`~sit_causal.experiments.options.RunInterrupted` naming what was kept."""
    result: dict[str, Any] = {"stage": stage, "theory": None, "estimator": None}
    try:
        with executor:
            if stage in ("theory", "both"):
                cfg = LandscapeConfig(datasets_per_task=base.datasets_per_task, samples=base.samples)
                key = {"modes": modes, "graphs": theory_graphs, "factors": base.factors, "tasks": base.tasks,
                       "seed": base.seed, "functions": list(functions), "landscape": asdict(cfg)}
                result["theory"] = load_piece(out_dir, "theory", key)
                if result["theory"] is None:
                    result["theory"] = run_theory(modes, theory_graphs, base.factors, base.tasks, base.seed,
                                                  functions, cfg, quiet=quiet, executor=executor)
                    save_piece(out_dir, "theory", key, result["theory"])
            if stage in ("estimator", "both"):
                result["estimator"] = run_validation(modes, graphs, base, quiet=quiet, executor=executor,
                                                     out_dir=out_dir)
    except KeyboardInterrupt:
        pieces = sorted(p.stem for p in (out_dir / PARTIAL).glob("*.json")) if out_dir is not None else []
        raise RunInterrupted(f"{len(pieces)} finished piece(s) kept in {out_dir / PARTIAL}; rerun with --resume to "
                             "continue" if out_dir is not None else "nothing was kept (no --out)") from None
    if out_dir is not None:
        write_text_atomic(out_dir / "validate.json", json.dumps(result, indent=2) + "\n")
        shutil.rmtree(out_dir / PARTIAL, ignore_errors=True)
        est = result["estimator"]
        if est is not None:
            from sit_causal.experiments.report import plot_theory_check

            theory = (result["theory"] or {}).get("statistics", {}).get("simulator")
            plot_theory_check([r["matched_corr"] for r in est["factors"]],
                              [r["identifiable_predicted"] for r in est["factors"]],
                              est["auroc"] if est["auroc"] is not None else math.nan,
                              RECOVERY_THRESHOLD, out_dir / "theory_check.png", models=len(est["runs"]),
                              stage1={form: st["auroc"] for form, st in theory.items()} if theory else None)
    return result
