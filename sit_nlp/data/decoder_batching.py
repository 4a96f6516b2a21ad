"""Batches for a decoder-only (causal) language model: prompt and answer, one sequence.

The model reads one sequence, the **prompt** (instruction and input, :func:`format_prompt`) followed by
the **answer** (the record's output, then eos). The prompt is never a target: only the answer tokens enter
the target loss, as TRL's ``SFTTrainer`` does with its completion-only loss.

A batch (``B`` items; ``T_p`` the longest prompt, ``T_a`` the longest answer with its eos) holds the keys of
:class:`sit_nlp.data.batching.Seq2SeqCollator`, with these three laid out for a causal LM:

======================================  ============  ===============================================
``input_ids``, ``attention_mask``       ``(B, T_p)``  the prompt, **left**-padded: ``[bos] + prompt``
                                                      (no eos), so every prompt ends in the last column
``labels``                              ``(B, T_a)``  the answer tokens + eos, ``-100`` on padding
                                                      (right-padded)
``decoder_input_ids``                   ``(B, T_a)``  the same tokens with pad for ``-100``: the answer
                                                      as the model's input
======================================  ============  ===============================================

The sequence the language model reads is ``[prompt | decoder_input_ids[:, :-1]]`` ``(B, T_p + T_a - 1)``,
and the logits of its last ``T_a`` positions predict ``labels`` (the last prompt position predicts the
first answer token): ``labels[:, j]`` is aligned with logit ``T_p - 1 + j``, as a seq2seq model's labels are
aligned with its decoder logits. :meth:`DecoderCollator.sequence_labels` gives the same targets in the
Hugging Face convention (one label per sequence position, ``-100`` on every prompt position, the model
shifting by one).

Position ids are ``cumsum(mask) - 1`` over the concatenated mask, so left padding does not move them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from sit_nlp.data.batching import Seq2SeqCollator, TokenizedExample, format_source
from sit_nlp.data.records import InstructionRecord

__all__ = ["ANSWER_CUE", "DecoderCollator", "format_prompt", "position_ids"]

ANSWER_CUE = "\n\nAnswer:"
"""What ends every prompt; the answer follows after one space."""


def format_prompt(record: InstructionRecord) -> str:
    """The prompt text: :func:`sit_nlp.data.batching.format_source` (instruction, input, options), then
    :data:`ANSWER_CUE`."""
    return format_source(record) + ANSWER_CUE


def position_ids(mask: Tensor) -> Tensor:
    """Position ids ``(B, T)`` of a (left- or right-) padded attention mask ``(B, T)``: ``cumsum(mask) - 1``,
    0 on padding."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


class DecoderCollator(Seq2SeqCollator):
    """Tokenise records for a causal LM and pad them into batches laid out as the module docstring says.

    Arguments as :class:`~sit_nlp.data.batching.Seq2SeqCollator`, without ``decoder_start_id``: the
    source decoder starts from the tokenizer's bos (its eos when it has none), and prompts start with bos
    when the tokenizer has one. ``max_source_len`` bounds the prompt (bos included), ``max_target_len`` the
    answer (eos included).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        tasks: Sequence[str] = (),
        max_source_len: int = 512,
        max_target_len: int = 128,
        max_instruction_len: int = 64,
        source_recon_len: int = 64,
        sources: Sequence[str] = (),
    ) -> None:
        bos = tokenizer.bos_token_id
        eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        start = bos if bos is not None else eos
        super().__init__(tokenizer, int(start), tasks, max_source_len, max_target_len, max_instruction_len,
                         source_recon_len, sources)
        self.bos_id = None if bos is None else int(bos)

    def tokenize(self, records: Sequence[InstructionRecord]) -> list[TokenizedExample]:
        """Prompt ``[bos] + format_prompt(record)`` (truncated to ``max_source_len``), answer
        ``" " + output`` + eos (truncated to ``max_target_len``); the other fields as the seq2seq collator's."""
        base = super().tokenize(records)
        head = [] if self.bos_id is None else [self.bos_id]
        texts = self.tokenizer([format_prompt(r) for r in records], add_special_tokens=False,
                               verbose=False)["input_ids"]
        prompts = [[*head, *x][: self.max_source_len] for x in texts]
        answers = self._plain([" " + r.output.strip() for r in records], self.max_target_len)
        return [TokenizedExample(p, a, e.instruction, e.raw_input, e.task_id, e.input_only, e.source_id)
                for p, a, e in zip(prompts, answers, base, strict=True)]

    def _pad_left(self, seqs: Sequence[Sequence[int]], value: int) -> Tensor:
        width = max(len(s) for s in seqs)
        out = torch.full((len(seqs), width), value, dtype=torch.long)
        for row, s in enumerate(seqs):
            if s:
                out[row, width - len(s):] = torch.as_tensor(s, dtype=torch.long)
        return out

    def __call__(self, examples: Sequence[TokenizedExample]) -> dict[str, Tensor]:
        batch = super().__call__(examples)
        batch["input_ids"] = self._pad_left([e.source for e in examples], self.pad_id)
        batch["attention_mask"] = self._pad_left([[1] * len(e.source) for e in examples], 0)
        batch["decoder_input_ids"] = batch["labels"].masked_fill(batch["labels"] == -100, self.pad_id)
        return batch

    @staticmethod
    def sequence(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The sequence the language model reads and its attention mask, ``(B, T_p + T_a - 1)``:
        ``[prompt | answer tokens without the last label column]``."""
        ids = torch.cat([batch["input_ids"], batch["decoder_input_ids"][:, :-1]], dim=1)
        mask = torch.cat([batch["attention_mask"], (batch["labels"] != -100)[:, :-1].long()], dim=1)
        return ids, mask

    @staticmethod
    def sequence_labels(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """The batch in the Hugging Face convention: ``(ids, mask, labels)``, each ``(B, T_p + T_a)``, the
        sequence ``[prompt | answer + eos]`` and its labels: ``-100`` on every prompt and padding position,
        the answer's own tokens elsewhere (a causal LM's ``forward(labels=...)`` shifts them by one)."""
        labels = torch.cat([torch.full_like(batch["input_ids"], -100), batch["labels"]], dim=1)
        ids = torch.cat([batch["input_ids"], batch["decoder_input_ids"]], dim=1)
        mask = torch.cat([batch["attention_mask"], (batch["labels"] != -100).long()], dim=1)
        return ids, mask, labels
