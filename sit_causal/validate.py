"""``sit-causal validate``: does the UIC checker predict which factors SIT recovers?

The sweep: for every graph mode of ``--modes`` (default ``uic``, ``bernoulli:0.5``, ``block``,
``nested``; :func:`sit_causal.graph_generators.generate_graph`) draw ``--graphs`` random graphs with
``n`` factors and ``m`` tasks, and for each train SIT on ``--seeds`` fresh meta-SCMs (the training and
scoring of :func:`sit_causal.experiment.run_simulation`, method ``sit`` only). Every (graph, seed, factor)
is one observation with

* the checker's label ``identifiable`` (:func:`sit_causal.uic.check_uic`: empty mixing set);
* the score ``matched_corr``: the absolute Pearson correlation of the factor with its Hungarian-matched
  learned factor on held-out data;
* ``recovered``: :func:`sit_causal.experiment.factor_recovered` (matched correlation >= 0.9 **and** the
  residual check: the matched learned factor, regressed on all true factors, names this factor alone);
* ``mix_consistent``: the true factors the matched learned factor mixes are within ``{i} ∪ M_i``
  (the checker's mixing set), i.e. the factor is mixed with at most the factors the checker names.

Reported:

* **AUROC** of the matched correlation as a score for the checker's label (positives = factors the
  checker calls identifiable). This is the threshold-free question "are identifiable factors recovered
  better than non-identifiable ones", computed with the Mann-Whitney formula (:func:`auroc`). The
  reverse reading (the checker's binary prediction as the score of "recovered") gives only one ROC
  point, an AUROC equal to the balanced accuracy at one arbitrary threshold; it is reported too, as
  ``balanced_accuracy``, together with the confusion table.
* the confusion table (checker's label x recovered), and the rate of mix-consistent non-identifiable factors.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from typing import Any

import numpy as np
import typer

from sit_causal.cli_helpers import UsageFailure, check_output_dir, write_text_atomic
from sit_causal.experiment import RECOVERY_THRESHOLD, SimulateConfig, run_simulation
from sit_causal.graph_generators import generate_graph, parse_graph_mode
from sit_causal.metrics import auroc
from sit_causal.scm import DEFAULT_FACTORS, DEFAULT_TASKS
from sit_causal.simulate import SharedOptions
from sit_causal.uic import check_uic

__all__ = ["DEFAULT_MODES", "auroc", "confusion", "label_statistics", "run_validation", "validate_command"]

DEFAULT_MODES = "uic,bernoulli:0.5,block,nested"


def confusion(predicted: np.ndarray, recovered: np.ndarray) -> dict[str, int]:
    """Counts of (checker's label, recovered): ``tp`` identifiable & recovered, ``fn`` identifiable & not
    recovered, ``fp`` not identifiable & recovered, ``tn`` neither."""
    p, r = np.asarray(predicted, bool), np.asarray(recovered, bool)
    return {"tp": int(np.sum(p & r)), "fn": int(np.sum(p & ~r)), "fp": int(np.sum(~p & r)),
            "tn": int(np.sum(~p & ~r))}


def run_validation(modes: list[str], graphs: int, base: SimulateConfig, quiet: bool = False) -> dict[str, Any]:
    """Run the sweep (module docstring); returns the results object written to ``validate.json``."""
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    rng = np.random.default_rng(np.random.SeedSequence(base.seed, spawn_key=(7,)))
    for mode in modes:
        for g in range(graphs):
            graph = generate_graph(mode, base.factors, base.tasks, rng)
            report = check_uic(graph)
            cfg = replace(base, methods=("sit",), seed=base.seed + 1000 * g)
            if not quiet:
                print(f"validate: {mode} graph {g + 1}/{graphs}, UIC {'holds' if report.uic_holds else 'fails'}",
                      file=sys.stderr)
            res = run_simulation(cfg, quiet=quiet, graph=graph)
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
    the orthogonal-ambiguity condition of :func:`sit_causal.uic.check_uic`)."""
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


def validate_command(
    factors: int = typer.Option(DEFAULT_FACTORS, "--factors", help="latent factors n"),
    tasks: int = typer.Option(DEFAULT_TASKS, "--tasks", help="tasks m"),
    modes: str = typer.Option(DEFAULT_MODES, "--modes", help="comma-separated graph modes"),
    graphs: int = typer.Option(2, "--graphs", help="random graphs per mode"),
    seeds: int = typer.Option(2, "--seeds", help="seeds per graph"),
    out: str | None = typer.Option(None, "--out", metavar="DIR", help="write validate.json and a PNG here"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace validate.json in --out"),
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
    as_json: bool = SharedOptions.as_json,
    quiet: bool = SharedOptions.quiet,
) -> int:
    """Theory check: train SIT on many random graphs (holding and violating the UIC) and measure how well
    the UIC checker predicts which factors are recovered (AUROC, confusion table, plot)."""
    SharedOptions.check(seeds, seed, samples, datasets_per_task, steps, batch_size, lr, threads, workers,
                        align_restarts, align_steps)
    for name, value, low in (("--factors", factors, 2), ("--tasks", tasks, 1), ("--graphs", graphs, 1)):
        if value < low:
            raise UsageFailure(f"{name} must be >= {low}, got {value}")
    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    if not mode_list:
        raise UsageFailure("--modes is empty")
    for m in mode_list:
        try:
            parse_graph_mode(m)
        except ValueError as err:
            raise UsageFailure(f"--modes: {err}") from None
    try:  # every mode must be able to build a graph of this size
        probe = np.random.default_rng(0)
        for m in mode_list:
            generate_graph(m, factors, tasks, probe)
    except ValueError as err:
        raise UsageFailure(f"cannot build graphs with {factors} factors and {tasks} tasks: {err}") from None
    base = SharedOptions.config(factors, tasks, seeds, seed, samples, datasets_per_task, steps, batch_size, lr,
                                threads, workers, align_restarts, align_steps)
    out_dir = None if out is None else check_output_dir(out, "--out")
    if out_dir is not None and (out_dir / "validate.json").exists() and not overwrite:
        raise UsageFailure(f"{out_dir} already holds validate.json; pass --overwrite to replace it")
    try:
        result = run_validation(mode_list, graphs, base, quiet=quiet)
    except KeyboardInterrupt:
        print("sit-causal: interrupted: nothing written (validate keeps no partial sweep)", file=sys.stderr)
        raise typer.Exit(130) from None
    if out_dir is not None:
        write_text_atomic(out_dir / "validate.json", json.dumps(result, indent=2) + "\n")
        from sit_causal.report import plot_theory_check

        plot_theory_check([r["matched_corr"] for r in result["factors"]],
                          [r["identifiable_predicted"] for r in result["factors"]],
                          result["auroc"] if result["auroc"] is not None else math.nan,
                          RECOVERY_THRESHOLD, out_dir / "theory_check.png")
    if as_json:
        print(json.dumps(result))
    else:
        print(f"factors observed: {len(result['factors'])} ({len(result['runs'])} trained models)")
        for title, stats in (("UIC (linear ambiguity)", result), ("orthogonal ambiguity", result["orthogonal"])):
            c, a, ba = stats["confusion"], stats["auroc"], stats["balanced_accuracy"]
            print(f"{title}: AUROC (matched corr vs. checker's label) {'n/a' if a is None else f'{a:.3f}'}, "
                  f"balanced accuracy {'n/a' if ba is None else f'{ba:.3f}'}")
            print("                       recovered  not recovered")
            print(f"  identifiable         {c['tp']:9d}  {c['fn']:13d}")
            print(f"  not identifiable     {c['fp']:9d}  {c['tn']:13d}")
            for mode, pm in stats["per_mode"].items():
                def fmt(v: float | None) -> str:
                    return "-" if v is None else f"{v:.3f}"
                print(f"  {mode}: mean corr identifiable {fmt(pm['identifiable_mean_corr'])}, "
                      f"not identifiable {fmt(pm['not_identifiable_mean_corr'])}")
    return 0
