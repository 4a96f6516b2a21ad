"""``sit-nlp testbed run``: train every method on a testbed, evaluate every split, gate, compare.

For every (method, seed) a training config is generated (:func:`training_config`: the testbed's random BART
and word-level tokenizer as a local backbone, ``train.threads`` = 1 on CPU, ``train.seed`` = ``model.init_seed``
= the seed, so a seed varies both the data order and the new modules' initialisation, paired across
methods) and trained through :func:`sit_nlp.train.train`; the final model is evaluated on ``heldout.jsonl``
with :func:`sit_nlp.evaluate.evaluate_records` and scored by :mod:`sit_nlp.testbed.evaluation`. Jobs run
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

from sit_causal.cli_helpers import UsageFailure, check_output_dir, write_text_atomic
from sit_nlp.testbed.checks import (
    check_reuse,
    check_run_values,
    check_testbed_folder,
    end_on_gate,
    keeps_work_on_interrupt,
)

__all__ = ["METHODS", "Job", "claims", "fewshot_table", "first_seed_maps", "gate", "markdown_table",
           "oracle_accuracy", "past_prior", "prior_accuracy", "run_command", "run_job", "summarise", "training_config"]

METHODS: dict[str, dict[str, Any]] = {
    "vanilla": {"model": {"method": "vanilla"}},
    "sit": {},
    "sit-no-uic": {"loss": {"w_uic": 0.0}},
    "sit-no-distinction": {"loss": {"w_distinction": 0.0}},
    "sit-open": {"model": {"selection": "none"}, "graph": {"find_at": None}},
    "sit-input": {"model": {"factor_input": "input"}},
}
"""Each method's changes to the shared training config (sections of :class:`sit_nlp.config.Config`)."""

YESNO_SPLITS = ("aligned", "balanced", "flipped", "flipped_factor", "flipped_cue", "unseen_words", "heldout_datasets",
                "heldout_tasks")


