"""benchmarks/real_data.py: the sweep's order and resume, its refusals, and the summary's CIs and pairing."""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "real_data.py"
TINY = [f"--preset-config=tiny={REPO / 'configs' / 'tiny.yaml'}",
        f"--preset-config=tinydec={REPO / 'configs' / 'tiny-decoder.yaml'}"]


@pytest.fixture(scope="module")
def tool() -> dict[str, Any]:
    """The script's globals (its functions, looked up there at call time)."""
    return runpy.run_path(str(SCRIPT))


def _args(data: Path, out: Path, *extra: str, presets: str = "tiny,tinydec", seeds: str = "0,1",
          steps: int = 12) -> list[str]:
    return [*TINY, "--presets", presets, "--methods", "vanilla,sit", "--seeds", seeds, "--steps", str(steps),
            "--eval-every", "4", "--limit-per-task", "2", "--jobs", "2", "--threads", "1", "--data", str(data),
            "--out", str(out), *extra]


def _half(values: list[float]) -> float:
    """The 95 % Student-t half-width, computed here independently of sit_causal.stats."""
    a = np.asarray(values, dtype=float)
    return float(stats.t.ppf(0.975, a.size - 1) * a.std(ddof=1) / np.sqrt(a.size))


# ---------------------------------------------------------------------- order, state, resume
def test_plan_is_seed_major(tool: dict[str, Any], tiny_data: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    assert tool["main"](["plan", *_args(tiny_data, tmp_path / "out")]) == 0
    names = [line.split()[1] for line in capsys.readouterr().out.splitlines()]
    assert names == ["tiny/vanilla-s0", "tiny/sit-s0", "tinydec/vanilla-s0", "tinydec/sit-s0",
                     "tiny/vanilla-s1", "tiny/sit-s1", "tinydec/vanilla-s1", "tinydec/sit-s1"]
    assert not (tmp_path / "out").exists()  # plan writes nothing


def test_job_state_and_the_commands_left(tool: dict[str, Any], tmp_path: Path) -> None:
    settings = tool["Settings"](12, 4, 4, 2, tmp_path / "data", {"tiny": REPO / "configs" / "tiny.yaml"})
    job = tool["Job"]("tiny", "sit", 0, REPO / "configs" / "tiny.yaml", tmp_path / "run")
    state, commands = tool["job_state"], tool["stage_commands"]
    assert state(job) == "new"
    assert [s for s, _ in commands(job, settings, "new")] == ["train", "eval", "score"]
    (job.run_dir).mkdir()
    (job.run_dir / "config.yaml").write_text("x")
    assert state(job) == "restart"  # killed before its first checkpoint: trained again from step 0
    assert "--overwrite" in commands(job, settings, "restart")[0][1]
    (job.run_dir / "checkpoint-8").mkdir()
    (job.run_dir / "checkpoint-8.tmp").mkdir()  # a killed save is not a checkpoint
    assert state(job) == "resume" and tool["checkpoint_steps"](job.run_dir) == [8]
    train = commands(job, settings, "resume")[0][1]
    assert "--resume" in train and "--overwrite" not in train
    assert "--train.seed=0" in train and "--model.init_seed=0" in train and "--train.threads=1" in train
    (job.run_dir / "final").mkdir()
    assert state(job) == "eval" and [s for s, _ in commands(job, settings, "eval")] == ["eval", "score"]
    (job.run_dir / "predictions_heldout.jsonl").write_text("")
    assert state(job) == "score" and [s for s, _ in commands(job, settings, "score")] == ["score"]
    (job.run_dir / "scores.json").write_text("{}")
    assert state(job) == "done" and commands(job, settings, "done") == []
    for _, argv in commands(job, settings, "new"):
        assert "--force" not in argv  # no stage ever replaces a file that exists


def test_run_skips_finished_jobs_and_runs_two_at_a_time(tool: dict[str, Any], tiny_data: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The scheduler with each job's commands replaced by one that writes its scores.json: finished jobs are
    skipped and untouched, the others run in plan order, at most two at once."""
    out = tmp_path / "out"
    done = out / "tiny" / "vanilla-s0"
    done.mkdir(parents=True)
    (done / "scores.json").write_text('{"kept": true}')
    before = (done / "scores.json").stat().st_mtime_ns
    log = tmp_path / "starts.txt"

    def fake_commands(job: Any, settings: Any, state: str) -> list[tuple[str, list[str]]]:
        code = (f"import os, time; open({str(log)!r}, 'a').write({job.name!r} + ' ' + "
                f"os.environ['OMP_NUM_THREADS'] + '\\n'); time.sleep(0.3); "
                f"os.makedirs({str(job.run_dir)!r}, exist_ok=True); "
                f"open(os.path.join({str(job.run_dir)!r}, 'scores.json'), 'w').write('{{}}')")
        return [("train", [sys.executable, "-c", code])]

    monkeypatch.setitem(tool["run_jobs"].__globals__, "stage_commands", fake_commands)
    assert tool["main"](["run", *_args(tiny_data, out, presets="tiny")]) == 0
    started = log.read_text().split("\n")[:-1]
    assert [s.split()[0] for s in started] == ["tiny/sit-s0", "tiny/vanilla-s1", "tiny/sit-s1"]
    assert all(s.split()[1] == "1" for s in started)  # the thread count reaches the command
    assert (done / "scores.json").stat().st_mtime_ns == before
    text = capsys.readouterr().out
    assert "4 jobs, 1 already finished, 3 to run" in text
    assert text.count(" finished: train ") == 3
    rows = [json.loads(line) for line in (out / "timings.jsonl").read_text().splitlines()]
    stage_rows = [r for r in rows if "stage" in r]
    assert {r["job"] for r in stage_rows} == {"tiny/sit-s0", "tiny/vanilla-s1", "tiny/sit-s1"}
    assert all(len(r["loadavg_start"]) == 3 and r["wall_s"] > 0 for r in stage_rows)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["steps"] == 12 and len(settings["jobs"]) == 4
    log.write_text("")
    assert tool["main"](["run", *_args(tiny_data, out, presets="tiny")]) == 0  # all finished: nothing runs
    assert log.read_text() == ""


# ---------------------------------------------------------------------- refusals
@pytest.mark.parametrize(("change", "message"), [
    ({"--presets": "tiny,nosuch"}, "unknown preset 'nosuch'"),
    ({"--methods": "vanilla,sitt"}, "unknown method 'sitt'"),
    ({"--seeds": "0,0"}, "names an item twice"),
    ({"--seeds": "0,x"}, "'x' is not an integer"),
    ({"--steps": "0"}, "--steps must be >= 1"),
    ({"--eval-every": "50"}, "--eval-every must be in [1, --steps = 12]"),
    ({"--limit-per-task": "0"}, "--limit-per-task must be >= 1"),
    ({"--jobs": "0"}, "--jobs must be >= 1"),
    ({"--threads": "0"}, "--threads must be >= 1"),
    ({"--data": "MISSING"}, "`sit-nlp data fetch` then `sit-nlp data build --mixture configs/mixtures/default.yaml"),
])
def test_bad_inputs_are_one_line_and_exit_2(tool: dict[str, Any], tiny_data: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str], change: dict[str, str],
                                            message: str) -> None:
    argv = _args(tiny_data, tmp_path / "out")
    for flag, value in change.items():
        argv[argv.index(flag) + 1] = str(tmp_path / value) if value == "MISSING" else value
    assert tool["main"](["run", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("real_data: error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_a_folder_with_other_settings_is_refused(tool: dict[str, Any], tiny_data: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from sit_nlp.training.config import load_config, save_config

    out = tmp_path / "out"
    settings = tool["Settings"](5, 4, 4, 2, tiny_data.resolve(), {"tiny": REPO / "configs" / "tiny.yaml"})
    job = tool["Job"]("tiny", "vanilla", 0, REPO / "configs" / "tiny.yaml", out.resolve() / "tiny" / "vanilla-s0")
    job.run_dir.mkdir(parents=True)
    save_config(load_config(job.config, tool["train_overrides"](job, settings)), job.run_dir / "config.yaml")
    (job.run_dir / "scores.json").write_text("{}")
    assert tool["main"](["run", *_args(tiny_data, out, presets="tiny")]) == 2  # --steps 12, the run has 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was trained with other settings (train.max_steps 5 -> 12)" in err
    assert (job.run_dir / "scores.json").read_text() == "{}"
    (out / "settings.json").write_text(json.dumps({**settings.fixed(), "presets": {}, "jobs": []}))
    assert tool["main"](["plan", *_args(tiny_data, out, presets="tiny")]) == 2
    assert "was started with other settings (steps 5 -> 12)" in capsys.readouterr().err


def test_a_second_run_on_the_same_folder_is_refused(tool: dict[str, Any], tiny_data: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert tool["main"](["run", *_args(tiny_data, out, presets="tiny")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is in use by another `real_data.py run`" in err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


# ---------------------------------------------------------------------- the summary
def _scores(values: dict[str, float]) -> dict[str, Any]:
    """A scores.json whose ``primary`` is ``values[group]`` (and ``values['overall']``)."""
    def row(v: float, n_tasks: int, n: int) -> dict[str, Any]:
        return {"n": n, "n_tasks": n_tasks, "primary": v, "rouge_l": v - 1.0, "accuracy": None}
    return {"overall": row(values["overall"], 2, 5), "per_task": {},
            "per_group": {"in_domain": row(values["in_domain"], 1, 2), "cross_task": row(values["cross_task"], 1, 3)}}


def _fake_sweep(out: Path) -> dict[tuple[str, int], dict[str, float]]:
    data = out / "data"
    data.mkdir(parents=True)
    records = [{"task": "gen", "id": "gen:0", "input": "the cat sat", "group": "in_domain"},
               {"task": "gen", "id": "gen:1", "input": "a dog", "group": "in_domain"},
               *({"task": "mc", "id": f"mc:{i}", "input": "?", "group": "cross_task"} for i in range(3))]
    (data / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    jobs = [f"p/{m}-s{s}" for s in (0, 1, 2) for m in ("vanilla", "sit")]
    (out / "settings.json").write_text(json.dumps({"steps": 40, "eval_every": 10, "save_every": 10,
                                                   "limit_per_task": 200, "data": str(data), "presets": {},
                                                   "jobs": jobs}))
    numbers = {("vanilla", 0): {"in_domain": 20.0, "cross_task": 50.0, "overall": 35.0},
               ("vanilla", 1): {"in_domain": 22.0, "cross_task": 40.0, "overall": 31.0},
               ("vanilla", 2): {"in_domain": 25.0, "cross_task": 45.0, "overall": 35.0},
               ("sit", 0): {"in_domain": 25.0, "cross_task": 52.0, "overall": 38.5},
               ("sit", 1): {"in_domain": 27.5, "cross_task": 38.0, "overall": 32.75}}  # sit seed 2 unfinished
    preds = [{"task": "gen", "id": "gen:0", "prediction": "x", "references": ["the cat sat"], "group": "in_domain"},
             {"task": "gen", "id": "gen:1", "prediction": "x", "references": ["a big dog"], "group": "in_domain"},
             *({"task": "mc", "id": f"mc:{i}", "prediction": "y", "references": [lab], "options": ["yes", "no"],
                "option_scores": [-1.0, -2.0], "label": lab, "group": "cross_task"}
               for i, lab in enumerate(["no", "yes", "no"]))]
    for (method, seed), values in numbers.items():
        run = out / "p" / f"{method}-s{seed}"
        run.mkdir(parents=True)
        (run / "scores.json").write_text(json.dumps(_scores(values)))
        (run / "predictions_heldout.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
        curve = [3.0, 2.0, 1.99, 1.985] if method == "vanilla" else [3.0, 2.5, 2.2, 1.9]
        (run / "metrics.jsonl").write_text("".join(json.dumps({"step": 10 * (i + 1), "eval_target": v}) + "\n"
                                                   for i, v in enumerate(curve)))
    unfinished = out / "p" / "sit-s2"
    unfinished.mkdir()
    (unfinished / "metrics.jsonl").write_text(json.dumps({"step": 10, "eval_target": 3.1}) + "\n")
    return numbers


def test_summary_means_cis_pairs_and_baselines(tool: dict[str, Any], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    numbers = _fake_sweep(tmp_path)
    paths = {k: tmp_path / f"summary.{k}" for k in ("json", "md", "png")}
    assert tool["main"](["summarise", "--out", str(tmp_path), "--json", str(paths["json"]), "--md",
                         str(paths["md"]), "--plot", str(paths["png"])]) == 0
    summary = json.loads(paths["json"].read_text())
    p = summary["presets"]["p"]
    assert p["finished"] == 5 and p["missing"] == {"sit": [2]}
    for group in ("in_domain", "cross_task", "overall"):
        row = p["groups"][group]
        van = [numbers[("vanilla", s)][group] for s in (0, 1, 2)]
        sit = [numbers[("sit", s)][group] for s in (0, 1)]
        assert row["methods"]["vanilla"]["primary"]["mean"] == pytest.approx(np.mean(van))
        assert row["methods"]["vanilla"]["primary"]["ci95"] == pytest.approx(_half(van))
        assert row["methods"]["sit"]["primary"]["n"] == 2
        diff = [a - b for a, b in zip(sit, van[:2], strict=True)]  # paired by seed, seeds 0 and 1 only
        d = row["sit_minus_vanilla"]["primary"]
        assert d["n_pairs"] == 2 and row["sit_minus_vanilla"]["seeds"] == [0, 1]
        assert d["points"] == pytest.approx(np.mean(diff)) and d["ci95"] == pytest.approx(_half(diff))
        resolved = abs(np.mean(diff)) > _half(diff)
        assert d["verdict"] == ("resolved (CI excludes 0)" if resolved else "unresolved")
    assert p["groups"]["in_domain"]["sit_minus_vanilla"]["primary"]["verdict"] == "resolved (CI excludes 0)"
    assert p["groups"]["cross_task"]["sit_minus_vanilla"]["primary"]["verdict"] == "unresolved"
    assert p["groups"]["in_domain"]["methods"]["sit"]["n_tasks"] == 1
    assert p["groups"]["in_domain"]["methods"]["sit"]["n"] == 2
    base = p["groups"]
    assert base["in_domain"]["baseline"]["rouge_l"] == pytest.approx(100 * (1.0 + 0.8) / 2)  # copy input
    assert base["cross_task"]["baseline"]["accuracy"] == pytest.approx(100 * 2 / 3)  # always "no"
    assert base["overall"]["baseline"]["primary"] == pytest.approx((90.0 + 200 / 3) / 2)
    curves = {(c["method"], c["seed"]): c for c in p["curves"]}
    assert curves[("vanilla", 0)]["flattened"] is True
    assert curves[("vanilla", 0)]["last_third_decrease"] == pytest.approx((1.99 - 1.985) / 1.99)
    assert curves[("sit", 0)]["flattened"] is False
    assert curves[("sit", 2)]["finished"] is False and curves[("sit", 2)]["flattened"] is None
    md = paths["md"].read_text()
    assert "- sit: 1 run(s) not finished (seeds 2), skipped" in md and md.strip() in capsys.readouterr().out
    assert paths["png"].stat().st_size > 1000


def test_summarise_refuses_a_folder_without_runs(tool: dict[str, Any], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert tool["main"](["summarise", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no settings.json" in err


# ---------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_run_and_summarise_on_the_tiny_presets(tool: dict[str, Any], tiny_data: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Both tiny presets (encoder-decoder and decoder-only), vanilla and SIT, one seed: trained, evaluated,
    scored and summarised; a second call runs nothing and changes nothing."""
    out = tmp_path / "out"
    argv = _args(tiny_data, out, seeds="0", steps=6)
    argv[argv.index("--eval-every") + 1] = "3"
    assert tool["main"](["run", *argv]) == 0
    runs = sorted(out.glob("*/*/scores.json"))
    assert len(runs) == 4
    stamps = [r.stat().st_mtime_ns for r in runs]
    assert tool["main"](["run", *argv]) == 0
    assert [r.stat().st_mtime_ns for r in runs] == stamps
    assert "4 jobs, 4 already finished, 0 to run" in capsys.readouterr().out
    assert tool["main"](["summarise", "--out", str(out), "--json", str(tmp_path / "s.json"),
                         "--plot", str(tmp_path / "c.png")]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    for preset in ("tiny", "tinydec"):
        p = summary["presets"][preset]
        assert p["finished"] == 2 and not p["missing"]
        assert set(p["groups"]) == {"in_domain", "out_of_domain", "cross_task", "overall"}
        assert [len(c["curve"]) for c in p["curves"]] == [2, 2]
    assert os.path.getsize(tmp_path / "c.png") > 1000
