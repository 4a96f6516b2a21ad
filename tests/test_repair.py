"""Tests of sit_causal.theory.repair: every proposal passes the checker; the exact method is minimal."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sit_causal.theory.graph import TaskFactorGraph, load_graph
from sit_causal.theory.repair import RepairProposal, propose_repair
from sit_causal.theory.uic import check_uic, min_tasks_for_factors

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def small(max_m: int, max_n: int) -> st.SearchStrategy[np.ndarray]:
    return st.integers(0, max_m).flatmap(
        lambda m: st.integers(1, max_n).flatmap(
            lambda n: st.lists(st.booleans(), min_size=m * n, max_size=m * n).map(
                lambda bits, m=m, n=n: np.array(bits, dtype=bool).reshape(m, n)
            )
        )
    )


def antichain(a: np.ndarray) -> bool:
    """Brute force: no column's support lies inside another's (rows = tasks, columns = factors)."""
    n = a.shape[1]
    return not any(i != j and np.all(a[:, j] | ~a[:, i]) for i in range(n) for j in range(n))


def assert_valid(graph: TaskFactorGraph, p: RepairProposal) -> None:
    m = graph.n_tasks
    b = p.repaired.adjacency
    assert p.repaired.factors == graph.factors
    assert p.repaired.tasks[:m] == graph.tasks  # existing tasks first, unchanged order
    assert not np.any(graph.adjacency & ~b[:m])  # nothing removed
    assert int(b.sum() - graph.adjacency.sum()) == p.n_added_edges
    assert len(p.new_tasks) == b.shape[0] - m
    assert check_uic(p.repaired).uic_holds and antichain(b)
    if p.new_tasks:
        assert p.existing_tasks_suffice is not True and p.reason
    assert p.to_json()["uic_holds_after"] is True


def min_edges_on_existing_tasks(a: np.ndarray) -> int | None:
    """Brute force over every set of added edges (small graphs only); ``None`` if none works."""
    zeros = list(zip(*np.nonzero(~a), strict=True))
    for k in range(len(zeros) + 1):
        for extra in itertools.combinations(zeros, k):
            b = a.copy()
            for t, i in extra:
                b[t, i] = True
            if antichain(b):
                return k
    return None


@settings(max_examples=40, deadline=None)
@given(small(4, 5))
def test_every_proposal_passes_the_checker(a: np.ndarray) -> None:
    g = TaskFactorGraph.from_matrix(a)
    for p in (propose_repair(g), propose_repair(g, exact_max_witnesses=0)):  # exact, then greedy
        assert_valid(g, p)
        if check_uic(g).uic_holds:
            assert p.method == "none needed" and p.n_added_edges == 0


@settings(max_examples=30, deadline=None)
@given(small(3, 4))
def test_exact_repair_is_minimal(a: np.ndarray) -> None:
    g = TaskFactorGraph.from_matrix(a)
    p = propose_repair(g)
    assert p.minimal
    best = min_edges_on_existing_tasks(a)
    if best is None:
        assert p.new_tasks and p.existing_tasks_suffice is False
        # fewest new tasks: one fewer cannot work even with every edge on them available
        r = len(p.new_tasks) - 1
        padded = np.vstack([a, np.zeros((r, a.shape[1]), bool)])
        if padded.size <= 12:
            assert min_edges_on_existing_tasks(padded) is None
    else:
        assert not p.new_tasks and p.n_added_edges == best
        assert p.existing_tasks_suffice is True


def test_greedy_on_a_larger_graph_and_fallback_to_new_tasks() -> None:
    rng = np.random.default_rng(7)
    a = rng.random((12, 40)) < 0.35
    a[:, 3] = a[:, 4] & a[:, 5]  # forced containments
    a[:, 10] = False  # an unused factor
    g = TaskFactorGraph.from_matrix(a)
    assert not check_uic(g).uic_holds
    p = propose_repair(g, exact_max_witnesses=0)
    assert p.method == "greedy" and not p.minimal
    assert_valid(g, p)
    # a factor read by every task: existing tasks provably cannot work, greedy must add tasks
    a[:, 0] = True
    g = TaskFactorGraph.from_matrix(a)
    p = propose_repair(g, exact_max_witnesses=0)
    assert_valid(g, p)
    assert p.new_tasks and p.existing_tasks_suffice is False and "every task" in (p.reason or "")


def test_sperner_forces_new_tasks() -> None:
    a = np.eye(3, dtype=bool)[:, [0, 1, 2, 0, 1]]  # 5 factors, 3 tasks: binom(3, 1) = 3 < 5
    g = TaskFactorGraph.from_matrix(a)
    for p in (propose_repair(g), propose_repair(g, exact_max_witnesses=0)):
        assert_valid(g, p)
        assert "Sperner" in (p.reason or "")
        assert g.n_tasks + len(p.new_tasks) >= min_tasks_for_factors(5)


def test_new_task_ids_do_not_collide() -> None:
    g = TaskFactorGraph(("a", "b"), ("new_task_1",), np.array([[True, True]]))
    p = propose_repair(g)
    assert_valid(g, p)
    # identical sets and no other existing task: two new tasks are needed, named around the clash
    assert [t for t, _ in p.new_tasks] == ["new_task_2", "new_task_3"]


def test_examples() -> None:
    nested = load_graph(EXAMPLES / "graph_nested.json")
    p = propose_repair(nested)
    assert_valid(nested, p)
    assert p.method == "exact" and p.minimal and not p.new_tasks
    assert p.n_added_edges == min_edges_on_existing_tasks(np.array(nested.adjacency))
    chain = load_graph(EXAMPLES / "graph_chain.json")
    p = propose_repair(chain)
    assert_valid(chain, p)
    assert len(p.new_tasks) == 1
