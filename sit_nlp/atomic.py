"""Atomic writers, kept importable under their old name: the one implementation is in
:mod:`sit_causal.cli.common` (files: :func:`atomic_open`, :func:`write_text_atomic`; folders:
:func:`replace_directory`)."""

from __future__ import annotations

from sit_causal.cli.common import atomic_open, replace_directory, write_text_atomic

__all__ = ["atomic_open", "replace_directory", "write_text_atomic"]
