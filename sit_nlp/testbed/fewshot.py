"""Few-shot adaptation on the testbed's held-out tasks: ``k`` labelled examples, then accuracy on the rest.

For every held-out yes/no task (records of the ``heldout_tasks`` split) the records are shuffled once with
the run's seed; the first ``max(ks)`` form the pool (``k`` takes its first ``k``, so the sets are nested) and
the remaining records the test set, the same for every ``k`` and every adaptation. Accuracy is rank
classification over the options (:func:`sit_nlp.evaluation.evaluate.option_log_likelihoods`). Adaptations
(:data:`ADAPTATIONS`), each with the same step budget (``steps`` Adam steps on mini-batches of
``min(k, batch_size)`` examples drawn with replacement from the ``k``; the target NLL per token):

``zero-shot`` (``k = 0``)
    no adaptation: the model as trained (SIT: the selector's binarised mask of the new instruction).
``select`` (SIT only)
    the task's selection alone: one free logit per factor ``a`` ``(n,)``, initialised at the selector's
    logits of the task's instructions (mean over its wordings) clipped to ``[-c, c]`` (``select_start_clip``
    ``c = 2``), trained through the soft mask ``sigmoid(a)`` with every weight frozen; evaluated with the
    hard mask ``a > 0``. This is what the paper means by adapting a task through its factors: the factors
    and the decoder stay as trained. The clip keeps the zero-shot mask (the signs) but not the selector's
    saturation: distilled logits reach ``|a|`` 5-25, where ``sigmoid'(a)`` is 1e-2 to 1e-11 and no step
    moves the mask; at ``|a| <= 2`` it is at least 0.10.
``finetune``
    every parameter, as a user would fine-tune (vanilla; for SIT the same step, as the control for
    ``select``), from a copy of the trained model (SIT keeps its selector's mask for the new instruction).

The result (:func:`fewshot_accuracy`) holds ``accuracy``: ``{adaptation: {str(k): accuracy}}`` averaged over
the held-out tasks with equal weight, plus ``per_task`` and the test-set sizes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sit_nlp.data.records import InstructionRecord

__all__ = ["ADAPTATIONS", "PROTOCOL", "FewShotConfig", "adapt_selection", "fewshot_accuracy", "fewshot_splits",
           "finetune"]

ADAPTATIONS = ("zero-shot", "select", "finetune")
PROTOCOL = 3
"""Version of the few-shot protocol written into every result (2: ``select`` starts from clipped logits;
3: dropout seeded per adaptation);
a result of another version is measured again from the saved model."""


class FewShotConfig:
    """Settings of the few-shot protocol (module docstring), fixed before any result was seen."""

    def __init__(self, ks: Sequence[int] = (8, 32), steps: int = 100, batch_size: int = 8,
                 select_lr: float = 0.1, finetune_lr: float = 1e-3, select_start_clip: float = 2.0) -> None:
        if not ks or min(ks) < 1:
            raise ValueError(f"few-shot ks must be >= 1, got {list(ks)}")
        if steps < 1 or batch_size < 1 or select_lr <= 0 or finetune_lr <= 0 or select_start_clip <= 0:
            raise ValueError("few-shot steps, batch size, learning rates and the start clip must be positive")
        self.ks = tuple(sorted(int(k) for k in ks))
        self.steps = steps
        self.batch_size = batch_size
        self.select_lr = select_lr
        self.finetune_lr = finetune_lr
        self.select_start_clip = select_start_clip


def fewshot_splits(records: Sequence[InstructionRecord], k_max: int, seed: int
                   ) -> dict[str, tuple[list[InstructionRecord], list[InstructionRecord]]]:
    """Per held-out yes/no task: (pool of ``k_max`` records, test records), shuffled with ``seed``.

    Raises ``ValueError`` when a task has no more than ``k_max`` records (no test set would be left)."""
    out = {}
    tasks = sorted({r.task for r in records if r.options and (r.extra or {}).get("split") == "heldout_tasks"})
    for i, task in enumerate(tasks):
        rows = [r for r in records if r.task == task and r.options and r.extra.get("split") == "heldout_tasks"]
        if len(rows) <= k_max:
            raise ValueError(f"held-out task {task!r} has {len(rows)} records: too few for k = {k_max} and a test")
        order = np.random.default_rng([seed, i]).permutation(len(rows))
        rows = [rows[j] for j in order]
        out[task] = (rows[:k_max], rows[k_max:])
    return out


def _accuracy(model: Any, collator: Any, records: Sequence[InstructionRecord], device: Any,
              mask: torch.Tensor | None = None) -> float:
    from sit_nlp.evaluation.evaluate import option_log_likelihoods

    model.eval()
    scores = option_log_likelihoods(model, collator, records, 64, device, mask=mask)
    hits = [r.options[int(np.argmax(s))] == r.output for r, s in zip(records, scores, strict=True)]
    return float(np.mean(hits))


def _target_nll(model: Any, batch: dict[str, torch.Tensor], mask: torch.Tensor | None) -> torch.Tensor:
    """Mean target NLL per token of one batch, through the model's own path (SIT: the selected factors,
    with ``mask`` if given)."""
    memory = None
    if model.is_sit:
        _, _, _, memory = model.latent_path(batch, mask=mask)
    logits = model.target_logits(batch, memory)
    labels = batch["labels"]
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="sum") / (labels != -100).sum()


def _batches(collator: Any, examples: Sequence[InstructionRecord], steps: int, batch_size: int, seed: int,
             device: Any) -> Any:
    rng = np.random.default_rng(seed)
    tokenized = collator.tokenize(list(examples))
    size = min(batch_size, len(tokenized))
    for _ in range(steps):
        pick = rng.choice(len(tokenized), size=size, replace=True)
        yield {k: v.to(device) for k, v in collator([tokenized[j] for j in pick]).items()}


@contextmanager
def _seeded_dropout(seed: int, device: Any) -> Iterator[None]:
    """Dropout (torch's default generator) seeded by ``seed`` inside, the caller's RNG state restored after:
    an adaptation gives the same result whatever ran before it in the process."""
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def adapt_selection(model: Any, collator: Any, examples: Sequence[InstructionRecord], config: FewShotConfig,
                    seed: int, device: Any) -> torch.Tensor:
    """The task's learned hard mask ``(n,)``: free logits trained on ``examples`` through ``sigmoid``, every
    weight frozen (module docstring). The model is left unchanged (evaluation mode)."""
    if not model.is_sit:
        raise ValueError("select adapts a SIT model's selection; a vanilla model has none")
    wordings = list({r.instruction.strip(): r for r in examples}.values())  # one record per wording
    ids, imask = collator.pad_instructions([ex.instruction for ex in collator.tokenize(wordings)])
    model.eval()
    with torch.no_grad():
        _, start = model.latent.selection_mask(model.task_representation(ids.to(device), imask.to(device)),
                                               sample=False)
    clip = config.select_start_clip
    logits = torch.nn.Parameter(start.mean(0).detach().float().clamp(-clip, clip).clone())
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    opt = torch.optim.Adam([logits], lr=config.select_lr)
    try:
        model.train()  # dropout as in training; the latent path reads the posterior mean (one path)
        with _seeded_dropout(seed, device):
            for batch in _batches(collator, examples, config.steps, config.batch_size, seed, device):
                loss = _target_nll(model, batch, torch.sigmoid(logits))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.eval()
    return (logits.detach() > 0).float()


def finetune(model: Any, collator: Any, examples: Sequence[InstructionRecord], config: FewShotConfig, seed: int,
             device: Any) -> Any:
    """A copy of ``model`` with every parameter fine-tuned on ``examples`` (Adam, ``config.finetune_lr``)."""
    tuned = copy.deepcopy(model)
    opt = torch.optim.Adam([p for p in tuned.parameters() if p.requires_grad], lr=config.finetune_lr)
    tuned.train()
    with _seeded_dropout(seed, device):
        for batch in _batches(collator, examples, config.steps, config.batch_size, seed, device):
            loss = _target_nll(tuned, batch, None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    tuned.eval()
    return tuned


def fewshot_accuracy(model: Any, collator: Any, records: Sequence[InstructionRecord], seed: int, device: Any,
                     config: FewShotConfig | None = None) -> dict[str, Any]:
    """Accuracy on every held-out task's test records after each adaptation and ``k`` (module docstring).

    Returns ``{"ks", "steps", "tasks", "test_records", "per_task": {task: {adaptation: {k: acc}}},
    "accuracy": {adaptation: {k: mean over tasks}}}`` (``k`` as a string; ``zero-shot`` under ``"0"``)."""
    cfg = config or FewShotConfig()
    splits = fewshot_splits(records, max(cfg.ks), seed)
    adaptations = [a for a in ADAPTATIONS if a != "select" or model.is_sit]
    per_task: dict[str, dict[str, dict[str, float]]] = {}
    for t, (task, (pool, test)) in enumerate(splits.items()):
        row: dict[str, dict[str, float]] = {"zero-shot": {"0": _accuracy(model, collator, test, device)}}
        for k in cfg.ks:
            shots = pool[:k]
            step_seed = seed * 1000 + 10 * t + k
            if "select" in adaptations:
                mask = adapt_selection(model, collator, shots, cfg, step_seed, device)
                row.setdefault("select", {})[str(k)] = _accuracy(model, collator, test, device, mask=mask)
            tuned = finetune(model, collator, shots, cfg, step_seed, device)
            row.setdefault("finetune", {})[str(k)] = _accuracy(tuned, collator, test, device)
            del tuned
        per_task[task] = row
    out: dict[str, Any] = {"protocol": PROTOCOL, "ks": list(cfg.ks), "steps": cfg.steps, "tasks": list(splits),
                           "test_records": {t: len(s[1]) for t, s in splits.items()}, "per_task": per_task}
    out["accuracy"] = {a: {k: float(np.mean([per_task[t][a][k] for t in per_task]))
                           for k in per_task[next(iter(per_task))][a]} for a in adaptations}
    return out
