"""The ``ivae`` baseline in iVAE's own setting: does it reproduce MCC >= 0.95 (Khemakhem et al. 2020)?

Setting (the paper's synthetic experiment): ``n = 5`` conditionally Gaussian factors whose means *and*
variances depend on the segment (``gauss-meanvar``, means ``U[-5, 5]``, standard deviations
``U[0.5, 3]``), 40 segments x 1000 training samples, observations ``x = f(L) + noise`` with ``f`` a 3-layer
leaky-ReLU MLP from ``R^5`` to ``R^5`` (:class:`sit_causal.sim.maps.MixingMLP`). The segments are the
meta-SCM's datasets (8 tasks x 5 datasets; the ``ivae`` baseline reads no task). The model is the
``ivae`` method of :mod:`sit_causal.experiments.synthetic` trained by
:func:`sit_causal.experiments.runner.train_model`;
the score is the MCC (Pearson, Hungarian matching) of its posterior mean against the true factors on
500 **held-out** samples per segment (sample stream 1 of the same mechanism).

    .venv/bin/python benchmarks/ivae_home.py --seeds 0,1,2,3,4 --out docs/results/data/ivae_home.json
    # tuning, on seeds disjoint from the reported ones:
    .venv/bin/python benchmarks/ivae_home.py --seeds 100,101,102 --steps 1500,3000 --set sigma_x=0.1

``--steps``, ``--lr`` and ``--batch-size`` are lists (every combination runs); ``--set KEY=VALUE``
overrides a model or objective field (:func:`sit_causal.experiments.synthetic.method_configs`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

from sit_causal.experiments.experiment import SimulateConfig, SyntheticTrainConfig
from sit_causal.experiments.report import format_mean_ci
from sit_causal.experiments.runner import standardisation, to_batch, train_model
from sit_causal.experiments.synthetic import build_synthetic_model, method_configs
from sit_causal.fileio import write_text_atomic
from sit_causal.metrics import affine_r2, mcc
from sit_causal.sim.scm import SCMDataset, generate_train_test

HOME = {"factors": 5, "tasks": 8, "datasets_per_task": 5, "samples": 1000, "test_samples": 500,
        "family": "gauss-meanvar", "obs_dim": 5}
"""iVAE's synthetic setting: 40 segments (8 x 5) of 1000 samples, ``n = d = 5``."""
MEAN_RANGE = 5.0
"""Means ``U[-5, 5]`` as in the paper (the package default is ``[-2, 2]``)."""


def project_train_test(seed: int, mean_range: float = MEAN_RANGE, depth: int = 3,
                       obs_dim: int = HOME["obs_dim"]) -> tuple[SCMDataset, SCMDataset]:
    """The training set and the held-out set (sample stream 1) of the meta-SCM of ``seed``."""
    cfg = SimulateConfig(**{**HOME, "obs_dim": obs_dim})  # type: ignore[arg-type]
    scm = replace(cfg.scm_config(seed), family_options={"mean_range": mean_range}, mixing_depth=depth)
    return generate_train_test(scm, cfg.test_samples)


