"""Decoder-only SIT vs vanilla on one CPU batch: seconds per optimizer step, and trainable parameters.

    OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/decoder_cpu_step.py            # SmolLM2 + LoRA
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/decoder_cpu_step.py --backbone tiny-llama --no-lora  # smoke test

Every variant (``--variants``: ``vanilla``, ``sit``, ``sit@K`` = SIT with ``model.factor_layer: K``, ``sit+added`` = SIT
with ``model.decoder_guidance: added``) gets the same
backbone (one load, deep-copied before LoRA wraps it), the same LoRA settings (those
of ``configs/smollm2-cpu.yaml`` unless ``--no-lora``), the same batch (the first ``--batch`` records of the
built-in toy mixture through :class:`sit_nlp.data.decoder_batching.DecoderCollator`, prompts of up to
``--src-len`` tokens) and the same step: the model's loss (``forward(batch, window=...)``), backward, AdamW.
Steps alternate between the variants (vanilla, SIT, SIT@K, vanilla, ...) so that load from other processes hits
all alike; after ``--warmup`` steps each, per variant the median and the minimum wall time of ``--steps``, and
the median CPU time of this process (``time.process_time``, all threads: what the step costs, less sensitive
to other processes on a shared machine than wall time). SIT's extras per step: the prompt
read once more (for ``h_x``; with ``factor_layer: K`` through the first ``K`` layers only), the task bank's
instructions, the latent module, the source decoder. Printed: one JSON object (medians, their ratios to
vanilla, trainable parameters as a fraction of the backbone, the load average before and after, torch
threads, the machine).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from dataclasses import replace

import torch

from sit_nlp.data.decoder_batching import DecoderCollator
from sit_nlp.data.records import read_records
from sit_nlp.model.backbones import ASSETS, Backbone, load_backbone
from sit_nlp.model.decoder import DecoderSIT, trainable_fraction
from sit_nlp.model.seq2seq import LossWindow
from sit_nlp.training.config import load_config
from sit_nlp.training.data import build_task_bank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/smollm2-cpu.yaml")
    parser.add_argument("--backbone", default=None, help="override model.backbone")
    parser.add_argument("--no-lora", action="store_true")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--src-len", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="vanilla,sit,sit@10",
                        help="vanilla, sit, sit@K (factor_layer K), sit+added (decoder_guidance added), sit@K+added")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    cfg = load_config(args.config, [f"--model.backbone={args.backbone}"] if args.backbone else [])
    mc = replace(cfg.model, lora=None) if args.no_lora else cfg.model
    t0 = time.perf_counter()
    loaded = load_backbone(mc.backbone, dropout=mc.dropout, seed=mc.init_seed)
    load_seconds = time.perf_counter() - t0
    records = read_records(ASSETS / "tiny_train.jsonl")
    tasks = sorted({r.task for r in records})
    collator = DecoderCollator(loaded.tokenizer, tasks, args.src_len, cfg.data.max_target_len,
                               cfg.data.max_instruction_len, mc.source_max_len)
    batch = collator(collator.tokenize(records[: args.batch]))
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "vanilla" not in variants:
        raise SystemExit("--variants must include vanilla (the denominator)")
    models: dict[str, DecoderSIT] = {}
    optimizers: dict[str, torch.optim.Optimizer] = {}
    for variant in variants:
        head, _, route = variant.partition("+")
        method, _, layer = head.partition("@")
        backbone = Backbone(copy.deepcopy(loaded.model), loaded.tokenizer, loaded.family, loaded.name)
        settings = replace(mc, method=method, factor_layer=int(layer) if layer else None,
                           decoder_guidance=route or "prefix", guidance="factors" if route else mc.guidance)
        model = DecoderSIT(settings, backbone, cfg.loss)
        model.set_training_tasks(tasks, build_task_bank(records, collator, mc.task_bank_size) if model.is_sit else None)
        model.train()
        models[variant] = model
        optimizers[variant] = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    counts = {"target": float((batch["labels"] != -100).sum()), "source": float((batch["source_labels"] != -100).sum()),
              "kl": float(batch["attention_mask"].sum())}
    window = LossWindow(counts, micro_batches=1, world=1)
    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    generator = torch.Generator().manual_seed(0)
    for i in range(args.warmup + args.steps):
        for variant in variants:
            model, optimizer = models[variant], optimizers[variant]
            start, start_cpu = time.perf_counter(), time.process_time()
            out = model(batch, generator=generator, window=window, progress=0.5)
            out["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i >= args.warmup:
                times[variant].append(time.perf_counter() - start)
                cpu[variant].append(time.process_time() - start_cpu)
    medians = {v: statistics.median(t) for v, t in times.items()}
    fastest = {v: min(t) for v, t in times.items()}
    cpu_medians = {v: statistics.median(t) for v, t in cpu.items()}
    sit_model = next((m for m in models.values() if m.is_sit), None)
    print(json.dumps({
        "backbone": mc.backbone, "lora": None if mc.lora is None else vars(mc.lora), "batch": args.batch,
        "prompt_tokens": list(batch["input_ids"].shape), "answer_tokens": list(batch["labels"].shape),
        "bank_instructions": 0 if sit_model is None or sit_model.bank is None else int(sit_model.bank.ids.shape[0]),
        "s_per_step": medians, "over_vanilla": {v: m / medians["vanilla"] for v, m in medians.items()},
        "min_s_per_step": fastest, "min_over_vanilla": {v: m / fastest["vanilla"] for v, m in fastest.items()},
        "cpu_s_per_step": cpu_medians,
        "cpu_over_vanilla": {v: m / cpu_medians["vanilla"] for v, m in cpu_medians.items()},
        "steps": times, "cpu_steps": cpu, "trainable": {v: trainable_fraction(m) for v, m in models.items()},
        "backbone_load_s": load_seconds, "threads": torch.get_num_threads(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
    }, indent=1))


if __name__ == "__main__":
    main()
