"""Command-line plumbing shared by ``sit-causal`` and ``sit-nlp``: apps, lazy commands, and how a command ends.

House rule: every bad input ends as **one line on stderr and exit code 2**, never a traceback, and it is
found before any work starts. Code at any layer raises :class:`sit_causal.inputs.UsageFailure`;
:func:`run_app` turns it, and click's own usage errors, into that line. Only command-line modules import
this one (files in and out live in :mod:`sit_causal.fileio`, input checks in :mod:`sit_causal.inputs`).

Faults: :func:`run_app` turns an ``OSError`` that escapes a command (a full disk, a read-only mount, a
standard output that cannot be written) into ``prog: error: cannot write PATH: reason`` and exit 2; a closed
pipe exits quietly (141, as Unix tools killed by ``SIGPIPE``); Ctrl-C exits 130 with one line
(:func:`interrupted`).
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import click
import typer

from sit_causal.fileio import os_reason
from sit_causal.inputs import UsageFailure, safe_text

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

__all__ = [
    "LazyCommand",
    "add_lazy_commands",
    "interrupted",
    "make_app",
    "os_error_line",
    "run_app",
    "warn",
    "write_fault",
]


_INTERRUPT_REPORTED = False


def interrupted(prog: str, kept: str) -> typer.Exit:
    """Ctrl-C in a long command: print ``prog: interrupted: KEPT`` (what was kept, how to resume) and return
    the exit to raise (code 130); :func:`run_app` then prints nothing more."""
    global _INTERRUPT_REPORTED
    _INTERRUPT_REPORTED = True
    with suppress(OSError, ValueError):
        print(f"{prog}: interrupted: {safe_text(kept)}", file=sys.stderr)
    return typer.Exit(130)


def warn(prog: str, message: str) -> None:
    """A one-line warning on stderr (the run goes on)."""
    print(f"{prog}: warning: {safe_text(message)}", file=sys.stderr)



# ---------------------------------------------------------------------- apps and lazy commands
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
    """A command whose module is imported only when it runs (or when its own help is asked for).

    Keeps ``sit-causal check-uic`` and ``sit-nlp score`` free of the seconds that importing torch and
    transformers costs. ``target`` is ``"package.module:function"``; ``help`` is the one line shown in the
    top-level command list, which therefore imports nothing (keep it equal to the first line of the
    function's docstring; a test checks).
    """

    target: str
    help: str = ""
    settings: Mapping[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


def add_lazy_commands(app: typer.Typer, lazy: Mapping[str, LazyCommand]) -> None:
    """Attach commands to ``app`` that :func:`run_app` imports and registers only when needed."""
    app._sit_lazy = dict(lazy)  # type: ignore[attr-defined]
    app._sit_registered = {}  # type: ignore[attr-defined]  # name -> the CommandInfo (placeholder or real)


def _eager_names(app: typer.Typer, lazy: Mapping[str, LazyCommand], registered: Mapping[str, Any]) -> set[str]:
    names = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands
             if c.callback is not None and c not in registered.values()}
    names |= {g.name for g in app.registered_groups if g.name}
    return names - set(lazy)


def _placeholder(name: str, spec: LazyCommand) -> Any:
    def placeholder() -> None:  # pragma: no cover - run_app never dispatches to it
        raise UsageFailure(f"internal error: command {name!r} was not loaded")

    placeholder.__doc__ = spec.help
    return placeholder


def _register_lazy(app: typer.Typer, argv: list[str]) -> None:
    """Register what ``argv`` needs. Idempotent.

    * The first non-option word names a lazy command: import and register that one only.
    * It names an eagerly registered command or group (``check-uic``, ``score``, ``data``): nothing.
    * Otherwise (top-level help, a bare call, an unknown name): a placeholder per lazy command, carrying
      its name and one-line help, so the command list is complete without importing anything.
    """
    lazy: dict[str, LazyCommand] = getattr(app, "_sit_lazy", {})
    if not lazy:
        return
    registered: dict[str, Any] = app._sit_registered  # type: ignore[attr-defined]
    first = next((a for a in argv if not a.startswith("-")), None)
    if first in lazy:
        info = registered.get(first)
        if info is not None and not getattr(info, "_sit_placeholder", False):
            return
        if info is not None:  # replace the placeholder by the real command
            app.registered_commands.remove(info)
        spec = lazy[first]
        app.command(first, context_settings=dict(spec.settings) or None)(spec.load())
        registered[first] = app.registered_commands[-1]
        return
    if first is not None and first in _eager_names(app, lazy, registered):
        return
    for name, spec in lazy.items():
        if name in registered:
            continue
        app.command(name, help=spec.help or None, context_settings=dict(spec.settings) or None,
                    add_help_option=False)(_placeholder(name, spec))
        info = app.registered_commands[-1]
        info._sit_placeholder = True  # type: ignore[attr-defined]
        registered[name] = info


_WRITE_ERRNOS = frozenset(getattr(errno, name) for name in (
    "ENOSPC", "EDQUOT", "EROFS", "EFBIG", "EACCES", "EPERM", "EIO", "EBADF", "ENXIO", "ENOENT", "EINVAL")
    if hasattr(errno, name))


def _silence_stdout() -> None:
    """Point standard output at ``/dev/null`` so the interpreter's last flush cannot fail a second time."""
    with suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


STDOUT = "<standard output>"


class _TaggedStdout:
    """Standard output whose write errors name it (``filename`` :data:`STDOUT`); everything else is the
    stream's own."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self._stream, name)(*args)
        except OSError as err:
            if err.filename is None:
                err.filename = STDOUT
            raise

    def write(self, text: str) -> Any:
        return self._call("write", text)

    def writelines(self, lines: Iterable[str]) -> Any:
        return self._call("writelines", lines)

    def flush(self) -> Any:
        return self._call("flush")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def os_error_line(err: OSError, stdout: bool = False) -> str:
    """The one line for an ``OSError`` that escaped a command: ``cannot write PATH: reason``."""
    stdout = stdout or err.filename == STDOUT
    name = "standard output" if stdout else (safe_text(err.filename) if err.filename is not None else None)
    reason = os_reason(err)
    if name is None:
        return f"cannot write: {reason}"
    if stdout or err.errno in _WRITE_ERRNOS:
        return f"cannot write {name}: {reason}"
    return f"{name}: {reason}"


_DISK_FULL_WORDS = ("No space left on device", "StorageFull", "os error 28", "Disk quota exceeded",
                    "Read-only file system", "file write failed")


def write_fault(err: BaseException) -> str | None:
    """The one line for an error raised by a library's own writer (torch, safetensors) over a full disk or
    a read-only mount, which is not an ``OSError`` itself: an ``OSError`` in its chain, or the system's
    words in its message; ``None`` for any other error."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno is not None:
            return os_error_line(cause)
        cause = cause.__cause__ or cause.__context__
    text = str(err)
    for words in _DISK_FULL_WORDS:
        if words.lower() in text.lower():
            reason = "read-only file system" if "read-only" in words.lower() else "no space left on device"
            return f"cannot write: {reason} ({err.__class__.__name__})"
    return None


def run_app(app: typer.Typer, prog: str, argv: list[str] | None = None) -> int:
    """Run ``app`` and return its exit code; usage problems become ``prog: error: ...`` and 2.

    Commands attached with :func:`add_lazy_commands` are imported and registered first, as needed. The
    error line goes through :func:`safe_text`, so it stays one line whatever the input held. Faults are
    one line too: an ``OSError`` (a full disk, a refused path, standard output that cannot be written,
    checked by flushing it before returning) is ``cannot write PATH: reason`` and 2; a closed pipe is 141
    and silent; Ctrl-C is 130 and ``prog: interrupted`` (commands that keep work print what they kept first).
    """
    global _INTERRUPT_REPORTED
    argv = list(sys.argv[1:] if argv is None else argv)
    _register_lazy(app, argv)
    _INTERRUPT_REPORTED = False

    def fail(line: str, code: int) -> int:
        with suppress(OSError, ValueError):
            print(f"{prog}: error: {line}", file=sys.stderr)
        return code

    stream, errors = sys.stdout, sys.stderr
    sys.stdout = _TaggedStdout(stream)
    try:
        code = _run_command(app, prog, argv, fail)
        if code == 130 and not _INTERRUPT_REPORTED:  # typer turns Ctrl-C into a silent 130
            with suppress(OSError, ValueError):
                print(f"{prog}: interrupted", file=sys.stderr)
        if code != 141:
            sys.stdout.flush()  # a standard output that cannot be written fails here, not at exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return 141
    except OSError as err:
        _silence_stdout()
        return fail(os_error_line(err, stdout=True), 2)
    finally:
        sys.stdout, sys.stderr = stream, errors  # typer wraps both after a closed pipe


def _run_command(app: typer.Typer, prog: str, argv: list[str], fail: Callable[[str, int], int]) -> int:
    """The command's exit code; every exception it raises becomes its one line (:func:`run_app`)."""
    try:
        rv = app(args=argv, prog_name=prog, standalone_mode=False)
    except UsageFailure as err:
        return fail(safe_text(err), 2)
    except _NO_ARGS_HELP as err:  # bare command: help text, usage exit code
        print(err.ctx.get_help() if err.ctx is not None else err.format_message(), file=sys.stderr)
        return 2
    except _USAGE_ERRORS as err:
        return fail(safe_text(err.format_message()), 2)
    except (*_ABORTS, KeyboardInterrupt):
        return 130
    except _EXITS as err:
        return int(err.exit_code)
    except SystemExit:
        if type(sys.stdout).__name__ == "PacifyFlushWrapper":  # typer's answer to a closed pipe
            _silence_stdout()
            return 141
        raise
    except BrokenPipeError:  # the reader went away (`| head`): quiet, as Unix tools are
        _silence_stdout()
        return 141
    except OSError as err:
        if err.filename == STDOUT:
            _silence_stdout()
        return fail(os_error_line(err), 2)
    except MemoryError:
        return fail("out of memory (make the run smaller)", 2)
    except Exception as err:  # a library's writer over a full disk; anything else stays a traceback (a bug)
        line = write_fault(err)
        if line is None:
            raise
        return fail(line, 2)
    return int(rv) if isinstance(rv, int) else 0
