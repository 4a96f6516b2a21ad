"""End-to-end tests of ``sit-causal simulate``: a tiny run writes a valid results.json and plots; bad
options are one line on stderr and exit code 2; theory warnings are raised when the theory cannot hold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sit_causal.cli.common import run_app
from sit_causal.cli.main import app
from sit_causal.experiments.experiment import SimulateConfig, SyntheticTrainConfig, summarise_seeds, theory_warnings
from sit_causal.experiments.runner import run_simulation
from sit_causal.experiments.synthetic import DEFAULT_SYNTHETIC_METHODS, SYNTHETIC_METHODS
from sit_causal.inputs import UsageFailure
from sit_causal.theory.graph import TaskFactorGraph, save_graph
from sit_causal.theory.uic import check_uic

TINY = ["--seeds", "2", "--steps", "15", "--samples", "40", "--datasets-per-task", "2", "--batch-size", "64",
        "--align-restarts", "2", "--align-steps", "20", "--workers", "1", "--quiet"]


def _run(argv: list[str]) -> int:
    return run_app(app, "sit-causal", argv)


@pytest.mark.slow
def test_simulate_end_to_end_writes_valid_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = _run(["simulate", "--factors", "3", "--tasks", "3", *TINY, "--out", str(out), "--json",
                 "--methods", ",".join(SYNTHETIC_METHODS)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    data = json.loads((out / "results.json").read_text())
    assert printed == data
    assert isinstance(data["uic_holds"], bool) and data["uic_holds"]
    assert np.array(data["graph"]["adjacency"]).shape == (3, 3)
    assert data["config"]["factors"] == 3 and data["warnings"] == []
    methods = {r["method"] for r in data["results"]}
    assert methods == set(SYNTHETIC_METHODS) and data["methods"] == list(SYNTHETIC_METHODS)
    assert len(data["results"]) == len(SYNTHETIC_METHODS) * 2
    for r in data["results"]:
        assert isinstance(r["seed"], int)
        for key in ("mcc_pearson", "mcc_spearman", "affine_r2"):
            assert isinstance(r[key], float)
        assert 0.0 <= r["mcc_pearson"] <= 1.0
        assert len(r["per_factor"]) == 3
        for f in r["per_factor"]:
            assert set(f) >= {"factor", "matched_corr", "identifiable_predicted", "mixes_with"}
            assert isinstance(f["matched_corr"], float) and isinstance(f["identifiable_predicted"], bool)
            assert isinstance(f["mixes_with"], list)
        if r["method"] in ("ivae", "multitask", "taskfree"):
            assert r["learned_graph"] is None
        else:
            assert np.array(r["learned_graph"]).shape == (3, 3)
    by_key = {(r["method"], r["seed"]): r for r in data["results"]}
    for seed in (0, 1):  # sit and sit-intersect unmix the very sit-joint model of their seed
        joint = by_key[("sit-joint", seed)]
        assert "mcc_pearson_before_unmix" not in joint
        for method in ("sit", "sit-intersect", "taskfree"):
            assert by_key[(method, seed)]["time_s"] >= joint["time_s"]
            assert by_key[(method, seed)]["mcc_pearson_before_unmix"] == pytest.approx(joint["mcc_pearson"])
        # ivae-select: the same selection step on the very ivae model of the seed
        assert by_key[("ivae-select", seed)]["mcc_pearson_before_unmix"] == pytest.approx(
            by_key[("ivae", seed)]["mcc_pearson"])
        assert len(by_key[("sit-intersect", seed)]["identified"]) == 3
    assert (out / "matched_correlation.png").stat().st_size > 1000
    assert (out / "per_factor_recovery.png").stat().st_size > 1000


def test_violating_graph_runs_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nested.json"
    save_graph(TaskFactorGraph.from_matrix([[1, 1], [0, 1]]), path)
    code = _run(["simulate", "--graph", str(path), *TINY, "--seeds", "1", "--methods", "sit", "--json"])
    captured = capsys.readouterr()
    assert code == 0
    data = json.loads(captured.out)
    assert data["uic_holds"] is False
    assert any("violates the UIC" in w and "L1 mixes with L2" in w for w in data["warnings"])
    assert "warning: the graph violates the UIC" in captured.err
    assert [f["identifiable_predicted"] for f in data["results"][0]["per_factor"]] == [False, True]


def test_too_few_datasets_warns() -> None:
    report = check_uic(TaskFactorGraph.from_matrix(np.eye(3, dtype=int)))
    assert theory_warnings(report, 10, "gauss-mean") == []
    lines = theory_warnings(report, 6, "gauss-meanvar")  # needs 3 * 2 + 1 = 7
    assert len(lines) == 1 and "too few datasets" in lines[0] and "7" in lines[0]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--methods", "sit,vae"], "unknown method 'vae'"),
        (["--family", "poisson"], "unknown --family"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--graph-mode", "ring"], "--graph-mode"),
        (["--graph", "/nonexistent/g.json"], "no such file"),
        (["--factors", "20", "--tasks", "3"], "cannot build a uic graph"),
        (["--lr", "-1"], "--lr must be a positive number"),
        (["--steps", "abc"], "steps"),
        (["--align-restarts", "0"], "--align-restarts must be >= 1"),
        (["--align-steps", "-1"], "--align-steps must be >= 0"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--methods", "sit,sit"], "--methods names sit more than once"),
        (["--set", "w_sparsityy=1"], "unknown model or objective field(s): w_sparsityy"),
        (["--set", "w_uic=-1"], "ObjectiveConfig.w_uic must be >= 0"),
        (["--set", "oops"], "must look like KEY=VALUE"),
        (["--factors", "1000", "--tasks", "16"], "above --max-memory-gb 8"),
        (["--max-memory-gb", "0"], "--max-memory-gb must be > 0"),
        (["--set", "n_factors=3"], "set by the run itself"),
        (["--latent-scm", "-1"], "--latent-scm must be a finite number >= 0"),
        (["--latent-scm", "nan"], "--latent-scm must be a finite number >= 0"),
    ],
)
def test_bad_options_exit_2_with_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["simulate", *argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert needle in err


def test_graph_file_size_mismatch_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "g.json"
    save_graph(TaskFactorGraph.from_matrix(np.eye(3, dtype=int)), path)
    assert _run(["simulate", "--graph", str(path), "--factors", "4", "--quiet"]) == 2
    assert "does not match" in capsys.readouterr().err


def test_default_methods_are_sit_the_baselines_and_the_controls() -> None:
    assert DEFAULT_SYNTHETIC_METHODS == ("sit", "ivae", "ivae-select", "taskfree", "multitask")
    assert set(DEFAULT_SYNTHETIC_METHODS) <= set(SYNTHETIC_METHODS)


def test_validate_shares_the_option_set_of_simulate(capsys: pytest.CaptureFixture[str]) -> None:
    """One declaration and one check: the same bad value gets the same line from both commands."""
    for command in ("simulate", "validate"):
        assert _run([command, "--align-restarts", "0", "--quiet"]) == 2
        assert capsys.readouterr().err.strip() == "sit-causal: error: --align-restarts must be >= 1, got 0"


@pytest.mark.parametrize(
    ("fields", "line"),
    [
        ({"seeds": 0}, "--seeds must be >= 1, got 0"),
        ({"train": SyntheticTrainConfig(lr=float("nan"))}, "--lr must be a positive number, got nan"),
        ({"factors": 0}, "--factors must be >= 1, got 0"),
        ({"family": "poisson"}, "unknown --family 'poisson'"),
        ({"methods": ("sit", "sit")}, "--methods names sit more than once"),
        ({"overrides": {"w_uic": -1}}, "ObjectiveConfig.w_uic must be >= 0"),
        ({"overrides": {"n_tasks": 3}}, "--set n_tasks: set by the run itself"),
        ({"graph_mode": "ring"}, "--graph-mode: unknown graph mode 'ring'"),
    ],
)
def test_a_library_caller_gets_the_command_lines_checks(fields: dict, line: str) -> None:
    """SimulateConfig checks itself when built: the same one line as the command prints."""
    with pytest.raises(UsageFailure) as err:
        SimulateConfig(**fields)
    assert line in str(err.value) and "\n" not in str(err.value)


def test_summarise_seeds_mean_and_sd() -> None:
    rows = [{"method": "sit", "mcc_pearson": v, "mcc_spearman": v, "affine_r2": v, "graph_consistent_r2": v,
             "graph_precision": None, "graph_recall": None, "time_s": 1.0} for v in (0.8, 1.0)]
    (entry,) = summarise_seeds(rows, ["sit", "ivae"])
    assert entry["mcc_pearson_mean"] == pytest.approx(0.9)
    assert entry["mcc_pearson_sd"] == pytest.approx(np.std([0.8, 1.0], ddof=1))
    assert entry["graph_precision_mean"] is None and entry["n_seeds"] == 2


@pytest.mark.slow
def test_parallel_seeds_give_the_serial_results() -> None:
    from dataclasses import replace

    from sit_causal.selection.align import AlignConfig

    cfg = SimulateConfig(factors=3, tasks=3, seeds=2, samples=40, datasets_per_task=2, test_samples=20,
                         methods=("sit", "ivae"), train=SyntheticTrainConfig(steps=10, batch_size=64),
                         align=replace(AlignConfig(), restarts=2, iterations=10, refine_iterations=10,
                                       refine_warmup=2))
    serial = run_simulation(cfg, quiet=True)
    saved: list[tuple[int, list[str]]] = []
    # every (seed, trained model) pair is one job; a seed is saved once, whole, in method order
    parallel = run_simulation(replace(cfg, workers=2), quiet=True,
                              on_seed=lambda s, rows: saved.append((s, [r["method"] for r in rows])))
    assert sorted(saved) == [(0, ["sit", "ivae"]), (1, ["sit", "ivae"])]
    keys = [(r["method"], r["seed"]) for r in serial["results"]]
    assert [(r["method"], r["seed"]) for r in parallel["results"]] == keys
    for row in parallel["results"]:  # the cost split: training, then the selection step (sit only)
        assert row["time_s"] == pytest.approx(row["train_s"] + row["select_s"])
        assert (row["select_s"] > 0) == (row["method"] == "sit")
        assert (row["select_stages"] is not None) == (row["method"] == "sit")
    for a, b in zip(serial["results"], parallel["results"], strict=True):
        assert a["mcc_pearson"] == pytest.approx(b["mcc_pearson"], abs=1e-6)
        assert a["learned_graph"] == b["learned_graph"]


def test_the_regime_is_stated() -> None:
    """What the prior alone leaves: a rotation for mean modulation, nothing for spread modulation with
    variety, a general linear map with too few datasets."""
    from sit_causal.experiments.experiment import regime

    assert regime("gauss-mean", 40, 5)[0] == "rotation-left"
    assert regime("laplace-scale", 40, 5)[0] == "prior-identifies"
    assert regime("gauss-meanvar", 40, 5)[0] == "prior-identifies"
    assert regime("gauss-meanvar", 10, 5)[0] == "linear-left"  # 10 < n k + 1 = 11
    assert regime("gauss-mean", 40, 5, variety_holds=False)[0] == "linear-left"
    assert regime("gauss-mean", 40, 5, latent_scm=0.5)[0] == "linear-left"  # latents related within a dataset
    assert regime("laplace-scale", 40, 5, latent_scm=0.5)[0] == "linear-left"


def test_latent_scm_run_is_linear_left_and_unmixes_over_gl_n(capsys: pytest.CaptureFixture[str]) -> None:
    code = _run(["simulate", "--factors", "3", "--tasks", "3", *TINY, "--methods", "sit", "--seeds", "1",
                 "--latent-scm", "0.5", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["regime"] == "linear-left" and data["config"]["latent_scm"] == 0.5
    (row,) = data["results"]
    assert np.array(row["learned_graph"]).shape == (3, 3) and "mcc_pearson_before_unmix" in row


def test_spread_modulated_run_warns_that_the_prior_identifies(capsys: pytest.CaptureFixture[str]) -> None:
    code = _run(["simulate", "--factors", "3", "--tasks", "3", "--family", "laplace-scale", *TINY,
                 "--methods", "taskfree", "--seeds", "1", "--json"])
    assert code == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["regime"] == "prior-identifies"
    assert "regime prior-identifies" in captured.err


def test_set_reaches_every_model_and_objective_field(capsys: pytest.CaptureFixture[str]) -> None:
    code = _run(["simulate", "--factors", "3", "--tasks", "3", *TINY, "--methods", "ivae", "--seeds", "1",
                 "--set", "learn_prior=false", "--set", "w_kl=0.5", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["overrides"] == {"learn_prior": False, "w_kl": 0.5}


def test_out_is_checked_before_work_and_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    assert _run(["simulate", *TINY, "--out", str(afile)]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    out = tmp_path / "run"
    args = ["simulate", "--factors", "3", "--tasks", "3", *TINY, "--methods", "ivae", "--out", str(out)]
    assert _run(args) == 0
    first = (out / "results.json").read_text()
    assert sorted(p.name for p in (out / "seeds").iterdir()) == ["seed_0.json", "seed_1.json"]
    capsys.readouterr()
    assert _run(args) == 2  # a finished run is never overwritten silently
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "results.json").read_text() == first
    assert _run([*args, "--resume", "--seeds", "3"]) == 0  # resume: seeds 0 and 1 kept, seed 2 added
    err = capsys.readouterr().err
    assert "seeds 0, 1 already finished" in err
    data = json.loads((out / "results.json").read_text())
    assert [r["seed"] for r in data["results"]] == [0, 1, 2]
    old = {r["seed"]: r["mcc_pearson"] for r in json.loads(first)["results"]}
    assert all(r["mcc_pearson"] == old[r["seed"]] for r in data["results"] if r["seed"] in old)
    assert _run([*args, "--resume", "--steps", "16"]) == 2  # a different run
    assert "differs in train" in capsys.readouterr().err
    assert _run([*args, "--overwrite"]) == 0 and len(list((out / "seeds").iterdir())) == 2


def test_ctrl_c_keeps_the_finished_seeds_and_resume_completes_them(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sit_causal.cli.main", "simulate", "--factors", "3", "--tasks", "3", "--seeds", "40",
           "--steps", "15", "--samples", "40", "--datasets-per-task", "2", "--batch-size", "64", "--workers", "1",
           "--methods", "ivae", "--quiet", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (out / "seeds" / "seed_1.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: finished seeds" in err and "--resume" in err
    kept = len(list((out / "seeds").glob("seed_*.json")))
    assert 2 <= kept < 40 and not (out / "results.json").exists()
