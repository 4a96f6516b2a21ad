"""``sit-nlp train``: multi-task instruction tuning of SIT or vanilla on Hugging Face Accelerate.

One process (CPU or one GPU)::

    sit-nlp train --config configs/tiny.yaml [--key=value ...] [--resume]

Several GPUs (DDP) or FSDP, by accelerate config alone (files shipped in ``sit_nlp/accelerate_configs/``)::

    accelerate launch --config_file sit_nlp/accelerate_configs/ddp.yaml -m sit_nlp.cli.main train --config ...

The recipe (:func:`train`): accelerator -> config -> backbone + model -> data (tokenised records, task
bank, length-grouped sharded batches) -> optimizer (AdamW, fused on GPU) -> LR schedule (warm-up) ->
prepare -> resume -> loop of :func:`train_step` with :func:`maybe_log`, :func:`maybe_eval`,
:func:`maybe_save_checkpoint` -> final save.

The loss is the one SIT objective (:class:`sit_causal.objective.ObjectiveConfig`, the ``loss`` section):
the model returns its named terms as sums and counts, this loop only **reduces** them (:func:`reduce_terms`),
hands them to ``ObjectiveConfig.total`` at the training progress ``p = step / (max_steps - 1)``,
backpropagates and logs. The reduction is the classic gradient-accumulation pitfall done right: a step of
``k`` micro-batches on ``w`` processes minimises ::

    L = w_tgt sum nll_tgt / N_tgt + w_src sum nll_src / N_src + beta(p) sum KL / N_enc
        + w_uic L_uic + w_dis L_dis + s(p) L_sparse + w_sel L_sel   (structural terms: mean over micro-batches
                                                                     and ranks)

where the ``N`` are the non-pad token counts of the **whole window** (all micro-batches, all ranks), so
batch 4 x accumulation 1, 2 x 2 and 1 x 4 give the same loss and gradient.

The selection step (``graph`` section, :mod:`sit_nlp.model.task_graph`): after ``graph.find_at`` of the steps the
task graph is found on the representation learned so far, written to ``task_graph.json`` (checkable with
``sit-causal check-uic``), and fixed as the training tasks' masks for the rest of training.

Checkpoints (``out_dir/checkpoint-N``, as Hugging Face Trainer names them, written into ``*.tmp`` and renamed,
so a killed job never leaves a half checkpoint): the model as a model folder (safetensors; ``sit-nlp eval``
takes any checkpoint), and in ``training_state/`` the optimizer, scheduler, every process's RNG states, the
latent noise generator and the data position (epoch, batches consumed, sampler seed). ``--resume``
continues from the latest one (``--resume-from`` names another); the resumed run replays exactly the same
batches and noise. The final model goes to ``out_dir/final`` (:func:`sit_nlp.model.seq2seq.save_trained`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType
from torch import Tensor
from tqdm.auto import tqdm

from sit_causal.cli.common import interrupted
from sit_causal.fileio import check_output_dir, remove_outputs, replace_directory, write_text_atomic
from sit_causal.inputs import UsageFailure
from sit_causal.objective import STRUCTURAL_TERMS, ObjectiveConfig, training_progress
from sit_nlp.data.batching import LengthGroupedBatchSampler, Seq2SeqCollator, TokenizedExample
from sit_nlp.data.records import InstructionRecord, RecordError, read_records, resolve_data_path
from sit_nlp.model.backbones import RANDOM_BART_SHAPES, BackboneError, load_backbone
from sit_nlp.model.seq2seq import Seq2SeqSIT, TaskBank, save_trained
from sit_nlp.training.config import Config, ConfigError, load_config, save_config

__all__ = [
    "DataStream",
    "TrainState",
    "accumulate_gradients",
    "build_task_bank",
    "checkpoint_dirs",
    "evaluation_nll",
    "lr_lambda",
    "maybe_eval",
    "maybe_find_task_graph",
    "maybe_log",
    "maybe_save_checkpoint",
    "reduce_terms",
    "resolve_data_path",
    "train",
    "train_command",
    "train_step",
]

LOSS_TERMS = ("target", "source", "kl", "uic", "distinction", "sparsity", "selection")
_TOKEN_TERMS = {"target": ("target_nll", "target_tokens"), "source": ("source_nll", "source_tokens"),
                "kl": ("kl", "kl_tokens")}


# ---------------------------------------------------------------------- data
def build_task_bank(records: Sequence[InstructionRecord], collator: Seq2SeqCollator, size: int) -> TaskBank | None:
    """Distinct (task, instruction) pairs of the training records, sorted, at most ``size`` (round-robin
    over tasks so every task is represented before any gets a second instruction); ``size = 0``: none."""
    if size <= 0:
        return None
    per_task: dict[str, list[str]] = {}
    for r in records:
        text = r.instruction.strip()
        if text not in per_task.setdefault(r.task, []):
            per_task[r.task].append(text)
    rows: list[tuple[str, str]] = []
    depth = 0
    while len(rows) < size and any(len(v) > depth for v in per_task.values()):
        rows += [(t, v[depth]) for t, v in sorted(per_task.items()) if len(v) > depth][: size - len(rows)]
        depth += 1
    tokenized = collator.tokenizer(
        [i for _, i in rows], truncation=True, max_length=collator.max_instruction_len
    )["input_ids"]
    ids, mask = collator.pad_instructions(tokenized)
    task_ids = torch.as_tensor([collator.task_index.get(t, -1) for t, _ in rows], dtype=torch.long)
    return TaskBank(ids=ids, mask=mask, task_ids=task_ids, tasks=[t for t, _ in rows],
                    instructions=[i for _, i in rows])


class DataStream:
    """Endless stream of this process's collated batches, epoch after epoch, with a resumable position."""

    def __init__(self, examples: list[TokenizedExample], collator: Seq2SeqCollator,
                 sampler: LengthGroupedBatchSampler) -> None:
        self.examples, self.collator, self.sampler = examples, collator, sampler
        self.epoch, self.position = 0, 0
        self._batches: list[list[int]] | None = None

    def next_batch(self) -> dict[str, Tensor]:
        if self._batches is None:
            self.sampler.set_epoch(self.epoch)
            self._batches = list(self.sampler)
        if self.position >= len(self._batches):
            self.epoch, self.position, self._batches = self.epoch + 1, 0, None
            return self.next_batch()
        batch = self._batches[self.position]
        self.position += 1
        return self.collator([self.examples[i] for i in batch])

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "sampler_seed": self.sampler.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._batches = int(state["epoch"]), int(state["position"]), None
        self.sampler.seed = int(state["sampler_seed"])


