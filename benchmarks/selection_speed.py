"""The selection step alone, one version of the code against another, on the same saved representations.

Training a model costs far more than its selection step, so the models are trained once per (graph, seed,
model) and their representations saved; the selection step (:func:`sit_causal.selection.align_by_task_sparsity`)
then runs on each saved representation with whichever ``sit_causal`` is importable (``PYTHONPATH`` picks the
code: a checkout of another commit, e.g. ``58a9e08``, or this one), and the two runs are compared pair by pair.

    # 1. train and save (graph g uses data seeds g, g + 1, ...; the held-out graphs start at 1000)
    python benchmarks/selection_speed.py represent --graphs 1000,1010 --seeds 2 --models sit,ivae --out runs/sel/cache
    # 2. the selection step on every saved representation, once per version of the code
    PYTHONPATH=/tmp/old python benchmarks/selection_speed.py select --cache runs/sel/cache --out runs/sel/old.json
    PYTHONPATH=.        python benchmarks/selection_speed.py select --cache runs/sel/cache --out runs/sel/new.json
    # this code with the regressor sizes of commit 58a9e08 (two regressors of 3,000 samples per task)
    PYTHONPATH=.        python benchmarks/selection_speed.py select --cache runs/sel/cache --ensemble 2 --samples 3000 \
        --out runs/sel/new_e2.json
    # 3. paired differences (new - old) of the held-out MCC and the ratio of the times
    python benchmarks/selection_speed.py compare runs/sel/old.json runs/sel/new.json

``represent`` runs exactly what ``sit-causal simulate`` runs for the model (``run_seed``: data of the seed,
standardisation, training with the default budget); ``select`` configures the step as ``simulate`` does
(``selection_step``: the UIC and distinction terms on for ``ivae-select`` and for a model trained with them).
The held-out MCC is the Pearson MCC of ``simulate``'s ``mcc_pearson``. One torch thread throughout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch


def _t_quantile(df: int) -> float:
    """Two-sided 95 % quantile of Student's t with ``df`` degrees of freedom (scipy)."""
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95 % t interval (0 for fewer than two values)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return float(v.mean()) if v.size else math.nan, 0.0
    return float(v.mean()), _t_quantile(v.size - 1) * float(v.std(ddof=1)) / math.sqrt(v.size)


def represent(args: argparse.Namespace) -> None:
    """Train every (graph, seed, model) not yet saved; save ``z`` of train and test, targets, ids, latents."""
    from sit_causal.experiments.experiment import SimulateConfig, run_graph
    from sit_causal.experiments.runner import standardisation, to_batch, train_model
    from sit_causal.experiments.synthetic import build_synthetic_model, method_configs
    from sit_causal.sim.scm import generate_train_test

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for g in [int(x) for x in args.graphs.split(",")]:
        config = SimulateConfig(factors=args.factors, tasks=args.tasks, seed=g, family=args.family)
        graph = run_graph(config)
        for s in range(g, g + args.seeds):
            todo = [m for m in args.models.split(",") if not (out / f"g{g}_s{s}_{m}.npz").exists()]
            if not todo:
                continue
            train_set, test_set = generate_train_test(config.scm_config(s), config.test_samples, graph=graph)
            x_stats, y_stats = standardisation(train_set)
            train_batch, test_batch = to_batch(train_set, x_stats, y_stats), to_batch(test_set, x_stats, y_stats)
            for model_name in todo:
                gen = torch.Generator().manual_seed(s)
                mcfg, objective = method_configs(model_name, n_factors=graph.n_factors, x_dim=train_set.x.shape[1],
                                                 n_tasks=graph.n_tasks, n_datasets=train_set.n_datasets)
                model = build_synthetic_model(mcfg, objective, gen)
                t0 = time.perf_counter()
                train_model(model, train_batch, config.train, gen)
                elapsed = time.perf_counter() - t0
                with torch.no_grad():
                    z_train = model.represent(train_batch.x).double().numpy()
                    z_test = model.represent(test_batch.x).double().numpy()
                np.savez_compressed(
                    out / f"g{g}_s{s}_{model_name}.npz", z_train=z_train, y=train_batch.y[:, 0].double().numpy(),
                    task_id=train_set.task_id, dataset_id=train_set.dataset_id, z_test=z_test,
                    latents_test=test_set.latents, n_tasks=graph.n_tasks, graph=int(g), seed=int(s),
                    uic_on=bool(model.objective.w_uic > 0 or model_name == "ivae"),
                    distinction_on=bool(model.objective.w_distinction > 0 or model_name == "ivae"),
                    train_s=elapsed)
                print(f"g{g} s{s} {model_name}: trained in {elapsed:.1f} s", flush=True)


