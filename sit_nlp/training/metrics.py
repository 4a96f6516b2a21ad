"""What a training run reports: log lines and ``metrics.jsonl``, the evaluation NLL during training.

:class:`Meter` sums the local loss terms, tokens and FLOPs of the steps between two log lines;
:func:`maybe_log` writes every ``train.log_every`` steps one line on stderr and one JSON row in
``metrics.jsonl`` (and TensorBoard scalars); :func:`maybe_eval` every ``train.eval_every`` steps the
target NLL on ``data.eval_file`` (:func:`evaluation_nll`). Nothing is recomputed: the values are the ones
the objective produced. A resumed run drops the rows logged after its checkpoint
(:func:`drop_rows_after`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import Tensor
from tqdm.auto import tqdm

from sit_nlp.data.batching import Seq2SeqCollator, TokenizedExample
from sit_nlp.model.seq2seq import LOSS_TERMS, Seq2SeqSIT
from sit_nlp.training.config import Config

__all__ = ["Meter", "drop_rows_after", "evaluation_nll", "flops_per_token", "last_eval_target", "maybe_eval",
           "maybe_log"]


class Meter:
    """Sums of the local loss terms, tokens and FLOPs between two log lines.

    ``src_flops``, ``tgt_flops``: the FLOPs of one source and of one target token (:func:`flops_per_token`).
    """

    def __init__(self, src_flops: float = 0.0, tgt_flops: float = 0.0) -> None:
        self.src_flops, self.tgt_flops = src_flops, tgt_flops
        self.reset()

    def reset(self) -> None:
        """Start a new log interval."""
        self.sums: dict[str, float] = {}
        self.steps, self.tokens, self.flops, self.t0 = 0, 0.0, 0.0, time.perf_counter()

    def add(self, terms: dict[str, float], micro_batches: Sequence[dict[str, Tensor]]) -> None:
        """One optimizer step: its local ``terms`` and the source and target tokens of its micro-batches."""
        n_src = sum(float(mb["attention_mask"].sum()) for mb in micro_batches)
        n_tgt = sum(float((mb["labels"] != -100).sum()) for mb in micro_batches)
        tokens, flops = n_src + n_tgt, self.src_flops * n_src + self.tgt_flops * n_tgt
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


def flops_per_token(model: Seq2SeqSIT) -> tuple[float, float]:
    """``6 x parameters`` seen by each source token and by each target token (a Kaplan-style estimate). A
    decoder-only model's prompt (source) token passes the whole backbone, twice for SIT (the factors' pass and
    the prefix), and so does each answer (target) token."""
    from sit_nlp.model.factory import is_decoder_only

    if is_decoder_only(model):
        backbone = sum(p.numel() for p in model.backbone.parameters())
        extra = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
        return 6.0 * ((2 if model.is_sit else 1) * backbone + extra), 6.0 * backbone
    enc = sum(p.numel() for p in model.backbone.get_encoder().parameters())
    backbone = sum(p.numel() for p in model.backbone.parameters())
    extra = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
    return 6.0 * (enc + extra), 6.0 * (backbone - enc)


def drop_rows_after(metrics_path: Path, step: int) -> None:
    """Keep the rows of ``metrics.jsonl`` logged at or before ``step`` (a resumed run logs the rest again)."""
    if not metrics_path.exists():
        return
    rows = [json.loads(x) for x in metrics_path.read_text(encoding="utf-8").splitlines() if x.strip()]
    kept = [json.dumps(r) for r in rows if r.get("step", 0) <= step]
    metrics_path.write_text("".join(x + "\n" for x in kept), encoding="utf-8")


def last_eval_target(metrics_path: Path) -> float | None:
    """The last ``eval_target`` logged in ``metrics.jsonl`` (``None``: none, or no file)."""
    if not metrics_path.exists():
        return None
    rows = [json.loads(x) for x in metrics_path.read_text(encoding="utf-8").splitlines() if x.strip()]
    return next((r["eval_target"] for r in reversed(rows) if "eval_target" in r), None)
