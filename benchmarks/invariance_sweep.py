"""Choose the invariance methods' penalty weight on a tuning testbed, by a criterion that reads no test split.

One (method, weight, seed) per call: the testbed job of ``sit-nlp testbed run`` (:func:`sit_nlp.testbed.jobs.run_job`)
with ``loss.w_invariance`` set to ``--weight``; its ``result.json`` holds, beside every test split, the
validation accuracy of each **training** source (``validation.worst_source``: the criterion). Run two calls
side by side on a 2-core machine::

    .venv/bin/sit-nlp testbed build --mechanism anti-causal --seed 0 --out runs/tb_anti_0
    for w in 1 10 100; do
      .venv/bin/python benchmarks/invariance_sweep.py --data runs/tb_anti_0 --method sit-invariant --weight $w \\
          --out runs/inv_sweep
    done
    .venv/bin/python benchmarks/invariance_sweep.py --summarise runs/inv_sweep

The chosen weight is :data:`sit_nlp.testbed.jobs.INVARIANCE_WEIGHT` (``docs/results/invariance.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from sit_causal.fileio import write_text_atomic


def run(data: Path, method: str, weight: float, seed: int, steps: int, out: Path, start: float = 0.0) -> dict:
    """Train and score one job with the method's penalty weight replaced by ``weight`` and its warm-up (the
    fraction of steps before the term is switched on) by ``start``."""
    from sit_nlp.testbed import jobs

    spec = jobs.TESTBED_METHODS[method]
    if spec.invariance is None:
        raise SystemExit(f"{method} has no invariance term")
    jobs.TESTBED_METHODS[method] = dataclasses.replace(spec, w_invariance=weight, invariance_start=start)
    job = jobs.TestbedJob(method, seed, data.resolve(), (out / f"w{weight:g}").resolve(), steps, threads=1)
    return jobs.run_job(job)


def summarise(out: Path) -> list[dict]:
    """One row per (weight, method, seed) under ``out``: the criterion beside the test splits."""
    rows = []
    for path in sorted(out.glob("w*/runs/*/seed*/result.json")):
        r = json.loads(path.read_text(encoding="utf-8"))
        rows.append({"weight": float(path.parts[-5][1:]), "method": r["method"], "seed": r["seed"],
                     "validation_worst_source": r["validation"]["worst_source"],
                     "validation_mean": r["validation"]["mean"], "accuracy": r["accuracy"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--method", default="sit-invariant")
    ap.add_argument("--weight", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--start", type=float, default=0.0, help="warm-up: the term is off before this fraction")
    ap.add_argument("--out", type=Path, default=Path("runs/inv_sweep"))
    ap.add_argument("--summarise", type=Path, default=None, help="print the rows of a sweep folder as JSON")
    args = ap.parse_args()
    if args.summarise is not None:
        rows = summarise(args.summarise)
        write_text_atomic(args.summarise / "sweep.json", json.dumps(rows, indent=1) + "\n")
        for r in rows:
            print(f"w={r['weight']:g} {r['method']} seed {r['seed']}: validation worst source "
                  f"{r['validation_worst_source']:.3f} (mean {r['validation_mean']:.3f}); test "
                  + ", ".join(f"{k} {v:.3f}" for k, v in r["accuracy"].items()))
        return
    result = run(args.data, args.method, args.weight, args.seed, args.steps, args.out, args.start)
    print(json.dumps({"method": args.method, "weight": args.weight, "validation": result["validation"],
                      "accuracy": result["accuracy"]}))


if __name__ == "__main__":
    main()
