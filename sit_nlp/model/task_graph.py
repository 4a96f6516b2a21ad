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

**``graph.statistic: invariant``** reads the data sources as well
(:func:`sit_causal.selection.invariance.select_invariant`): a task keeps a factor only if, given it, the
target's law is the same in every source of the task. On the same examples, after ``E``:

* the factor values ``Z`` ``(N, n)`` (:func:`pooled_factor_values`): each channel's posterior mean, masked-mean
  over the factor positions (``(N, n, d_f)``), projected on the channel's first principal direction over the
  ``N`` examples (one direction per channel, shared by every task, so a column is the same factor in every
  row). The statistic reads one value per factor; the first principal direction is the single linear read
  that keeps the most of the channel's variation, where the plain mean over the ``d_f`` dims can cancel
  dims of opposite roles (with ``d_f = 1`` both are the value itself);
* the targets (:func:`target_classes`): a task with at most ``InvarianceConfig.target_bins`` distinct target
  strings has one output, the target's index among them (a yes/no task: 2 classes); a task with more (a
  generation task) has one output per word position, the word's index among the task's words at that
  position (the words a factor renders, as the testbed's control reads a generation target one factor word
  at a time; the :data:`MAX_WORD_CLASSES` - 1 most frequent words keep a class each, the rarer share one);
* the source of each example (the record's ``dataset``; a task seen in one source gets no evidence from
  the test, its sets are then chosen by fit alone);

then ``select_invariant(Z, targets, task, source, m, energies=E, coverage=graph.coverage)``: ``E`` restricted
to each task's plausible factors (the accepted sets that fit as well as the best one), renormalised, its
coverage graph and the repair to ``graph.form``. ``task_graph_energies.json`` holds, under ``invariant``, the
contribution energies ``E``, the invariant and plausible sets, and every output's chosen set and ``p``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
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

__all__ = ["MAX_WORD_CLASSES", "FoundGraph", "energy_examples", "factor_contributions", "factor_means",
           "find_task_graph", "invariant_task_graph", "pooled_factor_values", "target_classes", "write_task_graph"]

MAX_WORD_CLASSES = 16
"""Classes of one word position of a generation target: the 15 most frequent words, and one for the rest."""


@dataclass(frozen=True)
class FoundGraph:
    """The selection step's output: ``energies`` ``(m, n)``, the coverage graph ``initial`` and the
    repaired ``adjacency`` (both ``(m, n)`` bool; rows = training tasks, columns = factors), the repair's
    record, and the number of examples of each task that estimated ``E``. ``statistic: invariant``:
    ``energies`` are the restricted ones the graph is built on, and ``invariant`` what the test decided
    (module docstring; written under ``invariant`` in ``task_graph_energies.json``)."""

    energies: np.ndarray
    initial: np.ndarray
    adjacency: np.ndarray
    repair: GraphRepair
    examples: np.ndarray
    statistic: str = "energy"
    invariant: dict[str, Any] | None = None

    def summary(self) -> str:
        closed = 1.0 - float(self.adjacency.mean())
        verdict = "holds" if self.repair.holds else f"fails ({self.repair.violations_after} pairs)"
        by = " (invariant statistic)" if self.statistic == "invariant" else ""
        return (f"{self.adjacency.shape[0]} tasks x {self.adjacency.shape[1]} factors, {closed:.0%} of the gates "
                f"closed, {len(self.repair.flips)} gates flipped by the repair, the {self.repair.form} "
                f"condition {verdict}{by}")


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


def factor_means(model: Any, examples: list[TokenizedExample], collator: Seq2SeqCollator, indices: list[int],
                 batch_size: int, device: Any) -> np.ndarray:
    """``(N, n, d_f)``: the posterior mean of every factor channel of ``examples[indices]``, masked-mean over the
    factor positions (the model in its current mode; call in evaluation mode)."""
    rows: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            chunk = [examples[i] for i in indices[start:start + batch_size]]
            batch = {k: v.to(device) for k, v in collator(chunk).items()}
            _, lat, _, _ = model.latent_path(batch, open_all=True, sample=False)
            w = model.factor_mask(batch).to(lat.mean.dtype)[:, :, None, None]
            rows.append(((lat.mean * w).sum(1) / w.sum(1).clamp_min(1.0)).double().cpu().numpy())
    n = model.config.n_factors
    return np.concatenate(rows) if rows else np.zeros((0, n, 1))


def pooled_factor_values(means: np.ndarray) -> np.ndarray:
    """``(N, n)``: each channel of ``means`` ``(N, n, d_f)`` projected on its first principal direction over the
    ``N`` rows (centred; the direction's sign makes its largest-magnitude entry positive, so the values are
    deterministic). A channel without variation gives zeros."""
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 3:
        raise ValueError(f"means must be (N, n, d_f), got shape {means.shape}")
    out = np.zeros(means.shape[:2])
    for j in range(means.shape[1]):
        x = means[:, j, :] - means[:, j, :].mean(0)
        if x.shape[0] < 2 or not np.any(x):
            continue
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        direction = vt[0] * np.sign(vt[0][np.argmax(np.abs(vt[0]))])
        out[:, j] = x @ direction
    return out


