"""Command-line plumbing shared by ``sit-causal`` and ``sit-nlp``.

House rule: every bad input ends as **one line on stderr and exit code 2**, never a traceback, and it is
found before any work starts. Commands ``raise UsageFailure("one line")`` (the one way to report a usage
error); :func:`run_app` turns it, and click's own usage errors, into that line. Public: ``sit_nlp`` imports
it too.

Outputs: :func:`check_output_file` / :func:`check_output_dir` refuse a bad output location up front;
:func:`atomic_open` / :func:`write_text_atomic` (files) and :func:`replace_directory` (folders) write so that
a reader never sees a half-written output and a failure leaves no partial file behind. They are the only
atomic writers of the project (``sit_nlp.atomic`` re-exports them).

Inputs: :func:`iter_jsonl` reads JSONL (UTF-8, with or without a byte-order mark) and refuses duplicate
keys (:func:`unique_keys`); :func:`safe_text` escapes control characters before user text reaches a
terminal.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

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

__all__ = [
    "DuplicateKeyError",
    "LazyCommand",
    "UsageFailure",
    "add_lazy_commands",
    "atomic_open",
    "check_output_dir",
    "check_output_file",
    "iter_jsonl",
    "make_app",
    "remove_outputs",
    "replace_directory",
    "run_app",
    "safe_text",
    "unique_keys",
    "warn",
    "write_text_atomic",
]


class UsageFailure(Exception):
    """Bad input or usage: printed as one line, exit code 2."""


# ---------------------------------------------------------------------- terminal text
# C0 controls (ESC starts every ANSI sequence), DEL, C1 controls, and the invisible or reordering
# characters that can make a terminal line lie (zero-width, line/paragraph separators, bidi controls).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: object) -> str:
    """``str(text)`` with control characters, ANSI escapes and bidi controls shown as ``\\xNN`` /
    ``\\uNNNN``: safe to print, and always one line."""
    return _UNSAFE.sub(_escape, str(text))


def warn(prog: str, message: str) -> None:
    """A one-line warning on stderr (the run goes on)."""
    print(f"{prog}: warning: {safe_text(message)}", file=sys.stderr)


# ---------------------------------------------------------------------- JSON input
class DuplicateKeyError(ValueError):
    """A JSON object names the same key twice (raised by :func:`unique_keys`)."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` for :func:`json.loads` that refuses duplicate keys (JSON itself keeps the
    last one silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(f"duplicate key {key!r}")
        out[key] = value
    return out


def iter_jsonl(path: str | Path, error: type[Exception] = UsageFailure) -> Iterator[tuple[str, Any]]:
    """Yield ``("PATH:LINE", object)`` for every non-blank line of a JSONL file.

    UTF-8 with or without a byte-order mark. Lines are split on ``"\\n"`` only (U+2028 and friends occur
    inside real JSON strings). An unreadable file, a line that is not JSON or an object with a duplicate
    key raises ``error`` with a one-line message naming the file and line.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path}: cannot read ({err.__class__.__name__})") from None
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, object_pairs_hook=unique_keys)
        except json.JSONDecodeError as err:
            raise error(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        except DuplicateKeyError as err:
            raise error(f"{path}:{lineno}: {err}") from None
        except RecursionError:
            raise error(f"{path}:{lineno}: nested too deeply") from None
        yield f"{path}:{lineno}", obj


# ---------------------------------------------------------------------- output locations
def _nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists (``lexists``: a dangling link counts)."""
    probe = path
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    return probe


