"""Tests of sit_causal.theory.uic against an independent brute force and the invariances of the UIC."""

from __future__ import annotations

import itertools
from math import comb

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sit_causal.theory.graph import TaskFactorGraph
from sit_causal.theory.uic import (
    UICReport,
    check_uic,
    containment_matrix,
    max_factors_for_tasks,
    min_tasks_for_factors,
    pack_task_sets,
)


def allowed_mixing(rows: list[tuple[int, ...]], n: int) -> set[tuple[int, int]]:
    """Brute force, straight from the definition: a mixing entry ``(i, j)`` (``L_i`` picks up
    ``L_j``) respects the graph iff every task (row) that reads ``i`` also reads ``j``. A non-diagonal
    mixing matrix respecting the graph exists iff some off-diagonal entry is allowed."""
    return {
        (i, j)
        for i in range(n)
        for j in range(n)
        if i != j and all(row[j] for row in rows if row[i])
    }


matrices = st.integers(0, 7).flatmap(
    lambda m: st.integers(1, 7).flatmap(
        lambda n: st.lists(st.booleans(), min_size=m * n, max_size=m * n).map(
            lambda bits, m=m, n=n: np.array(bits, dtype=bool).reshape(m, n)
        )
    )
)


def all_matrices(m: int, n: int) -> np.ndarray:
    """Every ``(m, n)`` 0/1 matrix, shape ``(2 ** (m n), m, n)``."""
    codes = np.arange(2 ** (m * n), dtype=np.int64)
    bits = (codes[:, None] >> np.arange(m * n)) & 1
    return bits.astype(bool).reshape(codes.size, m, n)


def brute_allowed(stack: np.ndarray) -> np.ndarray:
    """Vectorised brute force over a stack ``(B, m, n)``: ``allowed[b, i, j]`` iff ``i != j`` and every
    task of matrix ``b`` reading ``i`` also reads ``j``."""
    ok = (~stack[:, :, :, None] | stack[:, :, None, :]).all(axis=1)  # (B, n, n)
    idx = np.arange(stack.shape[2])
    ok[:, idx, idx] = False
    return ok


def test_agrees_with_brute_force_on_every_small_matrix() -> None:
    """Every matrix with 0..4 tasks, 1..4 factors and at most 12 cells (9,422 graphs), one at a time."""
    checked = 0
    for m in range(5):
        for n in range(1, 5):
            if m * n > 12:
                continue
            for a in all_matrices(m, n):
                allowed = allowed_mixing([tuple(r) for r in a.tolist()], n)
                report = check_uic(TaskFactorGraph.from_matrix(a))
                assert report.uic_holds == (not allowed), a
                expected = tuple((f"L{i + 1}", f"L{j + 1}") for i, j in sorted(allowed))
                assert report.violations == expected, a
                assert report.identifiable_mask.tolist() == [
                    not any(p == i for p, _ in allowed) for i in range(n)
                ], a
                checked += 1
    assert checked == 9_422


def dense_mixing(report: UICReport) -> np.ndarray:
    """``K[i, j]`` iff ``j`` is in the mixing set of ``i``, rebuilt from the report's compressed form
    (same distinct task set, or a distinct set strictly containing it)."""
    u = report.members_ptr.size - 1
    between = np.eye(u, dtype=bool)
    owners = np.repeat(np.arange(u), np.diff(report.supersets_ptr))
    between[owners, report.supersets] = True
    k = between[report.set_index][:, report.set_index]
    np.fill_diagonal(k, False)
    return k


