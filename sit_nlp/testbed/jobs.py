"""The jobs of ``sit-nlp testbed run``: one (method, seed) each, its training config, planning, running, resuming.

**Methods** (:data:`TESTBED_METHODS`, each a :class:`MethodSpec` of what it changes in the shared config):
``vanilla`` (no latent module), ``sit`` (the package's SIT recipe with the selection step), the ablations
``sit-no-uic`` (``loss.w_uic = 0``), ``sit-no-distinction`` (``loss.w_distinction = 0``) and ``sit-open``
(``model.selection = none``, no selection step: every gate open), and the variants ``sit-input`` (the factors
inferred from the record's input alone, as ``sit``; the instruction reaches the decoder only as the mask and
one task token), ``sit-formatted`` (from the instruction-formatted source), ``sit-true-graph`` (the testbed's
true graph installed as the task graph at step 0, no selection step), ``sit-prior-instruction`` /
``sit-prior-none`` (the prior ``p(z | c)`` conditioned on the instruction / on nothing instead of the data
source), ``sit-sentence`` / ``sit-sentence-1d`` (one factor vector per record, ``d_f = 4`` / ``1``), and the
invariance methods ``sit-invariant`` (a V-REx term over the sources of every task in a batch),
``vanilla-vrex`` / ``vanilla-irm`` (the same terms on the backbone alone) and ``sit-invariant-select``
(``sit-invariant`` whose selection step reads the sources, ``graph.statistic: invariant``, on
:data:`INVARIANT_SELECT_EXAMPLES` examples per task).

``sit-no-uic`` here switches off the UIC **loss** of training only: the selection step inside training still
repairs the graph it finds to the nearest one that satisfies the UIC
(:func:`sit_causal.selection.graph.repair_to_uic`). The synthetic half's ``sit-no-uic``
(:mod:`sit_causal.experiments.synthetic`) switches off the UIC term in the model and in its selection step.

**Backbones** (:data:`BACKBONES`): ``encoder-decoder`` (the testbed's random BART, ``OUT/model``) or
``decoder-only`` (its random Llama-shaped causal LM of the same width and depth, ``OUT/model-decoder``,
:func:`sit_nlp.testbed.backbone.ensure_decoder_backbone`; :class:`sit_nlp.model.decoder.DecoderSIT`). On the
decoder the factors read the prompt (instruction and input: a decoder-only SIT has no input-only pass), so
the methods that change only what the factors read or how they pool (:data:`ENCODER_DECODER_ONLY`) are refused.

**One job** (:class:`TestbedJob`) trains through :func:`sit_nlp.training.loop.train` with the config of
:func:`training_config`: the testbed's random backbone and word-level tokenizer as a local backbone, ``n = 8``
factors, mixed-task batches, ``warmup = max(1, steps // 20)``, and ``train.seed = model.init_seed = s``, so
a seed ``s`` varies both the data order and the new modules' initialisation, paired across methods. The
final model is evaluated on ``heldout.jsonl`` (:func:`sit_nlp.evaluation.evaluate.evaluate_records`), scored
by :mod:`sit_nlp.testbed.evaluation`, adapted few-shot (:mod:`sit_nlp.testbed.fewshot`), and its 2-D map
written (``map_2d.json``); everything lands in ``OUT/runs/METHOD/seedS/`` with ``result.json`` last.

**Resume**: a job whose ``result.json`` has the current few-shot protocol is read back, not run; a trained
job (``final/``) without it is evaluated again from the saved model (:func:`run_jobs`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from sit_causal.fileio import write_text_atomic

if TYPE_CHECKING:
    from sit_nlp.training.config import Config

__all__ = [
    "BACKBONES",
    "ENCODER_DECODER_ONLY",
    "INVARIANCE_WEIGHT",
    "INVARIANT_SELECT_EXAMPLES",
    "IRM_WEIGHT",
    "TESTBED_METHODS",
    "MethodSpec",
    "TestbedJob",
    "default_threads",
    "discard_runs",
    "finished_runs",
    "plan_jobs",
    "run_job",
    "run_jobs",
    "training_config",
]


@dataclass(frozen=True)
class MethodSpec:
    """What one testbed method changes in the shared training config (:func:`training_config`).

    Each field names the config key it sets. ``selection``, ``factor_pool``, ``w_uic`` and ``w_distinction``
    at ``None`` leave their key out, so the training config's own default applies; ``find_at = None`` is a
    value: no selection step.
    """

    method: Literal["sit", "vanilla"] = "sit"  # model.method
    factor_input: Literal["formatted", "input"] = "input"  # model.factor_input
    prior_context: Literal["dataset", "instruction", "none"] = "dataset"  # model.prior_context
    factor_pool: Literal["token", "sentence"] | None = None  # model.factor_pool
    factor_dim: int = 16  # model.factor_dim: d_f, the width of one factor
    selection: Literal["sigmoid", "hard-concrete", "straight-through", "none"] | None = None  # model.selection
    find_at: float | None = 0.5  # graph.find_at: the selection step after this fraction of the steps
    graph_file: str | None = None  # graph.from_file: a file of the testbed folder, the task graph from step 0
    w_uic: float | None = None  # loss.w_uic
    w_distinction: float | None = None  # loss.w_distinction
    invariance: Literal["vrex", "irm"] | None = None  # loss.invariance, at weight loss.w_invariance
    w_invariance: float = 0.0  # loss.w_invariance (0: no invariance term)
    invariance_start: float = 0.0  # loss.invariance_start: the term's weight is 0 before this fraction of steps
    sources_per_batch: int = 0  # data.sources_per_batch: sources of every task in a batch (0: mixed batches)
    statistic: Literal["energy", "invariant"] = "energy"  # graph.statistic: what the selection step builds on
    examples_per_task: int = 32  # graph.examples_per_task: training examples per task of the selection step


INVARIANCE_WEIGHT = 10.0
"""``loss.w_invariance`` of the V-REx methods (``sit-invariant``, ``sit-invariant-select``, ``vanilla-vrex``),
chosen from 1, 10, 100 and 1000 on the tuning build (anti-causal, testbed seed 0) by the worst training
source's validation accuracy, never on a test split (``benchmarks/invariance_sweep.py``,
``docs/results/invariance.md``)."""
IRM_WEIGHT = 1.0
"""``loss.w_invariance`` of ``vanilla-irm``, chosen from 1, 10, 100 and 10 000 the same way."""

INVARIANT_SELECT_EXAMPLES = 512
"""``graph.examples_per_task`` of ``sit-invariant-select``: the invariance test fits decision trees with leaves of
at least 25 examples on half of a task's examples, so the shared 32 examples per task leave it one cell and no
evidence (on the true factors of an anti-causal testbed it then keeps no factor for any task)."""

TESTBED_METHODS: dict[str, MethodSpec] = {
    "vanilla": MethodSpec(method="vanilla"),
    "sit": MethodSpec(),
    "sit-no-uic": MethodSpec(w_uic=0.0),
    "sit-no-distinction": MethodSpec(w_distinction=0.0),
    "sit-open": MethodSpec(selection="none", find_at=None),
    "sit-input": MethodSpec(factor_input="input"),
    "sit-formatted": MethodSpec(factor_input="formatted"),
    "sit-true-graph": MethodSpec(graph_file="graph.json", find_at=None),
    "sit-prior-instruction": MethodSpec(prior_context="instruction"),
    "sit-prior-none": MethodSpec(prior_context="none"),
    "sit-sentence": MethodSpec(factor_pool="sentence", factor_dim=4),
    "sit-sentence-1d": MethodSpec(factor_pool="sentence", factor_dim=1),
    "sit-invariant": MethodSpec(invariance="vrex", w_invariance=INVARIANCE_WEIGHT, sources_per_batch=2),
    "vanilla-vrex": MethodSpec(method="vanilla", invariance="vrex", w_invariance=INVARIANCE_WEIGHT,
                               sources_per_batch=2),
    "vanilla-irm": MethodSpec(method="vanilla", invariance="irm", w_invariance=IRM_WEIGHT,
                              sources_per_batch=2),
    "sit-invariant-select": MethodSpec(invariance="vrex", w_invariance=INVARIANCE_WEIGHT, sources_per_batch=2,
                                       statistic="invariant", examples_per_task=INVARIANT_SELECT_EXAMPLES),
}
"""Every method of ``testbed run``, in the order of its tables (module docstring)."""

BACKBONES = ("encoder-decoder", "decoder-only")
"""The testbed's two model families (module docstring)."""

