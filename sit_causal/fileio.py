"""Files in and out, for every layer of both halves (no command-line code here).

Inputs: :func:`iter_jsonl` is the one JSONL reader (UTF-8, with or without a byte-order mark, duplicate keys
refused by :func:`unique_keys`); :func:`load_yaml` reads YAML and refuses duplicate keys too (every YAML the
project reads goes through it).

Outputs: :func:`check_output_file` / :func:`check_output_dir` refuse a bad output location up front and probe
it (write and remove a small file) before any work; :func:`atomic_open` / :func:`write_text_atomic` (files)
and :func:`replace_directory` (folders) write so that a reader never sees a half-written output and a failure
leaves no partial file behind. They are the only atomic writers of the project.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import yaml

from sit_causal.inputs import UsageFailure

__all__ = [
    "DuplicateKeyError",
    "atomic_open",
    "check_output_dir",
    "check_output_file",
    "iter_jsonl",
    "load_yaml",
    "os_reason",
    "probe_writable",
    "remove_outputs",
    "replace_directory",
    "unique_keys",
    "write_text_atomic",
]

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



# ---------------------------------------------------------------------- output locations
def os_reason(err: OSError) -> str:
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
        raise UsageFailure(f"{what}: cannot write {path}: {os_reason(err)}") from None


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



def remove_outputs(folder: str | Path, names: Sequence[str]) -> None:
    """``--overwrite``: remove the files and folders ``names`` a command writes into ``folder`` (nothing else)."""
    for name in names:
        target = Path(folder) / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif os.path.lexists(target):
            target.unlink()
