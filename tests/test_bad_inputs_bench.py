"""The fast rows of ``benchmarks/bad_inputs.py``, run as a user would (subprocesses): a row that regresses
fails here. The rows that train or import torch run with the benchmark itself (docs/results/bad_inputs.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bad_inputs", REPO / "benchmarks" / "bad_inputs.py")
bad_inputs = importlib.util.module_from_spec(spec)
assert spec.loader is not None
sys.modules.setdefault("bad_inputs", bad_inputs)  # dataclasses look their module up
spec.loader.exec_module(bad_inputs)

SUBSET = (
    "check-uic graph.json --json > /dev/full",
    "check-uic: an empty file",
    "score --out /proc/...",
    "testbed build: train_per_dataset 10000000",
    "data build: a duplicate YAML key in the mixture",
    "score --out --force over a finished file on a full disk",
)


@pytest.mark.slow
def test_the_fast_rows_pass() -> None:
    cases = [c for c in bad_inputs.CASES if c.title in SUBSET]
    assert len(cases) == len(SUBSET)
    rows = bad_inputs.run_cases(cases, quiet=True)
    failed = [(r["case"].title, r.get("rc"), r.get("line")) for r in rows if r["status"] == "FAIL"]
    assert not failed, failed
    assert sum(r["status"] == "pass" for r in rows) >= len(SUBSET) - 1  # the tmpfs row needs root
