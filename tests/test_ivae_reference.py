"""benchmarks/ivae_reference.py: the reference generator's segment statistics, the model's ELBO, the scorers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def ivr():  # the benchmark script, loaded as a module
    spec = importlib.util.spec_from_file_location("ivae_reference", BENCH / "ivae_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ivae_reference"] = module
    spec.loader.exec_module(module)
    return module


def _args(ivr, *extra: str):
    return ivr.parser().parse_args(["--cond-draws", "200", *extra])


def test_generator_shapes_and_segment_statistics(ivr) -> None:
    args = _args(ivr, "--ns", "6", "--nps", "4000", "--test-nps", "30", "--dim", "3")
    train, test = ivr.reference_sets(7, args)
    assert train.x.shape == (24_000, 3) and train.s.shape == (24_000, 3) and train.seg.shape == (24_000,)
    assert test.x.shape == (180, 3) and np.bincount(test.seg).tolist() == [30] * 6
    mech = ivr.reference_mechanism(6, 3, np.random.default_rng(np.random.SeedSequence([7, 20200101]).spawn(3)[0]),
                                   cond_draws=200)
    for seg in range(6):
        s = train.s[train.seg == seg]
        np.testing.assert_allclose(s.std(0), mech.scales[seg], rtol=0.06)
        np.testing.assert_allclose(s.mean(0), 0.0, atol=0.15)
    assert ((mech.scales >= 0.5) & (mech.scales <= 3.0)).all()
    np.testing.assert_allclose(np.linalg.norm(mech.mixing, axis=0), 1.0)
    np.testing.assert_allclose(train.x, mech.mix(train.s))
    again, _ = ivr.reference_sets(7, args)
    np.testing.assert_array_equal(again.x, train.x)


def test_uncentered_means_and_linear_mixing(ivr) -> None:
    mech = ivr.reference_mechanism(5, 2, np.random.default_rng(0), layers=1, uncentered=True, cond_draws=100)
    assert (np.abs(mech.means) <= 5.0).all() and np.abs(mech.means).max() > 0.5
    data = mech.sample(ivr.segment_labels(5, 3000), np.random.default_rng(1))
    for seg in range(5):
        np.testing.assert_allclose(data.s[data.seg == seg].mean(0), mech.means[seg], atol=0.15)
    np.testing.assert_allclose(data.x, data.s @ mech.mixing)


def test_elbo_increases_at_tiny_size(ivr) -> None:
    torch.set_num_threads(1)
    args = _args(ivr, "--ns", "4", "--nps", "64", "--dim", "2", "--hidden", "16", "--iterations", "48",
                 "--progress-every", "1000", "--mcc-every", "0")
    train, test = ivr.reference_sets(0, args)
    gen = torch.Generator().manual_seed(0)
    model = ivr.ReferenceIVAE(2, 2, 4, 16, 3, 0.1, 0.01, gen)
    x, u = ivr._tensors(train, 4)
    before = ivr.held_out_loss(model, x, u, 0)
    log = ivr.train(model, train, test, 4, args, gen, "test")
    after = ivr.held_out_loss(model, x, u, 0)
    assert log["iterations"] == 48 and log["epochs"] == 12
    assert after < before - 1.0
    assert all(np.isfinite(row["heldout_loss"]) for row in log["curve"])


class _Oracle:
    """A posterior that returns the observations (= the true sources) with negligible variance."""

    def posterior(self, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.double(), torch.full(x.shape, 1e-16, dtype=torch.float64)


def test_scorers_are_one_on_the_true_sources(ivr) -> None:
    mech = ivr.reference_mechanism(40, 3, np.random.default_rng(3), cond_draws=100)
    data = mech.sample(ivr.segment_labels(40, 200), np.random.default_rng(4))
    truth = ivr.Segmented(x=data.s, s=data.s, seg=data.seg)
    scores = ivr.reference_scores(_Oracle(), truth, 40, 0)  # type: ignore[arg-type]
    assert scores["mcc_sample"] == pytest.approx(1.0, abs=1e-9)
    assert scores["mcc_mean_train"] == pytest.approx(1.0, abs=1e-9)
    assert scores["mcc_best_of_three"] == pytest.approx(1.0, abs=1e-9)
    assert scores["mcc_fastica_sample"] > 0.9  # pooled over segments the sources are scale mixtures: ICA-able
