"""``sit-nlp score`` and ``sit-nlp compare``: numbers of predictions, and of runs against each other.

Both read files only (:mod:`sit_nlp.evaluation.scoring`, :mod:`sit_nlp.evaluation.compare`): nothing here
imports torch or transformers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from sit_causal.fileio import check_output_file, write_text_atomic
from sit_causal.inputs import UsageFailure, safe_text
from sit_nlp.evaluation.compare import compare_runs, format_comparison, load_run
from sit_nlp.evaluation.plots import plot_comparison
from sit_nlp.evaluation.scoring import (
    ROUGE_TOKENIZERS,
    check_rouge_sizes,
    format_scores,
    read_predictions,
    score_predictions,
)

__all__ = ["compare_command", "score_command"]


def score_command(
    predictions: Path = typer.Argument(..., metavar="PRED.jsonl", help="predictions JSONL (schema: docs/data.md)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of markdown tables"),
    out: Path | None = typer.Option(None, "--out", help="also save the JSON object to this file (atomically)"),
    force: bool = typer.Option(False, "--force", help="replace an existing --out file"),
    rouge_tokenizer: str = typer.Option("unicode", "--rouge-tokenizer",
                                        help="unicode (every script) or rouge-score (ASCII only, as Tk-Instruct)"),
) -> None:
    """Score predictions: ROUGE-L, rank-classification accuracy and exact match per task, category, group."""
    if rouge_tokenizer not in ROUGE_TOKENIZERS:
        raise UsageFailure(f"unknown --rouge-tokenizer {rouge_tokenizer!r}; use one of {', '.join(ROUGE_TOKENIZERS)}")
    if out is not None:
        check_output_file(out, "--out", overwrite=force, inputs=[predictions])
    preds = read_predictions(predictions)
    check_rouge_sizes(preds, predictions)
    scores = score_predictions(preds, rouge_tokenizer)
    if out is not None:
        write_text_atomic(out, json.dumps(scores, indent=2) + "\n")
    print(json.dumps(scores) if as_json else format_scores(scores))


def compare_command(
    runs: list[str] = typer.Argument(..., metavar="RUN...", help="PATH or METHOD=PATH: a scores JSON, a "
                                     "predictions JSONL, or a run directory"),
    baseline: str | None = typer.Option(None, "--baseline", help="method to compare against (default vanilla)"),
    plot: Path | None = typer.Option(None, "--plot", help="write a bar plot PNG here"),
    force: bool = typer.Option(False, "--force", help="replace an existing --plot file"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of a table"),
) -> None:
    """Compare runs grouped by method (SIT vs vanilla): mean +/- sd over seeds and the relative change."""
    if plot is not None:
        check_output_file(plot, "--plot", overwrite=force, inputs=[r.split("=", 1)[-1] for r in runs])
        if plot.suffix.lower() not in ("", ".png", ".pdf", ".svg"):
            raise UsageFailure(f"--plot {plot}: use a .png, .pdf or .svg file name")
    result = compare_runs([load_run(r) for r in runs], baseline)
    if plot is not None:
        plot_comparison(result, plot)
        print(f"wrote {safe_text(plot)}", file=sys.stderr)
    print(json.dumps(result) if as_json else format_comparison(result))
