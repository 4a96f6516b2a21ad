"""Hugging Face adapters, offline: tiny invented files in each dataset's own column schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sit_causal.inputs import UsageFailure
from sit_nlp.data.hf_adapters import ADAPTERS, load_hf_records, rows_to_records
from sit_nlp.data.records import read_records

HF = Path(__file__).parent / "fixtures" / "hf"


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (HF / f"{name}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", ["gigaword", "xsum", "cnn_dailymail"])
def test_summarisation_adapters_load_local_files(name: str) -> None:
    records = load_hf_records(name, "test", data_files=HF / f"{name}.jsonl")
    rows = _rows(name)
    src, tgt = ADAPTERS[name].columns
    assert [r.input for r in records] == [row[src].strip() for row in rows]
    assert [r.output for r in records] == [row[tgt].strip() for row in rows]
    assert all(r.category == "summarization" and not r.is_multiple_choice for r in records)
    assert all(r.instruction == ADAPTERS[name].instruction and r.task == name for r in records)
    id_col = ADAPTERS[name].id_column
    expected_ids = [f"{name}:test:{row[id_col] if id_col else i}" for i, row in enumerate(rows)]
    assert [r.id for r in records] == expected_ids


def test_rte_is_multiple_choice_and_skips_unlabelled_rows() -> None:
    records = load_hf_records("super_glue_rte", "validation", data_files=[HF / "super_glue_rte.jsonl"])
    rows = [r for r in _rows("super_glue_rte") if r["label"] in (0, 1)]
    assert len(records) == len(rows) == 3
    for rec, row in zip(records, rows, strict=True):
        assert rec.options == ("yes", "no") and rec.output == ("yes" if row["label"] == 0 else "no")
        assert row["premise"] in rec.input and row["hypothesis"] in rec.input
        assert rec.id == f"super_glue_rte:validation:{row['idx']}" and rec.category == "nli"


def test_subsample_is_seeded_and_keeps_row_order() -> None:
    a = load_hf_records("gigaword", data_files=HF / "gigaword.jsonl", max_examples=2, seed=5)
    b = load_hf_records("gigaword", data_files=HF / "gigaword.jsonl", max_examples=2, seed=5)
    assert [r.id for r in a] == [r.id for r in b] and len(a) == 2
    positions = [int(r.id.rsplit(":", 1)[1]) for r in a]
    assert positions == sorted(positions)
    seeds = {tuple(r.id for r in load_hf_records("gigaword", data_files=HF / "gigaword.jsonl", max_examples=2,
                                                   seed=s)) for s in range(8)}
    assert len(seeds) > 1


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageFailure, match="unknown Hugging Face adapter 'rte'"):
        load_hf_records("rte", data_files=HF / "super_glue_rte.jsonl")
    with pytest.raises(UsageFailure, match="lacks column"):
        rows_to_records("xsum", [{"document": "x"}], "test")
    with pytest.raises(UsageFailure, match="not found"):
        load_hf_records("xsum", data_files=tmp_path / "missing.jsonl")


def test_hf_cli_writes_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sit_causal.cli.common import run_app
    from sit_nlp.cli.main import app

    out = tmp_path / "rte.jsonl"
    code = run_app(app, "sit-nlp", ["data", "hf", "super_glue_rte", "--data-files", str(HF / "super_glue_rte.jsonl"),
                                    "--out", str(out)])
    assert code == 0 and len(read_records(out)) == 3
    capsys.readouterr()
