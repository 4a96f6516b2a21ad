"""Command-line plumbing shared by ``sit-causal`` and ``sit-nlp``.

House rule: every bad input ends as **one line on stderr and exit code 2**, never a traceback.
Commands raise :class:`UsageFailure` (or call :func:`fail`); :func:`run_app` turns it, and click's own
usage errors, into that line.
"""

from __future__ import annotations

import sys
from typing import NoReturn

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

__all__ = ["UsageFailure", "fail", "make_app", "run_app", "warn"]


class UsageFailure(Exception):
    """Bad input or usage: printed as one line, exit code 2."""


def fail(message: str) -> NoReturn:
    """Abort the current command with a one-line message and exit code 2."""
    raise UsageFailure(message)


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


def run_app(app: typer.Typer, prog: str, argv: list[str] | None = None) -> int:
    """Run ``app`` and return its exit code; usage problems become ``prog: error: ...`` and 2."""
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
