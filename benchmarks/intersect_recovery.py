"""Identification by task-subspace intersection on top of a trained representation.

For each seed: draw the meta-SCM data of ``sit-causal simulate``'s defaults (gauss-mean prior, 5 datasets
per task, 1000 training / 500 held-out samples per dataset, observations of dimension ``2n``), train one
representation with :func:`sit_causal.experiments.runner.train_model` (method ``--method``, default ``sit``, 3000
steps), then apply :func:`sit_causal.selection.intersect.identify_by_intersection` to the **training** split's
representation and targets and score the unmixed **held-out** representation against the true held-out
factors. The raw representation's MCC is printed from the same run (same model, same data).

Parts:

* ``A``: ``n = 5`` factors, 8 tasks, a random UIC graph (drawn from ``--seed`` as ``simulate`` does);
* ``B``: ``n = 10`` factors, 8 tasks, a random UIC graph;
* ``V``: violating and mixed graphs at ``n = 5``, 8 tasks (``nested``, ``block``, ``bernoulli:0.5``), one
  graph per mode and seed: per factor, the checker's verdict (identifiable or not) against the matched
  correlation after unmixing; AUROC (Mann-Whitney, :func:`sit_causal.metrics.auroc`) of the matched
  correlation for the label "identifiable", and the agreement of "direction found" with the verdict.

Run (2-core CPU)::

    .venv/bin/python benchmarks/intersect_recovery.py --part A --seeds 5 --cache /tmp/intersect_cache
    .venv/bin/python benchmarks/intersect_recovery.py --part B --seeds 5 --cache /tmp/intersect_cache
    .venv/bin/python benchmarks/intersect_recovery.py --part V --seeds 2 --cache /tmp/intersect_cache

``--cache DIR`` stores each trained representation (``z`` of both splits, as ``.npz`` of plain arrays) so
that the estimator can be rerun without retraining; the training time is stored with it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sit_causal.experiments.experiment import SimulateConfig, SyntheticTrainConfig, run_graph
from sit_causal.experiments.report import format_mean_sd as _ms
from sit_causal.experiments.runner import standardisation, to_batch, train_model
from sit_causal.experiments.synthetic import build_synthetic_model, method_configs
from sit_causal.metrics import auroc, graph_recovery, mcc
from sit_causal.selection.gradients import GradientConfig
from sit_causal.selection.intersect import IntersectConfig, identify_by_intersection
from sit_causal.sim.graph_generators import generate_graph
from sit_causal.sim.scm import SCMDataset, generate_train_test
from sit_causal.theory.graph import TaskFactorGraph
from sit_causal.theory.uic import check_uic

PARTS: dict[str, dict[str, Any]] = {
    "A": {"factors": 5, "tasks": 8, "modes": ("uic",), "target": 0.95},
    "B": {"factors": 10, "tasks": 8, "modes": ("uic",), "target": 0.90},
    "V": {"factors": 5, "tasks": 8, "modes": ("nested", "block", "bernoulli:0.5"), "target": None},
}


def trained_representation(
    cfg: SimulateConfig, graph: TaskFactorGraph, seed: int, method: str, cache: Path | None, tag: str,
) -> tuple[SCMDataset, SCMDataset, np.ndarray, np.ndarray, float]:
    """Data of seed ``seed`` and the representation ``z`` of both splits (``(N_train, n)``, ``(N_test, n)``)
    of a ``method`` model trained as ``simulate`` trains it; returns ``(train, test, z_train, z_test,
    train_seconds)``. Cached in ``cache / f"{tag}_{method}_s{seed}.npz"`` when ``cache`` is given."""
    train_set, test_set = generate_train_test(cfg.scm_config(seed), cfg.test_samples, graph=graph)
    path = None if cache is None else cache / f"{tag}_{method}_s{seed}_st{cfg.train.steps}.npz"
    if path is not None and path.exists():
        with np.load(path) as f:
            return train_set, test_set, f["z_train"], f["z_test"], float(f["seconds"])
    x_stats, y_stats = standardisation(train_set)
    train_batch, test_batch = to_batch(train_set, x_stats, y_stats), to_batch(test_set, x_stats, y_stats)
    gen = torch.Generator().manual_seed(seed)
    mcfg = method_configs(method, n_factors=graph.n_factors, x_dim=train_set.x.shape[1],
                                  n_tasks=graph.n_tasks, n_datasets=train_set.n_datasets)
    model = build_synthetic_model(*mcfg, gen)
    t0 = time.perf_counter()
    train_model(model, train_batch, cfg.train, gen)
    seconds = time.perf_counter() - t0
    z_train = model.represent(train_batch.x).double().numpy()
    z_test = model.represent(test_batch.x).double().numpy()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, z_train=z_train, z_test=z_test, seconds=np.array(seconds))
    return train_set, test_set, z_train, z_test, seconds


def score_seed(train_set: SCMDataset, test_set: SCMDataset, z_train: np.ndarray, z_test: np.ndarray,
               graph: TaskFactorGraph, seed: int, config: IntersectConfig) -> dict[str, Any]:
    """Estimator on the training split, scores on the held-out split (raw and unmixed)."""
    t0 = time.perf_counter()
    res = identify_by_intersection(z_train, train_set.y.astype(np.float64), train_set.task_id, graph.n_tasks,
                                   config=config, seed=seed)
    est_s = time.perf_counter() - t0
    unmixed = res.transform(z_test)
    true = test_set.latents
    raw_p, raw_s = mcc(true, z_test, "pearson"), mcc(true, z_test, "spearman")
    un_p, un_s = mcc(true, unmixed, "pearson"), mcc(true, unmixed, "spearman")
    report = check_uic(graph)
    # found flag of the learned factor matched to each true factor
    found_of_true = [bool(res.found[j]) if j >= 0 else False for j in un_p.assignment]
    gr = graph_recovery(res.adjacency.astype(int), graph, un_p.assignment)
    return {
        "seed": seed,
        "raw_mcc_pearson": raw_p.score, "raw_mcc_spearman": raw_s.score,
        "mcc_pearson": un_p.score, "mcc_spearman": un_s.score,
        "n_found": int(res.found.sum()), "estimator_s": est_s,
        "graph_precision": gr.precision, "graph_recall": gr.recall,
        "learned_uic_holds": bool(check_uic(TaskFactorGraph.from_matrix(res.adjacency.astype(int))).uic_holds),
        "task_dims": res.task_dims.tolist(),
        "per_factor": [{"factor": graph.factors[i], "identifiable_predicted": bool(v.identifiable),
                        "mixes_with": list(v.mixes_with), "raw_matched_corr": float(raw_p.matched[i]),
                        "matched_corr": float(un_p.matched[i]), "found": found_of_true[i]}
                       for i, v in enumerate(report.factors)],
    }



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=sorted(PARTS), default="A")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=SyntheticTrainConfig.steps)
    ap.add_argument("--method", default="sit", help="representation to unmix: sit, ivae, ...")
    ap.add_argument("--cache", default=None, help="folder caching trained representations (.npz)")
    ap.add_argument("--statistic", default=IntersectConfig.statistic, choices=("centred", "outer"),
                    help="gradient matrix of the estimator (sit_causal.selection.intersect.gradient_matrix)")
    ap.add_argument("--out", default=None, help="write all per-seed results here (JSON)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    part = PARTS[args.part]
    cache = Path(args.cache) if args.cache else None
    config = IntersectConfig(gradients=GradientConfig(statistic=args.statistic))
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for mode in part["modes"]:
        base = SimulateConfig(factors=part["factors"], tasks=part["tasks"], seed=args.seed, graph_mode=mode,
                              train=SyntheticTrainConfig(steps=args.steps))
        graph = run_graph(base) if mode == "uic" else None
        for seed in range(args.seed, args.seed + args.seeds):
            if graph is None or mode != "uic":
                rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(11,)))
                graph = generate_graph(mode, base.factors, base.tasks, rng)
            tag = f"n{base.factors}m{base.tasks}_{mode.replace(':', '')}"
            tr, te, z_tr, z_te, train_s = trained_representation(base, graph, seed, args.method, cache, tag)
            row = score_seed(tr, te, z_tr, z_te, graph, seed, config)
            row.update(mode=mode, uic_holds=bool(check_uic(graph).uic_holds), train_s=train_s,
                       graph=graph.adjacency.astype(int).tolist())
            rows.append(row)
            print(f"{mode:14s} seed {seed}: raw MCC {row['raw_mcc_pearson']:.3f} -> unmixed {row['mcc_pearson']:.3f} "
                  f"(spearman {row['mcc_spearman']:.3f}); found {row['n_found']}/{base.factors}; task dims "
                  f"{row['task_dims']}; graph P/R {row['graph_precision']:.2f}/{row['graph_recall']:.2f}; "
                  f"train {train_s:.0f} s, estimator {row['estimator_s']:.1f} s", flush=True)
    wall = time.perf_counter() - t_all
    print(f"part {args.part}: n = {part['factors']}, {part['tasks']} tasks, method {args.method}, "
          f"statistic {args.statistic}, "
          f"{args.seeds} seed(s) per mode, {args.steps} steps; wall {wall:.0f} s")
    for mode in part["modes"]:
        sel = [r for r in rows if r["mode"] == mode]
        print(f"[{mode}] raw {args.method}: MCC pearson {_ms([r['raw_mcc_pearson'] for r in sel])}, spearman "
              f"{_ms([r['raw_mcc_spearman'] for r in sel])}")
        print(f"[{mode}] {args.method}+intersect: MCC pearson {_ms([r['mcc_pearson'] for r in sel])}, spearman "
              f"{_ms([r['mcc_spearman'] for r in sel])}; graph P {_ms([r['graph_precision'] for r in sel])}, "
              f"R {_ms([r['graph_recall'] for r in sel])}; estimator {_ms([r['estimator_s'] for r in sel])} s; "
              f"training {_ms([r['train_s'] for r in sel])} s")
    if part["target"] is not None:
        m = float(np.mean([r["mcc_pearson"] for r in rows]))
        print(f"target MCC >= {part['target']:.2f}: {m:.3f} -> {'MET' if m >= part['target'] else 'MISSED'}")
    factors = [f for r in rows for f in r["per_factor"]]
    label = np.array([f["identifiable_predicted"] for f in factors], bool)
    if 0 < label.sum() < label.size:
        score = np.array([f["matched_corr"] for f in factors])
        raw = np.array([f["raw_matched_corr"] for f in factors])
        found = np.array([f["found"] for f in factors], bool)
        print(f"per factor ({label.size}: {int(label.sum())} identifiable by the checker): AUROC of the matched "
              f"correlation after unmixing {auroc(score, label):.3f} (raw representation {auroc(raw, label):.3f}); "
              f"'direction found' agrees with the checker for {np.mean(found == label):.3f} of factors; mean "
              f"matched corr identifiable {score[label].mean():.3f}, not identifiable {score[~label].mean():.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"part": args.part, "method": args.method, "rows": rows}, indent=1)
                                  + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
