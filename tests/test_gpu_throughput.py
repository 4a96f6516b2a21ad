"""Smoke test of benchmarks/gpu_throughput.py at tiny shapes on CPU (the GPU numbers live in docs/results)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_throughput.py"


def test_benchmark_runs_at_tiny_shapes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--tiny", "--steps", "1", "--warmup", "0", "--json"])
    try:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    finally:
        torch.set_num_threads(before)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(r["shape"], r["method"]) for r in result["rows"]] == [("tiny", "vanilla"), ("tiny", "sit")]
    for r in result["rows"]:
        assert r["samples_per_s"] > 0 and r["tflop_per_step"] > 0 and 0 < r["mfu"]
    sit, vanilla = result["rows"][1], result["rows"][0]
    assert sit["tflop_per_step"] > vanilla["tflop_per_step"]  # the latent path and source decoder cost FLOPs
    assert result["sit_over_vanilla"]["tiny"] > 0
