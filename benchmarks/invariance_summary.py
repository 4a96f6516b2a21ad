"""Tables of the invariance measurements: each method's accuracy per split (mean and 95 % CI over seeds) and
the paired differences the comparison rests on, from the ``result.json`` files of testbed jobs.

Reads the runs of ``benchmarks/invariance_sweep.py`` (``OUT/wW/runs/METHOD/seedS/result.json``) and of
``sit-nlp testbed run`` (``OUT/runs/METHOD/seedS/result.json``, weight shown as ``-``)::

    .venv/bin/python benchmarks/invariance_summary.py --runs runs/anti_9137 runs/inv_main --seeds 0 1 2 \\
        --out docs/results/data/invariance_anti.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sit_causal.stats import difference_ci, mean_ci

SPLITS = ("aligned", "flipped", "balanced", "heldout_tasks", "in_distribution", "heldout_sources", "flipped_d",
          "balanced_d")


def collect(roots: list[Path], seeds: list[int]) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    """``{(method, weight): {seed: result}}`` over every run folder under ``roots``."""
    out: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for root in roots:
        for path in sorted(root.glob("**/runs/*/seed*/result.json")):
            r = json.loads(path.read_text(encoding="utf-8"))
            if r["seed"] not in seeds:
                continue
            weight_dir = path.parents[3].name
            weight = weight_dir[1:] if weight_dir.startswith("w") and weight_dir[1:].replace(".", "").isdigit() else "-"
            out.setdefault((r["method"], weight), {})[r["seed"]] = r
    return out


def summarise(runs: dict[tuple[str, str], dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Per (method, weight): n, mean and CI half-width per split (percent)."""
    table = {}
    for (method, weight), by_seed in sorted(runs.items()):
        row: dict[str, Any] = {"method": method, "weight": weight, "seeds": sorted(by_seed)}
        for split in SPLITS:
            vals = [100 * r["accuracy"][split] for r in by_seed.values() if split in r["accuracy"]]
            if vals:
                m, h = mean_ci(vals)
                row[split] = {"mean": m, "ci95": h, "per_seed": vals}
        table[f"{method}@{weight}"] = row
    return table


def paired(runs: dict[tuple[str, str], dict[int, dict[str, Any]]], a: tuple[str, str], b: tuple[str, str],
           split: str) -> dict[str, Any] | None:
    """Paired difference ``a - b`` (percentage points) on ``split`` over the seeds both have."""
    ra, rb = runs.get(a, {}), runs.get(b, {})
    seeds = sorted(set(ra) & set(rb))
    if len(seeds) < 2 or split not in ra[seeds[0]]["accuracy"]:
        return None
    x = [100 * ra[s]["accuracy"][split] for s in seeds]
    y = [100 * rb[s]["accuracy"][split] for s in seeds]
    m, h = difference_ci(x, y, paired=True)
    return {"a": "@".join(a), "b": "@".join(b), "split": split, "seeds": seeds, "mean": m, "ci95": h}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pairs", nargs="*", default=[],
                    help="METHOD@W:METHOD@W:SPLIT, e.g. sit-invariant@10:vanilla-vrex@10:flipped")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    runs = collect(args.runs, args.seeds)
    table = summarise(runs)
    diffs = []
    for spec in args.pairs:
        a, b, split = spec.split(":")
        d = paired(runs, tuple(a.split("@")), tuple(b.split("@")), split)
        if d is not None:
            diffs.append(d)
    for key, row in table.items():
        cells = [f"{s} {row[s]['mean']:.1f} +/- {row[s]['ci95']:.1f}" for s in SPLITS if s in row]
        print(f"{key} (n={len(row['seeds'])}): " + "; ".join(cells))
    for d in diffs:
        print(f"{d['a']} - {d['b']} on {d['split']}: {d['mean']:+.1f} +/- {d['ci95']:.1f} (seeds {d['seeds']})")
    if args.out is not None:
        from sit_causal.fileio import write_text_atomic

        write_text_atomic(args.out, json.dumps({"table": table, "paired": diffs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
