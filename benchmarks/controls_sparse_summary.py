"""The sparse-multitask controls table (examples/controls_sparse.sh): per method, held-out MCC and graph F1
as mean with 95 % CI over every (graph, seed) run under the given folder, and the paired differences
``sparse-multitask - multitask`` and ``sit - sparse-multitask`` by (graph, seed).

    python benchmarks/controls_sparse_summary.py runs/controls_sparse
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sit_causal.report import format_mean_ci


def main(root: Path) -> str:
    rows = []
    for folder in sorted(p for p in root.iterdir() if (p / "results.json").is_file()):
        res = json.loads((folder / "results.json").read_text())
        for r in res["results"]:
            rows.append((res["config"]["seed"], r, res["regime"]))
    methods = list(dict.fromkeys(r["method"] for _, r, _ in rows))
    graphs = sorted({g for g, _, _ in rows})
    lines = [f"{len(graphs)} graphs (seeds {', '.join(map(str, graphs))}); regime "
             f"{', '.join(sorted({reg for _, _, reg in rows}))}", "",
             "| method | runs | MCC (95% CI) | MCC before the step | graph F1 |", "|---|---|---|---|---|"]
    for method in methods:
        sel = [r for _, r, _ in rows if r["method"] == method]
        mccs = [r["mcc_pearson"] for r in sel]
        before = [r["mcc_pearson_before_unmix"] for r in sel if "mcc_pearson_before_unmix" in r]
        f1 = [2 * r["graph_precision"] * r["graph_recall"] / max(1e-12, r["graph_precision"] + r["graph_recall"])
              for r in sel if r.get("graph_precision") is not None]
        lines.append(f"| {method} | {len(sel)} | {format_mean_ci(mccs)} | "
                     f"{format_mean_ci(before) if before else '-'} | {format_mean_ci(f1) if f1 else '-'} |")
    by = {(g, r["seed"], r["method"]): r["mcc_pearson"] for g, r, _ in rows}
    keys = sorted({(g, r["seed"]) for g, r, _ in rows})
    for a, b in (("sparse-multitask", "multitask"), ("sit", "sparse-multitask")):
        diff = [by[(g, s, a)] - by[(g, s, b)] for g, s in keys if (g, s, a) in by and (g, s, b) in by]
        if diff:
            lines.append(f"\n{a} - {b}, paired by (graph, seed): {format_mean_ci(diff)}; {a} higher in "
                         f"{sum(d > 0 for d in diff)} of {len(diff)}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
