"""Summary of the ``linear-left`` experiment (examples/linear_regime.sh): per graph kind (UIC, nested) and
method, held-out MCC and, per factor, the matched correlation split by the UIC checker's label, each as
mean with 95 % CI over (graph, seed) runs; the rate of recovered factors (matched ``|rho| >= 0.9`` and the
residual check, :func:`sit_causal.experiments.runner.factor_recovered`) per label; and the AUROC of the matched
correlation for the label over every (graph, seed, factor).

    python benchmarks/linear_regime_summary.py runs/linear_regime [--json OUT.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from sit_causal.experiments.report import format_mean_ci
from sit_causal.metrics import auroc


def collect(root: Path) -> list[dict[str, Any]]:
    """One record per (kind, graph seed, data seed, method) of every finished run under ``root``."""
    out = []
    for folder in sorted(p for p in root.iterdir() if (p / "results.json").is_file()):
        res = json.loads((folder / "results.json").read_text())
        kind = res["config"]["graph_mode"]
        for r in res["results"]:
            out.append({"kind": kind, "graph_seed": res["config"]["seed"], "seed": r["seed"], "method": r["method"],
                        "regime": res["regime"], "uic_holds": res["uic_holds"], "mcc": r["mcc_pearson"],
                        "before": r.get("mcc_pearson_before_unmix"),
                        "factors": [(f["matched_corr"], f["identifiable_predicted"], f["recovered"])
                                    for f in r["per_factor"]]})
    return out


def _mean_of(rows: list[dict[str, Any]], label: bool) -> list[float]:
    """Per run: the mean matched correlation of its factors with ``label`` (runs without such factors skipped)."""
    vals = []
    for r in rows:
        sel = [c for c, lab, _ in r["factors"] if lab == label]
        if sel:
            vals.append(float(np.mean(sel)))
    return vals


def _rate(rows: list[dict[str, Any]], label: bool) -> str:
    rec = [ok for r in rows for _, lab, ok in r["factors"] if lab == label]
    return f"{sum(rec)} / {len(rec)}" if rec else "-"


def summary(records: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    lines = ["| graphs | method | runs | MCC | before the step | identifiable factors: matched corr | "
             "recovered | non-identifiable factors: matched corr | recovered |",
             "|---|---|---|---|---|---|---|---|---|"]
    data: dict[str, Any] = {}
    for kind in ("uic", "nested"):
        for method in sorted({r["method"] for r in records}):
            rows = [r for r in records if r["kind"] == kind and r["method"] == method]
            if not rows:
                continue
            graphs = len({r["graph_seed"] for r in rows})
            before = [r["before"] for r in rows if r["before"] is not None]
            ident, non = _mean_of(rows, True), _mean_of(rows, False)
            lines.append(f"| {kind} ({graphs} graphs) | {method} | {len(rows)} | "
                         f"{format_mean_ci([r['mcc'] for r in rows])} | {format_mean_ci(before) if before else '-'} | "
                         f"{format_mean_ci(ident) if ident else '-'} | {_rate(rows, True)} | "
                         f"{format_mean_ci(non) if non else '-'} | {_rate(rows, False)} |")
            data[f"{kind}/{method}"] = {"runs": len(rows), "graphs": graphs, "mcc": [r["mcc"] for r in rows],
                                        "identifiable_mean_corr": ident, "non_identifiable_mean_corr": non}
    lines.append("")
    for method in sorted({r["method"] for r in records}):
        rows = [r for r in records if r["method"] == method]
        scores = np.array([c for r in rows for c, _, _ in r["factors"]])
        labels = np.array([lab for r in rows for _, lab, _ in r["factors"]])
        a = auroc(scores, labels) if labels.any() and not labels.all() else float("nan")
        data[f"auroc/{method}"] = a
        lines.append(f"AUROC of the matched correlation for the checker's label, {method}: {a:.3f} over "
                     f"{labels.size} factors ({int(labels.sum())} identifiable)")
    return "\n".join(lines), data


if __name__ == "__main__":
    args = sys.argv[1:]
    out_json = None
    if "--json" in args:
        i = args.index("--json")
        out_json = Path(args[i + 1])
        args = args[:i] + args[i + 2:]
    text, data = summary(collect(Path(args[0])))
    print(text)
    if out_json is not None:
        out_json.write_text(json.dumps({"summary": data, "records": collect(Path(args[0]))}, indent=1) + "\n")
