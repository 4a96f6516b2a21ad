"""The selection step alone as the number of factors grows, on exactly linear representations.

For each ``n`` a random UIC graph with ``2 n`` tasks (the graph stream of ``--seed``), meta-SCM data of the default
family, and the representation ``z = L B^T + c`` with a random invertible ``B`` ``(n, n)`` (no model is trained:
this measures the selection step itself, whose error floor on a trained representation is that
representation's affine ``R^2``). Reports the step's wall time per stage, the refinement steps taken, and the
held-out MCC of the learned factors (Pearson, as ``simulate``'s ``mcc_pearson``)::

    python benchmarks/selection_scaling.py --factors 5,10,16,20 --seed 5000 --out runs/selection_scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from sit_causal.experiments.experiment import SimulateConfig, run_graph
from sit_causal.metrics import mcc
from sit_causal.selection import AlignConfig, align_by_task_sparsity
from sit_causal.sim.scm import generate_train_test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--factors", default="5,10,16,20", help="comma-separated n (tasks: 2 n)")
    ap.add_argument("--seed", type=int, default=5000, help="graph and data seed")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for n in [int(x) for x in args.factors.split(",")]:
        config = SimulateConfig(factors=n, tasks=2 * n, seed=args.seed)
        graph = run_graph(config)
        train, test = generate_train_test(config.scm_config(args.seed), config.test_samples, graph=graph)
        rng = np.random.default_rng(args.seed)
        b = rng.standard_normal((n, n)) + 0.5 * np.eye(n)
        c = rng.standard_normal(n)
        z_train, z_test = train.latents @ b.T + c, test.latents @ b.T + c
        t0 = time.perf_counter()
        res = align_by_task_sparsity(z_train, train.y.astype(np.float64), train.task_id, graph.n_tasks,
                                     train.dataset_id, AlignConfig(), seed=args.seed)
        elapsed = time.perf_counter() - t0
        row = {"n": n, "tasks": 2 * n, "seed": args.seed, "mcc_before": mcc(test.latents, z_test).score,
               "mcc": mcc(test.latents, res.transform(z_test)).score, "time_s": elapsed,
               "timings": res.timings, "refine_steps": res.refine_steps, "load": os.getloadavg()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
