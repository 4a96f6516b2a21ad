"""The invariance term inside the sequence model and the testbed's invariance methods (tiny models, CPU)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sit_causal.objective import ObjectiveConfig, vrex_penalty
from sit_nlp.data.batching import SourceCoveringBatchSampler
from sit_nlp.model.backbones import load_backbone
from sit_nlp.model.config import ModelConfig, seq2seq_objective
from sit_nlp.model.seq2seq import LossWindow, Seq2SeqSIT


def _model(method: str, objective: ObjectiveConfig) -> Seq2SeqSIT:
    torch.manual_seed(0)
    config = ModelConfig(backbone="tiny-bart", method=method, n_factors=4, latent_hidden=16,
                         source_decoder_layers=1, source_max_len=8, task_bank_size=4)
    return Seq2SeqSIT(config, load_backbone("tiny-bart", dropout=0.0), objective, sources=["a", "b"])


def _batch(vocab: int, n: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(4, vocab, (n, 5), generator=g)
    labels[:, 3:] = -100
    return {
        "input_ids": torch.randint(4, vocab, (n, 7), generator=g), "attention_mask": torch.ones(n, 7, dtype=torch.long),
        "decoder_input_ids": torch.randint(4, vocab, (n, 5), generator=g), "labels": labels,
        "task_ids": torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])[:n], "dataset_ids": torch.tensor([0, 0, 1, 1] * 2)[:n],
    }


@pytest.mark.parametrize("form", ["vrex", "irm"])
def test_the_vanilla_model_returns_the_invariance_term_from_per_example_losses(form: str) -> None:
    plain = _model("vanilla", seq2seq_objective())
    inv = _model("vanilla", dataclasses.replace(seq2seq_objective(), w_invariance=1.0, invariance=form))
    inv.load_state_dict(plain.state_dict())
    batch = _batch(plain.backbone.config.vocab_size)
    base, out = plain.loss_sums(batch), inv.loss_sums(batch)
    assert "invariance" not in base and "invariance" in out
    assert torch.allclose(out["target_nll"], base["target_nll"], atol=1e-5)  # the dummy scale changes no value
    if form == "vrex":
        logits = plain.target_logits(batch, None).float()
        labels = batch["labels"]
        tok = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
        per_example = tok.view(labels.shape).sum(1) / (labels != -100).sum(1)
        expected = vrex_penalty(per_example, batch["task_ids"], batch["dataset_ids"])
        assert torch.allclose(out["invariance"].detach(), expected.detach(), atol=1e-6) and float(expected.detach()) > 0
    # the term reaches the loss with its weight, and its gradient reaches the backbone
    window = LossWindow({"target": float(out["target_tokens"]), "source": 1.0, "kl": 1.0}, 1, 1)
    total = inv(batch, window=window, progress=1.0)
    assert "invariance" in total
    total["loss"].backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in inv.backbone.parameters())


def test_the_source_ids_decide_the_penalty() -> None:
    model = _model("vanilla", dataclasses.replace(seq2seq_objective(), w_invariance=1.0))
    batch = _batch(model.backbone.config.vocab_size)
    one_source = {**batch, "dataset_ids": torch.zeros(8, dtype=torch.long)}
    assert float(model.loss_sums(one_source)["invariance"].detach()) == 0.0  # one source per task: nothing to compare
    assert float(model.loss_sums(batch)["invariance"].detach()) > 0.0


def test_evaluation_needs_no_gradient_for_the_irm_term() -> None:
    model = _model("vanilla", dataclasses.replace(seq2seq_objective(), w_invariance=1.0, invariance="irm"))
    with torch.no_grad():
        out = model.loss_sums(_batch(model.backbone.config.vocab_size))
    assert "invariance" not in out and torch.isfinite(out["target_nll"])


def test_source_covering_sampler_holds_two_sources_of_every_task_in_every_batch() -> None:
    rng = np.random.default_rng(0)
    tasks = rng.integers(0, 4, 400)
    sources = rng.integers(0, 2, 400)
    for world in (1, 2):
        seen = []
        for rank in range(world):
            sampler = SourceCoveringBatchSampler(tasks, sources, 32, k=2, seed=3, rank=rank, world_size=world)
            sampler.set_epoch(1)
            for batch in sampler:
                assert len(batch) <= 32
                for t in np.unique(tasks[batch]):
                    assert len(np.unique(sources[batch][tasks[batch] == t])) == 2
                seen += batch
        assert len(seen) == len(set(seen))  # ranks never share an example
    a, b = (list(SourceCoveringBatchSampler(tasks, sources, 32, seed=s)) for s in (3, 4))
    assert a != b and a == list(SourceCoveringBatchSampler(tasks, sources, 32, seed=3))


def test_the_testbed_methods_set_the_term_and_the_sampler(tmp_path) -> None:
    from sit_nlp.testbed.jobs import INVARIANCE_WEIGHT, IRM_WEIGHT, TestbedJob, _sections

    for method, model_method, form in (("sit-invariant", "sit", "vrex"), ("vanilla-vrex", "vanilla", "vrex"),
                                       ("vanilla-irm", "vanilla", "irm")):
        sections = _sections(TestbedJob(method, 0, tmp_path, tmp_path / "out", 10))
        assert sections["model"]["method"] == model_method
        weight = IRM_WEIGHT if form == "irm" else INVARIANCE_WEIGHT
        assert sections["loss"]["invariance"] == form and sections["loss"]["w_invariance"] == weight
        assert sections["data"]["sources_per_batch"] == 2
    plain = _sections(TestbedJob("sit", 0, tmp_path, tmp_path / "out", 10))
    assert "sources_per_batch" not in plain["data"] and "w_invariance" not in plain.get("loss", {})
