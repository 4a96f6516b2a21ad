"""Positive controls of a testbed, computed from its files before any training.

* :func:`true_factor_selection`: the selection statistic (:func:`sit_causal.selection.probe.select_with_probes`,
  energies + coverage + repair) on the **true** factors ``L`` of the training records: the graph it selects and
  its precision / recall / F1 against the true graph. On ``backdoor`` the spurious factor adds nothing once the
  causal ones are known, and the statistic should find the true graph; on ``anti-causal`` it is drawn from the
  label and takes the task's energy.
* :func:`true_factor_invariant_selection`: the selection statistic that reads the data sources
  (:func:`sit_causal.selection.invariance.select_invariant`: a factor is kept only if the target's law given it is
  the same in every source of the task, then energies + coverage + repair) on the same true factors, with
  each record's source (``extra["dataset_id"]``), beside the energy statistic's graph. On ``anti-causal`` the
  spurious factor's agreement with the label differs between a task's sources (0.95 vs 0.85) while the causal
  factors' rule does not, so the invariant statistic keeps the true parents where the energy statistic takes
  the shortcut.
* :func:`recovery_ceiling`: the factor MCC of the best reading of the rendered words (:func:`grammar.decode_words`)
  against the true factors: what any model that reads the text can reach at most (ambiguous words carry nothing).
* :func:`oracle_accuracy`: accuracy per yes/no split of an oracle that reads only each task's true attributes
  ``b[S_t]``: a logistic regression on the indicators of their ``2^|S_t|`` joint values (so any function of
  them), fit on the training records (noisy labels); a held-out task is two-fold cross-fit on its own records.
  Gate (a) of :mod:`sit_nlp.testbed.report` asks it to reach ``1 - test_label_noise`` on every split.
* :func:`prior_accuracy`: accuracy per yes/no split of the label prior (each task's majority training label):
  what a model that learned nothing else scores.
* :func:`testbed_controls`: the selection statistic on the true factors and the recovery ceiling on the
  balanced split, as ``report.json`` holds them.

Matrices: factors ``(N, 6)`` (rows = records, columns = :data:`grammar.FACTORS`); graphs ``(m, 6)`` (rows =
training tasks in the graph file's order, columns = factors).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sit_nlp.testbed import grammar
from sit_nlp.testbed.grammar import FACTORS

__all__ = ["AMBIGUOUS_CLASS", "oracle_accuracy", "prior_accuracy", "recovery_ceiling", "target_classes",
           "testbed_controls", "true_factor_invariant_selection", "true_factor_selection"]

AMBIGUOUS_CLASS = 8
"""Class id of an ambiguous word among a generation target's word classes (``bit * 4 + bin``: 0..7)."""


def target_classes(record: Any, task: dict[str, Any]) -> list[int]:
    """One categorical target per output of a record (``-1``: not an output of its task): output 0 the
    yes/no label; output ``1 + i`` the class of factor ``i``'s word in a generation target (``bit * 4 + bin``
    from the true value, ``number``: its bit, an ambiguous word: :data:`AMBIGUOUS_CLASS`)."""
    out = [-1] * (1 + len(FACTORS))
    if record.options:
        out[0] = int(record.extra["label"])
        return out
    values = np.asarray(record.extra["factors"])
    bins = np.searchsorted(np.asarray(grammar.MAGNITUDE_CUTS), np.abs(values))
    hidden = set(record.extra.get("ambiguous", []))
    for name in task["factors"]:
        i = FACTORS.index(name)
        bit = int(values[i] > 0)
        out[1 + i] = AMBIGUOUS_CLASS if name in hidden else (bit if name == "number" else bit * 4 + int(bins[i]))
    return out


def _graph_scores(coverage_graph: np.ndarray, selected: np.ndarray, graph: Any) -> dict[str, Any]:
    """Precision / recall / F1 of a statistic's coverage graph and of its repaired graph (``selected``, rows =
    the true ``graph``'s tasks, columns = factors) against the true graph, the UIC verdict of the selected
    graph, and ``f1`` = the selected graph's."""
    from sit_causal.metrics import graph_recovery
    from sit_causal.theory.graph import TaskFactorGraph
    from sit_causal.theory.uic import check_uic

    identity = np.arange(len(FACTORS))
    out: dict[str, Any] = {}
    for name, adj in (("coverage_graph", coverage_graph), ("selected", selected)):
        rec = graph_recovery(adj.astype(int), graph, identity)
        out[name] = {"precision": rec.precision, "recall": rec.recall, "f1": rec.f1}
    learned = TaskFactorGraph.from_matrix(selected.astype(int), factors=list(FACTORS), tasks=list(graph.tasks))
    out["uic_holds"] = check_uic(learned).uic_holds
    out["f1"] = out["selected"]["f1"]
    return out


