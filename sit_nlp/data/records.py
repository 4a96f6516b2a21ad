"""The instruction-data record: one JSON object per line, shared by data building, training and eval.

Schema of a record (JSONL, UTF-8, one object per line)::

    {"id": str, "task": str, "category": str, "dataset": str,
     "instruction": str, "input": str, "output": str,
     "options": [str, ...]}            # "options" only for multiple-choice tasks; "output" is one of them

``output`` is the reference target (for multiple choice: the correct option). ``references`` (a list of
acceptable outputs) may be given; it defaults to ``[output]``. Unknown keys are kept in ``extra``.
Malformed input raises :class:`RecordError` with a one-line message naming the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sit_causal.fileio import iter_jsonl

__all__ = ["InstructionRecord", "RecordError", "iter_json", "read_records", "resolve_data_path", "write_records"]

_REQUIRED = ("task", "instruction", "input", "output")


class RecordError(ValueError):
    """A malformed record or file; ``str(err)`` is one line meant for a user."""


@dataclass(frozen=True)
class InstructionRecord:
    """One instruction-tuning example (see the module docstring for the JSON schema)."""

    task: str
    instruction: str
    input: str
    output: str
    id: str = ""
    category: str = ""
    dataset: str = ""
    options: tuple[str, ...] | None = None
    references: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_multiple_choice(self) -> bool:
        return bool(self.options)

    @property
    def all_references(self) -> tuple[str, ...]:
        return self.references or (self.output,)

    @classmethod
    def from_json(cls, obj: Any, where: str = "record") -> InstructionRecord:
        if not isinstance(obj, dict):
            raise RecordError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in _REQUIRED if k not in obj]
        if missing:
            raise RecordError(f"{where}: missing key(s) {', '.join(missing)}")
        for key in (*_REQUIRED, "id", "category", "dataset"):
            if key in obj and not isinstance(obj[key], str):
                raise RecordError(f"{where}: {key!r} must be a string")
        options = obj.get("options")
        if options is not None:
            if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
                raise RecordError(f"{where}: 'options' must be a list of at least two strings")
            if obj["output"] not in options:
                raise RecordError(f"{where}: 'output' is not one of the 'options'")
        refs = obj.get("references", [])
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise RecordError(f"{where}: 'references' must be a list of strings")
        known = {*_REQUIRED, "id", "category", "dataset", "options", "references"}
        return cls(
            task=obj["task"], instruction=obj["instruction"], input=obj["input"], output=obj["output"],
            id=obj.get("id", ""), category=obj.get("category", ""), dataset=obj.get("dataset", ""),
            options=tuple(options) if options is not None else None, references=tuple(refs),
            extra={k: v for k, v in obj.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "task": self.task, "category": self.category, "dataset": self.dataset,
            "instruction": self.instruction, "input": self.input, "output": self.output,
        }
        if self.options is not None:
            out["options"] = list(self.options)
        if self.references:
            out["references"] = list(self.references)
        out.update(self.extra)
        return out


def read_records(path: str | Path, allow_empty: bool = False) -> list[InstructionRecord]:
    """Read a JSONL file of records; raises :class:`RecordError` on the first bad line or an empty file."""
    records = [InstructionRecord.from_json(obj, where=where) for where, obj in iter_jsonl(path, RecordError)]
    if not records and not allow_empty:
        raise RecordError(f"{path}: no records (empty split)")
    return records


def iter_json(records: Iterable[InstructionRecord]) -> Iterator[str]:
    for r in records:
        yield json.dumps(r.to_json(), ensure_ascii=False)


ASSETS = Path(__file__).resolve().parents[1] / "assets"
"""The files shipped with the package (tiny models' tokenizers, the toy mixture)."""


def resolve_data_path(path: str) -> Path:
    """``builtin:NAME`` is ``sit_nlp/assets/NAME`` (works for installed users); anything else a path."""
    return ASSETS / path.split(":", 1)[1] if path.startswith("builtin:") else Path(path)


def write_records(records: Iterable[InstructionRecord], path: str | Path) -> int:
    """Write records as JSONL atomically (:func:`sit_causal.fileio.atomic_open`: a temporary sibling,
    fsynced, renamed; removed on any failure); returns the count."""
    from sit_causal.fileio import atomic_open

    n = 0
    with atomic_open(Path(path), "w") as fh:
        for line in iter_json(records):
            fh.write(line + "\n")
            n += 1
    return n
