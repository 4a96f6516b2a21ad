"""Training throughput of vanilla vs SIT at BART-base and BART-large shapes, against the matmul ceiling
measured in the same run.

    .venv/bin/python benchmarks/gpu_throughput.py                 # GPU: base + large, batch 32, 512 / 128, bf16
    .venv/bin/python benchmarks/gpu_throughput.py --tiny          # CPU smoke test (automatic without CUDA)
    .venv/bin/python benchmarks/gpu_throughput.py --shapes large --steps 20 --compile --json
    .venv/bin/python benchmarks/gpu_throughput.py --count-flops --shapes large   # CPU: FLOPs only, full shapes

Each configuration is a random-init BART of the named shape inside :class:`sit_nlp.model.seq2seq.Seq2SeqSIT`
(``method`` vanilla or sit), trained by the very step of ``sit-nlp train`` (:func:`sit_nlp.training.loop.train_step`:
Accelerate, bf16 autocast on GPU, fused AdamW, token-normalised losses) on synthetic batches of full
length (no padding): source ``--src-len``, target ``--tgt-len``, 4 distinct instructions of 32 tokens per
batch and a task bank of 16 instructions. SIT uses 16 factors, a 1-layer source decoder that
reconstructs the first ``--recon-len`` source tokens through the shared embedding with the chunked
cross-entropy. Printed per configuration: seconds per step (mean +/- sd over ``--steps`` after
``--warmup``), samples/s, the FLOPs of one step counted by ``torch.utils.flop_counter.FlopCounterMode``
(forward + backward; activation recomputation included), achieved TFLOP/s, MFU against the measured
matmul peak (:func:`sit_nlp.training.throughput.matmul_ceiling`: bf16 ``8192^3`` on GPU, fp32 ``1024^3`` on CPU; the
denominator ``sit-nlp train`` uses too), and SIT / vanilla samples/s per shape. ``--compile`` compiles the
whole model, SIT's latent path and its own encoder calls included (FLOPs are counted on the eager model).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.flop_counter import FlopCounterMode
from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

from sit_nlp.model.backbones import RANDOM_BART_SHAPES, Backbone, tiny_tokenizer
from sit_nlp.model.config import ModelConfig
from sit_nlp.model.seq2seq import Seq2SeqSIT, TaskBank
from sit_nlp.training.loop import accumulate_gradients, train_step
from sit_nlp.training.throughput import matmul_ceiling, synchronize

SHAPES: dict[str, dict[str, int]] = {  # the random presets' shapes, with facebook/bart-*'s vocabulary
    "base": {**RANDOM_BART_SHAPES["bart-base-random"], "vocab": 50265},
    "large": {**RANDOM_BART_SHAPES["bart-large-random"], "vocab": 50265},
    "tiny": {"d_model": 64, "layers": 2, "heads": 4, "ffn": 128, "vocab": 512},
}


def build(shape: dict[str, int], method: str, recon_len: int, seed: int) -> Seq2SeqSIT:
    cfg = BartConfig(
        vocab_size=shape["vocab"], d_model=shape["d_model"], encoder_layers=shape["layers"],
        decoder_layers=shape["layers"], encoder_attention_heads=shape["heads"], decoder_attention_heads=shape["heads"],
        encoder_ffn_dim=shape["ffn"], decoder_ffn_dim=shape["ffn"], max_position_embeddings=1024,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, attn_implementation="sdpa",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BartForConditionalGeneration(cfg)
    tok: PreTrainedTokenizerFast = tiny_tokenizer()  # only its object is needed; batches are synthetic
    mcfg = ModelConfig(backbone="random", method=method, n_factors=16, latent_hidden=256, source_decoder_layers=1,
                       source_max_len=recon_len, init_seed=seed)
    sit = Seq2SeqSIT(mcfg, Backbone(model=model, tokenizer=tok, family="bart", name="random"))
    if sit.is_sit:
        gen = torch.Generator().manual_seed(seed)
        sit.set_task_bank(TaskBank(ids=torch.randint(3, shape["vocab"], (16, 32), generator=gen),
                                   mask=torch.ones(16, 32, dtype=torch.long), task_ids=torch.arange(16),
                                   tasks=[f"t{i}" for i in range(16)], instructions=[""] * 16))
    return sit


def synthetic_batch(batch: int, src: int, tgt: int, recon: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, src), generator=gen)
    labels = torch.randint(3, vocab, (batch, tgt), generator=gen)
    source_labels = ids[:, :recon].clone()
    shift = lambda x: torch.cat([torch.full((batch, 1), 2), x[:, :-1]], dim=1)  # noqa: E731
    return {
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
        "decoder_input_ids": shift(labels),
        "instruction_ids": torch.randint(3, vocab, (4, 32), generator=gen),
        "instruction_mask": torch.ones(4, 32, dtype=torch.long),
        "instruction_index": torch.arange(batch) % 4,
        "source_labels": source_labels, "source_decoder_input_ids": shift(source_labels),
        "task_ids": torch.arange(batch) % 4,
    }


def run_one(accelerator: Accelerator, shape_name: str, method: str, args: argparse.Namespace) -> dict[str, Any]:
    shape = SHAPES[shape_name]
    device = accelerator.device
    model = build(shape, method, args.recon_len, args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    eager = model
    model.train()
    generator = torch.Generator(device=device).manual_seed(args.seed)

    def batch_of(size: int) -> dict[str, torch.Tensor]:
        raw = synthetic_batch(size, args.src_len, args.tgt_len, args.recon_len, shape["vocab"], args.seed)
        return {k: v.to(device) for k, v in raw.items()}

    def count(net: torch.nn.Module, opt: torch.optim.Optimizer, size: int) -> int:
        """FLOPs of one forward + backward, counted."""
        with FlopCounterMode(display=False) as counter:
            accumulate_gradients(accelerator, net, [batch_of(size)], 1.0, generator)
        opt.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    if args.count_flops:  # FLOPs are affine in the batch size (the instructions and the bank are per batch)
        f1, f2 = count(model, optimizer, 1), count(model, optimizer, 2)
        flops = f1 + (args.batch - 1) * (f2 - f1)
    else:
        flops = count(model, optimizer, args.batch)
    if args.compile:  # the whole forward (encoder, latent path, both decoders), as train.compile does
        model = torch.compile(model)
    batch = batch_of(args.batch)
    times = []
    if args.count_flops:
        args.warmup, args.steps = 0, 0
    for i in range(args.warmup + args.steps):
        synchronize(device)
        t = time.perf_counter()
        train_step(accelerator, model, optimizer, scheduler, [batch], 1.0, 1.0, generator)
        synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    mean = statistics.mean(times) if times else float("nan")
    sd = statistics.stdev(times) if len(times) > 1 else 0.0
    params = sum(p.numel() for p in eager.parameters())
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    accelerator.free_memory()
    del model, eager, optimizer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return {"shape": shape_name, "method": method, "params_m": params / 1e6, "s_per_step": mean, "sd": sd,
            "samples_per_s": args.batch / mean, "tflop_per_step": flops / 1e12,
            "tflops": flops / mean / 1e12, "peak_mem_gib": peak_mem}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (automatic without CUDA)")
    parser.add_argument("--shapes", default="base,large")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--src-len", type=int, default=None)
    parser.add_argument("--tgt-len", type=int, default=None)
    parser.add_argument("--recon-len", type=int, default=None, help="source tokens the SIT decoder reconstructs")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the whole model (SIT: encoder, latent path and both decoders)")
    parser.add_argument("--count-flops", action="store_true",
                        help="only count the FLOPs of one step at the named shapes (runs on CPU at full shapes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    tiny = args.tiny or (not cuda and not args.count_flops)
    defaults = ({"batch": 4, "src_len": 64, "tgt_len": 16, "recon_len": 16, "steps": 3, "warmup": 1} if tiny else
                {"batch": 32, "src_len": 512, "tgt_len": 128, "recon_len": 128, "steps": 10, "warmup": 3})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    shapes = ["tiny"] if tiny else [s.strip() for s in args.shapes.split(",") if s.strip()]
    accelerator = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda and not tiny else "no")
    device = accelerator.device
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    peak = matmul_ceiling(device, small=tiny or not cuda)
    machine = torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()}, "\
        f"{torch.get_num_threads()} threads)"
    rows = []
    for shape in shapes:
        for method in ("vanilla", "sit"):
            row = run_one(accelerator, shape, method, args)
            row["mfu"] = row["tflops"] / peak
            rows.append(row)
    ratios = {}
    for shape in shapes:
        v = next(r for r in rows if r["shape"] == shape and r["method"] == "vanilla")
        s = next(r for r in rows if r["shape"] == shape and r["method"] == "sit")
        ratios[shape] = s["samples_per_s"] / v["samples_per_s"]
        ratios[f"{shape}_flops"] = s["tflop_per_step"] / v["tflop_per_step"]
    precision = "bf16" if cuda and not tiny else "fp32"
    result = {"machine": machine, "torch": torch.__version__, "precision": precision,
              "matmul_peak_tflops": peak, "batch": args.batch, "src_len": args.src_len, "tgt_len": args.tgt_len,
              "recon_len": args.recon_len, "compile": args.compile, "rows": rows, "sit_over_vanilla": ratios}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{machine} | torch {torch.__version__} | {precision} | matmul ceiling {peak:.4g} TFLOP/s | "
          f"batch {args.batch}, source {args.src_len}, target {args.tgt_len}, reconstruct {args.recon_len}"
          f"{' | compiled' if args.compile else ''}")
    print("| shape | method | params (M) | s/step | samples/s | TFLOP/step | TFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['method']} | {r['params_m']:.1f} | {r['s_per_step']:.4f} +/- {r['sd']:.4f} | "
              f"{r['samples_per_s']:.1f} | {r['tflop_per_step']:.4g} | {r['tflops']:.4g} | {100 * r['mfu']:.1f}% |")
    for shape in shapes:
        print(f"SIT / vanilla at {shape} shapes: samples/s {ratios[shape]:.2f}x, FLOPs per step "
              f"{ratios[shape + '_flops']:.2f}x")


if __name__ == "__main__":
    main()
