"""The testbed's backbone: a word-level tokenizer over the grammar's vocabulary and a randomly initialised BART.

``testbed build`` (:func:`sit_nlp.testbed.build.write_testbed`) saves both into ``OUT/model``, loadable offline
by ``sit-nlp train --model.backbone=OUT/model``:

* :func:`vocabulary`: every word of the records' formatted sources and outputs, and every word the grammar
  (:mod:`sit_nlp.testbed.grammar`) can write, so no input or target word is ``<unk>``;
* :func:`build_tokenizer`: a ``PreTrainedTokenizerFast`` over :data:`SPECIALS` and those words;
* :func:`build_testbed_model`: a ``BartForConditionalGeneration`` sized by the config's ``model_*`` keys, its
  weights ``~ N(0, model_init_std^2)`` drawn inside a forked torch RNG seeded by the testbed's seed;
* :func:`build_testbed_decoder`: the decoder-only counterpart, a ``LlamaForCausalLM`` of the same width with
  ``2 * model_layers`` layers (the BART's encoder and decoder layers together), the same tokenizer and
  initialisation scale, saved into ``OUT/model-decoder`` (:func:`ensure_decoder_backbone` writes it into a
  testbed folder built before it existed, from the folder's own ``testbed.json``), so
  ``sit-nlp testbed run --backbone decoder-only`` compares the two model families on the same records.

torch, tokenizers and transformers load only when a function runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sit_nlp.testbed import grammar

if TYPE_CHECKING:
    from sit_nlp.data.records import InstructionRecord
    from sit_nlp.testbed.build import TestbedConfig

__all__ = ["DECODER_FOLDER", "SPECIALS", "build_testbed_decoder", "build_testbed_model", "build_tokenizer",
           "ensure_decoder_backbone", "vocabulary"]


def vocabulary(records: list[InstructionRecord]) -> list[str]:
    """Every word the model's inputs and targets can contain: the formatted sources (instruction, input,
    options; :func:`sit_nlp.data.batching.format_source`) and the outputs, lower-cased, split on whitespace and
    punctuation as the tokenizer's pre-tokenizer does; plus every word of the grammar."""
    from tokenizers.pre_tokenizers import Whitespace

    from sit_nlp.data.batching import format_source

    pre = Whitespace()
    words: set[str] = set()
    for r in records:
        for text in (format_source(r), r.output):
            words.update(w for w, _ in pre.pre_tokenize_str(text.lower()))
    for classes in grammar.WORDS.values():
        for seen, spare in classes:
            words.update(seen)
            words.add(spare)
    words.update(w for text in grammar.AMBIGUOUS.values() for w in text.split())
    words.add(grammar.AMBIGUOUS["kind"] + "s")
    words.update(grammar._PLURAL.values())
    words.update(grammar._PAST.values())
    words.update(s + "s" for s in grammar._PAST)
    return sorted(words)


SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


def build_tokenizer(words: list[str]) -> Any:
    """A word-level ``PreTrainedTokenizerFast``: lower-casing, whitespace-and-punctuation pre-tokenizer,
    ``<pad>`` = 0, ``<s>`` = 1, ``</s>`` = 2, ``<unk>`` = 3, sources wrapped as ``<s> ... </s>``."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([*SPECIALS, *words])}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def build_testbed_model(cfg: TestbedConfig, vocab_size: int, seed: int) -> Any:
    """A randomly initialised ``BartForConditionalGeneration`` (init inside a forked torch RNG seeded by
    ``seed``), decoding from ``</s>`` as ``facebook/bart-*`` does."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    bart = BartConfig(
        vocab_size=vocab_size, d_model=cfg.model_d, encoder_layers=cfg.model_layers, decoder_layers=cfg.model_layers,
        encoder_attention_heads=cfg.model_heads, decoder_attention_heads=cfg.model_heads,
        encoder_ffn_dim=cfg.model_ffn, decoder_ffn_dim=cfg.model_ffn, max_position_embeddings=cfg.model_max_positions,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=None,
        forced_eos_token_id=None, dropout=0.1, attention_dropout=0.0, activation_dropout=0.0,
        init_std=cfg.model_init_std,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BartForConditionalGeneration(bart)
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.decoder_start_token_id = 0, 2, 2
    gen.bos_token_id, gen.forced_bos_token_id, gen.forced_eos_token_id = 1, None, None
    return model


DECODER_FOLDER = "model-decoder"
"""The decoder-only backbone's folder inside a testbed folder (beside the BART's ``model``)."""


def build_testbed_decoder(cfg: TestbedConfig, vocab_size: int, seed: int) -> Any:
    """A randomly initialised ``LlamaForCausalLM``: width ``model_d``, ``2 * model_layers`` layers, ``model_heads``
    heads (no grouped keys), feed-forward width ``model_ffn``, weights ``~ N(0, model_init_std^2)``, tied input
    and output embeddings (as the BART's), pad 0 / bos 1 / eos 2; init inside a forked torch RNG seeded by
    ``seed``. Llama has no hidden-state dropout (the BART has 0.1): the one architectural difference besides
    causal attention. Parameter counts at the default sizes: 164,416 + 64 ``V`` (this) against
    184,320 + 64 ``V`` (the BART, with its learned positions and biases)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaConfig(
        vocab_size=vocab_size, hidden_size=cfg.model_d, intermediate_size=cfg.model_ffn,
        num_hidden_layers=2 * cfg.model_layers, num_attention_heads=cfg.model_heads,
        num_key_value_heads=cfg.model_heads, max_position_embeddings=cfg.model_max_positions,
        initializer_range=cfg.model_init_std, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=True, attention_dropout=0.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(llama)
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = 0, 2, 1
    return model


def ensure_decoder_backbone(data: Path) -> Path:
    """``data / DECODER_FOLDER``, written first if missing: :func:`build_testbed_decoder` from the testbed's
    ``testbed.json`` (its config and seed) with the tokenizer of ``data / "model"``, saved into a temporary
    folder renamed at the end (an interrupted write leaves no half folder). Deterministic: the same testbed
    gives the same weights whenever it is written."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from sit_nlp.model.backbones import quiet_transformers
    from sit_nlp.testbed.build import TestbedConfig

    target = data / DECODER_FOLDER
    if (target / "config.json").is_file():
        return target
    meta = json.loads((data / "testbed.json").read_text(encoding="utf-8"))
    cfg = TestbedConfig(**meta["config"])
    tokenizer = AutoTokenizer.from_pretrained(str(data / "model"))
    model = build_testbed_decoder(cfg, len(tokenizer), int(meta["seed"]))
    tmp = data / (DECODER_FOLDER + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    with quiet_transformers():
        model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target
