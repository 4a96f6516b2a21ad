"""From instruction records to padded batches: formatting, tokenising, length-grouped sampling.

* :func:`format_source` is the one place that turns a record into the encoder's input text
  (training, generation and rank classification all use it).
* :class:`Seq2SeqCollator` tokenises records and pads dynamically (to the longest item of the batch).
  A batch (``B`` items, ``U`` distinct instructions in it) holds:

  ======================================  ============  ===============================================
  ``input_ids``, ``attention_mask``       ``(B, T)``    instruction-formatted source
  ``labels``                              ``(B, T_y)``  target ids + eos, ``-100`` on padding
  ``decoder_input_ids``                   ``(B, T_y)``  ``[start] + labels[:-1]``, padding = pad id
  ``instruction_ids``, ``instruction_mask`` ``(U, L)``  the distinct instructions of the batch
  ``instruction_index``                   ``(B,)``      row of each item's instruction in ``instruction_ids``
  ``source_labels``                       ``(B, S)``    the raw input, truncated, + eos; ``-100`` padding
  ``source_decoder_input_ids``            ``(B, S)``    ``[start] + source_labels[:-1]``
  ``task_ids``                            ``(B,)``      index of the item's task in the collator's task list
  ``input_only_ids``, ``input_only_mask`` ``(B, T_x)``  the input alone (no instruction), special tokens
                                                        included: ``model.factor_input: input`` reads it
  ``dataset_ids``                         ``(B,)``      index of the item's data source in the collator's
                                                        source list (``-1``: a source it does not know)
  ======================================  ============  ===============================================

* :class:`LengthGroupedBatchSampler` yields this process's batches of one epoch: a seeded permutation,
  cut into windows of ``group_size`` batches, each sorted by length (so padding is small) and cut into
  batches, then the batch order shuffled; rank ``r`` of ``w`` processes takes batches ``r, r + w, ...``
  (the same count on every rank). ``(seed, epoch)`` fixes everything, which is what makes resuming exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedTokenizerBase

from sit_nlp.data.records import InstructionRecord

__all__ = [
    "LengthGroupedBatchSampler",
    "Seq2SeqCollator",
    "SourceCoveringBatchSampler",
    "TokenizedExample",
    "format_source",
    "shift_right",
]


def format_source(record: InstructionRecord) -> str:
    """The encoder's input text: instruction, then the input, then the options (multiple choice)."""
    text = record.instruction.strip()
    if record.input.strip():
        text += "\n\nInput: " + record.input.strip()
    if record.options:
        text += "\n\nOptions: " + ", ".join(record.options)
    return text


def shift_right(labels: Tensor, start_id: int, pad_id: int) -> Tensor:
    """``[start] + labels[:, :-1]`` with ``-100`` replaced by ``pad_id`` (teacher forcing input)."""
    out = labels.new_full(labels.shape, pad_id)
    out[:, 1:] = labels[:, :-1]
    out[:, 0] = start_id
    return out.masked_fill(out == -100, pad_id)


@dataclass(frozen=True)
class TokenizedExample:
    source: list[int]
    target: list[int]
    instruction: list[int]
    raw_input: list[int]
    task_id: int
    input_only: Sequence[int] = ()  # the input alone, with the tokenizer's special tokens
    source_id: int = -1  # the record's data source (index in the collator's source list; -1: unknown)

    @property
    def length(self) -> int:
        return len(self.source) + len(self.target)


