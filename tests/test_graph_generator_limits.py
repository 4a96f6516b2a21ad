"""The graph generator finishes or refuses, at any size; small sizes still give the graphs they always gave.

The time bounds here are hang guards (the generator once spun for ever), set far above the measured times so
that a loaded machine never fails them; speed itself is measured in benchmarks/, not asserted here."""

from __future__ import annotations

import hashlib
import time
from math import comb

import numpy as np
import pytest

from sit_causal.sim.graph_generators import MAX_CELLS, _binom_at_least, _binom_capped, generate_graph
from sit_causal.theory.uic import check_uic

HANG = 60.0  # seconds: a hang guard, not a speed target (measured: well under a second to a few seconds)


def test_binomials_are_capped_not_computed() -> None:
    for m in range(0, 30):
        for s in range(-1, m + 2):
            exact = comb(m, s) if 0 <= s <= m else 0
            for cap in (0, 1, 5, 100, 10**6):
                assert _binom_capped(m, s, cap) == min(exact, cap + 1), (m, s, cap)
                assert _binom_at_least(m, s, cap) == (exact >= cap)
    start = time.perf_counter()
    assert _binom_at_least(10**9, 5 * 10**8, 10**7)  # the exact number has ~300 million digits
    assert time.perf_counter() - start < HANG  # computing the exact number would take hours


@pytest.mark.parametrize(("n", "m"), [(5, 100_000), (12, 100_000), (20, 100_000), (100_000, 100), (400_000, 22)])
def test_uic_mode_is_fast_at_large_sizes(n: int, m: int) -> None:
    start = time.perf_counter()
    g = generate_graph("uic", n, m, np.random.default_rng(0))
    seconds = time.perf_counter() - start
    assert seconds < HANG, f"{n} factors x {m} tasks took {seconds:.1f} s"
    assert g.adjacency.shape == (m, n) and g.adjacency.any(axis=1).all()
    cols = {c.tobytes() for c in g.adjacency.T}
    assert len(cols) == n  # distinct task sets ...
    sizes = g.adjacency.sum(axis=0)
    assert sizes.min() == sizes.max()  # ... of one size: an antichain, so the UIC holds
    if n * m <= 10**6:
        assert check_uic(g).uic_holds


@pytest.mark.parametrize("mode", ["uic", "bernoulli:0.5", "block", "nested"])
def test_every_mode_refuses_beyond_the_size_limit_quickly(mode: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ValueError, match="graph too large") as err:
        generate_graph(mode, 5, MAX_CELLS // 5 + 1, np.random.default_rng(0))
    assert time.perf_counter() - start < HANG
    message = str(err.value)
    assert "5 factors x 2000001 tasks" in message and "10,000,005" in message and "10,000,000" in message


def test_sperner_refusal_is_fast_for_many_factors() -> None:
    start = time.perf_counter()
    with pytest.raises(ValueError, match="Sperner") as err:
        generate_graph("uic", 900_000, 10, np.random.default_rng(0))
    assert time.perf_counter() - start < HANG and "use at least 23 tasks" in str(err.value)


def _fingerprint() -> str:
    digest = hashlib.sha256()
    cases = [(n, m) for m in range(1, 13) for n in (1, 2, 3, 5, 8, 20, 60)]
    cases += [(3, 100), (4, 60), (10, 40), (30, 300), (200, 12), (500, 14), (2000, 16), (5, 30), (6, 200)]
    for mode in ("uic", "bernoulli:0.3", "block", "nested"):
        for n, m in cases:
            for seed in range(3):
                try:
                    g = generate_graph(mode, n, m, np.random.default_rng(seed))
                except ValueError as err:
                    digest.update(str(err).encode())
                else:
                    digest.update(np.packbits(g.adjacency).tobytes() + str(g.adjacency.shape).encode())
    return digest.hexdigest()


def test_small_sizes_give_the_same_graphs_as_before() -> None:
    """Recorded experiments stay reproducible: the digest of these draws was taken before the speed-ups (it
    depends on numpy's Generator streams, which numpy keeps stable)."""
    assert _fingerprint() == "630cd316bdccbae919be44e300ef3849709a54172253edce4faa50f0fc26c7e7"
