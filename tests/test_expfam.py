"""Exponential-family priors: scipy references, parameter maps, the iVAE variety condition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from sit_causal.sim.expfam import (
    DEFAULT_FAMILY,
    FAMILY_NAMES,
    GaussianMean,
    GaussianMeanVar,
    LaplaceScale,
    get_family,
    variety_condition,
)


def _scipy_dist(family_name: str, params: dict[str, np.ndarray], d: int, i: int) -> stats.rv_continuous:
    if family_name == "gauss-mean":
        return stats.norm(loc=params["mean"][d, i], scale=1.0)
    if family_name == "gauss-meanvar":
        return stats.norm(loc=params["mean"][d, i], scale=params["std"][d, i])
    return stats.laplace(loc=0.0, scale=params["scale"][d, i])


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_samples_match_scipy_reference(name: str) -> None:
    # Fixed seeds: the KS p-values are deterministic. With 3 datasets x 2 factors per family and a
    # 1e-3 threshold, a correct sampler fails for a given seed with probability about 0.6%.
    family = get_family(name)
    rng = np.random.default_rng(12345)
    eta = family.sample_natural_params(3, 2, rng)
    params = family.moment_params(eta)
    draws = family.sample(eta, rng, samples_per_dataset=4000).reshape(3, 4000, 2)
    for d in range(3):
        for i in range(2):
            ref = _scipy_dist(name, params, d, i)
            p = stats.kstest(draws[d, :, i], ref.cdf).pvalue
            assert p > 1e-3, (name, d, i, p)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_sampling_by_dataset_id_matches_the_reference_too(name: str) -> None:
    family = get_family(name)
    rng = np.random.default_rng(7)
    eta = family.sample_natural_params(2, 1, rng)
    ids = np.tile([0, 1], 3000)
    draws = family.sample(eta, rng, dataset_id=ids)
    params = family.moment_params(eta)
    for d in range(2):
        assert stats.kstest(draws[ids == d, 0], _scipy_dist(name, params, d, 0).cdf).pvalue > 1e-3


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_log_density_matches_scipy_and_torch(name: str) -> None:
    family = get_family(name)
    rng = np.random.default_rng(3)
    eta = family.sample_natural_params(4, 3, rng)
    ids = np.repeat(np.arange(4), 5)
    z = family.sample(eta, rng, dataset_id=ids)
    logp = family.log_density(z, eta[ids])
    assert logp.shape == (20, 3)
    params = family.moment_params(eta)
    ref = np.array([[_scipy_dist(name, params, d, i).logpdf(z[r, i]) for i in range(3)]
                    for r, d in enumerate(ids)])
    np.testing.assert_allclose(logp, ref, rtol=1e-10, atol=1e-10)
    logp_t = family.log_density_torch(torch.from_numpy(z), torch.from_numpy(eta[ids]))
    np.testing.assert_allclose(logp_t.numpy(), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_density_integrates_to_one(name: str) -> None:
    family = get_family(name)
    eta = family.sample_natural_params(1, 2, np.random.default_rng(0))[0]  # (n, k)
    grid = np.linspace(-40, 40, 400_001)
    dens = np.exp(family.log_density(grid[:, None].repeat(2, axis=1), eta))
    np.testing.assert_allclose(integrate.trapezoid(dens, grid, axis=0), 1.0, atol=1e-6)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_natural_and_moment_parameters_round_trip(name: str) -> None:
    family = get_family(name)
    eta = family.sample_natural_params(6, 4, np.random.default_rng(1))
    assert eta.shape == (6, 4, family.k)
    back = family.natural_params(**family.moment_params(eta))
    np.testing.assert_allclose(back, eta, rtol=1e-12)
    stats_ = family.sufficient_statistics(np.ones((5, 4)))
    assert stats_.shape == (5, 4, family.k)


def test_parameter_ranges_are_respected_and_overridable() -> None:
    rng = np.random.default_rng(0)
    p = GaussianMeanVar().draw_moment_params(200, 5, rng)
    assert p["mean"].min() >= -2 and p["mean"].max() <= 2
    assert p["std"].min() >= 0.5 and p["std"].max() <= 3.0
    wide = get_family("gauss-meanvar", mean_range=5.0).draw_moment_params(200, 5, rng)
    assert wide["mean"].max() > 3.0  # iVAE's range is reachable
    b = LaplaceScale().draw_moment_params(200, 5, rng)["scale"]
    assert b.min() >= 0.5 and b.max() <= 3.0
    assert get_family("gauss-mean").describe()["mean_range"] == [-2.0, 2.0]
    assert DEFAULT_FAMILY == "gauss-mean"


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_mean_var_matches_samples(name: str) -> None:
    family = get_family(name)
    rng = np.random.default_rng(11)
    eta = family.sample_natural_params(2, 3, rng)
    draws = family.sample(eta, rng, samples_per_dataset=50_000).reshape(2, 50_000, 3)
    mean, var = family.mean_var(eta)
    np.testing.assert_allclose(draws.mean(axis=1), mean, atol=0.06)
    np.testing.assert_allclose(draws.var(axis=1), var, rtol=0.05)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown prior family"):
        get_family("gamma")
    with pytest.raises(ValueError, match="k = 2"):
        GaussianMeanVar().log_density(np.zeros((3, 2)), np.zeros((3, 2, 1)))
    with pytest.raises(ValueError, match="< 0"):
        LaplaceScale().sample(np.ones((2, 2, 1)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="not both"):
        GaussianMean().sample(np.zeros((2, 2, 1)), np.random.default_rng(0), np.zeros(3, int), 3)


def test_variety_condition() -> None:
    rng = np.random.default_rng(0)
    fam = GaussianMeanVar()  # k = 2
    eta = fam.sample_natural_params(2 * 3 + 1, 3, rng)
    ok = variety_condition(eta)
    assert ok.holds and ok.rank == 6 and ok.required_datasets == 7
    few = variety_condition(eta[:6])
    assert not few.holds and "at least n*k + 1" in few.reason and "7" in few.reason
    flat = eta.copy()
    flat[:, 1, :] = flat[0, 1, :]  # factor 1 never varies across datasets
    bad = variety_condition(np.concatenate([flat, flat], axis=0))
    assert not bad.holds and bad.rank == 4 and "rank 4" in bad.reason
    assert bad.to_json()["condition_number"] is None
    with pytest.raises(ValueError):
        variety_condition(eta[0])
