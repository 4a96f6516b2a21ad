"""Recovery targets (SIT MCC at n = 5 and 10), printed against baselines trained on the same data in one run.

Targets (mean over >= 5 seeds, meta-SCM defaults of ``sit-causal simulate``: gauss-mean prior, a random
UIC graph, 5 datasets per task, 1000 training samples per dataset, 500 held-out):

* A: ``n = 5`` factors, 8 tasks: SIT MCC (Pearson) >= 0.95, and SIT above ``ivae`` and ``multitask``;
* B: ``n = 10`` factors, 8 tasks: SIT MCC >= 0.90.

Run (2-core CPU, one thread each; part A about 20 minutes, part B about 15, with 5 seeds)::

    .venv/bin/python benchmarks/simulate_targets.py --part A --seeds 5 --out docs/results/data/simulate_A.json
    .venv/bin/python benchmarks/simulate_targets.py --part B --seeds 5 --out docs/results/data/simulate_B.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sit_causal.experiments.experiment import SimulateConfig, SyntheticTrainConfig
from sit_causal.experiments.report import format_table
from sit_causal.experiments.runner import run_simulation

PARTS = {
    "A": {"factors": 5, "tasks": 8, "methods": ("sit", "sit-joint", "ivae", "multitask"), "target": 0.95},
    "B": {"factors": 10, "tasks": 8, "methods": ("sit", "sit-joint"), "target": 0.90},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=sorted(PARTS), default="A")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=SyntheticTrainConfig.steps)
    ap.add_argument("--methods", default=None, help="override the part's methods (comma-separated)")
    ap.add_argument("--out", default=None, help="write the results object here (JSON)")
    args = ap.parse_args()
    part = PARTS[args.part]
    methods = tuple(args.methods.split(",")) if args.methods else part["methods"]
    cfg = SimulateConfig(factors=part["factors"], tasks=part["tasks"], seeds=args.seeds, seed=args.seed,
                         methods=methods, train=SyntheticTrainConfig(steps=args.steps))
    t0 = time.perf_counter()
    res = run_simulation(cfg, quiet=True)
    wall = time.perf_counter() - t0
    print(f"part {args.part}: n = {cfg.factors}, {cfg.tasks} tasks, {args.seeds} seeds, {args.steps} steps; "
          f"UIC holds: {res['uic_holds']}; wall {wall:.0f} s")
    print(format_table(res["summary"]))
    by = {e["method"]: e for e in res["summary"]}
    sit = by["sit"]["mcc_pearson_mean"]
    verdict = "MET" if sit >= part["target"] else "MISSED"
    per_seed = [f"{r['mcc_pearson']:.3f}" for r in res["results"] if r["method"] == "sit"]
    print(f"SIT MCC per seed: {', '.join(per_seed)}")
    print(f"target SIT MCC >= {part['target']:.2f}: {sit:.3f} +/- {by['sit']['mcc_pearson_sd']:.3f} -> {verdict}")
    for base in ("ivae", "multitask"):
        if base in by:
            other = by[base]["mcc_pearson_mean"]
            print(f"target SIT above {base}: {sit:.3f} vs {other:.3f} (ratio {sit / other:.2f}) -> "
                  f"{'MET' if sit > other else 'MISSED'}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
