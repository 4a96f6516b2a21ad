"""Tests of the theory check: the AUROC and confusion helpers, and ``sit-causal validate`` end to end."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sit_causal.cli.common import run_app
from sit_causal.cli.main import app
from sit_causal.experiments.validate import confusion
from sit_causal.metrics import auroc


def _pairwise_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels], scores[~labels]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=30))
def test_auroc_equals_pairwise_definition(pairs: list[tuple[int, bool]]) -> None:
    scores = np.array([p[0] for p in pairs], float)
    labels = np.array([p[1] for p in pairs], bool)
    if labels.all() or not labels.any():
        assert math.isnan(auroc(scores, labels))
    else:
        assert auroc(scores, labels) == pytest.approx(_pairwise_auroc(scores, labels))


def test_auroc_extremes() -> None:
    labels = np.array([True, True, False, False])
    assert auroc(np.array([0.9, 0.8, 0.1, 0.2]), labels) == 1.0
    assert auroc(np.array([0.1, 0.2, 0.9, 0.8]), labels) == 0.0
    assert auroc(np.ones(4), labels) == 0.5


def test_confusion_counts() -> None:
    c = confusion(np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 1, 0, 1], bool))
    assert c == {"tp": 2, "fn": 1, "fp": 1, "tn": 1}


def test_validate_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["validate", "--factors", "3", "--tasks", "3", "--modes", "uic,block", "--graphs", "1",
            "--theory-graphs", "1", "--seeds", "1", "--steps", "10", "--samples", "60", "--datasets-per-task", "2",
            "--batch-size", "64", "--align-restarts", "2", "--align-steps", "10", "--workers", "1", "--quiet",
            "--json", "--out", str(tmp_path)]
    assert run_app(app, "sit-causal", argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["stage"] == "both"
    data = result["estimator"]
    assert len(data["factors"]) == 2 * 3 and len(data["runs"]) == 2
    labels = [f["identifiable_predicted"] for f in data["factors"]]
    assert labels[:3] == [True] * 3 and not any(labels[3:])  # uic graph, then a block graph (all mixed)
    assert 0.0 <= data["auroc"] <= 1.0
    assert sum(data["confusion"].values()) == 6
    # one block of three factors read by the same tasks: mixed under either ambiguity
    assert [f["identifiable_orthogonal"] for f in data["factors"]] == labels
    assert data["orthogonal"]["auroc"] == pytest.approx(data["auroc"])
    assert sum(data["orthogonal"]["confusion"].values()) == 6
    rec = data["recovery"]["linear"]
    assert rec["identifiable"] == 3 and rec["recovered"] + len(rec["failures"]) == 3
    assert all(set(f) >= {"mode", "graph_index", "seed", "factor"} for f in rec["failures"])
    theory = result["theory"]
    # stage 1: 2 modes x 1 graph x 2 function kinds x 2 forms x 3 factors
    assert len(theory["factors"]) == 2 * 2 * 2 * 3
    for kind in ("simulator", "interaction"):
        for form in ("linear", "orthogonal"):
            st = theory["statistics"][kind][form]
            assert st["factors"] == 6 and st["identifiable"] == 3
    assert (tmp_path / "validate.json").exists() and (tmp_path / "theory_check.png").stat().st_size > 1000


def test_validate_theory_stage_alone(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["validate", "--stage", "theory", "--factors", "3", "--tasks", "3", "--modes", "block",
            "--theory-graphs", "2", "--functions", "interaction", "--samples", "60", "--datasets-per-task", "2",
            "--quiet", "--json"]
    assert run_app(app, "sit-causal", argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["estimator"] is None and list(result["theory"]["statistics"]) == ["interaction"]
    # a block graph: nothing is identifiable, and every factor has a free direction
    st = result["theory"]["statistics"]["interaction"]["orthogonal"]
    assert st["identifiable"] == 0 and st["equal_likelihood"]["not_identifiable_free"] == st["factors"] == 6


@pytest.mark.parametrize(("argv", "needle"), [(["--modes", "star"], "--modes"), (["--graphs", "0"], "--graphs"),
                                              (["--factors", "1"], "--factors"),
                                              (["--workers", "0"], "--workers must be >= 1"),
                                              (["--stage", "all"], "--stage"),
                                              (["--functions", "cubic"], "--functions"),
                                              (["--theory-graphs", "0"], "--theory-graphs"),
                                              (["--align-steps", "-2"], "--align-steps must be >= 0")])
def test_validate_bad_options_exit_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_app(app, "sit-causal", ["validate", *argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err


def test_balanced_accuracy_is_na_when_one_label_is_absent() -> None:
    from sit_causal.experiments.validate import label_statistics

    rows = [{"mode": "uic", "identifiable_predicted": True, "matched_corr": c, "recovered": c > 0.9,
             "ok": True} for c in (0.95, 0.5)]
    stats = label_statistics(rows, ["uic"], "identifiable_predicted", "ok")
    assert stats["balanced_accuracy"] is None and stats["confusion"] == {"tp": 1, "fn": 1, "fp": 0, "tn": 0}
    rows.append({"mode": "uic", "identifiable_predicted": False, "matched_corr": 0.3, "recovered": False, "ok": True})
    assert label_statistics(rows, ["uic"], "identifiable_predicted", "ok")["balanced_accuracy"] == 0.75


def test_recovery_statistics_rates_ci_and_failures() -> None:
    from sit_causal.experiments.validate import recovery_statistics

    def row(g: int, seed: int, factor: str, ident: bool, rec: bool) -> dict:
        return {"mode": "uic", "graph_index": g, "seed": seed, "factor": factor, "ident": ident, "recovered": rec,
                "matched_corr": 0.95 if rec else 0.6, "learned_mixes": [factor] if rec else [factor, "L9"]}

    rows = [row(0, 0, "L1", True, True), row(0, 0, "L2", True, False), row(0, 1, "L1", True, True),
            row(0, 1, "L2", True, True), row(1, 0, "L1", False, False)]
    st = recovery_statistics(rows, "ident")
    assert st["identifiable"] == 4 and st["recovered"] == 3 and st["rate_pooled"] == 0.75
    assert st["models"] == 2 and st["rate_mean_over_models"] == pytest.approx(0.75)  # models at 0.5 and 1.0
    assert st["rate_ci95_half_width"] > 0.5  # two models far apart: a wide interval
    assert st["failures"] == [{"mode": "uic", "graph_index": 0, "seed": 0, "factor": "L2", "matched_corr": 0.6,
                               "learned_mixes": ["L2", "L9"]}]
    none = recovery_statistics([row(1, 0, "L1", False, False)], "ident")
    assert none["identifiable"] == 0 and none["rate_pooled"] is None and none["failures"] == []


def test_validate_interrupt_keeps_finished_graphs_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import sit_causal.experiments.validate as validate

    argv = ["validate", "--stage", "estimator", "--factors", "3", "--tasks", "3", "--modes", "uic", "--graphs", "2",
            "--seeds", "1", "--steps", "10", "--samples", "60", "--datasets-per-task", "2", "--batch-size", "64",
            "--align-restarts", "2", "--align-steps", "10", "--workers", "1", "--quiet", "--json"]
    real = validate.run_simulation
    calls: list[int] = []

    def interrupted_on_second(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(validate, "run_simulation", interrupted_on_second)
    out = tmp_path / "v"
    assert run_app(app, "sit-causal", [*argv, "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 finished piece(s) kept" in err[0] and "--resume" in err[0]
    assert not (out / "validate.json").exists()
    # without --resume the unfinished run is not overwritten
    assert run_app(app, "sit-causal", [*argv, "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    # a resumed run is the run: a piece saved with other settings is refused
    other = [a if a != "10" else "11" for a in argv]
    assert run_app(app, "sit-causal", [*other, "--out", str(out), "--resume"]) == 2
    assert "other settings" in capsys.readouterr().err
    calls.clear()
    assert run_app(app, "sit-causal", [*argv, "--out", str(out), "--resume"]) == 0
    assert len(calls) == 1  # only the graph in progress runs again
    resumed = json.loads(capsys.readouterr().out)
    assert not (out / "partial").exists()
    monkeypatch.undo()  # the result equals an uninterrupted run's
    assert run_app(app, "sit-causal", [*argv, "--out", str(tmp_path / "fresh")]) == 0
    fresh = json.loads(capsys.readouterr().out)
    assert resumed["estimator"]["factors"] == fresh["estimator"]["factors"]
    assert resumed["estimator"]["runs"] == fresh["estimator"]["runs"]


def test_validate_sizes_are_refused_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.perf_counter()
    assert run_app(app, "sit-causal", ["validate", "--theory-graphs", "1000000000", "--quiet"]) == 2
    assert run_app(app, "sit-causal", ["validate", "--graphs", "100000", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "CPU-hours" in err[0] and "trained models" in err[1]
    assert time.perf_counter() - t0 < 5
