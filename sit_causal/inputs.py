"""A user's input: the one error for a bad one, safe echo of user text, checks of config values.

House rule: every bad input ends as **one line on stderr and exit code 2**, never a traceback, and it is
found before any work starts. Library code at any layer ``raise UsageFailure("one line")``; the command
line (:func:`sit_causal.cli.common.run_app`) turns it into that line. :func:`safe_text` escapes control
characters before user text reaches a terminal; :func:`finite_float` and :func:`int_in_range` check config
values.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["UsageFailure", "finite_float", "int_in_range", "safe_text"]

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


# ---------------------------------------------------------------------- config values
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
