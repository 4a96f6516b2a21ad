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

**Chat templates** (``data.chat_template``, :func:`uses_chat_template`; TRL's SFT convention for a prompt and a
completion). With a template the prompt is the tokenizer's own rendering of one user turn holding
:func:`sit_nlp.data.batching.format_source` (instruction, input, options) followed by the assistant header,
``apply_chat_template([{"role": "user", "content": source}], add_generation_prompt=True)`` (the template puts
its own bos, if any, and no other bos is added), and the answer is ``output`` (no leading space, as the
template renders an assistant turn) followed by the template's end-of-turn token (:func:`chat_end_id`;
SmolLM2 and Qwen: ``<|im_end|>``) as its eos, so ``prompt + answer`` are the ids of the whole rendered
conversation up to its end-of-turn token. A prompt longer than ``max_source_len`` keeps its head and the
assistant header. ``auto`` (the config's default) applies the template when the tokenizer has one and keeps
the plain prompt otherwise; ``none`` always keeps the plain prompt; ``always`` refuses a tokenizer without one.
Generation stops at the end-of-turn token or eos (:attr:`DecoderCollator.stop_ids`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from sit_nlp.data.batching import Seq2SeqCollator, TokenizedExample, format_source
from sit_nlp.data.records import InstructionRecord
from sit_nlp.model.config import ConfigError

__all__ = [
    "ANSWER_CUE",
    "CHAT_TEMPLATE_CHOICES",
    "ChatTemplate",
    "DecoderCollator",
    "chat_end_id",
    "chat_messages",
    "format_prompt",
    "has_chat_template",
    "position_ids",
    "uses_chat_template",
]

ChatTemplate = Literal["auto", "none", "always"]
CHAT_TEMPLATE_CHOICES: tuple[str, ...] = get_args(ChatTemplate)

ANSWER_CUE = "\n\nAnswer:"
"""What ends every prompt; the answer follows after one space."""


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether ``tokenizer`` carries a chat template (``tokenizer.chat_template``, a Jinja string)."""
    return bool(getattr(tokenizer, "chat_template", None))


def uses_chat_template(tokenizer: PreTrainedTokenizerBase, setting: str) -> bool:
    """Whether prompts are rendered with the tokenizer's chat template under ``data.chat_template = setting``:
    ``auto`` when the tokenizer has one, ``none`` never, ``always`` always (a tokenizer without a template is
    then a one-line :class:`~sit_nlp.model.config.ConfigError`)."""
    if setting not in CHAT_TEMPLATE_CHOICES:
        raise ConfigError(f"data.chat_template: {setting!r} is not one of {', '.join(CHAT_TEMPLATE_CHOICES)}")
    found = has_chat_template(tokenizer)
    if setting == "always" and not found:
        raise ConfigError(f"data.chat_template: always, but the tokenizer ({type(tokenizer).__name__}) has no chat "
                          "template; use auto or none")
    return setting == "always" or (setting == "auto" and found)


def chat_messages(record: InstructionRecord) -> list[dict[str, str]]:
    """The conversation a chat template renders as the prompt: one user turn holding
    :func:`sit_nlp.data.batching.format_source` (instruction, input, options)."""
    return [{"role": "user", "content": format_source(record)}]


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
    return str(text)


def format_prompt(record: InstructionRecord, tokenizer: PreTrainedTokenizerBase | None = None,
                  chat: bool = False) -> str:
    """The prompt text. Plain (``chat=False``): :func:`sit_nlp.data.batching.format_source` (instruction,
    input, options), then :data:`ANSWER_CUE`. With ``chat=True``: ``tokenizer``'s chat template rendering
    :func:`chat_messages` with the generation prompt (the assistant header), special tokens written out."""
    if not chat:
        return format_source(record) + ANSWER_CUE
    if tokenizer is None:
        raise ValueError("format_prompt(chat=True) needs the tokenizer whose chat template renders the prompt")
    return _render(tokenizer, chat_messages(record), generation_prompt=True)


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The tokenizer's special tokens: the named ones and every added token marked special (``<|eot_id|>``)."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(tokenizer.all_special_ids) | {int(i) for i, t in added.items() if getattr(t, "special", False)}


def chat_end_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token a chat template ends an assistant turn with: the first special token (``<|im_end|>``,
    ``<|eot_id|>``, ``<end_of_turn>``, ``</s>``) after the answer in the rendering of ``[user, assistant]``,
    with only whitespace before it; else the tokenizer's eos."""
    answer = "SITANSWER"
    text = _render(tokenizer, [{"role": "user", "content": "question"}, {"role": "assistant", "content": answer}],
                   generation_prompt=False)
    after = text.split(answer, 1)[1] if answer in text else ""
    special = _special_ids(tokenizer)
    for token in _ids(tokenizer, after) if after else []:
        if token in special:
            return int(token)
        if tokenizer.decode([token]).strip():
            break
    if tokenizer.eos_token_id is None:
        raise ConfigError("data.chat_template: the template ends a turn with no special token and the tokenizer "
                          "has no eos; use data.chat_template: none")
    return int(tokenizer.eos_token_id)


def position_ids(mask: Tensor) -> Tensor:
    """Position ids ``(B, T)`` of a (left- or right-) padded attention mask ``(B, T)``: ``cumsum(mask) - 1``,
    0 on padding."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


class DecoderCollator(Seq2SeqCollator):
    """Tokenise records for a causal LM and pad them into batches laid out as the module docstring says.

    Arguments as :class:`~sit_nlp.data.batching.Seq2SeqCollator`, without ``decoder_start_id``: the
    source decoder starts from the tokenizer's bos (its eos when it has none), and plain prompts start with bos
    when the tokenizer has one. ``max_source_len`` bounds the prompt (bos included), ``max_target_len`` the
    answer (eos included). ``chat_template``: ``auto``, ``none`` (the default here: plain prompts) or
    ``always``, as ``data.chat_template`` (module docstring); :attr:`chat` says whether a template is applied.
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
        chat_template: str = "none",
    ) -> None:
        bos = tokenizer.bos_token_id
        eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        start = bos if bos is not None else eos
        super().__init__(tokenizer, int(start), tasks, max_source_len, max_target_len, max_instruction_len,
                         source_recon_len, sources)
        self.bos_id = None if bos is None else int(bos)
        self.chat = uses_chat_template(tokenizer, chat_template)
        self.answer_end_id = chat_end_id(tokenizer) if self.chat else self.eos_id
        self.header_len = 0  # tokens of the template's assistant header, kept when a chat prompt is truncated
        if self.chat:
            probe = [{"role": "user", "content": "question"}]
            self.header_len = max(0, len(_ids(tokenizer, _render(tokenizer, probe, True)))
                                  - len(_ids(tokenizer, _render(tokenizer, probe, False))))

    @property
    def stop_ids(self) -> list[int] | None:
        """The token ids generation stops at with a chat template, ``[end of turn, eos]`` (one when they are the
        same); ``None`` for plain prompts (the model's own eos)."""
        if not self.chat:
            return None
        return list(dict.fromkeys([self.answer_end_id, self.eos_id]))

    def _truncate_chat(self, ids: list[int]) -> list[int]:
        """A chat prompt cut to ``max_source_len``: its head and its last :attr:`header_len` tokens (the
        assistant header the answer follows)."""
        if len(ids) <= self.max_source_len:
            return ids
        keep = min(self.header_len, self.max_source_len)
        return [*ids[: self.max_source_len - keep], *ids[len(ids) - keep:]]

    def tokenize(self, records: Sequence[InstructionRecord]) -> list[TokenizedExample]:
        """Plain: prompt ``[bos] + format_prompt(record)`` (truncated to ``max_source_len``), answer
        ``" " + output`` + eos (truncated to ``max_target_len``). With a chat template: prompt the template's
        rendering (:func:`format_prompt` with ``chat=True``; head and assistant header kept when truncated),
        answer ``output`` + the end-of-turn token. The other fields as the seq2seq collator's."""
        base = super().tokenize(records)
        texts = self.tokenizer([format_prompt(r, self.tokenizer, self.chat) for r in records],
                               add_special_tokens=False, verbose=False)["input_ids"]
        if self.chat:
            prompts = [self._truncate_chat(list(x)) for x in texts]
            outputs = self.tokenizer([r.output.strip() for r in records], add_special_tokens=False,
                                     verbose=False)["input_ids"]
            answers = [[*x[: self.max_target_len - 1], self.answer_end_id] for x in outputs]
        else:
            head = [] if self.bos_id is None else [self.bos_id]
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
