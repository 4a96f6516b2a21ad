"""The UIC's prediction in the ``linear-left`` regime, on exactly linear representations (no training).

For each graph kind (``uic``: the UIC holds; ``nested``: some ``C_i`` inside a ``C_j``) and each graph seed
``g``, the graph of ``simulate --graph-mode KIND --seed g`` and, for data seeds ``g .. g + seeds - 1``, the
meta-SCM of ``simulate --latent-scm S`` (gauss-mean, n = 5, 8 tasks, 5 datasets per task, 1000 training and
500 held-out samples per dataset: ``SimulateConfig`` defaults). The representation is ``z = L B^T + c`` with
``B`` ``(n, n)`` a random Gaussian matrix and ``c`` a random offset (seeded by the data seed): exactly affine
in the factors, so what is measured is the selection step and the theory, not a trained model. Two steps on
the same ``z``, same seed:

* ``gl``: the selection step over GL(n) (:func:`sit_causal.selection.linear.align_linear_by_task_sparsity`),
  the one ``simulate`` uses in this regime;
* ``rotation``: the rotation step's count search (:func:`sit_causal.selection.align.align_by_task_sparsity`
  with ``refine_iterations = 0``): the control that shows whitening leaves more than a rotation here.

Per factor: the held-out matched ``|correlation|`` and the UIC checker's label. Output: one JSON file (every
(kind, graph, seed, step) row) and, printed, the summary of ``benchmarks/linear_regime_summary.py``.

    .venv/bin/python benchmarks/linear_regime.py --graph-seeds 300,310,320,330,340 --seeds 3 \\
        --out docs/results/data/linear_regime_exact.json

``--trained KIND:GRAPH_SEED:SEED`` (repeatable) instead trains the SIT model of that ``simulate`` run
(same configuration and seed) and reports, for its representation, the affine ``R^2`` of the factors, the
GL(n) step's held-out MCC and its objective ``J`` at the solution against ``J`` at the **oracle** unmixing
(the least-squares map from the whitened representation to the true factors, rows normalised): a found
``J`` below the oracle's means the objective itself prefers a wrong answer on that representation (the
gradient matrices leak energy onto non-edges), not that the search missed the truth.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from sit_causal.experiments.experiment import SimulateConfig, run_graph
from sit_causal.experiments.runner import factor_recovered
from sit_causal.fileio import write_text_atomic
from sit_causal.metrics import factor_report
from sit_causal.selection.align import AlignConfig, align_by_task_sparsity
from sit_causal.selection.linear import align_linear_by_task_sparsity
from sit_causal.sim.scm import generate_train_test
from sit_causal.theory.uic import check_uic


def run_one(kind: str, graph_seed: int, seed: int, strength: float) -> list[dict[str, Any]]:
    """Both steps on the exactly linear representation of one (graph, data seed): two rows."""
    cfg = SimulateConfig(graph_mode=kind, seed=graph_seed, latent_scm=strength)
    graph = run_graph(cfg)
    report = check_uic(graph)
    train, test = generate_train_test(cfg.scm_config(seed), cfg.test_samples, graph=graph)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(99,)))
    b, c = rng.standard_normal((graph.n_factors, graph.n_factors)), rng.standard_normal(graph.n_factors)
    z_train, z_test = train.latents @ b.T + c, test.latents @ b.T + c
    y = train.y.astype(np.float64)
    y = (y - y.mean()) / y.std()
    rows = []
    for step in ("gl", "rotation"):
        t0 = time.perf_counter()
        if step == "gl":
            res: Any = align_linear_by_task_sparsity(z_train, y, train.task_id, graph.n_tasks, train.dataset_id,
                                                     AlignConfig(), seed=seed)
        else:
            res = align_by_task_sparsity(z_train, y, train.task_id, graph.n_tasks, train.dataset_id,
                                         replace(AlignConfig(), refine_iterations=0), seed=seed)
        elapsed = time.perf_counter() - t0
        rep = factor_report(test.latents, res.transform(z_test), "pearson")
        per_factor = [{"factor": graph.factors[i], "matched_corr": float(rep.factors[i].matched_correlation),
                       "identifiable_predicted": bool(v.identifiable), "mixes_with": list(v.mixes_with),
                       "recovered": factor_recovered(rep, i)} for i, v in enumerate(report.factors)]
        rows.append({"kind": kind, "graph_seed": graph_seed, "seed": seed, "method": step, "regime": "linear-left",
                     "uic_holds": report.uic_holds, "mcc": rep.mcc.score, "before": None, "time_s": elapsed,
                     "log_det": getattr(res, "log_det", 0.0),
                     "factors": [(f["matched_corr"], f["identifiable_predicted"], f["recovered"]) for f in per_factor],
                     "per_factor": per_factor})
    return rows


def trained_gap(kind: str, graph_seed: int, seed: int, strength: float) -> dict[str, Any]:
    """The ``--trained`` diagnostic of one ``simulate`` run (module docstring)."""
    from sit_causal.experiments.runner import standardisation, to_batch, train_model
    from sit_causal.experiments.synthetic import build_synthetic_model, method_configs
    from sit_causal.metrics import affine_r2
    from sit_causal.selection.align import task_grams
    from sit_causal.selection.gradients import whitening
    from sit_causal.selection.linear import LinearAlignConfig, linear_objective

    cfg = SimulateConfig(graph_mode=kind, seed=graph_seed, latent_scm=strength)
    graph = run_graph(cfg)
    train, test = generate_train_test(cfg.scm_config(seed), cfg.test_samples, graph=graph)
    stats = standardisation(train)
    tr, te = to_batch(train, *stats), to_batch(test, *stats)
    gen = torch.Generator().manual_seed(seed)
    model = build_synthetic_model(*method_configs("sit", n_factors=graph.n_factors, x_dim=train.x.shape[1],
                                        n_tasks=graph.n_tasks, n_datasets=train.n_datasets), gen)
    train_model(model, tr, cfg.train, gen)
    z_tr, z_te = model.represent(tr.x).double().numpy(), model.represent(te.x).double().numpy()
    y = tr.y[:, 0].double().numpy()
    acfg = AlignConfig()
    res = align_linear_by_task_sparsity(z_tr, y, train.task_id, graph.n_tasks, train.dataset_id, acfg, seed=seed)
    mu, wmat = whitening(z_tr, train.dataset_id)
    w = (z_tr - mu) @ wmat
    grams, _ = task_grams(w, y, train.task_id, graph.n_tasks, acfg, seed)  # the step's own G_t (same seed)
    coef = np.linalg.lstsq(np.c_[w, np.ones(len(w))], train.latents, rcond=None)[0][:-1].T  # L ~ coef w
    oracle = coef / np.linalg.norm(coef, axis=1, keepdims=True)
    j_oracle = float(linear_objective(torch.as_tensor(oracle)[None], torch.as_tensor(grams), acfg,
                                      LinearAlignConfig())[0])
    return {"kind": kind, "graph_seed": graph_seed, "seed": seed,
            "affine_r2": affine_r2(test.latents, z_te).mean,
            "mcc_gl": factor_report(test.latents, res.transform(z_te), "pearson").mcc.score,
            "objective_found": res.objective, "objective_oracle": j_oracle}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graph-seeds", default="300,310,320,330,340")
    ap.add_argument("--seeds", type=int, default=3, help="data seeds per graph (g, g+1, ...)")
    ap.add_argument("--kinds", default="uic,nested")
    ap.add_argument("--latent-scm", type=float, default=0.5)
    ap.add_argument("--out", default=None, help="JSON file of every row (written after every graph)")
    ap.add_argument("--trained", action="append", default=[], metavar="KIND:GRAPH_SEED:SEED",
                    help="the trained-representation diagnostic of one simulate run instead (repeatable)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.trained:
        for item in args.trained:
            kind, g, s = item.split(":")
            print(json.dumps(trained_gap(kind, int(g), int(s), args.latent_scm)), flush=True)
        return
    graph_seeds = [int(s) for s in args.graph_seeds.split(",")]
    kinds = args.kinds.split(",")
    jobs = [(k, g, g + s) for g in graph_seeds for k in kinds for s in range(args.seeds)]
    rows: list[dict[str, Any]] = []
    for kind, g, seed in tqdm(jobs, desc="linear-left, exact", unit="run"):
        rows += run_one(kind, g, seed, args.latent_scm)
        if args.out is not None:
            write_text_atomic(Path(args.out), json.dumps({"latent_scm": args.latent_scm, "rows": rows}) + "\n")
    print(_summary_module().summary(rows)[0])


def _summary_module() -> Any:
    """``benchmarks/linear_regime_summary.py``, beside this script (the benchmarks are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("linear_regime_summary",
                                                  Path(__file__).resolve().parent / "linear_regime_summary.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    main()
