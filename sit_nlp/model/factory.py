"""One entry point for both architectures: the SIT model and the collator of a backbone.

``model.architecture`` (``auto``, ``encoder-decoder``, ``decoder-only``) names the architecture; ``auto``
takes the backbone's (:func:`sit_nlp.model.backbones.architecture_of`: a causal LM is decoder-only). An
explicit value that contradicts the loaded backbone is a one-line :class:`~sit_nlp.model.config.ConfigError`.

* :func:`build_model`: :class:`~sit_nlp.model.seq2seq.Seq2SeqSIT` for an encoder-decoder,
  :class:`~sit_nlp.model.decoder.DecoderSIT` for a causal LM;
* :func:`make_collator`: :class:`~sit_nlp.data.batching.Seq2SeqCollator` or
  :class:`~sit_nlp.data.decoder_batching.DecoderCollator` for that model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sit_causal.objective import ObjectiveConfig
from sit_nlp.data.batching import Seq2SeqCollator
from sit_nlp.model.backbones import Backbone, architecture_of
from sit_nlp.model.config import ConfigError, ModelConfig
from sit_nlp.model.seq2seq import Seq2SeqSIT

__all__ = ["build_model", "is_decoder_only", "make_collator"]


def is_decoder_only(model: Any) -> bool:
    """Whether ``model`` is a :class:`~sit_nlp.model.decoder.DecoderSIT` (a causal LM backbone)."""
    from sit_nlp.model.decoder import DecoderSIT

    return isinstance(model, DecoderSIT)


def build_model(config: ModelConfig, backbone: Backbone, objective: ObjectiveConfig | None = None,
                sources: Sequence[str] = ()) -> Seq2SeqSIT:
    """The model of ``config`` on ``backbone``: a decoder-only SIT for a causal LM, the seq2seq one otherwise."""
    found = architecture_of(backbone.family)
    if config.architecture not in ("auto", found):
        raise ConfigError(f"model.architecture is {config.architecture} but backbone {backbone.name!r} is "
                          f"{found} (set model.architecture: auto or {found})")
    if found == "decoder-only":
        from sit_nlp.model.decoder import DecoderSIT

        return DecoderSIT(config, backbone, objective, sources=sources)
    for key, value in (("lora", config.lora), ("factor_layer", config.factor_layer)):
        if value is not None:
            raise ConfigError(f"model.{key} is for decoder-only backbones; {backbone.name!r} is an encoder-decoder")
    return Seq2SeqSIT(config, backbone, objective, sources=sources)


def make_collator(model: Seq2SeqSIT, tokenizer: Any, tasks: Sequence[str], max_source_len: int,
                  max_target_len: int, max_instruction_len: int, source_recon_len: int,
                  sources: Sequence[str] = (), chat_template: str = "none") -> Seq2SeqCollator:
    """The collator of ``model``'s architecture (arguments as :class:`~sit_nlp.data.batching.Seq2SeqCollator`'s;
    ``chat_template``: ``data.chat_template``, for a decoder-only model; an encoder-decoder refuses ``always``
    and ignores ``auto``)."""
    if is_decoder_only(model):
        from sit_nlp.data.decoder_batching import DecoderCollator

        return DecoderCollator(tokenizer, tasks, max_source_len, max_target_len, max_instruction_len,
                               source_recon_len, sources=sources, chat_template=chat_template)
    if chat_template == "always":
        raise ConfigError("data.chat_template: always is for decoder-only backbones (use auto or none)")
    return Seq2SeqCollator(tokenizer, model.backbone.config.decoder_start_token_id, tasks, max_source_len,
                           max_target_len, max_instruction_len, source_recon_len, sources=sources)
