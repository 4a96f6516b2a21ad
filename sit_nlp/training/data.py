"""The training data: tokenised records, the task bank, the stream of batches, the run's tokenizer.

:func:`check_data_files` checks the files a run reads before any work; :func:`run_tokenizer` gives the
tokenizer of a randomly initialised preset; :func:`build_task_bank` the distinct training instructions
whose masks feed the structural terms; :class:`DataStream` this process's length-grouped, sharded batches,
epoch after epoch, with a position that checkpoints save and ``--resume`` restores.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor

from sit_nlp.data.batching import (
    LengthGroupedBatchSampler,
    Seq2SeqCollator,
    SourceCoveringBatchSampler,
    TokenizedExample,
)
from sit_nlp.data.records import InstructionRecord, resolve_data_path
from sit_nlp.model.seq2seq import TaskBank
from sit_nlp.training.config import Config, ConfigError

__all__ = ["DataStream", "build_task_bank", "check_data_files", "run_tokenizer"]


def build_task_bank(records: Sequence[InstructionRecord], collator: Seq2SeqCollator, size: int) -> TaskBank | None:
    """Distinct (task, instruction) pairs of the training records, sorted, at most ``size`` (round-robin
    over tasks so every task is represented before any gets a second instruction); ``size = 0``: none."""
    if size <= 0:
        return None
    per_task: dict[str, list[str]] = {}
    for r in records:
        text = r.instruction.strip()
        if text not in per_task.setdefault(r.task, []):
            per_task[r.task].append(text)
    rows: list[tuple[str, str]] = []
    depth = 0
    while len(rows) < size and any(len(v) > depth for v in per_task.values()):
        rows += [(t, v[depth]) for t, v in sorted(per_task.items()) if len(v) > depth][: size - len(rows)]
        depth += 1
    tokenized = collator.tokenizer(
        [i for _, i in rows], truncation=True, max_length=collator.max_instruction_len
    )["input_ids"]
    ids, mask = collator.pad_instructions(tokenized)
    task_ids = torch.as_tensor([collator.task_index.get(t, -1) for t, _ in rows], dtype=torch.long)
    return TaskBank(ids=ids, mask=mask, task_ids=task_ids, tasks=[t for t, _ in rows],
                    instructions=[i for _, i in rows])


class DataStream:
    """Endless stream of this process's collated batches, epoch after epoch, with a resumable position."""

    def __init__(self, examples: list[TokenizedExample], collator: Seq2SeqCollator,
                 sampler: LengthGroupedBatchSampler | SourceCoveringBatchSampler) -> None:
        self.examples, self.collator, self.sampler = examples, collator, sampler
        self.epoch, self.position = 0, 0
        self._batches: list[list[int]] | None = None

    def next_batch(self) -> dict[str, Tensor]:
        """The next collated batch; past the last batch of an epoch, the first of the next (reshuffled)."""
        if self._batches is None:
            self.sampler.set_epoch(self.epoch)
            self._batches = list(self.sampler)
        if self.position >= len(self._batches):
            self.epoch, self.position, self._batches = self.epoch + 1, 0, None
            return self.next_batch()
        batch = self._batches[self.position]
        self.position += 1
        return self.collator([self.examples[i] for i in batch])

    def state_dict(self) -> dict[str, int]:
        """The position: epoch, batches consumed in it, the sampler's seed."""
        return {"epoch": self.epoch, "position": self.position, "sampler_seed": self.sampler.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a position saved by :meth:`state_dict`."""
        self.epoch, self.position, self._batches = int(state["epoch"]), int(state["position"]), None
        self.sampler.seed = int(state["sampler_seed"])


def run_tokenizer(cfg: Config, records: Sequence[InstructionRecord], accelerator: Accelerator) -> Any:
    """The tokenizer of a randomly initialised preset: ``model.tokenizer`` if given; else ``OUT/tokenizer``
    (a resumed run's), else a byte-level BPE of ``model.tokenizer_vocab`` entries trained on the training
    records by the main process and saved to ``OUT/tokenizer`` (deterministic; the other processes load it)."""
    from sit_nlp.data.tokenizer import load_tokenizer, record_texts, train_bpe_tokenizer

    if cfg.model.tokenizer is not None:
        try:
            return load_tokenizer(cfg.model.tokenizer)
        except (OSError, ValueError) as err:
            raise ConfigError(f"model.tokenizer: {str(err).splitlines()[0]}") from None
    saved = Path(cfg.train.out_dir) / "tokenizer"
    if accelerator.is_main_process and not (saved / "tokenizer.json").is_file():
        tok = train_bpe_tokenizer(record_texts(records), cfg.model.tokenizer_vocab)
        tmp = saved.with_name("tokenizer.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tok.save_pretrained(str(tmp))
        os.replace(tmp, saved)
    accelerator.wait_for_everyone()
    return load_tokenizer(saved)


def check_data_files(cfg: Config) -> None:
    """The data files the run reads exist and are files (one-line :class:`ConfigError` otherwise)."""
    for key, name in (("data.train_file", cfg.data.train_file), ("data.eval_file", cfg.data.eval_file)):
        if name is None:
            continue
        path = resolve_data_path(name)
        if not path.is_file():
            raise ConfigError(f"{key} {name}: {'is a folder, not a file' if path.is_dir() else 'no such file'}")
