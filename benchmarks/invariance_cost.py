"""Training cost of the invariance term: seconds per step of each method, interleaved in one process.

Each method's testbed job (:func:`sit_nlp.testbed.jobs.training_config`) trains ``--steps`` steps on the same
testbed, one torch thread, and the rounds alternate between the methods so that a change of machine load
falls on all of them alike; the ratio to the first method is the number reported::

    .venv/bin/python benchmarks/invariance_cost.py --data runs/tb_anti_0 \
        --methods sit,sit-invariant,vanilla,vanilla-vrex,vanilla-irm
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--methods", default="sit,sit-invariant")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="write the timings here (JSON)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from sit_causal.fileio import write_text_atomic
    from sit_nlp.testbed.jobs import TestbedJob, training_config
    from sit_nlp.training.loop import train

    torch.set_num_threads(1)
    methods = args.methods.split(",")
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for m in methods:
                job = TestbedJob(m, 0, args.data.resolve(), Path(tmp) / f"r{r}", args.steps, threads=1)
                cfg = training_config(job)
                cfg.data.eval_file = None
                cfg.graph.find_at = None
                start = time.perf_counter()
                train(cfg, overwrite=True)
                seconds[m].append((time.perf_counter() - start) / args.steps)
                print(f"round {r} {m}: {seconds[m][-1] * 1000:.1f} ms/step", flush=True)
    base = methods[0]
    rows = {m: {"ms_per_step": [s * 1000 for s in v], "ratio_to_" + base: sum(v) / sum(seconds[base])}
            for m, v in seconds.items()}
    print(json.dumps({"load_average": os.getloadavg(), "steps": args.steps, "rows": rows}, indent=1))
    if args.out is not None:
        write_text_atomic(args.out, json.dumps({"load_average": os.getloadavg(), "steps": args.steps,
                                                "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
