"""The held-out controls table (examples/heldout_controls.sh, examples/controls.sh): per method, held-out MCC
(Pearson), the MCC of the representation before the method's step, and graph F1, as mean with 95 % CI over
every (graph, seed) run in the given ``simulate`` results folders (or in their sub-folders), and over graphs
(the per-graph means: runs on one graph are not independent); then the paired differences by (graph, seed)
that say what the SIT model itself adds, and a per-graph list of SIT's MCC.

    python benchmarks/heldout_summary.py runs/heldout/gauss-mean            # every graph_* folder under it
    python benchmarks/heldout_summary.py runs/controls/gauss-mean-n5        # one results folder
    python benchmarks/heldout_summary.py runs/heldout/gauss-mean --json runs/heldout/gauss-mean.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sit_causal.stats import mean_ci

PAIRS = (("sit", "ivae-select"), ("sit", "taskfree"), ("sit", "ivae"), ("sit", "multitask"),
         ("sit", "sparse-multitask"), ("ivae-select", "ivae"), ("sparse-multitask", "multitask"))
"""The paired differences reported, ``a - b`` by (graph, seed), where both methods ran."""


def cell(values: list[float]) -> str:
    """``mean +/- 95 % CI half-width`` (Student's t; the n is in the table's runs / graphs columns)."""
    m, h = mean_ci(values)
    return f"{m:.3f} +/- {h:.3f}"


def result_folders(paths: list[Path]) -> list[Path]:
    """Every folder holding a finished ``results.json``: the paths themselves, else their direct
    sub-folders."""
    found: list[Path] = []
    for path in paths:
        if (path / "results.json").is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if (p / "results.json").is_file()))
    return found


def f1(row: dict[str, Any]) -> float | None:
    """The graph F1 of one result row, or None where the method learns no graph."""
    p, r = row.get("graph_precision"), row.get("graph_recall")
    if p is None or r is None:
        return None
    return 2 * p * r / max(1e-12, p + r)


def graph_means(pairs: list[tuple[int, float]]) -> list[float]:
    """The mean value of each graph (``pairs`` of (graph seed, value)), in graph order: the units of the
    graph-level CI (runs on one graph share its structure, so they are not independent)."""
    by: dict[int, list[float]] = {}
    for g, v in pairs:
        by.setdefault(g, []).append(v)
    return [sum(v) / len(v) for _, v in sorted(by.items())]


def summarise(folders: list[Path]) -> dict[str, Any]:
    """Pool every (graph, seed, method) row of the folders into per-method and paired summaries."""
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for folder in folders:
        res = json.loads((folder / "results.json").read_text())
        cfg = res["config"]
        runs.append({"folder": folder.name, "graph_seed": cfg["seed"], "regime": res["regime"],
                     "uic_holds": res["uic_holds"], "family": cfg["family"], "factors": cfg["factors"],
                     "tasks": cfg["tasks"], "seeds": cfg["seeds"], "steps": cfg.get("steps")})
        rows.extend({**r, "graph_seed": cfg["seed"]} for r in res["results"])
    methods = list(dict.fromkeys(r["method"] for r in rows))
    per_method = {}
    for method in methods:
        sel = [r for r in rows if r["method"] == method]
        per_method[method] = {
            "runs": len(sel),
            "mcc": [r["mcc_pearson"] for r in sel],
            "mcc_graph_means": graph_means([(r["graph_seed"], r["mcc_pearson"]) for r in sel]),
            "mcc_before_step": [r["mcc_pearson_before_unmix"] for r in sel if "mcc_pearson_before_unmix" in r],
            "graph_f1": [v for v in (f1(r) for r in sel) if v is not None],
        }
    by = {(r["graph_seed"], r["seed"], r["method"]): r["mcc_pearson"] for r in rows}
    keys = sorted({(r["graph_seed"], r["seed"]) for r in rows})
    paired, paired_graphs = {}, {}
    for a, b in PAIRS:
        diff = [by[(g, s, a)] - by[(g, s, b)] for g, s in keys if (g, s, a) in by and (g, s, b) in by]
        if diff:
            paired[f"{a} - {b}"] = diff
            paired_graphs[f"{a} - {b}"] = graph_means(
                [(g, by[(g, s, a)] - by[(g, s, b)]) for g, s in keys if (g, s, a) in by and (g, s, b) in by])
    return {"runs": runs, "methods": per_method, "paired": paired, "paired_graph_means": paired_graphs,
            "sit_by_graph": {str(g): [by[(g, s, "sit")] for gg, s in keys if gg == g and (g, s, "sit") in by]
                             for g in sorted({g for g, _ in keys})}}


def markdown(summary: dict[str, Any]) -> str:
    """The summary as the markdown of a results page."""
    runs = summary["runs"]
    graphs = sorted({r["graph_seed"] for r in runs})
    regimes = sorted({r["regime"] for r in runs})
    families = sorted({f"{r['family']}, n = {r['factors']}, {r['tasks']} tasks" for r in runs})
    uic = sum(bool(r["uic_holds"]) for r in runs)
    lines = [f"{len(graphs)} graphs (graph seeds {graphs[0]}-{graphs[-1]}), {'; '.join(families)}; regime "
             f"{', '.join(regimes)}; the UIC holds on {uic} of {len(runs)}", "",
             "| method | runs | MCC (95% CI over runs) | over graphs | MCC before the step | graph F1 |",
             "|---|---|---|---|---|---|"]
    for method, m in summary["methods"].items():
        lines.append(f"| {method} | {m['runs']} | {cell(m['mcc'])} | {cell(m['mcc_graph_means'])} | "
                     f"{cell(m['mcc_before_step']) if m['mcc_before_step'] else '-'} | "
                     f"{cell(m['graph_f1']) if m['graph_f1'] else '-'} |")
    lines += ["", "| paired by (graph, seed) | runs | difference (95% CI over runs) | over graphs | first higher in |",
              "|---|---|---|---|---|"]
    for name, diff in summary["paired"].items():
        lines.append(f"| {name} | {len(diff)} | {cell(diff)} | {cell(summary['paired_graph_means'][name])} | "
                     f"{sum(d > 0 for d in diff)} of {len(diff)} |")
    sit = summary["sit_by_graph"]
    if any(sit.values()):
        lines += ["", "SIT's MCC per graph (seeds in order): " + "; ".join(
            f"{g}: {', '.join(f'{v:.3f}' for v in vals)}" for g, vals in sit.items() if vals)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, default=None, help="also write the pooled numbers here")
    args = parser.parse_args(argv)
    folders = result_folders(args.folders)
    if not folders:
        print(f"heldout_summary.py: no finished results.json in {', '.join(map(str, args.folders))}",
              file=sys.stderr)
        return 2
    summary = summarise(folders)
    print(markdown(summary))
    if args.json is not None:
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=1))
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
