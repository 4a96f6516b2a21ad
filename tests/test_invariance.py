"""Invariance across data sources: the objective's V-REx / IRMv1 term, the source-covering batches and the
selection statistic that keeps a factor only if its effect is the same in every source."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sit_causal.objective import (
    TERMS,
    ObjectiveConfig,
    dummy_scale,
    invariance_term,
    irm_penalty,
    per_source_risks,
    vrex_penalty,
)
from sit_causal.selection import (
    InvarianceConfig,
    invariance_test,
    select_invariant,
    source_covering_batches,
    source_score_test,
    sources_per_task,
)


# ---------------------------------------------------------------------- V-REx
def test_vrex_is_zero_when_every_source_has_the_same_risk() -> None:
    losses = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.5, 3.5])  # source means 2, 2, 2
    task = torch.zeros(6, dtype=torch.long)
    source = torch.tensor([0, 0, 1, 1, 2, 2])
    assert vrex_penalty(losses, task, source).item() == pytest.approx(0.0, abs=1e-12)


def test_vrex_grows_with_the_spread_of_the_per_source_risks() -> None:
    task = torch.zeros(4, dtype=torch.long)
    source = torch.tensor([0, 0, 1, 1])
    values = []
    for d in (0.0, 0.1, 0.5, 1.0):
        losses = torch.tensor([2 - d, 2 - d, 2 + d, 2 + d])
        values.append(vrex_penalty(losses, task, source).item())
        assert values[-1] == pytest.approx(d * d)  # population variance of (2 - d, 2 + d)
    assert values == sorted(values) and values[-1] > values[0]


def test_vrex_compares_sources_within_a_task_and_averages_over_tasks() -> None:
    # task 0: risks 1 and 3 (variance 1); task 1: one source only (left out); task 2: 2 and 2 (variance 0)
    losses = torch.tensor([1.0, 3.0, 10.0, 2.0, 2.0], requires_grad=True)
    task = torch.tensor([0, 0, 1, 2, 2])
    source = torch.tensor([0, 1, 0, 0, 1])
    pen = vrex_penalty(losses, task, source)
    assert pen.item() == pytest.approx(0.5)
    pen.backward()
    assert losses.grad is not None and losses.grad[2].item() == 0.0  # a single-source task adds nothing
    risks, tasks, sources = per_source_risks(losses, task, source)
    assert sources.tolist() == [0, 1, 0, 0, 1]
    assert risks.tolist() == [1.0, 3.0, 10.0, 2.0, 2.0] and tasks.tolist() == [0, 0, 1, 2, 2]
    alone = vrex_penalty(losses, torch.tensor([0, 1, 2, 3, 4]), source)
    assert alone.item() == 0.0 and alone.requires_grad  # no task with two sources: a differentiable 0


def test_vrex_reads_the_source_ids() -> None:
    losses = torch.tensor([1.0, 1.0, 3.0, 3.0])
    task = torch.zeros(4, dtype=torch.long)
    assert vrex_penalty(losses, task, torch.tensor([0, 0, 1, 1])).item() == pytest.approx(1.0)
    assert vrex_penalty(losses, task, torch.tensor([0, 1, 0, 1])).item() == pytest.approx(0.0)


# ---------------------------------------------------------------------- IRMv1
def _bce_at(logits: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits * scale, y, reduction="none")


def _optimal_scale(logits: torch.Tensor, y: torch.Tensor) -> float:
    c = torch.tensor(1.0, dtype=torch.float64)
    for _ in range(50):  # Newton on the mean logistic loss of c * logits
        p = torch.sigmoid(c * logits)
        grad = ((p - y) * logits).mean()
        hess = (p * (1 - p) * logits ** 2).mean()
        c = c - grad / hess
    return float(c)


def test_irm_is_zero_at_each_sources_optimal_scale_and_not_elsewhere() -> None:
    g = torch.Generator().manual_seed(0)
    n = 400
    source = torch.arange(n) % 2
    task = torch.zeros(n, dtype=torch.long)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    strength = torch.where(source == 0, 3.0, 1.0).double()
    y = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(strength * x)).double()
    tuned = x.clone()
    for e in (0, 1):
        rows = source == e
        tuned[rows] = _optimal_scale(x[rows], y[rows]) * x[rows]
    w = dummy_scale(n, dtype=torch.float64)
    at_optimum = irm_penalty(_bce_at(tuned, y, w), w, task, source, halves=False)
    assert at_optimum.item() == pytest.approx(0.0, abs=1e-12)
    w = dummy_scale(n, dtype=torch.float64)
    shared = irm_penalty(_bce_at(x * 2.0, y, w), w, task, source, halves=False)
    assert shared.item() > 1e-3  # one scale for both sources: not optimal in either


def test_irm_halves_are_the_product_of_the_two_halves_mean_gradients() -> None:
    logits = torch.tensor([0.5, -1.0, 2.0, 0.3, -0.7, 1.5], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    task = torch.zeros(6, dtype=torch.long)
    source = torch.tensor([0, 0, 0, 0, 1, 1])
    w = dummy_scale(6, dtype=torch.float64)
    pen = irm_penalty(_bce_at(logits, y, w), w, task, source, halves=True)
    grad = (torch.sigmoid(logits) - y) * logits  # d BCE(w * l) / dw at w = 1
    src0 = grad[:4]
    expected = 0.5 * (src0[[0, 2]].mean() * src0[[1, 3]].mean() + grad[4] * grad[5])
    assert pen.item() == pytest.approx(expected.item())


def test_irm_penalty_is_differentiable_through_the_model() -> None:
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(3, generator=g, requires_grad=True)
    x = torch.randn(32, 3, generator=g)
    y = (torch.rand(32, generator=g) < 0.5).float()
    w = dummy_scale(32)
    pen = irm_penalty(_bce_at(x @ weight, y, w), w, torch.zeros(32, dtype=torch.long), torch.arange(32) % 2)
    pen.backward()
    assert weight.grad is not None and torch.isfinite(weight.grad).all() and weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------- the objective
def test_the_invariance_term_is_off_by_default_and_leaves_totals_unchanged() -> None:
    cfg = ObjectiveConfig()
    assert "invariance" in TERMS and cfg.w_invariance == 0.0 and not cfg.uses("invariance")
    losses = torch.tensor([1.0, 3.0])
    assert invariance_term(cfg, losses, torch.zeros(2, dtype=torch.long), torch.tensor([0, 1])) == {}
    terms = {"target": torch.tensor(1.5), "source": torch.tensor(0.25), "kl": torch.tensor(2.0)}
    before = cfg.total(terms, 0.5)
    with_zero = cfg.total({**terms, "invariance": torch.tensor(7.0)}, 0.5)
    assert with_zero.item() == before.item()
    assert before.item() == pytest.approx(1.5 + 0.25 + 2.0 * cfg.beta(0.5))


def test_the_invariance_term_is_weighted_and_scheduled() -> None:
    cfg = ObjectiveConfig(w_invariance=2.0, invariance_start=0.2, invariance_ramp=0.4)
    assert cfg.invariance_weight(0.1) == 0.0
    assert cfg.invariance_weight(0.4) == pytest.approx(1.0)
    assert cfg.invariance_weight(0.9) == pytest.approx(2.0)
    losses = torch.tensor([1.0, 3.0])
    term = invariance_term(cfg, losses, torch.zeros(2, dtype=torch.long), torch.tensor([0, 1]))
    assert term["invariance"].item() == pytest.approx(1.0)
    assert cfg.total({"target": torch.tensor(0.0), **term}, 0.9).item() == pytest.approx(2.0)
    irm = ObjectiveConfig(w_invariance=1.0, invariance="irm")
    with pytest.raises(ValueError, match="dummy scales"):
        invariance_term(irm, losses, torch.zeros(2, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="invariance"):
        ObjectiveConfig(invariance="groupdro")  # type: ignore[arg-type]
    assert cfg.to_dict()["invariance"] == "vrex"


# ---------------------------------------------------------------------- source-covering batches
@pytest.mark.parametrize("k", [1, 2, 3])
def test_every_batch_holds_k_sources_of_every_task_in_it(k: int) -> None:
    rng = np.random.default_rng(0)
    # unequal sources: task 0 has 3 sources (one tiny), task 1 two, task 2 one
    task = np.repeat([0, 0, 0, 1, 1, 2], [50, 47, 5, 30, 80, 20])
    source = np.repeat([0, 1, 2, 0, 1, 0], [50, 47, 5, 30, 80, 20])
    order = rng.permutation(task.size)
    task, source = task[order], source[order]
    batches = source_covering_batches(task, source, batch_size=24, k=k, seed=3)
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(task.size))  # a partition
    n_sources = {t: np.unique(source[task == t]).size for t in np.unique(task)}
    for b in batches:
        for t, count in sources_per_task(b, task, source).items():
            assert count >= min(k, n_sources[t])
    again = source_covering_batches(task, source, batch_size=24, k=k, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    other = source_covering_batches(task, source, batch_size=24, k=k, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other, strict=False))


# ---------------------------------------------------------------------- the selection statistic
def _two_source_task(flip: bool, n: int = 1600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Factors ``(n, 3)``: ``y`` reads the sign of ``z0`` the same way in both sources; ``z1``'s effect is the
    same in both sources, or flips sign between them; ``z2`` is noise. The sources shift the factors' means."""
    rng = np.random.default_rng(seed)
    source = np.arange(n) % 2
    z = rng.normal(size=(n, 3)) + np.where(source[:, None] == 0, 0.5, -0.5)
    sign = np.where(source == 0, 1.0, -1.0) if flip else 1.0
    # step functions of the factors, as a testbed's labels are (the trees' cells then hold the law exactly)
    logit = 1.5 * np.sign(z[:, 0]) + 1.5 * sign * np.sign(z[:, 1])
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    return z, y, source


