"""The learned task-to-factor graph of a trained SIT model: masks, heatmap, UIC verdict.

``sit-nlp masks --checkpoint RUN`` computes the selection mask ``m_t = sigmoid(w(h_t) / tau)`` of one
instruction per task (the first instruction seen for the task) for the training tasks and, with
``--data``, the held-out tasks (zero-shot: their masks come from their instructions alone). The mask
matrix has **rows = tasks, columns = factors**. The training tasks' masks, binarised at ``--threshold``,
form the learned graph, which the UIC checker (:func:`sit_causal.theory.uic.check_uic`) judges in both forms.

The masks of inference: with a fixed task graph (``graph.find_at``) a training task's instruction gets its
graph row and an unseen one the selector's mask binarised; without one, every task the selector's mask.
Reported: the fraction of **closed** gates of those masks on the training and on the held-out tasks;
the UIC verdict and the orthogonal form's; whether tasks of one family (the part of the task name before
``/``, e.g. ``gem/...``) share their factors: the mean Jaccard similarity of the selected factor sets of two
training tasks of the same family against that of two tasks of different families; and, when training
fixed a task graph, how often the selector's binarised masks agree with it on the training tasks (what
the instruction encoder learned to predict for a paraphrase of a training task) and their UIC verdicts.

:func:`mask_report` computes all of it; the command (:mod:`sit_nlp.cli.evaluate`) writes ``masks.json`` and
``masks.png`` (heatmap) into ``--out`` (default: the checkpoint folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sit_causal.latent import learned_graph
from sit_causal.theory.uic import check_uic
from sit_nlp.data.records import InstructionRecord

__all__ = ["MaskReport", "family_sharing", "mask_report", "task_instructions", "task_masks"]


def task_instructions(records: list[InstructionRecord]) -> dict[str, str]:
    """The first instruction of every task, in order of first appearance."""
    out: dict[str, str] = {}
    for r in records:
        out.setdefault(r.task, r.instruction.strip())
    return out


def task_masks(model: Any, tokenizer: Any, instructions: list[str], max_len: int) -> np.ndarray:
    """Selection masks ``(len(instructions), n)`` (rows = tasks, columns = factors), evaluation mode."""
    import torch

    enc = tokenizer(instructions, truncation=True, max_length=max_len, padding=True, return_tensors="pt")
    with torch.no_grad():
        masks = model.instruction_masks(enc["input_ids"], enc["attention_mask"])
    return masks.float().cpu().numpy()


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def family_sharing(binary: np.ndarray, tasks: list[str]) -> dict[str, Any]:
    """Mean Jaccard similarity of the factor sets (rows of ``binary`` ``(m, n)``, rows = tasks) of pairs of
    tasks in one family (task-name prefix before ``/``) and of pairs in different families."""
    fam = [t.split("/", 1)[0] if "/" in t else t for t in tasks]
    within, between = [], []
    for i in range(len(tasks)):
        for j in range(i + 1, len(tasks)):
            (within if fam[i] == fam[j] else between).append(_jaccard(binary[i], binary[j]))
    groups = sorted({f for f in fam if fam.count(f) > 1})
    return {"families": {g: [t for t, f in zip(tasks, fam, strict=True) if f == g] for g in groups},
            "within_family_jaccard": float(np.mean(within)) if within else None,
            "between_family_jaccard": float(np.mean(between)) if between else None,
            "within_pairs": len(within), "between_pairs": len(between)}


@dataclass(frozen=True)
class MaskReport:
    """The masks of a trained SIT model: ``result`` (the ``masks.json`` object, module docstring), the mask
    matrix ``masks`` ``(len(tasks), n)`` (rows = ``tasks``: the ``n_train`` training tasks, then the held-out
    ones) and the one-line UIC ``verdict`` of the learned graph."""

    result: dict[str, Any]
    masks: np.ndarray
    tasks: list[str]
    n_train: int
    verdict: str


def mask_report(model: Any, tokenizer: Any, checkpoint: Path, train: dict[str, str], held: dict[str, str],
                threshold: float, max_len: int) -> MaskReport:
    """Masks, learned graph, UIC verdicts and family sharing of ``model`` (module docstring).

    Arguments:
        model: a trained SIT :class:`~sit_nlp.model.seq2seq.Seq2SeqSIT` in evaluation mode.
        checkpoint: its folder (named in the result).
        train, held: one instruction per training / held-out task (:func:`task_instructions`); a held-out
            task that is also a training task counts as a training task.
        threshold: masks above it are open.
        max_len: the instructions' token limit (``data.max_instruction_len``).
    """
    held = {t: i for t, i in held.items() if t not in train}
    tasks = list(train) + list(held)
    masks = task_masks(model, tokenizer, [*train.values(), *held.values()], max_len)
    selector = masks > threshold  # what the instruction-reading selector predicts, for every task
    binary = selector.copy()  # what inference uses: with a fixed graph, a training task's graph row
    fixed_rows = None
    if model.has_task_graph:  # rows of the fixed graph: the training tasks in sorted order (the collator's)
        order = model.graph_tasks or sorted(train)
        fixed = model.task_graph.cpu().numpy() > 0.5
        fixed_rows = np.stack([fixed[order.index(t)] for t in train])
        binary[: len(train)] = fixed_rows
    graph = learned_graph(binary[: len(train)].astype(float), threshold=0.5, tasks=list(train))
    report = check_uic(graph)
    orthogonal = check_uic(graph, ambiguity="orthogonal")
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "threshold": threshold,
        "tasks": tasks,
        "heldout_tasks": list(held),
        "masks": masks.round(4).tolist(),
        "mean_mask": float(masks.mean()),
        "open_fraction_train": float(binary[: len(train)].mean()),
        "closed_fraction_train": float(1.0 - binary[: len(train)].mean()),
        "closed_fraction_heldout": float(1.0 - binary[len(train):].mean()) if held else None,
        "uic": report.to_json(),
        "uic_holds": report.uic_holds,
        "orthogonal_holds": orthogonal.uic_holds,
        "family_sharing": family_sharing(binary[: len(train)], list(train)),
        "task_graph": None,
    }
    if fixed_rows is not None:
        sel_graph = learned_graph(selector[: len(train)].astype(float), threshold=0.5, tasks=list(train))
        result["task_graph"] = {"adjacency": fixed_rows.astype(int).tolist(),
                                "closed_fraction": float(1.0 - fixed_rows.mean()),
                                "selector_agreement": float((fixed_rows == selector[: len(train)]).mean()),
                                "selector_closed_fraction_train": float(1.0 - selector[: len(train)].mean()),
                                "selector_uic_holds": check_uic(sel_graph).uic_holds,
                                "selector_orthogonal_holds": check_uic(sel_graph, ambiguity="orthogonal").uic_holds}
    verdict = "holds" if report.uic_holds else f"fails ({len(report.violations)} violating pairs)"
    verdict += f"; orthogonal form {'holds' if orthogonal.uic_holds else 'fails'}"
    return MaskReport(result=result, masks=masks, tasks=tasks, n_train=len(train), verdict=verdict)
