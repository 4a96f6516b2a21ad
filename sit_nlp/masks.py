"""The learned task-to-factor graph of a trained SIT model: masks, heatmap, UIC verdict.

``sit-nlp masks --checkpoint RUN`` computes the selection mask ``m_t = sigmoid(w(h_t) / tau)`` of one
instruction per task (the first instruction seen for the task) for the training tasks and, with
``--data``, the held-out tasks (zero-shot: their masks come from their instructions alone). The mask
matrix has **rows = tasks, columns = factors**. The training tasks' masks, binarised at ``--threshold``,
form the learned graph, which the UIC checker (:func:`sit_causal.uic.check_uic`) judges.

Outputs in ``--out`` (default: the checkpoint folder): ``masks.json`` and ``masks.png`` (heatmap).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import typer

from sit_causal.cli_helpers import UsageFailure
from sit_causal.latent import learned_graph
from sit_causal.report import plot_masks
from sit_causal.uic import check_uic
from sit_nlp.records import InstructionRecord, RecordError, read_records

__all__ = ["masks_command", "task_instructions", "task_masks"]


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


def masks_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="a trained SIT run (or its final/ folder)"),
    data: Path | None = typer.Option(None, "--data", help="built mixture folder: adds its held-out tasks"),
    threshold: float = typer.Option(0.5, "--threshold", help="binarise masks above this value"),
    out: Path | None = typer.Option(None, "--out", help="output folder (default: the checkpoint folder)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as one JSON object"),
) -> int:
    """Masks of every task (training and held-out), a heatmap, and the UIC verdict of the learned graph."""
    from sit_nlp.evaluate import resolve_checkpoint
    from sit_nlp.model import load_trained

    if not 0.0 < threshold < 1.0:
        raise UsageFailure(f"--threshold must be in (0, 1), got {threshold}")
    ckpt = resolve_checkpoint(checkpoint)
    model, tokenizer, cfg = load_trained(ckpt)
    if not model.is_sit:
        raise UsageFailure(f"{ckpt}: a vanilla model has no selection masks")
    train_file = cfg.data.train_file
    if train_file.startswith("builtin:"):
        from sit_nlp.train import resolve_data_path

        train_file = str(resolve_data_path(train_file))
    try:
        train = task_instructions(read_records(train_file))
        held = task_instructions(read_records(data / "heldout.jsonl")) if data is not None else {}
    except RecordError as err:
        raise UsageFailure(str(err)) from None
    held = {t: i for t, i in held.items() if t not in train}
    tasks = list(train) + list(held)
    masks = task_masks(model, tokenizer, [*train.values(), *held.values()], cfg.data.max_instruction_len)
    graph = learned_graph(masks[: len(train)], threshold=threshold, tasks=list(train))
    report = check_uic(graph)
    result = {
        "checkpoint": str(ckpt),
        "threshold": threshold,
        "tasks": tasks,
        "heldout_tasks": list(held),
        "masks": masks.round(4).tolist(),
        "mean_mask": float(masks.mean()),
        "open_fraction_train": float((masks[: len(train)] > threshold).mean()),
        "uic": report.to_json(),
    }
    out_dir = ckpt if out is None else out
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "masks.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    verdict = "holds" if report.uic_holds else f"fails ({len(report.violations)} violating pairs)"
    plot_masks(masks, tasks, len(train), out_dir / "masks.png",
               f"{ckpt}: UIC of the learned graph (training tasks, > {threshold}) {verdict}")
    if as_json:
        print(json.dumps(result))
    else:
        print(f"{len(tasks)} tasks x {masks.shape[1]} factors; mean mask {result['mean_mask']:.3f}; "
              f"open (> {threshold}) on training tasks {result['open_fraction_train']:.1%}; UIC {verdict}")
        print(f"wrote {out_dir / 'masks.json'} and {out_dir / 'masks.png'}")
    return 0
