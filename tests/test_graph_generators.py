"""Graph generators: each mode's guarantee, checked by the UIC checker itself."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sit_causal.sim.graph_generators import GraphMode, generate_graph, parse_graph_mode
from sit_causal.theory.graph import GraphError
from sit_causal.theory.uic import check_uic, max_factors_for_tasks

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def feasible_sizes(draw: st.DrawFn) -> tuple[int, int]:
    m = draw(st.integers(1, 9))
    n = draw(st.integers(1, min(40, max_factors_for_tasks(m))))
    return n, m


@SETTINGS
@given(sizes=feasible_sizes(), seed=st.integers(0, 2**32 - 1))
def test_uic_mode_always_satisfies_the_uic(sizes: tuple[int, int], seed: int) -> None:
    n, m = sizes
    g = generate_graph("uic", n, m, np.random.default_rng(seed))
    assert g.adjacency.shape == (m, n)
    assert g.adjacency.any(axis=1).all(), "every task reads a factor"
    assert check_uic(g).uic_holds


@SETTINGS
@given(m=st.integers(1, 7), extra=st.integers(1, 5), seed=st.integers(0, 1000))
def test_uic_mode_raises_beyond_the_sperner_bound(m: int, extra: int, seed: int) -> None:
    n = max_factors_for_tasks(m) + extra
    with pytest.raises(GraphError, match="Sperner") as err:
        generate_graph("uic", n, m, np.random.default_rng(seed))
    assert "at least" in str(err.value) and "\n" not in str(err.value)


@SETTINGS
@given(n=st.integers(2, 20), m=st.integers(1, 10), seed=st.integers(0, 2**32 - 1),
       mode=st.sampled_from(["block", "nested"]))
def test_negative_controls_always_violate(n: int, m: int, seed: int, mode: str) -> None:
    g = generate_graph(mode, n, m, np.random.default_rng(seed))
    assert g.adjacency.shape == (m, n)
    assert g.adjacency.any(axis=1).all()
    report = check_uic(g)
    assert not report.uic_holds and report.violations


def test_nested_is_a_chain_and_block_has_equal_task_sets() -> None:
    rng = np.random.default_rng(0)
    g = generate_graph("nested", 5, 6, rng)
    sets = sorted((frozenset(np.flatnonzero(c)) for c in g.adjacency.T), key=len)
    assert all(a < b for a, b in pairwise(sets))  # strict chain when n <= m
    b = generate_graph("block", 6, 3, rng)
    cols = [b.adjacency[:, i].tobytes() for i in range(6)]
    assert all(cols.count(c) >= 2 for c in cols)


@SETTINGS
@given(n=st.integers(1, 15), m=st.integers(1, 10), p=st.floats(0.05, 1.0), seed=st.integers(0, 10_000))
def test_bernoulli_rows_are_never_empty(n: int, m: int, p: float, seed: int) -> None:
    g = generate_graph(f"bernoulli:{p}", n, m, np.random.default_rng(seed))
    assert g.adjacency.any(axis=1).all()


def test_bernoulli_edge_frequency_and_extremes() -> None:
    rng = np.random.default_rng(0)
    g = generate_graph("bernoulli:0.3", 200, 200, rng)
    assert abs(g.adjacency.mean() - 0.3) < 0.01
    assert generate_graph("bernoulli", 4, 3, rng, p=1.0).adjacency.all()


def test_uic_graphs_vary_and_are_reproducible() -> None:
    graphs = {generate_graph("uic", 6, 5, np.random.default_rng(s)).adjacency.tobytes() for s in range(20)}
    assert len(graphs) > 10
    a = generate_graph("uic", 6, 5, np.random.default_rng(3))
    assert a == generate_graph("uic", 6, 5, np.random.default_rng(3))
    sizes = {int(c.sum()) for s in range(30)
             for c in generate_graph("uic", 3, 6, np.random.default_rng(s)).adjacency.T}
    assert len(sizes) > 1  # not always the same subset size


def test_parse_graph_mode() -> None:
    assert parse_graph_mode("uic") == GraphMode("uic")
    assert parse_graph_mode(" Bernoulli:0.25 ") == GraphMode("bernoulli", 0.25)
    assert parse_graph_mode("bernoulli", default_p=0.4).p == 0.4
    assert str(parse_graph_mode("bernoulli:0.3")) == "bernoulli:0.3"
    for bad in ("ring", "bernoulli:x", "bernoulli:0", "bernoulli:1.5", "uic:3"):
        with pytest.raises(ValueError):
            parse_graph_mode(bad)


def test_size_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        generate_graph("uic", 0, 3, rng)
    with pytest.raises(ValueError, match="at least 2 factors"):
        generate_graph("block", 1, 3, rng)
    with pytest.raises(ValueError, match="at least 2 factors"):
        generate_graph("nested", 1, 3, rng)
