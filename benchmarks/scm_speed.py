"""Speed of the meta-SCM simulator: 1,000,000 samples, n = 10 factors, 20 observed dimensions.

Target: under 5 s on the project's 2-core CPU machine.

    .venv/bin/python benchmarks/scm_speed.py            # 1,000,000 samples, best and mean of 3 runs
    .venv/bin/python benchmarks/scm_speed.py --samples 200000 --repeats 5

Baseline measured in the same run: drawing the same amount of standard-normal numbers with the same
numpy Generator (``N * (n + obs_dim + 1)`` values: latents, observation noise, target noise), the
irreducible cost of any sampler of this model. The printed ratio is simulator time / baseline time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from sit_causal.sim.scm import SCMConfig, build_mechanism, generate


def _baseline(n_samples: int, n_factors: int, obs_dim: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    rng.standard_normal((n_samples, n_factors))
    rng.standard_normal((n_samples, obs_dim))
    rng.standard_normal(n_samples)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000, help="total samples (default 1e6)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--depth", type=int, default=3, help="mixing depth (default 3)")
    parser.add_argument("--blas-compare", action="store_true",
                        help="also time the mixing with the BLAS library's default thread count")
    args = parser.parse_args()

    n_tasks, datasets_per_task = 5, 8  # 5 tasks: the fewest that separate 10 factors (Sperner)
    per_dataset = -(-args.samples // (n_tasks * datasets_per_task))
    config = SCMConfig(n_factors=10, n_tasks=n_tasks, datasets_per_task=datasets_per_task,
                       samples_per_dataset=per_dataset, obs_dim=20, mixing_depth=args.depth, seed=0)
    print(f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
          f"numpy={np.__version__} load-average(1 min)={os.getloadavg()[0]:.2f}")
    print(f"config: N={config.n_samples:,} n=10 obs_dim=20 depth={args.depth} tasks={n_tasks} "
          f"datasets={config.n_datasets} family={config.family} activation={config.activation}")

    t0 = time.perf_counter()
    mech = build_mechanism(config)
    build_s = time.perf_counter() - t0
    print(f"build_mechanism: {build_s * 1e3:.1f} ms")

    totals, baselines, stages = [], [], []
    for r in range(args.repeats):
        base = _baseline(config.n_samples, 10, 20, seed=r)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        ds = mech.sample(per_dataset, np.random.default_rng(r), timings=timings)
        total = time.perf_counter() - t0
        assert ds.n_samples == config.n_samples and ds.x.shape == (config.n_samples, 20)
        totals.append(total)
        baselines.append(base)
        stages.append(timings)
        print(f"run {r}: sample {total:.2f} s (prior {timings['prior']:.2f}, mixing+noise "
              f"{timings['mixing']:.2f}, targets {timings['targets']:.2f}); baseline {base:.2f} s; "
              f"ratio {total / base:.2f}")

    t0 = time.perf_counter()
    generate(config)
    end_to_end = time.perf_counter() - t0
    best = min(totals)
    print(f"sample: best {best:.2f} s, mean {statistics.mean(totals):.2f} s over {args.repeats} runs; "
          f"baseline (random numbers only) best {min(baselines):.2f} s; ratio {best / min(baselines):.2f}")
    print(f"generate(config) end to end (build + sample): {end_to_end:.2f} s")
    print(f"target < 5 s: {'met' if end_to_end < 5.0 else 'MISSED'}")
    if args.blas_compare:
        # Mechanism.sample caps BLAS at one thread (threadpoolctl): the matrices are 20 wide, threads only
        # add synchronisation, and on a shared 2-core machine they wait for busy cores.
        from threadpoolctl import threadpool_limits

        latents = ds.latents
        for label, limit in (("1 BLAS thread", 1), ("default BLAS threads", None)):
            with threadpool_limits(limits=limit, user_api="blas"):
                t0 = time.perf_counter()
                mech.mixing.forward(latents, noise_std=0.01, rng=np.random.default_rng(0))
                print(f"mixing+noise with {label}: {time.perf_counter() - t0:.2f} s")
    print(f"load-average(1 min) at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
