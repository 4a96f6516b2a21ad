"""Batches that hold several data sources of every task they contain (the contract of the invariance term).

The invariance term of the SIT objective (:func:`sit_causal.objective.vrex_penalty`,
:func:`sit_causal.objective.irm_penalty`) compares a task's risk across its sources **within a batch**; a
batch that holds one source of a task says nothing about that task's invariance. :func:`source_covering_batches`
partitions a dataset (task id and source id per example) into batches in which every task present holds
examples of at least ``min(k, K_t)`` distinct sources (``K_t``: the number of sources of task ``t`` in the
dataset); :func:`sources_per_task` reads the count back (a collator or a test checks the contract with it).

Construction (one epoch, seeded): each (task, source) group is shuffled; each task is cut into **blocks** of
``k_t = min(k, K_t)`` distinct sources, ``per_source`` examples from each (the sources with the most examples
left first, so the sources deplete evenly); where only fewer than ``k_t`` of a task's sources have examples
left, those examples join the task's previous block (which already holds ``k_t`` sources), so every example is
used exactly once. The blocks are shuffled and packed greedily, in order, into batches of at most
``batch_size`` examples (a block larger than ``batch_size`` is a batch of its own). A block never spans two
batches, so the guarantee holds per batch.
"""

from __future__ import annotations

import numpy as np

__all__ = ["source_covering_batches", "sources_per_task"]


def sources_per_task(batch: np.ndarray, task_ids: np.ndarray, source_ids: np.ndarray) -> dict[int, int]:
    """``{task: number of distinct sources}`` among the examples ``batch`` (indices into the id arrays)."""
    batch = np.asarray(batch, dtype=np.int64)
    t, e = np.asarray(task_ids)[batch], np.asarray(source_ids)[batch]
    return {int(task): int(np.unique(e[t == task]).size) for task in np.unique(t)}


def source_covering_batches(task_ids: np.ndarray, source_ids: np.ndarray, batch_size: int, k: int = 2,
                            per_source: int | None = None, seed: int = 0,
                            rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """One epoch of batches (index arrays into the dataset) in which every task present holds at least
    ``min(k, K_t)`` sources (module docstring); together the batches are a partition of ``range(N)``.

    Arguments:
        task_ids, source_ids: ``(N,)`` integer task and source of each example (a source id need only be
            unique within its task).
        batch_size: the most examples of a batch (exceeded only by a single block larger than it).
        k: sources each task must hold in a batch (``>= 1``), capped by the task's number of sources.
        per_source: examples per source in a block (default ``max(1, batch_size // (4 k))``: about four
            task blocks per batch).
        seed: seeds the shuffles when ``rng`` is not given.
        rng: an explicit generator (overrides ``seed``).
    """
    task_ids = np.asarray(task_ids, dtype=np.int64)
    source_ids = np.asarray(source_ids, dtype=np.int64)
    if task_ids.ndim != 1 or source_ids.shape != task_ids.shape:
        raise ValueError("task_ids and source_ids must both be (N,)")
    if batch_size < 1 or k < 1:
        raise ValueError("batch_size and k must be >= 1")
    q = max(1, batch_size // (4 * k)) if per_source is None else int(per_source)
    if q < 1:
        raise ValueError("per_source must be >= 1")
    gen = rng if rng is not None else np.random.default_rng(seed)
    blocks: list[np.ndarray] = []
    for task in np.unique(task_ids):
        rows = np.flatnonzero(task_ids == task)
        queues = [gen.permutation(rows[source_ids[rows] == e]).tolist() for e in np.unique(source_ids[rows])]
        k_t = min(k, len(queues))
        task_blocks: list[list[int]] = []
        while True:
            left = np.array([len(qu) for qu in queues])
            live = np.flatnonzero(left > 0)
            if live.size == 0:
                break
            if live.size < k_t:  # too few sources left for a block of its own: join the previous block
                tail = [i for s in live for i in queues[s]]
                for s in live:
                    queues[s] = []
                if task_blocks:
                    task_blocks[-1] += tail
                else:  # pragma: no cover - a task with k_t sources always has a first block
                    task_blocks.append(tail)
                continue
            # the k_t sources with the most examples left (ties in a random order)
            tiebreak = gen.permutation(live.size)
            chosen = live[np.lexsort((tiebreak, -left[live]))][:k_t]
            block: list[int] = []
            for s in chosen:
                block += queues[s][:q]
                queues[s] = queues[s][q:]
            task_blocks.append(block)
        blocks += [np.asarray(b, dtype=np.int64) for b in task_blocks]
    batches: list[np.ndarray] = []
    current: list[np.ndarray] = []
    size = 0
    for b in (blocks[i] for i in gen.permutation(len(blocks))):
        if current and size + b.size > batch_size:
            batches.append(np.concatenate(current))
            current, size = [], 0
        current.append(b)
        size += b.size
    if current:
        batches.append(np.concatenate(current))
    return batches
