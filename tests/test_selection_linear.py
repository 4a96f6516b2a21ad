"""Tests of the selection step over GL(n) (sit_causal.selection.linear) and of the latent SCM that calls for
it (sit_causal.sim.scm, ``latent_scm``): on exactly linear representations of factors correlated within every
dataset, the GL(n) step recovers a UIC graph's factors where the rotation step cannot, and leaves a nested
factor mixed, as the UIC predicts."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from sit_causal.metrics import factor_report
from sit_causal.selection import AlignConfig, GradientConfig
from sit_causal.selection.affinise import AffiniseConfig
from sit_causal.selection.align import align_by_task_sparsity, linear_energies
from sit_causal.selection.linear import (
    LinearAlignConfig,
    _distinct,
    align_linear_by_task_sparsity,
    linear_objective,
    refine_linear,
    search_linear,
)
from sit_causal.sim.scm import SCMConfig, build_latent_map, build_mechanism, generate
from sit_causal.theory.graph import TaskFactorGraph
from sit_causal.theory.uic import check_uic

FAST = AlignConfig(restarts=4, iterations=150, refine_iterations=0, ensemble=1, jacobi_sweeps=1,
                   gradients=GradientConfig(steps=200, max_samples_per_task=1500))
UIC3 = TaskFactorGraph.from_matrix(np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]]))  # 2-subsets of 3 tasks
PLAIN = LinearAlignConfig(refine=False, affinise=None)  # the count search alone
NESTED3 = TaskFactorGraph.from_matrix(np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]]))  # C_0 = {0} inside C_1


def _exact_linear(graph: TaskFactorGraph, seed: int, strength: float = 1.0):
    cfg = SCMConfig(n_factors=3, n_tasks=3, datasets_per_task=4, samples_per_dataset=500, seed=seed,
                    latent_scm=strength)
    data = generate(cfg, graph=graph)
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((3, 3))
    return data, data.latents @ mix.T + rng.standard_normal(3)


def test_latent_scm_zero_changes_nothing_and_positive_correlates_within_datasets() -> None:
    assert build_latent_map(3, 0.0, np.random.default_rng(0)) is None
    base_cfg = SCMConfig(n_factors=3, n_tasks=3, datasets_per_task=2, samples_per_dataset=4000, seed=4)
    assert build_mechanism(base_cfg, graph=UIC3).latent_map is None
    base = generate(base_cfg, graph=UIC3)
    cfg = SCMConfig(n_factors=3, n_tasks=3, datasets_per_task=2, samples_per_dataset=4000, seed=4, latent_scm=1.0)
    data = generate(cfg, graph=UIC3)
    m = build_mechanism(cfg, graph=UIC3).latent_map
    assert m is not None and np.allclose(np.linalg.norm(m, axis=1), 1.0)
    assert np.allclose(data.latents, base.latents @ m.T)  # L = M E, E the independent run's draw
    assert not np.allclose(m @ m.T, np.eye(3), atol=0.1)  # a non-diagonal covariance ...
    for d in range(data.n_datasets):  # ... shared by every dataset (gauss-mean: unit exogenous variances)
        cov = np.cov(data.latents[data.dataset_id == d], rowvar=False)
        assert np.allclose(cov, m @ m.T, atol=0.08)


def test_energies_rows_sum_to_one_and_the_guard_is_zero_for_rotations() -> None:
    rng = np.random.default_rng(0)
    g = rng.standard_normal((4, 3, 3))
    grams = torch.as_tensor(np.einsum("tij,tkj->tik", g, g))
    q, _ = torch.linalg.qr(torch.randn(2, 3, 3, dtype=torch.float64))
    grams = grams / grams.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None]  # unit trace
    e = linear_energies(q, grams, normalise=False)
    assert e.shape == (2, 4, 3) and torch.allclose(e.sum(-1), torch.ones(2, 4, dtype=torch.float64))
    # a factor scaled up (a non-unit row) is read with proportionally smaller energy: hence the unit rows
    scaled = q.clone()
    scaled[:, 0] *= 3.0
    assert torch.allclose(linear_energies(scaled, grams, normalise=False)[..., 0], e[..., 0] / 9.0)
    # normalised, the rows are fractions again whatever the scale
    assert torch.allclose(linear_energies(scaled, grams).sum(-1), torch.ones(2, 4, dtype=torch.float64))
    lin = LinearAlignConfig(w_logdet=1.0)
    cfg = AlignConfig(w_uic=0.0, w_distinction=0.0)
    from sit_causal.selection.align import rotation_objective

    assert torch.allclose(linear_objective(q, grams, cfg, lin), rotation_objective(e, cfg))  # log|det Q| = 0
    sheared = q.clone()
    sheared[:, 0] = q[:, 0] + 0.9 * q[:, 1]
    sheared[:, 0] /= sheared[:, 0].norm(dim=-1, keepdim=True)
    assert torch.all(torch.linalg.slogdet(sheared)[1] < -0.1)  # a non-orthogonal unit-row V pays the guard


def test_gl_step_recovers_a_uic_graph_the_rotation_step_cannot() -> None:
    data, z = _exact_linear(UIC3, seed=3)
    y = data.y.astype(float)
    lin = align_linear_by_task_sparsity(z, y, data.task_id, 3, data.dataset_id, FAST, PLAIN, seed=0)
    rot = align_by_task_sparsity(z, y, data.task_id, 3, data.dataset_id, FAST, seed=0)
    got = factor_report(data.latents, lin.transform(z), "pearson").mcc.score
    rotated = factor_report(data.latents, rot.transform(z), "pearson").mcc.score
    assert got > 0.97, got
    assert rotated < got - 0.05, (rotated, got)
    assert lin.log_det < -0.05  # the solution is not a rotation
    assert check_uic(TaskFactorGraph.from_matrix(lin.adjacency.astype(int))).uic_holds


def test_gl_step_leaves_a_nested_factor_mixed() -> None:
    report = check_uic(NESTED3)
    assert report.identifiable_mask.tolist() == [False, True, True]
    data, z = _exact_linear(NESTED3, seed=7)  # one draw; the statistics are in docs/results/linear_regime.md
    lin = align_linear_by_task_sparsity(z, data.y.astype(float), data.task_id, 3, data.dataset_id, FAST, PLAIN,
                                        seed=0)
    rep = factor_report(data.latents, lin.transform(z), "pearson")
    per = [f.matched_correlation for f in rep.factors]
    assert per[1] > 0.97 and per[2] > 0.97, per
    # C_0 inside C_1: L_0 + a L_1 costs no edge, the guard decorrelates it, and L_1 stays mixed into it
    assert per[0] < 0.9, per
    assert 1 in rep.learned[rep.factors[0].matched_to].mixes


def test_bad_linear_config_is_refused() -> None:
    with pytest.raises(ValueError):
        LinearAlignConfig(w_logdet=0.0)
    with pytest.raises(ValueError):
        LinearAlignConfig(shear_values=1)
    with pytest.raises(ValueError):
        LinearAlignConfig(refine_candidates=0)
    default = LinearAlignConfig()  # the correction towards affine and the refinement are on by default
    assert default.refine and default.affinise is not None


def test_distinct_candidates_ignore_order_and_sign() -> None:
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))
    other, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((3, 3)))
    same = -q[[2, 0, 1]]  # the same learned factors, reordered and flipped
    vs = np.stack([q, same, np.full((3, 3), np.nan), other])
    assert _distinct(vs, np.arange(4), 3) == [0, 3]
    assert _distinct(vs, np.arange(4), 1) == [0]


def test_refinement_keeps_the_truth_and_moves_a_shear_back() -> None:
    """On an exactly linear UIC representation the GL(n) step with the correction towards affine and the
    refinement still recovers the factors, and the refinement alone, started from the oracle unmixing sheared
    by 0.6, moves back towards it."""
    data, z = _exact_linear(UIC3, seed=3)
    y = data.y.astype(float)
    fast = replace(FAST, refine_iterations=300, refine_warmup=100, refine_samples_per_task=500)
    cfg = LinearAlignConfig(refine=True, refine_candidates=2, start_taskfree=True,
                            affinise=AffiniseConfig(steps=100, batch=1000, hidden=8))
    lin = align_linear_by_task_sparsity(z, y, data.task_id, 3, data.dataset_id, fast, cfg, seed=0)
    assert lin.premap is not None
    assert factor_report(data.latents, lin.transform(z), "pearson").mcc.score > 0.97
    cfg = replace(cfg, affinise=None)
    lin = align_linear_by_task_sparsity(z, y, data.task_id, 3, data.dataset_id, fast, cfg, seed=0)
    w = (z - lin.mean) @ lin.whitening
    coef = np.linalg.lstsq(np.c_[w, np.ones(len(w))], data.latents, rcond=None)[0][:-1].T
    oracle = coef / np.linalg.norm(coef, axis=1, keepdims=True)
    sheared = oracle.copy()
    sheared[0] = oracle[0] + 0.6 * oracle[1]
    sheared[0] /= np.linalg.norm(sheared[0])
    refined, losses, steps = refine_linear(w, y, data.task_id, 3, np.stack([sheared, oracle]),
                                           replace(fast, refine_iterations=600, refine_tol=0.0), cfg, seed=0)
    assert refined.shape == (2, 3, 3) and losses.shape == (2,) and steps == 600
    assert np.allclose(np.linalg.norm(refined, axis=2), 1.0)

    def score(v: np.ndarray) -> float:
        return factor_report(data.latents, w @ v.T, "pearson").mcc.score

    assert score(refined[0]) > score(sheared) + 0.005  # the shear is partly undone
    # the refinement is not exactly stationary at the truth (its group lasso on strongly correlated factors),
    # but it stays close, and the truth fits at least as well as the shear
    assert score(refined[1]) > 0.98
    assert losses[1] <= losses[0] + 1e-4


def test_search_without_options_is_the_step() -> None:
    data, z = _exact_linear(UIC3, seed=3)
    y = data.y.astype(float)
    lin = align_linear_by_task_sparsity(z, y, data.task_id, 3, data.dataset_id, FAST, PLAIN, seed=0)
    found = search_linear(lin.gradient_matrices, FAST, PLAIN, seed=0)
    assert np.allclose(found.mixing, lin.mixing) and found.objective == pytest.approx(lin.objective)
    assert found.refine_losses.size == 0 and found.refine_steps == 0
