"""Decoder-only SIT on the tiny Llama: shapes and gradients, the prompt never a target, the answer reading the
prompt only through the selected factors, left padding, generation consistent with training, LoRA through
peft, save and reload, and the command line end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sit_nlp.data.decoder_batching import DecoderCollator, position_ids
from sit_nlp.data.records import read_records
from sit_nlp.model.backbones import ASSETS, load_backbone
from sit_nlp.model.config import ConfigError, LoraSettings, ModelConfig
from sit_nlp.model.decoder import DecoderSIT, trainable_fraction
from sit_nlp.model.factory import build_model
from sit_nlp.training.checkpoint import load_trained, save_trained
from sit_nlp.training.config import Config
from sit_nlp.training.data import build_task_bank

REPO = Path(__file__).resolve().parents[1]
RECORDS = read_records(ASSETS / "tiny_train.jsonl")
TASKS = sorted({r.task for r in RECORDS})


def build(method: str = "sit", lora: LoraSettings | None = None, **overrides: object) -> tuple[DecoderSIT,
                                                                                                 DecoderCollator]:
    backbone = load_backbone("tiny-llama", dropout=0.0)
    cfg = ModelConfig(backbone="tiny-llama", method=method, n_factors=4, latent_hidden=16, source_max_len=12,
                      dropout=0.0, lora=lora, **overrides)
    model = build_model(cfg, backbone)
    assert isinstance(model, DecoderSIT)
    collator = DecoderCollator(backbone.tokenizer, TASKS, max_source_len=48, max_target_len=12,
                               max_instruction_len=24, source_recon_len=12)
    model.set_training_tasks(TASKS, build_task_bank(RECORDS, collator, 16) if model.is_sit else None)
    return model, collator


def batch_of(collator: DecoderCollator, records: list) -> dict[str, torch.Tensor]:
    return collator(collator.tokenize(records))


@pytest.mark.parametrize("method", ["sit", "vanilla"])
def test_shapes_losses_and_a_gradient_for_every_parameter(method: str) -> None:
    model, collator = build(method)
    batch = batch_of(collator, RECORDS[:6])
    b, t_p = batch["input_ids"].shape
    t_a = batch["labels"].shape[1]
    assert batch["decoder_input_ids"].shape == (b, t_a)
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padding: every prompt ends in the last column
    logits = model.target_logits(batch, model.latent_path(batch)[3] if model.is_sit else None)
    assert logits.shape == (b, t_a, model.backbone.config.vocab_size)
    out = model(batch, generator=torch.Generator().manual_seed(0))
    keys = {"target_nll", "target_tokens"} | ({"source_nll", "kl", "uic", "distinction"} if model.is_sit else set())
    assert keys <= set(out) and all(torch.isfinite(out[k]).all() for k in keys)
    assert int(out["target_tokens"]) == int((batch["labels"] != -100).sum())
    if model.is_sit:
        _, lat, _, memory = model.latent_path(batch)
        assert lat.z.shape == (b, t_p, 4, 32 // 4) and memory.shape == (b, t_p, 32)
        assert lat.kl.shape == (b, t_p)
        loss = out["target_nll"] + out["source_nll"] + out["kl"] + out["uic"] + out["distinction"]
    else:
        loss = out["target_nll"]
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing[:5]


def test_the_prompt_is_never_a_target() -> None:
    model, collator = build("vanilla")
    records = RECORDS[:4]
    batch = batch_of(collator, records)
    ids, mask, labels = DecoderCollator.sequence_labels(batch)
    t_p = batch["input_ids"].shape[1]
    assert (labels[:, :t_p] == -100).all()  # every prompt position carries -100 (TRL's completion-only loss)
    assert (labels[:, t_p:] == batch["labels"]).all()
    # the model's target NLL is Hugging Face's own causal-LM loss on those labels
    hf = model.lm(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), labels=labels).loss
    out = model(batch)
    assert torch.allclose(out["target_nll"] / out["target_tokens"], hf, atol=1e-5)
    # changing the answer changes the loss; changing the prompt's labels (all -100) cannot
    other = batch_of(collator, [replace(r, output=r.output + " x") for r in records])
    assert not torch.allclose(model(other)["target_nll"], out["target_nll"])
    unmasked = labels.clone()
    unmasked[:, :t_p] = torch.where(mask[:, :t_p].bool(), ids[:, :t_p], -100)
    with_prompt = model.lm(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), labels=unmasked).loss
    assert not torch.allclose(with_prompt, hf)  # had the prompt been a target, the loss would differ


@pytest.mark.parametrize("route", ["prefix", "added"])
def test_the_answer_reads_the_prompt_only_through_the_selected_factors(route: str) -> None:
    model, collator = build("sit", decoder_guidance=route)
    model.eval()
    batch = batch_of(collator, RECORDS[:4])
    closed = torch.zeros(4)
    scrambled = dict(batch)
    gen = torch.Generator().manual_seed(1)
    scrambled["input_ids"] = torch.where(batch["attention_mask"].bool(),
                                         torch.randint(5, 500, batch["input_ids"].shape, generator=gen),
                                         batch["input_ids"])
    with torch.no_grad():
        a = model.sequence_log_likelihood(batch, mask=closed)
        b = model.sequence_log_likelihood(scrambled, mask=closed)
        c = model.sequence_log_likelihood(scrambled, mask=torch.ones(4))
    assert torch.allclose(a, b, atol=1e-5)  # every gate closed: the prompt's content does not reach the answer
    assert not torch.allclose(a, c, atol=1e-3)


@pytest.mark.parametrize("method", ["sit", "vanilla"])
def test_left_padding_changes_nothing(method: str) -> None:
    model, collator = build(method)
    model.eval()
    short = min(RECORDS[:20], key=lambda r: len(r.instruction) + len(r.input))
    long = max(RECORDS[:20], key=lambda r: len(r.instruction) + len(r.input))
    with torch.no_grad():
        alone = model.sequence_log_likelihood(batch_of(collator, [short]))
        padded = model.sequence_log_likelihood(batch_of(collator, [short, long]))
    assert batch_of(collator, [short, long])["attention_mask"][0, 0] == 0
    assert torch.allclose(alone[0], padded[0], atol=1e-4)


@pytest.mark.parametrize(("method", "route"), [("sit", "prefix"), ("sit", "added"), ("vanilla", "prefix")])
def test_greedy_generation_follows_the_training_logits(method: str, route: str) -> None:
    model, collator = build(method, decoder_guidance=route)
    model.eval()
    batch = batch_of(collator, RECORDS[:5])
    with torch.no_grad():
        ids = model.generate(batch, max_new_tokens=3, do_sample=False)
        memory = model.latent_path(batch)[3] if model.is_sit else None
        first = model.target_logits(batch, memory)[:, 0].argmax(-1)
    assert ids.shape[0] == 5 and ids.shape[1] <= 3
    assert (ids[:, 0] == first).all()


def test_lora_trains_the_adapters_and_sit_modules_and_freezes_the_backbone() -> None:
    model, collator = build("sit", lora=LoraSettings(rank=4, alpha=8.0, dropout=0.0))
    frozen = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if "lora_" not in n}
    adapters = {n: p.detach().clone() for n, p in model.backbone.named_parameters() if "lora_" in n}
    own = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("backbone.")}
    assert adapters and all(not p.requires_grad for n, p in model.backbone.named_parameters() if "lora_" not in n)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # B starts at 0: A moves from the second step on
        out = model(batch_of(collator, RECORDS[:6]), generator=torch.Generator().manual_seed(0))
        (out["target_nll"] / out["target_tokens"] + out["source_nll"] / out["source_tokens"]).backward()
        optimizer.step()
        optimizer.zero_grad()
    after = dict(model.backbone.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())
    assert all(not torch.equal(after[n], v) for n, v in adapters.items())
    params = dict(model.named_parameters())
    assert not torch.equal(params["memory_proj.0.weight"], own["memory_proj.0.weight"])
    share = trainable_fraction(model)
    assert share["backbone_trainable"] == sum(v.numel() for v in adapters.values())


@pytest.mark.parametrize("lora", [None, LoraSettings(rank=4, alpha=8.0, dropout=0.0)])
def test_save_and_reload_give_identical_predictions(lora: LoraSettings | None, tmp_path: Path) -> None:
    model, collator = build("sit", lora=lora)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        out = model(batch_of(collator, RECORDS[:6]))
        (out["target_nll"] / out["target_tokens"]).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.set_task_graph(torch.ones(len(TASKS), 4))
    model.eval()
    cfg = Config(model=model.config)
    cfg.data.max_instruction_len = 24
    save_trained(model, cfg, collator.tokenizer, tmp_path / "final", bank=model.bank, final=True)
    names = {p.name for p in (tmp_path / "final").iterdir()}
    if lora is not None:
        assert {"adapter_config.json", "adapter_model.safetensors", "sit_modules.safetensors"} <= names
        assert "model.safetensors" not in names  # the adapter alone, not the backbone
    again, _, _ = load_trained(tmp_path / "final")
    assert isinstance(again, DecoderSIT)
    batch = batch_of(collator, RECORDS[:5])
    with torch.no_grad():
        assert torch.equal(model.sequence_log_likelihood(batch), again.sequence_log_likelihood(batch))
        assert torch.equal(model.generate(batch, max_new_tokens=4, do_sample=False),
                           again.generate(batch, max_new_tokens=4, do_sample=False))


def test_bad_combinations_are_one_line() -> None:
    backbone = load_backbone("tiny-llama", dropout=0.0)
    with pytest.raises(ConfigError, match=r"model\.architecture is encoder-decoder"):
        build_model(ModelConfig(backbone="tiny-llama", architecture="encoder-decoder"), backbone)
    with pytest.raises(ConfigError, match="factor_input"):
        build_model(ModelConfig(backbone="tiny-llama", factor_input="input"), backbone)
    with pytest.raises(ConfigError, match="decoder-only backbones"):
        build_model(ModelConfig(lora=LoraSettings()), load_backbone("tiny-bart"))
    with pytest.raises(ConfigError, match=r"model\.lora: "):
        build_model(ModelConfig(backbone="tiny-llama", lora=LoraSettings(target_modules="no_such_proj")), backbone)


def test_the_command_line_trains_evaluates_and_reloads(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = [sys.executable, "-m", "sit_nlp.cli.main"]
    start = time.perf_counter()
    train = subprocess.run([*run, "train", "--config", str(REPO / "configs/tiny-decoder.yaml"),
                            f"--train.out_dir={tmp_path / 'run'}", "--threads", "1", "--json"],
                           capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    seconds = time.perf_counter() - start
    assert train.returncode == 0, train.stderr[-2000:]
    result = json.loads(train.stdout.strip().splitlines()[-1])
    assert result["eval_target"] is not None and result["eval_target"] < 6.0  # log 512 = 6.24: it learned
    assert seconds < 60, f"sit-nlp train --config configs/tiny-decoder.yaml took {seconds:.1f} s"
    assert (tmp_path / "run" / "task_graph.json").is_file()
    evaluated = subprocess.run([*run, "eval", "--checkpoint", str(tmp_path / "run"), "--data",
                                "builtin:tiny_eval.jsonl", "--quiet"],
                               capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "run" / "final" / "predictions_heldout.jsonl").read_text().splitlines()]
    assert rows and all("prediction" in r for r in rows)
    assert any("option_scores" in r for r in rows)
    model, _, _ = load_trained(tmp_path / "run" / "final")
    assert isinstance(model, DecoderSIT) and model.has_task_graph


def test_residual_guidance_starts_as_the_backbone() -> None:
    sit, collator = build("sit", guidance="residual")
    vanilla, _ = build("vanilla")
    sit.eval()
    vanilla.eval()
    batch = batch_of(collator, RECORDS[:4])
    with torch.no_grad():
        assert torch.allclose(sit.sequence_log_likelihood(batch), vanilla.sequence_log_likelihood(batch), atol=1e-5)
        sit.set_progress(1.0)  # rho = 0: the factors alone
        assert not torch.allclose(sit.sequence_log_likelihood(batch), vanilla.sequence_log_likelihood(batch),
                                  atol=1e-3)


def test_factor_layer_reads_an_earlier_layer_and_stops_there() -> None:
    full, collator = build("sit")
    early, _ = build("sit", factor_layer=1)
    batch = batch_of(collator, RECORDS[:3])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    decoder = early.lm.get_decoder()
    states = decoder(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                     output_hidden_states=True).hidden_states
    ran: list[int] = []
    handle = decoder.layers[1].register_forward_hook(lambda *a: ran.append(1))
    h = early.encode(ids, mask)
    handle.remove()
    assert not ran  # the layers after factor_layer never run
    assert torch.allclose(h, decoder.norm(states[1]), atol=1e-5)
    assert torch.allclose(full.encode(ids, mask), states[-1], atol=1e-5)
    out = early(batch)
    (out["target_nll"] + out["kl"]).backward()
    with pytest.raises(ConfigError, match="factor_layer must be in"):
        build("sit", factor_layer=3)[0].encode(ids, mask)
