"""Where does SIT's gain come from: its training, or the selection step?

The selection step (:func:`sit_causal.selection.align.align_by_task_sparsity`) only needs a representation and the
task targets, so it can be run on any model's representation. This script trains, on the same data and
seeds as ``benchmarks/simulate_targets.py --part A``, the ``ivae`` and ``multitask`` baselines and the SIT
model, applies the same alignment to each, and prints the held-out MCC before and after:

    .venv/bin/python benchmarks/align_ablation.py --seeds 5 --out docs/results/data/align_ablation.json

If the aligned iVAE matched aligned SIT, SIT's task heads and masks would add nothing over "prior + a
sparse rotation"; the multitask network has no prior, so nothing makes its representation linear in the
factors (and, without within-dataset independence, nothing makes the remaining map a rotation).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sit_causal.experiments.experiment import SimulateConfig, SyntheticTrainConfig, run_graph
from sit_causal.experiments.report import format_mean_sd
from sit_causal.experiments.runner import standardisation, to_batch, train_model
from sit_causal.experiments.synthetic import build_synthetic_model, method_configs
from sit_causal.metrics import mcc
from sit_causal.selection.align import AlignConfig, align_by_task_sparsity
from sit_causal.sim.scm import generate_train_test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--factors", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=SyntheticTrainConfig.steps)
    ap.add_argument("--methods", default="sit,ivae,multitask", help="models to train (their training method)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cfg = SimulateConfig(factors=args.factors, tasks=8, seeds=args.seeds, train=SyntheticTrainConfig(steps=args.steps))
    graph = run_graph(cfg)
    rows = []
    for seed in range(args.seeds):
        train, test = generate_train_test(cfg.scm_config(seed), cfg.test_samples, graph=graph)
        stats = standardisation(train)
        tr, te = to_batch(train, *stats), to_batch(test, *stats)
        for method in args.methods.split(","):
            gen = torch.Generator().manual_seed(seed)
            model = build_synthetic_model(*method_configs(method, n_factors=cfg.factors, x_dim=train.x.shape[1],
                                                n_tasks=cfg.tasks, n_datasets=train.n_datasets), gen)
            t0 = time.perf_counter()
            train_model(model, tr, cfg.train, gen)
            z_tr = model.represent(tr.x).double().numpy()
            res = align_by_task_sparsity(z_tr, tr.y[:, 0].double().numpy(), train.task_id, cfg.tasks,
                                         train.dataset_id, AlignConfig(), seed=seed)
            wall = time.perf_counter() - t0
            z_te = model.represent(te.x).double().numpy()
            row = {"method": method, "seed": seed, "mcc_before": mcc(test.latents, z_te).score,
                   "mcc_aligned": mcc(test.latents, res.transform(z_te)).score, "time_s": wall}
            rows.append(row)
            print(f"seed {seed} {method}: MCC {row['mcc_before']:.3f} -> aligned {row['mcc_aligned']:.3f} "
                  f"({wall:.0f} s)", flush=True)
    print(f"n = {cfg.factors}, 8 tasks, {args.seeds} seeds, {args.steps} steps; mean +/- sd over seeds")
    for method in args.methods.split(","):
        sel = [r for r in rows if r["method"] == method]
        print(f"{method:10s} MCC {format_mean_sd([r['mcc_before'] for r in sel])} -> aligned "
              f"{format_mean_sd([r['mcc_aligned'] for r in sel])}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"config": cfg.to_dict(), "rows": rows}, indent=1) + "\n",
                                  encoding="utf-8")


if __name__ == "__main__":
    main()
