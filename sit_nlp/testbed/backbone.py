"""The testbed's backbone: a word-level tokenizer over the grammar's vocabulary and a randomly initialised BART.

``testbed build`` (:func:`sit_nlp.testbed.build.write_testbed`) saves both into ``OUT/model``, loadable offline
by ``sit-nlp train --model.backbone=OUT/model``:

* :func:`vocabulary`: every word of the records' formatted sources and outputs, and every word the grammar
  (:mod:`sit_nlp.testbed.grammar`) can write, so no input or target word is ``<unk>``;
* :func:`build_tokenizer`: a ``PreTrainedTokenizerFast`` over :data:`SPECIALS` and those words;
* :func:`build_testbed_model`: a ``BartForConditionalGeneration`` sized by the config's ``model_*`` keys, its
  weights ``~ N(0, model_init_std^2)`` drawn inside a forked torch RNG seeded by the testbed's seed.

torch, tokenizers and transformers load only when a function runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sit_nlp.testbed import grammar

if TYPE_CHECKING:
    from sit_nlp.data.records import InstructionRecord
    from sit_nlp.testbed.build import TestbedConfig

__all__ = ["SPECIALS", "build_testbed_model", "build_tokenizer", "vocabulary"]


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
