"""Evaluation with an untrained tiny model saved like a checkpoint (seconds on CPU)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from sit_causal.cli.common import run_app
from sit_causal.inputs import UsageFailure
from sit_nlp.data.batching import Seq2SeqCollator
from sit_nlp.data.records import read_records
from sit_nlp.evaluation.evaluate import option_log_likelihoods, resolve_checkpoint, resolve_split
from sit_nlp.evaluation.scoring import read_predictions, score_predictions
from sit_nlp.training.checkpoint import load_trained

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", ["sit", "vanilla"])
def test_eval_writes_the_prediction_schema_and_scores(method: str, tiny_data: Path, tiny_checkpoint: Any,
                                                      tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from sit_nlp.cli.main import app

    run = tiny_checkpoint(tmp_path, method)
    code = run_app(app, "sit-nlp", ["eval", "--checkpoint", str(run), "--split", "heldout", "--batch-size", "5",
                                    "--limit-per-task", "3", "--quiet", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    pred_path = run / "final" / "predictions_heldout.jsonl"
    lines = [json.loads(x) for x in pred_path.read_text().splitlines()]
    records = read_records(tiny_data / "heldout.jsonl")
    tasks = {r.task for r in records}
    assert len(lines) == 3 * len(tasks)  # --limit-per-task
    by_id = {r.id: r for r in records}
    for line in lines:
        rec = by_id[line["id"]]
        assert line["task"] == rec.task and line["group"] == rec.extra["group"] and line["category"] == rec.category
        assert line["references"] == list(rec.all_references) and isinstance(line["prediction"], str)
        if rec.options:
            assert line["options"] == list(rec.options) and line["label"] == rec.output
            assert len(line["option_scores"]) == len(rec.options) and all(s < 0 for s in line["option_scores"])
        else:
            assert "options" not in line
    scores = score_predictions(read_predictions(pred_path))
    assert set(scores["per_group"]) == {"in_domain", "out_of_domain", "cross_task"}


def test_batched_option_scores_equal_one_at_a_time(tiny_data: Path, tiny_checkpoint: Any, tmp_path: Path) -> None:
    run = tiny_checkpoint(tmp_path, "sit")
    model, tokenizer, _ = load_trained(run / "final")
    collator = Seq2SeqCollator(tokenizer, model.backbone.config.decoder_start_token_id, (), 64, 12, 16, 12)
    mc = [r for r in read_records(tiny_data / "heldout.jsonl") if r.options][:4]
    # options of different token lengths, so padding matters
    mc = [replace(r, options=(*r.options[:-1], r.options[-1] + " indeed quite so")) for r in mc]
    batched = option_log_likelihoods(model, collator, mc, batch_size=7, device="cpu")
    single = [option_log_likelihoods(model, collator, [r], batch_size=1, device="cpu")[0] for r in mc]
    assert torch.allclose(torch.tensor(batched), torch.tensor(single), atol=1e-4)
    # the score is the summed log-probability of option + eos: minus the summed token NLL
    r = replace(mc[0], output=mc[0].options[0])
    batch = collator(collator.tokenize([r]))
    with torch.no_grad():
        logits = model.target_logits(batch, model.latent_path(batch)[3] if model.is_sit else None)
    nll = torch.nn.functional.cross_entropy(logits[0], batch["labels"][0], ignore_index=-100, reduction="sum")
    assert batched[0][0] == pytest.approx(-nll.item(), abs=1e-4)


def test_bad_checkpoint_and_split_are_one_line_errors(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageFailure, match="no trained model"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(UsageFailure, match="no such split file"):
        resolve_split("test", tiny_data, "x")
    with pytest.raises(UsageFailure, match="no heldout split: pass --data with the heldout records") as err:
        resolve_split("heldout", None, "builtin:tiny_train.jsonl")
    assert "builtin:tiny_eval.jsonl" in str(err.value)  # names the data it can take
    assert resolve_split("heldout", None, str(tiny_data / "train.jsonl")) == tiny_data / "heldout.jsonl"
