"""Scoring of predictions: ROUGE-L for generation, rank-classification accuracy for multiple choice.

Prediction schema (JSONL, one object per example; written by ``sit-nlp eval``, or by any other system)::

    {"task": str, "id": str, "prediction": str, "references": [str, ...],
     # multiple-choice tasks only (all three or none; option_lengths optional):
     "options": [str, ...], "option_scores": [float, ...], "label": str, "option_lengths": [int, ...],
     # optional, for the per-category, per-group and per-wording tables:
     "category": str, "group": "in_domain" | "out_of_domain" | "cross_task", "paraphrase": int}

Per example:

* generation (no ``options``): ROUGE-L F1 of ``prediction`` against each reference with
  ``rouge_score.rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)``, the **maximum** over references;
  tokens from :class:`UnicodeTokenizer` (every script; identical to rouge-score's on ASCII text) or, with
  ``--rouge-tokenizer rouge-score``, rouge-score's own (which drops every non-ASCII character);
* multiple choice: correct iff ``options[argmax(option_scores)] == label`` (rank classification, as T0:
  ``option_scores`` are summed answer log-probabilities; ties go to the first option); beside it
  ``accuracy_norm``, the length-normalised answer ``argmax(option_scores / option_lengths)`` (where the
  lengths are given), and ``majority``, the accuracy of always answering the task's most frequent label
  among the scored examples (the label-prior baseline a classifier must beat; ties go to the first);
* exact match (secondary, every example): the normalised ``prediction`` (:func:`normalize_answer`: Unicode
  case folding and accents removed, punctuation of any script removed, whitespace collapsed) equals a
  normalised reference (generation) or the label (multiple choice).

Per task the numbers are means over its examples, x 100. ``per_category``, ``per_group`` and ``overall`` are
**macro** averages over tasks (each task weighs the same, as in T0 and Tk-Instruct): ``rouge_l`` over the
generation tasks, ``accuracy`` over the multiple-choice tasks, ``exact_match`` over all, and ``primary`` over
all tasks of each task's main number (accuracy for multiple choice, ROUGE-L otherwise). ``--json`` prints::

    {"overall": {"n", "n_tasks", "rouge_l", "accuracy", "exact_match", "primary"},
     "per_task": {TASK: {"n": int, "rouge_l": float | null, "accuracy": float | null, "exact_match": float}},
     "per_category": {CATEGORY: {... as overall}}, "per_group": {GROUP: {... as overall}},
     "per_paraphrase": {K: {... as overall}}, "paraphrase_spread": float | null}

Multiple-choice tasks also carry ``accuracy_norm`` and ``majority`` (and their macro averages).
``per_paraphrase`` scores the examples of each instruction wording apart (``paraphrase`` of
:mod:`sit_nlp.data.paraphrase`); ``paraphrase_spread`` is the largest minus the smallest ``primary`` over wordings:
how much the score depends on the wording of the instruction.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sit_causal.fileio import iter_jsonl
from sit_causal.inputs import UsageFailure, safe_text

__all__ = [
    "ROUGE_TOKENIZERS",
    "Prediction",
    "UnicodeTokenizer",
    "aggregate",
    "check_rouge_sizes",
    "fold",
    "format_scores",
    "normalize_answer",
    "read_predictions",
    "rough_tokens",
    "score_predictions",
]

@dataclass(frozen=True)
class Prediction:
    """One line of a predictions file (schema in the module docstring)."""

    task: str
    id: str
    prediction: str
    references: tuple[str, ...]
    options: tuple[str, ...] | None = None
    option_scores: tuple[float, ...] | None = None
    label: str | None = None
    category: str | None = None
    group: str | None = None
    option_lengths: tuple[int, ...] | None = None
    paraphrase: int | None = None

    @property
    def is_multiple_choice(self) -> bool:
        return self.options is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task, "id": self.id, "prediction": self.prediction,
                               "references": list(self.references)}
        if self.options is not None:
            out.update(options=list(self.options), option_scores=list(self.option_scores or ()), label=self.label)
        if self.category is not None:
            out["category"] = self.category
        if self.group is not None:
            out["group"] = self.group
        if self.option_lengths is not None:
            out["option_lengths"] = list(self.option_lengths)
        if self.paraphrase is not None:
            out["paraphrase"] = self.paraphrase
        return out

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Prediction:
        if not isinstance(obj, dict):
            raise UsageFailure(f"{where}: expected a JSON object")
        for key in ("task", "id", "prediction"):
            if not isinstance(obj.get(key), str):
                raise UsageFailure(f"{where}: {key!r} must be a string")
        if not obj["task"]:
            raise UsageFailure(f"{where}: 'task' is empty")
        refs = obj.get("references")
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise UsageFailure(f"{where}: 'references' must be a list of strings")
        mc_keys = [k for k in ("options", "option_scores", "label") if k in obj]
        options = scores = label = None
        if mc_keys:
            if len(mc_keys) != 3:
                raise UsageFailure(f"{where}: multiple choice needs options, option_scores and label together")
            options, scores, label = obj["options"], obj["option_scores"], obj["label"]
            if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
                raise UsageFailure(f"{where}: 'options' must be a list of at least two strings")
            if (not isinstance(scores, list) or len(scores) != len(options)
                    or not all(isinstance(s, int | float) and not isinstance(s, bool) for s in scores)):
                raise UsageFailure(f"{where}: 'option_scores' must be {len(options)} numbers, one per option")
            if any(math.isnan(s) for s in scores):
                raise UsageFailure(f"{where}: 'option_scores' contains NaN")
            if not isinstance(label, str) or label not in options:
                raise UsageFailure(f"{where}: 'label' must be one of the options")
        elif not refs:
            raise UsageFailure(f"{where}: a generation example needs at least one reference")
        for key in ("category", "group"):
            if key in obj and not isinstance(obj[key], str):
                raise UsageFailure(f"{where}: {key!r} must be a string")
        lengths = obj.get("option_lengths")
        if lengths is not None and (options is None or not isinstance(lengths, list) or len(lengths) != len(options)
                                    or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                                               for n in lengths)):
            raise UsageFailure(f"{where}: 'option_lengths' must be one positive integer per option")
        para = obj.get("paraphrase")
        if para is not None and (isinstance(para, bool) or not isinstance(para, int) or para < 0):
            raise UsageFailure(f"{where}: 'paraphrase' must be a non-negative integer")
        return cls(
            task=obj["task"], id=obj["id"], prediction=obj["prediction"], references=tuple(refs),
            options=tuple(options) if options is not None else None,
            option_scores=tuple(float(s) for s in scores) if scores is not None else None,
            label=label, category=obj.get("category"), group=obj.get("group"),
            option_lengths=tuple(lengths) if lengths is not None else None, paraphrase=para,
        )


def _task_profile(pred: Prediction) -> dict[str, str | None]:
    """What every row of one task must agree on: its category, its group and its kind."""
    return {"category": pred.category, "group": pred.group,
            "kind": "multiple choice" if pred.is_multiple_choice else "generation"}


def _shown(value: str | None) -> str:
    return "none" if value is None else repr(value)


def read_predictions(path: str | Path) -> list[Prediction]:
    """Read and check a predictions JSONL; any problem is a one-line :class:`~sit_causal.inputs.UsageFailure`.

    UTF-8 with or without a byte-order mark; an object repeating a key is refused. The rows of one task
    must agree on ``category``, ``group`` and kind (all multiple choice or all generation): the per-task
    numbers, and the tables grouped by category and group, would otherwise silently mix them.
    """
    preds: list[Prediction] = []
    seen: set[tuple[str, str]] = set()
    first: dict[str, tuple[str, dict[str, str | None]]] = {}
    for where, obj in iter_jsonl(path, UsageFailure):
        pred = Prediction.from_json(obj, where)
        key = (pred.task, pred.id)
        if pred.id and key in seen:
            raise UsageFailure(f"{where}: duplicate id {pred.id!r} in task {pred.task!r}")
        seen.add(key)
        profile = _task_profile(pred)
        first_where, expected = first.setdefault(pred.task, (where, profile))
        for field_name, value in profile.items():
            if value != expected[field_name]:
                raise UsageFailure(
                    f"{where}: task {pred.task!r} has {field_name} {_shown(value)} here but "
                    f"{_shown(expected[field_name])} at {first_where}; one task's rows must agree"
                )
        preds.append(pred)
    if not preds:
        raise UsageFailure(f"{path}: no predictions")
    return preds


ROUGE_TOKENIZERS = ("unicode", "rouge-score")
"""``score --rouge-tokenizer``: ``unicode`` (default) scores every script; ``rouge-score`` is the package's own
tokenizer (ASCII letters and digits only: every other character is dropped), for numbers comparable with
Tk-Instruct's. On ASCII text the two give the same tokens."""

