"""BIG-bench tasks offline: fetch the ``bigbench`` package into a cache and read its JSON tasks as records.

The PyPI package ``bigbench==1.0.0`` (an sdist of about 360 MB, 1.8 GB installed) holds every BIG-bench
task as ``bigbench/benchmark_tasks/<task>/task.json``, sub-tasks in sub-folders
(``gem/xsum``, ``natural_instructions/subtask001_...``). :func:`fetch` installs it with
``uv pip install --no-deps --target DIR bigbench==1.0.0`` (``pip`` with the same arguments where uv is
absent: without ``--no-deps`` pip fails on the package's direct-URL dependency), or takes an existing
directory or archive (the sdist, a wheel, a tarball or zip of an install), into a cache directory
**outside the repository** (default ``~/.cache/sit/bigbench``; ``$SIT_CACHE/bigbench`` when ``SIT_CACHE``
is set). Everything is written to a temporary sibling directory and renamed into place once verified, so
an interrupted fetch leaves nothing half-written.

Every task file carries a canary string asking that the data never appear in training corpora: records
read here are for local experiments only; never commit them (tests use invented fixtures in the same
schema).

Task-file schema (the keys read here)::

    {"name": str, "description": str, "task_prefix": str (optional, often the instruction),
     "examples": [{"input": str, "target": str | [str, ...]}            # generation
                  | {"input": str, "target_scores": {option: score}}]}  # multiple choice

An example becomes an :class:`~sit_nlp.data.records.InstructionRecord` with ``task`` = the task id
(``gem/xsum``), ``dataset`` = the task id, ``id`` = ``"<task>:<index in the file>"``,
``instruction`` = ``task_prefix`` (stripped) or, where it is empty, ``description``; for multiple choice
``options`` = the keys of ``target_scores`` in file order and ``output`` = the first option of maximal
score (``references`` = every option of maximal score); for generation ``output`` = the first target and
``references`` = all targets. Examples without a usable input or target are skipped and counted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from sit_causal.fileio import check_output_dir, replace_directory
from sit_causal.inputs import UsageFailure
from sit_nlp.data.records import InstructionRecord

__all__ = [
    "BIGBENCH_SPEC",
    "SENTINEL_TASKS",
    "BigBenchTask",
    "default_cache_dir",
    "examples_to_records",
    "fetch",
    "find_tasks_root",
    "list_tasks",
    "load_task",
    "load_task_records",
    "verify",
]

BIGBENCH_SPEC = "bigbench==1.0.0"

#: Tasks whose presence (and parseable, non-empty ``examples``) marks a complete BIG-bench install.
SENTINEL_TASKS: tuple[str, ...] = (
    "gem/xsum",
    "gem/e2e_nlg",
    "natural_instructions/subtask001_quoref_question_generation",
    "presuppositions_as_nli",
    "sports_understanding",
)

_MANIFEST = "sit_fetch.json"


def default_cache_dir() -> Path:
    """``$SIT_CACHE/bigbench`` if ``SIT_CACHE`` is set, else ``~/.cache/sit/bigbench``."""
    root = os.environ.get("SIT_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "sit"
    return base / "bigbench"


def find_tasks_root(path: str | Path) -> Path:
    """The ``benchmark_tasks`` directory under ``path`` (an install, an extracted sdist, or the tasks dir).

    Looks at ``path`` itself (a folder of ``<task>/task.json``), ``path/benchmark_tasks``,
    ``path/bigbench/benchmark_tasks`` and ``path/bigbench-*/bigbench/benchmark_tasks``.
    Raises :class:`~sit_causal.inputs.UsageFailure` (one line) if none exists.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UsageFailure(f"BIG-bench cache not found at {path}; run `sit-nlp data fetch` (or pass --cache)")
    candidates = [path / "bigbench" / "benchmark_tasks", path / "benchmark_tasks"]
    candidates += sorted(path.glob("bigbench-*/bigbench/benchmark_tasks"))
    for cand in candidates:
        if cand.is_dir():
            return cand
    if any(path.glob("*/task.json")):
        return path
    raise UsageFailure(f"{path} holds no BIG-bench tasks (no benchmark_tasks/ folder); run `sit-nlp data fetch`")


def list_tasks(root: str | Path) -> list[str]:
    """Sorted ids (``gem/xsum``) of every ``task.json`` under the tasks root (collections included)."""
    root = find_tasks_root(root)
    return sorted(p.parent.relative_to(root).as_posix() for p in root.rglob("task.json") if p.parent != root)


@dataclass(frozen=True)
class BigBenchTask:
    """One parsed ``task.json``; ``examples`` are the raw example dicts of the file, in file order."""

    task_id: str
    name: str
    description: str
    task_prefix: str
    examples: tuple[dict[str, Any], ...]
    keywords: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def instruction(self) -> str:
        """``task_prefix`` when it says something, else ``description``."""
        return self.task_prefix.strip() or self.description.strip()


