"""Saving figures, the one helper both halves' plots share.

Figures are drawn on :class:`matplotlib.figure.Figure` objects (Agg canvas), never through pyplot, so a
plot never switches the process's matplotlib backend or touches pyplot's global figure list;
:func:`save_figure` writes one atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from sit_causal.fileio import atomic_open

__all__ = ["save_figure"]


def save_figure(fig: Figure, path: str | Path, **kwargs: Any) -> Path:
    """Write ``fig`` to ``path`` atomically (format from the suffix, PNG by default; ``kwargs`` go to
    :meth:`~matplotlib.figure.Figure.savefig`): a killed run never leaves a half-written image
    (:func:`sit_causal.fileio.atomic_open`). Returns ``path``.

    A figure with a layout engine (``layout="constrained"``) is laid out once before it is saved: the
    engine places titles from the previous draw's tick labels, so the saved draw is its second pass and
    no title overlaps a panel."""
    path = Path(path)
    if fig.get_layout_engine() is not None:
        fig.draw_without_rendering()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format=path.suffix[1:].lower() or "png", **kwargs)
    return path