def reference_train_test(seed: int) -> tuple[SCMDataset, SCMDataset]:
    """The same segments (datasets) and sizes, with the sources and observations replaced by those of the
    iVAE reference generator (``benchmarks/ivae_reference.py``, its default settings) for ``seed``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from ivae_reference import parser, reference_sets

    train_set, test_set = project_train_test(seed)
    ref_train, ref_test = reference_sets(seed, parser().parse_args([]), train_set.dataset_id, test_set.dataset_id)
    return (replace(train_set, latents=ref_train.s, x=ref_train.x),
            replace(test_set, latents=ref_test.s, x=ref_test.x))


def run_one(seed: int, train: SyntheticTrainConfig, overrides: dict[str, object], mean_range: float,
            depth: int, obs_dim: int, data: str = "project") -> dict[str, float]:
    """Train ``ivae`` on the meta-SCM of ``seed`` (or on the reference generator's data, ``data="reference"``)
    and score it on held-out samples."""
    cfg = SimulateConfig(**{**HOME, "obs_dim": obs_dim})  # type: ignore[arg-type]
    if data == "reference":
        train_set, test_set = reference_train_test(seed)
    else:
        train_set, test_set = project_train_test(seed, mean_range, depth, obs_dim)
    stats = standardisation(train_set)
    tr, te = to_batch(train_set, *stats), to_batch(test_set, *stats)
    gen = torch.Generator().manual_seed(seed)
    mcfg, obj = method_configs("ivae", n_factors=cfg.factors, x_dim=train_set.x.shape[1], n_tasks=cfg.tasks,
                               n_datasets=train_set.n_datasets, **overrides)
    model = build_synthetic_model(mcfg, obj, gen)
    t0 = time.perf_counter()
    terms = train_model(model, tr, train, gen)
    wall = time.perf_counter() - t0
    z_test = model.represent(te.x).double().numpy()
    z_train = model.represent(tr.x).double().numpy()
    return {"seed": seed, "mcc_test": mcc(test_set.latents, z_test).score,
            "mcc_train": mcc(train_set.latents, z_train).score,
            "affine_r2_test": affine_r2(test_set.latents, z_test, rng=np.random.default_rng(seed)).mean,
            "time_s": wall, "final_losses": terms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated data and model seeds")
    ap.add_argument("--steps", default=str(SyntheticTrainConfig.steps), help="comma-separated Adam steps")
    ap.add_argument("--lr", default=str(SyntheticTrainConfig.lr), help="comma-separated learning rates")
    ap.add_argument("--batch-size", default=str(SyntheticTrainConfig.batch_size), help="comma-separated")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="model or objective field (repeatable)")
    ap.add_argument("--mean-range", type=float, default=MEAN_RANGE)
    ap.add_argument("--mixing-depth", type=int, default=3)
    ap.add_argument("--obs-dim", type=int, default=HOME["obs_dim"])
    ap.add_argument("--data", choices=("project", "reference"), default="project",
                    help="reference: the iVAE reference generator's sources and mixing on the same segments "
                         "(ignores --mean-range, --mixing-depth, --obs-dim)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--out", default=None, help="JSON file for every run")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    overrides = {k: yaml.safe_load(v) for k, _, v in (o.partition("=") for o in args.overrides)}
    grid = list(itertools.product([int(s) for s in args.steps.split(",")], [float(x) for x in args.lr.split(",")],
                                  [int(b) for b in args.batch_size.split(",")]))
    torch.set_num_threads(args.threads)
    out: dict[str, object] = {"setting": {**HOME, "obs_dim": args.obs_dim, "mean_range": args.mean_range,
                                          "mixing_depth": args.mixing_depth, "data": args.data},
                              "overrides": overrides, "seeds": seeds, "machine": platform.processor() or
                              platform.machine(), "cpus": os.cpu_count(), "runs": []}
    for steps, lr, bs in grid:
        train = SyntheticTrainConfig(steps=steps, lr=lr, batch_size=bs, threads=args.threads)
        rows = []
        for seed in seeds:
            load0 = os.getloadavg()[0]
            row = run_one(seed, train, overrides, args.mean_range, args.mixing_depth, args.obs_dim, args.data)
            row |= {"steps": steps, "lr": lr, "batch_size": bs, "load_1min": load0}
            rows.append(row)
            print(f"steps {steps} lr {lr:g} batch {bs} seed {seed}: held-out MCC {row['mcc_test']:.3f} "
                  f"(train {row['mcc_train']:.3f}), affine R2 {row['affine_r2_test']:.3f}, {row['time_s']:.0f} s "
                  f"(load {load0:.1f})", flush=True)
        vals = [r["mcc_test"] for r in rows]
        hit = sum(v >= args.target for v in vals)
        print(f"steps {steps} lr {lr:g} batch {bs}: held-out MCC {format_mean_ci(vals)}; min {min(vals):.3f}; "
              f">= {args.target} in {hit}/{len(vals)} seeds", flush=True)
        out["runs"] += rows  # type: ignore[operator]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(args.out), json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