ENCODER_DECODER_ONLY = ("sit-input", "sit-formatted", "sit-sentence", "sit-sentence-1d")
"""Methods that differ from ``sit`` only in what the encoder's factors read or how they pool: on the
decoder-only backbone the factors always read the prompt, one factor vector per prompt token."""


@dataclass(frozen=True)
class TestbedJob:
    """One (method, seed) of ``testbed run``: train on the testbed folder ``data``, write into :attr:`folder`.

    ``threads``: torch threads of the job (``None``: torch's default); ``fewshot_ks`` and ``fewshot_steps``:
    the few-shot protocol's ``k`` values and steps (:class:`sit_nlp.testbed.fewshot.FewShotConfig`).
    """

    __test__ = False  # not a pytest test class despite its name

    method: str
    seed: int
    data: Path
    out: Path
    steps: int
    batch_size: int = 32
    lr: float = 2e-3
    threads: int | None = None
    fewshot_ks: tuple[int, ...] = (8, 32)
    fewshot_steps: int = 100
    backbone: str = "encoder-decoder"

    def __post_init__(self) -> None:
        if self.method not in TESTBED_METHODS:
            raise ValueError(f"unknown testbed method {self.method!r}; use {', '.join(TESTBED_METHODS)}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown testbed backbone {self.backbone!r}; use {', '.join(BACKBONES)}")
        if self.backbone == "decoder-only" and self.method in ENCODER_DECODER_ONLY:
            raise ValueError(f"testbed method {self.method!r} is for the encoder-decoder backbone")

    @property
    def decoder_only(self) -> bool:
        """Whether the job trains the testbed's decoder-only backbone."""
        return self.backbone == "decoder-only"

    @property
    def spec(self) -> MethodSpec:
        """What the job's method changes in the shared config."""
        return TESTBED_METHODS[self.method]

    @property
    def folder(self) -> Path:
        """``OUT/runs/METHOD/seedS``: the training run, the predictions and ``result.json``."""
        return self.out / "runs" / self.method / f"seed{self.seed}"


