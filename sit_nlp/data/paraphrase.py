"""Instruction paraphrases: several wordings of one task's instruction.

BIG-bench tasks and the Hugging Face adapters carry one instruction per task, so SIT's task-distinction
loss (a contrastive loss over the task bank's masks, :func:`sit_causal.objective.structural_terms`) would
have no positive pair: every other instruction is another task. Rendering each record's instruction with
one of :data:`TEMPLATES` gives every task several instructions of the same meaning (positives) and, on
held-out tasks, measures how much a model's score depends on the wording (``sit-nlp score`` reports the
primary score per paraphrase).

The template of a record is balanced within its task: the ``i``-th record of the task's (already seeded)
permutation gets template ``i mod k``; the index is kept in ``extra["paraphrase"]``. Template 0 is the
original instruction, so ``k = 1`` changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from sit_nlp.data.records import InstructionRecord

__all__ = ["MAX_PARAPHRASES", "TEMPLATES", "paraphrase", "with_paraphrases"]

TEMPLATES: tuple[str, ...] = (
    "{instruction}",
    "Task: {instruction}",
    "Read the instruction, then answer for the input below.\n{instruction}",
    "Instruction: {instruction}\nRespond to the input that follows.",
    "{instruction}\nGive only the answer.",
)
MAX_PARAPHRASES = len(TEMPLATES)


def paraphrase(instruction: str, k: int) -> str:
    """The ``k``-th wording of ``instruction`` (``k = 0``: itself)."""
    if not 0 <= k < MAX_PARAPHRASES:
        raise ValueError(f"paraphrase index must be in [0, {MAX_PARAPHRASES}), got {k}")
    return TEMPLATES[k].format(instruction=instruction.strip()) if k else instruction


def with_paraphrases(records: Sequence[InstructionRecord], k: int) -> list[InstructionRecord]:
    """``records`` of one task, in order, the ``i``-th rendered with template ``i mod k`` (``extra["paraphrase"]``
    holds the index); ``k = 1`` returns them unchanged but for the index."""
    if not 1 <= k <= MAX_PARAPHRASES:
        raise ValueError(f"paraphrases must be in [1, {MAX_PARAPHRASES}], got {k}")
    return [replace(r, instruction=paraphrase(r.instruction, i % k), extra={**r.extra, "paraphrase": i % k})
            for i, r in enumerate(records)]
