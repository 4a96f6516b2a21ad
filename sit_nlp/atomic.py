"""Atomic replacement of an output folder: build it under a temporary name, then swap it in."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["replace_directory"]


def replace_directory(tmp: Path, dest: Path) -> None:
    """Move the finished folder ``tmp`` to ``dest``; an existing ``dest`` is renamed aside first and
    removed only after the swap, so a reader never sees a half-written ``dest``."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(dest)
