"""Every bad input is one line on stderr and exit code 2, found before any work, and leaves no partial file.

Each case goes through :func:`sit_causal.cli.common.run_app`, as the console scripts do.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from sit_causal.cli.common import run_app
from sit_causal.fileio import atomic_open, check_output_dir, check_output_file, iter_jsonl, write_text_atomic
from sit_causal.inputs import UsageFailure, safe_text

REPO = Path(__file__).resolve().parents[1]
BOM = b"\xef\xbb\xbf"


def causal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from sit_causal.cli.main import app

    rc = run_app(app, "sit-causal", argv)
    out, err = capsys.readouterr()
    return rc, out, err


def nlp(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from sit_nlp.cli.main import app

    rc = run_app(app, "sit-nlp", argv)
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(result: tuple[int, str, str], prog: str, *fragments: str) -> str:
    rc, _out, err = result
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


def files_in(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ---------------------------------------------------------------------- shared helpers
def test_check_output_file_refusals(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "done.json").write_text("finished work")
    (tmp_path / "afile").write_text("x")
    cases = {
        tmp_path / "dir": "is a directory",
        tmp_path / "done.json": "already exists; pass --force",
        tmp_path / "afile" / "out.json": "is not a directory",
        tmp_path / "afile" / "deeper" / "out.json": "is not a directory",
    }
    for path, fragment in cases.items():
        with pytest.raises(UsageFailure, match=fragment) as err:
            check_output_file(path, "--out")
        assert str(err.value).startswith(f"--out {path}") and "\n" not in str(err.value)
    assert check_output_file(tmp_path / "done.json", "--out", overwrite=True) == tmp_path / "done.json"
    assert check_output_file(tmp_path / "new" / "sub" / "out.json") == tmp_path / "new" / "sub" / "out.json"
    with pytest.raises(UsageFailure, match="also an input"):
        check_output_file(tmp_path / "done.json", "--out", overwrite=True, inputs=[tmp_path / "done.json"])
    assert files_in(tmp_path) == {"dir", "done.json", "afile"}  # the checks create nothing
    assert (tmp_path / "done.json").read_text() == "finished work"


def test_not_writable_is_checked_on_the_nearest_existing_ancestor(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access

    def access(path: Any, mode: int) -> bool:  # root passes every os.access check: simulate a read-only folder
        return False if Path(path) == locked else real_access(path, mode)

    monkeypatch.setattr(os, "access", access)
    for path in (locked / "out.json", locked / "a" / "b" / "out.json"):
        with pytest.raises(UsageFailure, match=f"cannot write in {locked}"):
            check_output_file(path, "--out")
    with pytest.raises(UsageFailure, match="cannot write in"):
        check_output_dir(locked / "run", "--out")
    with pytest.raises(UsageFailure, match="cannot write in"):
        check_output_dir(locked, "--out")  # files would be written into it


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_not_writable_for_real(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(UsageFailure, match="cannot write in"):
            check_output_file(locked / "out.json", "--out")
    finally:
        locked.chmod(0o700)


def test_check_output_dir_refusals(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageFailure, match="exists and is not a directory"):
        check_output_dir(tmp_path / "afile", "--out")
    with pytest.raises(UsageFailure, match="is not a directory"):
        check_output_dir(tmp_path / "afile" / "run", "--out")
    with pytest.raises(UsageFailure, match="not empty"):
        check_output_dir(tmp_path / "full", "--out", must_be_empty=True)
    assert check_output_dir(tmp_path / "empty", "--out", must_be_empty=True) == tmp_path / "empty"
    assert check_output_dir(tmp_path / "full", "--out") == tmp_path / "full"
    assert check_output_dir(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert files_in(tmp_path) == {"afile", "full", "full/keep.txt", "empty"}


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_write_text_atomic_mode_follows_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        path = write_text_atomic(tmp_path / "sub" / "out.json", "{}\n")
    finally:
        os.umask(old)
    assert path.read_text() == "{}\n"
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert files_in(tmp_path) == {"sub", "sub/out.json"}


def test_write_text_atomic_keeps_an_existing_mode_and_cleans_up_on_failure(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.json"
    path.write_text("old")
    path.chmod(0o664)
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o664

    def boom(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(path, "newer")
    monkeypatch.undo()
    assert path.read_text() == "new" and files_in(tmp_path) == {"out.json"}
    with pytest.raises(KeyboardInterrupt), atomic_open(tmp_path / "partial.jsonl") as fh:
        fh.write("half a line")
        raise KeyboardInterrupt
    assert files_in(tmp_path) == {"out.json"}


def test_safe_text() -> None:
    assert safe_text("plain ünïcode") == "plain ünïcode"
    shown = safe_text("red\x1b[31mX\x1b[0m\nnext\rline\x07\x9b\u202e")
    assert "\x1b" not in shown and "\n" not in shown and "\r" not in shown and "\u202e" not in shown
    assert shown == "red\\x1b[31mX\\x1b[0m\\x0anext\\x0dline\\x07\\x9b\\u202e"


def test_iter_jsonl_bom_and_duplicate_keys(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_bytes(BOM + b'{"a": 1}\n{"b": 2}\n')
    assert [obj for _, obj in iter_jsonl(path)] == [{"a": 1}, {"b": 2}]
    path.write_text('{"a": 1}\n{"a": 1, "a": 2}\n')
    with pytest.raises(UsageFailure, match=r"r\.jsonl:2: duplicate key 'a'"):
        list(iter_jsonl(path))


# ---------------------------------------------------------------------- sit-causal check-uic
def _matrix(adjacency: list[list[int]], factors: list[str], tasks: list[str]) -> dict[str, Any]:
    return {"factors": factors, "tasks": tasks, "adjacency": adjacency, "rows": "tasks"}


def test_check_uic_bad_graphs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = {
        "duplicate key": ('{"factors": ["a"], "tasks": ["x"], "adjacency": [[1]], "rows": "tasks", '
                          '"adjacency": [[0]]}', "duplicate key 'adjacency'"),
        "no tasks (matrix)": (json.dumps(_matrix([], ["a", "b"], [])), "no tasks"),
        "no tasks (node-link)": (json.dumps({"nodes": [{"id": "a", "kind": "latent"}], "edges": []}), "no tasks"),
        "duplicate key in a node": ('{"nodes": [{"id": "a", "kind": "latent", "kind": "target"}], "edges": []}',
                                    "duplicate key 'kind'"),
    }
    for name, (text, fragment) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        err = one_line_error(causal(["check-uic", str(path)], capsys), "sit-causal", fragment)
        assert "no edges" not in err
    # control characters in a path (or an id) never break the one line, nor reach the terminal raw
    err = one_line_error(causal(["check-uic", str(tmp_path / "evil\n\x1b[2Jname.json")], capsys), "sit-causal",
                         "no such file")
    assert "\x1b" not in err


def test_check_uic_human_table_escapes_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "g.json"
    path.write_text(json.dumps(_matrix([[1, 1], [0, 1]], ["a\x1b[31m", "b"], ["x\u202e", "y"])))
    rc, out, _ = causal(["check-uic", str(path)], capsys)
    assert rc == 1 and "\x1b" not in out and "\u202e" not in out and "a\\x1b[31m" in out


def _all_ones(tmp_path: Path, tasks: int, factors: int) -> Path:
    path = tmp_path / f"ones_{tasks}x{factors}.json"
    path.write_text(json.dumps(_matrix([[1] * factors for _ in range(tasks)], [f"L{i}" for i in range(factors)],
                                       [f"T{t}" for t in range(tasks)])))
    return path


def test_check_uic_json_caps_the_pairs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _all_ones(tmp_path, 64, 5000)  # every factor mixes with every other: 24,995,000 pairs
    start = time.perf_counter()
    rc, out, err = causal(["check-uic", str(path), "--json"], capsys)
    seconds = time.perf_counter() - start
    assert rc == 1 and err == ""
    assert len(out) < 4_000_000 and seconds < 120  # uncapped: about 800 MB; the bound is a hang guard
    data = json.loads(out)
    assert data["n_violations"] == 5000 * 4999
    assert len(data["violations"]) == 1000 and data["pairs_truncated"] == 5000 * 4999 - 1000
    assert sum(len(f["mixes_with"]) for f in data["factors"]) == 1000
    assert all(not f["identifiable"] for f in data["factors"]) and len(data["factors"]) == 5000
    cut = [f for f in data["factors"] if "mixes_with_truncated" in f]
    assert all(len(f["mixes_with"]) + f["mixes_with_truncated"] == 4999 for f in cut)
    full = {f["id"]: f["mixes_with"] for f in data["factors"] if "mixes_with_truncated" not in f}
    for a, mixes in full.items():
        assert mixes == [b for x, b in data["violations"] if x == a]


def test_check_uic_all_pairs_and_max_pairs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _all_ones(tmp_path, 3, 40)
    rc, out, _ = causal(["check-uic", str(path), "--json", "--all-pairs"], capsys)
    data = json.loads(out)
    assert rc == 1 and len(data["violations"]) == 40 * 39 and data["pairs_truncated"] == 0
    assert all("mixes_with_truncated" not in f and len(f["mixes_with"]) == 39 for f in data["factors"])
    rc, out, _ = causal(["check-uic", str(path), "--json", "--max-pairs", "5"], capsys)
    data = json.loads(out)
    assert len(data["violations"]) == 5 and data["pairs_truncated"] == 40 * 39 - 5
    one_line_error(causal(["check-uic", str(path), "--json", "--max-pairs", "-1"], capsys), "sit-causal",
                   "--max-pairs")


# ---------------------------------------------------------------------- sit-nlp score
def _gen(task: str, i: int, **extra: Any) -> dict[str, Any]:
    return {"task": task, "id": str(i), "prediction": "a cat", "references": ["a cat"], **extra}


def _mc(task: str, i: int, **extra: Any) -> dict[str, Any]:
    return {"task": task, "id": str(i), "prediction": "yes", "references": ["yes"], "options": ["yes", "no"],
            "option_scores": [-1.0, -2.0], "label": "yes", **extra}


def _write(path: Path, rows: list[dict[str, Any]], prefix: bytes = b"") -> Path:
    path.write_bytes(prefix + "".join(json.dumps(r) + "\n" for r in rows).encode())
    return path


@pytest.mark.parametrize(
    ("rows", "fragments"),
    [
        ([_gen("t", 0), _mc("t", 1)], ["task 't'", "kind 'multiple choice'", "'generation'"]),
        ([_gen("t", 0, category="c1"), _gen("t", 1, category="c2")], ["task 't'", "category 'c2'", "'c1'"]),
        ([_gen("t", 0, group="in_domain"), _gen("t", 1, group="cross_task")],
         ["task 't'", "group 'cross_task'", "'in_domain'"]),
        ([_gen("t", 0, group="in_domain"), _gen("t", 1)], ["task 't'", "group none", "'in_domain'"]),
    ],
)
def test_score_refuses_tasks_whose_rows_disagree(rows: list[dict[str, Any]], fragments: list[str], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "p.jsonl", rows)
    one_line_error(nlp(["score", str(path), "--out", str(tmp_path / "s.json")], capsys), "sit-nlp",
                   f"{path}:2:", *fragments)
    assert files_in(tmp_path) == {"p.jsonl"}


def test_score_reads_bom_and_refuses_duplicate_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [_gen("g", 0), _mc("m", 0)]
    plain = _write(tmp_path / "plain.jsonl", rows)
    bom = _write(tmp_path / "bom.jsonl", rows, prefix=BOM)
    results = []
    for path in (plain, bom):
        rc, out, _ = nlp(["score", str(path), "--json"], capsys)
        assert rc == 0
        results.append(json.loads(out))
    assert results[0] == results[1]
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"task": "t", "id": "1", "prediction": "x", "prediction": "y", "references": ["x"]}\n')
    one_line_error(nlp(["score", str(dup)], capsys), "sit-nlp", "duplicate key 'prediction'")


def test_score_output_escapes_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "p.jsonl", [_gen("evil\x1b]0;title\x07|task", 0, category="c\x1b[1m")])
    rc, out, _ = nlp(["score", str(path)], capsys)
    assert rc == 0 and "\x1b" not in out and "\x07" not in out and "evil\\x1b]0;title\\x07\\|task" in out


def test_score_out_is_checked_before_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    preds = _write(tmp_path / "p.jsonl", [_gen("g", 0)])
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    (tmp_path / "done.json").write_text("finished")
    cases = [
        (["--out", str(tmp_path / "adir")], "is a directory"),
        (["--out", str(tmp_path / "afile" / "s.json")], "is not a directory"),
        (["--out", str(tmp_path / "done.json")], "already exists; pass --force"),
        (["--out", str(preds), "--force"], "also an input"),
    ]
    before = files_in(tmp_path)
    for extra, fragment in cases:
        one_line_error(nlp(["score", str(preds), *extra], capsys), "sit-nlp", "--out", fragment)
        assert files_in(tmp_path) == before  # no .tmp left, nothing replaced
    assert (tmp_path / "done.json").read_text() == "finished" and preds.read_text().startswith('{"task"')
    rc, _, _ = nlp(["score", str(preds), "--out", str(tmp_path / "done.json"), "--force"], capsys)
    assert rc == 0 and "overall" in json.loads((tmp_path / "done.json").read_text())
    assert files_in(tmp_path) == before


# ---------------------------------------------------------------------- sit-nlp eval
@pytest.fixture
def fake_checkpoint(tmp_path: Path) -> Path:
    """A checkpoint folder whose weights are garbage: any command that got as far as loading would fail."""
    from sit_nlp.training.config import Config, save_config

    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "heldout"):
        (data / f"{split}.jsonl").write_bytes((REPO / "sit_nlp" / "assets" / "tiny_eval.jsonl").read_bytes())
    ckpt = tmp_path / "run" / "final"
    ckpt.mkdir(parents=True)
    cfg = Config()
    cfg.data.train_file = str(data / "train.jsonl")
    save_config(cfg, ckpt / "config.yaml")
    (ckpt / "model.safetensors").write_bytes(b"not weights")
    return tmp_path / "run"


def test_eval_bad_device_is_refused_before_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for device in ("tpu", "cuda0", "gpu"):
        one_line_error(nlp(["eval", "--checkpoint", str(tmp_path / "missing"), "--device", device], capsys),
                       "sit-nlp", f"--device '{device}'", "unknown device")


def test_eval_cuda_without_cuda(fake_checkpoint: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        one_line_error(nlp(["eval", "--checkpoint", str(fake_checkpoint), "--device", device], capsys),
                       "sit-nlp", f"--device {device}", "CUDA is not available")
    assert not (fake_checkpoint / "final" / "predictions_heldout.jsonl").exists()


def test_eval_out_is_checked_before_the_model_loads(fake_checkpoint: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    final = fake_checkpoint / "final"
    (final / "predictions_heldout.jsonl").write_text("finished work\n")
    (tmp_path / "adir").mkdir()
    base = ["eval", "--checkpoint", str(fake_checkpoint), "--device", "cpu", "--quiet"]
    cases = [
        ([], "already exists; pass --force"),  # the default --out: a finished predictions file
        (["--out", str(tmp_path / "adir")], "is a directory"),
        (["--out", str(tmp_path / "data" / "heldout.jsonl"), "--force"], "also an input"),
        (["--data", "builtin:tiny_eval.jsonl", "--out", str(tmp_path / "adir")], "is a directory"),
    ]
    before = files_in(tmp_path)
    for extra, fragment in cases:
        one_line_error(nlp([*base, *extra], capsys), "sit-nlp", "--out", fragment)
        assert files_in(tmp_path) == before
    assert (final / "predictions_heldout.jsonl").read_text() == "finished work\n"
    one_line_error(nlp([*base, "--data", "builtin:nope.jsonl"], capsys), "sit-nlp", "no such built-in file",
                   "builtin:tiny_eval.jsonl")


def test_eval_builtin_data_and_bom(tiny_checkpoint: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sit_nlp.evaluation.evaluate import resolve_split

    assert resolve_split("heldout", "builtin:tiny_eval.jsonl", "x") == REPO / "sit_nlp" / "assets" / "tiny_eval.jsonl"
    run = tiny_checkpoint(tmp_path, "sit")
    out = tmp_path / "preds.jsonl"
    code = run_app(_nlp_app(), "sit-nlp", ["eval", "--checkpoint", str(run), "--data", "builtin:tiny_eval.jsonl",
                                           "--limit-per-task", "1", "--quiet", "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and len({r["task"] for r in rows}) == len(rows)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(BOM + (REPO / "sit_nlp" / "assets" / "tiny_eval.jsonl").read_bytes())
    code = run_app(_nlp_app(), "sit-nlp", ["eval", "--checkpoint", str(run), "--data", str(bom), "--limit-per-task",
                                           "1", "--quiet", "--device", "cpu", "--out", str(out), "--force"])
    assert code == 0, capsys.readouterr().err
    assert len(out.read_text().splitlines()) == len(rows)


def _nlp_app() -> Any:
    from sit_nlp.cli.main import app

    return app


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------- sit-nlp data build / compare
def test_data_build_out_is_checked_before_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mixture = REPO / "configs" / "mixtures" / "tiny.yaml"
    (tmp_path / "afile").write_text("mine")
    cases = [
        (["--out", str(tmp_path / "afile"), "--force"], "exists and is not a directory"),
        (["--out", str(tmp_path / "afile" / "mix")], "is not a directory"),
    ]
    for extra, fragment in cases:
        one_line_error(nlp(["data", "build", "--mixture", str(mixture), "--quiet", *extra], capsys), "sit-nlp",
                       fragment)
        assert files_in(tmp_path) == {"afile"} and (tmp_path / "afile").read_text() == "mine"


def test_compare_plot_is_checked_before_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = []
    for method in ("sit", "vanilla"):
        path = _write(tmp_path / f"{method}.jsonl", [_gen("g", 0)])
        runs.append(f"{method}={path}")
    (tmp_path / "done.png").write_bytes(b"finished")
    (tmp_path / "adir").mkdir()
    for plot, fragment in ((tmp_path / "done.png", "already exists"), (tmp_path / "adir", "is a directory"),
                           (tmp_path / "plot.txt", "use a .png")):
        one_line_error(nlp(["compare", *runs, "--plot", str(plot)], capsys), "sit-nlp", "--plot", fragment)
    assert (tmp_path / "done.png").read_bytes() == b"finished"
    assert files_in(tmp_path) == {"sit.jsonl", "vanilla.jsonl", "done.png", "adir"}
    dup = tmp_path / "scores.json"
    dup.write_text('{"overall": {}, "per_task": {}, "overall": {}}')
    one_line_error(nlp(["compare", f"sit={dup}"], capsys), "sit-nlp", "duplicate key 'overall'")


@pytest.mark.parametrize("max_pairs", [None, 0, 7, 1000])
def test_streamed_and_indented_json_agree(max_pairs: int | None) -> None:
    import io

    import numpy as np

    from sit_causal.cli.uic import report_json, write_report_json
    from sit_causal.theory.graph import TaskFactorGraph
    from sit_causal.theory.uic import check_uic

    adjacency = np.random.default_rng(0).random((6, 30)) < 0.7
    report = check_uic(TaskFactorGraph.from_matrix(adjacency))
    assert report.n_violations > 7
    buf = io.StringIO()
    write_report_json(buf, report, None, max_pairs)
    assert json.loads(buf.getvalue()) == report_json(report, None, max_pairs)
    if max_pairs is None:  # uncapped, it is UICReport.to_json plus "pairs_truncated": 0
        assert report_json(report, None, None) == {**report.to_json(None), "pairs_truncated": 0}


# ---------------------------------------------------------------------- faults: full disks, refused paths, pipes
class _FailingStream:
    """A standard output that refuses every write, as ``> /dev/full`` or a closed pipe does."""

    def __init__(self, error: OSError) -> None:
        self.error = error

    def write(self, text: str) -> int:
        raise self.error

    def flush(self) -> None:
        pass


def _graph_file(tmp_path: Path) -> Path:
    path = tmp_path / "g.json"
    path.write_text(json.dumps(_matrix([[1, 0], [0, 1]], ["a", "b"], ["x", "y"])))
    return path


def test_a_full_standard_output_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import sys

    preds = _write(tmp_path / "p.jsonl", [_gen("g", 0)])
    for argv, app_of in ((["check-uic", str(_graph_file(tmp_path)), "--json"], causal),
                         (["score", str(preds), "--json"], nlp), (["score", str(preds)], nlp)):
        monkeypatch.setattr(sys, "stdout", _FailingStream(OSError(errno.ENOSPC, "No space left on device")))
        rc, _, err = app_of(argv, capsys)
        monkeypatch.undo()
        assert rc == 2 and err.count("\n") == 1, err  # 2, not check-uic's 1 ("the UIC fails")
        assert "cannot write standard output: no space left on device" in err


def test_a_closed_pipe_exits_quietly(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setattr(sys, "stdout", _FailingStream(BrokenPipeError(32, "Broken pipe")))
    rc, _, err = causal(["check-uic", str(_graph_file(tmp_path)), "--json"], capsys)
    assert rc == 141 and err == ""


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_dev_full_for_real(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "sit_causal.cli.main", "check-uic", str(_graph_file(tmp_path)),
                               "--json"], stdout=full, stderr=subprocess.PIPE, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == "sit-causal: error: cannot write standard output: no space left on device\n"


def test_ctrl_c_is_130_and_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import sit_causal.cli.uic as uic_cli

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(uic_cli, "load_graph", interrupted)
    rc, _, err = causal(["check-uic", "whatever.json"], capsys)
    assert rc == 130 and err == "sit-causal: interrupted\n"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_paths_the_system_refuses_are_found_before_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # os.access says yes to root for /proc; the probe (a small file written and removed) does not
    preds = _write(tmp_path / "p.jsonl", [_gen("g", 0)])
    for path in ("/proc/sit-out.json", "/proc/sub/sit-out.json"):
        with pytest.raises(UsageFailure, match=f"cannot write {path}: "):
            check_output_file(path, "--out")
    with pytest.raises(UsageFailure, match="cannot write /proc/sit-run: "):
        check_output_dir("/proc/sit-run", "--out")
    one_line_error(nlp(["score", str(preds), "--out", "/proc/sit-scores.json"], capsys), "sit-nlp",
                   "cannot write /proc/sit-scores.json")


def test_a_full_disk_is_found_by_the_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(UsageFailure, match=r"cannot write .*out\.json: no space left on device"):
        check_output_file(tmp_path / "out.json", "--out")
    monkeypatch.undo()
    assert files_in(tmp_path) == set()  # the probe leaves nothing


def test_a_disk_that_fills_during_a_write_never_damages_a_finished_file(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import io

    preds = _write(tmp_path / "p.jsonl", [_gen("g", 0)])
    out = tmp_path / "scores.json"
    out.write_text("the finished scores")
    real_fdopen = os.fdopen

    class FillsUp(io.TextIOWrapper):
        def write(self, text: str) -> int:  # the disk is full after 10 bytes
            if self.tell() + len(text) > 10:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(text)

    def fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = real_fdopen(fd, mode, *args, **kwargs)
        return FillsUp(fh.detach(), encoding="utf-8") if "w" in mode and "b" not in mode else fh

    monkeypatch.setattr(os, "fdopen", fdopen)
    err = one_line_error(nlp(["score", str(preds), "--out", str(out), "--force"], capsys), "sit-nlp",
                         f"cannot write {out}: no space left on device")
    assert "Traceback" not in err
    monkeypatch.undo()
    assert out.read_text() == "the finished scores"  # whole, as it was
    assert files_in(tmp_path) == {"p.jsonl", "scores.json"}  # no temporary left behind


# ---------------------------------------------------------------------- inputs checked as values
def test_load_yaml_refuses_duplicate_keys() -> None:
    import yaml

    from sit_causal.fileio import load_yaml

    assert load_yaml("a: 1\nb: {c: 2}\n") == {"a": 1, "b": {"c": 2}}
    for text in ("a: 1\na: 2\n", "a: {c: 1, c: 2}\n"):
        with pytest.raises(yaml.YAMLError, match="duplicate key"):
            load_yaml(text)


def test_check_uic_bom_empty_and_control_characters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = _graph_file(tmp_path)
    bom = tmp_path / "bom.json"
    bom.write_bytes(BOM + graph.read_bytes())
    assert causal(["check-uic", str(bom)], capsys)[0] == 0
    (tmp_path / "empty.json").write_text("")
    one_line_error(causal(["check-uic", str(tmp_path / "empty.json")], capsys), "sit-causal", "is empty")
    (tmp_path / "ctrl.json").write_text('{"a": "x\x01y"}')
    err = one_line_error(causal(["check-uic", str(tmp_path / "ctrl.json")], capsys), "sit-causal",
                         "Invalid control character at line 1")
    assert "at at" not in err


def test_score_refuses_a_rouge_table_too_big_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    long = " ".join(["word"] * 4000)
    preds = _write(tmp_path / "p.jsonl", [{**_gen("g", 0), "prediction": long, "references": [long]}])
    t0 = time.perf_counter()
    one_line_error(nlp(["score", str(preds)], capsys), "sit-nlp", "ROUGE-L would fill", "GB")
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize(("argv", "fragment"), [
    (["simulate", "--seeds", "1000000000"], "estimated"),
    (["simulate", "--set", "learn_prior=maybe"], "--set learn_prior: expected true or false"),
    (["simulate", "--set", "w_uic=.nan"], "--set w_uic: expected a finite number"),
])
def test_simulate_values_and_sizes_refused_at_once(argv: list[str], fragment: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.perf_counter()
    one_line_error(causal(argv, capsys), "sit-causal", fragment)
    assert time.perf_counter() - t0 < 5


def test_build_sizes_and_seeds_refused_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for text, fragment in (("n_yesno_tasks: 100000\n", "n_yesno_tasks must be <= 1000"),
                           ("train_per_dataset: 10000000\n", "records"),
                           ("mean_range: .nan\n", "finite"), ("cue_rate: 0.8\ncue_rate: 0.9\n", "duplicate key")):
        config = tmp_path / "tb.yaml"
        config.write_text(text)
        one_line_error(nlp(["testbed", "build", "--out", str(tmp_path / "tb"), "--config", str(config)], capsys),
                       "sit-nlp", fragment)
    mixture = REPO / "configs" / "mixtures" / "tiny.yaml"
    one_line_error(nlp(["data", "build", "--mixture", str(mixture), "--out", str(tmp_path / "mix"), "--seed", "-1"],
                       capsys), "sit-nlp", "--seed must be in")
    dup = tmp_path / "dup.yaml"
    dup.write_text(mixture.read_text() + "\nseed: 3\nseed: 4\n")
    one_line_error(nlp(["data", "build", "--mixture", str(dup), "--out", str(tmp_path / "mix")], capsys), "sit-nlp",
                   "duplicate key 'seed'")
    assert files_in(tmp_path) == {"tb.yaml", "dup.yaml"}


@pytest.mark.parametrize(("override", "fragment"), [
    ("--model.temperature=.nan", "model.temperature: expected a finite number"),
    ("--train.weight_decay=.nan", "train.weight_decay: expected a finite number"),
    ("--train.lr=inf", "train.lr: expected a finite number"),
    ("--train.batch_size=100000", "train.batch_size must be in [1, 4096]"),
    ("--train.seed=-1", "train.seed must be in [0, 4294967295]"),
    ("--train.max_grad_norm=-1", "train.max_grad_norm must be > 0"),
    ("--model.factor_dim=0", "model.factor_dim must be in [1, 65536]"),
    ("--model.n_factors=1000", "model.n_factors must be in [1, 64]"),
])
def test_train_config_values_are_refused_before_work(override: str, fragment: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import sit_nlp.training.loop  # noqa: F401 (importing torch is not the command's time)

    run = tmp_path / "run"
    t0 = time.perf_counter()
    one_line_error(nlp(["train", "--config", str(REPO / "configs" / "tiny.yaml"), override,
                        f"--train.out_dir={run}"], capsys), "sit-nlp", fragment)
    assert time.perf_counter() - t0 < 5 and not run.exists()


def test_train_config_files_binary_duplicate_and_missing_data(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)))
    one_line_error(nlp(["train", "--config", str(binary)], capsys), "sit-nlp", "not a text file")
    dup = tmp_path / "dup.yaml"
    dup.write_text("train:\n  lr: 0.1\n  lr: 0.2\n")
    one_line_error(nlp(["train", "--config", str(dup)], capsys), "sit-nlp", "duplicate key 'lr'")
    run = tmp_path / "run"
    one_line_error(nlp(["train", "--config", str(REPO / "configs" / "tiny.yaml"), f"--train.out_dir={run}",
                        f"--data.train_file={tmp_path / 'missing.jsonl'}"], capsys), "sit-nlp",
                   "data.train_file", "no such file")
    assert not (run / "config.yaml").exists()  # a run that never started leaves no run folder behind


def test_a_library_writer_over_a_full_disk_is_one_line(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import sit_causal.cli.uic as uic_cli

    def torch_like(*args: Any, **kwargs: Any) -> None:  # torch.save's words over a full disk
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(uic_cli, "load_graph", torch_like)
    one_line_error(causal(["check-uic", "g.json"], capsys), "sit-causal", "cannot write: no space left on device")

    def a_bug(*args: Any, **kwargs: Any) -> None:
        raise ValueError("a bug")

    monkeypatch.setattr(uic_cli, "load_graph", a_bug)
    with pytest.raises(ValueError, match="a bug"):  # a bug stays a traceback
        causal(["check-uic", "g.json"], capsys)


def test_train_ctrl_c_says_what_is_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import sit_nlp.training.loop as train_module

    run = tmp_path / "run"

    def interrupted_after_a_checkpoint(*args: Any, **kwargs: Any) -> None:
        (run / "checkpoint-5").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", interrupted_after_a_checkpoint)
    rc, _, err = nlp(["train", "--config", str(REPO / "configs" / "tiny.yaml"), f"--train.out_dir={run}"], capsys)
    assert rc == 130 and err.count("\n") == 1, err
    assert err.startswith("sit-nlp: interrupted: ") and "checkpoint-5 (step 5)" in err and "--resume" in err
