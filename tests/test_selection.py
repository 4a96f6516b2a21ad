"""The selection step's graph tools and the task-free control, on plain arrays with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sit_causal.metrics import mcc
from sit_causal.selection import (
    graph_from_energies,
    identify_without_tasks,
    repair_to_uic,
    task_factor_energies,
    uic_violations,
)
from sit_causal.selection.taskfree import joint_diagonalisation
from sit_causal.theory.graph import TaskFactorGraph
from sit_causal.theory.uic import check_uic


def test_energies_are_task_means_normalised_per_row() -> None:
    c = np.array([[1.0, 3.0], [3.0, 1.0], [0.0, 2.0], [0.0, 0.0]])
    e = task_factor_energies(c, np.array([0, 0, 1, 2]), 4)
    np.testing.assert_allclose(e, [[0.5, 0.5], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5]])  # empty/zero rows uniform
    with pytest.raises(ValueError, match="non-negative"):
        task_factor_energies(-c, np.array([0, 0, 1, 2]), 3)
    with pytest.raises(ValueError, match="task ids"):
        task_factor_energies(c, np.array([0, 0, 1, 5]), 3)


def test_graph_keeps_the_fewest_factors_that_cover_the_energy() -> None:
    e = np.array([[0.6, 0.3, 0.1, 0.0], [0.25, 0.25, 0.25, 0.25], [0.05, 0.9, 0.05, 0.0]])
    a = graph_from_energies(e, coverage=0.8)
    np.testing.assert_array_equal(a, [[1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 0, 0]])
    assert graph_from_energies(e, coverage=1e-9).sum(axis=1).tolist() == [1, 1, 1]


def test_repair_reaches_the_uic_and_keeps_a_uic_graph() -> None:
    uic = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], dtype=bool)  # antichain of task sets
    e = uic / uic.sum(axis=1, keepdims=True)
    same = repair_to_uic(uic, e)
    assert same.holds and same.flips == () and np.array_equal(same.adjacency, uic)
    nested = np.array([[1, 1, 0], [1, 0, 1], [1, 0, 0]], dtype=bool)  # factor 0 read by every task
    assert uic_violations(nested) > 0
    rng = np.random.default_rng(0)
    fixed = repair_to_uic(nested, rng.dirichlet(np.ones(3), size=3))
    assert fixed.holds and fixed.violations_before == uic_violations(nested)
    assert check_uic(TaskFactorGraph.from_matrix(fixed.adjacency.astype(int))).uic_holds
    assert fixed.adjacency.sum(axis=1).min() >= 1  # every task keeps a factor


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_repair_never_adds_violations_and_checks_with_the_checker(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m, n = 6, 5
    e = rng.dirichlet(np.ones(n) * 0.4, size=m)
    a = graph_from_energies(e, 0.7)
    for form in ("linear", "orthogonal"):
        r = repair_to_uic(a, e, form=form)
        assert r.violations_after <= r.violations_before
        report = check_uic(TaskFactorGraph.from_matrix(r.adjacency.astype(int)), ambiguity=form)
        assert report.uic_holds == r.holds


def test_joint_diagonalisation_recovers_a_common_rotation() -> None:
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    mats = np.stack([q @ np.diag(rng.uniform(0.2, 3.0, 4)) @ q.T for _ in range(6)])
    v, _ = joint_diagonalisation(mats)
    rotated = np.einsum("ji,kjl,lm->kim", v, mats, v)
    off = rotated - np.einsum("kii->ki", rotated)[:, :, None] * np.eye(4)
    assert np.abs(off).max() < 1e-8
    assert np.allclose(np.abs(v.T @ q).max(axis=1), 1.0, atol=1e-6)  # v = q up to signs and order


def _latents(variances_vary: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    k, n, per = 20, 4, 400
    d = np.repeat(np.arange(k), per)
    scale = rng.uniform(0.3, 2.0, (k, n)) if variances_vary else np.ones((k, n))
    return rng.normal(size=(k * per, n)) * scale[d] + 2.0 * rng.normal(size=(k, n))[d], d


def test_task_free_control_identifies_variance_modulated_factors() -> None:
    latents, d = _latents(variances_vary=True)
    mixing = np.random.default_rng(5).standard_normal((4, 4))
    z = latents @ mixing.T + 3.0
    res = identify_without_tasks(z, d)
    assert mcc(latents, res.transform(z), "pearson").score > 0.99
    assert res.off_diagonal < 0.05


def test_task_free_control_fails_when_only_the_means_move() -> None:
    """Shared covariance: after whitening any rotation is optimal, so the dataset ids alone cannot unmix."""
    latents, d = _latents(variances_vary=False)
    mixing = np.random.default_rng(5).standard_normal((4, 4))
    z = latents @ mixing.T
    assert mcc(latents, identify_without_tasks(z, d).transform(z), "pearson").score < 0.95
