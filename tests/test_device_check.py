"""benchmarks/device_check.sh, the one script for a lent GPU, runs end to end on the CPU at toy sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_check_runs_at_toy_size(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "TOY": "1", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh")], env=env, capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stages = [json.loads(x) for x in (out / "stages.jsonl").read_text().splitlines()]
    assert [s["stage"] for s in stages] == ["throughput", "decoder", "testbed_build", "testbed_run"]
    assert all(s["ok"] for s in stages) and all(s["rc"] == 0 for s in stages[:3])
    assert stages[3]["rc"] in (0, 1)  # testbed run: 1 when its gate fails at this toy size (report written)
    versions = json.loads((out / "versions.json").read_text())
    assert versions["device"] == "cpu" and versions["torch"]
    throughput = json.loads((out / "throughput.out").read_text().strip().splitlines()[-1])
    assert {r["method"] for r in throughput["rows"]} == {"vanilla", "sit"}
    assert (out / "testbed" / "report.json").is_file()
    decoder = json.loads((out / "decoder" / "result.json").read_text())
    runs = {(r["preset"], r["method"]): r for r in decoder["runs"]}
    assert {m for _, m in runs} == {"sit", "vanilla"} and "qwen2.5-0.5b-gpu.yaml" in {p for p, _ in runs}
    for r in runs.values():  # tiny-llama in place of the hub backbone, trained, reloaded and evaluated
        assert r["ok"] and r["backbone"] == "tiny-llama" and r["stand_in_for"] and r["steps"] == 2
        assert r["eval_rc"] == 0 and r["predictions"] > 0 and r["step_s_median"] > 0


def test_device_check_stage_selection_and_budget(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "TOY": "1", "PYTHON": sys.executable, "STAGES": "throughput,decoder",
           "BUDGET_S": "0"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh")], env=env, capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr[-3000:]
    stages = [json.loads(x) for x in (out / "stages.jsonl").read_text().splitlines()]
    assert [s["stage"] for s in stages] == ["throughput", "decoder"]
    assert all(s["skipped"] and not s["ok"] for s in stages)
