"""Scoring of prediction files: ROUGE-L, rank-classification accuracy, exact match, aggregation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from sit_causal.inputs import UsageFailure
from sit_nlp.evaluation.scoring import Prediction, normalize_answer, read_predictions, score_predictions


def _gen(task: str, i: int, pred: str, refs: list[str], **kw: str) -> dict:
    return {"task": task, "id": str(i), "prediction": pred, "references": refs, **kw}


def _mc(task: str, i: int, scores: list[float], label: str, options: tuple[str, ...] = ("yes", "no"),
        pred: str = "", **kw: str) -> dict:
    return {"task": task, "id": str(i), "prediction": pred, "references": [label], "options": list(options),
            "option_scores": scores, "label": label, **kw}


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _preds(rows: list[dict]) -> list[Prediction]:
    return [Prediction.from_json(r, "test") for r in rows]


def test_rouge_is_max_over_references_and_matches_rouge_score() -> None:
    refs = ["the cat sat on the mat", "a dog barked loudly"]
    pred = "the dog barked"
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = 100 * max(scorer.score(r, pred)["rougeL"].fmeasure for r in refs)
    scores = score_predictions(_preds([_gen("g", 0, pred, refs)]))
    assert scores["per_task"]["g"]["rouge_l"] == pytest.approx(expected)
    assert scores["per_task"]["g"]["accuracy"] is None
    same = score_predictions(_preds([_gen("g", 0, "Running dogs", ["running dog"])]))
    assert same["per_task"]["g"]["rouge_l"] == pytest.approx(100.0)  # the stemmer is on


def test_accuracy_is_rank_classification_not_generation() -> None:
    rows = [
        _mc("m", 0, [-1.0, -3.0], "yes", pred="no"),  # argmax right, generation wrong
        _mc("m", 1, [-2.0, -0.5], "yes", pred="yes"),  # argmax wrong, generation right
        _mc("m", 2, [-0.1, -0.2], "yes", pred="Yes."),
        _mc("m", 3, [-5.0, -5.0], "no", pred="no"),  # tie: first option
    ]
    row = score_predictions(_preds(rows))["per_task"]["m"]
    assert row["accuracy"] == pytest.approx(50.0) and row["exact_match"] == pytest.approx(75.0)
    assert row["rouge_l"] is None and row["n"] == 4


def test_exact_match_normalises() -> None:
    assert normalize_answer("  The  Cat, sat!") == "the cat sat"
    s = score_predictions(_preds([_gen("g", 0, "The cat sat.", ["x", "the cat  sat"]), _gen("g", 1, "cat", ["dog"])]))
    assert s["per_task"]["g"]["exact_match"] == pytest.approx(50.0)


def test_aggregates_are_macro_averages_over_tasks() -> None:
    rows = [_gen("g1", i, "a b", ["a b"], group="in_domain", category="c1") for i in range(3)]
    rows += [_gen("g2", 0, "x", ["y"], group="out_of_domain", category="c1")]
    rows += [_mc("m", i, [0.0, -1.0], "yes" if i else "no", group="cross_task", category="c2") for i in range(4)]
    s = score_predictions(_preds(rows))
    assert s["overall"]["rouge_l"] == pytest.approx(50.0)  # (100 + 0) / 2 tasks, not 300 / 4 examples
    assert s["overall"]["accuracy"] == pytest.approx(75.0)
    assert s["overall"]["primary"] == pytest.approx((100 + 0 + 75) / 3)
    assert s["overall"]["n"] == 8 and s["overall"]["n_tasks"] == 3
    assert set(s["per_group"]) == {"in_domain", "out_of_domain", "cross_task"}
    assert s["per_group"]["cross_task"]["accuracy"] == pytest.approx(75.0)
    assert s["per_category"]["c1"]["rouge_l"] == pytest.approx(50.0) and s["per_category"]["c1"]["accuracy"] is None


def test_json_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sit_causal.cli.common import run_app
    from sit_nlp.cli.main import app

    path = _write(tmp_path / "p.jsonl", [_gen("g", 0, "a", ["a"]), _mc("m", 0, [1.0, 0.0], "yes")])
    saved = tmp_path / "scores.json"
    assert run_app(app, "sit-nlp", ["score", str(path), "--json", "--out", str(saved)]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj == json.loads(saved.read_text())
    assert {"overall", "per_task"} <= set(obj)
    for task, row in obj["per_task"].items():
        extra = {"majority"} if task == "m" else set()  # multiple choice: the label-prior baseline beside it
        assert set(row) == {"n", "rouge_l", "accuracy", "exact_match"} | extra and isinstance(row["n"], int)
    assert obj["per_task"]["m"]["rouge_l"] is None and obj["per_task"]["g"]["accuracy"] is None
    assert run_app(app, "sit-nlp", ["score", str(path)]) == 0
    assert "| task | category | group |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"task": "t", "id": "1", "prediction": "p"}', "'references' must be a list"),
        ('{"task": "t", "id": "1", "prediction": "p", "references": []}', "at least one reference"),
        ('{"task": "t", "id": "1", "prediction": "p", "references": ["a"], "options": ["a", "b"]}', "together"),
        ('{"task": "t", "id": "1", "prediction": "p", "references": ["a"], "options": ["a", "b"], '
         '"option_scores": [1.0], "label": "a"}', "2 numbers"),
        ('{"task": "t", "id": "1", "prediction": "p", "references": ["a"], "options": ["a", "b"], '
         '"option_scores": [1.0, 0.5], "label": "c"}', "one of the options"),
        ('{"task": "t", "id": 1, "prediction": "p", "references": ["a"]}', "'id' must be a string"),
    ],
)
def test_malformed_lines_are_one_line_errors(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(_gen("t", 0, "a", ["a"])) + "\n" + line + "\n")
    with pytest.raises(UsageFailure, match=message) as err:
        read_predictions(path)
    assert str(err.value).startswith(f"{path}:2:") and "\n" not in str(err.value)


def test_duplicates_and_empty_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageFailure, match="duplicate id"):
        read_predictions(_write(tmp_path / "d.jsonl", [_gen("t", 0, "a", ["a"])] * 2))
    with pytest.raises(UsageFailure, match="no predictions"):
        read_predictions(_write(tmp_path / "e.jsonl", []))


def test_score_cli_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sit_causal.cli.common import run_app
    from sit_nlp.cli.main import app

    path = tmp_path / "p.jsonl"
    path.write_text("[1, 2]\n")
    assert run_app(app, "sit-nlp", ["score", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected a JSON object" in err


_words = st.lists(st.sampled_from(["red", "cat", "runs", "fast", "the", "blue", "dog"]), min_size=1, max_size=6)


@settings(max_examples=40, deadline=None)
@given(preds=st.lists(st.tuples(_words, _words), min_size=1, max_size=8), seed=st.integers(0, 1000))
def test_scores_do_not_depend_on_line_order(preds: list[tuple[list[str], list[str]]], seed: int) -> None:
    rows = [_gen(f"t{i % 3}", i, " ".join(p), [" ".join(r)]) for i, (p, r) in enumerate(preds)]
    rows += [_mc("m", i, [float(len(p)), float(len(r))], "yes") for i, (p, r) in enumerate(preds)]
    perm = np.random.default_rng(seed).permutation(len(rows))
    a = score_predictions(_preds(rows))
    b = score_predictions(_preds([rows[i] for i in perm]))
    assert _rounded(a) == _rounded(b)  # equal up to the order of floating-point sums


def _rounded(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    return round(obj, 9) if isinstance(obj, float) else obj


@settings(max_examples=40, deadline=None)
@given(scores=st.lists(st.floats(-50, 0), min_size=2, max_size=5, unique=True), seed=st.integers(0, 1000))
def test_accuracy_invariant_to_option_order(scores: list[float], seed: int) -> None:
    options = tuple(f"o{k}" for k in range(len(scores)))
    label = options[int(np.argmax(scores))]
    perm = np.random.default_rng(seed).permutation(len(scores))
    shuffled = _mc("m", 0, [scores[i] for i in perm], label, tuple(options[i] for i in perm))
    assert score_predictions(_preds([shuffled]))["per_task"]["m"]["accuracy"] == pytest.approx(100.0)


def test_unicode_rouge_scores_every_script_and_matches_rouge_score_on_ascii() -> None:
    from rouge_score import rouge_scorer

    from sit_nlp.evaluation.scoring import UnicodeTokenizer, normalize_answer

    ours = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True, tokenizer=UnicodeTokenizer())
    theirs = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    for a, b in (("The cats were running quickly!", "a cat runs quick"), ("X-ray 42_b, ok", "x ray 42 b"),
                 ("summarising the news articles", "the summarised article")):
        assert ours.score(a, b)["rougeL"].fmeasure == theirs.score(a, b)["rougeL"].fmeasure
    for text in ("猫が走っている", "Кошка бежит быстро"):
        assert theirs.score(text, text)["rougeL"].fmeasure == 0.0  # the package's tokenizer drops them all
        assert ours.score(text, text)["rougeL"].fmeasure == 1.0
    assert theirs.score("naïve résumé", "naive resume")["rougeL"].fmeasure < 1.0
    assert ours.score("naïve résumé", "naive resume")["rougeL"].fmeasure == 1.0
    assert 0.0 < ours.score("我喜欢猫", "我喜欢狗")["rougeL"].fmeasure < 1.0  # CJK characters are tokens
    assert normalize_answer("«Ça va?»  Très-bien。") == normalize_answer("ca va tres bien")


def test_score_command_takes_the_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sit_causal.cli.common import run_app
    from sit_nlp.cli.main import app

    pred = tmp_path / "p.jsonl"
    pred.write_text(json.dumps({"task": "t", "id": "1", "prediction": "Кошка бежит",
                                "references": ["Кошка бежит"]}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert run_app(app, "sit-nlp", ["score", str(pred), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["overall"]["rouge_l"] == 100.0
    assert run_app(app, "sit-nlp", ["score", str(pred), "--json", "--rouge-tokenizer", "rouge-score"]) == 0
    assert json.loads(capsys.readouterr().out)["overall"]["rouge_l"] == 0.0
    assert run_app(app, "sit-nlp", ["score", str(pred), "--rouge-tokenizer", "bpe"]) == 2


def test_length_normalised_rank_classification_majority_and_wordings(tmp_path: Path) -> None:
    """A long option with a lower summed but higher per-token score loses the summed rule, wins the per-token one;
    the majority baseline is the label prior; scores per instruction wording and their spread."""
    rows = []
    for i in range(4):  # label "yes" 3 times of 4; option "no thanks a lot" is 4 tokens, "yes" 1
        label = "yes" if i < 3 else "no thanks a lot"
        line = _mc("m", i, [-1.0, -2.0], label)
        line.update(options=["yes", "no thanks a lot"], option_lengths=[1, 4], paraphrase=i % 2)
        rows.append(line)
    scores = score_predictions(read_predictions(_write(tmp_path / "p.jsonl", rows)))
    task = scores["per_task"]["m"]
    assert task["accuracy"] == pytest.approx(75.0)  # summed: always "yes"
    assert task["accuracy_norm"] == pytest.approx(25.0)  # per token (-1 vs -0.5): always the long option
    assert task["majority"] == pytest.approx(75.0)
    assert scores["per_paraphrase"]["0"]["accuracy"] == pytest.approx(100.0)  # examples 0, 2: label yes
    assert scores["per_paraphrase"]["1"]["accuracy"] == pytest.approx(50.0)  # examples 1, 3
    assert scores["paraphrase_spread"] == pytest.approx(50.0)
    bad = dict(rows[0], option_lengths=[1])
    with pytest.raises(UsageFailure, match="option_lengths"):
        read_predictions(_write(tmp_path / "bad.jsonl", [bad]))
