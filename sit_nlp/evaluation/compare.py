"""SIT against vanilla instruction tuning over several runs: mean +/- sd over seeds and the relative change.

A run is given on the command line as ``PATH`` or ``METHOD=PATH``, where ``PATH`` is

* a scores JSON (``sit-nlp score --json`` output or ``--out`` file),
* a predictions JSONL (scored on the fly with :func:`sit_nlp.evaluation.scoring.score_predictions`), or
* a run or checkpoint directory holding (itself or in ``final/``) ``scores.json``, else
  ``predictions_heldout.jsonl``, else exactly one ``predictions*.jsonl``.

Without ``METHOD=``, the method and seed come from the nearest ``config.yaml`` (the resolved training
config that ``sit-nlp train`` saves next to every checkpoint) at the path or up to four folders above it:
``model.method`` and ``train.seed``.

For each metric (``overall`` and each held-out group: ``primary``, ``rouge_l``, ``accuracy``; and each task's
primary number) the table gives, per method, mean +/- sample sd (``ddof = 1``) over its runs (and the 95 %
CI half-width in the JSON), and for every method other than the baseline (``vanilla`` when present) the
difference in **absolute points** with the 95 % CI of the mean difference (paired by seed when both methods
ran the same seeds, Welch's interval otherwise), then the relative change
``100 * (mean_method - mean_baseline) / |mean_baseline|`` beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sit_causal.fileio import DuplicateKeyError, load_yaml, unique_keys
from sit_causal.inputs import UsageFailure, safe_text
from sit_causal.stats import difference_ci, mean_ci
from sit_nlp.evaluation.scoring import read_predictions, score_predictions

__all__ = ["RunScores", "compare_runs", "format_comparison", "load_run"]


@dataclass(frozen=True)
class RunScores:
    """The scores of one run and where its method and seed came from."""

    path: Path
    method: str
    seed: int | None
    scores: dict[str, Any]


def _find_config(path: Path) -> Path | None:
    here = path if path.is_dir() else path.parent
    for folder in [here, *list(here.parents)[:4]]:
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def _scores_of(path: Path) -> dict[str, Any]:
    if path.is_dir():
        for folder in (path, path / "final"):
            preds = sorted(folder.glob("predictions*.jsonl"))
            for candidate in (folder / "scores.json", folder / "predictions_heldout.jsonl"):
                if candidate.is_file():
                    return _scores_of(candidate)
            if len(preds) == 1:
                return _scores_of(preds[0])
        raise UsageFailure(f"{path}: expected scores.json, predictions_heldout.jsonl or one predictions*.jsonl "
                           "(here or in final/)")
    if not path.is_file():
        raise UsageFailure(f"{path}: no such file or directory")
    if path.suffix == ".jsonl":
        return score_predictions(read_predictions(path))
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=unique_keys)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageFailure(f"{path}: not a scores JSON ({err.__class__.__name__})") from None
    except DuplicateKeyError as err:
        raise UsageFailure(f"{path}: not a scores JSON ({err})") from None
    if not (isinstance(obj, dict) and isinstance(obj.get("overall"), dict) and isinstance(obj.get("per_task"), dict)):
        raise UsageFailure(f"{path}: not a scores JSON (needs 'overall' and 'per_task', as `sit-nlp score --json`)")
    return obj


def load_run(spec: str) -> RunScores:
    """Parse ``PATH`` or ``METHOD=PATH`` and load the run's scores, method and seed."""
    method: str | None = None
    text = spec
    if "=" in spec and not Path(spec).exists():
        method, text = spec.split("=", 1)
        if not method:
            raise UsageFailure(f"{spec}: empty method name before '='")
    path = Path(text)
    scores = _scores_of(path)
    seed: int | None = None
    config = _find_config(path)
    if config is not None:
        try:
            cfg = load_yaml(config.read_text(encoding="utf-8-sig")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise UsageFailure(f"{config}: not readable YAML ({err.__class__.__name__})") from None
        if isinstance(cfg, dict):
            model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
            train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
            method = method or model.get("method")
            seed = train.get("seed") if isinstance(train.get("seed"), int) else None
    if not method:
        raise UsageFailure(f"{spec}: method unknown (no config.yaml with model.method); write METHOD={text}")
    return RunScores(path=path, method=str(method), seed=seed, scores=scores)


def _metrics(scores: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in ("primary", "rouge_l", "accuracy", "exact_match"):
        out[f"overall/{key}"] = scores["overall"].get(key)
    for group, row in sorted(scores.get("per_group", {}).items()):
        for key in ("primary", "rouge_l", "accuracy"):
            out[f"{group}/{key}"] = row.get(key)
    for task, row in sorted(scores["per_task"].items()):
        primary = row["accuracy"] if row.get("rouge_l") is None else row["rouge_l"]
        out[f"task/{task}"] = primary
    return out


def compare_runs(runs: list[RunScores], baseline: str | None = None) -> dict[str, Any]:
    """Mean +/- sd per method and metric, relative change against ``baseline`` (default vanilla / first)."""
    methods = list(dict.fromkeys(r.method for r in runs))
    base = baseline or ("vanilla" if "vanilla" in methods else methods[0])
    if base not in methods:
        raise UsageFailure(f"baseline method {base!r} has no run (methods: {', '.join(methods)})")
    per_run = [(r.method, r.seed, _metrics(r.scores)) for r in runs]
    names = list(dict.fromkeys(k for _, _, m in per_run for k in m))
    rows = []
    for name in names:
        values: dict[str, dict[str, Any]] = {}
        by_seed: dict[str, dict[int | None, float]] = {}
        for method in methods:
            got = [(seed, m[name]) for meth, seed, m in per_run if meth == method and m.get(name) is not None]
            arr = np.asarray([v for _, v in got], dtype=float)
            values[method] = {
                "mean": float(arr.mean()) if got else None,
                "sd": float(arr.std(ddof=1)) if len(got) > 1 else None,
                "ci95": mean_ci(arr)[1] if len(got) > 1 else None,
                "n": len(got),
            }
            by_seed[method] = dict(got)
        if all(v["mean"] is None for v in values.values()):
            continue
        ref = values[base]["mean"]
        rel = {
            m: (100.0 * (values[m]["mean"] - ref) / abs(ref) if ref not in (None, 0.0) and values[m]["mean"] is not None
                else None)
            for m in methods if m != base
        }
        rows.append({"metric": name, "values": values, "difference": {
            m: _difference(by_seed[m], by_seed[base]) for m in methods if m != base}, "relative_change": rel})
    return {
        "baseline": base,
        "methods": {m: {"runs": [str(r.path) for r in runs if r.method == m],
                        "seeds": [r.seed for r in runs if r.method == m]} for m in methods},
        "rows": rows,
    }


def _difference(a: dict[int | None, float], b: dict[int | None, float]) -> dict[str, Any] | None:
    """``a - b`` in points with its 95 % CI: paired by seed when both sides hold the same seeds (and each
    seed once), Welch's unpaired interval otherwise."""
    if not a or not b:
        return None
    paired = None not in a and set(a) == set(b) and len(a) > 1
    if paired:
        seeds = sorted(a)
        diff, half = difference_ci([a[k] for k in seeds], [b[k] for k in seeds], paired=True)
    else:
        diff, half = difference_ci(list(a.values()), list(b.values()), paired=False)
    return {"points": diff, "ci95": None if np.isnan(half) else half, "paired": paired}


def _cell(v: dict[str, Any]) -> str:
    if v["mean"] is None:
        return "-"
    sd = f" +/- {v['sd']:.2f}" if v["sd"] is not None else ""
    return f"{v['mean']:.2f}{sd} (n={v['n']})"


def _points(d: dict[str, Any] | None) -> str:
    if d is None:
        return "-"
    half = f" +/- {d['ci95']:.2f}" if d["ci95"] is not None else ""
    return f"{d['points']:+.2f}{half}{'' if d['paired'] else ' (unpaired)'}"


def format_comparison(result: dict[str, Any]) -> str:
    """A markdown table: one row per metric, one column per method, relative changes last (names escaped
    with :func:`~sit_causal.inputs.safe_text`: they come from files)."""
    methods = list(result["methods"])
    base = result["baseline"]
    others = [m for m in methods if m != base]
    head = [safe_text(h) for h in ("metric", *methods, *(f"{m} - {base} (points, 95% CI)" for m in others),
                                   *(f"{m} vs {base}" for m in others))]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        diff = [_points(row.get("difference", {}).get(m)) for m in others]
        rel = [f"{row['relative_change'][m]:+.1f}%" if row["relative_change"][m] is not None else "-" for m in others]
        lines.append("| " + " | ".join([safe_text(row["metric"]), *(_cell(row["values"][m]) for m in methods),
                                        *diff, *rel]) + " |")
    seeds = "; ".join(f"{safe_text(m)}: seeds {result['methods'][m]['seeds']}" for m in methods)
    lines += ["", f"mean +/- sample sd over runs (scores in percent); differences in absolute points with the "
                  f"95 % CI of the mean difference (paired by seed where both methods ran the same seeds, "
                  f"else Welch), relative changes beside them; {seeds}."]
    return "\n".join(lines)
