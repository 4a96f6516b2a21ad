"""An offline tokenizer for randomly initialised backbones: byte-level BPE trained on the mixture itself.

Randomly initialised presets (``bart-base-random``, ``bart-large-random``) have no pretrained vocabulary,
and nothing may come from a model hub: ``sit-nlp train`` trains this tokenizer on its training records
(instruction, input and output of every record) and saves it beside the run (``OUT/tokenizer/``), or takes
one given as ``model.tokenizer=DIR`` (built once with ``sit-nlp data tokenizer``). Special tokens and ids
are those of the tiny presets: ``<pad>`` = 0, ``<s>`` = 1, ``</s>`` = 2, ``<unk>`` = 3; every encoded
sequence ends with ``</s>``. Training is deterministic: the same texts give the same vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sit_nlp.data.records import InstructionRecord

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = ["SPECIAL_TOKENS", "load_tokenizer", "record_texts", "train_bpe_tokenizer"]

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


def record_texts(records: Sequence[InstructionRecord]) -> Iterable[str]:
    """The texts a tokenizer for these records must cover: every instruction, input, output and option."""
    for r in records:
        yield r.instruction
        yield r.input
        yield r.output
        yield from r.options or ()


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, max_length: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE of (at most) ``vocab_size`` entries trained on ``texts`` (every byte is in the
    alphabet, so no text is ever out of vocabulary), wrapped as a Hugging Face fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size must be >= {len(SPECIAL_TOKENS) + 256} (specials + bytes), got {vocab_size}")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=max_length)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """A tokenizer folder saved by ``save_pretrained`` (for example ``OUT/tokenizer``); one-line error."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise ValueError(f"{path}: not a tokenizer folder (no tokenizer.json)")
    return AutoTokenizer.from_pretrained(str(path))