_WORD = re.compile(r"[^\W_]+|[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")  # words of any script; CJK, kana, Hangul
_CJK = re.compile("([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff])")  # one token each


def fold(text: str) -> str:
    """NFKC, accents removed (NFKD minus combining marks), case folded: ``"Naïve Résumé"`` -> ``"naive resume"``."""
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


class UnicodeTokenizer:
    """ROUGE tokens for any script (a ``rouge_score`` tokenizer: it has ``tokenize``).

    :func:`fold`, then words = runs of letters and digits (``\\w`` without ``_``), every CJK ideograph, kana
    and Hangul syllable a token of its own (those scripts write no spaces), and rouge-score's Porter stemmer
    on ASCII words longer than 3 characters. On ASCII text this is exactly rouge-score's default tokenizer
    with ``use_stemmer=True``.
    """

    def __init__(self) -> None:
        from rouge_score.tokenizers import DefaultTokenizer

        self._stemmer = DefaultTokenizer(use_stemmer=True)._stemmer

    def tokenize(self, text: str) -> list[str]:
        out: list[str] = []
        for word in _WORD.findall(_CJK.sub(r" \1 ", fold(text))):
            out.append(self._stemmer.stem(word) if len(word) > 3 and word.isascii() else word)
        return out


def normalize_answer(text: str) -> str:
    """For exact match: :func:`fold` (Unicode case and accents), punctuation of any script removed,
    whitespace collapsed."""
    folded = fold(text)
    kept = "".join(" " if unicodedata.category(c).startswith("P") or c in string.punctuation else c for c in folded)
    return " ".join(kept.split())


