"""What ``sit-nlp testbed run`` checks before any work, and how it ends.

* :func:`check_run_values`: every number of the command is finite and in range (one line, exit code 2).
* :func:`check_testbed_folder`: the ``--data`` folder is a whole testbed (``model`` a folder, ``testbed.json``
  with its keys, ``heldout.jsonl`` valid JSONL), so a damaged folder is one line, not a traceback mid-run.
* :func:`check_reuse`: finished runs in ``--out`` are reused only when they were trained with the settings
  asked for now (each run's saved ``config.yaml`` against the config the job would train with); a different
  setting needs ``--overwrite``. The report's settings are therefore the runs' settings.
* :func:`end_on_gate`: a failed positive-control gate exits 1 with one line (the comparison is void).
* :func:`keeps_work_on_interrupt`: Ctrl-C exits 130 with one line naming the finished runs that are kept.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import typer

from sit_causal.cli.common import interrupted
from sit_causal.fileio import iter_jsonl
from sit_causal.inputs import UsageFailure

__all__ = ["TESTBED_KEYS", "check_reuse", "check_run_values", "check_testbed_folder", "end_on_gate",
           "keeps_work_on_interrupt"]

TESTBED_KEYS = ("seed", "factors", "tasks", "heldout_tasks", "noise_ceiling")
"""Keys of ``testbed.json`` that ``testbed run`` reads."""

# config keys that may differ between a reused run and the request (they change no computed number)
_NEUTRAL = frozenset({"train.out_dir", "train.quiet", "train.threads", "train.stop_after", "train.tensorboard",
                      "train.log_every", "train.eval_every", "train.save_every", "train.keep_checkpoints"})


def check_run_values(seeds: int, steps: int, batch_size: int, jobs: int, lr: float, oracle_tolerance: float,
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


def check_reuse(jobs: Iterable[Any], requested: Callable[[Any], dict[str, Any]], overwrite: bool) -> int:
    """Refuse to reuse a finished run trained with other settings; returns how many runs are reused.

    ``requested(job)`` is the nested config the job would train with; each job's folder holds the run's
    own ``config.yaml`` (written by ``sit-nlp train``). With ``overwrite`` nothing is compared (the runs
    are discarded)."""
    from sit_nlp.training.config import ConfigError, check_config, config_from_dict, config_to_dict, load_config

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
        new = _flat(config_to_dict(check_config(config_from_dict(requested(job)))))
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


def end_on_gate(verdict: dict[str, Any]) -> None:
    """A failed positive-control gate: one line and exit code 1 (the report is written, its comparison void)."""
    if not verdict.get("passed"):
        print("sit-nlp: the positive-control gate failed: the SIT-vs-vanilla comparison is void "
              "(report.json says why)", file=sys.stderr)
        raise typer.Exit(1)


def keeps_work_on_interrupt(command: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``testbed run``: Ctrl-C exits 130 with one line naming the finished runs kept in ``--out``."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            out = Path(kwargs.get("out") or ".")
            kept = sorted(str(p.parent.relative_to(out / "runs")) for p in (out / "runs").glob("*/*/result.json"))
            what = (f"finished runs {', '.join(kept)} are kept in {out / 'runs'}" if kept
                    else "no run had finished")
            raise interrupted("sit-nlp", f"{what}; rerun the same command to continue") from None

    return wrapper