def _sections(job: TestbedJob) -> dict[str, dict[str, Any]]:
    """The nested config of ``job`` (the layout :func:`sit_nlp.training.config.config_from_dict` reads)."""
    spec, data, steps = job.spec, job.data, job.steps
    from sit_nlp.testbed.backbone import DECODER_FOLDER

    model: dict[str, Any] = {
        "backbone": str(data / (DECODER_FOLDER if job.decoder_only else "model")), "method": spec.method,
        "init_seed": job.seed, "n_factors": 8, "factor_dim": spec.factor_dim, "latent_hidden": 64,
        "source_decoder_layers": 1, "source_max_len": 16, "task_bank_size": 64,
        "factor_input": "formatted" if job.decoder_only else spec.factor_input, "prior_context": spec.prior_context}
    if job.decoder_only:
        model["architecture"] = job.backbone
    for key, value in (("selection", spec.selection), ("factor_pool", spec.factor_pool)):
        if value is not None:
            model[key] = value
    graph: dict[str, Any] = {"find_at": spec.find_at, "examples_per_task": spec.examples_per_task}
    if spec.statistic != "energy":
        graph["statistic"] = spec.statistic
    if spec.graph_file is not None:
        graph["from_file"] = str(data / spec.graph_file)
    loss: dict[str, Any] = {k: v for k, v in (("w_uic", spec.w_uic), ("w_distinction", spec.w_distinction))
                            if v is not None}
    if spec.invariance is not None:
        loss |= {"invariance": spec.invariance, "w_invariance": spec.w_invariance}
        if spec.invariance_start:
            loss["invariance_start"] = spec.invariance_start
    return {
        "model": model,
        "data": {"train_file": str(data / "train.jsonl"), "eval_file": str(data / "validation.jsonl"),
                 "max_source_len": 64, "max_target_len": 12, "max_instruction_len": 32,
                 "length_group_size": 1,  # mixed batches: length-sorted windows would give one-task batches
                 **({"sources_per_batch": spec.sources_per_batch} if spec.sources_per_batch else {})},
        "graph": graph,
        "train": {"out_dir": str(job.folder), "seed": job.seed, "batch_size": job.batch_size, "max_steps": steps,
                  "lr": job.lr, "warmup_steps": max(1, steps // 20), "log_every": max(1, steps // 10),
                  "save_every": 0, "keep_checkpoints": 1, "quiet": True, "threads": job.threads},
        **({"loss": loss} if loss else {}),
    }


def training_config(job: TestbedJob) -> Config:
    """The checked training config of ``job`` (module docstring; :class:`sit_nlp.training.config.Config`)."""
    from sit_nlp.training.config import check_config, config_from_dict

    return check_config(config_from_dict(_sections(job)))


def plan_jobs(data: Path, out: Path, methods: list[str], seeds: int, steps: int, batch_size: int, lr: float,
              threads: int | None, fewshot_ks: tuple[int, ...], fewshot_steps: int,
              backbone: str = "encoder-decoder") -> list[TestbedJob]:
    """Every (method, seed) with ``seed`` in ``0..seeds-1``, seed-major; ``data`` and ``out`` resolved."""
    data, out = data.resolve(), out.resolve()
    return [TestbedJob(m, s, data, out, steps, batch_size, lr, threads, fewshot_ks, fewshot_steps, backbone)
            for s in range(seeds) for m in methods]


def default_threads() -> int | None:
    """Torch threads per job when none are asked for: 1 on CPU (jobs run side by side), torch's default on a
    GPU or without torch."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return None if torch.cuda.is_available() else 1


def discard_runs(out: Path) -> None:
    """Remove the finished runs and the report from ``out`` (``--overwrite``)."""
    from sit_causal.fileio import remove_outputs

    if (out / "runs").is_dir():
        shutil.rmtree(out / "runs")
    remove_outputs(out, ("report.json", "report.md", "report.png", "report_map.png"))


def finished_runs(out: Path) -> list[str]:
    """``METHOD/seedS`` of every run in ``out`` that wrote its ``result.json``, sorted."""
    return sorted(str(p.parent.relative_to(out / "runs")) for p in (out / "runs").glob("*/*/result.json"))


def run_job(job: TestbedJob) -> dict[str, Any]:
    """Train, evaluate and score one (method, seed); writes ``result.json`` into the job's folder."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from sit_causal.theory.graph import load_graph
    from sit_nlp.data.records import read_records
    from sit_nlp.evaluation.evaluate import evaluate_records
    from sit_nlp.model.factory import make_collator
    from sit_nlp.testbed import evaluation as ev
    from sit_nlp.testbed.fewshot import FewShotConfig, fewshot_accuracy
    from sit_nlp.testbed.report import split_roles
    from sit_nlp.training.checkpoint import load_trained
    from sit_nlp.training.loop import train

    if job.threads is not None:
        torch.set_num_threads(job.threads)
    folder = job.folder
    data = job.data
    cfg = training_config(job)
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
    collator = make_collator(model, tokenizer, (), cfg.data.max_source_len, cfg.data.max_target_len,
                             cfg.data.max_instruction_len, cfg.model.source_max_len)
    heldout = read_records(data / "heldout.jsonl")
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
    result: dict[str, Any] = {"method": job.method, "seed": job.seed, "steps": job.steps, "backbone": job.backbone,
                              **ev.score_predictions_by_split(heldout, predictions, roles)}
    balanced = [r for r in heldout if r.extra["split"] == roles["balanced"]]
    validation = read_records(data / "validation.jsonl")
    evaluate_records(model, tokenizer, collator, validation, folder / "predictions_validation.jsonl", 64, gen, device)
    result["validation"] = ev.accuracy_by_source(validation, folder / "predictions_validation.jsonl")
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


def _result_of_lost_worker(job: TestbedJob) -> dict[str, Any]:
    """The result of a job whose worker process ended without reporting back: its ``result.json`` when the
    job wrote it (the worker died after finishing), else a one-line error naming the job."""
    path = job.folder / "result.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    raise RuntimeError(f"the worker of {job.method} seed {job.seed} ended without a result (killed, or out of "
                       f"memory?); rerun the same command to resume from the finished runs")


def run_jobs(jobs: list[TestbedJob], workers: int, quiet: bool) -> list[dict[str, Any]]:
    """Run the jobs (finished ones read back from ``result.json``), ``workers`` at a time, in spawned
    processes; a progress bar counts finished jobs. Returns the results ordered by method
    (:data:`TESTBED_METHODS`), then seed. Ctrl-C propagates; finished jobs keep their ``result.json``."""
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
            from concurrent.futures import ProcessPoolExecutor, as_completed
            from concurrent.futures.process import BrokenProcessPool

            from sit_causal.executor import guard_worker

            # a fresh process per job (torch state never carries over); unlike multiprocessing.Pool, a worker
            # that dies is reported (BrokenProcessPool) instead of leaving the parent waiting for ever
            fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=guard_worker,
                                     initargs=(os.getpid(),), **fresh) as pool:
                futures = {pool.submit(run_job, job): job for job in todo}
                for future in as_completed(futures):
                    try:
                        done.append(future.result())
                    except BrokenProcessPool:
                        done.append(_result_of_lost_worker(futures[future]))
                    bar.update(1)
    order = list(TESTBED_METHODS)
    return sorted(done, key=lambda r: (order.index(r["method"]), r["seed"]))