class Seq2SeqCollator:
    """Tokenise records once (:meth:`tokenize`) and pad lists of them into batches (``__call__``).

    Arguments:
        tokenizer: the backbone's tokenizer.
        decoder_start_id: first decoder input token (the backbone's ``decoder_start_token_id``).
        tasks: task names; ``task_ids`` index this list (an unknown task gets ``-1``).
        max_source_len, max_target_len, max_instruction_len, source_recon_len: truncation lengths.
        sources: data-source names (records' ``dataset``); ``dataset_ids`` index this list (unknown: ``-1``).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        decoder_start_id: int,
        tasks: Sequence[str] = (),
        max_source_len: int = 512,
        max_target_len: int = 128,
        max_instruction_len: int = 64,
        source_recon_len: int = 64,
        sources: Sequence[str] = (),
    ) -> None:
        self.tokenizer = tokenizer
        self.pad_id = int(tokenizer.pad_token_id)
        eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        self.eos_id = int(eos)
        self.start_id = int(decoder_start_id)
        self.task_index = {t: i for i, t in enumerate(tasks)}
        self.source_index = {d: i for i, d in enumerate(sources)}
        self.max_source_len = max_source_len
        self.max_target_len = max_target_len
        self.max_instruction_len = max_instruction_len
        self.source_recon_len = source_recon_len

    def _plain(self, texts: list[str], max_len: int) -> list[list[int]]:
        """Token ids without special tokens, truncated to ``max_len - 1``, then eos."""
        # verbose=False: long raw inputs are truncated right here, the tokenizer's length warning is noise
        ids = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return [[*x[: max_len - 1], self.eos_id] for x in ids]

    def tokenize(self, records: Sequence[InstructionRecord]) -> list[TokenizedExample]:
        sources = self.tokenizer(
            [format_source(r) for r in records], truncation=True, max_length=self.max_source_len
        )["input_ids"]
        instructions = self.tokenizer(
            [r.instruction.strip() for r in records], truncation=True, max_length=self.max_instruction_len
        )["input_ids"]
        targets = self._plain([r.output for r in records], self.max_target_len)
        raw = self._plain([r.input.strip() for r in records], self.source_recon_len)
        alone = self.tokenizer(
            [r.input.strip() for r in records], truncation=True, max_length=self.max_source_len
        )["input_ids"]
        return [
            TokenizedExample(list(s), t, list(i), x, self.task_index.get(r.task, -1), list(a),
                             self.source_index.get(r.dataset or "", -1))
            for s, t, i, x, a, r in zip(sources, targets, instructions, raw, alone, records, strict=True)
        ]

    def _pad(self, seqs: Sequence[Sequence[int]], value: int) -> Tensor:
        width = max(len(s) for s in seqs)
        out = torch.full((len(seqs), width), value, dtype=torch.long)
        for row, s in enumerate(seqs):
            out[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        return out

    def pad_instructions(self, instructions: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """``(U, L)`` ids and attention mask of a list of tokenised instructions."""
        ids = self._pad(instructions, self.pad_id)
        mask = self._pad([[1] * len(s) for s in instructions], 0)
        return ids, mask

    def __call__(self, examples: Sequence[TokenizedExample]) -> dict[str, Tensor]:
        input_ids = self._pad([e.source for e in examples], self.pad_id)
        attention_mask = self._pad([[1] * len(e.source) for e in examples], 0)
        labels = self._pad([e.target for e in examples], -100)
        source_labels = self._pad([e.raw_input for e in examples], -100)
        alone = [list(e.input_only) or [self.eos_id] for e in examples]
        distinct: dict[tuple[int, ...], int] = {}
        index = [distinct.setdefault(tuple(e.instruction), len(distinct)) for e in examples]
        instruction_ids, instruction_mask = self.pad_instructions([list(k) for k in distinct])
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "decoder_input_ids": shift_right(labels, self.start_id, self.pad_id),
            "instruction_ids": instruction_ids,
            "instruction_mask": instruction_mask,
            "instruction_index": torch.as_tensor(index, dtype=torch.long),
            "source_labels": source_labels,
            "source_decoder_input_ids": shift_right(source_labels, self.start_id, self.pad_id),
            "task_ids": torch.as_tensor([e.task_id for e in examples], dtype=torch.long),
            "input_only_ids": self._pad(alone, self.pad_id),
            "input_only_mask": self._pad([[1] * len(a) for a in alone], 0),
            "dataset_ids": torch.as_tensor([e.source_id for e in examples], dtype=torch.long),
        }


class LengthGroupedBatchSampler:
    """Seeded, length-grouped, rank-sharded batches of indices (see the module docstring).

    Arguments:
        lengths: length of every example (source + target tokens).
        batch_size: items per batch.
        seed: base seed; epoch ``e`` uses ``numpy.random.default_rng([seed, e])``.
        group_size: batches per sorting window (1 = no length grouping).
        rank, world_size: this process and the number of processes.
        drop_last: drop the last incomplete batch (keeps every batch the same size).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int = 0,
        group_size: int = 50,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError("need batch_size >= 1 and 0 <= rank < world_size")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_size = max(1, group_size)
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        if len(self) == 0:
            raise ValueError(
                f"{len(self.lengths)} examples make no batch of {batch_size} on each of {world_size} processes"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        window = self.batch_size * self.group_size
        batches: list[np.ndarray] = []
        for start in range(0, len(order), window):
            chunk = order[start : start + window]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __len__(self) -> int:
        n = len(self.lengths) // self.batch_size if self.drop_last else -(-len(self.lengths) // self.batch_size)
        return n // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches()
        per_rank = len(batches) // self.world_size
        for i in range(per_rank):
            yield batches[i * self.world_size + self.rank].tolist()


class SourceCoveringBatchSampler:
    """Seeded, rank-sharded batches in which every task present holds ``min(k, K_t)`` data sources
    (:func:`sit_causal.selection.batches.source_covering_batches`; ``K_t``: the sources of task ``t``), the
    contract of the objective's invariance term. The same interface as :class:`LengthGroupedBatchSampler`;
    batches hold at most ``batch_size`` examples (whole per-task blocks, so some hold fewer).

    Arguments:
        task_ids, source_ids: ``(N,)`` task and data source of every example.
        batch_size: the most items per batch.
        k: sources per task in a batch.
        seed: base seed; epoch ``e`` uses ``numpy.random.default_rng([seed, e])``.
        rank, world_size: this process and the number of processes.
    """

    def __init__(self, task_ids: Sequence[int], source_ids: Sequence[int], batch_size: int, k: int = 2,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1 or k < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError("need batch_size >= 1, k >= 1 and 0 <= rank < world_size")
        self.task_ids, self.source_ids = np.asarray(task_ids), np.asarray(source_ids)
        self.batch_size, self.k, self.seed = batch_size, k, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        if len(self) == 0:
            raise ValueError(f"{len(self.task_ids)} examples make no batch on each of {world_size} processes")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[np.ndarray]:
        from sit_causal.selection.batches import source_covering_batches

        rng = np.random.default_rng([self.seed, self.epoch])
        return source_covering_batches(self.task_ids, self.source_ids, self.batch_size, self.k, rng=rng)

    def __len__(self) -> int:
        return len(self._all_batches()) // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches()
        per_rank = len(batches) // self.world_size
        for i in range(per_rank):
            yield batches[i * self.world_size + self.rank].tolist()
