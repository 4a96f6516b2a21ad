"""The controls table: per method, held-out MCC (Pearson) and graph F1 as mean with 95% CI over seeds,
and per seed, for every ``simulate`` results folder given; the regime of each run in its heading.

    python benchmarks/controls_summary.py runs/controls/gauss-mean-n5 runs/controls/laplace-n6
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sit_causal.report import format_mean_ci


def table(folder: Path) -> str:
    res = json.loads((folder / "results.json").read_text())
    cfg = res["config"]
    lines = [f"### {folder.name}: {cfg['family']}, n = {cfg['factors']}, {cfg['tasks']} tasks, graph seed "
             f"{cfg['seed']}, {cfg['seeds']} seeds; regime {res['regime']}; UIC holds: {res['uic_holds']}", "",
             "| method | MCC (95% CI) | MCC per seed | MCC before the step | graph F1 |", "|---|---|---|---|---|"]
    for method in res["methods"]:
        rows = [r for r in res["results"] if r["method"] == method]
        mccs = [r["mcc_pearson"] for r in rows]
        before = [r["mcc_pearson_before_unmix"] for r in rows if "mcc_pearson_before_unmix" in r]
        f1 = [2 * r["graph_precision"] * r["graph_recall"] / max(1e-12, r["graph_precision"] + r["graph_recall"])
              for r in rows if r.get("graph_precision") is not None]
        lines.append(f"| {method} | {format_mean_ci(mccs)} | {', '.join(f'{v:.3f}' for v in mccs)} | "
                     f"{format_mean_ci(before) if before else '-'} | {format_mean_ci(f1) if f1 else '-'} |")
    by = {(r["method"], r["seed"]): r["mcc_pearson"] for r in res["results"]}
    seeds = sorted({r["seed"] for r in res["results"]})
    for base in ("ivae-select", "taskfree"):
        if "sit" in res["methods"] and base in res["methods"]:
            diff = [by[("sit", s)] - by[(base, s)] for s in seeds]
            lines.append(f"\nsit - {base}, paired by seed: {format_mean_ci(diff)}; sit higher in "
                         f"{sum(d > 0 for d in diff)} of {len(diff)} seeds")
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(table(Path(p)) for p in sys.argv[1:]))
