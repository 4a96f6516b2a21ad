"""Comparing runs grouped by method: mean +/- sd over seeds, relative change, bar plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from sit_causal.inputs import UsageFailure
from sit_nlp.evaluation.compare import compare_runs, format_comparison, load_run
from sit_nlp.evaluation.plots import plot_comparison


def _scores(primary_gen: float, acc: float) -> dict:
    per_task = {"gen": {"n": 4, "rouge_l": primary_gen, "accuracy": None, "exact_match": 0.0},
                "mc": {"n": 4, "rouge_l": None, "accuracy": acc, "exact_match": 25.0}}
    group = {"n": 4, "n_tasks": 1}
    return {
        "overall": {"n": 8, "n_tasks": 2, "rouge_l": primary_gen, "accuracy": acc, "exact_match": 12.5,
                    "primary": (primary_gen + acc) / 2},
        "per_task": per_task,
        "per_group": {"out_of_domain": {**group, "rouge_l": primary_gen, "accuracy": None, "primary": primary_gen},
                      "cross_task": {**group, "rouge_l": None, "accuracy": acc, "primary": acc}},
    }


def _run(root: Path, method: str, seed: int, gen: float, acc: float) -> Path:
    run = root / f"{method}-{seed}"
    (run / "final").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"method": method}, "train": {"seed": seed}}))
    (run / "final" / "scores.json").write_text(json.dumps(_scores(gen, acc)))
    return run / "final" / "scores.json"


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, list[tuple[Path, float, float]]]:
    values = {"vanilla": [(20.0, 50.0), (22.0, 52.0), (24.0, 48.0)], "sit": [(25.0, 55.0), (27.0, 60.0), (23.0, 50.0)]}
    return {m: [(_run(tmp_path, m, s, g, a), g, a) for s, (g, a) in enumerate(v)] for m, v in values.items()}


def test_method_and_seed_come_from_the_saved_config(runs: dict) -> None:
    run = load_run(str(runs["sit"][1][0]))
    assert run.method == "sit" and run.seed == 1
    assert load_run(f"other={runs['sit'][1][0]}").method == "other"


def test_mean_sd_and_relative_change(runs: dict) -> None:
    result = compare_runs([load_run(str(p)) for m in ("sit", "vanilla") for p, _, _ in runs[m]])
    assert result["baseline"] == "vanilla" and result["methods"]["sit"]["seeds"] == [0, 1, 2]
    rows = {r["metric"]: r for r in result["rows"]}
    for metric, col in (("out_of_domain/primary", 1), ("cross_task/primary", 2), ("task/mc", 2)):
        for method in ("sit", "vanilla"):
            vals = np.array([run[col] for run in runs[method]])
            cell = rows[metric]["values"][method]
            assert cell["mean"] == pytest.approx(vals.mean()) and cell["sd"] == pytest.approx(vals.std(ddof=1))
            assert cell["n"] == 3
        sit, van = (np.mean([run[col] for run in runs[m]]) for m in ("sit", "vanilla"))
        assert rows[metric]["relative_change"]["sit"] == pytest.approx(100 * (sit - van) / van)
        # absolute points, paired by seed: Student's t on the three per-seed differences
        diffs = np.array([a[col] - b[col] for a, b in zip(runs["sit"], runs["vanilla"], strict=True)])
        half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
        d = rows[metric]["difference"]["sit"]
        assert d["paired"] and d["points"] == pytest.approx(diffs.mean()) and d["ci95"] == pytest.approx(half)
    assert "cross_task/rouge_l" not in rows  # no method has a value there
    table = format_comparison(result)
    assert "| metric | sit | vanilla | sit - vanilla (points, 95% CI) | sit vs vanilla |" in table and "+/-" in table
    # seeds that do not match: Welch's unpaired interval
    unpaired = compare_runs([load_run(str(p)) for p, _, _ in runs["sit"][:2]]
                            + [load_run(str(p)) for p, _, _ in runs["vanilla"]])
    d = {r["metric"]: r for r in unpaired["rows"]}["task/mc"]["difference"]["sit"]
    a, b = np.array([55.0, 60.0]), np.array([50.0, 52.0, 48.0])
    welch = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert not d["paired"] and d["ci95"] == pytest.approx((welch.high - welch.low) / 2)


def test_plot_and_cli(runs: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sit_causal.cli.common import run_app
    from sit_nlp.cli.main import app

    args = [str(p) for m in runs for p, _, _ in runs[m]]
    png = tmp_path / "cmp.png"
    assert run_app(app, "sit-nlp", ["compare", *args, "--plot", str(png), "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["baseline"] == "vanilla" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_comparison(obj, tmp_path / "again.png")


def test_prediction_files_are_scored_on_the_fly(tmp_path: Path) -> None:
    pred = tmp_path / "run" / "predictions_heldout.jsonl"
    pred.parent.mkdir()
    pred.write_text(json.dumps({"task": "t", "id": "0", "prediction": "a b", "references": ["a b"]}) + "\n")
    run = load_run(f"vanilla={pred.parent}")
    assert run.scores["per_task"]["t"]["rouge_l"] == pytest.approx(100.0)


def test_bad_runs_are_one_line_errors(tmp_path: Path) -> None:
    bare = tmp_path / "s.json"
    bare.write_text(json.dumps(_scores(1.0, 2.0)))
    with pytest.raises(UsageFailure, match="method unknown"):
        load_run(str(bare))
    with pytest.raises(UsageFailure, match="no such file"):
        load_run("sit=" + str(tmp_path / "missing.json"))
    (tmp_path / "junk.json").write_text("[]")
    with pytest.raises(UsageFailure, match="not a scores JSON"):
        load_run("sit=" + str(tmp_path / "junk.json"))
    with pytest.raises(UsageFailure, match="baseline method 'vanilla' has no run"):
        compare_runs([load_run("sit=" + str(bare))], baseline="vanilla")
