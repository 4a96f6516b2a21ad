"""Work in progress (helper-5)."""

from __future__ import annotations

from sit_causal._cli import fail

__all__ = ["eval_command"]


def eval_command() -> None:
    """Not implemented yet."""
    fail("not implemented yet")
