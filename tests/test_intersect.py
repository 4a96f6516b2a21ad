"""Tests of sit_causal.selection.intersect: identification by task-subspace intersection."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sit_causal.metrics import graph_recovery, mcc
from sit_causal.selection.gradients import GradientConfig, gradient_matrix, whitening
from sit_causal.selection.intersect import (
    IntersectConfig,
    identify_by_intersection,
    intersect_gradient_subspaces,
    subspace_dimension,
)
from sit_causal.sim.graph_generators import generate_graph
from sit_causal.sim.scm import SCMConfig, generate
from sit_causal.theory.graph import TaskFactorGraph
from sit_causal.theory.uic import check_uic

# exact linear z: the plain outer product is exact (the centred default is for trained representations)
FAST = IntersectConfig(gradients=GradientConfig(hidden=32, steps=120, max_samples_per_task=800, statistic="outer"))


def _exact_grams(adjacency: np.ndarray, covectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``G_t = sum_{i in S_t} w_ti b_i b_i^T`` with random positive weights: range exactly ``V_t``."""
    m = adjacency.shape[0]
    n = covectors.shape[1]
    grams = np.zeros((m, n, n))
    for t in range(m):
        for i in np.flatnonzero(adjacency[t]):
            grams[t] += rng.uniform(0.3, 1.0) * np.outer(covectors[i], covectors[i])
    return grams


def _linear_data(graph: TaskFactorGraph, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Meta-SCM samples of ``graph`` and ``z = L A^T + c`` with a random invertible ``A``."""
    cfg = SCMConfig(n_factors=graph.n_factors, n_tasks=graph.n_tasks, datasets_per_task=5, samples_per_dataset=200,
                    obs_dim=2 * graph.n_factors, seed=seed)
    data = generate(cfg, graph=graph)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((graph.n_factors, graph.n_factors)) + 0.5 * np.eye(graph.n_factors)
    z = data.latents @ a.T + rng.standard_normal(graph.n_factors)
    return data.latents, z, data.y.astype(np.float64), data.task_id


def test_whitening_gives_identity_covariance() -> None:
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4000, 4)) @ rng.standard_normal((4, 4)) + 3.0
    mu, w = whitening(z)
    white = (z - mu) @ w
    np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(4), atol=1e-8)
    np.testing.assert_allclose(w, w.T)


def test_subspace_dimension_counts_eigenvalues_above_ratio() -> None:
    assert subspace_dimension(np.array([1.0, 0.5, 0.02, 0.001]), 0.01) == 3
    assert subspace_dimension(np.array([0.001, 1.0, 0.5]), 0.6) == 1
    assert subspace_dimension(np.zeros(3), 0.1) == 1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 6))
def test_exact_subspaces_recover_exactly_the_uic_identifiable_covectors(seed: int, n: int) -> None:
    """With exact ``V_t`` the found directions are exactly the covectors of the factors with an empty mixing
    set (up to sign), whatever the graph."""
    rng = np.random.default_rng(seed)
    m = 5
    adjacency = rng.random((m, n)) < 0.5
    adjacency[rng.integers(0, m), :] |= ~adjacency.any(axis=0)  # every factor read by some task
    adjacency[:, rng.integers(0, n)] |= ~adjacency.any(axis=1)  # every task reads some factor
    q = np.linalg.qr(rng.standard_normal((n, n)))[0]  # orthonormal covectors (whitened coordinates)
    res = intersect_gradient_subspaces(_exact_grams(adjacency, q, rng), IntersectConfig(energy_ratio=1e-6))
    verdicts = check_uic(TaskFactorGraph.from_matrix(adjacency.astype(int)))
    found_dirs = res.directions[res.found]
    cos = np.abs(found_dirs @ q.T)  # (n_found, n)
    assert np.all(cos.max(axis=1) > 1 - 1e-8), "every found direction is a true covector"
    hit = set(cos.argmax(axis=1).tolist())
    assert hit == set(np.flatnonzero(verdicts.identifiable_mask).tolist())
    # learned graph columns of found directions equal the true columns
    for j, i in enumerate(cos.argmax(axis=1)):
        np.testing.assert_array_equal(res.adjacency[:, j], adjacency[:, i])


def test_recovers_linear_mixing_under_uic_and_the_learned_graph() -> None:
    graph = generate_graph("uic", 4, 6, np.random.default_rng(3))
    assert check_uic(graph).uic_holds
    latents, z, y, task_id = _linear_data(graph, seed=1)
    assert mcc(latents, z).score < 0.9  # the mixing is real
    res = identify_by_intersection(z, y, task_id, graph.n_tasks, FAST, seed=0)
    assert res.n_found == graph.n_factors
    score = mcc(latents, res.transform(z))
    assert score.score > 0.98
    rec = graph_recovery(res.adjacency.astype(int), graph, score.assignment)
    # every learned edge is a true edge; a parent whose gradient energy is below the dimension rule's
    # detection limit (energies differ by ~100x across parents of one g_t) may be missed
    assert rec.precision == 1.0
    assert rec.recall >= 0.8


def test_violating_graph_finds_only_identifiable_factors() -> None:
    """Factor L1 is read by T1 only and L2 by T1, T2: ``C_1 ⊂ C_2`` (L1 mixes with L2). L2, L3, L4 are
    identifiable; the intersection never isolates L1's covector."""
    adjacency = np.array([[1, 1, 0, 0],
                          [0, 1, 1, 0],
                          [0, 0, 1, 1],
                          [0, 0, 0, 1],
                          [1, 1, 0, 1]])
    graph = TaskFactorGraph.from_matrix(adjacency)
    report = check_uic(graph)
    assert report.identifiable_mask.tolist() == [False, True, True, True]
    latents, z, y, task_id = _linear_data(graph, seed=2)
    res = identify_by_intersection(z, y, task_id, graph.n_tasks, FAST, seed=0)
    assert res.n_found == 3
    found_factors = res.transform(z)[:, res.found]
    corr = np.abs(np.corrcoef(latents.T, found_factors.T)[:4, 4:])  # (true, found)
    assert sorted(corr.argmax(axis=0).tolist()) == [1, 2, 3]
    assert np.all(corr.max(axis=0) > 0.98)


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError):
        identify_by_intersection(np.zeros((10, 2)), np.zeros(9), np.zeros(10, dtype=int), 1)
    with pytest.raises(ValueError):
        intersect_gradient_subspaces(np.zeros((2, 3, 4)))


def test_gradient_matrix_statistics() -> None:
    rng = np.random.default_rng(0)
    g = rng.standard_normal((500, 3)) * np.array([1.0, 0.1, 0.0]) + np.array([0.0, 0.0, 2.0])
    np.testing.assert_allclose(gradient_matrix(g, "outer"), g.T @ g / 500)
    centred = gradient_matrix(g, "centred")
    lam = np.linalg.eigvalsh(centred)
    assert lam[-2] == pytest.approx(1.0, abs=0.1) and lam[-1] == pytest.approx(1.0, abs=0.1)  # mean + top variance
    assert np.linalg.matrix_rank(centred, tol=1e-3) == 3
    with pytest.raises(ValueError):
        gradient_matrix(g, "median")
