"""Speed of the UIC check: ``check_uic`` on 10,000 factors x 64 tasks, against baselines in the same run.

    .venv/bin/python benchmarks/uic_speed.py [--factors 10000] [--tasks 64] [--ref-factors 1000]

Prints, for a random graph (each edge present with probability ``--density``, ``numpy`` generator seeded
by ``--seed``; matrix rows = tasks, columns = factors):

* ``check_uic`` (the verdict and the compressed mixing sets), mean +/- sd over ``--repeats`` runs;
* the same plus the full ``--json`` object (every factor's task and mixing lists);
* the dense float32 product ``A^T (1 - A) == 0`` (an ``n x n`` matrix), a dense implementation;
* a plain-Python pairwise reference (``set`` subset test for every ordered pair) timed on
  ``--ref-factors`` factors and extrapolated per pair to the full size, and the ratio against it.
The two methods are checked to agree on the reference size.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

from sit_causal.theory.graph import TaskFactorGraph
from sit_causal.theory.uic import check_uic


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """Mean, standard deviation and best (seconds) of ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.mean(times), (statistics.stdev(times) if repeats > 1 else 0.0), min(times)


def pairwise_reference(adjacency: np.ndarray) -> list[tuple[int, int]]:
    """Plain Python: ``(i, j)`` with ``i != j`` and ``C_i ⊆ C_j``, one pair at a time."""
    sets = [frozenset(np.flatnonzero(col).tolist()) for col in adjacency.T]
    return [(i, j) for i, ci in enumerate(sets) for j, cj in enumerate(sets) if i != j and ci <= cj]


def dense_matmul(adjacency: np.ndarray) -> np.ndarray:
    a = adjacency.astype(np.float32)
    k = (a.T @ (1.0 - a)) == 0
    np.fill_diagonal(k, False)
    return k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factors", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--ref-factors", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-dense", action="store_true", help="skip the n x n float32 baseline")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    a = rng.random((args.tasks, args.factors)) < args.density
    graph = TaskFactorGraph.from_matrix(a)
    n = args.factors
    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
          f"numpy {np.__version__}, {os.cpu_count()} CPUs, 1-min load average {os.getloadavg()[0]:.1f}")
    print(f"graph: {args.factors} factors x {args.tasks} tasks, density {args.density}, seed {args.seed}")

    report = check_uic(graph)
    mean, sd, best = timed(lambda: check_uic(graph), args.repeats)
    print(f"check_uic:                  {mean:.3f} +/- {sd:.3f} s, best {best:.3f} s  "
          f"(uic_holds={report.uic_holds}, {report.n_violations} violating pairs)")
    jmean, jsd, jbest = timed(lambda: check_uic(graph).to_json(), args.repeats)
    print(f"check_uic + full JSON:      {jmean:.3f} +/- {jsd:.3f} s, best {jbest:.3f} s")
    if not args.no_dense:
        dmean, dsd, dbest = timed(lambda: dense_matmul(a), max(1, args.repeats // 2))
        print(f"dense float32 A^T(1-A):     {dmean:.3f} +/- {dsd:.3f} s, best {dbest:.3f} s  "
              f"(best / best: {dbest / best:.1f}x slower than check_uic)")

    small = a[:, : args.ref_factors]
    ref = pairwise_reference(small)
    got = check_uic(TaskFactorGraph.from_matrix(small))
    assert sorted(ref) == [(int(i), int(j)) for i in got.failing for j in got.mixing_indices(int(i))]
    _, _, ref_best = timed(lambda: pairwise_reference(small), 3)
    m_ref = args.ref_factors
    per_pair = ref_best / (m_ref * (m_ref - 1))
    extrapolated = per_pair * n * (n - 1)
    print(f"python pairwise reference:  best {ref_best:.3f} s of 3 on {m_ref} factors "
          f"({per_pair * 1e9:.0f} ns per ordered pair; agrees with check_uic)")
    print(f"  extrapolated to {n} factors: {extrapolated:.1f} s -> check_uic (best) is "
          f"{extrapolated / best:.0f}x faster")
    print(f"target (< 1 s for check_uic): {'met' if mean < 1.0 else 'MISSED'}")


if __name__ == "__main__":
    main()
