"""The paper's own datasets through Hugging Face ``datasets``: instruction templates to records.

Each adapter maps one row of a dataset, in that dataset's own column schema, to an
:class:`~sit_nlp.data.records.InstructionRecord` with a fixed instruction template:

=================  ==========================  ========================================  ===============
adapter            hub location (default)      columns read                              category
=================  ==========================  ========================================  ===============
``gigaword``       ``Harvard/gigaword``        ``document``, ``summary``                 summarization
``xsum``           ``EdinburghNLP/xsum``       ``document``, ``summary``, ``id``         summarization
``cnn_dailymail``  ``abisee/cnn_dailymail``    ``article``, ``highlights``, ``id``       summarization
                   (config ``3.0.0``)
``super_glue_rte`` ``aps/super_glue`` (``rte``) ``premise``, ``hypothesis``, ``label``,    nli
                                               ``idx``; label 0 = entailment -> "yes",
                                               1 -> "no"; -1 (unlabelled test) skipped
=================  ==========================  ========================================  ===============

RTE is multiple choice (``options = ("yes", "no")``), scored by rank classification; the others are
generation, scored by ROUGE-L. ``id`` is ``"<adapter>:<split>:<row id or index>"``.

With a network, :func:`load_hf_records` calls ``datasets.load_dataset(hub_path, config, split=...)``
(hub locations move: override them with ``hub_path`` / ``hub_config`` / ``revision``). Offline, pass
``data_files``: local JSON/JSONL (or CSV, Parquet) files in the same column schema, loaded with
``datasets.load_dataset("json", data_files=...)``; this is how the tests run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sit_causal.inputs import UsageFailure
from sit_nlp.data.records import InstructionRecord

__all__ = ["ADAPTERS", "HFAdapter", "load_hf_records", "rows_to_records"]

Row = Mapping[str, Any]


@dataclass(frozen=True)
class HFAdapter:
    """How one Hugging Face dataset becomes instruction records (see the module table)."""

    name: str
    hub_path: str
    hub_config: str | None
    category: str
    instruction: str
    columns: tuple[str, ...]
    convert: Callable[[Row], tuple[str, str, tuple[str, ...] | None] | None]
    id_column: str | None = None

    def to_record(self, row: Row, split: str, index: int) -> InstructionRecord | None:
        """One row -> one record, or ``None`` for a row without a usable label/target."""
        converted = self.convert(row)
        if converted is None:
            return None
        text, output, options = converted
        if not text.strip() or not output.strip():
            return None
        row_id = row.get(self.id_column) if self.id_column else None
        return InstructionRecord(
            task=self.name, instruction=self.instruction, input=text, output=output, options=options,
            id=f"{self.name}:{split}:{row_id if row_id is not None else index}",
            category=self.category, dataset=self.name,
        )


def _summary(src: str, tgt: str) -> Callable[[Row], tuple[str, str, None]]:
    def convert(row: Row) -> tuple[str, str, None]:
        return str(row[src]).strip(), str(row[tgt]).strip(), None

    return convert


_RTE_OPTIONS = ("yes", "no")


def _rte(row: Row) -> tuple[str, str, tuple[str, ...]] | None:
    label = int(row["label"])
    if label not in (0, 1):
        return None
    text = f"Premise: {str(row['premise']).strip()}\nHypothesis: {str(row['hypothesis']).strip()}"
    return text, _RTE_OPTIONS[label], _RTE_OPTIONS


ADAPTERS: dict[str, HFAdapter] = {
    a.name: a
    for a in (
        HFAdapter(
            "gigaword", "Harvard/gigaword", None, "summarization",
            "Write a short headline for the following news sentence.",
            ("document", "summary"), _summary("document", "summary"),
        ),
        HFAdapter(
            "xsum", "EdinburghNLP/xsum", None, "summarization",
            "Summarize the following news article in one sentence.",
            ("document", "summary"), _summary("document", "summary"), id_column="id",
        ),
        HFAdapter(
            "cnn_dailymail", "abisee/cnn_dailymail", "3.0.0", "summarization",
            "Summarize the following news article in a few sentences.",
            ("article", "highlights"), _summary("article", "highlights"), id_column="id",
        ),
        HFAdapter(
            "super_glue_rte", "aps/super_glue", "rte", "nli",
            'Does the premise entail the hypothesis? Answer "yes" or "no".',
            ("premise", "hypothesis", "label"), _rte, id_column="idx",
        ),
    )
}


def _adapter(name: str) -> HFAdapter:
    if name not in ADAPTERS:
        raise UsageFailure(f"unknown Hugging Face adapter {name!r}; known: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[name]


def rows_to_records(
    name: str, rows: Sequence[Row], split: str, indices: Sequence[int] | None = None,
) -> list[InstructionRecord]:
    """Apply adapter ``name`` to dataset rows (a ``datasets.Dataset`` or a list of dicts).

    ``indices`` are the rows' positions in the full split (used in ids where the row has no id column).
    """
    adapter = _adapter(name)
    records = []
    for position, row in enumerate(rows):
        index = indices[position] if indices is not None else position
        missing = [c for c in adapter.columns if c not in row]
        if missing:
            raise UsageFailure(f"{name}: row {index} lacks column(s) {', '.join(missing)}")
        record = adapter.to_record(row, split, index)
        if record is not None:
            records.append(record)
    return records


def load_hf_records(
    name: str,
    split: str = "validation",
    data_files: str | Path | Sequence[str | Path] | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    hub_path: str | None = None,
    hub_config: str | None = None,
    revision: str | None = None,
) -> list[InstructionRecord]:
    """Load ``split`` of adapter ``name`` and convert it; a seeded subsample of ``max_examples`` if given.

    Arguments:
        name: a key of :data:`ADAPTERS`.
        split: the dataset split (with ``data_files``, only used in record ids).
        data_files: local files in the dataset's column schema; ``None`` loads from the hub.
        max_examples: keep a uniformly drawn subset of this size (``numpy.random.default_rng(seed)``),
            in the original row order.
        hub_path, hub_config, revision: override the adapter's hub location.
    """
    import datasets

    adapter = _adapter(name)
    try:
        if data_files is not None:
            files = [str(data_files)] if isinstance(data_files, str | Path) else [str(f) for f in data_files]
            for f in files:
                if not Path(f).is_file():
                    raise UsageFailure(f"{name}: data file {f} not found")
            suffix = Path(files[0]).suffix.lstrip(".").lower()
            builder = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}.get(suffix, "json")
            ds = datasets.load_dataset(builder, data_files=files, split="train")
        else:
            ds = datasets.load_dataset(
                hub_path or adapter.hub_path, hub_config or adapter.hub_config, split=split, revision=revision,
            )
    except UsageFailure:
        raise
    except Exception as err:  # datasets raises many types (network, schema, missing split)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UsageFailure(f"{name}: could not load the dataset ({err.__class__.__name__}: {first})") from None
    if max_examples is None or max_examples >= len(ds):
        return rows_to_records(name, ds, split)
    rng = np.random.default_rng(seed)
    indices = sorted(rng.choice(len(ds), size=max_examples, replace=False).tolist())
    return rows_to_records(name, ds.select(indices), split, indices)