def test_agrees_with_brute_force_on_every_4x4_matrix() -> None:
    """All 65,536 4 x 4 matrices, checked 64 at a time as one block-diagonal graph in which every block
    also has a private task read by all its factors. That task adds the same element to every set of its
    block, so containments inside a block are unchanged, and no set of one block can lie inside a set
    of another (it lacks the other block's private task): each block keeps its own verdict. This also
    runs the size-sorted path of the checker (64 blocks x 4 factors, 320 tasks = 5 words)."""
    stack = all_matrices(4, 4)
    expected = brute_allowed(stack)  # (65536, 4, 4)
    assert np.array_equal(expected[0b1001_0110_0110_1001], brute_allowed(stack[[0b1001_0110_0110_1001]])[0])
    per = 64
    blk = np.arange(per)[:, None, None]
    rows = blk * 5 + np.arange(4)[None, :, None]  # (per, 4, 1): task rows of each block
    cols = blk * 4 + np.arange(4)[None, None, :]  # (per, 1, 4): factor columns of each block
    big = np.zeros((per * 5, per * 4), dtype=bool)
    big[(blk * 5 + 4)[:, 0], cols[:, 0]] = True  # the private task of each block
    diag = (np.arange(per * 4) // 4)[:, None] == (np.arange(per * 4) // 4)[None, :]
    for start in range(0, stack.shape[0], per):
        want = expected[start : start + per]
        big[rows, cols] = stack[start : start + per]
        report = check_uic(TaskFactorGraph.from_matrix(big))
        assert report.mixing_counts.tolist() == want.sum(axis=2).ravel().tolist()
        k = dense_mixing(report)
        assert np.array_equal(k[cols.transpose(0, 2, 1), cols], want)
        assert not k[~diag].any()  # nothing across blocks


@settings(max_examples=60, deadline=None)
@given(matrices)
def test_containment_matrix_and_factor_verdicts_match_brute_force(a: np.ndarray) -> None:
    m, n = a.shape
    allowed = allowed_mixing([tuple(r) for r in a.tolist()], n)
    k = containment_matrix(a)
    assert k.shape == (n, n)
    assert {tuple(p) for p in np.argwhere(k).tolist()} == allowed
    report = check_uic(TaskFactorGraph.from_matrix(a))
    for i, verdict in enumerate(report.factors):
        assert verdict.tasks == tuple(f"T{t + 1}" for t in range(m) if a[t, i])
        assert verdict.mixes_with == tuple(f"L{j + 1}" for j in range(n) if (i, j) in allowed)
        assert verdict.identifiable == (not verdict.mixes_with)
    assert report.n_violations == len(allowed) == len(report.violations)


@settings(max_examples=60, deadline=None)
@given(matrices, st.randoms(use_true_random=False))
def test_relabelling_and_reordering_change_only_names(a: np.ndarray, rnd: object) -> None:
    m, n = a.shape
    g = TaskFactorGraph.from_matrix(a)
    fperm = list(range(n))
    tperm = list(range(m))
    rnd.shuffle(fperm)  # type: ignore[attr-defined]
    rnd.shuffle(tperm)  # type: ignore[attr-defined]
    fname = {f"L{i + 1}": f"factor_{k}" for k, i in enumerate(fperm)}
    tname = {f"T{t + 1}": f"task_{k}" for k, t in enumerate(tperm)}
    h = TaskFactorGraph(
        tuple(fname[g.factors[i]] for i in fperm),
        tuple(tname[g.tasks[t]] for t in tperm),
        a[np.ix_(tperm, fperm)],
    )
    r, s = check_uic(g), check_uic(h)
    assert r.uic_holds == s.uic_holds
    assert {(fname[x], fname[y]) for x, y in r.violations} == set(s.violations)
    by_id = {v.id: v for v in s.factors}
    for v in r.factors:
        w = by_id[fname[v.id]]
        assert w.identifiable == v.identifiable
        assert set(w.mixes_with) == {fname[x] for x in v.mixes_with}
        assert set(w.tasks) == {tname[t] for t in v.tasks}


@settings(max_examples=60, deadline=None)
@given(matrices, st.lists(st.booleans(), min_size=7, max_size=7))
def test_adding_a_task_never_breaks_the_uic(a: np.ndarray, row: list[bool]) -> None:
    n = a.shape[1]
    before = check_uic(TaskFactorGraph.from_matrix(a))
    after = check_uic(TaskFactorGraph.from_matrix(np.vstack([a, np.array(row[:n], bool)])))
    assert set(after.violations) <= set(before.violations)
    if before.uic_holds:
        assert after.uic_holds
    assert not np.any(before.identifiable_mask & ~after.identifiable_mask)


@settings(max_examples=60, deadline=None)
@given(matrices, st.integers(0, 6))
def test_a_factor_read_by_no_task_is_never_identifiable(a: np.ndarray, col: int) -> None:
    n = a.shape[1]
    if n < 2:
        a = np.hstack([a, a])
        n = 2
    col %= n
    a = a.copy()
    a[:, col] = False
    report = check_uic(TaskFactorGraph.from_matrix(a))
    assert not report.uic_holds
    assert not report.identifiable_mask[col]
    assert set(report.factors[col].mixes_with) == {f"L{j + 1}" for j in range(n) if j != col}


def test_single_factor_has_nothing_to_mix_with() -> None:
    assert check_uic(TaskFactorGraph.from_matrix(np.zeros((2, 1), bool))).uic_holds


def test_more_than_64_tasks_uses_several_words() -> None:
    rng = np.random.default_rng(3)
    a = rng.random((150, 40)) < 0.97  # dense sets: containments are common
    a[:, 5] = a[:, 6] & a[:, 7]  # a forced containment across words
    assert pack_task_sets(a).shape == (40, 3)
    ai = a.astype(np.int64)
    reference = (ai.T @ (1 - ai)) == 0
    np.fill_diagonal(reference, False)
    assert np.array_equal(containment_matrix(a), reference)
    assert check_uic(TaskFactorGraph.from_matrix(a)).mixing_counts.tolist() == reference.sum(1).tolist()


@pytest.mark.parametrize(("n", "m"), [(1, 1), (2, 2), (3, 3), (4, 4), (6, 4), (7, 5), (70, 8), (71, 9)])
def test_sperner_bound(n: int, m: int) -> None:
    assert min_tasks_for_factors(n) == m
    assert max_factors_for_tasks(m) >= n
    if n > 1:
        assert max_factors_for_tasks(m - 1) < n


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 6])
def test_sperner_bound_is_tight(m: int) -> None:
    """The middle layer of m tasks is an antichain of binom(m, m//2) factors; one more factor fails."""
    layer = list(itertools.combinations(range(m), m // 2))
    a = np.zeros((m, len(layer)), bool)
    for i, subset in enumerate(layer):
        a[list(subset), i] = True
    assert a.shape[1] == comb(m, m // 2) == max_factors_for_tasks(m)
    assert check_uic(TaskFactorGraph.from_matrix(a)).uic_holds
    extra = np.hstack([a, np.zeros((m, 1), bool)])
    extra[0, -1] = True
    assert not check_uic(TaskFactorGraph.from_matrix(extra)).uic_holds


def test_huge_violation_lists_stay_compressed_and_expand_exactly() -> None:
    n = 400
    a = np.zeros((3, n), bool)
    a[0] = True  # every factor has the task set {T1}: each mixes with all the others
    report = check_uic(TaskFactorGraph.from_matrix(a))
    assert report.n_violations == n * (n - 1)
    assert report.set_members.size == n and report.supersets.size == 0  # O(n), not O(n^2)
    listed = report.to_json()
    assert len(listed["violations"]) == n * (n - 1) == sum(1 for _ in report.iter_violations())
    assert listed["violations"][0] == ["L1", "L2"]


def test_orthogonal_ambiguity_only_mixes_identical_task_sets() -> None:
    nested = TaskFactorGraph.from_matrix([[1, 1, 1], [0, 1, 1], [0, 0, 1]])
    assert not check_uic(nested).uic_holds
    orth = check_uic(nested, ambiguity="orthogonal")
    assert orth.uic_holds and orth.ambiguity == "orthogonal" and orth.to_json()["ambiguity"] == "orthogonal"
    block = TaskFactorGraph.from_matrix([[1, 1, 0], [1, 1, 0], [0, 0, 1]])
    rep = check_uic(block, ambiguity="orthogonal")
    assert rep.identifiable_mask.tolist() == [False, False, True]
    assert rep.mixes_with(0) == ("L2",) and rep.mixes_with(2) == ()
    unread = TaskFactorGraph.from_matrix([[1, 0, 0], [1, 0, 0]])  # L2 and L3 read by no task: they mix
    assert check_uic(unread, ambiguity="orthogonal").identifiable_mask.tolist() == [True, False, False]
    assert check_uic(TaskFactorGraph.from_matrix(np.ones((3, 8))), ambiguity="orthogonal").min_tasks == 3
    with pytest.raises(ValueError, match="ambiguity"):
        check_uic(block, ambiguity="affine")  # type: ignore[arg-type]


def test_orthogonal_mixing_sets_are_the_equal_task_sets_and_within_the_uic_ones() -> None:
    rng = np.random.default_rng(5)
    for _ in range(200):
        a = rng.random((rng.integers(1, 6), rng.integers(1, 7))) < 0.5
        g = TaskFactorGraph.from_matrix(a.astype(int))
        lin, orth = check_uic(g), check_uic(g, ambiguity="orthogonal")
        for i in range(g.n_factors):
            equal = {g.factors[j] for j in range(g.n_factors) if j != i and (a[:, j] == a[:, i]).all()}
            assert set(orth.mixes_with(i)) == equal
            assert equal <= set(lin.mixes_with(i))