def _example_scores(preds: list[Prediction], tokenizer: str = "unicode") -> list[dict[str, float | None]]:
    """Per example: ``rouge_l`` (generation) or ``accuracy`` (multiple choice), and ``exact_match``; in [0, 1]."""
    from rouge_score import rouge_scorer

    if tokenizer not in ROUGE_TOKENIZERS:
        raise ValueError(f"unknown ROUGE tokenizer {tokenizer!r}; use one of {', '.join(ROUGE_TOKENIZERS)}")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True,
                                      tokenizer=UnicodeTokenizer() if tokenizer == "unicode" else None)
    out: list[dict[str, float | None]] = []
    for p in preds:
        norm = normalize_answer(p.prediction)
        if p.is_multiple_choice:
            assert p.options is not None and p.option_scores is not None
            chosen = p.options[int(np.argmax(p.option_scores))]
            row = {"rouge_l": None, "accuracy": float(chosen == p.label),
                   "exact_match": float(norm == normalize_answer(p.label or ""))}
            if p.option_lengths is not None:
                per_token = np.asarray(p.option_scores) / np.asarray(p.option_lengths, dtype=float)
                row["accuracy_norm"] = float(p.options[int(np.argmax(per_token))] == p.label)
            out.append(row)
        else:
            rouge = max(scorer.score(ref, p.prediction)["rougeL"].fmeasure for ref in p.references)
            em = float(any(norm == normalize_answer(ref) for ref in p.references))
            out.append({"rouge_l": rouge, "accuracy": None, "exact_match": em})
    return out


