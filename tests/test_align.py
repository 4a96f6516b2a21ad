"""Tests of sit_causal.selection.align: the selection step on a frozen, linearly identified representation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from sit_causal.graph import TaskFactorGraph
from sit_causal.metrics import graph_recovery, mcc
from sit_causal.scm import SCMConfig, generate
from sit_causal.selection.align import (
    AlignConfig,
    align_by_task_sparsity,
    jacobi_sweeps,
    rotation_objective,
)
from sit_causal.selection.gradients import GradientConfig, whitening

FAST = AlignConfig(restarts=8, iterations=250, ensemble=1, refine_iterations=300, refine_warmup=100,
                   gradients=GradientConfig(hidden=32, steps=150, max_samples_per_task=1000))
# a UIC graph (no factor's task set contains another's), rows = tasks, columns = factors
UIC4 = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1], [1, 0, 1, 0]])


def _linear_data(graph: TaskFactorGraph, seed: int) -> tuple[object, np.ndarray]:
    """Meta-SCM samples of ``graph`` and ``z = L B^T + c`` with a random invertible ``B`` ``(n, n)``."""
    cfg = SCMConfig(n_factors=graph.n_factors, n_tasks=graph.n_tasks, datasets_per_task=4, samples_per_dataset=300,
                    obs_dim=2 * graph.n_factors, seed=seed)
    data = generate(cfg, graph=graph)
    rng = np.random.default_rng(seed)
    b = rng.standard_normal((graph.n_factors, graph.n_factors)) + 0.5 * np.eye(graph.n_factors)
    return data, data.latents @ b.T + rng.standard_normal(graph.n_factors)


def _diagonal_grams(rng: np.random.Generator) -> np.ndarray:
    """Exact unit-trace gradient matrices of ``UIC4`` in the true coordinates: ``G_t = diag(A[t] * weights)``."""
    m, n = UIC4.shape
    grams = np.stack([np.diag(UIC4[t] * rng.uniform(0.3, 1.0, n)) for t in range(m)])
    return grams / np.trace(grams, axis1=1, axis2=2)[:, None, None]


def test_within_dataset_whitening_makes_the_linear_map_orthogonal() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(20), 300)
    means = rng.uniform(-2, 2, (20, 3))
    latents = means[groups] + rng.standard_normal((groups.size, 3))  # independent given the group, unit variance
    b = rng.standard_normal((3, 3)) + np.eye(3)
    z = latents @ b.T + 5.0
    _, w = whitening(z, groups)
    np.testing.assert_allclose(w, w.T)
    q = w @ b  # w = (z - mu) W = (L - .) B^T W: orthogonal iff B^T W W B = I
    np.testing.assert_allclose(q.T @ q, np.eye(3), atol=0.08)
    # the pooled covariance would not: the group means inflate every factor's variance
    _, pooled = whitening(z, None)
    assert np.abs((pooled @ b).T @ (pooled @ b) - np.eye(3)).max() > 0.3
    with pytest.raises(ValueError, match="groups"):
        whitening(z, groups[:10])


def test_count_objective_is_lowest_at_the_true_axes_under_the_uic() -> None:
    n = UIC4.shape[1]
    grams = _diagonal_grams(np.random.default_rng(1))
    g = torch.as_tensor(grams)
    cfg = AlignConfig(w_uic=0.0, w_distinction=0.0)

    def objective(rot: np.ndarray) -> float:
        r = torch.as_tensor(rot)[None]
        return float(rotation_objective(torch.einsum("rjk,tkl,rjl->rtj", r, g, r), cfg)[0])

    truth = objective(np.eye(n))
    for i, j in [(0, 1), (1, 2), (0, 3)]:
        for angle in (0.2, np.pi / 4):
            rot = np.eye(n)
            c, s = np.cos(angle), np.sin(angle)
            rot[[i, i, j, j], [i, j, i, j]] = [c, -s, s, c]
            assert objective(rot) > truth + 1.0
    permuted = np.eye(n)[[2, 0, 3, 1]] * np.array([1, -1, 1, -1])[:, None]  # relabel and flip: no cost
    assert objective(permuted) == pytest.approx(truth)


def test_jacobi_sweeps_undo_a_planar_mix() -> None:
    n = UIC4.shape[1]
    grams = _diagonal_grams(np.random.default_rng(2))
    mixed = np.eye(n)
    c, s = np.cos(0.5), np.sin(0.5)
    mixed[[0, 0, 2, 2], [0, 2, 0, 2]] = [c, -s, s, c]  # factors 0 and 2 mixed by 0.5 rad
    cfg = AlignConfig(w_uic=0.0, w_distinction=0.0)
    rot, objective = jacobi_sweeps(mixed, grams, cfg)
    assert (np.abs(rot).max(axis=1) > 0.999).all()  # back on the axes, up to a permutation (grid step 1 deg)
    np.testing.assert_allclose(rot @ rot.T, np.eye(n), atol=1e-10)
    truth, truth_objective = jacobi_sweeps(np.eye(n), grams, cfg)
    np.testing.assert_allclose(truth, np.eye(n))  # a minimum stays put
    assert truth_objective - 1e-9 <= objective <= truth_objective + 1.0  # within half a grid step of it


def test_uic_term_penalises_contained_task_sets_only() -> None:
    satisfying = torch.as_tensor(np.eye(3), dtype=torch.float64)[None] * 0.9
    nested = torch.as_tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)[None] * 0.9
    with_uic = AlignConfig(w_uic=1.0, w_distinction=0.0)
    without = AlignConfig(w_uic=0.0, w_distinction=0.0)
    assert float(rotation_objective(satisfying, with_uic) - rotation_objective(satisfying, without)) == pytest.approx(0)
    assert float(rotation_objective(nested, with_uic) - rotation_objective(nested, without)) > 0.01


def test_alignment_unmixes_a_linear_representation() -> None:
    graph = TaskFactorGraph.from_matrix(UIC4)
    data, z = _linear_data(graph, seed=3)
    raw = mcc(data.latents, z).score
    res = align_by_task_sparsity(z, data.y.astype(float), data.task_id, graph.n_tasks, data.dataset_id, FAST, seed=0)
    learned = res.transform(z)
    score = mcc(data.latents, learned)
    assert raw < 0.9 and score.score > 0.95
    np.testing.assert_allclose(res.rotation @ res.rotation.T, np.eye(4), atol=1e-8)
    np.testing.assert_allclose(res.energies.sum(axis=1), 1.0, atol=1e-6)
    assert res.adjacency.shape == UIC4.shape and res.restart_objectives.shape == (FAST.restarts,)
    assert res.objective <= res.restart_objectives.min() + 1e-9  # the Jacobi sweeps only go down
    rec = graph_recovery(res.adjacency.astype(int), graph, score.assignment)
    assert rec.precision == 1.0 and rec.recall == 1.0


def test_alignment_is_a_function_of_its_seed() -> None:
    graph = TaskFactorGraph.from_matrix(UIC4)
    data, z = _linear_data(graph, seed=4)
    cfg = replace(FAST, restarts=2, iterations=20, gradients=replace(FAST.gradients, steps=20))
    args = (z, data.y.astype(float), data.task_id, graph.n_tasks, data.dataset_id, cfg)
    a, b = align_by_task_sparsity(*args, seed=5), align_by_task_sparsity(*args, seed=5)
    np.testing.assert_array_equal(a.unmixing, b.unmixing)


def test_bad_inputs_are_rejected() -> None:
    z = np.zeros((10, 2))
    with pytest.raises(ValueError, match="dataset_id"):
        align_by_task_sparsity(z, np.zeros(10), np.zeros(10, int), 1)
    with pytest.raises(ValueError, match="z must be"):
        align_by_task_sparsity(z, np.zeros(9), np.zeros(10, int), 1, np.zeros(10, int))
    with pytest.raises(ValueError, match="whiten"):
        AlignConfig(whiten="zca")
    with pytest.raises(ValueError, match="edge_threshold"):
        AlignConfig(edge_threshold=1.5)


def test_with_budget_scales_the_warmup() -> None:
    cfg = AlignConfig()
    assert cfg.with_budget(cfg.restarts, cfg.refine_iterations) == cfg  # the defaults reproduce themselves
    small = cfg.with_budget(2, 30)
    assert (small.restarts, small.refine_iterations, small.refine_warmup) == (2, 30, 8)
    assert cfg.with_budget(4, 0).refine_warmup == 0