def load_task(root: str | Path, task_id: str) -> BigBenchTask:
    """Parse ``<root>/<task_id>/task.json``; an unknown task or a malformed file is one-line UsageFailure."""
    root = find_tasks_root(root)
    parts = PurePosixPath(task_id).parts
    if not parts or any(p in ("..", ".", "") for p in parts) or PurePosixPath(task_id).is_absolute():
        raise UsageFailure(f"invalid BIG-bench task id {task_id!r}")
    path = root.joinpath(*parts, "task.json")
    if not path.is_file():
        raise UsageFailure(f"unknown BIG-bench task {task_id!r} (no {path}){_suggest(root, task_id)}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageFailure(f"{path}: not a readable JSON task file ({err.__class__.__name__})") from None
    if not isinstance(obj, dict):
        raise UsageFailure(f"{path}: expected a JSON object")
    examples = obj.get("examples", [])
    if not isinstance(examples, list):
        raise UsageFailure(f"{path}: 'examples' must be a list")
    if not examples:
        subtasks = sorted(p.parent.name for p in path.parent.glob("*/task.json"))
        hint = f" (a collection: use one of its subtasks, e.g. {task_id}/{subtasks[0]})" if subtasks else ""
        raise UsageFailure(f"BIG-bench task {task_id!r} has no examples{hint}")
    keywords = obj.get("keywords", [])
    return BigBenchTask(
        task_id=task_id,
        name=str(obj.get("name", task_id)),
        description=str(obj.get("description", "") or ""),
        task_prefix=str(obj.get("task_prefix", "") or ""),
        examples=tuple(e for e in examples if isinstance(e, dict)),
        keywords=tuple(str(k) for k in keywords) if isinstance(keywords, list) else (),
        extra={k: v for k, v in obj.items() if k not in ("examples", "canary")},
    )


def _suggest(root: Path, task_id: str) -> str:
    import difflib

    close = difflib.get_close_matches(task_id, list_tasks(root), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def examples_to_records(task: BigBenchTask, category: str = "") -> tuple[list[InstructionRecord], int]:
    """Turn a task's examples into records (rules in the module docstring); returns (records, n_skipped)."""
    records: list[InstructionRecord] = []
    skipped = 0
    instruction = task.instruction
    for index, ex in enumerate(task.examples):
        text = ex.get("input")
        if not isinstance(text, str) or not text.strip():
            skipped += 1
            continue
        scores = ex.get("target_scores")
        common = {
            "task": task.task_id, "instruction": instruction, "input": text, "id": f"{task.task_id}:{index}",
            "category": category, "dataset": task.task_id,
        }
        if isinstance(scores, dict) and len(scores) >= 2:
            options = [str(o) for o in scores]
            try:
                values = [float(v) for v in scores.values()]
            except (TypeError, ValueError):
                skipped += 1
                continue
            best = max(values)
            correct = tuple(o for o, v in zip(options, values, strict=True) if v == best)
            records.append(InstructionRecord(output=correct[0], options=tuple(options), references=correct, **common))
            continue
        target = ex.get("target")
        targets = [target] if isinstance(target, str) else target if isinstance(target, list) else []
        targets = [t for t in targets if isinstance(t, str) and t.strip()]
        if not targets:
            skipped += 1
            continue
        records.append(InstructionRecord(output=targets[0], references=tuple(targets), **common))
    return records, skipped


def load_task_records(root: str | Path, task_id: str, category: str = "") -> tuple[list[InstructionRecord], int]:
    """:func:`load_task` then :func:`examples_to_records`."""
    return examples_to_records(load_task(root, task_id), category)


def verify(root: str | Path, expected: Sequence[str] = SENTINEL_TASKS) -> tuple[Path, int]:
    """Check a BIG-bench tree: each ``expected`` task exists with examples. Returns (tasks root, #task files).

    Raises :class:`~sit_causal.inputs.UsageFailure` naming the first missing or broken task.
    """
    tasks_root = find_tasks_root(root)
    for task_id in expected:
        load_task(tasks_root, task_id)
    return tasks_root, sum(1 for _ in tasks_root.rglob("task.json"))


# ----------------------------------------------------------------------------------------------- fetching

def _installer_commands(target: Path) -> list[tuple[str, list[str]]]:
    """Install commands to try in order: uv (module or executable), then pip, both with ``--no-deps``."""
    args = ["pip", "install", "--no-deps", "--target", str(target), BIGBENCH_SPEC]
    cmds: list[tuple[str, list[str]]] = []
    try:
        import uv  # noqa: F401

        cmds.append(("uv", [sys.executable, "-m", "uv", *args]))
    except ImportError:
        exe = shutil.which("uv")
        if exe:
            cmds.append(("uv", [exe, *args]))
    cmds.append(("pip", [sys.executable, "-m", *args, "--disable-pip-version-check"]))
    return cmds


def _install(target: Path, log: Callable[[str], None]) -> str:
    errors = []
    for name, cmd in _installer_commands(target):
        log(f"installing {BIGBENCH_SPEC} with {name} into {target} (about 2-4 minutes, 1.8 GB)")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            return name
        last = (proc.stderr or proc.stdout).strip().splitlines()
        errors.append(f"{name}: {last[-1] if last else f'exit {proc.returncode}'}")
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
    raise UsageFailure(f"could not install {BIGBENCH_SPEC} ({'; '.join(errors)}); try --from with a local copy")


def _member_dest(name: str) -> PurePosixPath | None:
    """Where an archive member goes in the cache: the path below ``benchmark_tasks/``, for ``*.json`` only."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if "benchmark_tasks" not in parts or not name.endswith(".json"):
        return None
    rest = parts[parts.index("benchmark_tasks") + 1:]
    if not rest or any(p in ("..", "") for p in rest):
        return None
    return PurePosixPath("bigbench", "benchmark_tasks", *rest)


def _extract(archive: Path, target: Path, log: Callable[[str], None]) -> int:
    """Extract the ``benchmark_tasks/**.json`` members of a tar or zip (sdist, wheel) into ``target``."""
    log(f"extracting BIG-bench task files from {archive}")
    n = 0
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                dest = _member_dest(info.filename)
                if dest is None or info.is_dir():
                    continue
                out = target.joinpath(*dest.parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                n += 1
        return n
    try:
        tf = tarfile.open(archive)
    except (tarfile.TarError, OSError) as err:
        raise UsageFailure(f"{archive}: not a tar or zip archive ({err.__class__.__name__})") from None
    with tf:
        for member in tf:
            dest = _member_dest(member.name)
            if dest is None or not member.isfile():
                continue
            src = tf.extractfile(member)
            if src is None:
                continue
            out = target.joinpath(*dest.parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            with src, out.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            n += 1
    return n


def _copy_tree(source: Path, target: Path, log: Callable[[str], None]) -> int:
    """Copy the ``*.json`` files of an existing BIG-bench tree into ``target/bigbench/benchmark_tasks``."""
    tasks_root = find_tasks_root(source)
    log(f"copying BIG-bench task files from {tasks_root}")
    n = 0
    for src in tasks_root.rglob("*.json"):
        out = target / "bigbench" / "benchmark_tasks" / src.relative_to(tasks_root)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, out)
        n += 1
    return n


def fetch(
    cache: str | Path | None = None,
    source: str | Path | None = None,
    force: bool = False,
    expected: Sequence[str] = SENTINEL_TASKS,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Put a verified BIG-bench tree at ``cache`` and return its manifest (also saved as ``sit_fetch.json``).

    Arguments:
        cache: destination (default :func:`default_cache_dir`); refused inside this repository's work
            tree (except its git-ignored ``cache/``), so no task file can be committed by accident.
        source: ``None`` to install from PyPI, else an existing directory (an install or extracted sdist)
            or an archive (``.tar.gz`` sdist, ``.whl``, ``.zip``) to take the task files from.
        force: replace an existing cache; otherwise an existing verified cache is kept as is.
        expected: task ids that must be present (default :data:`SENTINEL_TASKS`).
        log: progress sink (default: stderr).
    """
    say = log or (lambda msg: print(msg, file=sys.stderr))
    cache = Path(cache).expanduser() if cache is not None else default_cache_dir()
    repo = Path(__file__).resolve().parents[2]
    resolved = cache.resolve()
    if (repo / ".git").exists() and resolved.is_relative_to(repo) and not resolved.is_relative_to(repo / "cache"):
        raise UsageFailure(f"cache {cache} lies inside the repository; BIG-bench data must stay outside it")
    check_output_dir(cache, "cache", replace=True)  # not a file, and its folder writable, before any work
    manifest_path = cache / _MANIFEST
    if cache.exists() and not force:
        if manifest_path.is_file():
            tasks_root, n_tasks = verify(cache, expected)
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            manifest.update(status="already present", tasks_root=str(tasks_root), n_task_files=n_tasks)
            return manifest
        raise UsageFailure(f"{cache} exists but holds no verified BIG-bench fetch; pass --force to replace it")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.fetch-", dir=cache.parent))
    try:
        if source is None:
            method = _install(tmp, say)
            origin = BIGBENCH_SPEC
        else:
            src = Path(source).expanduser()
            if src.is_dir():
                n = _copy_tree(src, tmp, say)
                method = "from-directory"
            elif src.is_file():
                n = _extract(src, tmp, say)
                method = "from-archive"
            else:
                raise UsageFailure(f"--from {src}: no such file or directory")
            if n == 0:
                raise UsageFailure(f"--from {src}: no benchmark_tasks/*.json files found")
            origin = str(src.resolve())
        tasks_root, n_tasks = verify(tmp, expected)
        manifest = {
            "bigbench": BIGBENCH_SPEC, "method": method, "source": origin,
            "n_task_files": n_tasks, "sentinels": list(expected),
        }
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        replace_directory(tmp, cache)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    manifest.update(status="fetched", tasks_root=str(find_tasks_root(cache)))
    return manifest
