"""The known-truth testbed: what `sit-nlp testbed build` writes, and a 20-step `run` end to end."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_cli

from sit_causal.theory.graph import load_graph
from sit_causal.theory.uic import check_uic
from sit_nlp.data.batching import format_source
from sit_nlp.data.records import read_records
from sit_nlp.testbed import grammar
from sit_nlp.testbed.build import TestbedConfig, build_testbed

TINY = {"mechanism": "anti-causal", "train_per_dataset": 300, "validation_per_dataset": 10, "test_per_task": 200,
        "model_d": 32, "model_ffn": 64, "model_heads": 2, "model_max_positions": 96}


_run_cli = run_cli


@pytest.fixture(scope="module")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("testbed")
    (root / "tiny.yaml").write_text("".join(f"{k}: {v}\n" for k, v in TINY.items()), encoding="utf-8")
    from sit_nlp.cli.main import main

    with pytest.raises(SystemExit) as stop:
        main(["testbed", "build", "--out", str(root / "tb"), "--seed", "3", "--config", str(root / "tiny.yaml")])
    assert stop.value.code in (0, None)
    return root / "tb"


def _within(rate: float, expected: float, n: int) -> bool:
    """|rate - expected| within 4 binomial standard errors."""
    return abs(rate - expected) <= 4 * math.sqrt(expected * (1 - expected) / n) + 1e-9


def test_planted_rates_per_split(testbed: Path) -> None:
    cfg = TestbedConfig(**TINY)
    train = [r for r in read_records(testbed / "train.jsonl") if r.options]
    by_dataset: dict[str, list[float]] = defaultdict(list)
    noise: list[float] = []
    for r in train:
        by_dataset[r.dataset].append(float(r.extra["spurious_agrees"]))
        noise.append(float(r.extra["label"] != r.extra["clean_label"]))
    assert len(by_dataset) == cfg.n_yesno_tasks * len(cfg.spurious_rates)
    for name, agree in by_dataset.items():
        rate = cfg.spurious_rates[int(name.rsplit("/d", 1)[1]) - 1]
        assert _within(float(np.mean(agree)), rate, len(agree)), (name, np.mean(agree), rate)
    assert _within(float(np.mean(noise)), cfg.resolved_label_noise, len(noise))
    heldout = [r for r in read_records(testbed / "heldout.jsonl") if r.options]
    per_split: dict[str, list[float]] = defaultdict(list)
    for r in heldout:
        if "spurious_agrees" in r.extra:
            per_split[r.extra["split"]].append(float(r.extra["spurious_agrees"]))
        assert r.extra["label"] == r.extra["clean_label"]  # test_label_noise = 0
    mean_rate = float(np.mean(cfg.spurious_rates))
    for split, expected in (("aligned", mean_rate), ("balanced", 0.5), ("flipped", 1 - mean_rate),
                            ("flipped_factor", 1 - mean_rate), ("flipped_cue", 0.5), ("heldout_datasets", 0.5),
                            ("unseen_words", 0.5)):
        assert _within(float(np.mean(per_split[split])), expected, len(per_split[split])), split
    # the cue: the instruction's first word agrees with the label at cue_rate in training, reversed when flipped
    cue = [float(r.extra["cue"] == grammar.CUE_WORDS[r.extra["label"]]) for r in train]
    assert _within(float(np.mean(cue)), cfg.cue_rate, len(cue))
    for split, expected in (("flipped", 1 - cfg.cue_rate), ("flipped_cue", 1 - cfg.cue_rate),
                            ("flipped_factor", 0.5), ("aligned", cfg.cue_rate)):
        agree = [float(r.extra["cue"] == grammar.CUE_WORDS[r.extra["label"]]) for r in heldout
                 if r.extra["split"] == split]
        assert _within(float(np.mean(agree)), expected, len(agree)), split


def test_labels_follow_the_true_graph(testbed: Path) -> None:
    meta = json.loads((testbed / "testbed.json").read_text(encoding="utf-8"))
    tasks = {t["name"]: t for t in meta["tasks"] + meta["heldout_tasks"]}
    factors = meta["factors"]
    for r in read_records(testbed / "heldout.jsonl"):
        t = tasks[r.task]
        if r.options:
            bits = np.array([r.extra["bits"]])
            sets = [factors.index(f) for f in t["factors"]]
            assert grammar.yesno_label(bits, sets, t["polarity"])[0] == r.extra["clean_label"]
            assert r.output == ("yes" if r.extra["label"] else "no")
        assert r.extra["bits"] == [int(v > 0) for v in r.extra["factors"]]
    graph = load_graph(testbed / "graph.json")
    assert check_uic(graph).uic_holds
    train_tasks = [t for t in meta["tasks"]]
    for row, t in zip(np.asarray(graph.adjacency), train_tasks, strict=True):
        assert [factors[i] for i in np.flatnonzero(row)] == t["factors"]
        if t["spurious"] is not None:
            assert t["spurious"] not in t["factors"]
    train_sets = {tuple(t["factors"]) for t in train_tasks}
    assert all(tuple(t["factors"]) not in train_sets for t in meta["heldout_tasks"])


def test_graph_is_read_by_check_uic(testbed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run_cli("sit_causal.cli.main", ["check-uic", str(testbed / "graph.json"), "--json"], capsys)
    assert rc == 0
    assert json.loads(out)["uic_holds"] is True


def test_tokenizer_covers_every_word_and_model_loads_offline(testbed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from sit_nlp.model.backbones import load_backbone

    backbone = load_backbone(str(testbed / "model"))
    tok = backbone.tokenizer
    assert backbone.family == "bart"
    assert backbone.model.config.vocab_size == len(tok)
    records = [*read_records(testbed / "train.jsonl"), *read_records(testbed / "heldout.jsonl")]
    texts = [format_source(r) for r in records] + [r.output for r in records]
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    assert all(tok.unk_token_id not in row for row in ids)
    unseen = [r for r in records if r.extra["split"] == "unseen_words"]
    assert unseen and all(grammar.WORDS["colour"][r.extra["bits"][3]][1] in r.input.split() for r in unseen)


def test_same_seed_same_testbed() -> None:
    cfg = TestbedConfig(**{**TINY, "train_per_dataset": 20, "test_per_task": 10})
    a, b, c = build_testbed(cfg, 5), build_testbed(cfg, 5), build_testbed(cfg, 6)
    assert [r.to_json() for r in a["train"]] == [r.to_json() for r in b["train"]]
    assert [r.to_json() for r in a["train"]] != [r.to_json() for r in c["train"]]


@pytest.mark.parametrize(("argv", "needle"), [
    (["--seed", "-1"], "--seed"),
    (["--config", "CFG_UNKNOWN"], "unknown testbed key"),
    (["--config", "CFG_BAD"], "spurious_rates"),
    (["--config", "CFG_MISSING"], "no such config file"),
    (["OUT_FILE"], "is a file"),
])
def test_bad_build_inputs_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                               needle: str) -> None:
    (tmp_path / "unknown.yaml").write_text("train_per_dataset: 10\nspurius_rates: [0.9]\n", encoding="utf-8")
    (tmp_path / "bad.yaml").write_text("spurious_rates: [0.2]\n", encoding="utf-8")
    (tmp_path / "file").write_text("x", encoding="utf-8")
    subs = {"CFG_UNKNOWN": str(tmp_path / "unknown.yaml"), "CFG_BAD": str(tmp_path / "bad.yaml"),
            "CFG_MISSING": str(tmp_path / "missing.yaml")}
    out = str(tmp_path / "file") if argv == ["OUT_FILE"] else str(tmp_path / "tb")
    args = ["testbed", "build", "--out", out, *[subs.get(a, a) for a in argv if a != "OUT_FILE"]]
    rc, _, err = _run_cli("sit_nlp.cli.main", args, capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]
    assert not (tmp_path / "tb").exists()


def test_build_refuses_a_full_folder_without_overwrite(testbed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run_cli("sit_nlp.cli.main", ["testbed", "build", "--out", str(testbed)], capsys)
    assert rc == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def small_testbed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sit_nlp.testbed.build import write_testbed

    out = tmp_path_factory.mktemp("small") / "tb"
    write_testbed(TestbedConfig(**{**TINY, "train_per_dataset": 40, "test_per_task": 12}), 1, out)
    return out


@pytest.mark.slow
def test_run_20_steps_end_to_end(small_testbed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    args = ["testbed", "run", "--data", str(small_testbed), "--out", str(out), "--steps", "20", "--seeds", "1",
            "--methods", "vanilla,sit,sit-formatted", "--batch-size", "8", "--fewshot-ks", "2,4",
            "--fewshot-steps", "3", "--quiet"]
    rc, stdout, err = _run_cli("sit_nlp.cli.main", args, capsys)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    passed = report["gate"]["passed"]
    assert rc == (0 if passed else 1)  # a failed gate: the report is written, the exit code says it is void
    assert passed or "comparison is void" in err
    assert set(report["methods"]) == {"vanilla", "sit", "sit-formatted"}
    assert report["mechanism"] == "anti-causal" and report["theory_applies"] is False
    assert "outside the meta-SCM" in stdout
    controls = report["controls"]
    assert 0.0 <= controls["true_factor_selection"]["f1"] <= 1.0
    assert 0.0 < controls["recovery_ceiling"]["mcc"] <= 1.0
    gate = report["gate"]
    assert set(gate["oracle"]) >= {"aligned", "balanced", "flipped", "heldout_tasks", "heldout_datasets"}
    assert gate["passed"] == (gate["oracle_passed"] and gate["shortcut_passed"])
    if not gate["passed"]:
        assert report["claims"] is None and gate["reasons"]
    runs = {r["method"]: r for r in report["runs"]}
    for r in runs.values():
        assert 0.0 <= r["accuracy"]["flipped"] <= 1.0 and "generation" in r["accuracy"]
        assert r["aligned_minus_flipped"] == pytest.approx(r["accuracy"]["aligned"] - r["accuracy"]["flipped"])
        assert 0.0 <= r["probe_spurious"] <= 1.0
    sit = runs["sit"]
    for variant in ("sit", "sit-formatted"):  # the factors from the input alone, or from the formatted source
        assert 0.0 <= runs[variant]["factors"]["mcc"] <= 1.0 and len(runs[variant]["factors"]["assignment"]) == 6
        assert runs[variant]["graph"] is not None and 0.0 <= runs[variant]["graph"]["f1"] <= 1.0
        assert set(runs[variant]["fewshot"]["accuracy"]) == {"zero-shot", "select", "finetune"}
    sit_cfg = yaml.safe_load((out / "runs" / "sit" / "seed0" / "final" / "config.yaml").read_text())
    assert sit_cfg["model"]["factor_input"] == "input" and sit_cfg["model"]["prior_context"] == "dataset"
    formatted = yaml.safe_load((out / "runs" / "sit-formatted" / "seed0" / "final" / "config.yaml").read_text())
    assert formatted["model"]["factor_input"] == "formatted"
    assert (out / "report.md").read_text(encoding="utf-8").count("| vanilla (n = 1)") == 1
    assert (out / "report.png").stat().st_size > 0 and (out / "report_map.png").stat().st_size > 0
    # few-shot: SIT adapts its selection and fine-tunes; vanilla fine-tunes; the same test records for every k
    assert set(sit["fewshot"]["accuracy"]) == {"zero-shot", "select", "finetune"}
    assert set(runs["vanilla"]["fewshot"]["accuracy"]) == {"zero-shot", "finetune"}
    for r in runs.values():
        fs = r["fewshot"]
        assert fs["ks"] == [2, 4] and set(fs["accuracy"]["finetune"]) == {"2", "4"}
        assert all(0.0 <= v <= 1.0 for by_k in fs["accuracy"].values() for v in by_k.values())
        assert all(n == 12 - 4 for n in fs["test_records"].values())
    assert "sit" in report["paired_vs_vanilla"] and any(
        k.startswith("fewshot/select/") for k in report["paired_vs_vanilla"]["sit"])
    assert "| sit | select |" in (out / "report.md").read_text(encoding="utf-8")
    points = json.loads((out / "runs" / "sit" / "seed0" / "map_2d.json").read_text(encoding="utf-8"))
    assert len(points["xy"]) == len(points["task"]) == len(points["spurious_value"]) > 0
    assert "oracle (true factors)" in stdout and "label prior" in stdout
    # a rerun reuses the finished runs: same numbers, no training
    first = (out / "runs" / "sit" / "seed0" / "result.json").read_text(encoding="utf-8")
    rc, _, err = _run_cli("sit_nlp.cli.main", args, capsys)
    assert rc == (0 if passed else 1) and "reusing finished runs" in err
    assert (out / "runs" / "sit" / "seed0" / "result.json").read_text(encoding="utf-8") == first
    # a result of an older few-shot protocol gets only its few-shot measured again, from the saved model
    path = out / "runs" / "sit" / "seed0" / "result.json"
    old = json.loads(first)
    old["fewshot"]["protocol"] = 1
    old["fewshot"]["accuracy"]["select"] = {"2": -1.0, "4": -1.0}
    path.write_text(json.dumps(old), encoding="utf-8")
    assert _run_cli("sit_nlp.cli.main", args, capsys)[0] == (0 if passed else 1)
    again = json.loads(path.read_text(encoding="utf-8"))
    assert again["fewshot"]["protocol"] == 3 and min(again["fewshot"]["accuracy"]["select"].values()) >= 0.0
    assert again["accuracy"] == old["accuracy"] and again["seconds"]["train"] == old["seconds"]["train"]


@pytest.mark.parametrize(("extra", "needle"), [
    (["--methods", "vanilla,sitt"], "unknown method 'sitt'"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--data", "NOWHERE"], "no train.jsonl here"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--fewshot-ks", "8,x"], "--fewshot-ks: expected comma-separated integers"),
    (["--fewshot-ks", "12"], "leaves no test records"),
    (["--fewshot-steps", "0"], "--fewshot-steps must be >= 1"),
])
def test_bad_run_inputs_exit_2_with_one_line(small_testbed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             extra: list[str], needle: str) -> None:
    args = ["testbed", "run", "--data", str(small_testbed), "--out", str(tmp_path / "run"),
            *[str(tmp_path / "nowhere") if a == "NOWHERE" else a for a in extra]]
    rc, _, err = _run_cli("sit_nlp.cli.main", args, capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]
    assert not (tmp_path / "run").exists()


def _fake_result(method: str, seed: int, aligned: float, flipped: float) -> dict:
    return {"method": method, "seed": seed, "accuracy": {"aligned": aligned, "flipped": flipped},
            "aligned_minus_flipped": aligned - flipped, "seconds": {"train": 1.0}}


def test_a_run_at_the_label_prior_cannot_win_the_flipped_claim() -> None:
    from sit_nlp.testbed.report import claims, past_prior, summarise_runs

    prior = {"aligned": 0.73, "flipped": 0.73}
    # vanilla learned the shortcut (flipped 0.2); "sit" learned nothing and answers the majority label
    results = [_fake_result("vanilla", s, 0.85 + 0.01 * s, 0.20 + 0.01 * s) for s in range(3)]
    results += [_fake_result("sit", s, 0.73, 0.73) for s in range(3)]
    learned = past_prior(results, prior)
    assert learned["vanilla"]["count"] == "3 of 3" and learned["sit"]["count"] == "0 of 3"
    summary = summarise_runs(results)
    without = claims(summary)["flipped_plus_10_points"]
    assert without["met"] and without["difference"] > 0.5  # what the numbers alone would say
    guarded = claims(summary, learned)["flipped_plus_10_points"]
    assert not guarded["met"] and not guarded["sit_seeds_past_prior"]
    # the same flipped gain from runs that did learn is met
    results[3:] = [_fake_result("sit", s, 0.90, 0.60 + 0.01 * s) for s in range(3)]
    assert claims(summarise_runs(results), past_prior(results, prior))["flipped_plus_10_points"]["met"]


def _finished_run(small_testbed: Path, out: Path, steps: int) -> None:
    """A finished vanilla seed-0 run in ``out`` as ``testbed run --steps STEPS`` leaves it (config and final/)."""
    from sit_nlp.testbed.jobs import TestbedJob, training_config
    from sit_nlp.training.config import save_config

    job = TestbedJob("vanilla", 0, small_testbed.resolve(), out.resolve(), steps, batch_size=8, lr=0.002, threads=1)
    job.folder.joinpath("final").mkdir(parents=True)
    save_config(training_config(job), job.folder / "config.yaml")


def test_run_reuses_only_runs_with_the_same_settings(small_testbed: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    _finished_run(small_testbed, out, steps=150)
    args = ["testbed", "run", "--data", str(small_testbed), "--out", str(out), "--seeds", "1", "--methods",
            "vanilla", "--batch-size", "8", "--lr", "0.002", "--fewshot-ks", "2", "--quiet"]
    rc, _, err = _run_cli("sit_nlp.cli.main", [*args, "--steps", "20"], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "other settings" in lines[0] and "train.max_steps 150 -> 20" in lines[0]
    assert not (out / "report.json").exists()  # nothing written, nothing reused


@pytest.mark.parametrize(("damage", "needle"), [
    ("garbage", "heldout.jsonl:2: not valid JSON"),
    ("model-file", "model is not a folder"),
    ("no-factors", "testbed.json lacks factors"),
])
def test_run_refuses_a_damaged_testbed(small_testbed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       damage: str, needle: str) -> None:
    import shutil

    data = tmp_path / "tb"
    shutil.copytree(small_testbed, data)
    if damage == "garbage":
        lines = (data / "heldout.jsonl").read_text(encoding="utf-8").splitlines()
        (data / "heldout.jsonl").write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n", encoding="utf-8")
    elif damage == "model-file":
        shutil.rmtree(data / "model")
        (data / "model").write_text("x")
    else:
        meta = json.loads((data / "testbed.json").read_text(encoding="utf-8"))
        del meta["factors"]
        (data / "testbed.json").write_text(json.dumps(meta), encoding="utf-8")
    rc, _, err = _run_cli("sit_nlp.cli.main", ["testbed", "run", "--data", str(data), "--out", str(tmp_path / "run")],
                          capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and needle in lines[0], err


@pytest.mark.parametrize(("extra", "needle"), [(["--lr", "inf"], "--lr must be > 0 and finite"),
                                               (["--oracle-tolerance", "nan"], "--oracle-tolerance must be"),
                                               (["--min-gap", "inf"], "--min-gap must be"),
                                               (["--seeds", "100000"], "--seeds must be in")])
def test_run_refuses_values_out_of_range(small_testbed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         extra: list[str], needle: str) -> None:
    rc, _, err = _run_cli("sit_nlp.cli.main", ["testbed", "run", "--data", str(small_testbed), "--out",
                                          str(tmp_path / "run"), *extra], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and needle in lines[0], err


@pytest.mark.slow
def test_run_ctrl_c_names_the_kept_runs(small_testbed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import sit_nlp.testbed.jobs as jobs_module

    out = tmp_path / "run"

    def one_run_then_ctrl_c(jobs: list, workers: int, quiet: bool) -> list:
        (out / "runs" / "vanilla" / "seed0").mkdir(parents=True)
        (out / "runs" / "vanilla" / "seed0" / "result.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs_module, "run_jobs", one_run_then_ctrl_c)
    rc, _, err = _run_cli("sit_nlp.cli.main", ["testbed", "run", "--data", str(small_testbed), "--out", str(out),
                                          "--fewshot-ks", "2", "--quiet"], capsys)
    lines = err.strip().splitlines()
    assert rc == 130 and len(lines) == 1 and "vanilla/seed0" in lines[0] and "rerun the same command" in lines[0]


def test_controls_add_the_source_reading_statistic_only_for_invariance_runs(testbed: Path) -> None:
    import json

    from sit_nlp.testbed.controls import testbed_controls

    meta = json.loads((testbed / "testbed.json").read_text(encoding="utf-8"))
    plain = testbed_controls(testbed, meta)
    assert "true_factor_invariant_selection" not in plain
    with_inv = testbed_controls(testbed, meta, invariant=True)
    inv = with_inv["true_factor_invariant_selection"]
    assert 0.0 <= inv["f1"] <= 1.0 and len(inv["adjacency"]) == len(meta["tasks"])
    assert with_inv["true_factor_selection"] == plain["true_factor_selection"]
