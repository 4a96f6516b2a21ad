"""Tests of sit_causal.selection.align: the selection step on a frozen, linearly identified representation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from sit_causal.latent import task_distinction_loss, uic_loss
from sit_causal.metrics import graph_recovery, mcc
from sit_causal.selection.align import (
    AlignConfig,
    align_by_task_sparsity,
    expm_skew,
    jacobi_sweeps,
    refine_rotation,
    rotation_energies,
    rotation_objective,
)
from sit_causal.selection.gradients import (
    GradientConfig,
    _regressor,
    fit_task_gradient_matrices,
    gradient_matrix,
    whitening,
)
from sit_causal.sim.scm import SCMConfig, generate
from sit_causal.theory.graph import TaskFactorGraph

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


def test_batched_objective_equals_the_per_rotation_losses() -> None:
    """The count search scores every restart in one batch; each score and its gradient equal the latent module's
    UIC and distinction losses called rotation by rotation."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 4, 4, generator=gen, dtype=torch.float64)
    grams = a @ a.transpose(1, 2)
    grams = grams / grams.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None]
    skew = torch.randn(5, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    cfg = AlignConfig()
    energies = rotation_energies(torch.linalg.matrix_exp(skew - skew.transpose(1, 2)), grams)
    masks = energies / (energies + cfg.count_eps)
    ids = torch.arange(grams.shape[0])
    looped = torch.log1p(energies / cfg.count_eps).sum(dim=(1, 2)) + torch.stack([
        cfg.w_uic * uic_loss(mr, margin=cfg.uic_margin)
        + cfg.w_distinction * task_distinction_loss(mr, ids, temperature=cfg.distinction_temperature)
        for mr in masks])
    batched = rotation_objective(energies, cfg)
    torch.testing.assert_close(batched, looped, rtol=0, atol=1e-6)
    (g_batched,) = torch.autograd.grad(batched.sum(), skew, retain_graph=True)
    (g_looped,) = torch.autograd.grad(looped.sum(), skew)
    torch.testing.assert_close(g_batched, g_looped, rtol=0, atol=1e-6)


def test_batched_regressors_equal_separate_fits() -> None:
    """All tasks' regressors train as one batch (tasks of different sizes padded); the gradient matrices equal
    those of one network and one optimiser per task, drawn in the same order."""
    rng = np.random.default_rng(0)
    task_id = np.repeat([0, 1, 2, 3], [120, 80, 1, 150])  # task 2 has too few samples and is skipped
    w = rng.standard_normal((task_id.size, 3))
    y = np.sin(w[:, 0]) * (task_id + 1) + w[:, 1] * w[:, 2]
    cfg = GradientConfig(hidden=8, steps=40, max_samples_per_task=100)
    grams, r2 = fit_task_gradient_matrices(w, y, task_id, 4, cfg, seed=3)

    sub_rng = np.random.default_rng(np.random.SeedSequence(3, spawn_key=(0,)))
    gen = torch.Generator().manual_seed(3)
    for t in range(4):
        rows = np.flatnonzero(task_id == t)
        if rows.size < 2:
            assert np.isnan(r2[t]) and not grams[t].any()
            continue
        if rows.size > 100:
            rows = sub_rng.choice(rows, size=100, replace=False)
        yt = (y[rows] - y[rows].mean()) / (y[rows].std() + 1e-12)
        x = torch.as_tensor(w[rows], dtype=torch.float32).requires_grad_(True)
        target = torch.as_tensor(yt, dtype=torch.float32)[:, None]
        net = _regressor(3, 8, gen)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        for _ in range(cfg.steps):
            loss = (net(x.detach()) - target).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        (grad,) = torch.autograd.grad(net(x).sum(), x)
        np.testing.assert_allclose(grams[t], gradient_matrix(grad.double().numpy()), atol=1e-4)


def test_refinement_stops_when_the_rotation_stops_moving() -> None:
    """The stop compares the rotation every ``refine_check_every`` steps after the warm-up: a change below
    ``refine_tol`` ends the refinement there, with the rotation the same steps without the rule reach; a change
    above it (or ``refine_tol = 0``) runs on to the cap."""
    graph = TaskFactorGraph.from_matrix(UIC4)
    data, z = _linear_data(graph, seed=3)
    mu, wmat = whitening(z, data.dataset_id)
    args = ((z - mu) @ wmat, data.y.astype(float), data.task_id, graph.n_tasks)
    start = np.linalg.qr(np.random.default_rng(1).standard_normal((4, 4)))[0]
    cfg = replace(FAST, refine_iterations=120, refine_warmup=40, refine_tol=0.0, refine_check_every=20,
                  refine_samples_per_task=200)
    capped_steps = refine_rotation(*args, start, cfg, seed=0)[3]
    moved = np.linalg.norm(refine_rotation(*args, start, replace(cfg, refine_iterations=60), seed=0)[0] - start)
    assert capped_steps == 120 and moved > 1e-3
    # a tolerance above the first check's change stops there, with the 60-step rotation
    early, _, _, early_steps = refine_rotation(*args, start, replace(cfg, refine_tol=2 * moved), seed=0)
    short, *_ = refine_rotation(*args, start, replace(cfg, refine_iterations=60), seed=0)
    assert early_steps == 60
    np.testing.assert_allclose(early, short, atol=1e-6)
    # a tolerance below every change never stops early
    assert refine_rotation(*args, start, replace(cfg, refine_tol=1e-9), seed=0)[3] == 120


def test_expm_skew_is_the_matrix_exponential() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 6, 6, generator=gen, dtype=torch.float64) * 2.0
    skew = a - a.transpose(1, 2)
    torch.testing.assert_close(expm_skew(skew), torch.linalg.matrix_exp(skew), rtol=0, atol=1e-9)
    torch.testing.assert_close(expm_skew(skew[0].float()), torch.linalg.matrix_exp(skew[0].float()), rtol=0, atol=2e-5)
