"""Batching: formatting, dynamic padding and shifting, length-grouped seeded sharded batches."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sit_nlp.data.batching import LengthGroupedBatchSampler, Seq2SeqCollator, format_source, shift_right
from sit_nlp.data.records import InstructionRecord
from sit_nlp.model.backbones import tiny_tokenizer


def test_format_source_has_instruction_input_and_options() -> None:
    r = InstructionRecord(task="t", instruction="Pick one.", input="a cat", output="yes", options=("yes", "no"))
    assert format_source(r) == "Pick one.\n\nInput: a cat\n\nOptions: yes, no"


def test_collator_pads_shifts_and_dedups_instructions() -> None:
    tok = tiny_tokenizer()
    col = Seq2SeqCollator(tok, decoder_start_id=2, tasks=["a", "b"], source_recon_len=4)
    recs = [InstructionRecord(task="a", instruction="Copy it.", input="red cat dog", output="red cat dog"),
            InstructionRecord(task="b", instruction="Reverse it.", input="one", output="one"),
            InstructionRecord(task="a", instruction="Copy it.", input="bird", output="bird")]
    b = col(col.tokenize(recs))
    assert b["input_ids"].shape == b["attention_mask"].shape
    assert b["instruction_ids"].shape[0] == 2 and b["instruction_index"].tolist() == [0, 1, 0]
    assert b["task_ids"].tolist() == [0, 1, 0]
    labels = b["labels"]
    assert (labels[labels != -100] >= 0).all() and b["decoder_input_ids"][:, 0].eq(2).all()
    assert torch.equal(b["decoder_input_ids"][:, 1:], labels[:, :-1].masked_fill(labels[:, :-1] == -100, 0))
    assert b["source_labels"].shape[1] <= 4  # truncated source reconstruction (3 tokens + eos)
    assert (b["source_labels"][:, 0] != -100).all()


def test_shift_right() -> None:
    y = torch.tensor([[5, 6, 2, -100]])
    assert shift_right(y, start_id=1, pad_id=0).tolist() == [[1, 5, 6, 2]]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(20, 200), batch=st.integers(1, 8), world=st.integers(1, 3), seed=st.integers(0, 5),
       epoch=st.integers(0, 3))
def test_sampler_shards_are_disjoint_equal_and_reproducible(n: int, batch: int, world: int, seed: int,
                                                            epoch: int) -> None:
    lengths = [(7 * i) % 31 + 1 for i in range(n)]
    if n // batch < world:
        return
    shards = []
    for rank in range(world):
        s = LengthGroupedBatchSampler(lengths, batch, seed=seed, group_size=4, rank=rank, world_size=world)
        s.set_epoch(epoch)
        got = list(s)
        assert len(got) == len(s) and all(len(b) == batch for b in got)
        s2 = LengthGroupedBatchSampler(lengths, batch, seed=seed, group_size=4, rank=rank, world_size=world)
        s2.set_epoch(epoch)
        assert got == list(s2)
        shards.append(got)
    assert len({len(s) for s in shards}) == 1
    flat = [i for s in shards for b in s for i in b]
    assert len(flat) == len(set(flat))


def test_length_grouping_reduces_padding() -> None:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 200, (400,), generator=gen).tolist()

    def padding(group: int) -> int:
        s = LengthGroupedBatchSampler(lengths, 8, seed=1, group_size=group)
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in s)

    assert padding(50) < 0.2 * padding(1)
