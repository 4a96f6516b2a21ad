"""Instruction-tuning mixtures: a YAML file naming training tasks and held-out groups, built into JSONL splits.

The protocol mirrors the paper's zero-shot evaluation. ``sit-nlp data build`` writes, into ``--out``:

* ``train.jsonl`` and ``validation.jsonl``: examples of the **training tasks**;
* ``heldout.jsonl``: three groups, each record carrying ``"group"`` (a top-level key, kept by
  :class:`~sit_nlp.data.records.InstructionRecord` in ``extra["group"]``):

  - ``in_domain``: held-out examples of the training tasks (never in train or validation);
  - ``out_of_domain``: tasks never trained on whose **category** (task type) is trained, e.g. GEM XSum
    held out while other summarisation is trained (the analogue of Gigaword in the paper);
  - ``cross_task``: tasks whose category no training task has, e.g. NLI (the analogue of RTE).

  The categories are checked: an ``out_of_domain`` task must share its category with a training task,
  a ``cross_task`` task must not.
* ``manifest.json``: the resolved mixture, the data source, per-task counts of every split, the number of
  examples dropped by the length filters and merged as duplicates, and the SHA-256 of each file.

Mixture YAML (paths relative to the YAML file)::

    name: default
    seed: 0                      # split and subsampling seed (``--seed`` overrides)
    bigbench_root: null          # a BIG-bench tree; default: the fetched cache (``--cache`` overrides)
    defaults:                    # any of these may be overridden per task entry
      max_train: 1000            # cap on training examples per task
      max_validation: 50         # cap on validation examples per training task
      max_in_domain: 100         # cap on in-domain held-out examples per training task
      max_heldout: 200           # cap per out-of-domain / cross-task task
      validation_fraction: 0.05  # at most this fraction of a training task goes to validation
      in_domain_fraction: 0.1    # ... and this fraction to in-domain held-out
      max_input_chars: null      # drop examples whose input is longer (before splitting)
      max_source_chars: null     # ... whose instruction + input + options are longer (what the encoder reads)
      max_output_chars: null     # drop examples whose output is longer
      paraphrases: 3             # instruction wordings per task (sit_nlp.data.paraphrase; 1: the original only)
    train:
      - {task: gem/e2e_nlg, category: data_to_text, max_train: 800}
    heldout:
      out_of_domain:
        - {task: gem/webnlg_en, category: data_to_text}
      cross_task:
        - {task: presuppositions_as_nli, category: nli}
        - {task: super_glue_rte, category: nli, source: hf, split: validation,
           data_files: null}     # Hugging Face adapter (sit_nlp.data.hf_adapters); data_files for local copies

Splitting, per task: examples whose input, source (:func:`source_chars`) or output is too long are dropped;
examples with the same instruction and input are merged into one (the union of their references), so that no
input is both trained on and held out. The remaining ``n`` examples are permuted with ``numpy.random.default_rng([seed,
crc32(task)])``; a training task's first ``min(max_in_domain, floor(n * in_domain_fraction))`` examples are
in-domain held-out, the next ``min(max_validation, floor(n * validation_fraction))`` are validation, and the
rest is training, where a generation example with several references becomes one record per reference
(ids ``ID``, ``ID#1``, ...) and the first ``max_train`` records are kept. The held-out part therefore does not
change when ``max_train`` does. A held-out task keeps the first ``max_heldout`` of its permutation (all
references kept for scoring). Records keep each task's permuted order, tasks the mixture's order. Finally
each split's records of a task are rendered with ``paraphrases`` instruction wordings, balanced
(:func:`sit_nlp.data.paraphrase.with_paraphrases`): the task-distinction loss gets positives, and scores per
wording measure sensitivity to it.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sit_causal.fileio import load_yaml, replace_directory
from sit_causal.inputs import UsageFailure, safe_text
from sit_nlp.data.paraphrase import MAX_PARAPHRASES, with_paraphrases
from sit_nlp.data.records import InstructionRecord, write_records

__all__ = [
    "GROUPS",
    "SPLITS",
    "BuiltMixture",
    "Mixture",
    "TaskSpec",
    "TaskSplit",
    "build_mixture",
    "counts_table",
    "load_mixture",
    "refuse_tracked_output",
    "source_chars",
    "split_task",
    "write_mixture",
]

GROUPS = ("in_domain", "out_of_domain", "cross_task")
SPLITS = ("train", "validation", "heldout")

_CAPS: dict[str, Any] = {
    "max_train": 1000,
    "max_validation": 50,
    "max_in_domain": 100,
    "max_heldout": 200,
    "validation_fraction": 0.05,
    "in_domain_fraction": 0.1,
    "max_input_chars": None,
    "max_source_chars": None,
    "max_output_chars": None,
    "paraphrases": 3,
}
_HF_KEYS = ("split", "data_files", "hub_path", "hub_config", "revision")
_ENTRY_KEYS = {"task", "category", "source", *_CAPS, *_HF_KEYS}
_TOP_KEYS = {"name", "description", "seed", "bigbench_root", "defaults", "train", "heldout"}


@dataclass(frozen=True)
class TaskSpec:
    """One task entry of a mixture, with its caps resolved (entry value, else ``defaults``, else built-in).

    ``role`` is ``"train"``, ``"out_of_domain"`` or ``"cross_task"``; ``source`` is ``"bigbench"`` (a task id
    of the BIG-bench tree) or ``"hf"`` (a key of :data:`sit_nlp.data.hf_adapters.ADAPTERS`).
    """

    task: str
    category: str
    role: str
    source: str = "bigbench"
    max_train: int = 1000
    max_validation: int = 50
    max_in_domain: int = 100
    max_heldout: int = 200
    validation_fraction: float = 0.05
    in_domain_fraction: float = 0.1
    max_input_chars: int | None = None
    max_source_chars: int | None = None
    max_output_chars: int | None = None
    paraphrases: int = 3
    split: str = "validation"
    data_files: tuple[str, ...] | None = None
    hub_path: str | None = None
    hub_config: str | None = None
    revision: str | None = None


@dataclass(frozen=True)
class Mixture:
    """A parsed mixture file (see the module docstring)."""

    name: str
    seed: int
    tasks: tuple[TaskSpec, ...]
    bigbench_root: Path | None = None
    description: str = ""
    path: Path | None = None

    def role(self, role: str) -> tuple[TaskSpec, ...]:
        return tuple(t for t in self.tasks if t.role == role)


def _check_cap(where: str, key: str, value: Any) -> Any:
    if key.endswith("_fraction"):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
            raise UsageFailure(f"{where}: {key} must be a number in [0, 1), got {value!r}")
        return float(value)
    if value is None and key in ("max_input_chars", "max_source_chars", "max_output_chars"):
        return None
    if key == "paraphrases" and (isinstance(value, bool) or not isinstance(value, int)
                                 or not 1 <= value <= MAX_PARAPHRASES):
        raise UsageFailure(f"{where}: paraphrases must be an integer in [1, {MAX_PARAPHRASES}], got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageFailure(f"{where}: {key} must be a non-negative integer, got {value!r}")
    return value


def _entry(where: str, raw: Any, role: str, defaults: dict[str, Any], base: Path) -> TaskSpec:
    if not isinstance(raw, dict):
        raise UsageFailure(f"{where}: a task entry must be a mapping with 'task' and 'category'")
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        raise UsageFailure(f"{where}: unknown key(s) {', '.join(unknown)}")
    for key in ("task", "category"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise UsageFailure(f"{where}: {key!r} must be a non-empty string")
    source = raw.get("source", "bigbench")
    if source not in ("bigbench", "hf"):
        raise UsageFailure(f"{where}: source must be 'bigbench' or 'hf', got {source!r}")
    if source == "bigbench" and any(k in raw for k in _HF_KEYS):
        raise UsageFailure(f"{where}: {', '.join(k for k in _HF_KEYS if k in raw)} only apply to source: hf")
    caps = {k: _check_cap(where, k, raw[k]) if k in raw else v for k, v in defaults.items()}
    hf: dict[str, Any] = {}
    for key in ("split", "hub_path", "hub_config", "revision"):
        if key in raw and raw[key] is not None:
            if not isinstance(raw[key], str):
                raise UsageFailure(f"{where}: {key} must be a string")
            hf[key] = raw[key]
    files = raw.get("data_files")
    if files is not None:
        files = [files] if isinstance(files, str) else files
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise UsageFailure(f"{where}: data_files must be a path or a list of paths")
        hf["data_files"] = tuple(str((base / f).resolve()) for f in files)
    return TaskSpec(task=raw["task"].strip(), category=raw["category"].strip(), role=role, source=source,
                    **caps, **hf)


def load_mixture(path: str | Path) -> Mixture:
    """Parse and check a mixture YAML; every problem is a one-line :class:`~sit_causal.inputs.UsageFailure`."""
    path = Path(path)
    try:
        raw = load_yaml(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise UsageFailure(f"mixture {path}: no such file") from None
    except yaml.YAMLError as err:  # a duplicate key included: YAML itself keeps the last one
        raise UsageFailure(f"mixture {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageFailure(f"mixture {path}: not readable YAML ({err.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise UsageFailure(f"mixture {path}: expected a mapping at the top level")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise UsageFailure(f"mixture {path}: unknown key(s) {', '.join(unknown)}")
    base = path.resolve().parent
    defaults = dict(_CAPS)
    raw_defaults = raw.get("defaults") or {}
    if not isinstance(raw_defaults, dict) or set(raw_defaults) - set(_CAPS):
        bad = sorted(set(raw_defaults) - set(_CAPS)) if isinstance(raw_defaults, dict) else ["(not a mapping)"]
        raise UsageFailure(f"mixture {path}: unknown defaults key(s) {', '.join(bad)}")
    for key, value in raw_defaults.items():
        defaults[key] = _check_cap(f"mixture {path}: defaults", key, value)
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageFailure(f"mixture {path}: seed must be a non-negative integer")
    train = raw.get("train")
    if not isinstance(train, list) or not train:
        raise UsageFailure(f"mixture {path}: 'train' must be a non-empty list of task entries")
    heldout = raw.get("heldout") or {}
    if not isinstance(heldout, dict) or set(heldout) - {"out_of_domain", "cross_task"}:
        raise UsageFailure(f"mixture {path}: 'heldout' must map out_of_domain / cross_task to task lists")
    tasks: list[TaskSpec] = []
    for role, entries in (("train", train), *((g, heldout.get(g) or []) for g in ("out_of_domain", "cross_task"))):
        if not isinstance(entries, list):
            raise UsageFailure(f"mixture {path}: {role} must be a list of task entries")
        for i, entry in enumerate(entries):
            tasks.append(_entry(f"mixture {path}: {role}[{i}]", entry, role, defaults, base))
    seen: dict[str, str] = {}
    for t in tasks:
        if t.task in seen:
            raise UsageFailure(f"mixture {path}: task {t.task!r} appears twice ({seen[t.task]} and {t.role})")
        seen[t.task] = t.role
    trained = {t.category for t in tasks if t.role == "train"}
    for t in tasks:
        if t.role == "out_of_domain" and t.category not in trained:
            raise UsageFailure(f"mixture {path}: out_of_domain task {t.task!r} has category {t.category!r}, "
                               "which no training task has (that makes it cross_task)")
        if t.role == "cross_task" and t.category in trained:
            raise UsageFailure(f"mixture {path}: cross_task task {t.task!r} has category {t.category!r}, "
                               "which a training task has (that makes it out_of_domain)")
    root = raw.get("bigbench_root")
    if root is not None and not isinstance(root, str):
        raise UsageFailure(f"mixture {path}: bigbench_root must be a path")
    return Mixture(
        name=str(raw.get("name") or path.stem), seed=seed, tasks=tuple(tasks),
        bigbench_root=(base / root).resolve() if root else None,
        description=str(raw.get("description") or ""), path=path,
    )


@dataclass
class TaskSplit:
    """The examples of one task, split; counts of what was dropped before splitting."""

    spec: TaskSpec
    available: int
    dropped_skipped: int = 0
    dropped_long: int = 0
    merged_duplicates: int = 0
    train: list[InstructionRecord] = field(default_factory=list)
    validation: list[InstructionRecord] = field(default_factory=list)
    heldout: list[InstructionRecord] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        return {
            "role": self.spec.role, "category": self.spec.category, "source": self.spec.source,
            "available": self.available, "dropped_skipped": self.dropped_skipped,
            "dropped_long": self.dropped_long, "merged_duplicates": self.merged_duplicates,
            "train": len(self.train), "validation": len(self.validation), "heldout": len(self.heldout),
        }


def _task_rng(seed: int, task: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(task.encode("utf-8"))])


def source_chars(record: InstructionRecord) -> int:
    """Characters of instruction + input + options: roughly what the encoder reads (about 4-5 per token)."""
    return len(record.instruction) + len(record.input) + sum(len(o) for o in record.options or ())


def _too_long(spec: TaskSpec, r: InstructionRecord) -> bool:
    return (
        (spec.max_input_chars is not None and len(r.input) > spec.max_input_chars)
        or (spec.max_source_chars is not None and source_chars(r) > spec.max_source_chars)
        or (spec.max_output_chars is not None and len(r.output) > spec.max_output_chars)
    )


def _filter(spec: TaskSpec, records: list[InstructionRecord]) -> tuple[list[InstructionRecord], int, int]:
    """Length filters, then merging of examples with the same (instruction, input).

    A merged example keeps the first one's id and output and the union of all references, in order (GEM's
    E2E, for instance, lists each meaning representation once per human reference). Returns
    ``(kept, #dropped as too long, #merged into an earlier example)``.
    """
    kept: list[InstructionRecord] = []
    long_, merged = 0, 0
    index: dict[tuple[str, str], int] = {}
    for r in records:
        if _too_long(spec, r):
            long_ += 1
            continue
        key = (r.instruction, r.input)
        if key in index:
            first = kept[index[key]]
            refs = tuple(dict.fromkeys((*first.all_references, *r.all_references)))
            kept[index[key]] = replace(first, references=refs)
            merged += 1
            continue
        index[key] = len(kept)
        kept.append(r)
    return kept, long_, merged


def _expand_references(records: list[InstructionRecord], cap: int) -> list[InstructionRecord]:
    """Training records: one per reference of each generation example (``id#k`` for the k-th, k >= 1), capped."""
    out: list[InstructionRecord] = []
    for r in records:
        if r.is_multiple_choice or len(r.all_references) == 1:
            out.append(r)
        else:
            out.extend(replace(r, output=ref, references=(ref,), id=r.id if k == 0 else f"{r.id}#{k}")
                       for k, ref in enumerate(r.all_references))
        if len(out) >= cap:
            break
    return out[:cap]


def _with_group(record: InstructionRecord, group: str) -> InstructionRecord:
    return replace(record, extra={**record.extra, "group": group})


def split_task(spec: TaskSpec, records: list[InstructionRecord], seed: int, skipped: int = 0) -> TaskSplit:
    """Filter, merge, permute and split one task's records (rules in the module docstring)."""
    kept, n_long, n_merged = _filter(spec, records)
    out = TaskSplit(spec, available=len(records), dropped_skipped=skipped, dropped_long=n_long,
                    merged_duplicates=n_merged)
    order = _task_rng(seed, spec.task).permutation(len(kept))
    shuffled = [replace(kept[i], category=spec.category) for i in order]
    k = spec.paraphrases
    if spec.role == "train":
        n = len(shuffled)
        n_in = min(spec.max_in_domain, math.floor(n * spec.in_domain_fraction))
        n_val = min(spec.max_validation, math.floor(n * spec.validation_fraction))
        out.heldout = with_paraphrases([_with_group(r, "in_domain") for r in shuffled[:n_in]], k)
        out.validation = with_paraphrases(shuffled[n_in:n_in + n_val], k)
        out.train = with_paraphrases(_expand_references(shuffled[n_in + n_val:], spec.max_train), k)
    else:
        out.heldout = with_paraphrases([_with_group(r, spec.role) for r in shuffled[:spec.max_heldout]], k)
    return out


@dataclass
class BuiltMixture:
    """The three splits of a mixture and its manifest (what :func:`write_mixture` saves)."""

    splits: dict[str, list[InstructionRecord]]
    manifest: dict[str, Any]


def _load_records(spec: TaskSpec, bigbench_root: Path | None, seed: int) -> tuple[list[InstructionRecord], int]:
    if spec.source == "hf":
        from sit_nlp.data.hf_adapters import load_hf_records

        records = load_hf_records(spec.task, spec.split, data_files=spec.data_files, hub_path=spec.hub_path,
                                  hub_config=spec.hub_config, revision=spec.revision, seed=seed)
        return records, 0
    from sit_nlp.data.bigbench import load_task_records

    assert bigbench_root is not None
    return load_task_records(bigbench_root, spec.task, spec.category)


def build_mixture(
    mixture: Mixture,
    cache: str | Path | None = None,
    seed: int | None = None,
    progress: Callable[[Iterable[TaskSpec]], Iterable[TaskSpec]] | None = None,
) -> BuiltMixture:
    """Load every task of ``mixture`` and split it.

    Arguments:
        mixture: from :func:`load_mixture`.
        cache: BIG-bench tree to read (overrides the mixture's ``bigbench_root``; default: the fetched
            cache, :func:`sit_nlp.data.bigbench.default_cache_dir`).
        seed: overrides the mixture's seed.
        progress: wraps the task iteration (a tqdm bar in the CLI).

    Raises :class:`~sit_causal.inputs.UsageFailure` for a missing cache, an unknown task, a task with no
    usable example, or an empty split.
    """
    from sit_nlp.data.bigbench import default_cache_dir, find_tasks_root

    seed = mixture.seed if seed is None else seed
    root: Path | None = None
    if any(t.source == "bigbench" for t in mixture.tasks):
        where = Path(cache) if cache is not None else mixture.bigbench_root or default_cache_dir()
        root = find_tasks_root(where)
        for t in mixture.tasks:  # fail on an unknown task before any long load
            if t.source == "bigbench" and not (root / t.task / "task.json").is_file():
                from sit_nlp.data.bigbench import load_task

                load_task(root, t.task)
    splits: dict[str, list[InstructionRecord]] = {s: [] for s in SPLITS}
    per_task: dict[str, Any] = {}
    for spec in (progress or (lambda x: x))(mixture.tasks):
        records, skipped = _load_records(spec, root, seed)
        part = split_task(spec, records, seed, skipped)
        if not part.heldout and not part.train:
            raise UsageFailure(f"task {spec.task!r}: no usable examples (after the length filters)")
        for s in SPLITS:
            splits[s].extend(getattr(part, s))
        per_task[spec.task] = part.counts()
    for s in SPLITS:
        if not splits[s]:
            raise UsageFailure(f"mixture {mixture.name}: the {s} split is empty (check caps and fractions)")
    groups = {g: sum(1 for r in splits["heldout"] if r.extra.get("group") == g) for g in GROUPS}
    manifest = {
        "mixture": mixture.name,
        "mixture_file": str(mixture.path) if mixture.path else None,
        "seed": seed,
        "bigbench_root": str(root) if root else None,
        "counts": {s: len(v) for s, v in splits.items()},
        "heldout_groups": groups,
        "tasks": per_task,
        "specs": [{k: v for k, v in asdict(t).items() if v is not None} for t in mixture.tasks],
    }
    return BuiltMixture(splits, manifest)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_mixture(built: BuiltMixture, out: str | Path, force: bool = False) -> Path:
    """Write ``train.jsonl``, ``validation.jsonl``, ``heldout.jsonl`` and ``manifest.json`` into ``out``.

    Everything goes to a temporary sibling directory first, then replaces ``out`` in one rename, so a
    failure leaves no half-written split. An existing ``out`` is replaced only with ``force``.
    """
    out = Path(out)
    if out.exists() and not force:
        raise UsageFailure(f"{out} already exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    try:
        files = {}
        for s in SPLITS:
            write_records(built.splits[s], tmp / f"{s}.jsonl")
            files[f"{s}.jsonl"] = _sha256(tmp / f"{s}.jsonl")
        manifest = {**built.manifest, "sha256": files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        replace_directory(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def counts_table(manifest: dict[str, Any]) -> str:
    """A markdown table of per-task counts (the ``data build`` summary)."""
    lines = ["| task | role | category | usable | train | validation | heldout |", "|---|---|---|---|---|---|---|"]
    for task, c in manifest["tasks"].items():
        usable = c["available"] - c["dropped_long"] - c["merged_duplicates"]
        lines.append(f"| {safe_text(task)} | {c['role']} | {safe_text(c['category'])} | {usable} | {c['train']} "
                     f"| {c['validation']} | {c['heldout']} |")
    n = manifest["counts"]
    g = manifest["heldout_groups"]
    lines.append(f"| **total** | | | | {n['train']} | {n['validation']} | {n['heldout']} |")
    lines.append("")
    lines.append("held-out groups: " + ", ".join(f"{k} {v}" for k, v in g.items()))
    return "\n".join(lines)


def refuse_tracked_output(out: Path) -> None:
    """BIG-bench content must never be committed: refuse an output folder inside this repository that git
    does not ignore (``runs/`` and ``data/`` are ignored)."""
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    target = out.resolve()
    if not (repo / ".git").exists() or not target.is_relative_to(repo):
        return
    rel = target.relative_to(repo).as_posix() + "/"
    check = subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", rel], capture_output=True, check=False)
    if check.returncode == 1:
        raise UsageFailure(f"{out} is inside the repository and not git-ignored; BIG-bench data must never be "
                           "committed: write under runs/ or data/")