def training_config(data: Path, out_dir: Path, method: str, seed: int, steps: int, threads: int | None,
                    batch_size: int = 32, lr: float = 2e-3) -> dict[str, Any]:
    """The nested config of one job (``sit_nlp.config.config_from_dict`` reads it)."""
    base: dict[str, dict[str, Any]] = {
        "model": {"backbone": str(data / "model"), "method": "sit", "init_seed": seed, "n_factors": 8,
                  "factor_dim": 16, "latent_hidden": 64, "source_decoder_layers": 1, "source_max_len": 16,
                  "task_bank_size": 64},
        "data": {"train_file": str(data / "train.jsonl"), "eval_file": str(data / "validation.jsonl"),
                 "max_source_len": 64, "max_target_len": 12, "max_instruction_len": 32,
                 "length_group_size": 1},  # mixed batches: length-sorted windows would give one-task batches
        "graph": {"find_at": 0.5, "examples_per_task": 32},
        "train": {"out_dir": str(out_dir), "seed": seed, "batch_size": batch_size, "max_steps": steps, "lr": lr,
                  "warmup_steps": max(1, steps // 20), "log_every": max(1, steps // 10), "save_every": 0,
                  "keep_checkpoints": 1, "quiet": True, "threads": threads},
    }
    for section, values in METHODS[method].items():
        base.setdefault(section, {}).update(values)
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


def run_job(job: Job) -> dict[str, Any]:
    """Train, evaluate and score one (method, seed); writes ``result.json`` into the job's folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from sit_causal.graph import load_graph
    from sit_nlp.batching import Seq2SeqCollator
    from sit_nlp.config import check_config, config_from_dict
    from sit_nlp.evaluate import evaluate_records, read_split
    from sit_nlp.seq2seq import load_trained
    from sit_nlp.testbed import evaluation as ev
    from sit_nlp.testbed.fewshot import FewShotConfig, fewshot_accuracy
    from sit_nlp.train import train

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
                              **ev.score_predictions_by_split(heldout, predictions)}
    balanced = [r for r in heldout if r.extra["split"] == "balanced"]
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
    from sit_nlp.records import read_records
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
    from sit_nlp.records import read_records

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


# ---------------------------------------------------------------------- summary
def _flatten(result: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for split, value in result.get("accuracy", {}).items():
        out[f"acc/{split}"] = value
    for split, value in result.get("worst_group", {}).items():
        out[f"worst/{split}"] = value
    if "aligned_minus_flipped" in result:
        out["gap"] = result["aligned_minus_flipped"]
    for key in ("probe_spurious", "probe_spurious_all_factors", "mask_open_fraction"):
        if key in result:
            out[key] = result[key]
    if result.get("factors"):
        out["mcc"] = result["factors"]["mcc"]
    if result.get("graph"):
        for key in ("precision", "recall", "f1"):
            out[f"graph/{key}"] = result["graph"][key]
        out["graph/uic_holds"] = float(result["graph"]["uic_holds"])
    for adaptation, by_k in (result.get("fewshot") or {}).get("accuracy", {}).items():
        for k, value in by_k.items():
            out[f"fewshot/{adaptation}/{k}"] = value
    out["seconds/train"] = result["seconds"]["train"]
    return out


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method and metric: the values over seeds (in seed order), mean and 95 % CI half-width
    (:func:`sit_causal.report.mean_ci`); paired differences against vanilla."""
    from sit_causal.report import mean_ci

    by_method: dict[str, dict[int, dict[str, float]]] = {}
    for r in results:
        by_method.setdefault(r["method"], {})[r["seed"]] = _flatten(r)
    summary: dict[str, Any] = {}
    for method, seeds in by_method.items():
        keys = sorted({k for row in seeds.values() for k in row})
        summary[method] = {}
        for key in keys:
            values = [seeds[s][key] for s in sorted(seeds) if key in seeds[s]]
            m, h = mean_ci(values)
            summary[method][key] = {"values": values, "mean": m, "ci95": None if h != h else h}
    paired: dict[str, Any] = {}
    base = by_method.get("vanilla", {})
    ks = sorted({k.rsplit("/", 1)[1] for row in base.values() for k in row if k.startswith("fewshot/finetune/")},
                key=int)
    for method, seeds in by_method.items():
        if method == "vanilla" or not base:
            continue
        common = sorted(set(seeds) & set(base))
        paired[method] = {}
        pairs = [(key, key) for key in ("acc/flipped", "acc/flipped_factor", "acc/flipped_cue", "acc/balanced",
                                        "acc/heldout_tasks", "acc/heldout_datasets", "acc/generation",
                                        "worst/balanced", "gap")]
        # few-shot: SIT's selection step, and the same fine-tuning as vanilla's, each against vanilla fine-tuned
        pairs += [(f"fewshot/{a}/{k}", f"fewshot/finetune/{k}") for a in ("select", "finetune") for k in ks]
        for key, base_key in pairs:
            diffs = [seeds[s][key] - base[s][base_key] for s in common if key in seeds[s] and base_key in base[s]]
            if diffs:
                m, h = mean_ci(diffs)
                name = key if key == base_key else f"{key} - vanilla {base_key}"
                paired[method][name] = {"values": diffs, "mean": m, "ci95": None if h != h else h}
    return {"methods": summary, "paired_vs_vanilla": paired}


def gate(oracle: dict[str, float], summary: dict[str, Any], ceiling: float, tolerance: float,
         min_gap: float) -> dict[str, Any]:
    """The positive-control gate (module docstring): ``passed`` and why."""
    low = {s: a for s, a in oracle.items() if a < ceiling - tolerance}
    gaps = summary["methods"].get("vanilla", {}).get("gap", {})
    vanilla_gap = gaps.get("mean")
    seeds_with_gap = sum(g >= min_gap for g in gaps.get("values", []))  # reported: the gate reads the mean
    oracle_ok = not low
    shortcut_ok = vanilla_gap is not None and vanilla_gap >= min_gap
    reasons = []
    if not oracle_ok:
        reasons.append("oracle below the noise ceiling on " + ", ".join(f"{s} ({a:.3f})" for s, a in low.items()))
    if vanilla_gap is None:
        reasons.append("no vanilla run: the shortcut check needs one")
    elif not shortcut_ok:
        reasons.append(f"vanilla aligned-flipped gap {vanilla_gap:.3f} < {min_gap}")
    return {"passed": oracle_ok and shortcut_ok, "oracle": oracle, "ceiling": ceiling, "tolerance": tolerance,
            "oracle_passed": oracle_ok, "vanilla_gap": vanilla_gap, "min_gap": min_gap,
            "vanilla_seeds_with_gap": f"{seeds_with_gap} of {len(gaps.get('values', []))}",
            "shortcut_passed": shortcut_ok, "reasons": reasons}


def past_prior(results: list[dict[str, Any]], prior: dict[str, float], margin: float = 0.05) -> dict[str, Any]:
    """Per method, which seeds left the label prior: ``aligned`` accuracy at least ``margin`` above the
    majority-label answer's. A run that did not learned nothing, and its ``flipped`` accuracy is the prior's
    (about 0.73 by default), which can look like a win over a run that learned the shortcut.

    Returns ``{method: {"seeds": [...], "past": [bool, ...], "count": "k of n"}}`` (seeds in order)."""
    out: dict[str, Any] = {}
    for r in sorted(results, key=lambda r: r["seed"]):
        entry = out.setdefault(r["method"], {"seeds": [], "past": []})
        entry["seeds"].append(r["seed"])
        entry["past"].append(bool(r["accuracy"].get("aligned", 0.0) >= prior.get("aligned", 0.0) + margin))
    for entry in out.values():
        entry["count"] = f"{sum(entry['past'])} of {len(entry['past'])}"
    return out


def claims(summary: dict[str, Any], learned: dict[str, Any] | None = None) -> dict[str, Any]:
    """The targets of the SIT-vs-vanilla comparison, each with its verdict (read only when the gate passed).

    ``learned`` (:func:`past_prior`): the flipped target is met only if every SIT seed left the label prior
    (a model that learned nothing scores the prior on ``flipped``)."""
    methods = summary["methods"]
    if "sit" not in methods or "vanilla" not in methods:
        return {}
    s, v = methods["sit"], methods["vanilla"]
    sit_learned = learned is None or all(learned.get("sit", {}).get("past", [False]))

    def lo_hi(entry: dict[str, Any]) -> tuple[float, float]:
        h = entry["ci95"] if entry["ci95"] is not None else float("nan")
        return entry["mean"] - h, entry["mean"] + h

    out: dict[str, Any] = {}
    if "acc/flipped" in s and "acc/flipped" in v:
        diff = s["acc/flipped"]["mean"] - v["acc/flipped"]["mean"]
        separated = lo_hi(s["acc/flipped"])[0] > lo_hi(v["acc/flipped"])[1]
        out["flipped_plus_10_points"] = {"difference": diff, "cis_separate": bool(separated),
                                         "sit_seeds_past_prior": bool(sit_learned),
                                         "met": bool(diff >= 0.10 and separated and sit_learned)}
    if "acc/heldout_tasks" in s and "acc/heldout_tasks" in v:
        diff = s["acc/heldout_tasks"]["mean"] - v["acc/heldout_tasks"]["mean"]
        out["heldout_tasks_at_least_vanilla"] = {"difference": diff, "met": bool(diff >= 0)}
    if "fewshot/select/8" in s and "fewshot/finetune/8" in v:
        diff = s["fewshot/select/8"]["mean"] - v["fewshot/finetune/8"]["mean"]
        out["8_shot_above_vanilla"] = {"sit_select": s["fewshot/select/8"]["mean"],
                                       "vanilla_finetune": v["fewshot/finetune/8"]["mean"], "difference": diff,
                                       "met": bool(diff > 0)}
    if "graph/f1" in s:
        out["graph_f1_at_least_0.8"] = {"f1": s["graph/f1"]["mean"], "met": bool(s["graph/f1"]["mean"] >= 0.8)}
    return out


COLUMNS = (("acc/aligned", "aligned"), ("acc/balanced", "balanced"), ("acc/flipped", "flipped"),
           ("acc/flipped_factor", "flipped factor"), ("acc/flipped_cue", "flipped cue"), ("gap", "aligned-flipped"),
           ("worst/balanced", "worst group (balanced)"),
           ("acc/unseen_words", "unseen words"), ("acc/heldout_datasets", "held-out datasets"),
           ("acc/heldout_tasks", "held-out tasks"), ("acc/generation", "generation EM"),
           ("graph/f1", "graph F1"), ("mcc", "factor MCC"), ("probe_spurious", "spurious probe"))


def markdown_table(summary: dict[str, Any], oracle: dict[str, float], prior: dict[str, float]) -> str:
    """Rows = methods, the oracle and the label prior; columns = :data:`COLUMNS`; cells ``mean +/- CI
    half-width`` (over seeds)."""
    head = "| method | " + " | ".join(c for _, c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for method, metrics in summary["methods"].items():
        cells = []
        for key, _ in COLUMNS:
            e = metrics.get(key)
            if e is None:
                cells.append("-")
            else:
                h = e["ci95"]
                cells.append(f"{e['mean']:.3f}" + (f" +/- {h:.3f}" if h is not None else ""))
        n = len(next(iter(metrics.values()))["values"]) if metrics else 0
        lines.append(f"| {method} (n = {n}) | " + " | ".join(cells) + " |")
    for name, ref in (("oracle (true factors)", oracle), ("label prior (task majority)", prior)):
        cells = [f"{ref[k.split('/')[1]]:.3f}" if k.startswith("acc/") and k.split("/")[1] in ref else "-"
                 for k, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fewshot_table(summary: dict[str, Any]) -> str:
    """Held-out-task accuracy after few-shot adaptation: rows = (method, adaptation), columns = ``k``
    (``0``: zero-shot); cells ``mean +/- CI half-width`` over seeds. Empty when no run measured it."""
    rows = []
    ks: set[str] = set()
    for method, metrics in summary["methods"].items():
        by: dict[str, dict[str, Any]] = {}
        for key, e in metrics.items():
            if key.startswith("fewshot/"):
                _, adaptation, k = key.split("/")
                by.setdefault(adaptation, {})[k] = e
                ks.add(k)
        rows.extend((method, a, cells) for a, cells in by.items())
    if not rows:
        return ""
    order = sorted(ks, key=int)
    lines = ["| method | adaptation | " + " | ".join(f"k = {k}" for k in order) + " |",
             "|---|---|" + "---|" * len(order)]
    for method, adaptation, cells in rows:
        out = []
        for k in order:
            e = cells.get(k)
            if k == "0" and e is None:
                e = summary["methods"][method].get("fewshot/zero-shot/0")
            h = e["ci95"] if e else None
            out.append("-" if e is None else f"{e['mean']:.3f}" + (f" +/- {h:.3f}" if h is not None else ""))
        lines.append(f"| {method} | {adaptation} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def first_seed_maps(results: list[dict[str, Any]], out: Path) -> dict[str, dict[str, Any]]:
    """The 2-D maps (``map_2d.json``) of each method's lowest seed that has one, by method."""
    maps: dict[str, dict[str, Any]] = {}
    for r in sorted(results, key=lambda r: r["seed"]):
        path = out / "runs" / r["method"] / f"seed{r['seed']}" / "map_2d.json"
        if r["method"] not in maps and path.is_file():
            maps[r["method"]] = json.loads(path.read_text(encoding="utf-8"))
    return maps


def plot_report(summary: dict[str, Any], oracle: dict[str, float], path: Path,
                prior: dict[str, float] | None = None) -> None:
    """Accuracy per yes/no split (bars, 95 % CI) for every method; the oracle and, when given, the label
    prior (the task-majority answer's accuracy, what a run that learned nothing scores) as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sit_causal.report import save_figure

    methods = list(summary["methods"])
    splits = [s for s in YESNO_SPLITS if any(f"acc/{s}" in summary["methods"][m] for m in methods)]
    fig, ax = plt.subplots(figsize=(1.6 * len(splits) + 2, 3.6))
    width = 0.8 / max(1, len(methods))
    for j, method in enumerate(methods):
        entries = [summary["methods"][method].get(f"acc/{s}") for s in splits]
        means = [e["mean"] if e else np.nan for e in entries]
        errs = [(e["ci95"] or 0.0) if e else 0.0 for e in entries]
        ax.bar(np.arange(len(splits)) + (j - (len(methods) - 1) / 2) * width, means, width, yerr=errs,
               label=method, capsize=2)
    for reference, color, label in ((oracle, "k", "oracle"), (prior, "0.55", "label prior")):
        if reference is not None:
            ax.scatter(np.arange(len(splits)), [reference.get(s, np.nan) for s in splits], marker="_", s=400,
                       color=color, label=label, zorder=3)
    ax.set_xticks(np.arange(len(splits)), splits, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


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
            from sit_causal.executor import guard_worker

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
    min_gap: float = typer.Option(0.20, "--min-gap", help="gate (b): vanilla aligned - flipped >= this"),
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

        from sit_causal.cli_helpers import remove_outputs

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
    results = _run_jobs(job_list, jobs, quiet)
    summary = summarise(results)
    verdict = gate(oracle, summary, meta["noise_ceiling"], oracle_tolerance, min_gap)
    learned = past_prior(results, prior)
    report = {"data": str(data), "testbed_seed": meta["seed"], "methods": names, "seeds": seeds, "steps": steps,
              "batch_size": batch_size, "lr": lr, "jobs": jobs, "threads": threads, "gate": verdict,
              "label_prior": prior, "past_label_prior": learned,
              "claims": claims(summary, learned) if verdict["passed"] else None, **summary,
              "wall_seconds": time.perf_counter() - start, "runs": results}
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(summary, oracle, prior)
    table += ("\nSeeds past the label prior (aligned accuracy >= the prior's + 0.05): "
              + ", ".join(f"{m} {e['count']}" for m, e in learned.items()) + "\n")
    shots = fewshot_table(summary)
    if shots:
        table += "\nFew-shot adaptation on the held-out tasks (accuracy on the records not used to adapt):\n\n" + shots
    gate_line = ("gate passed" if verdict["passed"] else "gate FAILED: " + "; ".join(verdict["reasons"])
                 + " (no SIT-vs-vanilla claim)")
    write_text_atomic(out / "report.json", json.dumps(report, indent=1) + "\n")
    write_text_atomic(out / "report.md", f"# testbed report\n\n{gate_line}\n\n{table}")
    plot_report(summary, oracle, out / "report.png", prior)
    maps = first_seed_maps(results, out)
    if maps:
        from sit_nlp.testbed.evaluation import plot_factor_maps

        plot_factor_maps(maps, out / "report_map.png")
    print(table + gate_line)
    end_on_gate(verdict)


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())