class TrainState:
    """Step counter, latent-noise generator and data position: checkpointed with the model."""

    def __init__(self, generator: torch.Generator, stream: DataStream) -> None:
        self.step, self.generator, self.stream = 0, generator, stream

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "generator": self.generator.get_state(), "data": self.stream.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])
        self.stream.load_state_dict(state["data"])


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


def reduce_terms(out: dict[str, Tensor], counts: dict[str, float], micro_batches: int, world: int) -> dict[str, Tensor]:
    """The reduction of one micro-batch's sums into the objective's terms: a token sum over the window's
    count, times ``world`` (DDP averages gradients over processes); a structural term over the number of
    micro-batches."""
    terms: dict[str, Tensor] = {}
    for name, (key, _) in _TOKEN_TERMS.items():
        if key in out:
            terms[name] = world * out[key] / counts[name]
    for name in (*STRUCTURAL_TERMS, "selection"):
        if name in out:
            terms[name] = out[name] / micro_batches
    return terms


def accumulate_gradients(
    accelerator: Accelerator, model: torch.nn.Module, micro_batches: Sequence[dict[str, Tensor]],
    objective: ObjectiveConfig, progress: float, generator: torch.Generator | None,
) -> dict[str, float]:
    """Forward and backward every micro-batch of one optimizer step, normalised over the whole window.

    Returns this process's share of each term and of the weighted ``total``, divided by the number of
    processes, so that summing the returned values over processes gives the global means (token terms)
    and the means over processes (structural terms).
    """
    k = len(micro_batches)
    counts = window_counts(accelerator, micro_batches)
    world = accelerator.num_processes
    logged: dict[str, float] = {}
    for i, mb in enumerate(micro_batches):
        sync = accelerator.no_sync(model) if i < k - 1 and world > 1 else nullcontext()
        with sync:
            out = model({key: v.to(accelerator.device) for key, v in mb.items()}, generator=generator)
            terms = reduce_terms(out, counts, k, world)
            total = objective.total(terms, progress)
            accelerator.backward(total)
        for name, value in [*terms.items(), ("total", total)]:
            logged[name] = logged.get(name, 0.0) + float(value.detach()) / world
    return logged


