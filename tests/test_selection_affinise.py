"""Tests of the correction towards affine (sit_causal.selection.affinise): it starts at the identity, leaves an
exactly affine representation affine, and makes a smoothly distorted one closer to affine in the factors;
wired into the GL(n) step through ``LinearAlignConfig.affinise``."""

from __future__ import annotations

import numpy as np
import pytest

from sit_causal.metrics import affine_r2
from sit_causal.selection.affinise import AffiniseConfig, fit_affiniser
from sit_causal.selection.gradients import whitening

FAST = AffiniseConfig(steps=250, batch=2000, hidden=16, lr=5e-3)


def _latents(seed: int, datasets: int = 12, per: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian factors with a shared correlated covariance, the dataset moving the mean (gauss-mean + SCM)."""
    rng = np.random.default_rng(seed)
    mix = np.array([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.3, -0.4, 1.0]])
    means = 1.5 * rng.standard_normal((datasets, 3))
    lat = np.concatenate([means[d] + rng.standard_normal((per, 3)) @ mix.T for d in range(datasets)])
    return lat, np.repeat(np.arange(datasets), per)


def test_starts_at_the_identity_and_keeps_an_affine_representation() -> None:
    lat, did = _latents(0)
    z = lat @ np.random.default_rng(1).standard_normal((3, 3)).T + 2.0
    zero = fit_affiniser(z, did, AffiniseConfig(steps=0), seed=0)
    mu, w = whitening(z, did)
    assert np.allclose(zero(z), (z - mu) @ w)  # V starts at zero: phi is the whitening alone
    fitted = fit_affiniser(z, did, FAST, seed=0)
    assert fitted.loss <= fitted.loss_start + 1e-3
    assert affine_r2(lat, fitted(z)).mean > 0.98  # nearly: 4,800 samples, a small flow fits a little noise


def test_a_distorted_representation_comes_closer_to_affine() -> None:
    lat, did = _latents(2)
    rng = np.random.default_rng(3)
    lin = lat @ rng.standard_normal((3, 3)).T
    z = lin + 0.6 * np.tanh(lin @ rng.standard_normal((3, 3)).T / 2.0)  # smooth, invertible-ish distortion
    before = affine_r2(lat, z).mean
    phi = fit_affiniser(z, did, FAST, seed=0)
    assert phi.loss < phi.loss_start - 0.01
    after = affine_r2(lat, phi(z)).mean
    assert after > before + 0.005, (before, after)


def test_bad_affinise_config_is_refused() -> None:
    with pytest.raises(ValueError):
        AffiniseConfig(blocks=0)
    with pytest.raises(ValueError):
        AffiniseConfig(batch=1)
