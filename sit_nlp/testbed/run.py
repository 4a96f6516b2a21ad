"""``sit-nlp testbed run``: train every method on a testbed, evaluate every split, gate, compare.

For every (method, seed) a training config is generated (:func:`training_config`: the testbed's random BART
and word-level tokenizer as a local backbone, ``train.threads`` = 1 on CPU, ``train.seed`` = ``model.init_seed``
= the seed, so a seed varies both the data order and the new modules' initialisation, paired across
methods) and trained through :func:`sit_nlp.training.loop.train`; the final model is evaluated on ``heldout.jsonl``
with :func:`sit_nlp.evaluation.evaluate.evaluate_records` and scored by :mod:`sit_nlp.testbed.evaluation`. Jobs run
in ``--jobs`` worker processes (spawned; one torch thread each on CPU); a finished job's ``result.json`` is
reused on a rerun (``--overwrite`` starts again).

Methods (:data:`METHODS`): ``vanilla`` (no latent module), ``sit`` (the package's SIT recipe with the
selection step), and the ablations ``sit-no-uic`` (``loss.w_uic = 0``), ``sit-no-distinction``
(``loss.w_distinction = 0``) and ``sit-open`` (``model.selection = none``, no selection step: every gate
open); and the variant ``sit-input`` (``model.factor_input = input``: the factors are inferred from the
record's input alone, and the instruction reaches the decoder only as the mask and one task token).

**Positive-control gate** (decided before any SIT-vs-vanilla comparison is read):

(a) an oracle that reads only each task's true attributes ``b[S_t]`` (a logistic regression on the
    indicators of their ``2^|S_t|`` joint values, so any function of them), fit on the training records
    (noisy labels), reaches the ceiling ``1 - test_label_noise`` within ``--oracle-tolerance`` on every yes/no
    split (held-out tasks: two-fold cross-fitting on their records);
(b) vanilla's ``aligned`` accuracy minus its ``flipped`` accuracy, mean over seeds, is at least
    ``--min-gap`` (0.20): vanilla did learn the shortcut.

If either fails the report says so and states no SIT-vs-vanilla claim. Outputs in ``--out``: ``runs/
METHOD/seedS/`` (the training run, predictions, ``result.json``), ``report.json``, ``report.md`` (the
table, with the few-shot table), ``report.png`` (accuracy per split and method, 95 % CIs) and ``report_map.png``
(the 2-D maps of each method's first seed), all written atomically. Every job also measures few-shot
adaptation on the held-out tasks (:mod:`sit_nlp.testbed.fewshot`) and writes its 2-D map (``map_2d.json``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import typer

from sit_causal.fileio import check_output_dir, write_text_atomic
from sit_causal.inputs import UsageFailure
from sit_nlp.testbed.checks import (
    check_reuse,
    check_run_values,
    check_testbed_folder,
    end_on_gate,
    keeps_work_on_interrupt,
)

__all__ = ["METHODS", "Job", "oracle_accuracy", "prior_accuracy", "run_command", "run_job", "training_config"]

METHODS: dict[str, dict[str, Any]] = {
    "vanilla": {"model": {"method": "vanilla"}},
    "sit": {},
    "sit-no-uic": {"loss": {"w_uic": 0.0}},
    "sit-no-distinction": {"loss": {"w_distinction": 0.0}},
    "sit-open": {"model": {"selection": "none"}, "graph": {"find_at": None}},
    "sit-input": {"model": {"factor_input": "input"}},
    "sit-formatted": {"model": {"factor_input": "formatted"}},
    "sit-true-graph": {"graph": {"from_file": "graph.json", "find_at": None}},
    "sit-prior-instruction": {"model": {"prior_context": "instruction"}},
    "sit-prior-none": {"model": {"prior_context": "none"}},
    "sit-sentence": {"model": {"factor_pool": "sentence", "factor_dim": 4}},
    "sit-sentence-1d": {"model": {"factor_pool": "sentence", "factor_dim": 1}},
}
"""Each method's changes to the shared training config (sections of :class:`sit_nlp.training.config.Config`); a
``graph.from_file`` is a file of the testbed folder."""


def training_config(data: Path, out_dir: Path, method: str, seed: int, steps: int, threads: int | None,
                    batch_size: int = 32, lr: float = 2e-3) -> dict[str, Any]:
    """The nested config of one job (``sit_nlp.training.config.config_from_dict`` reads it)."""
    base: dict[str, dict[str, Any]] = {
        "model": {"backbone": str(data / "model"), "method": "sit", "init_seed": seed, "n_factors": 8,
                  "factor_dim": 16, "latent_hidden": 64, "source_decoder_layers": 1, "source_max_len": 16,
                  "task_bank_size": 64, "factor_input": "input", "prior_context": "dataset"},
        "data": {"train_file": str(data / "train.jsonl"), "eval_file": str(data / "validation.jsonl"),
                 "max_source_len": 64, "max_target_len": 12, "max_instruction_len": 32,
                 "length_group_size": 1},  # mixed batches: length-sorted windows would give one-task batches
        "graph": {"find_at": 0.5, "examples_per_task": 32},
        "train": {"out_dir": str(out_dir), "seed": seed, "batch_size": batch_size, "max_steps": steps, "lr": lr,
                  "warmup_steps": max(1, steps // 20), "log_every": max(1, steps // 10), "save_every": 0,
                  "keep_checkpoints": 1, "quiet": True, "threads": threads},
    }
    for section, values in METHODS[method].items():
        for key, value in values.items():
            base.setdefault(section, {})[key] = str(data / value) if key == "from_file" else value
    return base


@dataclass(frozen=True)
class Job:
    method: str
    seed: int
    data: str
    out: str
    steps: int
    threads: int | None
    batch_size: int
    lr: float
    fewshot_ks: tuple[int, ...] = (8, 32)
    fewshot_steps: int = 100

    @property
    def folder(self) -> Path:
        return Path(self.out) / "runs" / self.method / f"seed{self.seed}"


def split_roles(meta: dict[str, Any]) -> dict[str, str]:
    """The testbed's split roles (``aligned``, ``flipped``, ``balanced``: :mod:`sit_nlp.testbed.report`)."""
    from sit_nlp.testbed.report import ANTI_CAUSAL_ROLES

    return dict(meta.get("split_roles") or ANTI_CAUSAL_ROLES)