def train_step(
    accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, micro_batches: Sequence[dict[str, Tensor]],
    objective: ObjectiveConfig, progress: float, max_grad_norm: float, generator: torch.Generator | None,
) -> dict[str, float]:
    """One optimizer step: accumulate, clip, step, schedule. Returns the local terms (as
    :func:`accumulate_gradients`) and the grad norm (divided by the number of processes, likewise)."""
    terms = accumulate_gradients(accelerator, model, micro_batches, objective, progress, generator)
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm if max_grad_norm > 0 else float("inf"))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    terms["grad_norm"] = float(grad_norm) / accelerator.num_processes
    return terms


# ---------------------------------------------------------------------- logging, eval, checkpoints
class Meter:
    """Sums of the local loss terms and token counts between two log lines."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps, self.tokens, self.flops, self.t0 = 0, 0.0, 0.0, time.perf_counter()

    def add(self, terms: dict[str, float], tokens: float, flops: float) -> None:
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps, self.tokens, self.flops = self.steps + 1, self.tokens + tokens, self.flops + flops


def maybe_log(step: int, cfg: Config, accelerator: Accelerator, meter: Meter, lr: float, beta: float,
              bar: tqdm | None, metrics_path: Path, force: bool = False,
              peak: float | None = None) -> dict[str, float] | None:
    """Every ``train.log_every`` steps: one line (and one JSON line in ``metrics.jsonl``) with the step,
    the objective's total (``loss``) and every term, the grad norm, lr, tokens/s and, given ``peak`` (TFLOP/s
    per process: :func:`sit_nlp.training.throughput.matmul_ceiling` on a GPU, or ``train.peak_tflops``), the MFU.
    Nothing is recomputed: the values are the ones the objective produced."""
    every = cfg.train.log_every
    if meter.steps == 0 or not (force or (every > 0 and step % every == 0)):
        return None
    names = sorted(meter.sums)
    local = torch.tensor([meter.sums[n] for n in names] + [meter.tokens, meter.flops],
                         dtype=torch.float64, device=accelerator.device)
    total = accelerator.reduce(local, reduction="sum").tolist()
    world, steps = accelerator.num_processes, meter.steps
    elapsed = time.perf_counter() - meter.t0
    row: dict[str, float] = {"step": step}
    for name, value in zip(names, total, strict=False):
        # every local value was divided by the number of processes: the sum over processes is the mean
        row["loss" if name == "total" else name] = value / steps
    row["lr"] = lr
    row["kl_beta"] = beta
    row["tokens_per_s"] = total[-2] / elapsed
    if peak:
        row["mfu"] = total[-1] / elapsed / (peak * 1e12 * world)
    meter.reset()
    if accelerator.is_main_process:
        parts = [f"step {step}", f"loss {row['loss']:.4f}"]
        parts += [f"{n} {row[n]:.4f}" for n in LOSS_TERMS if n in row]
        parts += [f"gnorm {row['grad_norm']:.3f}", f"lr {lr:.2e}", f"tok/s {row['tokens_per_s']:.0f}"]
        if "mfu" in row:
            parts.append(f"mfu {100 * row['mfu']:.1f}%")
        line = " | ".join(parts)
        if bar is not None and not bar.disable:
            bar.write(line, file=sys.stderr)
        elif not cfg.train.quiet:
            print(line, file=sys.stderr)
        with metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if cfg.train.tensorboard:
            accelerator.log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=step)
    return row


@torch.no_grad()
def evaluation_nll(accelerator: Accelerator, model: torch.nn.Module, examples: list[TokenizedExample],
                   collator: Seq2SeqCollator, batch_size: int, sample: bool | None = None,
                   seed: int = 0) -> float:
    """Token-mean target nll over ``examples`` (sharded over processes, in length order), in evaluation
    mode: the posterior-mean path every evaluation uses; ``sample=True``: the sampled training path
    (posterior noise from a generator seeded by ``seed``, so the number is reproducible)."""
    generator = None
    if sample:
        generator = torch.Generator(device=accelerator.device)
        generator.manual_seed(seed * 1_000_003 + accelerator.process_index)
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: examples[i].length)
    mine = order[accelerator.process_index :: accelerator.num_processes]
    # every process runs the same number of forwards (FSDP gathers parameters in each one): a process
    # that has run out repeats its first example with weight 0
    n_batches = math.ceil(math.ceil(len(examples) / accelerator.num_processes) / batch_size)
    sums = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for b in range(n_batches):
        chunk = mine[b * batch_size : (b + 1) * batch_size]
        batch = collator([examples[i] for i in (chunk or order[:1])])
        out = model({k: v.to(accelerator.device) for k, v in batch.items()}, generator=generator, sample=sample)
        if chunk:
            sums += torch.stack([out["target_nll"].double(), out["target_tokens"].double()])
    model.train()
    total = accelerator.reduce(sums, reduction="sum")
    return float(total[0] / total[1].clamp_min(1))


def maybe_eval(step: int, cfg: Config, accelerator: Accelerator, model: torch.nn.Module,
               eval_examples: list[TokenizedExample] | None, collator: Seq2SeqCollator, metrics_path: Path,
               force: bool = False) -> float | None:
    """Every ``train.eval_every`` steps (and at the end): target nll on ``data.eval_file`` by the
    evaluation path (``eval_target``) and, where training samples the latent (``model.sample_latent``),
    by the sampled training path too (``eval_target_sampled``), so a gap between the two shows."""
    every = cfg.train.eval_every
    if not eval_examples or not (force or (every > 0 and step % every == 0)):
        return None
    value = evaluation_nll(accelerator, model, eval_examples, collator, cfg.train.batch_size)
    row = {"step": step, "eval_target": value}
    if cfg.model.method == "sit" and cfg.model.sample_latent:
        row["eval_target_sampled"] = evaluation_nll(accelerator, model, eval_examples, collator,
                                                    cfg.train.batch_size, sample=True, seed=cfg.train.seed)
    if accelerator.is_main_process:
        with metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if not cfg.train.quiet:
            extra = f" (sampled path {row['eval_target_sampled']:.4f})" if "eval_target_sampled" in row else ""
            print(f"step {step} | eval target nll {value:.4f}{extra}", file=sys.stderr)
        if cfg.train.tensorboard:
            accelerator.log({f"eval/{k[5:]}": v for k, v in row.items() if k != "step"}, step=step)
    return value


CHECKPOINT = re.compile(r"checkpoint-(\d+)")
TRAINING_STATE = "training_state"


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    """The run's ``checkpoint-N`` folders, oldest first (a ``.tmp`` left by a killed save is not one)."""
    found = [p for p in Path(out_dir).glob("checkpoint-*") if CHECKPOINT.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _skip_model_weights(models: list, weights: list, output_dir: str) -> None:
    """accelerate save hook: the model is saved as a model folder by :func:`save_checkpoint` (safetensors,
    loadable by ``eval`` and ``from_pretrained``), not a second time inside the training state."""
    weights.clear()


def _skip_model_loading(models: list, input_dir: str) -> None:
    """accelerate load hook: the weights come from the checkpoint's model folder (:func:`_resume`)."""
    models.clear()


def save_checkpoint(step: int, cfg: Config, accelerator: Accelerator, state: TrainState, model: torch.nn.Module,
                    tokenizer: Any, bank: TaskBank | None) -> Path:
    """A ``checkpoint-N`` folder, atomically (``.tmp`` then rename), laid out as Hugging Face Trainer's:

    * the model, as :func:`sit_nlp.model.seq2seq.save_trained` writes it (safetensors, ``config.yaml``, tokenizer):
      ``sit-nlp eval --checkpoint``, ``sit-nlp masks`` and ``Seq2SeqSIT.from_pretrained`` accept it;
    * ``training_state/``: accelerate's optimizer, scheduler and RNG states (``optimizer.bin``,
      ``scheduler.bin``, ``random_states_{rank}.pkl``: accelerate's own formats), and per process
      ``train_state_{rank}.json`` (step, data position) with ``generator_{rank}.safetensors`` (the latent
      noise generator's state).
    Only the newest ``train.keep_checkpoints`` folders are kept."""
    from safetensors.torch import save_file

    out_dir = Path(cfg.train.out_dir)
    final = out_dir / f"checkpoint-{step}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / TRAINING_STATE).mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        fsdp = accelerator.distributed_type == DistributedType.FSDP
        handle = None if fsdp else accelerator.register_save_state_pre_hook(_skip_model_weights)
        try:
            accelerator.save_state(str(tmp / TRAINING_STATE), safe_serialization=True)
        finally:
            if handle is not None:
                handle.remove()
        rank = accelerator.process_index
        own = state.state_dict()
        save_file({"state": own.pop("generator")}, str(tmp / TRAINING_STATE / f"generator_{rank}.safetensors"))
        (tmp / TRAINING_STATE / f"train_state_{rank}.json").write_text(json.dumps(own), encoding="utf-8")
        full_state = accelerator.get_state_dict(model)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_trained(accelerator.unwrap_model(model), cfg, tokenizer, tmp, state_dict=full_state, bank=bank)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
    except BaseException:  # a full disk, Ctrl-C: the half-written checkpoint goes, the finished ones stay
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        for old in checkpoint_dirs(out_dir)[: -cfg.train.keep_checkpoints or None]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def maybe_save_checkpoint(step: int, cfg: Config, accelerator: Accelerator, state: TrainState,
                          model: torch.nn.Module, tokenizer: Any, bank: TaskBank | None,
                          force: bool = False) -> Path | None:
    """Every ``train.save_every`` steps (and at the end): :func:`save_checkpoint`."""
    every = cfg.train.save_every
    if not (force or (every > 0 and step % every == 0)):
        return None
    return save_checkpoint(step, cfg, accelerator, state, model, tokenizer, bank)


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


def _flops_per_token(model: Seq2SeqSIT) -> tuple[float, float]:
    """``6 x parameters`` seen by each source token and by each target token (a Kaplan-style estimate)."""
    enc = sum(p.numel() for p in model.backbone.get_encoder().parameters())
    backbone = sum(p.numel() for p in model.backbone.parameters())
    extra = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
    return 6.0 * (enc + extra), 6.0 * (backbone - enc)


def run_tokenizer(cfg: Config, records: Sequence[InstructionRecord], accelerator: Accelerator) -> Any:
    """The tokenizer of a randomly initialised preset: ``model.tokenizer`` if given; else ``OUT/tokenizer``
    (a resumed run's), else a byte-level BPE of ``model.tokenizer_vocab`` entries trained on the training
    records by the main process and saved to ``OUT/tokenizer`` (deterministic; the other processes load it)."""
    from sit_nlp.data.tokenizer import load_tokenizer, record_texts, train_bpe_tokenizer

    if cfg.model.tokenizer is not None:
        try:
            return load_tokenizer(cfg.model.tokenizer)
        except (OSError, ValueError) as err:
            raise ConfigError(f"model.tokenizer: {str(err).splitlines()[0]}") from None
    saved = Path(cfg.train.out_dir) / "tokenizer"
    if accelerator.is_main_process and not (saved / "tokenizer.json").is_file():
        tok = train_bpe_tokenizer(record_texts(records), cfg.model.tokenizer_vocab)
        tmp = saved.with_name("tokenizer.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tok.save_pretrained(str(tmp))
        os.replace(tmp, saved)
    accelerator.wait_for_everyone()
    return load_tokenizer(saved)


# ---------------------------------------------------------------------- the recipe
RUN_ARTIFACTS = ("final", "metrics.jsonl", "task_graph.json", "task_graph_energies.json", "tokenizer")
"""What a run writes into ``train.out_dir`` besides ``config.yaml`` and its ``checkpoint-N`` folders: what
``--overwrite`` removes (with the checkpoints, :func:`run_artifacts`)."""


def run_artifacts(out_dir: Path) -> list[str]:
    """Names of everything a run wrote into ``out_dir``: :data:`RUN_ARTIFACTS` present and the checkpoints
    (and a ``checkpoint-N.tmp`` a killed save left)."""
    names = [name for name in RUN_ARTIFACTS if (out_dir / name).exists()]
    return names + sorted(p.name for p in out_dir.glob("checkpoint-*")
                          if CHECKPOINT.fullmatch(p.name.removesuffix(".tmp")))
RESUMABLE_CHANGES = frozenset({"train.quiet", "train.stop_after", "train.tensorboard", "train.log_every",
                               "train.eval_every", "train.save_every", "train.keep_checkpoints", "train.threads"})
"""Config keys that may differ between a run and its ``--resume`` (they change no computed number)."""


def check_run_folder(cfg: Config, resume: bool, overwrite: bool, allow_config_change: bool = False,
                     resume_from: Path | None = None) -> None:
    """Before any work: a run folder that already holds a run is refused unless ``resume`` (whose saved
    config must match, key by key, except :data:`RESUMABLE_CHANGES`, unless ``allow_config_change``) or
    ``overwrite`` (the old run's artifacts are removed). ``resume_from``: a ``checkpoint-N`` folder of
    this run to resume from instead of the newest. Raises :class:`ConfigError` (one line)."""
    from sit_nlp.training.config import config_to_dict

    out_dir = Path(cfg.train.out_dir)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"train.out_dir {out_dir} is a file, not a folder")
    held = run_artifacts(out_dir) if out_dir.is_dir() else []
    if resume_from is not None:
        if not resume:
            raise ConfigError("--resume-from needs --resume")
        if not CHECKPOINT.fullmatch(resume_from.name) or not (resume_from / TRAINING_STATE).is_dir():
            raise ConfigError(f"--resume-from {resume_from}: not a checkpoint-N folder with {TRAINING_STATE}/")
        if resume_from.resolve().parent != out_dir.resolve():
            raise ConfigError(f"--resume-from {resume_from}: not a checkpoint of train.out_dir {out_dir}")
    if resume:
        saved = out_dir / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume: no checkpoint under {out_dir} (no run there: no config.yaml)")
        old, new = config_to_dict(load_config(saved)), config_to_dict(cfg)
        changed = [f"{sec}.{key}" for sec in new for key in new[sec]
                   if old.get(sec, {}).get(key) != new[sec][key] and f"{sec}.{key}" not in RESUMABLE_CHANGES]
        if changed and not allow_config_change:
            raise ConfigError(f"--resume: the config differs from the run's in {', '.join(changed)}; "
                              "pass --allow-config-change to resume anyway")
        return
    if held and not overwrite:
        raise ConfigError(f"{out_dir} already holds a run ({', '.join(held)}); pass --resume to continue it, "
                          "--overwrite to replace it, or choose another --train.out_dir")
    try:
        check_output_dir(out_dir, "train.out_dir")  # a small file written and removed: what root cannot write too
    except UsageFailure as err:
        raise ConfigError(str(err)) from None


def check_data_files(cfg: Config) -> None:
    """The data files the run reads exist and are files (one-line :class:`ConfigError` otherwise)."""
    for key, name in (("data.train_file", cfg.data.train_file), ("data.eval_file", cfg.data.eval_file)):
        if name is None:
            continue
        path = resolve_data_path(name)
        if not path.is_file():
            raise ConfigError(f"{key} {name}: {'is a folder, not a file' if path.is_dir() else 'no such file'}")


def interrupted_line(out_dir: Path) -> str:
    """What an interrupted run kept in ``out_dir`` and how to continue it (one line)."""
    steps = sorted(int(m.group(1)) for p in out_dir.glob("checkpoint-*") if (m := CHECKPOINT.fullmatch(p.name)))
    if steps:
        return f"{out_dir} keeps checkpoint-{steps[-1]} (step {steps[-1]}); continue with --resume (same config)"
    return f"no checkpoint was saved yet; nothing to resume in {out_dir} (rerun with --overwrite)"


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
    model = Seq2SeqSIT(cfg.model, backbone, cfg.loss, sources=sources)

    tasks = sorted({r.task for r in records})
    collator = Seq2SeqCollator(
        backbone.tokenizer, model.backbone.config.decoder_start_token_id, tasks, cfg.data.max_source_len,
        cfg.data.max_target_len, cfg.data.max_instruction_len, cfg.model.source_max_len, sources=sources,
    )
    examples = collator.tokenize(records)
    eval_file = cfg.data.eval_file
    eval_examples = collator.tokenize(read_records(resolve_data_path(eval_file))) if eval_file else None
    bank = build_task_bank(records, collator, cfg.model.task_bank_size) if model.is_sit else None
    model.set_task_bank(bank)
    if model.is_sit:
        model.init_task_graph(len(tasks))
        if bank is not None:
            model.register_training_instructions(bank.ids, bank.mask, bank.task_ids, tasks)
        if cfg.graph.from_file is not None and not resume:
            install_task_graph(cfg, model, tasks, accelerator.is_main_process)
    sampler = LengthGroupedBatchSampler(
        [e.length for e in examples], tc.batch_size, seed=tc.seed, group_size=cfg.data.length_group_size,
        rank=accelerator.process_index, world_size=accelerator.num_processes,
    )
    stream = DataStream(examples, collator, sampler)
    generator = torch.Generator(device=accelerator.device)
    generator.manual_seed(tc.seed * 1_000_003 + accelerator.process_index)

    groups = []
    for is_backbone, lr in ((True, tc.lr), (False, tc.latent_lr or tc.lr)):  # SIT's own modules: train.latent_lr
        params = [(n, p) for n, p in model.named_parameters()
                  if p.requires_grad and n.startswith("backbone.") == is_backbone]
        groups += [{"params": [p for _, p in params if p.dim() >= 2], "weight_decay": tc.weight_decay, "lr": lr},
                   {"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0, "lr": lr}]
    optimizer = torch.optim.AdamW(
        [g for g in groups if g["params"]], lr=tc.lr, betas=(0.9, 0.999), eps=1e-8,
        fused=torch.cuda.is_available() or None,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, tc.warmup_steps, tc.max_steps, tc.schedule)
    )
    src_flops, tgt_flops = _flops_per_token(model)  # before prepare: FSDP shards the parameters
    model, optimizer = accelerator.prepare(model, optimizer)
    state = TrainState(generator, stream)
    accelerator.register_for_checkpointing(scheduler)
    if tc.tensorboard:
        accelerator.init_trackers("sit-nlp")

    if resume:
        _resume(accelerator, cfg, metrics_path, state, model, resume_from)
    elif accelerator.is_main_process and metrics_path.exists():
        metrics_path.unlink()

    unwrapped: Seq2SeqSIT = accelerator.unwrap_model(model)
    peak = tc.peak_tflops
    if peak is None and accelerator.device.type == "cuda":  # the MFU denominator, measured here
        from sit_nlp.training.throughput import matmul_ceiling

        peak = matmul_ceiling(accelerator.device)
    model.train()
    meter, last = Meter(), None
    bar = tqdm(total=tc.max_steps, initial=state.step, disable=not accelerator.is_main_process or tc.quiet,
               desc=f"train {cfg.model.method}", file=sys.stderr, dynamic_ncols=True)
    last_eval = None
    while state.step < tc.max_steps:
        maybe_find_task_graph(state.step, cfg, accelerator, unwrapped, examples, collator, tasks, model)
        micro = [stream.next_batch() for _ in range(tc.grad_accum)]
        progress = training_progress(state.step, tc.max_steps)
        beta = cfg.loss.beta(progress)
        unwrapped.set_progress(progress)  # the encoder residual's fade (guidance=residual)
        terms = train_step(accelerator, model, optimizer, scheduler, micro, cfg.loss, progress, tc.max_grad_norm,
                           generator)
        state.step += 1
        n_src = sum(float(mb["attention_mask"].sum()) for mb in micro)
        n_tgt = sum(float((mb["labels"] != -100).sum()) for mb in micro)
        meter.add(terms, n_src + n_tgt, src_flops * n_src + tgt_flops * n_tgt)
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
    eval_value = None
    if last_eval != state.step:  # the loop's last eval already ran at this step: never twice
        eval_value = maybe_eval(state.step, cfg, accelerator, model, eval_examples, collator, metrics_path,
                                force=True)
    elif metrics_path.exists():
        rows = [json.loads(x) for x in metrics_path.read_text(encoding="utf-8").splitlines() if x.strip()]
        eval_value = next((r["eval_target"] for r in reversed(rows) if "eval_target" in r), None)
    if not (out_dir / f"checkpoint-{state.step}").exists():
        maybe_save_checkpoint(state.step, cfg, accelerator, state, model, backbone.tokenizer, bank, force=True)
    full_state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:  # written aside and renamed: a full disk never leaves half a final/
        aside = out_dir / ".final.build"  # the folder is still named final: its README names it
        shutil.rmtree(aside, ignore_errors=True)
        try:
            save_trained(unwrapped, cfg, backbone.tokenizer, aside / "final", state_dict=full_state, bank=bank,
                         final=True)
            replace_directory(aside / "final", out_dir / "final")
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {**(last or {}), "eval_target": eval_value, "final": str(out_dir / "final")}


def _resume(accelerator: Accelerator, cfg: Config, metrics_path: Path, state: TrainState, model: torch.nn.Module,
            checkpoint: Path | None = None) -> None:
    """Continue from ``checkpoint`` (a ``checkpoint-N`` folder; default: the newest): the model's weights
    and buffers from its model folder, optimizer, scheduler and RNGs from ``training_state/``, then the
    step, data position and noise generator of this process; metrics logged after step ``N`` are dropped."""
    from safetensors.torch import load_file

    from sit_nlp.model.seq2seq import load_trained

    found = checkpoint_dirs(Path(cfg.train.out_dir))
    if checkpoint is None and not found:
        raise ConfigError(f"--resume: no checkpoint under {cfg.train.out_dir} (no checkpoint-N folder)")
    ckpt = found[-1] if checkpoint is None else checkpoint
    rank = accelerator.process_index
    own = ckpt / TRAINING_STATE / f"train_state_{rank}.json"
    if not own.is_file():
        raise ConfigError(f"--resume: {ckpt} has no {TRAINING_STATE}/{own.name} "
                          "(not a checkpoint-N folder, or saved with a different number of processes?)")
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if not fsdp:
        saved, _, _ = load_trained(ckpt)
        unwrapped = accelerator.unwrap_model(model)
        if unwrapped.is_sit:
            unwrapped.init_task_graph(int(saved.task_graph.shape[0]))
        unwrapped.load_state_dict(saved.state_dict())
        del saved
    handle = None if fsdp else accelerator.register_load_state_pre_hook(_skip_model_loading)
    try:
        accelerator.load_state(str(ckpt / TRAINING_STATE))
    finally:
        if handle is not None:
            handle.remove()
    train_state = json.loads(own.read_text(encoding="utf-8"))
    train_state["generator"] = load_file(str(ckpt / TRAINING_STATE / f"generator_{rank}.safetensors"))["state"]
    state.load_state_dict(train_state)
    step = int(train_state["step"])
    if accelerator.is_main_process and metrics_path.exists():  # drop rows logged after the checkpoint
        rows = [json.loads(x) for x in metrics_path.read_text(encoding="utf-8").splitlines() if x.strip()]
        kept = [json.dumps(r) for r in rows if r.get("step", 0) <= step]
        metrics_path.write_text("".join(x + "\n" for x in kept), encoding="utf-8")
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------------- CLI
def train_command(
    ctx: typer.Context,
    config: Path = typer.Option(None, "--config", "-c", help="YAML config (configs/tiny.yaml, ...)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in train.out_dir."),
    resume_from: Path | None = typer.Option(None, "--resume-from",
                                            help="With --resume: this checkpoint-N folder instead of the latest."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run already in train.out_dir."),
    allow_config_change: bool = typer.Option(False, "--allow-config-change",
                                             help="With --resume: resume although the config differs."),
    threads: int | None = typer.Option(None, "--threads", help="torch threads (= --train.threads=N)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or log lines (metrics.jsonl still written)."),
    json_out: bool = typer.Option(False, "--json", help="Print the final metrics as one JSON object."),
) -> None:
    """Train SIT or vanilla; extra --key=value arguments override the config (e.g. --train.lr=3e-4)."""
    try:
        if threads is not None and threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        cfg = load_config(config, list(ctx.args))
        if quiet or json_out:
            cfg.train.quiet = True
        if threads is not None:
            cfg.train.threads = threads
        result = train(cfg, resume=resume, overwrite=overwrite, allow_config_change=allow_config_change,
                       resume_from=resume_from)
    except (ConfigError, RecordError, BackboneError) as err:
        raise UsageFailure(str(err)) from None
    except KeyboardInterrupt:
        raise interrupted("sit-nlp", interrupted_line(Path(cfg.train.out_dir))) from None
    if json_out and int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    """``python -m sit_nlp.training.loop`` = ``sit-nlp train`` (handy under ``accelerate launch -m``)."""
    from sit_causal.cli.common import make_app, run_app

    app = make_app("Train SIT or vanilla.")
    app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(train_command)

    @app.callback()
    def _root() -> None:
        """Train SIT or vanilla."""

    sys.exit(run_app(app, "sit-nlp", ["train", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    main()