def test_a_factor_whose_effect_flips_between_sources_is_rejected() -> None:
    z, y, source = _two_source_task(flip=True)
    order = np.random.default_rng(5).permutation(z.shape[0])
    halves = (np.sort(order[: z.shape[0] // 2]), np.sort(order[z.shape[0] // 2:]))
    assert invariance_test(z, y, source, (0, 1), halves).p < 1e-3
    found = select_invariant(z, y, np.zeros(len(y), dtype=np.int64), source, 1, seed=0)
    assert found.invariant_sets[0].tolist() == [True, False, False]
    assert not found.adjacency[0, 1]


def test_a_factor_whose_effect_is_equal_across_sources_is_kept() -> None:
    z, y, source = _two_source_task(flip=False)
    order = np.random.default_rng(5).permutation(z.shape[0])
    halves = (np.sort(order[: z.shape[0] // 2]), np.sort(order[z.shape[0] // 2:]))
    assert invariance_test(z, y, source, (0, 1), halves).p > 0.05
    found = select_invariant(z, y, np.zeros(len(y), dtype=np.int64), source, 1, seed=0)
    assert found.invariant_sets[0].tolist() == [True, True, False]
    assert found.adjacency[0].tolist() == [True, True, False]


def test_the_statistic_reads_the_source_ids() -> None:
    # the flipped task with its source ids shuffled: nothing tells the sources apart, z1 looks useless
    z, y, source = _two_source_task(flip=True)
    shuffled = np.random.default_rng(1).permutation(source)
    found = select_invariant(z, y, np.zeros(len(y), dtype=np.int64), shuffled, 1, seed=0)
    real = select_invariant(z, y, np.zeros(len(y), dtype=np.int64), source, 1, seed=0)
    by_set = {s.factors: s for s in found.outputs[0].tests}
    real_by_set = {s.factors: s for s in real.outputs[0].tests}
    assert real_by_set[(0, 1)].p < 1e-3 < by_set[(0, 1)].p


def test_a_shortcut_worth_more_in_one_source_is_rejected() -> None:
    # the anti-causal recipe: y from z0 with 25 % noise; z1's sign agrees with y at 0.95 / 0.85 by source
    rng = np.random.default_rng(2)
    n = 2400
    source = np.arange(n) % 2
    z = rng.normal(size=(n, 3)) + np.where(source[:, None] == 0, 0.4, -0.4)
    y = np.where(rng.random(n) < 0.25, 1 - (z[:, 0] > 0), z[:, 0] > 0).astype(np.int64)
    agree = rng.random(n) < np.where(source == 0, 0.95, 0.85)
    z[:, 1] = np.abs(z[:, 1]) * np.where(agree == (y == 1), 1.0, -1.0)
    found = select_invariant(z, y, np.zeros(n, dtype=np.int64), source, 1, seed=0,
                             config=InvarianceConfig(max_set_size=2))
    by_set = {s.factors: s for s in found.outputs[0].tests}
    assert by_set[(1,)].ll > by_set[(0,)].ll  # the shortcut predicts better ...
    assert by_set[(1,)].p < 1e-3 and by_set[(0, 1)].p < 1e-3  # ... but not the same way in both sources
    assert by_set[(0,)].p > 0.05
    assert found.adjacency[0].tolist() == [True, False, False]


def test_the_score_test_is_small_without_a_source_effect_and_large_with_one() -> None:
    rng = np.random.default_rng(3)
    n = 2000
    cell = rng.integers(0, 4, n)
    source = rng.integers(0, 2, n)
    rate = np.array([0.2, 0.4, 0.6, 0.8])[cell]
    logp = np.stack([np.log(1 - rate), np.log(rate)], axis=1)
    same = (rng.random(n) < rate).astype(np.int64)
    stat, df = source_score_test(cell, same, source, logp)
    assert df == 2 and stat < 13.8  # chi2_2 99.9 % quantile
    sharper = np.where(source == 1, np.clip(rate + (rate - 0.5) * 0.6, 0, 1), rate)
    shifted = (rng.random(n) < sharper).astype(np.int64)
    assert source_score_test(cell, shifted, source, logp)[0] > 30