def run_job(job: Job) -> dict[str, Any]:
    """Train, evaluate and score one (method, seed); writes ``result.json`` into the job's folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from sit_causal.theory.graph import load_graph
    from sit_nlp.data.batching import Seq2SeqCollator
    from sit_nlp.evaluation.evaluate import evaluate_records, read_split
    from sit_nlp.model.seq2seq import load_trained
    from sit_nlp.testbed import evaluation as ev
    from sit_nlp.testbed.fewshot import FewShotConfig, fewshot_accuracy
    from sit_nlp.training.config import check_config, config_from_dict
    from sit_nlp.training.loop import train

    if job.threads is not None:
        torch.set_num_threads(job.threads)
    folder = job.folder
    data = Path(job.data)
    cfg = check_config(config_from_dict(training_config(data, folder, job.method, job.seed, job.steps, job.threads,
                                                        job.batch_size, job.lr)))
    start = time.perf_counter()
    final = folder / "final"
    earlier = folder / "result.json"
    previous = json.loads(earlier.read_text(encoding="utf-8")) if final.is_dir() and earlier.is_file() else None
    if not final.is_dir():
        train(cfg, overwrite=True)
        train_s = time.perf_counter() - start
    elif previous is not None:  # trained before: only the evaluation is redone, the training time is kept
        train_s = float(previous["seconds"]["train"])
    else:
        train_s = float("nan")
    start = time.perf_counter()
    model, tokenizer, cfg = load_trained(final)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    collator = Seq2SeqCollator(tokenizer, model.backbone.config.decoder_start_token_id, (), cfg.data.max_source_len,
                               cfg.data.max_target_len, cfg.data.max_instruction_len, cfg.model.source_max_len)
    heldout = read_split(data / "heldout.jsonl")
    roles = split_roles(json.loads((data / "testbed.json").read_text(encoding="utf-8")))
    fewshot_config = FewShotConfig(ks=job.fewshot_ks, steps=job.fewshot_steps)
    if previous is not None and "fewshot" in previous:  # evaluated before, by an older few-shot protocol
        previous["fewshot"] = fewshot_accuracy(model, collator, heldout, job.seed, device, fewshot_config)
        previous["seconds"]["fewshot"] = time.perf_counter() - start
        write_text_atomic(earlier, json.dumps(previous, indent=1) + "\n")
        return previous
    predictions = folder / "predictions_heldout.jsonl"
    gen = {"max_new_tokens": 8, "num_beams": 1, "do_sample": False}
    evaluate_records(model, tokenizer, collator, heldout, predictions, 64, gen, device)
    result: dict[str, Any] = {"method": job.method, "seed": job.seed, "steps": job.steps,
                              **ev.score_predictions_by_split(heldout, predictions, roles)}
    balanced = [r for r in heldout if r.extra["split"] == roles["balanced"]]
    validation = read_split(data / "validation.jsonl")
    rep = ev.pooled_representations(model, collator, balanced, 64, device)
    if model.is_sit:
        result["probe_spurious"] = ev.spurious_probe(rep["selected"].reshape(len(balanced), -1), balanced, job.seed)
        result["probe_spurious_all_factors"] = ev.spurious_probe(rep["factors"].reshape(len(balanced), -1),
                                                                 balanced, job.seed)
        fit = ev.pooled_representations(model, collator, validation, 64, device)["factors"]
        true = np.array([r.extra["factors"] for r in balanced])
        result["factors"] = ev.factor_recovery(fit, rep["factors"], true)
        result["graph"] = ev.learned_graph_recovery(folder, load_graph(data / "graph.json"),
                                                    result["factors"]["assignment"])
        result["mask_open_fraction"] = float(rep["masks"].mean())
    else:
        result["probe_spurious"] = ev.spurious_probe(rep["encoder"], balanced, job.seed)
    features = rep["selected"] if model.is_sit else rep["encoder"]
    write_text_atomic(folder / "map_2d.json", json.dumps(ev.factor_map(features, balanced, job.seed)) + "\n")
    fewshot_start = time.perf_counter()
    result["fewshot"] = fewshot_accuracy(model, collator, heldout, job.seed, device, fewshot_config)
    result["seconds"] = {"train": train_s, "eval": time.perf_counter() - start,
                         "fewshot": time.perf_counter() - fewshot_start}
    write_text_atomic(folder / "result.json", json.dumps(result, indent=1) + "\n")
    return result


# ---------------------------------------------------------------------- the oracle
def oracle_accuracy(data: Path, seed: int = 0) -> dict[str, float]:
    """Accuracy per yes/no split of the oracle that reads only each task's true attributes ``b[S_t]``
    (logistic regression fit on the training records; held-out tasks: two-fold cross-fit)."""
    from sit_nlp.data.records import read_records
    from sit_nlp.testbed.evaluation import fit_logistic, predict_logistic

    meta = json.loads((data / "testbed.json").read_text(encoding="utf-8"))
    factors = meta["factors"]
    sets = {t["name"]: [factors.index(f) for f in t["factors"]] for t in meta["tasks"] + meta["heldout_tasks"]}
    train = [r for r in read_records(data / "train.jsonl") if r.options]
    heldout = [r for r in read_records(data / "heldout.jsonl") if r.options]

    def xy(rs: list[Any], task: str) -> tuple[np.ndarray, np.ndarray]:
        # one indicator per joint value of b[S_t]: the regression can represent any function of the attributes
        cells = np.array([sum(r.extra["bits"][i] << k for k, i in enumerate(sets[task])) for r in rs])
        x = np.eye(2 ** len(sets[task]))[cells]
        return x, np.array([r.extra["label"] for r in rs])

    correct: dict[str, list[float]] = {}
    rng = np.random.default_rng(seed)
    for task in sorted({r.task for r in heldout}):
        tests = [r for r in heldout if r.task == task]
        fit_on = [r for r in train if r.task == task]
        if fit_on:
            params = fit_logistic(*xy(fit_on, task), seed=seed)
            x, y = xy(tests, task)
            hits = predict_logistic(params, x) == y
        else:  # a held-out task: two-fold cross-fit on its own records
            x, y = xy(tests, task)
            fold = rng.permutation(len(y)) % 2
            hits = np.zeros(len(y), dtype=bool)
            for k in (0, 1):
                params = fit_logistic(x[fold != k], y[fold != k], seed=seed)
                hits[fold == k] = predict_logistic(params, x[fold == k]) == y[fold == k]
        for r, h in zip(tests, hits, strict=True):
            correct.setdefault(r.extra["split"], []).append(float(h))
    return {s: float(np.mean(v)) for s, v in sorted(correct.items())}


def prior_accuracy(data: Path) -> dict[str, float]:
    """Accuracy per yes/no split of answering every record with its task's majority training label (a
    held-out task: the majority over all training yes/no records): the reference a model that learned
    nothing but the label prior scores."""
    from sit_nlp.data.records import read_records

    train = [r for r in read_records(data / "train.jsonl") if r.options]
    counts: dict[str, list[int]] = {}
    for r in train:
        counts.setdefault(r.task, []).append(int(r.extra["label"]))
    overall = int(np.mean([r.extra["label"] for r in train]) >= 0.5)
    majority = {t: int(np.mean(v) >= 0.5) for t, v in counts.items()}
    correct: dict[str, list[float]] = {}
    for r in read_records(data / "heldout.jsonl"):
        if r.options:
            guess = majority.get(r.task, overall)
            correct.setdefault(r.extra["split"], []).append(float(guess == r.extra["label"]))
    return {s: float(np.mean(v)) for s, v in sorted(correct.items())}


def _run_jobs(jobs: list[Job], workers: int, quiet: bool) -> list[dict[str, Any]]:
    """Run the jobs (finished ones read back from ``result.json``), ``workers`` at a time, in spawned
    processes; a progress bar counts finished jobs."""
    import multiprocessing as mp

    from tqdm import tqdm

    from sit_nlp.testbed.fewshot import PROTOCOL as FEWSHOT_PROTOCOL

    done: list[dict[str, Any]] = []
    todo = []
    for job in jobs:
        path = job.folder / "result.json"
        result = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        if result is not None and (result.get("fewshot") or {}).get("protocol") == FEWSHOT_PROTOCOL:
            done.append(result)
        else:  # not run, or measured before the current few-shot protocol: the trained model is reused
            todo.append(job)
    with tqdm(total=len(jobs), initial=len(done), desc="testbed jobs", file=sys.stderr, disable=quiet) as bar:
        if workers <= 1:
            for job in todo:
                done.append(run_job(job))
                bar.update(1)
        else:
            from sit_causal.experiments.executor import guard_worker

            with mp.get_context("spawn").Pool(workers, maxtasksperchild=1, initializer=guard_worker,
                                              initargs=(os.getpid(),)) as pool:
                for result in pool.imap_unordered(run_job, todo):
                    done.append(result)
                    bar.update(1)
    return sorted(done, key=lambda r: (list(METHODS).index(r["method"]), r["seed"]))


@keeps_work_on_interrupt
def run_command(
    data: Path = typer.Option(..., "--data", help="a folder written by `sit-nlp testbed build`"),
    out: Path = typer.Option(..., "--out", help="folder for the runs and the report"),
    seeds: int = typer.Option(5, "--seeds", help="paired seeds 0..N-1 (data order and new modules' init)"),
    methods: str = typer.Option("vanilla,sit", "--methods",
                                help=f"comma-separated, from {', '.join(METHODS)}"),
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
) -> None:
    """Train vanilla, SIT and ablations on a testbed; gate, evaluate every split, write report.json."""
    names = [m.strip() for m in methods.split(",") if m.strip()]
    if quick:
        seeds, names = 1, ["vanilla", "sit"]
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise UsageFailure(f"--methods: unknown method {unknown[0] if unknown else '(none)'!r}; use "
                           f"{', '.join(METHODS)}")
    for flag, value in (("--seeds", seeds), ("--steps", steps), ("--batch-size", batch_size), ("--jobs", jobs)):
        if value < 1:
            raise UsageFailure(f"{flag} must be >= 1, got {value}")
    try:
        ks = tuple(sorted({int(k) for k in fewshot_ks.split(",") if k.strip()}))
    except ValueError:
        raise UsageFailure(f"--fewshot-ks: expected comma-separated integers, got {fewshot_ks!r}") from None
    if not ks or ks[0] < 1:
        raise UsageFailure(f"--fewshot-ks: every k must be >= 1, got {fewshot_ks!r}")
    if fewshot_steps < 1:
        raise UsageFailure(f"--fewshot-steps must be >= 1, got {fewshot_steps}")
    if threads is not None and threads < 1:
        raise UsageFailure(f"--threads must be >= 1, got {threads}")
    if not lr > 0:
        raise UsageFailure(f"--lr must be > 0, got {lr}")
    for name in ("train.jsonl", "validation.jsonl", "heldout.jsonl", "graph.json", "testbed.json", "model"):
        if not (data / name).exists():
            raise UsageFailure(f"--data {data}: no {name} here (build one with `sit-nlp testbed build`)")
    check_run_values(seeds, steps, batch_size, jobs, lr, oracle_tolerance, min_gap, fewshot_steps)
    check_testbed_folder(data)
    heldout_counts: dict[str, int] = {}
    with open(data / "heldout.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row.get("split") == "heldout_tasks" and row.get("options"):  # extra keys are top-level
                heldout_counts[row["task"]] = heldout_counts.get(row["task"], 0) + 1
    if heldout_counts and min(heldout_counts.values()) <= ks[-1]:
        raise UsageFailure(f"--fewshot-ks: k = {ks[-1]} leaves no test records on a held-out task with "
                           f"{min(heldout_counts.values())} records")
    check_output_dir(out, "--out")
    check_reuse([Job(m, s, str(data.resolve()), str(out.resolve()), steps, threads, batch_size, lr, ks, fewshot_steps)
                 for s in range(seeds) for m in names],
                lambda j: training_config(Path(j.data), j.folder, j.method, j.seed, j.steps, j.threads, j.batch_size,
                                          j.lr), overwrite)
    if (out / "runs").exists() and not overwrite and any((out / "runs").rglob("result.json")):
        print(f"{out}: reusing finished runs (pass --overwrite to start again)", file=sys.stderr)
    if overwrite:
        import shutil

        from sit_causal.fileio import remove_outputs

        if (out / "runs").is_dir():
            shutil.rmtree(out / "runs")
        remove_outputs(out, ("report.json", "report.md", "report.png", "report_map.png"))
    meta = json.loads((data / "testbed.json").read_text(encoding="utf-8"))
    if threads is None:
        import importlib.util

        threads = 1 if importlib.util.find_spec("torch") is not None and not _has_cuda() else None
    job_list = [Job(m, s, str(data.resolve()), str(out.resolve()), steps, threads, batch_size, lr, ks, fewshot_steps)
                for s in range(seeds) for m in names]
    start = time.perf_counter()
    oracle, prior = oracle_accuracy(data), prior_accuracy(data)
    controls = testbed_controls(data, meta)
    results = _run_jobs(job_list, jobs, quiet)
    settings = {"methods": names, "seeds": seeds, "steps": steps, "batch_size": batch_size, "lr": lr, "jobs": jobs,
                "threads": threads}
    if min_gap is None:
        min_gap = 0.15 if meta.get("mechanism") == "backdoor" else 0.20
    report, table, gate_line = build_report(data, meta, settings, oracle, prior, controls, results, oracle_tolerance,
                                            min_gap, time.perf_counter() - start)
    out.mkdir(parents=True, exist_ok=True)
    write_report(out, report, table, gate_line, oracle, prior, results)
    print(table + gate_line)
    end_on_gate(report["gate"])


def testbed_controls(data: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The positive controls computed from the testbed's files (:mod:`sit_nlp.testbed.controls`): the
    selection statistic on the true factors, and the factor-recovery ceiling on the balanced split."""
    from sit_nlp.data.records import read_records
    from sit_nlp.testbed.controls import recovery_ceiling, true_factor_selection

    balanced = split_roles(meta)["balanced"]
    records = [r for r in read_records(data / "heldout.jsonl") if r.extra.get("split") == balanced]
    return {"true_factor_selection": true_factor_selection(data), "recovery_ceiling": recovery_ceiling(records)}


