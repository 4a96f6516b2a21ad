"""`sit-nlp masks`: the learned task x factor masks of a SIT checkpoint, heatmap and UIC verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sit_causal.cli.common import run_app
from sit_causal.latent import learned_graph
from sit_causal.theory.uic import check_uic
from sit_nlp.data.records import read_records


def test_masks_cover_training_and_heldout_tasks(tiny_data: Path, tiny_checkpoint: Any, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from sit_nlp.cli.main import app

    run = tiny_checkpoint(tmp_path, "sit")
    out = tmp_path / "masks"
    code = run_app(app, "sit-nlp", ["masks", "--checkpoint", str(run), "--data", str(tiny_data),
                                    "--out", str(out), "--json"])
    assert code == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    train_tasks = {r.task for r in read_records(tiny_data / "train.jsonl")}
    held_tasks = {r.task for r in read_records(tiny_data / "heldout.jsonl")} - train_tasks
    assert set(result["tasks"]) == train_tasks | held_tasks and set(result["heldout_tasks"]) == held_tasks
    masks = result["masks"]
    assert len(masks) == len(result["tasks"]) and all(len(row) == 4 for row in masks)
    assert all(0.0 <= v <= 1.0 for row in masks for v in row)
    # the verdict is the checker's on the binarised training rows
    train_rows = [row for t, row in zip(result["tasks"], masks, strict=True) if t in train_tasks]
    expected = check_uic(learned_graph(np.array(train_rows), threshold=0.5)).uic_holds
    assert result["uic"]["uic_holds"] == expected
    assert (out / "masks.png").stat().st_size > 1000 and (out / "masks.json").is_file()


def test_masks_bad_input_is_one_line(tiny_checkpoint: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sit_nlp.cli.main import app

    vanilla = tiny_checkpoint(tmp_path, "vanilla")
    assert run_app(app, "sit-nlp", ["masks", "--checkpoint", str(vanilla)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vanilla model has no selection masks" in err
    sit = tiny_checkpoint(tmp_path, "sit")
    assert run_app(app, "sit-nlp", ["masks", "--checkpoint", str(sit), "--threshold", "1.5"]) == 2
    assert "--threshold" in capsys.readouterr().err
