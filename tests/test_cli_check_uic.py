"""``sit-causal check-uic`` end to end: exit codes, human and JSON output, every bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sit_causal.cli.common import run_app
from sit_causal.cli.main import app

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = run_app(app, "sit-causal", argv)
    out, err = capsys.readouterr()
    return rc, out, err


def node_link(nodes: list[tuple[Any, str]], edges: list[tuple[Any, Any]], key: str = "edges") -> dict:
    return {
        "directed": True,
        "nodes": [{"id": i, "kind": k} for i, k in nodes],
        key: [{"source": s, "target": t} for s, t in edges],
    }


def matrix(adjacency: Any, factors: Any = ("a", "b"), tasks: Any = ("x", "y"), rows: Any = "tasks") -> dict:
    return {"factors": list(factors), "tasks": list(tasks), "adjacency": adjacency, "rows": rows}


LATENTS = [("a", "latent"), ("b", "latent"), ("x", "target"), ("y", "target")]

# (file text, expected fragment of the one-line error)
BAD_INPUTS = {
    "not json": ("{nope", "is not valid JSON"),
    "empty file": ("", "is empty"),
    "NaN literal": ('{"factors": ["a"], "tasks": ["x"], "adjacency": [[NaN]], "rows": "tasks"}', "NaN"),
    "top-level list": ("[1, 2]", "must be a JSON object"),
    "unknown format": (json.dumps({"vertices": []}), "unknown graph format"),
    "both formats": (json.dumps({**matrix([[1, 0], [0, 1]]), "nodes": []}), "ambiguous"),
    "duplicate node id": (json.dumps(node_link([*LATENTS, ("a", "target")], [("a", "x")])),
                          "duplicate node id 'a'"),
    "duplicate factor id": (json.dumps(matrix([[1, 0], [0, 1]], factors=("a", "a"))), "duplicate factor id"),
    "duplicate task id": (json.dumps(matrix([[1, 0], [0, 1]], tasks=("x", "x"))), "duplicate task id"),
    "factor and task share an id": (json.dumps(matrix([[1, 0], [0, 1]], tasks=("a", "y"))),
                                    "both a factor and a task"),
    "unknown node kind": (json.dumps(node_link([("a", "hidden")], [])), "expected \"latent\" or \"target\""),
    "edge to unknown node": (json.dumps(node_link(LATENTS, [("a", "zz")])), "unknown node 'zz'"),
    "edge out of a target": (json.dumps(node_link(LATENTS, [("x", "a")])), "leaves a target"),
    "edge between targets": (json.dumps(node_link(LATENTS, [("x", "y")])), "between two targets"),
    "edge between latents": (json.dumps(node_link(LATENTS, [("a", "b")])), "between two latents"),
    "edge without target": ('{"nodes": [{"id": "a", "kind": "latent"}], "edges": [{"source": "a"}]}',
                            "needs \"source\" and \"target\""),
    "edges and links": (json.dumps({**node_link(LATENTS, [("a", "x")]), "links": []}),
                        "both \"edges\" and \"links\""),
    "empty edge list": (json.dumps(node_link(LATENTS, [])), "empty edge list"),
    "no edge key": ('{"nodes": [{"id": "a", "kind": "latent"}]}', "needs \"nodes\" and \"edges\""),
    "zero factors (node-link)": (json.dumps(node_link([("x", "target")], [])), "no factors"),
    "zero factors (matrix)": (json.dumps(matrix([[], []], factors=())), "no factors"),
    "all-zero matrix": (json.dumps(matrix([[0, 0], [0, 0]])), "no edges"),
    "non-binary": (json.dumps(matrix([[1, 2], [0, 1]])), "must be binary"),
    "non-binary string": (json.dumps(matrix([[1, "1"], [0, 1]])), "must be binary"),
    "fractional": (json.dumps(matrix([[1, 0.5], [0, 1]])), "must be binary"),
    "ragged": (json.dumps(matrix([[1, 0], [1]])), "ragged"),
    "wrong shape": (json.dumps(matrix([[1, 0, 1], [0, 1, 0]])), "needs 2 x 2"),
    "wrong row count": (json.dumps(matrix([[1, 0]])), "needs 2 x 2"),
    "rows not stated": (json.dumps({k: v for k, v in matrix([[1, 0], [0, 1]]).items() if k != "rows"}),
                        "must state \"rows\""),
    "rows bogus": (json.dumps(matrix([[1, 0], [0, 1]], rows="columns")), "must state \"rows\""),
    "missing key": (json.dumps({"adjacency": [[1]], "rows": "tasks"}), "missing the key 'factors'"),
    "adjacency not a list of rows": (json.dumps(matrix([1, 0])), "list of rows"),
    "bad id type": (json.dumps(matrix([[1, 0], [0, 1]], factors=(["a"], "b"))), "string or integer id"),
    "too deep": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, fragment = BAD_INPUTS[case]
    path = tmp_path / "graph.json"
    path.write_text(text, encoding="utf-8")
    rc, out, err = run(["check-uic", str(path)], capsys)
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("sit-causal: error: ")
    assert fragment in err
    assert "Traceback" not in err


def test_unreadable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [(tmp_path / "missing.json", "no such file"), (tmp_path, "is a directory")]
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    cases.append((binary, "cannot read"))
    for path, fragment in cases:
        rc, out, err = run(["check-uic", str(path)], capsys)
        assert (rc, out, err.count("\n")) == (2, "", 1)
        assert fragment in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(["check-uic", str(EXAMPLES / "graph_uic.json"), "--bogus"], capsys)
    assert rc == 2 and "--bogus" in err
    rc, _, err = run(["check-uic"], capsys)
    assert rc == 2 and "PATH" in err


def test_holding_graph_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["check-uic", str(EXAMPLES / "graph_uic.json")], capsys)
    assert rc == 0
    assert out.splitlines()[0].startswith("UIC holds: all 4 factors are identifiable")


def test_failing_graph_table_and_repair(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["check-uic", str(EXAMPLES / "graph_nested.json"), "--repair"], capsys)
    assert rc == 1
    lines = out.splitlines()
    assert lines[0].startswith("UIC fails: 1 of 4 factors not identifiable, 2 violating pairs")
    row = next(line for line in lines if line.strip().startswith("length"))
    assert "summarise" in row and "syntax, topic" in row
    assert any(line.startswith("Repair (exact, minimal") for line in lines)
    assert lines[-1] == "Re-checked: the UIC holds on the repaired graph."


def test_json_schema_and_meaning(capsys: pytest.CaptureFixture[str]) -> None:
    path = EXAMPLES / "graph_nested.json"
    rc, out, _ = run(["check-uic", str(path), "--json"], capsys)
    assert rc == 1
    data = json.loads(out)  # exactly one JSON object
    assert {"uic_holds", "n_factors", "n_tasks", "factors", "violations", "min_tasks", "repair"} <= set(data)
    assert data["uic_holds"] is False and data["repair"] is None
    assert (data["n_factors"], data["n_tasks"], data["min_tasks"]) == (4, 4, 4)
    raw = json.loads(path.read_text())
    reads = {f: {t for t, row in zip(raw["tasks"], raw["adjacency"], strict=True) if row[k]}
             for k, f in enumerate(raw["factors"])}
    for a, b in data["violations"]:  # [a, b]: every task reading a also reads b
        assert reads[a] <= reads[b]
    for f in data["factors"]:
        assert set(f) == {"id", "tasks", "mixes_with", "identifiable"}
        assert set(f["tasks"]) == reads[f["id"]]
        assert f["identifiable"] == (not f["mixes_with"])
        assert f["mixes_with"] == [b for a, b in data["violations"] if a == f["id"]]


def test_json_with_repair_from_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO((EXAMPLES / "graph_chain.json").read_text()))
    rc, out, _ = run(["check-uic", "-", "--json", "--repair"], capsys)
    assert rc == 1
    repair = json.loads(out)["repair"]
    assert repair["uic_holds_after"] is True and repair["n_new_tasks"] == 1
    assert repair["existing_tasks_suffice"] is False and "every task" in repair["reason"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("not json"))
    rc, out, err = run(["check-uic", "-"], capsys)
    assert rc == 2 and "<stdin> is not valid JSON" in err


def test_console_script_end_to_end() -> None:
    """The installed entry point (one subprocess: its start-up is the slow part)."""
    exe = Path(sys.executable).with_name("sit-causal")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "sit_causal.cli.main"]
    done = subprocess.run([*cmd, "check-uic", "-", "--json"], input=(EXAMPLES / "graph_uic.json").read_text(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0 and json.loads(done.stdout)["uic_holds"] is True and done.stderr == ""


def test_ambiguity_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nested.json"
    path.write_text(json.dumps(matrix([[1, 1], [0, 1]])))
    assert run_app(app, "sit-causal", ["check-uic", str(path)]) == 1
    capsys.readouterr()
    assert run_app(app, "sit-causal", ["check-uic", str(path), "--ambiguity", "orthogonal", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ambiguity"] == "orthogonal"
    assert run_app(app, "sit-causal", ["check-uic", str(path), "--ambiguity", "affine"]) == 2
    assert "unknown --ambiguity 'affine'" in capsys.readouterr().err
    assert run_app(app, "sit-causal", ["check-uic", str(path), "--ambiguity", "orthogonal", "--repair"]) == 2
