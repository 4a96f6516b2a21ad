"""The selection step on a sequence model: find the task-to-factor graph of a trained (or training) SIT.

The same selection step as the synthetic half (:mod:`sit_causal.selection`), fed with a sequence model's
statistic. The factors are channels of the hidden state (``z`` ``(B, T, n, d_f)``); for a training
example ``b`` of task ``t`` the contribution of channel ``j`` to its target log-likelihood, all gates open,
is the squared first-order change of the NLL when the channel is removed
(:meth:`sit_nlp.model.seq2seq.Seq2SeqSIT.factor_contributions`)::

    c_bj = ( sum_{tokens k, dims r} dNLL_b / dz_bkjr * z_bkjr )^2

Then, with **rows = training tasks (the collator's order), columns = factors**:

1. energies ``E = task_factor_energies(c, task_id, m)`` ``(m, n)``, each row summing to 1;
2. the graph ``A0 = graph_from_energies(E, graph.coverage)``: each task keeps the fewest channels that
   carry ``coverage`` of its energy;
3. ``A = repair_to_uic(A0, E, graph.form)``: the nearest graph (one gate flipped at a time) that satisfies
   the UIC (or its orthogonal form);

all from :mod:`sit_causal.selection.graph`. ``examples_per_task`` training examples per task (a seeded
subset, the same on every process) estimate ``E``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sit_causal.selection.graph import GraphRepair, graph_from_energies, repair_to_uic, task_factor_energies
from sit_causal.theory.graph import TaskFactorGraph
from sit_causal.theory.uic import check_uic
from sit_nlp.data.batching import Seq2SeqCollator, TokenizedExample
from sit_nlp.model.config import GraphConfig

__all__ = ["FoundGraph", "energy_examples", "factor_contributions", "find_task_graph", "write_task_graph"]


@dataclass(frozen=True)
class FoundGraph:
    """The selection step's output: ``energies`` ``(m, n)``, the coverage graph ``initial`` and the
    repaired ``adjacency`` (both ``(m, n)`` bool; rows = training tasks, columns = factors), the repair's
    record, and the number of examples of each task that estimated ``E``."""

    energies: np.ndarray
    initial: np.ndarray
    adjacency: np.ndarray
    repair: GraphRepair
    examples: np.ndarray

    def summary(self) -> str:
        closed = 1.0 - float(self.adjacency.mean())
        verdict = "holds" if self.repair.holds else f"fails ({self.repair.violations_after} pairs)"
        return (f"{self.adjacency.shape[0]} tasks x {self.adjacency.shape[1]} factors, {closed:.0%} of the gates "
                f"closed, {len(self.repair.flips)} gates flipped by the repair, the {self.repair.form} "
                f"condition {verdict}")


def energy_examples(examples: list[TokenizedExample], n_tasks: int, per_task: int, seed: int) -> list[int]:
    """Indices of at most ``per_task`` examples of every task (a ``numpy`` generator seeded by ``seed``)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(11,)))
    chosen: list[int] = []
    for t in range(n_tasks):
        rows = [i for i, e in enumerate(examples) if e.task_id == t]
        if len(rows) > per_task:
            rows = sorted(rng.choice(rows, size=per_task, replace=False).tolist())
        chosen += rows
    return chosen


def factor_contributions(model: Any, examples: list[TokenizedExample], collator: Seq2SeqCollator,
                         indices: list[int], batch_size: int, device: Any) -> tuple[np.ndarray, np.ndarray]:
    """Contributions ``(N, n)`` and task ids ``(N,)`` of ``examples[indices]``, ``batch_size`` at a time,
    with the model in its current mode (call in evaluation mode: posterior means, no dropout)."""
    rows: list[np.ndarray] = []
    ids: list[int] = []
    for start in range(0, len(indices), batch_size):
        chunk = [examples[i] for i in indices[start:start + batch_size]]
        batch = {k: v.to(device) for k, v in collator(chunk).items()}
        rows.append(model.factor_contributions(batch).double().cpu().numpy())
        ids += [e.task_id for e in chunk]
    n = model.config.n_factors
    return (np.concatenate(rows) if rows else np.zeros((0, n))), np.asarray(ids, dtype=np.int64)


def find_task_graph(model: Any, examples: list[TokenizedExample], collator: Seq2SeqCollator, tasks: list[str],
                    config: GraphConfig, seed: int, device: Any) -> FoundGraph:
    """The selection step (module docstring) on the training examples; ``tasks`` names the rows."""
    m = len(tasks)
    indices = energy_examples(examples, m, config.examples_per_task, seed)
    with torch.random.fork_rng(devices=[]):
        contributions, task_ids = factor_contributions(model, examples, collator, indices, config.energy_batch_size,
                                                       device)
    energies = task_factor_energies(contributions, task_ids, m)
    initial = graph_from_energies(energies, config.coverage)
    repair = repair_to_uic(initial, energies, form=config.form)
    return FoundGraph(energies=energies, initial=initial, adjacency=repair.adjacency, repair=repair,
                      examples=np.bincount(task_ids, minlength=m))


def write_task_graph(found: FoundGraph, tasks: list[str], out_dir: Path, step: int) -> None:
    """``task_graph.json`` (compact matrix form, rows = tasks: ``sit-causal check-uic`` reads it) and
    ``task_graph_energies.json`` (energies, the coverage graph, the repair, the step), written atomically."""
    factors = [f"z{j + 1}" for j in range(found.adjacency.shape[1])]
    graph = TaskFactorGraph.from_matrix(found.adjacency.astype(int), factors=factors, tasks=tasks)
    report = check_uic(graph)
    detail = {
        "step": step, "tasks": tasks, "factors": factors, "energies": found.energies.round(6).tolist(),
        "coverage_graph": found.initial.astype(int).tolist(), "adjacency": found.adjacency.astype(int).tolist(),
        "repair": {"form": found.repair.form, "violations_before": found.repair.violations_before,
                   "violations_after": found.repair.violations_after,
                   "flips": [{"task": tasks[t], "factor": factors[j], "open": o} for t, j, o in found.repair.flips]},
        "examples_per_task": found.examples.tolist(), "closed_fraction": 1.0 - float(found.adjacency.mean()),
        "uic_holds": report.uic_holds,
        "orthogonal_holds": check_uic(graph, ambiguity="orthogonal").uic_holds,
    }
    from sit_causal.fileio import write_text_atomic

    for name, obj in (("task_graph.json", graph.to_dict()), ("task_graph_energies.json", detail)):
        write_text_atomic(out_dir / name, json.dumps(obj, indent=1) + "\n")  # nothing left behind on a full disk
