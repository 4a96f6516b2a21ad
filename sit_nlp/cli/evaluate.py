"""``sit-nlp eval`` and ``sit-nlp masks``: what a trained model predicts, and the masks it selects.

``eval`` checks everything it can before it loads the model: the checkpoint and its config, the split
(``--data DIR``, a records JSONL, or ``builtin:NAME`` as for training), the records, the ``--out`` file (an
existing one only with ``--force``; never the records file) and ``--device`` (``cpu``, ``cuda``, ``cuda:N``
or ``mps``, and present on this machine); then it writes predictions (:mod:`sit_nlp.evaluation.evaluate`);
``masks`` writes the learned task-to-factor graph and its UIC verdict (:mod:`sit_nlp.evaluation.masks`).
Both load torch and transformers only once their arguments are checked.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from sit_causal.fileio import check_output_dir, check_output_file, write_text_atomic
from sit_causal.inputs import UsageFailure, safe_text
from sit_nlp.data.records import InstructionRecord, RecordError, read_records, resolve_data_path
from sit_nlp.evaluation.evaluate import (
    check_device,
    check_device_name,
    evaluate_records,
    resolve_checkpoint,
    resolve_split,
)
from sit_nlp.evaluation.masks import mask_report, task_instructions
from sit_nlp.evaluation.plots import plot_masks

__all__ = ["eval_command", "masks_command"]


def _limit_per_task(records: list[InstructionRecord], limit: int | None) -> list[InstructionRecord]:
    """The first ``limit`` records of every task, in file order (``None``: all)."""
    if limit is None:
        return records
    seen: dict[str, int] = {}
    kept = []
    for r in records:
        if seen.get(r.task, 0) < limit:
            kept.append(r)
            seen[r.task] = seen.get(r.task, 0) + 1
    return kept


def eval_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="a trained model directory (or a run with final/)"),
    split: str = typer.Option("heldout", "--split", help="heldout, validation or train"),
    data: str | None = typer.Option(None, "--data", help="built mixture folder, a records JSONL, or builtin:NAME; "
                                    "default: the folder of the checkpoint's training file"),
    out: Path | None = typer.Option(None, "--out", help="predictions JSONL (default CHECKPOINT/predictions_SPLIT"
                                    ".jsonl)"),
    force: bool = typer.Option(False, "--force", help="replace an existing predictions file"),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    num_beams: int = typer.Option(1, "--num-beams", min=1, help="1 = greedy"),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", min=1, help="default: data.max_target_len"),
    limit_per_task: int | None = typer.Option(None, "--limit-per-task", min=1, help="first N records per task"),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:N or mps (default: cuda if available)"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Write predictions of a trained model on a split (JSONL for `sit-nlp score`)."""
    from sit_nlp.training.config import ConfigError, load_saved_config

    check_device_name(device)  # before anything is read or imported
    path = resolve_checkpoint(checkpoint)
    try:
        cfg = load_saved_config(path / "config.yaml")
    except ConfigError as err:
        raise UsageFailure(str(err)) from None
    source = resolve_split(split, data, cfg.data.train_file)
    try:
        records = _limit_per_task(read_records(source), limit_per_task)
    except RecordError as err:
        raise UsageFailure(str(err)) from None
    target = check_output_file(out or path / f"predictions_{split}.jsonl", "--out", overwrite=force,
                               inputs=[source])
    dev_name = check_device(device)  # imports torch, not the model

    import torch
    from tqdm import tqdm

    from sit_nlp.model.factory import make_collator
    from sit_nlp.training.checkpoint import load_trained

    try:
        model, tokenizer, cfg = load_trained(path)
    except ConfigError as err:
        raise UsageFailure(str(err)) from None
    dev = torch.device(dev_name)
    model.to(dev)
    try:  # the prompts the model was trained on: data.chat_template of its config, with its tokenizer
        collator = make_collator(model, tokenizer, (), cfg.data.max_source_len, cfg.data.max_target_len,
                                 cfg.data.max_instruction_len, cfg.model.source_max_len,
                                 chat_template=cfg.data.chat_template)
    except ConfigError as err:
        raise UsageFailure(str(err)) from None
    gen = {"max_new_tokens": max_new_tokens or cfg.data.max_target_len, "num_beams": num_beams, "do_sample": False}
    start = time.perf_counter()
    with tqdm(total=len(records), desc=f"eval {split}", unit="ex", file=sys.stderr, disable=quiet) as bar:
        n = evaluate_records(model, tokenizer, collator, records, target, batch_size, gen, dev, bar.update)
    seconds = time.perf_counter() - start
    shown = safe_text(target)
    print(f"wrote {n} predictions to {shown} ({seconds:.1f} s, {n / max(seconds, 1e-9):.1f} examples/s); "
          f"score them with: sit-nlp score {shown}")


def masks_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="a trained SIT run (or its final/ folder)"),
    data: Path | None = typer.Option(None, "--data", help="built mixture folder: adds its held-out tasks"),
    threshold: float = typer.Option(0.5, "--threshold", help="binarise masks above this value"),
    out: Path | None = typer.Option(None, "--out", help="output folder (default: the checkpoint folder)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as one JSON object"),
    force: bool = typer.Option(False, "--force", help="replace masks.json and masks.png in the output folder"),
) -> int:
    """Masks of every task (training and held-out), a heatmap, and the UIC verdict of the learned graph."""
    from sit_nlp.training.checkpoint import load_trained

    if not 0.0 < threshold < 1.0:
        raise UsageFailure(f"--threshold must be in (0, 1), got {threshold}")
    ckpt = resolve_checkpoint(checkpoint)
    out_dir = check_output_dir(ckpt if out is None else out, "--out")
    for name in ("masks.json", "masks.png"):
        check_output_file(out_dir / name, "output file", overwrite=force, flag="--force")
    model, tokenizer, cfg = load_trained(ckpt)
    if not model.is_sit:
        raise UsageFailure(f"{ckpt}: a vanilla model has no selection masks")
    train_file = cfg.data.train_file
    if train_file.startswith("builtin:"):
        train_file = str(resolve_data_path(train_file))
    try:
        train = task_instructions(read_records(train_file))
        held = task_instructions(read_records(data / "heldout.jsonl")) if data is not None else {}
    except RecordError as err:
        raise UsageFailure(str(err)) from None
    report = mask_report(model, tokenizer, ckpt, train, held, threshold, cfg.data.max_instruction_len)
    result, masks, verdict = report.result, report.masks, report.verdict
    write_text_atomic(out_dir / "masks.json", json.dumps(result, indent=2) + "\n")
    plot_masks(masks, report.tasks, report.n_train, out_dir / "masks.png",
               f"{ckpt}: UIC of the learned graph (training tasks, > {threshold}) {verdict}")
    if as_json:
        print(json.dumps(result))
    else:
        print(f"{len(report.tasks)} tasks x {masks.shape[1]} factors; mean mask {result['mean_mask']:.3f}; "
              f"closed (<= {threshold}) on training tasks {result['closed_fraction_train']:.1%}; UIC {verdict}")
        fs = result["family_sharing"]
        if fs["within_family_jaccard"] is not None:
            print(f"factor sets shared within a family (Jaccard) {fs['within_family_jaccard']:.2f}, "
                  f"between families {fs['between_family_jaccard']:.2f}")
        if result["task_graph"] is not None:
            tg = result["task_graph"]
            print(f"fixed task graph: {tg['closed_fraction']:.1%} closed; the selector agrees on "
                  f"{tg['selector_agreement']:.1%} of the gates")
        print(f"wrote {out_dir / 'masks.json'} and {out_dir / 'masks.png'}")
    return 0