def true_factor_selection(data: Path, coverage: float = 0.8, seed: int = 0) -> dict[str, Any]:
    """The selection statistic on the true factors of ``data``'s training records (module docstring)."""
    from sit_causal.selection.probe import select_with_probes
    from sit_causal.theory.graph import load_graph
    from sit_nlp.data.records import read_records

    meta = json.loads((data / "testbed.json").read_text(encoding="utf-8"))
    graph = load_graph(data / "graph.json")
    tasks = {t["name"]: t for t in meta["tasks"]}
    records = [r for r in read_records(data / "train.jsonl") if r.task in tasks]
    z = np.array([r.extra["factors"] for r in records], dtype=np.float64)
    targets = np.array([target_classes(r, tasks[r.task]) for r in records], dtype=np.int64)
    task_id = np.array([graph.tasks.index(r.task) for r in records])
    classes = [2] + [AMBIGUOUS_CLASS + 1] * len(FACTORS)
    found = select_with_probes(z, targets, task_id, len(graph.tasks), classes, coverage=coverage, seed=seed)
    out: dict[str, Any] = {"coverage": coverage, "energies": found.energies.round(4).tolist(),
                           "adjacency": found.adjacency.astype(int).tolist(), "tasks": list(graph.tasks)}
    return out | _graph_scores(found.coverage_graph, found.adjacency, graph)


def _training_arrays(data: Path) -> dict[str, Any]:
    """The training records of ``data`` as arrays: true factors ``z`` ``(N, 6)``, targets ``(N, 1 + 6)``
    (:func:`target_classes`), task ids ``(N,)`` (rows of ``graph.json``), source ids ``(N,)``, the classes of
    every output and the true graph."""
    from sit_causal.theory.graph import load_graph
    from sit_nlp.data.records import read_records

    meta = json.loads((data / "testbed.json").read_text(encoding="utf-8"))
    graph = load_graph(data / "graph.json")
    tasks = {t["name"]: t for t in meta["tasks"]}
    records = [r for r in read_records(data / "train.jsonl") if r.task in tasks]
    return {
        "z": np.array([r.extra["factors"] for r in records], dtype=np.float64),
        "targets": np.array([target_classes(r, tasks[r.task]) for r in records], dtype=np.int64),
        "task_id": np.array([graph.tasks.index(r.task) for r in records], dtype=np.int64),
        "source_id": np.array([int(r.extra["dataset_id"]) for r in records], dtype=np.int64),
        "classes": [2] + [AMBIGUOUS_CLASS + 1] * len(FACTORS),
        "graph": graph,
        "mechanism": meta.get("mechanism"),
    }


def true_factor_invariant_selection(data: Path, coverage: float = 0.8, seed: int = 0, alpha: float = 0.05,
                                    with_energy: bool = True) -> dict[str, Any]:
    """The source-reading selection statistic on the true factors of ``data``'s training records (module
    docstring), beside the energy statistic (:func:`true_factor_selection`, with ``with_energy``).

    Returns the invariant graph (``adjacency``, rows = training tasks), its ``invariant_sets`` and
    ``energies``, precision / recall / F1 of the coverage graph and the repaired graph against the true graph
    (``f1`` = the repaired graph's), whether the UIC holds, each task's chosen set per output with its
    p-value, and, with ``with_energy``, the energy statistic's result under ``energy`` (its ``f1`` the graph it
    selects today).
    """
    from sit_causal.selection.invariance import InvarianceConfig, select_invariant

    arrays = _training_arrays(data)
    graph = arrays["graph"]
    found = select_invariant(arrays["z"], arrays["targets"], arrays["task_id"], arrays["source_id"],
                             len(graph.tasks), coverage=coverage, seed=seed, config=InvarianceConfig(alpha=alpha))
    out: dict[str, Any] = {"mechanism": arrays["mechanism"], "coverage": coverage, "alpha": alpha,
                           "tasks": list(graph.tasks), "adjacency": found.adjacency.astype(int).tolist(),
                           "invariant_sets": found.invariant_sets.astype(int).tolist(),
                           "energies": found.energies.round(4).tolist()}
    out |= _graph_scores(found.coverage_graph, found.adjacency, graph)
    out["outputs"] = [{"task": graph.tasks[c.task], "output": c.output, "factors": [FACTORS[i] for i in c.factors],
                       "found": c.found, "p": round(c.p, 4)} for c in found.outputs]
    if with_energy:
        out["energy"] = true_factor_selection(data, coverage=coverage, seed=seed)
    return out


def recovery_ceiling(records: list[Any]) -> dict[str, Any]:
    """MCC (:func:`sit_causal.metrics.mcc`) of the words read back (:func:`grammar.decode_words` of each
    record's parsed input) against the true factors, overall and per factor."""
    from sit_causal.metrics import mcc

    words = [grammar.parse_sentence(r.input) for r in records]
    decoded = grammar.decode_words(words)
    true = np.array([r.extra["factors"] for r in records], dtype=np.float64)
    result = mcc(true, decoded)
    per = {name: float(abs(np.corrcoef(true[:, i], decoded[:, i])[0, 1])) for i, name in enumerate(FACTORS)}
    return {"mcc": result.score, "per_factor": per, "n": len(records)}