def select(args: argparse.Namespace) -> None:
    """The selection step on every saved representation; one JSON row per file."""
    import sit_causal
    from sit_causal.metrics import mcc
    from sit_causal.selection import AlignConfig, align_by_task_sparsity

    torch.set_num_threads(1)
    rows = []
    files = sorted(Path(args.cache).glob(args.pattern))
    if args.limit:
        files = files[: args.limit]
    for path in files:
        d = np.load(path)
        base = AlignConfig()
        if args.restarts:
            base = replace(base, restarts=args.restarts)
        if args.count_eps:
            base = replace(base, count_eps=args.count_eps)
        if args.ensemble or args.samples:  # other regressor sizes than the defaults
            base = replace(base, ensemble=args.ensemble or base.ensemble,
                           gradients=replace(base.gradients, max_samples_per_task=args.samples
                                             or base.gradients.max_samples_per_task))
        if args.refine_samples:
            base = replace(base, refine_samples_per_task=args.refine_samples)
        if args.refine_check_every:
            base = replace(base, refine_check_every=args.refine_check_every)
        cfg = replace(base, w_uic=base.w_uic if bool(d["uic_on"]) else 0.0,
                      w_distinction=base.w_distinction if bool(d["distinction_on"]) else 0.0)
        t0 = time.perf_counter()
        res = align_by_task_sparsity(d["z_train"], d["y"], d["task_id"], int(d["n_tasks"]), d["dataset_id"], cfg,
                                     seed=int(d["seed"]))
        elapsed = time.perf_counter() - t0
        score = mcc(d["latents_test"], res.transform(d["z_test"]), "pearson").score
        row = {"file": path.name, "graph": int(d["graph"]), "seed": int(d["seed"]), "mcc": float(score),
               "objective": float(res.objective), "time_s": elapsed, "train_s": float(d["train_s"]),
               "timings": getattr(res, "timings", None), "refine_steps": getattr(res, "refine_steps", None)}
        rows.append(row)
        print(f"{path.name}: MCC {score:.4f}  J {res.objective:.4f}  {elapsed:.2f} s", flush=True)
    meta = {"code": str(Path(sit_causal.__file__).parent), "load": os.getloadavg(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def compare(args: argparse.Namespace) -> None:
    """Paired differences ``new - old`` of the MCC per model, and the time ratio, printed as markdown."""
    old = {r["file"]: r for r in json.loads(Path(args.old).read_text())["rows"]}
    new = {r["file"]: r for r in json.loads(Path(args.new).read_text())["rows"]}
    common = sorted(set(old) & set(new))
    models = sorted({f.rsplit("_", 1)[1].removesuffix(".npz") for f in common})
    print("| model | pairs | MCC old | MCC new | new - old (95 % CI) | min / max diff | time old (s) | "
          "time new (s) | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in [*models, "all"]:
        keys = [f for f in common if model == "all" or f.endswith(f"_{model}.npz")]
        mo, co = mean_ci([old[k]["mcc"] for k in keys])
        mn, cn = mean_ci([new[k]["mcc"] for k in keys])
        diffs = [new[k]["mcc"] - old[k]["mcc"] for k in keys]
        md, cd = mean_ci(diffs)
        to, tn = mean_ci([old[k]["time_s"] for k in keys]), mean_ci([new[k]["time_s"] for k in keys])
        ratio = to[0] / tn[0]
        print(f"| {model} | {len(keys)} | {mo:.4f} +/- {co:.4f} | {mn:.4f} +/- {cn:.4f} | {md:+.4f} +/- {cd:.4f} | "
              f"{min(diffs):+.4f} / {max(diffs):+.4f} | {to[0]:.1f} +/- {to[1]:.1f} | {tn[0]:.2f} +/- {tn[1]:.2f} | "
              f"{ratio:.1f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("represent", help="train once per (graph, seed, model) and save the representations")
    r.add_argument("--graphs", required=True, help="comma-separated graph seeds")
    r.add_argument("--seeds", type=int, default=2, help="data seeds per graph (g, g + 1, ...)")
    r.add_argument("--models", default="sit,ivae", help="trained models (sit: simulate's sit; ivae: ivae-select)")
    r.add_argument("--factors", type=int, default=5)
    r.add_argument("--tasks", type=int, default=8)
    r.add_argument("--family", default="gauss-mean")
    r.add_argument("--out", required=True)
    s = sub.add_parser("select", help="run the selection step on every saved representation")
    s.add_argument("--cache", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--limit", type=int, default=0, help="only the first LIMIT files (0 = all)")
    s.add_argument("--pattern", default="*.npz", help="the saved representations to use (a glob in --cache)")
    s.add_argument("--restarts", type=int, default=0, help="restarts of the count search (0 = the default)")
    s.add_argument("--count-eps", type=float, default=0.0, help="eps of the edge count (0 = the default)")
    s.add_argument("--ensemble", type=int, default=0, help="regressors per task (0 = the default)")
    s.add_argument("--samples", type=int, default=0, help="samples per task regressor (0 = the default)")
    s.add_argument("--refine-samples", type=int, default=0, help="samples per task of the refinement (0 = the default)")
    s.add_argument("--refine-check-every", type=int, default=0,
                   help="steps between the refinement's stop checks (0 = the default)")
    c = sub.add_parser("compare", help="paired differences of two select runs")
    c.add_argument("old")
    c.add_argument("new")
    args = ap.parse_args()
    {"represent": represent, "select": select, "compare": compare}[args.command](args)


if __name__ == "__main__":
    main()
