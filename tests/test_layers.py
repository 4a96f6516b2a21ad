"""Layers (docs/design.md, "Layers"): what may import what, read from the source with ``ast``.

* only a ``cli`` package imports ``typer``, ``click``, ``sit_causal.cli`` or ``sit_nlp.cli``;
* ``sit_causal.theory`` imports nothing from ``sit_causal.experiments``, ``sit_causal.sim`` or ``sit_nlp``;
* no ``sit_causal`` module imports ``sit_nlp``.

Every import counts, at module level or inside a function (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sit_causal", "sit_nlp")
CLI_IMPORTS = ("typer", "click", "sit_causal.cli", "sit_nlp.cli")



def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(module: str) -> set[str]:
    """Every absolute module name ``module`` imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``);
    relative imports are resolved against the module's package."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _hits(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


def _in_cli(module: str) -> bool:
    return module.split(".")[1:2] == ["cli"]


def _cli_importers() -> dict[str, list[str]]:
    return {m: hits for m in MODULES if not _in_cli(m) and (hits := _hits(_imports(m), CLI_IMPORTS))}


def test_the_walk_sees_every_package() -> None:
    expected = {"sit_causal.theory.uic", "sit_causal.cli.common", "sit_nlp.cli.main", "sit_nlp.data.records"}
    assert expected <= set(MODULES)
    assert "typer" in _imports("sit_causal.cli.common")  # the walk finds what is there


def test_only_cli_packages_import_the_command_line() -> None:
    bad = {m: hits for m, hits in _cli_importers().items() }
    assert not bad, f"modules outside cli/ importing the command line: {bad}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("sit_causal.theory")))
def test_theory_imports_no_simulation_experiment_or_nlp(module: str) -> None:
    hits = _hits(_imports(module), ("sit_causal.experiments", "sit_causal.sim", "sit_nlp"))
    assert not hits, f"{module} imports {hits}"


def test_sit_causal_never_imports_sit_nlp() -> None:
    bad = {m: hits for m in MODULES if m.startswith("sit_causal")
           and (hits := _hits(_imports(m), ("sit_nlp",)))}
    assert not bad, bad
