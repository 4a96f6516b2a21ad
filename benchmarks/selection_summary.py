"""Summary over seeds of the NLP selection step (``examples/selection_minilm.sh``): per run and as mean with
95% CI, the fraction of closed gates at inference (training and held-out tasks), the UIC verdicts of the
selector's binarised masks and of the fixed graph, the selector's agreement with the fixed graph, and
whether tasks of one family share their factors (mean Jaccard within vs between families).

    python benchmarks/selection_summary.py runs/selection-minilm      # Markdown table; summary.json beside
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sit_causal.experiments.report import format_mean_ci

KEYS = ("closed_fraction_train", "closed_fraction_heldout", "uic_holds", "orthogonal_holds",
        "selector_agreement", "selector_closed_fraction_train", "selector_uic_holds", "within_family_jaccard",
        "between_family_jaccard", "eval_target_nll", "graph_step", "repair_flips", "train_s")


def run_row(run: Path) -> dict[str, float]:
    """One run's numbers; a run without a fixed graph (``graph.find_at: null``) has the masks' alone."""
    masks = json.loads((run / "masks" / "masks.json").read_text())
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    fam = masks["family_sharing"]
    row = {
        "closed_fraction_train": masks["closed_fraction_train"],
        "closed_fraction_heldout": masks["closed_fraction_heldout"],
        "uic_holds": float(masks["uic_holds"]), "orthogonal_holds": float(masks["orthogonal_holds"]),
        "within_family_jaccard": fam["within_family_jaccard"], "between_family_jaccard": fam["between_family_jaccard"],
        "eval_target_nll": next((r["eval_target"] for r in reversed(metrics) if "eval_target" in r), float("nan")),
    }
    if masks.get("task_graph") is not None:
        tg = masks["task_graph"]
        graph = json.loads((run / "task_graph_energies.json").read_text())
        row |= {"selector_agreement": tg["selector_agreement"],
                "selector_closed_fraction_train": tg["selector_closed_fraction_train"],
                "selector_uic_holds": float(tg["selector_uic_holds"]),
                "graph_step": graph["step"], "repair_flips": len(graph["repair"]["flips"])}
    timing = run.parent / "timings.jsonl"
    if timing.is_file():
        for line in timing.read_text().splitlines():
            t = json.loads(line)
            if Path(t["run"]).name == run.name:
                row["train_s"] = float(t["train_s"])
    return row


def main(root: Path) -> None:
    runs = sorted(p for p in root.iterdir() if (p / "masks" / "masks.json").is_file())
    if not runs:
        sys.exit(f"no finished runs under {root}")
    rows = {r.name: run_row(r) for r in runs}
    summary = {k: [rows[r][k] for r in rows if k in rows[r]] for k in KEYS}
    summary = {k: v for k, v in summary.items() if v}
    out = {"runs": rows, "mean_ci": {k: format_mean_ci(v) for k, v in summary.items() if v}}
    (root / "summary.json").write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print("| quantity | " + " | ".join(rows) + " | mean +/- 95% CI |")
    print("|---|" + "---|" * (len(rows) + 1))
    for k in KEYS:
        if k in summary:
            cells = [f"{rows[r][k]:.3f}" if k in rows[r] else "-" for r in rows]
            print(f"| {k} | " + " | ".join(cells) + f" | {out['mean_ci'][k]} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/selection-minilm"))