def target_classes(targets: Sequence[str], task_id: np.ndarray, n_tasks: int, target_bins: int,
                   max_word_classes: int = MAX_WORD_CLASSES) -> tuple[np.ndarray, list[str]]:
    """Categorical targets ``(N, K)`` for :func:`sit_causal.selection.invariance.select_invariant` (``-1``: not
    an output of the example's task) and the name of every column (module docstring).

    Column 0 (``target``): for a task with at most ``target_bins`` distinct target strings, the target's index
    among them (sorted). Column ``1 + k`` (``word k``): for a task with more, the ``k``-th whitespace word's
    index among the task's ``k``-th words (by frequency; the words beyond the ``max_word_classes - 1`` most
    frequent share the last class; a target with fewer words: ``-1``)."""
    task_id = np.asarray(task_id, dtype=np.int64)
    words = [str(t).split() for t in targets]
    generation = [len({targets[i] for i in np.flatnonzero(task_id == t)}) > target_bins for t in range(n_tasks)]
    width = max((len(w) for w, t in zip(words, task_id, strict=True) if generation[t]), default=0)
    out = np.full((len(targets), 1 + width), -1, dtype=np.int64)
    for t in range(n_tasks):
        rows = np.flatnonzero(task_id == t)
        if not generation[t]:
            index = {v: i for i, v in enumerate(sorted({targets[i] for i in rows}))}
            out[rows, 0] = [index[targets[i]] for i in rows]
            continue
        for k in range(width):
            have = [i for i in rows if len(words[i]) > k]
            counts = Counter(words[i][k] for i in have)
            ranked = sorted(counts, key=lambda w: (-counts[w], w))
            index = {w: min(i, max_word_classes - 1) for i, w in enumerate(ranked)}
            out[have, 1 + k] = [index[words[i][k]] for i in have]
    return out, ["target"] + [f"word {k}" for k in range(width)]


def find_task_graph(model: Any, examples: list[TokenizedExample], collator: Seq2SeqCollator, tasks: list[str],
                    config: GraphConfig, seed: int, device: Any) -> FoundGraph:
    """The selection step (module docstring) on the training examples; ``tasks`` names the rows."""
    m = len(tasks)
    indices = energy_examples(examples, m, config.examples_per_task, seed)
    with torch.random.fork_rng(devices=[]):
        contributions, task_ids = factor_contributions(model, examples, collator, indices, config.energy_batch_size,
                                                       device)
        means = factor_means(model, examples, collator, indices, config.energy_batch_size, device) \
            if config.statistic == "invariant" else None
    energies = task_factor_energies(contributions, task_ids, m)
    counts = np.bincount(task_ids, minlength=m)
    if means is None:
        initial = graph_from_energies(energies, config.coverage)
        repair = repair_to_uic(initial, energies, form=config.form)
        return FoundGraph(energies=energies, initial=initial, adjacency=repair.adjacency, repair=repair,
                          examples=counts)
    targets = [collator.tokenizer.decode(examples[i].target, skip_special_tokens=True).strip() for i in indices]
    sources = np.asarray([examples[i].source_id for i in indices], dtype=np.int64)
    return invariant_task_graph(pooled_factor_values(means), targets, task_ids, sources, energies, tasks, config,
                                seed)


def invariant_task_graph(z: np.ndarray, targets: Sequence[str], task_ids: np.ndarray, sources: np.ndarray,
                         energies: np.ndarray, tasks: list[str], config: GraphConfig, seed: int) -> FoundGraph:
    """``graph.statistic: invariant`` (module docstring) on pooled factor values ``z`` ``(N, n)``, the target
    strings, task and source ids ``(N,)`` and the contribution energies ``(m, n)`` of the same examples."""
    from sit_causal.selection.invariance import InvarianceConfig, select_invariant

    m, n = energies.shape
    inv_config = InvarianceConfig()
    classes, names = target_classes(targets, task_ids, m, inv_config.target_bins)
    found = select_invariant(z, classes, task_ids, sources, m, energies=energies, coverage=config.coverage,
                             seed=seed, config=inv_config)
    repair = found.repair if config.form == "linear" else repair_to_uic(found.coverage_graph, found.energies,
                                                                       form=config.form)
    factors = [f"z{j + 1}" for j in range(n)]
    detail = {
        "contribution_energies": energies.round(6).tolist(),
        "invariant_sets": found.invariant_sets.astype(int).tolist(),
        "plausible_sets": found.plausible_sets.astype(int).tolist(),
        "sources_per_task": [int(np.unique(sources[task_ids == t]).size) for t in range(m)],
        "alpha": inv_config.alpha,
        "outputs": [{"task": tasks[c.task], "output": names[c.output], "factors": [factors[j] for j in c.factors],
                     "found": c.found, "p": round(float(c.p), 6)} for c in found.outputs],
    }
    return FoundGraph(energies=found.energies, initial=found.coverage_graph, adjacency=repair.adjacency,
                      repair=repair, examples=np.bincount(task_ids, minlength=m), statistic="invariant",
                      invariant=detail)


def write_task_graph(found: FoundGraph, tasks: list[str], out_dir: Path, step: int) -> None:
    """``task_graph.json`` (compact matrix form, rows = tasks: ``sit-causal check-uic`` reads it) and
    ``task_graph_energies.json`` (energies, the coverage graph, the repair, the step, the statistic and, for
    ``invariant``, what it decided), written atomically."""
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
        "orthogonal_holds": check_uic(graph, ambiguity="orthogonal").uic_holds, "statistic": found.statistic,
    }
    if found.invariant is not None:
        detail["invariant"] = found.invariant
    from sit_causal.fileio import write_text_atomic

    for name, obj in (("task_graph.json", graph.to_dict()), ("task_graph_energies.json", detail)):
        write_text_atomic(out_dir / name, json.dumps(obj, indent=1) + "\n")  # nothing left behind on a full disk
