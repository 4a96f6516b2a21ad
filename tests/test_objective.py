"""The one SIT objective: both halves' models return the same named terms, and one config weights both."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from accelerate import Accelerator

from sit_causal.experiments.synthetic import Batch, build_synthetic_model, method_configs
from sit_causal.latent import LatentConfig, SITLatentModule, selection_open_probability
from sit_causal.objective import (
    TERMS,
    ObjectiveConfig,
    selection_distillation,
    structural_masks,
    structural_terms,
    training_progress,
)
from sit_nlp.data.batching import Seq2SeqCollator
from sit_nlp.data.records import InstructionRecord
from sit_nlp.model.backbones import load_backbone
from sit_nlp.model.config import ModelConfig
from sit_nlp.model.seq2seq import Seq2SeqSIT
from sit_nlp.training.data import build_task_bank
from sit_nlp.training.loop import accumulate_gradients

SHARED = ObjectiveConfig(w_target=1.0, w_source=0.7, w_kl=0.3, kl_anneal=0.0, w_uic=0.5, w_distinction=0.2,
                         w_sparsity=0.4, sparsity_ramp=0.0, w_selection=1.0)

RECORDS = [InstructionRecord(task=f"t{i % 3}", instruction=f"do task {i % 3} now", input=f"input {i} " * (i + 1),
                             output=f"out {i}", id=str(i)) for i in range(6)]


def _synthetic(objective: ObjectiveConfig):
    cfg, obj = method_configs("sit", objective=objective, n_factors=4, x_dim=6, n_tasks=3, n_datasets=6,
                              hidden_dim=16, embed_dim=8, head_hidden=8)
    model = build_synthetic_model(cfg, obj, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    task = torch.randint(0, 3, (16,), generator=g)
    batch = Batch(x=torch.randn(16, 6, generator=g), y=torch.randn(16, 1, generator=g), task_id=task,
                  dataset_id=task * 2)
    return model, batch


def _seq2seq(objective: ObjectiveConfig):
    backbone = load_backbone("tiny-bart", dropout=0.0)
    cfg = ModelConfig(backbone="tiny-bart", method="sit", n_factors=4, latent_hidden=16, dropout=0.0,
                      sample_latent=False, source_max_len=12)
    model = Seq2SeqSIT(cfg, backbone, objective)
    tasks = sorted({r.task for r in RECORDS})
    collator = Seq2SeqCollator(backbone.tokenizer, backbone.model.config.decoder_start_token_id, tasks,
                               max_source_len=48, max_target_len=12, source_recon_len=12)
    model.set_task_bank(build_task_bank(RECORDS, collator, 16))
    model.init_task_graph(len(tasks))
    return model, [collator(collator.tokenize(RECORDS))]


def test_both_models_return_the_same_named_terms() -> None:
    synthetic, batch = _synthetic(SHARED)
    syn_terms = set(synthetic.loss_terms(batch))
    model, micro = _seq2seq(SHARED)
    nlp_terms = set(accumulate_gradients(Accelerator(cpu=True), model, micro, 0.5, None)) - {"total"}
    assert syn_terms == nlp_terms == {"target", "source", "kl", "uic", "distinction", "sparsity"}
    assert syn_terms <= set(TERMS)


def test_changing_one_shared_weight_changes_both_totals() -> None:
    heavier = replace(SHARED, w_uic=SHARED.w_uic + 2.0)
    synthetic, batch = _synthetic(SHARED)
    terms = synthetic.loss_terms(batch)
    syn_a, syn_b = SHARED.total(terms, 0.5).item(), heavier.total(terms, 0.5).item()
    assert syn_b - syn_a == pytest.approx(2.0 * terms["uic"].item(), rel=1e-4)
    assert terms["uic"].item() > 0  # the start is symmetric: the UIC is violated
    model_a, micro = _seq2seq(SHARED)
    model_b, _ = _seq2seq(heavier)
    acc = Accelerator(cpu=True)
    nlp_a = accumulate_gradients(acc, model_a, micro, 0.5, None)
    nlp_b = accumulate_gradients(acc, model_b, micro, 0.5, None)
    assert nlp_a["uic"] > 0
    assert nlp_b["total"] - nlp_a["total"] == pytest.approx(2.0 * nlp_a["uic"], rel=1e-4)


def test_total_is_the_weighted_sum_and_rejects_unknown_terms() -> None:
    terms = {"target": torch.tensor(2.0), "kl": torch.tensor(4.0)}
    cfg = ObjectiveConfig(w_kl=0.5, kl_anneal=0.5)
    assert cfg.total(terms, 0.25).item() == pytest.approx(2.0 + 0.25 * 4.0)
    assert cfg.total(terms, 1.0).item() == pytest.approx(2.0 + 0.5 * 4.0)
    with pytest.raises(KeyError, match="unknown loss term"):
        cfg.total({"targett": torch.tensor(1.0)}, 0.0)
    with pytest.raises(ValueError, match="must be >= 0"):
        ObjectiveConfig(w_uic=-1.0)


def test_a_zero_weight_keeps_the_term_in_the_graph() -> None:
    """Multiplied, never skipped: the KL's parameters get a zero gradient (not none) while beta is 0."""
    p = torch.nn.Parameter(torch.tensor(3.0))
    total = ObjectiveConfig(kl_anneal=0.5).total({"target": p * 0 + 1.0, "kl": p * p}, progress=0.0)
    total.backward()
    assert p.grad is not None and p.grad.item() == 0.0


def test_progress_runs_from_zero_to_one() -> None:
    assert training_progress(0, 10) == 0.0 and training_progress(9, 10) == 1.0
    assert training_progress(0, 1) == 0.0 and training_progress(5, 3) == 1.0


def test_structural_masks_are_the_open_probabilities() -> None:
    latent = SITLatentModule(LatentConfig(n_factors=3, input_dim=4, task_dim=4, selection="hard-concrete",
                                          temperature=0.5, selector_init_std=0.5))
    h = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    masks = structural_masks(latent, h)
    _, logits = latent.selection_mask(h, sample=False)
    torch.testing.assert_close(masks, selection_open_probability(logits, latent.config))
    assert bool(((masks > 0) & (masks < 1)).all())  # never saturated: every gate keeps a gradient
    terms = structural_terms(masks, torch.arange(5), ObjectiveConfig(w_sparsity=1.0))
    assert set(terms) == {"uic", "distinction", "sparsity"}
    assert "sparsity" not in structural_terms(masks, torch.arange(5), ObjectiveConfig(w_sparsity=0.0))


def test_selection_distillation_teaches_the_selector_a_graph() -> None:
    latent = SITLatentModule(LatentConfig(n_factors=4, input_dim=4, task_dim=6))
    h = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    graph = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.float32)
    opt = torch.optim.Adam(latent.selector.parameters(), lr=0.05)
    first = None
    for _ in range(200):
        loss = selection_distillation(latent, h, graph)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    assert torch.equal((structural_masks(latent, h) > 0.5).float(), graph)
