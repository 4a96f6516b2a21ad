"""Start-up time of the CLIs: process start to exit, the way a user (or a script looping over files) pays it.

    .venv/bin/python benchmarks/startup.py [--runs 15] [--json]

Each command runs ``--runs`` times in a fresh subprocess (``python -m sit_causal.cli.main ...`` from the
repository root, so the checked-out code is the one timed; the installed ``sit-causal`` script imports the
same modules); the table gives the median and the range, with the 1-minute load average
(``os.getloadavg()``) read just before each command's runs and just after them, since the machine may be
shared. The first command is the target (``sit-causal check-uic examples/graph_uic.json`` under 0.5 s);
``python -c pass`` is the interpreter's own floor. A run whose exit code is not the expected one aborts
the benchmark. Results: docs/results/startup.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 0.5


def _predictions(folder: Path) -> Path:
    path = folder / "predictions.jsonl"
    rows = [{"task": "t", "id": str(i), "prediction": "a cat", "references": ["a cat runs"]} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def commands(folder: Path) -> list[tuple[str, list[str], int]]:
    """(label, argv after the interpreter, expected exit code); the first one is the target."""
    graph = str(REPO / "examples" / "graph_uic.json")
    preds = str(_predictions(folder))
    return [
        ("sit-causal check-uic examples/graph_uic.json", ["-m", "sit_causal.cli.main", "check-uic", graph], 0),
        ("sit-causal check-uic examples/graph_uic.json --json", ["-m", "sit_causal.cli.main", "check-uic", graph,
                                                                 "--json"], 0),
        ("sit-causal --help", ["-m", "sit_causal.cli.main", "--help"], 0),
        ("sit-nlp --help", ["-m", "sit_nlp.cli.main", "--help"], 0),
        ("sit-nlp score PRED.jsonl (20 generation rows)", ["-m", "sit_nlp.cli.main", "score", preds], 0),
        ("python -c pass (interpreter floor)", ["-c", "pass"], 0),
    ]


def time_command(argv: list[str], expected: int, runs: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    load_before = os.getloadavg()[0]
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, check=False)
        times.append(time.perf_counter() - start)
        if done.returncode != expected:
            sys.exit(f"startup.py: {' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="subprocess runs per command (median reported)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [{"command": label, **time_command(argv, rc, args.runs)} for label, argv, rc in commands(Path(tmp))]
    info = {"date": dt.date.today().isoformat(), "python": platform.python_version(),
            "cpus": os.cpu_count(), "runs": args.runs, "target_s": TARGET_S, "rows": rows}
    if args.json:
        print(json.dumps(info))
        return
    print(f"{info['date']}, Python {info['python']}, {info['cpus']} CPUs, median of {args.runs} runs")
    print("| command | median (s) | min - max (s) | load avg (1 min) before / after |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| `{r['command']}` | {r['median_s']:.3f} | {r['min_s']:.3f} - {r['max_s']:.3f} | "
              f"{r['load_before']:.2f} / {r['load_after']:.2f} |")
    target = rows[0]
    verdict = "meets" if target["median_s"] < TARGET_S else "MISSES"
    print(f"\n{target['command']}: median {target['median_s']:.3f} s, {verdict} the {TARGET_S} s target")


if __name__ == "__main__":
    main()
