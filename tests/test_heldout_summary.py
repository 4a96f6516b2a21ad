"""benchmarks/heldout_summary.py pools (graph, seed) runs and gives CIs over runs and over graphs."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "heldout_summary.py"


def _results(folder: Path, graph_seed: int, mccs: dict[str, list[float]]) -> None:
    rows = []
    for method, values in mccs.items():
        for i, v in enumerate(values):
            row = {"method": method, "seed": graph_seed + i, "mcc_pearson": v}
            if method == "sit":
                row |= {"mcc_pearson_before_unmix": v - 0.2, "graph_precision": 1.0, "graph_recall": 0.5}
            rows.append(row)
    folder.mkdir(parents=True)
    config = {"seed": graph_seed, "family": "gauss-mean", "factors": 5, "tasks": 8, "seeds": 2, "steps": 10}
    (folder / "results.json").write_text(json.dumps({"config": config, "regime": "rotation-left", "uic_holds": True,
                                                     "methods": list(mccs), "results": rows}))


def test_pooled_and_graph_level_summaries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _results(tmp_path / "graph_10", 10, {"sit": [0.9, 0.8], "ivae-select": [0.7, 0.8]})
    _results(tmp_path / "graph_20", 20, {"sit": [1.0, 0.9], "ivae-select": [0.6, 0.9]})
    (tmp_path / "unfinished").mkdir()  # no results.json: not read
    main = runpy.run_path(str(SCRIPT))["main"]
    assert main([str(tmp_path), "--json", str(tmp_path / "pooled.json")]) == 0
    out = capsys.readouterr().out
    assert "2 graphs (graph seeds 10-20)" in out and "| sit | 4 | 0.900 +/- " in out
    pooled = json.loads((tmp_path / "pooled.json").read_text())
    assert pooled["methods"]["sit"]["mcc_graph_means"] == pytest.approx([0.85, 0.95])
    assert pooled["paired"]["sit - ivae-select"] == pytest.approx([0.2, 0.0, 0.4, 0.0])
    assert pooled["paired_graph_means"]["sit - ivae-select"] == pytest.approx([0.1, 0.2])
    assert pooled["methods"]["sit"]["graph_f1"] == pytest.approx([2 / 3] * 4)
    assert "sit - taskfree" not in pooled["paired"]  # only pairs where both methods ran


def test_no_results_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = runpy.run_path(str(SCRIPT))["main"]
    assert main([str(tmp_path)]) == 2
    assert "no finished results.json" in capsys.readouterr().err
