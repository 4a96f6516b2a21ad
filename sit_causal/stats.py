"""Confidence intervals over seeds: the one place both halves compute a reported interval.

Every "mean +/- h (95 % CI)" in the tables, figures and ``docs/results`` is the Student t-interval of
the mean over independent runs (seeds):

* one sample ``x_1 .. x_n`` (:func:`mean_ci`): ``h = t_{1 - (1 - level)/2, n - 1} * s / sqrt(n)``, with
  ``s`` the sample standard deviation (``ddof = 1``);
* a difference of two methods (:func:`difference_ci`): paired by seed, the one-sample interval of the
  differences ``a_i - b_i``; unpaired, Welch's interval
  ``h = t_{1 - (1 - level)/2, nu} * sqrt(s_a^2 / n_a + s_b^2 / n_b)`` with the Welch-Satterthwaite degrees
  of freedom ``nu = (v_a + v_b)^2 / (v_a^2 / (n_a - 1) + v_b^2 / (n_b - 1))``, ``v = s^2 / n``.

``level`` defaults to 0.95 (95 %). Where the data cannot give an interval (a single value) the half-width
is ``nan``. Depends on numpy and scipy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["difference_ci", "mean_ci"]


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean of ``values`` and the half-width ``h`` of the ``level`` (default 95 %) confidence interval of
    the mean: the Student t-interval ``h = t_{(1 + level)/2, n - 1} * s / sqrt(n)`` (``s``: sample sd,
    ``ddof = 1``); ``h = nan`` for a single value. Raises :class:`ValueError` for no values."""
    from scipy import stats

    a = np.asarray(values, dtype=float)
    if a.size == 0:
        raise ValueError("mean_ci of no values")
    if a.size == 1:
        return float(a[0]), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, a.size - 1) * a.std(ddof=1) / np.sqrt(a.size))
    return float(a.mean()), half


def difference_ci(a: Sequence[float], b: Sequence[float], paired: bool, level: float = 0.95) -> tuple[float, float]:
    """Mean of ``a - b`` and the half-width of its ``level`` (default 95 %) confidence interval.

    * ``paired`` (``a[i]`` and ``b[i]`` from the same seed): the t-interval of the differences,
      :func:`mean_ci` of ``a - b`` (``n - 1`` degrees of freedom);
    * unpaired: Welch's t-interval, ``h = t_{(1 + level)/2, nu} * sqrt(v_a + v_b)`` with ``v = s^2 / n``
      and the Welch-Satterthwaite degrees of freedom ``nu = (v_a + v_b)^2 / (v_a^2 / (n_a - 1) +
      v_b^2 / (n_b - 1))``.

    Half-width ``nan`` where the data cannot give one (a single value per side), 0 when both sides are
    constant."""
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size == 0 or y.size == 0:
        raise ValueError("difference_ci of no values")
    if paired:
        if x.size != y.size:
            raise ValueError(f"paired difference of {x.size} and {y.size} values")
        return mean_ci(x - y, level)
    diff = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return diff, float("nan")
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = float(np.sqrt(vx + vy))
    if se == 0.0:
        return diff, 0.0
    dof = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    return diff, float(stats.t.ppf(0.5 + level / 2, dof) * se)
