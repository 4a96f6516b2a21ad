"""Time target: SIT reaches MCC 0.95 at n = 5 (8 tasks, UIC graph) in under 60 s on 2 cores.

SIT is two steps: train the SIT model (``sit-joint``) for ``S`` steps, then learn the selection on its
frozen representation (:func:`sit_causal.selection.align.align_by_task_sparsity`). For every ``S`` of ``--steps``
and every seed this script runs both from scratch on the ``simulate`` defaults and clocks them together
(data generation excluded, scoring excluded); it prints the held-out MCC and the wall time, and per ``S``
how many seeds reached ``--target`` within ``--budget`` seconds. The baseline is the iVAE-style model
trained for the same ``S`` steps on the same data (its MCC and time).

    .venv/bin/python benchmarks/time_to_mcc.py --seeds 5 --steps 500,1000 --threads 2

Other jobs on the machine slow both models alike; say so when recording the numbers.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from sit_causal.experiments.experiment import SimulateConfig, SyntheticTrainConfig, run_graph
from sit_causal.experiments.report import format_mean_sd as _ms
from sit_causal.experiments.runner import standardisation, to_batch, train_model
from sit_causal.experiments.synthetic import build_synthetic_model, method_configs
from sit_causal.metrics import mcc
from sit_causal.selection.align import AlignConfig, align_by_task_sparsity
from sit_causal.sim.scm import generate_train_test


def run_once(method: str, cfg: SimulateConfig, seed: int, steps: int, threads: int,
             align: AlignConfig | None) -> tuple[float, float, float]:
    """Train ``method`` for ``steps`` (then align when ``align`` is given); return (MCC before alignment,
    MCC after (= before without alignment), wall seconds of training + alignment)."""
    graph = run_graph(cfg)
    train, test = generate_train_test(cfg.scm_config(seed), cfg.test_samples, graph=graph)
    stats = standardisation(train)
    tr, te = to_batch(train, *stats), to_batch(test, *stats)
    gen = torch.Generator().manual_seed(seed)
    mcfg = method_configs(method, n_factors=cfg.factors, x_dim=train.x.shape[1], n_tasks=cfg.tasks,
                                  n_datasets=train.n_datasets)
    model = build_synthetic_model(*mcfg, gen)
    t0 = time.perf_counter()
    train_model(model, tr, SyntheticTrainConfig(steps=steps, threads=threads), gen)
    result = None
    if align is not None:
        z = model.represent(tr.x).double().numpy()
        result = align_by_task_sparsity(z, tr.y[:, 0].double().numpy(), train.task_id, cfg.tasks, train.dataset_id,
                                        replace(align, gradients=replace(align.gradients, threads=threads)),
                                        seed=seed)
    wall = time.perf_counter() - t0
    z_test = model.represent(te.x).double().numpy()
    before = mcc(test.latents, z_test).score
    after = before if result is None else mcc(test.latents, result.transform(z_test)).score
    return before, after, wall



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", default="500,1000", help="comma-separated SIT training steps to try")
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--budget", type=float, default=60.0, help="seconds")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (2 = the 2-core target)")
    ap.add_argument("--no-ivae", action="store_true", help="skip the iVAE baseline")
    args = ap.parse_args()
    cfg = SimulateConfig(factors=5, tasks=8, seeds=args.seeds)
    for steps in [int(s) for s in args.steps.split(",")]:
        rows, ivae = [], []
        for seed in range(args.seeds):
            before, after, wall = run_once("sit", cfg, seed, steps, args.threads, AlignConfig())
            rows.append((before, after, wall))
            line = (f"steps {steps} seed {seed}: SIT MCC {after:.3f} (joint model {before:.3f}) in {wall:.1f} s "
                    f"(training + alignment)")
            if not args.no_ivae:
                _, iv, iv_wall = run_once("ivae", cfg, seed, steps, args.threads, None)
                ivae.append((iv, iv_wall))
                line += f"; iVAE {iv:.3f} in {iv_wall:.1f} s"
            print(line, flush=True)
        hit = sum(1 for _, a, w in rows if a >= args.target and w <= args.budget)
        print(f"steps {steps}: SIT MCC {_ms([r[1] for r in rows])}, wall {_ms([r[2] for r in rows])} s; "
              f"MCC >= {args.target} within {args.budget:.0f} s in {hit}/{len(rows)} seeds"
              + (f"; iVAE MCC {_ms([i[0] for i in ivae])}" if ivae else ""), flush=True)


if __name__ == "__main__":
    main()
