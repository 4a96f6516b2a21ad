"""Variants of the GL(n) selection step on cached trained representations of the ``linear-left`` regime.

Two subcommands:

``cache KIND:GRAPH_SEED:SEED ...`` trains the SIT model of that ``simulate --latent-scm 0.5`` run (same
configuration and seed as ``simulate``: the ``--trained`` diagnostic of ``benchmarks/linear_regime.py``) and
saves its representation of the training and held-out splits, the targets, task and dataset ids, the true
factors and the graph to ``DIR/KIND_GRAPH_SEED_SEED.npz`` (one file per run; an existing file is kept).
``KIND`` is ``uic`` or ``nested``; ``exact-uic`` and ``exact-nested`` save the exactly linear representation
``z = L B^T + c`` of ``benchmarks/linear_regime.py`` (stage 1, same seeds) instead, no training.

``compare DIR`` runs every variant of the step (``--variants``) on every cached run and reports per variant:
the held-out MCC, the factors recovered by the strict rule (:func:`sit_causal.experiments.runner.factor_recovered`),
``J`` at the solution against ``J`` at the **oracle** unmixing (least squares from the whitened representation
to the true factors, rows normalised), and the seconds of the step. The per-task gradient matrices are the
step's own (same seed), computed once per run and shared by every variant; the time reported is that of the
search after them (``time_s``) and, once per run, of the gradient matrices (``grams_s``).

    python benchmarks/linear_regime_variants.py cache --out runs/lin_cache uic:0:0 uic:0:1 uic:0:2
    python benchmarks/linear_regime_variants.py compare runs/lin_cache --runs 'uic_300_*' --json out.json
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

from sit_causal.experiments.experiment import SimulateConfig, run_graph
from sit_causal.experiments.runner import factor_recovered
from sit_causal.metrics import affine_r2, factor_report
from sit_causal.selection.affinise import AffiniseConfig, fit_affiniser
from sit_causal.selection.align import AlignConfig, task_grams
from sit_causal.selection.gradients import GradientConfig, whitening
from sit_causal.selection.linear import LinearAlignConfig, gl_energies, linear_objective
from sit_causal.sim.scm import generate_train_test
from sit_causal.theory.uic import check_uic

# name -> overrides of BASE (AlignConfig overrides under the key "align", AffiniseConfig's under "affinise");
# "affinise+refine" is the step's default now
VARIANTS: dict[str, dict[str, Any]] = {
    "today": {},
    "restarts64": {"align": {"restarts": 64}},
    "taskfree": {"start_taskfree": True},
    "restarts64+taskfree": {"align": {"restarts": 64}, "start_taskfree": True},
    "refine": {"refine": True},
    "refine4": {"refine": True, "refine_candidates": 4},
    "eps0.02": {"align": {"count_eps": 0.02}},
    "eps0.05": {"align": {"count_eps": 0.05}},
    "logdet1": {"w_logdet": 1.0},
    "logdet0.25": {"w_logdet": 0.25},
    "ensemble3": {"align": {"ensemble": 3}},
    "dual": {"energies": "dual"},
    "dual-logdet1": {"energies": "dual", "w_logdet": 1.0},
    "dual-logdet2": {"energies": "dual", "w_logdet": 2.0},
    "dual-logdet4": {"energies": "dual", "w_logdet": 4.0},
    "halfdual": {"energies": "halfdual"},
    "halfdual-logdet2": {"energies": "halfdual", "w_logdet": 2.0},
    "grads-all": {"align": {"gradients": GradientConfig(steps=600, max_samples_per_task=None)}},
    "grads-all-ens3": {"align": {"ensemble": 3, "gradients": GradientConfig(steps=600, max_samples_per_task=None)}},
    "sat0.05": {"saturate": 0.05},
    "sat0.1": {"saturate": 0.1},
    "sat0.2": {"saturate": 0.2},
    "affinise": {"affinise": {}},
    "affinise+refine": {"affinise": {}, "refine": True},
}


def cache_one(kind: str, graph_seed: int, seed: int, strength: float, out: Path) -> Path:
    from sit_causal.experiments.runner import standardisation, to_batch, train_model
    from sit_causal.experiments.synthetic import build_synthetic_model, method_configs

    path = out / f"{kind}_{graph_seed}_{seed}.npz"
    if path.exists():
        return path
    exact = kind.startswith("exact-")
    cfg = SimulateConfig(graph_mode=kind.removeprefix("exact-"), seed=graph_seed, latent_scm=strength)
    graph = run_graph(cfg)
    train, test = generate_train_test(cfg.scm_config(seed), cfg.test_samples, graph=graph)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"task_id": train.task_id, "dataset_id": train.dataset_id, "latents_train": train.latents,
            "latents_test": test.latents, "adjacency": graph.adjacency.astype(np.int64),
            "identifiable": check_uic(graph).identifiable_mask, "kind": kind, "graph_seed": graph_seed, "seed": seed}
    if exact:  # the exactly linear representation of benchmarks/linear_regime.py (stage 1), same seeds
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(99,)))
        b, c = rng.standard_normal((graph.n_factors, graph.n_factors)), rng.standard_normal(graph.n_factors)
        y = train.y.astype(np.float64)
        np.savez(path, z_train=train.latents @ b.T + c, z_test=test.latents @ b.T + c, y=(y - y.mean()) / y.std(),
                 train_s=0.0, **meta)
        return path
    stats = standardisation(train)
    tr, te = to_batch(train, *stats), to_batch(test, *stats)
    gen = torch.Generator().manual_seed(seed)
    model = build_synthetic_model(*method_configs("sit", n_factors=graph.n_factors, x_dim=train.x.shape[1],
                                                  n_tasks=graph.n_tasks, n_datasets=train.n_datasets), gen)
    t0 = time.perf_counter()
    train_model(model, tr, cfg.train, gen)
    with torch.no_grad():
        z_tr, z_te = model.represent(tr.x).double().numpy(), model.represent(te.x).double().numpy()
    np.savez(path, z_train=z_tr, z_test=z_te, y=tr.y[:, 0].double().numpy(), train_s=time.perf_counter() - t0,
             **meta)
    return path


def oracle_unmixing(w: np.ndarray, latents: np.ndarray) -> np.ndarray:
    """Least squares from the whitened representation to the true factors, rows normalised ``(n, n)``."""
    coef = np.linalg.lstsq(np.c_[w, np.ones(len(w))], latents, rcond=None)[0][:-1].T
    return coef / np.linalg.norm(coef, axis=1, keepdims=True)


# "today": the GL(n) step before the correction towards affine and the refinement (both now on by default)
BASE = LinearAlignConfig(refine=False, affinise=None)


def variant_configs(name: str) -> tuple[AlignConfig, LinearAlignConfig, AffiniseConfig | None]:
    """The settings of a variant: the step's, the search's and the correction's (applied here, before the
    step, so that the oracle and ``J`` are measured on the representation the step sees)."""
    spec = dict(VARIANTS[name])
    acfg = replace(AlignConfig(), **spec.pop("align", {}))
    aff = spec.pop("affinise", None)
    return acfg, replace(BASE, **spec), None if aff is None else replace(AffiniseConfig(), **aff)


def compare_one(path: Path, variants: list[str]) -> list[dict[str, Any]]:
    from sit_causal.selection.linear import search_linear

    d = np.load(path)
    seed = int(d["seed"])
    y, tid, did = d["y"], d["task_id"], d["dataset_id"]
    n_tasks = int(d["adjacency"].shape[0])
    reps: dict[Any, tuple[np.ndarray, ...]] = {}
    grams_by: dict[Any, tuple[np.ndarray, float]] = {}
    rows = []
    for name in variants:
        acfg, lcfg, aff = variant_configs(name)
        if aff not in reps:  # the representation the step sees: the cached one, or its affinised correction
            t0 = time.perf_counter()
            z, z_te = d["z_train"], d["z_test"]
            if aff is not None:
                phi = fit_affiniser(z, did, aff, seed=seed)
                z, z_te = phi(z), phi(z_te)
            mu_, wmat_ = whitening(z, did)
            w_ = (z - mu_) @ wmat_
            reps[aff] = (z_te, mu_, wmat_, w_, oracle_unmixing(w_, d["latents_train"]), time.perf_counter() - t0)
        z_te, mu, wmat, w, oracle, aff_s = reps[aff]
        key = (aff, acfg.ensemble, acfg.gradients)
        if key not in grams_by:  # the step's own G_t (same seed), shared by the variants that agree
            t0 = time.perf_counter()
            g_, _ = task_grams(w, y, tid, n_tasks, acfg, seed)
            grams_by[key] = (g_, time.perf_counter() - t0)
        grams, grams_s = grams_by[key]
        t0 = time.perf_counter()
        found = search_linear(grams, acfg, lcfg, seed, w=w, y=y, task_id=tid, dataset_id=did)
        elapsed = time.perf_counter() - t0
        v, objective = found.mixing, found.objective
        j_oracle = float(linear_objective(torch.as_tensor(oracle)[None], torch.as_tensor(grams), acfg, lcfg)[0])
        rep = factor_report(d["latents_test"], (z_te - mu) @ (v @ wmat.T).T, "pearson")
        oracle_rep = factor_report(d["latents_test"], (z_te - mu) @ (oracle @ wmat.T).T, "pearson")
        # the best held-out MCC among every start's end point: whether the search reached the truth's basin
        reach = max(factor_report(d["latents_test"], (z_te - mu) @ (u @ wmat.T).T, "pearson").mcc.score
                    for u in found.restart_mixing if np.all(np.isfinite(u)))
        ident = d["identifiable"]
        # the count split into its terms on the true graph's edges and non-edges (learned factors matched to the
        # true ones by the MCC assignment): at the solution and at the oracle
        parts = {}
        for tag, u in (("found", v[rep.mcc.assignment]), ("oracle", oracle)):
            e = gl_energies(torch.as_tensor(u)[None], torch.as_tensor(grams), lcfg)[0].numpy()
            cnt = np.log1p(e / acfg.count_eps)
            parts[f"edges_{tag}"] = float(cnt[d["adjacency"] == 1].sum())
            parts[f"non_edges_{tag}"] = float(cnt[d["adjacency"] == 0].sum())
        rec = [factor_recovered(rep, i) for i in range(len(ident))]
        rows.append({"run": path.stem, "kind": str(d["kind"]), "graph_seed": int(d["graph_seed"]), "seed": seed,
                     "variant": name, "mcc": rep.mcc.score, "recovered": int(sum(rec)), "factors": len(rec),
                     "recovered_identifiable": int(sum(r for r, i in zip(rec, ident, strict=True) if i)),
                     "j_found": objective, "j_oracle": j_oracle,
                     "best_start_mcc": reach, **parts, "affinise_s": aff_s,
                     "affine_r2": affine_r2(d["latents_test"], z_te).mean, "oracle_mcc": oracle_rep.mcc.score,
                     "oracle_recovered": int(sum(factor_recovered(oracle_rep, i) for i in range(len(ident)))),
                     "log_det": float(np.linalg.slogdet(v)[1]),
                     "log_det_oracle": float(np.linalg.slogdet(oracle)[1]), "time_s": elapsed, "grams_s": grams_s})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _ci(x: np.ndarray) -> str:
    from scipy import stats

    if len(x) < 2:
        return f"{x.mean():.3f}"
    h = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return f"{x.mean():.3f} +/- {h:.3f}"


def table(rows: list[dict[str, Any]], reference: str = "today") -> str:
    runs = sorted({r["run"] for r in rows})
    names = list(dict.fromkeys(r["variant"] for r in rows))
    by = {(r["run"], r["variant"]): r for r in rows}
    lines = [f"| variant | runs | MCC | paired diff vs {reference} | recovered | J found - J oracle | "
             "found below oracle | s / step |", "|---|---|---|---|---|---|---|---|"]
    for name in names:
        rs = [by[(run, name)] for run in runs if (run, name) in by]
        mcc = np.array([r["mcc"] for r in rs])
        diff = np.array([by[(r["run"], name)]["mcc"] - by[(r["run"], reference)]["mcc"] for r in rs
                         if (r["run"], reference) in by])
        gap = np.array([r["j_found"] - r["j_oracle"] for r in rs])
        lines.append(f"| {name} | {len(rs)} | {_ci(mcc)} | {_ci(diff) if len(diff) else '-'} | "
                     f"{sum(r['recovered'] for r in rs)} / {sum(r['factors'] for r in rs)} | {_ci(gap)} | "
                     f"{int((gap < 0).sum())} / {len(rs)} | {np.median([r['time_s'] for r in rs]):.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache")
    c.add_argument("runs", nargs="+", metavar="KIND:GRAPH_SEED:SEED")
    c.add_argument("--out", default="runs/lin_cache")
    c.add_argument("--latent-scm", type=float, default=0.5)
    p = sub.add_parser("compare")
    p.add_argument("cache")
    p.add_argument("--runs", default="*", help="glob of cached run names (KIND_GRAPH_SEED_SEED)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--json", default=None)
    p.add_argument("--rows", default=None, help="only print the table of a JSON written by --json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.cmd == "cache":
        for item in args.runs:
            kind, g, s = item.split(":")
            t0 = time.perf_counter()
            path = cache_one(kind, int(g), int(s), args.latent_scm, Path(args.out))
            print(f"{path} ({time.perf_counter() - t0:.0f} s)", flush=True)
        return
    if args.rows:
        print(table(json.loads(Path(args.rows).read_text())["rows"]))
        return
    variants = args.variants.split(",")
    rows: list[dict[str, Any]] = []
    for path in sorted(Path(args.cache).glob(args.runs + ".npz")):
        rows += compare_one(path, variants)
        if args.json:
            Path(args.json).write_text(json.dumps({"variants": {v: VARIANTS[v] for v in variants}, "rows": rows},
                                                  default=str) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
