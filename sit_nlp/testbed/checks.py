"""What ``sit-nlp testbed run`` checks before any work.

* :func:`check_run_request`: the command's options and the ``--data`` folder, in the order a user meets them:
  the methods, the counts, the few-shot ``k`` values, the learning rate, the testbed's files
  (:func:`check_testbed_run_values`, :func:`check_testbed_folder`) and room for ``max(k)`` examples on every
  held-out task.
* :func:`check_testbed_run_values`: every number of the command is finite and in range.
* :func:`check_testbed_folder`: the ``--data`` folder is a whole testbed (``model`` a folder, ``testbed.json``
  with its keys, ``heldout.jsonl`` valid JSONL), so a damaged folder is one line, not a traceback mid-run.
* :func:`check_backbone`: the ``--backbone`` name (``decoder`` short for ``decoder-only``) and the methods it
  can run.
* :func:`check_reuse`: finished runs in ``--out`` are reused only when they were trained with the settings
  asked for now (each run's saved ``config.yaml`` against the config the job would train with,
  :func:`sit_nlp.testbed.jobs.training_config`); a different setting needs ``--overwrite``. The report's
  settings are therefore the runs' settings.

Every refusal is a :class:`sit_causal.inputs.UsageFailure` (one line, exit code 2 at the command line).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sit_causal.fileio import iter_jsonl
from sit_causal.inputs import UsageFailure

if TYPE_CHECKING:
    from sit_nlp.testbed.jobs import TestbedJob

__all__ = [
    "BACKBONE_NAMES",
    "TESTBED_FILES",
    "TESTBED_KEYS",
    "check_backbone",
    "check_fewshot_room",
    "check_reuse",
    "check_run_request",
    "check_testbed_folder",
    "check_testbed_run_values",
]

TESTBED_FILES = ("train.jsonl", "validation.jsonl", "heldout.jsonl", "graph.json", "testbed.json", "model")
"""What ``testbed build`` writes and ``testbed run`` reads."""

TESTBED_KEYS = ("seed", "factors", "tasks", "heldout_tasks", "noise_ceiling")
"""Keys of ``testbed.json`` that ``testbed run`` reads."""

# config keys that may differ between a reused run and the request (they change no computed number)
_NEUTRAL = frozenset({"train.out_dir", "train.quiet", "train.threads", "train.stop_after", "train.tensorboard",
                      "train.log_every", "train.eval_every", "train.save_every", "train.keep_checkpoints"})


def check_run_request(data: Path, methods: list[str], *, seeds: int, steps: int, batch_size: int, jobs: int,
                      lr: float, fewshot_ks: str, fewshot_steps: int, threads: int | None, oracle_tolerance: float,
                      min_gap: float | None) -> tuple[int, ...]:
    """Every check of ``testbed run`` before any work (module docstring), the first failure a
    :class:`UsageFailure`; returns the few-shot ``k`` values parsed from ``fewshot_ks`` (sorted, distinct)."""
    from sit_nlp.testbed.jobs import TESTBED_METHODS

    unknown = [m for m in methods if m not in TESTBED_METHODS]
    if unknown or not methods:
        raise UsageFailure(f"--methods: unknown method {unknown[0] if unknown else '(none)'!r}; use "
                           f"{', '.join(TESTBED_METHODS)}")
    for flag, value in (("--seeds", seeds), ("--steps", steps), ("--batch-size", batch_size), ("--jobs", jobs)):
        if value < 1:
            raise UsageFailure(f"{flag} must be >= 1, got {value}")
    try:
        ks = tuple(sorted({int(k) for k in fewshot_ks.split(",") if k.strip()}))
    except ValueError:
        raise UsageFailure(f"--fewshot-ks: expected comma-separated integers, got {fewshot_ks!r}") from None
    if not ks or ks[0] < 1:
        raise UsageFailure(f"--fewshot-ks: every k must be >= 1, got {fewshot_ks!r}")
    if fewshot_steps < 1:
        raise UsageFailure(f"--fewshot-steps must be >= 1, got {fewshot_steps}")
    if threads is not None and threads < 1:
        raise UsageFailure(f"--threads must be >= 1, got {threads}")
    if not lr > 0:
        raise UsageFailure(f"--lr must be > 0, got {lr}")
    for name in TESTBED_FILES:
        if not (data / name).exists():
            raise UsageFailure(f"--data {data}: no {name} here (build one with `sit-nlp testbed build`)")
    check_testbed_run_values(seeds, steps, batch_size, jobs, lr, oracle_tolerance, min_gap, fewshot_steps)
    check_testbed_folder(data)
    check_fewshot_room(data, ks)
    return ks


BACKBONE_NAMES = {"encoder-decoder": "encoder-decoder", "decoder-only": "decoder-only", "decoder": "decoder-only"}
"""What ``--backbone`` accepts, and the backbone each name means."""


def check_backbone(backbone: str, methods: list[str]) -> str:
    """The backbone ``--backbone`` names (:data:`BACKBONE_NAMES`), refused with one line when unknown or when a
    method is for the encoder-decoder alone (:data:`sit_nlp.testbed.jobs.ENCODER_DECODER_ONLY`)."""
    from sit_nlp.testbed.jobs import ENCODER_DECODER_ONLY

    if backbone not in BACKBONE_NAMES:
        raise UsageFailure(f"--backbone must be one of {', '.join(BACKBONE_NAMES)}, got {backbone!r}")
    resolved = BACKBONE_NAMES[backbone]
    if resolved == "decoder-only":
        bad = [m for m in methods if m in ENCODER_DECODER_ONLY]
        if bad:
            raise UsageFailure(f"--methods: {bad[0]} changes what an encoder reads; on --backbone decoder-only the "
                               "factors always read the prompt (drop it, or use --backbone encoder-decoder)")
    return resolved


def check_fewshot_room(data: Path, ks: tuple[int, ...]) -> None:
    """Every held-out yes/no task of ``data`` keeps test records after its ``max(ks)`` adaptation examples."""
    heldout_counts: dict[str, int] = {}
    with open(data / "heldout.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row.get("split") == "heldout_tasks" and row.get("options"):  # extra keys are top-level
                heldout_counts[row["task"]] = heldout_counts.get(row["task"], 0) + 1
    if heldout_counts and min(heldout_counts.values()) <= ks[-1]:
        raise UsageFailure(f"--fewshot-ks: k = {ks[-1]} leaves no test records on a held-out task with "
                           f"{min(heldout_counts.values())} records")


def check_testbed_run_values(seeds: int, steps: int, batch_size: int, jobs: int, lr: float, oracle_tolerance: float,
                     min_gap: float | None, fewshot_steps: int) -> None:
    """The numbers of ``testbed run``: finite floats, integers in range (:class:`UsageFailure`)."""
    for flag, value, high in (("--seeds", seeds, 1000), ("--steps", steps, 10**7), ("--batch-size", batch_size, 4096),
                              ("--jobs", jobs, 256), ("--fewshot-steps", fewshot_steps, 10**6)):
        if not 1 <= value <= high:
            raise UsageFailure(f"{flag} must be in [1, {high}], got {value}")
    if not (math.isfinite(lr) and lr > 0):
        raise UsageFailure(f"--lr must be > 0 and finite, got {lr}")
    for flag, value in (("--oracle-tolerance", oracle_tolerance), ("--min-gap", min_gap)):
        if value is None:  # the default of the testbed's mechanism
            continue
        if not (math.isfinite(value) and 0 <= value <= 1):
            raise UsageFailure(f"{flag} must be a number in [0, 1], got {value}")


def check_testbed_folder(data: Path) -> None:
    """A testbed folder ``testbed run`` can read to the end (module docstring)."""
    if not (data / "model").is_dir():
        raise UsageFailure(f"--data {data}: model is not a folder (rebuild with `sit-nlp testbed build`)")
    for name in ("train.jsonl", "validation.jsonl", "heldout.jsonl", "graph.json", "testbed.json"):
        if not (data / name).is_file():
            raise UsageFailure(f"--data {data}: {name} is not a file (rebuild with `sit-nlp testbed build`)")
    try:
        meta = json.loads((data / "testbed.json").read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UsageFailure(f"--data {data}: testbed.json is not valid JSON ({err.__class__.__name__})") from None
    missing = [k for k in TESTBED_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise UsageFailure(f"--data {data}: testbed.json lacks {', '.join(missing)} (rebuild with "
                           "`sit-nlp testbed build`)")
    for where, row in iter_jsonl(data / "heldout.jsonl"):
        if not isinstance(row, dict) or not isinstance(row.get("task"), str):
            raise UsageFailure(f"{where}: not a testbed record (an object with a task)")


def _flat(cfg: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, values in cfg.items() for key, value in values.items()}


def check_reuse(jobs: Iterable[TestbedJob], overwrite: bool) -> int:
    """Refuse to reuse a finished run trained with other settings; returns how many runs are reused.

    Each job's folder holds the run's own ``config.yaml`` (written by ``sit-nlp train``), compared key by key
    with the job's :func:`sit_nlp.testbed.jobs.training_config` (keys that change no computed number, such
    as the thread count, may differ). With ``overwrite`` nothing is compared (the runs are discarded)."""
    from sit_nlp.testbed.jobs import training_config
    from sit_nlp.training.config import ConfigError, config_to_dict, load_config

    if overwrite:
        return 0
    reused = 0
    for job in jobs:
        saved = job.folder / "config.yaml"
        if not (job.folder / "final").is_dir():
            continue  # not finished: trained again, from scratch
        if not saved.is_file():
            raise UsageFailure(f"{job.folder}: a finished run without its config.yaml; pass --overwrite to "
                               "train it again")
        try:
            old = _flat(config_to_dict(load_config(saved)))
        except ConfigError as err:
            raise UsageFailure(f"{saved}: {err}; pass --overwrite to train it again") from None
        new = _flat(config_to_dict(training_config(job)))
        changed = sorted(k for k in new if k not in _NEUTRAL and old.get(k) != new[k])
        if changed:
            shown = ", ".join(f"{k} {old.get(k)!r} -> {new[k]!r}" for k in changed[:3])
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            raise UsageFailure(f"{job.folder} was trained with other settings ({shown}{more}); use them, choose "
                               "another --out, or pass --overwrite to train again")
        result = job.folder / "result.json"
        try:
            fewshot = json.loads(result.read_text(encoding="utf-8")).get("fewshot") if result.is_file() else None
        except (OSError, ValueError, AttributeError):
            fewshot = None  # unreadable: measured again from the saved model
        if isinstance(fewshot, dict) and fewshot.get("ks") not in (None, list(job.fewshot_ks)):
            raise UsageFailure(f"{job.folder} was measured with --fewshot-ks {','.join(map(str, fewshot['ks']))}; "
                               "use them, choose another --out, or pass --overwrite")
        reused += 1
    return reused
