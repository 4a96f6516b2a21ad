"""``sit-nlp train``: multi-task instruction tuning of SIT or vanilla on Hugging Face Accelerate.

One process (CPU or one GPU)::

    sit-nlp train --config configs/tiny.yaml [--key=value ...] [--resume]

Several GPUs (DDP) or FSDP, by accelerate config alone (files shipped in ``sit_nlp/accelerate_configs/``)::

    accelerate launch --config_file sit_nlp/accelerate_configs/ddp.yaml -m sit_nlp.cli.main train --config ...

The recipe (:func:`train`), top to bottom: accelerator -> config -> data (:mod:`sit_nlp.training.data`:
tokenised records, task bank, length-grouped sharded batches) -> backbone + model -> optimizer (AdamW, fused
on GPU) -> LR schedule (warm-up) -> prepare -> resume (:mod:`sit_nlp.training.checkpoint`) -> loop of
:func:`train_step` with :func:`~sit_nlp.training.metrics.maybe_log`, :func:`~sit_nlp.training.metrics.maybe_eval`,
:func:`~sit_nlp.training.checkpoint.maybe_save_checkpoint` -> final save.

The loss is the one SIT objective (:class:`sit_causal.objective.ObjectiveConfig`, the ``loss`` section), and
the model computes it: one call per micro-batch, ``model(batch, window=..., progress=p)``, returns the
weighted total (``loss``) and its named terms (:meth:`sit_nlp.model.seq2seq.Seq2SeqSIT.forward`) at the
training progress ``p = step / (max_steps - 1)``; this loop backpropagates, steps and logs. The reduction
is the classic gradient-accumulation pitfall done right: a step of ``k`` micro-batches on ``w`` processes
minimises ::

    L = w_tgt sum nll_tgt / N_tgt + w_src sum nll_src / N_src + beta(p) sum KL / N_enc
        + w_uic L_uic + w_dis L_dis + s(p) L_sparse + w_sel L_sel   (structural terms: mean over micro-batches
                                                                     and ranks)

where the ``N`` are the non-pad token counts of the **whole window** (all micro-batches, all ranks,
:func:`window_counts`), so batch 4 x accumulation 1, 2 x 2 and 1 x 4 give the same loss and gradient.

The selection step (``graph`` section, :mod:`sit_nlp.model.task_graph`): after ``graph.find_at`` of the steps the
task graph is found on the representation learned so far, written to ``task_graph.json`` (checkable with
``sit-causal check-uic``), and fixed as the training tasks' masks for the rest of training
(:func:`maybe_find_task_graph`); ``graph.from`` fixes a given graph from step 0 (:func:`install_task_graph`).

Checkpoints every ``train.save_every`` steps (``out_dir/checkpoint-N``, :mod:`sit_nlp.training.checkpoint`);
``--resume`` continues from the latest one (``--resume-from`` names another) and replays exactly the same
batches and noise. The final model goes to ``out_dir/final``
(:func:`sit_nlp.training.checkpoint.save_final`).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from torch import Tensor
from tqdm.auto import tqdm

from sit_causal.fileio import remove_outputs, write_text_atomic
from sit_causal.objective import training_progress
from sit_nlp.data.batching import (
    LengthGroupedBatchSampler,
    Seq2SeqCollator,
    SourceCoveringBatchSampler,
    TokenizedExample,
)
from sit_nlp.data.records import read_records, resolve_data_path
from sit_nlp.model.backbones import RANDOM_BART_SHAPES, load_backbone
from sit_nlp.model.factory import build_model, make_collator
from sit_nlp.model.seq2seq import LossWindow, Seq2SeqSIT
from sit_nlp.training.checkpoint import (
    TrainState,
    check_run_folder,
    maybe_save_checkpoint,
    restore_checkpoint,
    run_artifacts,
    save_final,
)
from sit_nlp.training.config import Config, ConfigError, TrainConfig, save_config
from sit_nlp.training.data import DataStream, build_task_bank, check_data_files, run_tokenizer
from sit_nlp.training.metrics import (
    Meter,
    drop_rows_after,
    flops_per_token,
    last_eval_target,
    maybe_eval,
    maybe_log,
)

__all__ = [
    "accumulate_gradients",
    "given_task_graph",
    "install_task_graph",
    "lr_lambda",
    "make_optimizer",
    "maybe_find_task_graph",
    "train",
    "train_step",
    "window_counts",
]


# ---------------------------------------------------------------------- schedules
def lr_lambda(step: int, warmup: int, total: int, schedule: str) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then linear / cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------- one optimizer step
def window_counts(accelerator: Accelerator, micro_batches: Sequence[dict[str, Tensor]]) -> dict[str, float]:
    """Non-pad token counts of the whole accumulation window, summed over every process: ``target``
    (target tokens), ``source`` (reconstructed source tokens), ``kl`` (encoder tokens)."""
    local = torch.tensor([
        sum(int((mb["labels"] != -100).sum()) for mb in micro_batches),
        sum(int((mb["source_labels"] != -100).sum()) for mb in micro_batches),
        sum(int(mb["attention_mask"].sum()) for mb in micro_batches),
    ], dtype=torch.float64, device=accelerator.device)
    n_tgt, n_src, n_enc = accelerator.reduce(local, reduction="sum").clamp_min(1.0).tolist()
    return {"target": n_tgt, "source": n_src, "kl": n_enc}


def accumulate_gradients(
    accelerator: Accelerator, model: torch.nn.Module, micro_batches: Sequence[dict[str, Tensor]],
    progress: float, generator: torch.Generator | None,
) -> dict[str, float]:
    """Forward and backward every micro-batch of one optimizer step, normalised over the whole window: one
    call of the model per micro-batch gives its loss (:meth:`sit_nlp.model.seq2seq.Seq2SeqSIT.forward`).

    Returns this process's share of each term and of the weighted ``total``, divided by the number of
    processes, so that summing the returned values over processes gives the global means (token terms)
    and the means over processes (structural terms).
    """
    k = len(micro_batches)
    world = accelerator.num_processes
    window = LossWindow(window_counts(accelerator, micro_batches), micro_batches=k, world=world)
    logged: dict[str, float] = {}
    for i, mb in enumerate(micro_batches):
        sync = accelerator.no_sync(model) if i < k - 1 and world > 1 else nullcontext()
        with sync:
            out = model({key: v.to(accelerator.device) for key, v in mb.items()}, generator=generator,
                        window=window, progress=progress)
            accelerator.backward(out["loss"])
        terms = [(name, value) for name, value in out.items() if name != "loss"]
        for name, value in [*terms, ("total", out["loss"])]:
            logged[name] = logged.get(name, 0.0) + float(value.detach()) / world
    return logged


def train_step(
    accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, micro_batches: Sequence[dict[str, Tensor]],
    progress: float, max_grad_norm: float, generator: torch.Generator | None,
) -> dict[str, float]:
    """One optimizer step: accumulate, clip, step, schedule. Returns the local terms (as
    :func:`accumulate_gradients`) and the grad norm (divided by the number of processes, likewise)."""
    terms = accumulate_gradients(accelerator, model, micro_batches, progress, generator)
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm if max_grad_norm > 0 else float("inf"))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    terms["grad_norm"] = float(grad_norm) / accelerator.num_processes
    return terms


def make_optimizer(model: torch.nn.Module, tc: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (fused on GPU) over the backbone at ``train.lr`` and SIT's own modules at ``train.latent_lr``;
    matrices decay by ``train.weight_decay``, vectors (biases, norms) do not."""
    groups = []
    for is_backbone, lr in ((True, tc.lr), (False, tc.latent_lr or tc.lr)):  # SIT's own modules: train.latent_lr
        params = [(n, p) for n, p in model.named_parameters()
                  if p.requires_grad and n.startswith("backbone.") == is_backbone]
        groups += [{"params": [p for _, p in params if p.dim() >= 2], "weight_decay": tc.weight_decay, "lr": lr},
                   {"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0, "lr": lr}]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=tc.lr, betas=(0.9, 0.999), eps=1e-8,
        fused=torch.cuda.is_available() or None,
    )


# ---------------------------------------------------------------------- the selection step
def maybe_find_task_graph(step: int, cfg: Config, accelerator: Accelerator, unwrapped: Seq2SeqSIT,
                          examples: list[TokenizedExample], collator: Seq2SeqCollator, tasks: list[str],
                          model: torch.nn.Module) -> bool:
    """At step ``round(graph.find_at * train.max_steps)`` (once; a resumed run that already fixed it skips):
    the selection step (:func:`sit_nlp.model.task_graph.find_task_graph`) on the representation learned so far,
    the graph fixed as the training tasks' masks, ``task_graph.json`` and ``task_graph_energies.json`` written.
    Every process computes the same graph (same examples, synchronised weights). Returns whether it ran."""
    gc = cfg.graph
    if not unwrapped.is_sit or gc.find_at is None or unwrapped.has_task_graph:
        return False
    if step < round(gc.find_at * cfg.train.max_steps):
        return False
    from sit_nlp.model.task_graph import find_task_graph, write_task_graph

    was_training = model.training
    model.eval()
    try:
        found = find_task_graph(unwrapped, examples, collator, tasks, gc, seed=cfg.train.seed,
                                device=accelerator.device)
    finally:
        model.train(was_training)
    unwrapped.set_task_graph(torch.as_tensor(found.adjacency, dtype=torch.float32))
    if accelerator.is_main_process:
        write_task_graph(found, tasks, Path(cfg.train.out_dir), step)
        if not cfg.train.quiet:
            print(f"step {step} | task graph fixed: {found.summary()}", file=sys.stderr)
    accelerator.wait_for_everyone()
    return True


def given_task_graph(path: Path, tasks: list[str], n_factors: int) -> np.ndarray:
    """The ``(m, n_factors)`` 0/1 task graph of a graph file (rows = ``tasks``, in order; the file's columns
    fill the first channels, the others stay 0); a file that misses a task or has too many factors:
    :class:`ConfigError`."""
    from sit_causal.theory.graph import GraphError, load_graph

    try:
        graph = load_graph(path)
    except (OSError, GraphError, ValueError) as err:
        raise ConfigError(f"graph.from: {path}: {err}") from None
    missing = [t for t in tasks if t not in graph.tasks]
    if missing:
        raise ConfigError(f"graph.from: {path} has no row for the training task {missing[0]!r}")
    if len(graph.factors) > n_factors:
        raise ConfigError(f"graph.from: {path} has {len(graph.factors)} factors, more than model.n_factors="
                          f"{n_factors}")
    adj = np.zeros((len(tasks), n_factors))
    source = np.asarray(graph.adjacency, dtype=float)
    for row, task in enumerate(tasks):
        adj[row, : source.shape[1]] = source[graph.tasks.index(task)]
    return adj


def install_task_graph(cfg: Config, model: Seq2SeqSIT, tasks: list[str], main_process: bool) -> None:
    """``graph.from``: fix the given task graph (:func:`given_task_graph`) from step 0 and write it as
    ``task_graph.json`` (columns named ``z1..zn``), as the selection step would."""
    from sit_causal.theory.graph import TaskFactorGraph

    adj = given_task_graph(Path(cfg.graph.from_file), tasks, cfg.model.n_factors)
    model.set_task_graph(torch.as_tensor(adj, dtype=torch.float32))
    if main_process:
        graph = TaskFactorGraph.from_matrix(adj.astype(int), factors=[f"z{j + 1}" for j in range(adj.shape[1])],
                                            tasks=tasks)
        write_text_atomic(Path(cfg.train.out_dir) / "task_graph.json", json.dumps(graph.to_dict(), indent=1) + "\n")


# ---------------------------------------------------------------------- the recipe
def train(cfg: Config, resume: bool = False, overwrite: bool = False,
          allow_config_change: bool = False, resume_from: Path | None = None) -> dict[str, Any]:
    """Train as configured; returns the last logged row (and the final eval) as a dict. ``resume``:
    continue from the newest ``checkpoint-N`` (or ``resume_from``); ``overwrite``: replace the run there."""
    check_run_folder(cfg, resume, overwrite, allow_config_change, resume_from)
    if cfg.model.tokenizer is not None and not (Path(cfg.model.tokenizer) / "tokenizer.json").is_file():
        raise ConfigError(f"model.tokenizer: {cfg.model.tokenizer}: not a tokenizer folder (no tokenizer.json)")
    tc = cfg.train
    if tc.threads is not None:
        torch.set_num_threads(tc.threads)
    mixed = tc.mixed_precision if tc.mixed_precision != "auto" else ("bf16" if torch.cuda.is_available() else "no")
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),  # several processes on a CPU-only machine: gloo DDP (MULTI_CPU)
        mixed_precision=mixed, log_with="tensorboard" if tc.tensorboard else None, project_dir=tc.out_dir,
        dynamo_backend="inductor" if tc.compile else "no",
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    out_dir, metrics_path = Path(tc.out_dir), Path(tc.out_dir) / "metrics.jsonl"
    check_data_files(cfg)  # before the run folder gets its config.yaml
    records = read_records(resolve_data_path(cfg.data.train_file))
    if cfg.model.method == "sit" and cfg.graph.from_file is not None and not resume:  # a given graph fits the data
        given_task_graph(Path(cfg.graph.from_file), sorted({r.task for r in records}), cfg.model.n_factors)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        if overwrite:
            remove_outputs(out_dir, run_artifacts(out_dir))
        if not resume:
            save_config(cfg, out_dir / "config.yaml")
    accelerator.wait_for_everyone()

    # dropout inside the Hugging Face modules draws from torch's global RNG: seed it here, at the program's
    # entry, per process (accelerate checkpoints it); everything else uses explicit generators
    torch.manual_seed(tc.seed * 1_000_003 + 7919 * accelerator.process_index + 1)
    tokenizer = run_tokenizer(cfg, records, accelerator) if cfg.model.backbone in RANDOM_BART_SHAPES else None
    backbone = load_backbone(cfg.model.backbone, dropout=cfg.model.dropout, seed=cfg.model.init_seed,
                             tokenizer=tokenizer)
    sources = sorted({r.dataset for r in records if r.dataset})  # the prior's data sources
    model = build_model(cfg.model, backbone, cfg.loss, sources=sources)  # Seq2SeqSIT, or DecoderSIT for a causal LM

    tasks = sorted({r.task for r in records})
    collator = make_collator(model, backbone.tokenizer, tasks, cfg.data.max_source_len, cfg.data.max_target_len,
                             cfg.data.max_instruction_len, cfg.model.source_max_len, sources=sources,
                             chat_template=cfg.data.chat_template)
    examples = collator.tokenize(records)
    eval_file = cfg.data.eval_file
    eval_examples = collator.tokenize(read_records(resolve_data_path(eval_file))) if eval_file else None
    bank = build_task_bank(records, collator, cfg.model.task_bank_size) if model.is_sit else None
    model.set_training_tasks(tasks, bank)
    if model.is_sit and cfg.graph.from_file is not None and not resume:
        install_task_graph(cfg, model, tasks, accelerator.is_main_process)
    sampler: LengthGroupedBatchSampler | SourceCoveringBatchSampler
    if cfg.data.sources_per_batch > 0:  # the invariance term's contract: several sources of a task per batch
        sampler = SourceCoveringBatchSampler(
            [e.task_id for e in examples], [e.source_id for e in examples], tc.batch_size,
            k=cfg.data.sources_per_batch, seed=tc.seed, rank=accelerator.process_index,
            world_size=accelerator.num_processes,
        )
    else:
        sampler = LengthGroupedBatchSampler(
            [e.length for e in examples], tc.batch_size, seed=tc.seed, group_size=cfg.data.length_group_size,
            rank=accelerator.process_index, world_size=accelerator.num_processes,
        )
    stream = DataStream(examples, collator, sampler)
    generator = torch.Generator(device=accelerator.device)
    generator.manual_seed(tc.seed * 1_000_003 + accelerator.process_index)

    optimizer = make_optimizer(model, tc)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, tc.warmup_steps, tc.max_steps, tc.schedule)
    )
    meter = Meter(*flops_per_token(model))  # before prepare: FSDP shards the parameters
    model, optimizer = accelerator.prepare(model, optimizer)
    state = TrainState(generator, stream)
    accelerator.register_for_checkpointing(scheduler)
    if tc.tensorboard:
        accelerator.init_trackers("sit-nlp")

    if resume:
        step = restore_checkpoint(accelerator, cfg, state, model, resume_from)
        if accelerator.is_main_process:  # rows logged after the checkpoint are logged again
            drop_rows_after(metrics_path, step)
        accelerator.wait_for_everyone()
    elif accelerator.is_main_process and metrics_path.exists():
        metrics_path.unlink()

    unwrapped: Seq2SeqSIT = accelerator.unwrap_model(model)
    peak = tc.peak_tflops
    if peak is None and accelerator.device.type == "cuda":  # the MFU denominator, measured here
        from sit_nlp.training.throughput import matmul_ceiling

        peak = matmul_ceiling(accelerator.device)
    model.train()
    last = None
    bar = tqdm(total=tc.max_steps, initial=state.step, disable=not accelerator.is_main_process or tc.quiet,
               desc=f"train {cfg.model.method}", file=sys.stderr, dynamic_ncols=True)
    last_eval = None
    while state.step < tc.max_steps:
        maybe_find_task_graph(state.step, cfg, accelerator, unwrapped, examples, collator, tasks, model)
        micro = [stream.next_batch() for _ in range(tc.grad_accum)]
        progress = training_progress(state.step, tc.max_steps)
        beta = cfg.loss.beta(progress)
        terms = train_step(accelerator, model, optimizer, scheduler, micro, progress, tc.max_grad_norm, generator)
        state.step += 1
        meter.add(terms, micro)
        bar.update(1)
        last = maybe_log(state.step, cfg, accelerator, meter, scheduler.get_last_lr()[0], beta, bar,
                         metrics_path, peak=peak) or last
        if maybe_eval(state.step, cfg, accelerator, model, eval_examples, collator, metrics_path) is not None:
            last_eval = state.step
        maybe_save_checkpoint(state.step, cfg, accelerator, state, model, backbone.tokenizer, bank)
        if tc.stop_after is not None and state.step >= tc.stop_after:
            bar.close()
            accelerator.end_training()
            return {"stopped_at": state.step, **(last or {})}
    bar.close()
    last = maybe_log(state.step, cfg, accelerator, meter, scheduler.get_last_lr()[0], beta, None,
                     metrics_path, force=True, peak=peak) or last
    if last_eval != state.step:  # the loop's last eval already ran at this step: never twice
        eval_value = maybe_eval(state.step, cfg, accelerator, model, eval_examples, collator, metrics_path,
                                force=True)
    else:
        eval_value = last_eval_target(metrics_path)
    if not (out_dir / f"checkpoint-{state.step}").exists():
        maybe_save_checkpoint(state.step, cfg, accelerator, state, model, backbone.tokenizer, bank, force=True)
    final = save_final(accelerator, model, cfg, backbone.tokenizer, bank)
    accelerator.end_training()
    return {**(last or {}), "eval_target": eval_value, "final": str(final)}