def _check_creatable(path: Path, what: str, start: Path) -> None:
    """The folder ``start`` or, if it does not exist yet, its nearest existing ancestor must be a
    writable directory (the missing folders are created there)."""
    anchor = _nearest_existing(start)
    if not os.path.isdir(anchor):
        raise UsageFailure(f"{what} {path}: {anchor} is not a directory")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise UsageFailure(f"{what} {path}: cannot write in {anchor} (permission denied)")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def check_output_file(path: str | Path, what: str = "output file", overwrite: bool = False,
                      flag: str = "--force", inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse, before any work, an output file that cannot or must not be written; returns it as a Path.

    Refused (one-line :class:`UsageFailure` starting with ``what``): an existing directory; an existing
    file unless ``overwrite`` (the message names ``flag``); one of the command's ``inputs`` (even with
    ``overwrite``: the run would destroy what it reads); a path whose parent is a file; a location that
    is not writable (checked with :func:`os.access` on the nearest existing ancestor, since the file is
    written as a temporary sibling and renamed). Creates nothing.
    """
    path = Path(path)
    absolute = Path(os.path.abspath(path))
    if str(path) in ("", ".") or os.path.isdir(path):
        raise UsageFailure(f"{what} {path} is a directory; give a file name")
    for source in inputs:
        if _same_file(path, Path(source)):
            raise UsageFailure(f"{what} {path} is also an input of this command; write somewhere else")
    if os.path.lexists(path):
        if not overwrite:
            raise UsageFailure(f"{what} {path} already exists; pass {flag} to replace it")
        if not os.path.isfile(path):
            raise UsageFailure(f"{what} {path} exists and is not a regular file")
    _check_creatable(path, what, absolute.parent)
    return path


def check_output_dir(path: str | Path, what: str = "output directory", must_be_empty: bool = False,
                     replace: bool = False) -> Path:
    """Refuse, before any work, an output folder that cannot be used; returns it as a Path.

    Refused (one-line :class:`UsageFailure`): an existing file (or anything that is not a directory);
    with ``must_be_empty``, an existing non-empty directory; a location that is not writable: the folder
    itself if it exists (files are written into it), or its nearest existing ancestor. With ``replace``
    the folder is built elsewhere and swapped in by rename (:func:`replace_directory`), so its parent
    must be writable instead. Creates nothing.
    """
    path = Path(path)
    absolute = Path(os.path.abspath(path))
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UsageFailure(f"{what} {path} exists and is not a directory")
    if must_be_empty and os.path.isdir(path):
        try:
            nonempty = any(os.scandir(path))
        except OSError as err:
            raise UsageFailure(f"{what} {path}: cannot list it ({err.__class__.__name__})") from None
        if nonempty:
            raise UsageFailure(f"{what} {path} already exists and is not empty")
    _check_creatable(path, what, absolute.parent if replace or not os.path.isdir(path) else absolute)
    return path


# ---------------------------------------------------------------------- atomic writers
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    with suppress(OSError):  # not every platform / file system can open a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on a clean exit it is flushed, fsynced and
    renamed onto ``path`` (:func:`os.replace`), on any exception (Ctrl-C included) it is removed.

    The final file has the mode a plain ``open()`` would give (``0o666`` minus the umask; an existing
    file keeps its mode), not ``mkstemp``'s ``0o600``. Missing parent folders are created.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole file: mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        final_mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        final_mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, final_mode)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_open`); returns the path."""
    with atomic_open(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path)


def replace_directory(tmp: Path, dest: Path) -> None:
    """Move the finished folder ``tmp`` to ``dest``; an existing ``dest`` is renamed aside first and
    removed only after the swap, so a reader never sees a half-written ``dest``."""
    tmp, dest = Path(tmp), Path(dest)
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
        try:
            tmp.rename(dest)
        except BaseException:
            old.rename(dest)  # put the previous version back
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(dest)


# ---------------------------------------------------------------------- apps and lazy commands
def remove_outputs(folder: str | Path, names: Sequence[str]) -> None:
    """``--overwrite``: remove the files and folders ``names`` a command writes into ``folder`` (nothing else)."""
    for name in names:
        target = Path(folder) / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif os.path.lexists(target):
            target.unlink()


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


def run_app(app: typer.Typer, prog: str, argv: list[str] | None = None) -> int:
    """Run ``app`` and return its exit code; usage problems become ``prog: error: ...`` and 2.

    Commands attached with :func:`add_lazy_commands` are imported and registered first, as needed. The
    error line goes through :func:`safe_text`, so it stays one line whatever the input held.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    _register_lazy(app, argv)
    try:
        rv = app(args=argv, prog_name=prog, standalone_mode=False)
    except UsageFailure as err:
        print(f"{prog}: error: {safe_text(err)}", file=sys.stderr)
        return 2
    except _NO_ARGS_HELP as err:  # bare command: help text, usage exit code
        print(err.ctx.get_help() if err.ctx is not None else err.format_message(), file=sys.stderr)
        return 2
    except _USAGE_ERRORS as err:
        print(f"{prog}: error: {safe_text(err.format_message())}", file=sys.stderr)
        return 2
    except _ABORTS:
        print(f"{prog}: aborted", file=sys.stderr)
        return 130
    except _EXITS as err:
        return int(err.exit_code)
    return int(rv) if isinstance(rv, int) else 0
