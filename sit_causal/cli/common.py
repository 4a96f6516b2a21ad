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
keys (:func:`unique_keys`); :func:`load_yaml` reads YAML and refuses duplicate keys too (every YAML the
project reads goes through it); :func:`safe_text` escapes control characters before user text reaches a
terminal; :func:`finite_float` and :func:`int_in_range` check config values.

Faults: :func:`run_app` turns an ``OSError`` that escapes a command (a full disk, a read-only mount, a
standard output that cannot be written) into ``prog: error: cannot write PATH: reason`` and exit 2; a closed
pipe exits quietly (141, as Unix tools killed by ``SIGPIPE``); Ctrl-C exits 130 with one line.
:func:`check_output_file` / :func:`check_output_dir` probe the location (write and remove a small file)
before any work.
"""

from __future__ import annotations

import errno
import importlib
import json
import math
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import click
import typer
import yaml

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
    "finite_float",
    "int_in_range",
    "interrupted",
    "iter_jsonl",
    "load_yaml",
    "make_app",
    "os_error_line",
    "probe_writable",
    "remove_outputs",
    "replace_directory",
    "run_app",
    "safe_text",
    "unique_keys",
    "warn",
    "write_fault",
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


# ---------------------------------------------------------------------- YAML input and config values
class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose mappings refuse a key given twice (plain YAML keeps the last one)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: SafeLoader refuses it with its own message
            break
        if duplicate:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load(text)`` that raises ``yaml.YAMLError`` for a mapping naming a key twice."""
    return yaml.load(text, Loader=_UniqueKeyLoader)


def finite_float(name: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    """``value`` as a float, refused (:class:`UsageFailure` naming ``name``) if it is not a number, NaN,
    infinite, or outside ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageFailure(f"{name} must be a number, got {safe_text(repr(value))}")
    value = float(value)
    if not math.isfinite(value):
        raise UsageFailure(f"{name} must be a finite number, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise UsageFailure(f"{name} must be {'>' if low_open else '>='} {low:g}, got {value:g}")
    if high is not None and value > high:
        raise UsageFailure(f"{name} must be <= {high:g}, got {value:g}")
    return value


def int_in_range(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int, refused (:class:`UsageFailure` naming ``name``) if it is not an integer or is
    outside ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageFailure(f"{name} must be an integer, got {safe_text(repr(value))}")
    if low is not None and value < low:
        raise UsageFailure(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise UsageFailure(f"{name} must be <= {high}, got {value}")
    return value


# ---------------------------------------------------------------------- output locations
def _reason(err: OSError) -> str:
    """The system's words for ``err`` (``No space left on device``), lower case."""
    text = os.strerror(err.errno) if err.errno else str(err)
    return text[:1].lower() + text[1:]


def probe_writable(folder: str | Path) -> None:
    """Create, write one byte to and remove a file in the existing directory ``folder``; raises the
    ``OSError`` the system gives (a read-only mount, ``/proc``, a full disk) with ``filename`` set."""
    folder = Path(folder)
    try:
        fd, name = tempfile.mkstemp(prefix=".sit-probe-", dir=folder)
    except OSError as err:
        err.filename = err.filename or str(folder)
        raise
    try:
        os.write(fd, b"x")
        os.fsync(fd)
    except OSError as err:
        err.filename = str(folder)
        raise
    finally:
        os.close(fd)
        with suppress(OSError):
            os.unlink(name)


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


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
    if _read_only(anchor):
        raise UsageFailure(f"{what}: cannot write {path}: read-only file system")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise UsageFailure(f"{what} {path}: cannot write in {anchor} (permission denied)")
    try:
        probe_writable(anchor)
    except OSError as err:  # what os.access cannot see: root on /proc or /sys, a full disk
        raise UsageFailure(f"{what}: cannot write {path}: {_reason(err)}") from None


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
    is not writable (checked on the nearest existing ancestor, since the file is written as a temporary
    sibling and renamed: a read-only mount, :func:`os.access`, then a small file written and removed, which
    finds what the system refuses even to root and a full disk). Leaves nothing behind.
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
    must be writable instead. Probed as :func:`check_output_file` does; leaves nothing behind.
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
    renamed onto ``path`` (:func:`os.replace`), on any exception (Ctrl-C, a full disk) it is removed and
    ``path`` keeps its previous content whole; an ``OSError`` then names ``path``.

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
    except BaseException as err:
        with suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno is not None and err.filename in (None, tmp):
            err.filename = str(path)  # a write error names the file the user asked for
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
    reason = _reason(err)
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