def testbed_controls(data: Path, meta: dict[str, Any], invariant: bool = False) -> dict[str, Any]:
    """The positive controls computed from the testbed's files: the selection statistic on the true factors
    (:func:`true_factor_selection`), and the factor-recovery ceiling (:func:`recovery_ceiling`) on the
    balanced split (``meta`` is the testbed's ``testbed.json``); with ``invariant`` (a run of a method that
    reads the data sources) also the source-reading statistic on the true factors
    (:func:`true_factor_invariant_selection`, under ``true_factor_invariant_selection``)."""
    from sit_nlp.data.records import read_records
    from sit_nlp.testbed.report import split_roles

    balanced = split_roles(meta)["balanced"]
    records = [r for r in read_records(data / "heldout.jsonl") if r.extra.get("split") == balanced]
    out = {"true_factor_selection": true_factor_selection(data), "recovery_ceiling": recovery_ceiling(records)}
    if invariant:
        out["true_factor_invariant_selection"] = true_factor_invariant_selection(data, with_energy=False)
    return out


def oracle_accuracy(data: Path, seed: int = 0) -> dict[str, float]:
    """Accuracy per yes/no split of the oracle that reads only each task's true attributes ``b[S_t]``
    (module docstring): ``x = onehot(sum_k b[S_t[k]] 2^k)`` ``(N, 2^|S_t|)``, a logistic regression
    (:func:`sit_nlp.testbed.evaluation.fit_logistic`) fit on the task's training records; a held-out task:
    two-fold cross-fit on its own records (folds from ``seed``)."""
    from sit_nlp.data.records import read_records
    from sit_nlp.testbed.evaluation import fit_logistic, predict_logistic

    meta = json.loads((data / "testbed.json").read_text(encoding="utf-8"))
    factors = meta["factors"]
    sets = {t["name"]: [factors.index(f) for f in t["factors"]] for t in meta["tasks"] + meta["heldout_tasks"]}
    train = [r for r in read_records(data / "train.jsonl") if r.options]
    heldout = [r for r in read_records(data / "heldout.jsonl") if r.options]

    def xy(rs: list[Any], task: str) -> tuple[np.ndarray, np.ndarray]:
        # one indicator per joint value of b[S_t]: the regression can represent any function of the attributes
        cells = np.array([sum(r.extra["bits"][i] << k for k, i in enumerate(sets[task])) for r in rs])
        x = np.eye(2 ** len(sets[task]))[cells]
        return x, np.array([r.extra["label"] for r in rs])

    correct: dict[str, list[float]] = {}
    rng = np.random.default_rng(seed)
    for task in sorted({r.task for r in heldout}):
        tests = [r for r in heldout if r.task == task]
        fit_on = [r for r in train if r.task == task]
        if fit_on:
            params = fit_logistic(*xy(fit_on, task), seed=seed)
            x, y = xy(tests, task)
            hits = predict_logistic(params, x) == y
        else:  # a held-out task: two-fold cross-fit on its own records
            x, y = xy(tests, task)
            fold = rng.permutation(len(y)) % 2
            hits = np.zeros(len(y), dtype=bool)
            for k in (0, 1):
                params = fit_logistic(x[fold != k], y[fold != k], seed=seed)
                hits[fold == k] = predict_logistic(params, x[fold == k]) == y[fold == k]
        for r, h in zip(tests, hits, strict=True):
            correct.setdefault(r.extra["split"], []).append(float(h))
    return {s: float(np.mean(v)) for s, v in sorted(correct.items())}


def prior_accuracy(data: Path) -> dict[str, float]:
    """Accuracy per yes/no split of answering every record with its task's majority training label
    ``1[mean_t(y) >= 0.5]`` (a held-out task: the majority over all training yes/no records): the reference
    a model that learned nothing but the label prior scores."""
    from sit_nlp.data.records import read_records

    train = [r for r in read_records(data / "train.jsonl") if r.options]
    counts: dict[str, list[int]] = {}
    for r in train:
        counts.setdefault(r.task, []).append(int(r.extra["label"]))
    overall = int(np.mean([r.extra["label"] for r in train]) >= 0.5)
    majority = {t: int(np.mean(v) >= 0.5) for t, v in counts.items()}
    correct: dict[str, list[float]] = {}
    for r in read_records(data / "heldout.jsonl"):
        if r.options:
            guess = majority.get(r.task, overall)
            correct.setdefault(r.extra["split"], []).append(float(guess == r.extra["label"]))
    return {s: float(np.mean(v)) for s, v in sorted(correct.items())}
