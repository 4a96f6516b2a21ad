"""Theory check, stage 2 (estimator): how many factors the UIC checker calls identifiable does trained SIT recover?

Runs :func:`sit_causal.experiments.validate.run_validation` (stage 2 of ``sit-causal validate``) and prints the
recovery rate of the identifiable factors with its 95 % CI and every failure, and the AUROC
(matched correlation of the SIT representation as the score, the checker's label as the truth), the
confusion table and the verdict, for the UIC and for its orthogonal-ambiguity form
(``check_uic(graph, ambiguity="orthogonal")``: only identical task sets mix).

    .venv/bin/python benchmarks/theory_check.py --graphs 2 --seeds 2 --out docs/results/data/theory_check.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sit_causal.experiments.experiment import SimulateConfig, SyntheticTrainConfig
from sit_causal.experiments.validate import DEFAULT_MODES, run_validation


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--factors", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--modes", default=DEFAULT_MODES)
    ap.add_argument("--graphs", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=SyntheticTrainConfig.steps)
    ap.add_argument("--seed", type=int, default=0, help="first seed (also draws the graphs)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    base = SimulateConfig(factors=args.factors, tasks=args.tasks, seeds=args.seeds, samples=args.samples,
                          seed=args.seed,
                          train=SyntheticTrainConfig(steps=args.steps))
    res = run_validation(args.modes.split(","), args.graphs, base, quiet=True)
    print(f"{len(res['factors'])} factors from {len(res['runs'])} SIT models")
    for title, stats, rec in (("UIC (linear ambiguity)", res, res["recovery"]["linear"]),
                              ("orthogonal ambiguity", res["orthogonal"], res["recovery"]["orthogonal"])):
        c, a = stats["confusion"], stats["auroc"]
        print(f"{title}: identifiable recovered {rec['recovered']}/{rec['identifiable']}, mean over models "
              f"{_fmt(rec['rate_mean_over_models'])} +/- {_fmt(rec['rate_ci95_half_width'])} (95% CI, "
              f"{rec['models']} models); failures: "
              + (", ".join(f"{f['mode']} g{f['graph_index']} s{f['seed']} {f['factor']} ({f['matched_corr']:.2f})"
                           for f in rec["failures"]) or "none"))
        shown = "n/a" if a is None else f"{a:.3f}"
        verdict = "n/a" if a is None else ("MET" if a >= 0.95 else "MISSED")
        print(f"{title}: AUROC {shown} (target >= 0.95 -> {verdict}); "
              f"balanced accuracy {_fmt(stats['balanced_accuracy'])}")
        print(f"  confusion: identifiable & recovered {c['tp']}, identifiable & not {c['fn']}, "
              f"not identifiable & recovered {c['fp']}, neither {c['tn']}")
        for mode, pm in stats["per_mode"].items():
            print(f"  {mode}: {pm}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
