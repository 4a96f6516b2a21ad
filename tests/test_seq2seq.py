"""The SIT model on tiny BART, T5 and BERT2BERT: every loss, gradients everywhere, unseen-task masks,
generation consistent with training, chunked cross-entropy, save/load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sit_nlp.data.batching import Seq2SeqCollator
from sit_nlp.data.records import read_records
from sit_nlp.model.backbones import ASSETS, Backbone, load_backbone
from sit_nlp.model.config import ModelConfig
from sit_nlp.model.seq2seq import Seq2SeqSIT
from sit_nlp.model.source_decoder import chunked_token_nll
from sit_nlp.training.checkpoint import load_trained, save_trained
from sit_nlp.training.config import Config
from sit_nlp.training.data import build_task_bank

FAMILIES = ["tiny-bart", "tiny-t5", "tiny-bert2bert"]
RECORDS = read_records(ASSETS / "tiny_train.jsonl")
TASKS = sorted({r.task for r in RECORDS})



def build(name: str, method: str = "sit", **overrides: object) -> tuple[Seq2SeqSIT, Seq2SeqCollator]:
    backbone = load_backbone(name, dropout=0.0)
    cfg = ModelConfig(backbone=name, method=method, n_factors=4, latent_hidden=16, source_max_len=12,
                      dropout=0.0, **overrides)
    model = Seq2SeqSIT(cfg, backbone)
    collator = Seq2SeqCollator(backbone.tokenizer, backbone.model.config.decoder_start_token_id, TASKS,
                               max_source_len=48, max_target_len=12, max_instruction_len=24, source_recon_len=12)
    model.set_task_bank(build_task_bank(RECORDS, collator, 16) if model.is_sit else None)
    return model, collator


def batch_of(collator: Seq2SeqCollator, records: list) -> dict[str, torch.Tensor]:
    return collator(collator.tokenize(records))


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("method", ["sit", "vanilla"])
def test_every_loss_forward_backward_reaches_every_parameter(name: str, method: str) -> None:
    model, collator = build(name, method)
    out = model(batch_of(collator, RECORDS[:6]), generator=torch.Generator().manual_seed(0))
    expected = {"target_nll", "target_tokens"}
    if method == "sit":
        expected |= {"source_nll", "source_tokens", "kl", "kl_tokens", "uic", "distinction"}
    assert expected <= set(out)
    for key in expected:
        assert torch.isfinite(out[key]).all(), key
    assert out["target_nll"] > 0
    loss = out["target_nll"] / out["target_tokens"]
    if method == "sit":
        assert out["source_nll"] > 0 and out["kl"] > 0 and out["distinction"] > 0
        loss = loss + out["source_nll"] / out["source_tokens"] + out["kl"] / out["kl_tokens"]
        loss = loss + out["uic"] + out["distinction"]
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient (DDP would fail): {missing[:5]}"


def test_each_sit_loss_has_its_own_gradient() -> None:
    model, collator = build("tiny-bart")
    batch = batch_of(collator, RECORDS[:6])
    for term, module in [("source_nll", "source_decoder"), ("kl", "latent.prior"), ("uic", "latent.selector"),
                         ("distinction", "latent.selector"), ("target_nll", "memory_proj")]:
        model.zero_grad()
        model(batch, generator=torch.Generator().manual_seed(0))[term].backward()
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(module)]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), (term, module)


def test_unseen_instruction_gets_a_mask() -> None:
    model, collator = build("tiny-t5")
    unseen = read_records(ASSETS / "tiny_unseen.jsonl")
    assert unseen[0].task not in TASKS
    texts = [unseen[0].instruction, RECORDS[0].instruction]
    ids, mask = collator.pad_instructions(collator.tokenizer(texts)["input_ids"])
    masks = model.instruction_masks(ids, mask)
    assert masks.shape == (2, 4)
    assert ((masks >= 0) & (masks <= 1)).all()
    assert not torch.allclose(masks[0], masks[1])  # computed from the instruction, not a task id
    assert torch.equal(masks, model.instruction_masks(ids, mask))  # deterministic in evaluation


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("method", ["sit", "vanilla"])
def test_generate_batched_beam_search_matches_the_training_path(name: str, method: str) -> None:
    model, collator = build(name, method)
    model.eval()
    batch = batch_of(collator, RECORDS[:5])
    beams = model.generate(batch, num_beams=3, max_new_tokens=6, do_sample=False)
    assert beams.shape[0] == 5 and 2 <= beams.shape[1] <= 7
    greedy = model.generate(batch, num_beams=1, max_new_tokens=1, do_sample=False)
    memory = model.latent_path(batch)[3] if model.is_sit else None
    first = model.target_logits(batch, memory)[:, 0].argmax(-1)  # position 0 sees only the start token
    assert torch.equal(greedy[:, 1], first)


@pytest.mark.parametrize("method", ["sit", "vanilla"])
def test_sequence_log_likelihood_is_minus_the_target_nll(method: str) -> None:
    model, collator = build("tiny-bert2bert", method)
    model.eval()
    records = RECORDS[:4]
    ll = model.sequence_log_likelihood(batch_of(collator, records))
    for i, r in enumerate(records):
        with torch.no_grad():
            nll = model(batch_of(collator, [r]))["target_nll"]
        assert ll[i].item() == pytest.approx(-nll.item(), rel=1e-4, abs=1e-4)


def test_chunked_cross_entropy_matches_the_full_one() -> None:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=gen, requires_grad=True)
    weight = torch.randn(50, 16, generator=gen, requires_grad=True)
    targets = torch.randint(0, 50, (37,), generator=gen)
    full = F.cross_entropy(hidden @ weight.T * 0.25, targets, reduction="sum")
    g_full = torch.autograd.grad(full, (hidden, weight))
    chunked = chunked_token_nll(hidden, targets, weight, 0.25, chunk=8)
    g_chunk = torch.autograd.grad(chunked, (hidden, weight))
    assert chunked.item() == pytest.approx(full.item(), rel=1e-5)
    for a, b in zip(g_full, g_chunk, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["tiny-bart", "tiny-bert2bert"])
def test_save_and_load_trained_gives_the_same_model(name: str, tmp_path) -> None:
    model, collator = build(name, guidance="gated")
    cfg = Config(model=model.config)
    save_trained(model, cfg, collator.tokenizer, tmp_path, bank=model.bank)
    again, tok, cfg2 = load_trained(tmp_path)
    assert cfg2.model.guidance == "gated" and len(tok) == len(collator.tokenizer)
    model.eval()
    batch = batch_of(collator, RECORDS[:3])
    with torch.no_grad():
        a, b = model(batch), again(batch)
    torch.testing.assert_close(a["target_nll"], b["target_nll"])
    assert (tmp_path / "task_bank.json").is_file()


@pytest.mark.parametrize("name", FAMILIES)
def test_residual_guidance_starts_as_the_backbone(name: str) -> None:
    """guidance=residual: at step 0 SIT's target distribution is the backbone's (memory = h_x); once the
    residual has faded (rho = 0) the decoder reads the selected factors alone."""
    sit, collator = build(name, guidance="residual", residual_fade=0.5)
    vanilla = Seq2SeqSIT(ModelConfig(backbone=name, method="vanilla", dropout=0.0),
                         Backbone(model=sit.backbone, tokenizer=collator.tokenizer, family=sit.family, name=name))
    sit.eval()
    vanilla.eval()
    batch = batch_of(collator, RECORDS[:5])
    with torch.no_grad():
        _, _, _, memory = sit.latent_path(batch)
        torch.testing.assert_close(sit.target_logits(batch, memory), vanilla.target_logits(batch, None),
                                   rtol=1e-4, atol=1e-5)
        sit.set_progress(0.25)
        assert float(sit.encoder_residual) == pytest.approx(0.5)
        sit.set_progress(0.6)
        assert float(sit.encoder_residual) == 0.0
        _, lat, _, memory = sit.latent_path(batch)
        torch.testing.assert_close(memory, sit.memory_proj(lat.target_guidance.flatten(-2)))
    # the factor path is silent at the start but trainable: the LayerNorm scale gets a gradient
    sit.train()
    sit.set_progress(0.0)
    out = sit(batch)
    (out["target_nll"] / out["target_tokens"]).backward()
    assert sit.memory_proj[1].weight.grad.abs().sum() > 0


def test_an_explicit_mask_replaces_the_selection_and_carries_gradients() -> None:
    model, collator = build("tiny-bart")
    model.eval()
    batch = batch_of(collator, RECORDS[:4])
    n = model.config.n_factors
    ones = model.sequence_log_likelihood(batch, mask=torch.ones(n))
    _, _, _, open_memory = model.latent_path(batch, open_all=True)
    with torch.no_grad():
        logits = model.target_logits(batch, open_memory).float()
    logp = torch.log_softmax(logits, -1).gather(-1, batch["labels"].clamp_min(0).unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(ones, (logp * (batch["labels"] != -100)).sum(-1), atol=1e-5)  # all ones = every gate open
    closed = model.sequence_log_likelihood(batch, mask=torch.tensor([1.0] + [0.0] * (n - 1)))
    assert not torch.allclose(ones, closed)
    soft = torch.full((n,), 0.5, requires_grad=True)
    _, lat, _, memory = model.latent_path(batch, mask=torch.sigmoid(soft))
    assert torch.allclose(lat.mask, torch.sigmoid(soft).detach().expand(4, n))
    model.target_logits(batch, memory).sum().backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0
    vanilla, vcoll = build("tiny-bart", "vanilla")
    with pytest.raises(ValueError, match="no selection mask"):
        vanilla.sequence_log_likelihood(batch_of(vcoll, RECORDS[:2]), mask=torch.ones(n))


def test_few_shot_selection_leaves_every_weight_and_fine_tuning_leaves_the_original() -> None:
    from dataclasses import replace

    from sit_nlp.testbed.fewshot import FewShotConfig, adapt_selection, fewshot_accuracy, finetune

    model, collator = build("tiny-bart")
    choice = [replace(r, task="new", extra={"split": "heldout_tasks"}) for r in RECORDS if r.options][:10]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = FewShotConfig(ks=(2, 4), steps=5, batch_size=2)
    mask = adapt_selection(model, collator, choice[:4], cfg, seed=0, device="cpu")
    assert mask.shape == (model.config.n_factors,) and set(mask.tolist()) <= {0.0, 1.0}
    tuned = finetune(model, collator, choice[:4], cfg, seed=0, device="cpu")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # neither step touched the trained model
    assert any(not torch.equal(before[k], v) for k, v in tuned.state_dict().items() if k in before)
    result = fewshot_accuracy(model, collator, choice, seed=0, device="cpu", config=cfg)
    assert result["test_records"] == {"new": 6} and set(result["accuracy"]) == {"zero-shot", "select", "finetune"}
    with pytest.raises(ValueError, match="too few"):
        fewshot_accuracy(model, collator, choice[:4], seed=0, device="cpu", config=cfg)


def test_few_shot_selection_moves_a_saturated_selector_mask() -> None:
    """Distilled selector logits saturate (|a| >> 1); the adaptation starts from them clipped, so its steps
    can still close or open a gate; without the clip (a huge clip) the mask cannot move."""
    from dataclasses import replace

    from sit_nlp.testbed.fewshot import FewShotConfig, adapt_selection

    model, collator = build("tiny-bart")
    with torch.no_grad():
        model.latent.selector[-1].weight.zero_()
        model.latent.selector[-1].bias.copy_(torch.tensor([25.0, -25.0, 25.0, -25.0]))
    shots = [replace(r, task="new") for r in RECORDS if r.options][:4]
    moved = adapt_selection(model, collator, shots, FewShotConfig(steps=40, select_lr=0.5, select_start_clip=2.0),
                            seed=0, device="cpu")
    stuck = adapt_selection(model, collator, shots, FewShotConfig(steps=40, select_lr=0.5, select_start_clip=1e3),
                            seed=0, device="cpu")
    assert stuck.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert moved.tolist() != [1.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize("name", ["tiny-bart", "tiny-t5"])
def test_factors_from_the_input_alone_see_no_instruction_but_the_decoder_gets_it(name: str) -> None:
    model, collator = build(name, factor_input="input")
    batch = batch_of(collator, RECORDS[:6])
    out = model(batch, generator=torch.Generator().manual_seed(0))
    loss = sum(out[k] / out[c] for k, c in (("target_nll", "target_tokens"), ("source_nll", "source_tokens"),
                                            ("kl", "kl_tokens"))) + out["uic"] + out["distinction"]
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]
    assert out["kl_tokens"] == batch["input_only_mask"].sum() < batch["attention_mask"].sum()
    model.eval()
    with torch.no_grad():
        base = model(batch)["target_nll"]
        # the formatted source is not read: scrambling it changes nothing
        scrambled = dict(batch, input_ids=batch["input_ids"].flip(1), attention_mask=batch["attention_mask"].flip(1))
        assert model(scrambled)["target_nll"].item() == pytest.approx(base.item(), rel=1e-6)
        # the input is read through the factors, the instruction through the mask and the task token
        other_input = dict(batch, input_only_ids=batch["input_only_ids"].roll(1, 0),
                           input_only_mask=batch["input_only_mask"].roll(1, 0))
        assert abs(model(other_input)["target_nll"].item() - base.item()) > 1e-5  # small at initialisation
        memory = model.latent_path(batch)[3]
        assert memory.shape[1] == batch["input_only_ids"].shape[1] + 1
        assert model.memory_mask(batch).shape == memory.shape[:2]
        c = model.factor_contributions(batch)
        assert c.shape == (6, 4) and torch.isfinite(c).all() and c.sum() > 0
    greedy = model.generate(batch, num_beams=1, max_new_tokens=1, do_sample=False)
    first = model.target_logits(batch, model.latent_path(batch)[3])[:, 0].argmax(-1)
    assert torch.equal(greedy[:, 1], first)
    assert model.generate(batch, num_beams=3, max_new_tokens=4, do_sample=False).shape[0] == 6


def test_factors_from_the_input_alone_are_saved_and_loaded(tmp_path) -> None:
    model, collator = build("tiny-bart", factor_input="input")
    save_trained(model, Config(model=model.config), collator.tokenizer, tmp_path, bank=model.bank)
    again, _, cfg = load_trained(tmp_path)
    assert cfg.model.factor_input == "input" and again.task_token is not None
    model.eval()
    batch = batch_of(collator, RECORDS[:3])
    with torch.no_grad():
        torch.testing.assert_close(model(batch)["target_nll"], again(batch)["target_nll"])


def test_few_shot_adaptation_does_not_depend_on_what_ran_before() -> None:
    """Fine-tuning trains with dropout: its generator is seeded per adaptation, not the process's state."""
    from dataclasses import replace

    from sit_nlp.testbed.fewshot import FewShotConfig, finetune

    _, collator = build("tiny-bart")
    backbone = load_backbone("tiny-bart", dropout=0.3)
    model = Seq2SeqSIT(ModelConfig(backbone="tiny-bart", n_factors=4, latent_hidden=16, source_max_len=12,
                                   dropout=0.3), backbone)
    shots = [replace(r, task="new") for r in RECORDS if r.options][:4]
    cfg = FewShotConfig(steps=3, batch_size=2)
    torch.manual_seed(1)
    a = finetune(model, collator, shots, cfg, seed=5, device="cpu").state_dict()
    torch.manual_seed(2)
    b = finetune(model, collator, shots, cfg, seed=5, device="cpu").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = finetune(model, collator, shots, cfg, seed=6, device="cpu").state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a)
