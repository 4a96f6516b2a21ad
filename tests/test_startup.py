"""Start-up cost: the light commands never import torch or transformers; lazy commands are listed without
being imported, and their one-line help stays the first paragraph of their docstring."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GRAPH = str(REPO / "examples" / "graph_uic.json")
HEAVY = ("torch", "transformers")

PROBE = """
import json, sys
from {module} import main
try:
    main({argv!r})
except SystemExit as stop:
    code = stop.code
else:
    code = 0
print(json.dumps({{"rc": code, "loaded": sorted(m for m in {watch!r} if m in sys.modules)}}), file=sys.stderr)
"""


def _probe(module: str, argv: list[str], watch: tuple[str, ...]) -> tuple[int, list[str], str]:
    """Run ``module.main(argv)`` in a fresh interpreter; its exit code and which of ``watch`` it imported."""
    code = PROBE.format(module=module, argv=argv, watch=watch)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    last = done.stderr.strip().splitlines()[-1]
    report = json.loads(last)
    return report["rc"], report["loaded"], done.stdout


def _predictions(tmp_path: Path) -> str:
    path = tmp_path / "p.jsonl"
    rows = [{"task": "g", "id": "1", "prediction": "a cat", "references": ["a cat"]},
            {"task": "m", "id": "1", "prediction": "yes", "references": ["yes"], "options": ["yes", "no"],
             "option_scores": [-1.0, -2.0], "label": "yes"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("module", "argv", "rc", "extra"),
    [
        ("sit_causal.cli.main", ["check-uic", GRAPH], 0, ("scipy", "networkx")),
        ("sit_causal.cli.main", ["check-uic", GRAPH, "--json"], 0, ("scipy", "networkx")),
        ("sit_causal.cli.main", ["--help"], 0, ()),
        ("sit_causal.cli.main", [], 2, ()),
        ("sit_causal.cli.main", ["no-such-command"], 2, ()),
        ("sit_nlp.cli.main", ["--help"], 0, ()),
        ("sit_nlp.cli.main", ["score", "PRED"], 0, ()),
        ("sit_nlp.cli.main", ["score", "PRED", "--json"], 0, ()),
        ("sit_nlp.cli.main", ["testbed", "--help"], 0, ()),
        ("sit_nlp.cli.main", ["testbed", "run", "--help"], 0, ()),
        ("sit_nlp.cli.main", ["testbed", "build", "--out", "/nonexistent-dir/x", "--seed", "-1"], 2, ()),
    ],
)
def test_light_commands_import_no_torch(module: str, argv: list[str], rc: int, extra: tuple[str, ...],
                                        tmp_path: Path) -> None:
    argv = [_predictions(tmp_path) if a == "PRED" else a for a in argv]
    code, loaded, _ = _probe(module, argv, (*HEAVY, *extra))
    assert code == rc
    assert loaded == [], f"{module} {argv} imported {loaded}"


def test_scoring_module_imports_no_torch() -> None:
    code = ("import sys, sit_nlp.evaluation.scoring; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert done.stdout.strip() == "[]"


def test_the_command_list_shows_lazy_commands_without_importing_them() -> None:
    code, loaded, out = _probe("sit_nlp.cli.main", ["--help"],
                                (*HEAVY, "sit_nlp.training.loop", "sit_nlp.evaluation.evaluate"))
    assert code == 0 and loaded == []
    for name in ("train", "eval", "masks", "score", "compare", "data", "testbed"):
        assert f"  {name} " in out


def _first_paragraph(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _help(app: object, prog: str) -> str:
    from sit_causal.cli.common import run_app

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert run_app(app, prog, ["--help"]) == 0  # type: ignore[arg-type]
    return buf.getvalue()


@pytest.mark.parametrize("module", ["sit_causal.cli.main", "sit_nlp.cli.main"])
def test_lazy_help_matches_the_real_commands(module: str) -> None:
    """The stored one-line help is the docstring's first paragraph, the command list is the same before
    and after the real commands are loaded, and a placeholder gives way to the real command."""
    import importlib

    from sit_causal.cli.common import run_app

    cli = importlib.import_module(module)
    prog = "sit-causal" if module == "sit_causal.cli.main" else "sit-nlp"
    lazy = cli.app._sit_lazy
    before = _help(cli.app, prog)
    for name, spec in lazy.items():
        assert spec.help == _first_paragraph(spec.load().__doc__), name
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert run_app(cli.app, prog, [name, "--help"]) == 0
        assert "--help" in buf.getvalue() and "Usage:" in buf.getvalue()
        if name != "masks":
            assert "--" in buf.getvalue().split("Options:")[1].replace("--help", "")  # the real options
    assert _help(cli.app, prog) == before
    names = [c.name for c in cli.app.registered_commands]
    assert len(names) == len(set(names)), "a placeholder was left next to its real command"
