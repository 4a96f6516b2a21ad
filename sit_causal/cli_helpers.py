"""Command-line plumbing shared by ``sit-causal`` and ``sit-nlp``.

House rule: every bad input ends as **one line on stderr and exit code 2**, never a traceback.
Commands ``raise UsageFailure("one line")`` (the one way to report a usage error); :func:`run_app` turns
it, and click's own usage errors, into that line. Public: ``sit_nlp`` imports it too.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import click
import typer

try:  # typer >= 0.20 vendors click as typer._click; its exceptions are not click's
    from typer._click import exceptions as _typer_click_exc
except ImportError:  # pragma: no cover - older typer uses click itself
    _typer_click_exc = click.exceptions

_NO_ARGS_HELP = tuple(
    m.NoArgsIsHelpError for m in (click.exceptions, _typer_click_exc) if hasattr(m, "NoArgsIsHelpError")
)
_USAGE_ERRORS = (click.exceptions.UsageError, _typer_click_exc.UsageError)
_ABORTS = (click.exceptions.Abort, typer.Abort)
_EXITS = (click.exceptions.Exit, typer.Exit)

__all__ = ["LazyCommand", "UsageFailure", "add_lazy_commands", "make_app", "run_app", "warn"]


class UsageFailure(Exception):
    """Bad input or usage: printed as one line, exit code 2."""


def warn(prog: str, message: str) -> None:
    """A one-line warning on stderr (the run goes on)."""
    print(f"{prog}: warning: {message}", file=sys.stderr)


def make_app(help_text: str) -> typer.Typer:
    """A typer app with plain (non-rich) errors, so failures stay one line."""
    return typer.Typer(
        help=help_text,
        add_completion=False,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )


@dataclass(frozen=True)
class LazyCommand:
    """A command whose module is imported only when it runs (or when the command list is shown).

    Keeps ``sit-causal check-uic`` and ``sit-nlp score`` free of the seconds that importing torch and
    transformers costs. ``target`` is ``"package.module:function"``.
    """

    target: str
    settings: Mapping[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


def add_lazy_commands(app: typer.Typer, lazy: Mapping[str, LazyCommand]) -> None:
    """Attach commands to ``app`` that :func:`run_app` imports and registers only when needed."""
    app._sit_lazy = dict(lazy)  # type: ignore[attr-defined]
    app._sit_registered = set()  # type: ignore[attr-defined]


def _register_lazy(app: typer.Typer, argv: list[str]) -> None:
    """Register the lazy command named by ``argv`` (its first non-option word), or all of them when no
    lazy command is named (top-level help, a bare call, an unknown name). Idempotent."""
    lazy: dict[str, LazyCommand] = getattr(app, "_sit_lazy", {})
    done: set[str] = getattr(app, "_sit_registered", set())
    first = next((a for a in argv if not a.startswith("-")), None)
    for name in [first] if first in lazy else list(lazy):
        if name not in done:
            app.command(name, context_settings=dict(lazy[name].settings) or None)(lazy[name].load())
            done.add(name)


def run_app(app: typer.Typer, prog: str, argv: list[str] | None = None) -> int:
    """Run ``app`` and return its exit code; usage problems become ``prog: error: ...`` and 2.

    Commands attached with :func:`add_lazy_commands` are imported and registered first, as needed.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    _register_lazy(app, argv)
    try:
        rv = app(args=argv, prog_name=prog, standalone_mode=False)
    except UsageFailure as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except _NO_ARGS_HELP as err:  # bare command: help text, usage exit code
        print(err.ctx.get_help() if err.ctx is not None else err.format_message(), file=sys.stderr)
        return 2
    except _USAGE_ERRORS as err:
        print(f"{prog}: error: {err.format_message()}", file=sys.stderr)
        return 2
    except _ABORTS:
        print(f"{prog}: aborted", file=sys.stderr)
        return 130
    except _EXITS as err:
        return int(err.exit_code)
    return int(rv) if isinstance(rv, int) else 0
