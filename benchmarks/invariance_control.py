"""Positive control of the selection step on a testbed's true factors: the energy statistic against the one that
reads the data sources.

For every mechanism and seed, builds the testbed (``sit-nlp testbed build --mechanism M --seed S``) into
``--root/M_sS`` unless it is there already, then runs, on the true factors of its training records,
:func:`sit_nlp.testbed.controls.true_factor_selection` (per-task probes, removal energies, coverage, UIC repair:
today's statistic) and :func:`sit_nlp.testbed.controls.true_factor_invariant_selection` (a factor kept only if
the target's law given it is the same in every source of the task, then coverage and repair). Prints one JSON
line per testbed and a summary per mechanism (F1 of the selected graph against the true graph, rows = tasks,
columns = factors: mean and 95 % t-interval over seeds), and writes all of it to ``--out``::

    python benchmarks/invariance_control.py --mechanisms anti-causal backdoor --seeds 9137 9138 9139 \\
        --root /tmp/invariance_testbeds --out invariance_control.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from sit_causal.experiments.report import mean_ci


def build(mechanism: str, seed: int, out: Path) -> None:
    """Write the ``mechanism`` testbed of ``seed`` to ``out`` (skipped when ``out/testbed.json`` exists)."""
    if (out / "testbed.json").exists():
        return
    from sit_nlp.testbed.build import load_testbed_config, write_testbed

    write_testbed(load_testbed_config(None, {"mechanism": mechanism}), seed, out)


def run_one(mechanism: str, seed: int, root: Path, coverage: float, alpha: float) -> dict[str, Any]:
    from sit_nlp.testbed.controls import true_factor_invariant_selection

    data = root / f"{mechanism}_s{seed}"
    build(mechanism, seed, data)
    start = time.perf_counter()
    found = true_factor_invariant_selection(data, coverage=coverage, seed=0, alpha=alpha, with_energy=True)
    energy = found["energy"]
    return {
        "mechanism": mechanism, "seed": seed, "testbed": str(data),
        "energy_f1": energy["f1"], "energy_coverage_f1": energy["coverage_graph"]["f1"],
        "invariant_f1": found["f1"], "invariant_coverage_f1": found["coverage_graph"]["f1"],
        "energy_uic_holds": energy["uic_holds"], "invariant_uic_holds": found["uic_holds"],
        "energy_adjacency": energy["adjacency"], "invariant_adjacency": found["adjacency"],
        "invariant_sets": found["invariant_sets"], "outputs": found["outputs"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mechanism in dict.fromkeys(r["mechanism"] for r in rows):
        mine = [r for r in rows if r["mechanism"] == mechanism]
        out[mechanism] = {"seeds": [r["seed"] for r in mine]}
        for key in ("energy_f1", "invariant_f1"):
            values = [r[key] for r in mine]
            mean, half = mean_ci(values)
            out[mechanism][key] = {"per_seed": [round(v, 4) for v in values], "mean": round(mean, 4),
                                   "ci95": round(half, 4) if half == half else None}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mechanisms", nargs="+", default=["anti-causal", "backdoor"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[9137, 9138, 9139])
    ap.add_argument("--root", type=Path, default=Path("runs/invariance_testbeds"),
                    help="folder of the testbeds (built here when missing)")
    ap.add_argument("--coverage", type=float, default=0.8)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--out", type=Path, default=None, help="JSON file of every row and the summary")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    args.root.mkdir(parents=True, exist_ok=True)
    rows = []
    for mechanism in args.mechanisms:
        for seed in args.seeds:
            row = run_one(mechanism, seed, args.root, args.coverage, args.alpha)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("outputs", "energy_adjacency",
                                                                       "invariant_adjacency", "invariant_sets")}),
                  flush=True)
    summary = summarise(rows)
    print(json.dumps(summary, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps({"summary": summary, "rows": rows, "coverage": args.coverage,
                                        "alpha": args.alpha}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