def _mean100(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return 100.0 * float(np.mean(vals)) if vals else None


def aggregate(per_task: dict[str, dict[str, Any]], tasks: Iterable[str] | None = None) -> dict[str, Any]:
    """Macro average over ``tasks`` (default: all) of per-task numbers (see the module docstring)."""
    names = list(per_task if tasks is None else tasks)
    rows = [per_task[t] for t in names]

    def primary(row: dict[str, Any]) -> float | None:
        return row["accuracy"] if row["accuracy"] is not None and row["rouge_l"] is None else row["rouge_l"]

    def mean(values: Iterable[float | None]) -> float | None:
        vals = [v for v in values if v is not None]
        return float(np.mean(vals)) if vals else None

    out = {
        "n": int(sum(r["n"] for r in rows)), "n_tasks": len(rows),
        "rouge_l": mean(r["rouge_l"] for r in rows), "accuracy": mean(r["accuracy"] for r in rows),
        "exact_match": mean(r["exact_match"] for r in rows), "primary": mean(primary(r) for r in rows),
    }
    for key in ("accuracy_norm", "majority"):  # over the multiple-choice tasks that have them
        if any(key in r for r in rows):
            out[key] = mean(r.get(key) for r in rows)
    return out


def score_predictions(preds: list[Prediction], rouge_tokenizer: str = "unicode") -> dict[str, Any]:
    """All scores of a list of predictions, as the ``--json`` object (module docstring)."""
    per_example = _example_scores(preds, rouge_tokenizer)
    by_task: dict[str, list[int]] = {}
    for i, p in enumerate(preds):
        by_task.setdefault(p.task, []).append(i)
    per_task: dict[str, dict[str, Any]] = {}
    category: dict[str, str] = {}
    group: dict[str, str] = {}
    for task, idx in sorted(by_task.items()):
        per_task[task] = _task_row(preds, per_example, idx)
        first = preds[idx[0]]
        if first.category:
            category[task] = first.category
        if first.group:
            group[task] = first.group

    def grouped(labels: dict[str, str]) -> dict[str, Any]:
        keys = sorted(set(labels.values()))
        return {k: aggregate(per_task, [t for t in per_task if labels.get(t) == k]) for k in keys}

    per_paraphrase: dict[str, Any] = {}
    for k in sorted({p.paraphrase for p in preds if p.paraphrase is not None}):
        rows = {task: _task_row(preds, per_example, [i for i in idx if preds[i].paraphrase == k])
                for task, idx in sorted(by_task.items()) if any(preds[i].paraphrase == k for i in idx)}
        per_paraphrase[str(k)] = aggregate(rows)
    primaries = [v["primary"] for v in per_paraphrase.values() if v["primary"] is not None]
    return {"overall": aggregate(per_task), "per_task": per_task, "per_category": grouped(category),
            "per_group": grouped(group), "task_category": category, "task_group": group,
            "per_paraphrase": per_paraphrase,
            "paraphrase_spread": max(primaries) - min(primaries) if len(primaries) > 1 else None,
            "rouge_tokenizer": rouge_tokenizer}


def _task_row(preds: list[Prediction], per_example: list[dict[str, float | None]], idx: list[int]) -> dict[str, Any]:
    """One task's numbers over the examples ``idx`` (x 100); multiple choice adds ``accuracy_norm`` (where
    every example has option lengths) and ``majority`` (the most frequent label's share of ``idx``)."""
    row: dict[str, Any] = {
        "n": len(idx),
        "rouge_l": _mean100(per_example[i]["rouge_l"] for i in idx),
        "accuracy": _mean100(per_example[i]["accuracy"] for i in idx),
        "exact_match": _mean100(per_example[i]["exact_match"] for i in idx),
    }
    if idx and preds[idx[0]].is_multiple_choice:
        if all("accuracy_norm" in per_example[i] for i in idx):
            row["accuracy_norm"] = _mean100(per_example[i]["accuracy_norm"] for i in idx)
        labels = [preds[i].label for i in idx]
        row["majority"] = 100.0 * max(labels.count(lab) for lab in dict.fromkeys(labels)) / len(labels)
    return row


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_scores(scores: dict[str, Any]) -> str:
    """Markdown tables: per task, per held-out group, per category, overall."""
    def cell(text: object) -> str:  # names come from the file: no terminal escapes, no table breaks
        return safe_text(text).replace("|", "\\|")

    lines = ["| task | category | group | n | ROUGE-L | accuracy | accuracy (length-normalised) | majority class "
             "| exact match |", "|---|---|---|---|---|---|---|---|---|"]
    for task, row in scores["per_task"].items():
        lines.append(f"| {cell(task)} | {cell(scores['task_category'].get(task, ''))} | "
                     f"{cell(scores['task_group'].get(task, ''))} | {row['n']} | {_fmt(row['rouge_l'])} | "
                     f"{_fmt(row['accuracy'])} | {_fmt(row.get('accuracy_norm'))} | {_fmt(row.get('majority'))} | "
                     f"{_fmt(row['exact_match'])} |")
    wordings = {f"wording {k}": v for k, v in scores.get("per_paraphrase", {}).items()}
    for title, table in (("group", scores["per_group"]), ("category", scores["per_category"]),
                         ("instruction", wordings), ("", {"overall": scores["overall"]})):
        if not table:
            continue
        lines += ["", f"| {title or 'all'} | tasks | n | ROUGE-L | accuracy | accuracy (length-normalised) | "
                      "majority class | exact match | primary |", "|---|---|---|---|---|---|---|---|---|"]
        for key, row in table.items():
            lines.append(f"| {cell(key)} | {row['n_tasks']} | {row['n']} | {_fmt(row['rouge_l'])} | "
                         f"{_fmt(row['accuracy'])} | {_fmt(row.get('accuracy_norm'))} | {_fmt(row.get('majority'))} | "
                         f"{_fmt(row['exact_match'])} | {_fmt(row['primary'])} |")
    if scores.get("paraphrase_spread") is not None:
        lines += ["", f"Wording sensitivity: primary ranges over {_fmt(scores['paraphrase_spread'])} points "
                      "across instruction wordings."]
    lines += ["", "Scores in percent; groups, categories and overall are macro averages over tasks; primary = "
              "accuracy (rank classification, summed log-likelihood) for multiple-choice tasks, ROUGE-L otherwise; "
              "majority class = always answering a task's most frequent label."]
    return "\n".join(lines)


MAX_ROUGE_CELLS = 10_000_000
"""The largest ROUGE-L table (prediction tokens x reference tokens) one example may need: ROUGE-L is
quadratic, and a 10,000 x 10,000 table takes about 1.1 GB and 36 s."""


def rough_tokens(text: str) -> int:
    """A linear-time count close to the ROUGE tokenizers' (words, and each CJK or Hangul character)."""
    return sum(1 for _ in _WORD.finditer(text))


def check_rouge_sizes(preds: list[Prediction], path: str | Path) -> None:
    """Refuse, before scoring, an example whose ROUGE-L table would exceed :data:`MAX_ROUGE_CELLS`, with the
    estimate of its cost (:class:`UsageFailure`)."""
    for i, pred in enumerate(preds):
        if pred.is_multiple_choice:
            continue
        n = rough_tokens(pred.prediction)
        m = max((rough_tokens(r) for r in pred.references), default=0)
        if n * m > MAX_ROUGE_CELLS:
            cells = n * m
            raise UsageFailure(
                f"{path}: example {i + 1} (task {safe_text(pred.task)!r}, id {safe_text(pred.id)!r}): a prediction of "
                f"~{n} tokens against a reference of ~{m}: ROUGE-L would fill a {cells:.2g}-cell table (about "
                f"{cells * 3.6e-7:.0f} s and {cells * 1.1e-8:.1f} GB); at most {MAX_ROUGE_CELLS:.0e} cells")
