"""Recovery metrics: analytic expectations (identity, permutations, noise, remixing, graphs)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sit_causal.metrics import (
    affine_r2,
    correlation_matrix,
    factor_report,
    fit_affine_r2,
    graph_consistent_r2,
    graph_recovery,
    mcc,
)
from sit_causal.theory.graph import TaskFactorGraph
from sit_causal.theory.uic import check_uic, containment_matrix

SETTINGS = settings(max_examples=40, deadline=None)


def _truth(seed: int, n: int = 4, n_samples: int = 600) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n_samples, n))


@st.composite
def affine_relabelling(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 6))
    perm = np.array(draw(st.permutations(list(range(n)))))
    sign = np.array(draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=n, max_size=n)))
    scale = np.array(draw(st.lists(st.floats(0.01, 100.0), min_size=n, max_size=n)))
    shift = np.array(draw(st.lists(st.floats(-1e3, 1e3), min_size=n, max_size=n)))
    return perm, sign, scale, shift


@SETTINGS
@given(relabel=affine_relabelling(), seed=st.integers(0, 10_000))
def test_mcc_and_affine_r2_are_one_under_permutation_sign_scale_shift(relabel: tuple, seed: int) -> None:
    perm, sign, scale, shift = relabel
    true = _truth(seed, n=perm.size)
    learned = true[:, perm] * sign * scale + shift
    for method in ("pearson", "spearman"):
        res = mcc(true, learned, method=method)
        assert res.score == pytest.approx(1.0, abs=1e-9)
        assert np.array_equal(perm[res.assignment], np.arange(perm.size))  # the matching undoes perm
    r2 = affine_r2(true, learned)
    assert r2.mean == pytest.approx(1.0, abs=1e-9)
    assert np.allclose(r2.per_factor, 1.0, atol=1e-9)


@SETTINGS
@given(n=st.integers(1, 5), seed=st.integers(0, 10_000),
       maps=st.lists(st.sampled_from(["exp", "cube", "tanh", "neg_log1p_exp", "affine"]), min_size=5,
                     max_size=5))
def test_spearman_mcc_is_one_under_strictly_monotone_maps(n: int, seed: int, maps: list[str]) -> None:
    true = _truth(seed, n=n)
    funcs = {
        "exp": np.exp,
        "cube": lambda z: z**3,
        "tanh": lambda z: np.tanh(0.5 * z),
        "neg_log1p_exp": lambda z: -np.log1p(np.exp(z)),
        "affine": lambda z: 3 * z - 2,
    }
    learned = np.column_stack([funcs[maps[i]](true[:, i]) for i in range(n)])
    assert mcc(true, learned, method="spearman").score == pytest.approx(1.0, abs=1e-12)


def test_independent_noise_scores_near_zero() -> None:
    rng = np.random.default_rng(0)
    scores = [mcc(rng.standard_normal((10_000, 5)), rng.standard_normal((10_000, 5))).score for _ in range(5)]
    assert max(scores) < 0.03
    assert 0.0 < np.mean(scores) < 0.025  # independent noise: about 0.014 at N = 10k, d = 5


def _haar(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def test_random_orthogonal_remix_scores_about_072_at_d5() -> None:
    rng = np.random.default_rng(1)
    true = rng.standard_normal((5_000, 5))
    scores = np.array([mcc(true, true @ _haar(5, rng)).score for _ in range(100)])
    assert scores.max() < 0.95 and np.mean(scores < 0.9) > 0.95
    assert 0.68 < scores.mean() < 0.76  # about 0.72 (docs/design.md section 6)
    # a linear remix keeps everything linearly decodable: affine R^2 stays 1
    assert affine_r2(true, true @ _haar(5, rng)).mean == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("s", [0.25, 0.5, 1.0, 2.0])
def test_additive_noise_gives_inverse_sqrt_one_plus_s2(s: float) -> None:
    rng = np.random.default_rng(2)
    true = rng.standard_normal((20_000, 5))
    learned = true + s * rng.standard_normal(true.shape)
    assert mcc(true, learned).score == pytest.approx(1 / np.sqrt(1 + s**2), abs=0.01)
    assert affine_r2(true, learned, rng=rng).mean == pytest.approx(1 / (1 + s**2), abs=0.02)


def test_constant_columns_score_zero_not_nan() -> None:
    true = _truth(3, n=3)
    learned = true.copy()
    learned[:, 1] = 4.2
    res = mcc(true, learned)
    assert np.isfinite(res.correlation).all() and res.correlation[1, 1] == 0.0
    assert res.score == pytest.approx(2 / 3)
    spear = mcc(true, learned, method="spearman")
    assert np.isfinite(spear.score) and spear.score == pytest.approx(2 / 3)
    const_true = true.copy()
    const_true[:, 0] = 1.0
    assert affine_r2(const_true, learned).per_factor[0] == 0.0


def test_rectangular_inputs() -> None:
    true = _truth(4, n=3)
    extra = np.column_stack([true[:, [2, 0, 1]], np.random.default_rng(5).standard_normal(600)])
    res = mcc(true, extra)
    assert res.score == pytest.approx(1.0) and res.correlation.shape == (3, 4)
    assert list(res.assignment) == [1, 2, 0]
    fewer = mcc(true, true[:, :2])
    assert list(fewer.assignment) == [0, 1, -1] and fewer.score == pytest.approx(2 / 3)
    assert fewer.matched_correlation().shape == (3, 3)


def test_affine_r2_is_scored_out_of_sample() -> None:
    rng = np.random.default_rng(6)
    true = rng.standard_normal((200, 2))
    junk = rng.standard_normal((200, 60))  # 60 noise features: in-sample R^2 would be large
    r2 = affine_r2(true, junk, rng=rng)
    assert r2.mean < 0.1
    train = np.arange(200) < 100
    manual = fit_affine_r2(true[train], junk[train], true[~train], junk[~train])
    assert affine_r2(true, junk, train_mask=train).mean == pytest.approx(manual.mean)
    with pytest.raises(ValueError):
        affine_r2(true, junk, train_mask=np.ones(200, bool))


def test_graph_consistent_r2_matches_affine_r2_when_identified_as_predicted() -> None:
    # nested chain: C_0 ⊂ C_1 ⊂ C_2, so M_0 = {1, 2}, M_1 = {2}, M_2 = {}
    graph = TaskFactorGraph.from_matrix([[1, 1, 1], [0, 1, 1], [0, 0, 1]])
    k = containment_matrix(graph.adjacency)
    rng = np.random.default_rng(7)
    true = rng.standard_normal((4000, 3))
    # learned factor of i = L_i + mixing with exactly M_i, then permuted and rescaled
    mixed = true @ (np.eye(3) + 0.8 * k.T)
    learned = mixed[:, [2, 0, 1]] * [2.0, -1.0, 0.5]
    res = mcc(true, learned)
    full = affine_r2(true, learned)
    consistent = graph_consistent_r2(true, learned, check_uic(graph), res.assignment)
    np.testing.assert_allclose(consistent.per_factor, full.per_factor, atol=1e-9)
    assert consistent.inputs[2] == (res.assignment[2],)
    # mixing that the graph does not allow (factor 2 takes some of factor 0) is caught
    weights = np.eye(3) + 0.8 * k.T  # column j: the true factors in learned factor j
    weights[0, 2] += 0.8
    bad = true @ weights
    res_bad = mcc(true, bad)
    cons_bad = graph_consistent_r2(true, bad, graph.adjacency, res_bad.assignment)
    assert affine_r2(true, bad).mean == pytest.approx(1.0)
    assert cons_bad.per_factor[2] == pytest.approx(1 / 1.64, abs=0.03)


def test_factor_report_names_the_mixed_factors() -> None:
    rng = np.random.default_rng(8)
    true = rng.standard_normal((5000, 4))
    learned = np.column_stack([true[:, 0] + 0.6 * true[:, 2], true[:, 1], true[:, 2], true[:, 3]])
    rep = factor_report(true, learned)
    assert rep.learned[0].mixes == (0, 2)
    assert [rep.learned[j].mixes for j in (1, 2, 3)] == [(1,), (2,), (3,)]
    assert rep.learned[1].r2 == pytest.approx(1.0)
    f2 = rep.factors[2]
    assert f2.matched_to == 2 and f2.matched_correlation == pytest.approx(1.0)
    assert f2.off_diagonal_with == 0 and f2.off_diagonal == pytest.approx(0.6 / np.sqrt(1.36), abs=0.03)
    assert rep.to_json()["factors"][0]["matched_to"] == 0
    lone = factor_report(true[:, :1], learned[:, :1])
    assert lone.factors[0].off_diagonal_with == -1 and lone.factors[0].off_diagonal == 0.0


def test_graph_recovery() -> None:
    true_adj = np.array([[1, 0, 1], [0, 1, 1]], dtype=bool)
    perm = np.array([2, 0, 1])  # learned column of each true factor
    learned = np.zeros((2, 4), dtype=bool)
    learned[:, perm] = true_adj
    perfect = graph_recovery(learned, TaskFactorGraph.from_matrix(true_adj), perm)
    assert perfect.precision == 1.0 and perfect.recall == 1.0 and np.array_equal(perfect.aligned, true_adj)
    noisy = learned.copy()
    noisy[0, perm[1]] = True  # one false edge
    noisy[1, perm[2]] = False  # one missed edge
    noisy[:, 3] = True  # two edges in an unmatched learned column: false positives
    r = graph_recovery(noisy.astype(int), true_adj, perm)
    assert (r.true_positives, r.false_positives, r.false_negatives) == (3, 3, 1)
    assert r.precision == pytest.approx(0.5) and r.recall == pytest.approx(0.75)
    empty = graph_recovery(np.zeros((2, 3)), true_adj, np.arange(3))
    assert empty.precision == 0.0 and empty.recall == 0.0 and empty.f1 == 0.0
    with pytest.raises(ValueError, match="binary"):
        graph_recovery(np.full((2, 3), 0.7), true_adj, np.arange(3))


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="samples"):
        mcc(np.zeros((10, 2)), np.zeros((9, 2)))
    with pytest.raises(ValueError, match="NaN"):
        mcc(np.full((10, 2), np.nan), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="method"):
        correlation_matrix(np.zeros((10, 2)), np.zeros((10, 2)), method="kendall")  # type: ignore[arg-type]
