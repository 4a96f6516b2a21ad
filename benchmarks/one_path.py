"""Does SIT evaluate the path it trains? And does a pretrained backbone survive step 0?

    .venv/bin/python benchmarks/one_path.py --seeds 5 --steps 200 --out runs/one_path.json

Part 1 (tiny random BART on the shipped toy mixture, ``configs/tiny.yaml``): per seed, vanilla, SIT with the
default one path (the decoder reads the posterior mean in training and at evaluation) and SIT trained on a
sampled ``z`` (``model.sample_latent=true``), ``--steps`` steps each, one torch thread. Each trained model is
reloaded from ``final/`` and its token-mean target NLL measured on the training records and on the
evaluation file, by the evaluation path (posterior mean) and by the training path (sampled for the sampled
variant, with a fixed noise seed). Reported: mean and 95 % CI over seeds, and the paired differences.

Part 2 (the MiniLM BERT2BERT preset, pretrained): at step 0, the target NLL of vanilla, of SIT with
``guidance: residual`` and of SIT with ``guidance: factors`` on the first 32 records of the toy mixture,
in evaluation mode: the residual start must equal the backbone.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from accelerate import Accelerator

from sit_causal.experiments.report import format_mean_ci
from sit_causal.stats import difference_ci
from sit_nlp.data.batching import Seq2SeqCollator
from sit_nlp.data.records import read_records
from sit_nlp.model.backbones import ASSETS, load_backbone
from sit_nlp.model.config import ModelConfig
from sit_nlp.model.seq2seq import Seq2SeqSIT
from sit_nlp.training.checkpoint import load_trained
from sit_nlp.training.config import load_config
from sit_nlp.training.loop import train
from sit_nlp.training.metrics import evaluation_nll

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {"vanilla": ["--model.method=vanilla"], "sit": [], "sit-sampled": ["--model.sample_latent=true"]}


def nlls(run: Path, cfg, train_records, eval_records, accelerator: Accelerator) -> dict[str, float]:
    model, tok, _ = load_trained(run / "final")
    tasks = sorted({r.task for r in train_records})
    col = Seq2SeqCollator(tok, model.backbone.config.decoder_start_token_id, tasks, cfg.data.max_source_len,
                          cfg.data.max_target_len, cfg.data.max_instruction_len, cfg.model.source_max_len)
    out = {}
    for split, records in (("train", train_records), ("eval", eval_records)):
        ex = col.tokenize(records)
        out[f"{split}_eval_path"] = evaluation_nll(accelerator, model, ex, col, 16)
        sample = bool(model.is_sit and cfg.model.sample_latent)
        out[f"{split}_train_path"] = evaluation_nll(accelerator, model, ex, col, 16, sample=sample, seed=0)
    return out


def part1(seeds: int, steps: int, work: Path) -> dict:
    accelerator = Accelerator(cpu=True)
    train_records = read_records(ASSETS / "tiny_train.jsonl")
    eval_records = read_records(ASSETS / "tiny_eval.jsonl")
    rows: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for seed in range(seeds):
        for name, extra in VARIANTS.items():
            run = work / f"{name}-s{seed}"
            cfg = load_config(ROOT / "configs" / "tiny.yaml", [*extra, f"--train.out_dir={run}",
                              f"--train.max_steps={steps}", f"--train.seed={seed}", f"--model.init_seed={seed}",
                              "--train.save_every=0", "--train.quiet=true", "--train.threads=1"])
            train(cfg, overwrite=True)
            rows[name].append(nlls(run, cfg, train_records, eval_records, accelerator))
            print(f"seed {seed} {name}: {rows[name][-1]}", file=sys.stderr, flush=True)
    return rows


def part2() -> dict[str, float]:
    records = read_records(ASSETS / "tiny_train.jsonl")[:32]
    backbone = load_backbone("minilm-bert2bert", dropout=0.0)
    tasks = sorted({r.task for r in records})
    col = Seq2SeqCollator(backbone.tokenizer, backbone.model.config.decoder_start_token_id, tasks, 128, 32, 64, 48)
    batch = col(col.tokenize(records))
    out = {}
    for name, kw in (("vanilla", {"method": "vanilla"}), ("sit-residual", {"guidance": "residual"}),
                     ("sit-factors", {"guidance": "factors"})):
        model = Seq2SeqSIT(ModelConfig(backbone="minilm-bert2bert", n_factors=16, dropout=0.0, **kw), backbone)
        model.eval()
        with torch.no_grad():
            res = model(batch)
        out[name] = float(res["target_nll"] / res["target_tokens"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        rows = part1(args.seeds, args.steps, Path(tmp))
    step0 = part2()
    result = {"seeds": args.seeds, "steps": args.steps, "part1": rows, "part2_step0_nll": step0}
    print("| variant | train records, eval path | train records, training path | eval file, eval path |")
    print("|---|---|---|---|")
    for name, runs in rows.items():
        keys = ("train_eval_path", "train_train_path", "eval_eval_path")
        cells = [format_mean_ci([r[k] for r in runs]) for k in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for a, b, key in (("sit", "vanilla", "train_eval_path"), ("sit", "vanilla", "eval_eval_path"),
                      ("sit-sampled", "sit-sampled", None)):
        if key is None:
            x = [r["train_eval_path"] for r in rows[a]]
            y = [r["train_train_path"] for r in rows[a]]
            label = "sit-sampled: eval path - training path (train records)"
        else:
            x, y = [r[key] for r in rows[a]], [r[key] for r in rows[b]]
            label = f"{a} - {b} ({key})"
        d, h = difference_ci(x, y, paired=True)
        result.setdefault("differences", {})[label] = {"mean": d, "ci95": h}
        print(f"{label}: {d:+.4f} +/- {h:.4f} (paired, 95% CI, n = {len(x)})")
    print(f"step 0 (MiniLM, pretrained), target NLL: {json.dumps(step0)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
