"""Draw one simulated meta-SCM dataset: the task x factor graph and a few latent marginals per dataset.

    .venv/bin/python examples/plot_dataset.py                      # writes docs/figures/simulator_dataset.png
    .venv/bin/python examples/plot_dataset.py --graph-mode nested --out /tmp/nested.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sit_causal.experiments.report import plot_dataset
from sit_causal.sim.scm import SCMConfig, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph-mode", default="uic", help="uic, bernoulli:P, block or nested")
    parser.add_argument("--family", default="gauss-meanvar", help="prior family (default gauss-meanvar)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/simulator_dataset.png"))
    args = parser.parse_args()
    config = SCMConfig(n_factors=6, n_tasks=4, datasets_per_task=3, samples_per_dataset=2000,
                       family=args.family, graph_mode=args.graph_mode, seed=args.seed)
    dataset = generate(config)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot_dataset(dataset, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