def build_report(data: Path, meta: dict[str, Any], settings: dict[str, Any], oracle: dict[str, float],
                 prior: dict[str, float], controls: dict[str, Any], results: list[dict[str, Any]],
                 oracle_tolerance: float, min_gap: float, wall_seconds: float) -> tuple[dict[str, Any], str, str]:
    """``report.json``'s content, the markdown table and the gate's line."""
    from sit_nlp.testbed.report import claims, fewshot_table, gate, markdown_table, past_prior, summarise_runs

    roles = split_roles(meta)
    summary = summarise_runs(results)
    verdict = gate(oracle, summary, meta["noise_ceiling"], oracle_tolerance, min_gap)
    learned = past_prior(results, prior, aligned=roles["aligned"])
    ceiling = controls["recovery_ceiling"]["mcc"]
    mechanism = meta.get("mechanism", "anti-causal")
    theory = bool(meta.get("theory_applies", False))
    report = {"data": str(data), "testbed_seed": meta["seed"], "mechanism": mechanism, "theory_applies": theory,
              "split_roles": roles, **settings, "gate": verdict, "label_prior": prior, "past_label_prior": learned,
              "controls": controls,
              "claims": claims(summary, learned, roles, ceiling) if verdict["passed"] else None, **summary,
              "wall_seconds": wall_seconds, "runs": results}
    table = markdown_table(summary, oracle, prior, roles)
    table += (f"\nSeeds past the label prior ({roles['aligned']} accuracy >= the prior's + 0.05): "
              + ", ".join(f"{m} {e['count']}" for m, e in learned.items()) + "\n")
    sel = controls["true_factor_selection"]
    mcc = summary["methods"].get("sit", {}).get("mcc")
    table += (f"\nPositive controls: the selection statistic on the true factors selects a graph of F1 {sel['f1']:.3f} "
              f"(coverage graph {sel['coverage_graph']['f1']:.3f}); factor-recovery ceiling (best reading of the "
              f"words) MCC {ceiling:.3f}" + (f", SIT's factor MCC {mcc['mean']:.3f}" if mcc else "") + ".\n")
    shots = fewshot_table(summary)
    if shots:
        table += "\nFew-shot adaptation on the held-out tasks (accuracy on the records not used to adapt):\n\n" + shots
    scope = ("inside the meta-SCM: SIT's theory applies" if theory
             else "outside the meta-SCM (the shortcut is caused by the label): SIT's theory does not apply")
    gate_line = (f"mechanism {mechanism} ({scope}); "
                 + ("gate passed" if verdict["passed"] else "gate FAILED: " + "; ".join(verdict["reasons"])
                    + " (no SIT-vs-vanilla claim)"))
    return report, table, gate_line


def write_report(out: Path, report: dict[str, Any], table: str, gate_line: str, oracle: dict[str, float],
                 prior: dict[str, float], results: list[dict[str, Any]]) -> None:
    """``report.json``, ``report.md``, ``report.png`` and ``report_map.png`` in ``out``, each atomically."""
    from sit_nlp.testbed.report import first_seed_maps, plot_report

    write_text_atomic(out / "report.json", json.dumps(report, indent=1) + "\n")
    write_text_atomic(out / "report.md", f"# testbed report\n\n{gate_line}\n\n{table}")
    plot_report({"methods": report["methods"]}, oracle, out / "report.png", prior,
                title=f"testbed seed {report['testbed_seed']}, {report['mechanism']}: accuracy per split")
    maps = first_seed_maps(results, out)
    if maps:
        from sit_nlp.testbed.evaluation import plot_factor_maps

        plot_factor_maps(maps, out / "report_map.png")


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())
