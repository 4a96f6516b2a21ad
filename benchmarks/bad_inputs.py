"""Every bad input of the CLIs, run as a user would: exit code, the one line on stderr, seconds to refuse.

Each case runs in a fresh subprocess (``python -m sit_causal.cli ...`` / ``python -m sit_nlp.cli ...``) in a
scratch folder with the inputs it needs (an existing file, a folder holding a finished run, inconsistent
predictions, a graph with a duplicate key); a case passes when the exit code is 2 and stderr is exactly one
line. Prints a Markdown table (the one recorded in docs/results/bad_inputs.md).

    python benchmarks/bad_inputs.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup(tmp: Path) -> None:
    (tmp / "a_file").write_text("x")
    run = tmp / "finished_run"
    (run / "seeds").mkdir(parents=True)
    (run / "results.json").write_text("{}")
    train_run = tmp / "train_run"
    train_run.mkdir()
    (train_run / "metrics.jsonl").write_text('{"step": 1}\n')
    rows = [{"task": "t", "id": "1", "prediction": "a", "references": ["a"], "category": "qa"},
            {"task": "t", "id": "2", "prediction": "a", "references": ["a"], "category": "nli"}]
    (tmp / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "dup.json").write_text('{"factors": ["a"], "factors": ["b"], "tasks": ["t"], "adjacency": [[1]]}')
    (tmp / "scores.json").write_text("{}")


CASES: list[tuple[str, list[str]]] = [
    ("simulate: --out is an existing file", ["sit_causal", "simulate", "--out", "a_file"]),
    ("simulate: --out holds a finished run", ["sit_causal", "simulate", "--out", "finished_run"]),
    ("simulate: a run too big for memory", ["sit_causal", "simulate", "--factors", "1000", "--tasks", "16"]),
    ("simulate: a graph generator asked for 100000 tasks", ["sit_causal", "simulate", "--tasks", "100000"]),
    ("simulate: a method named twice", ["sit_causal", "simulate", "--methods", "sit,sit"]),
    ("simulate: an unknown --set field", ["sit_causal", "simulate", "--set", "w_uicc=1"]),
    ("simulate: --resume without --out", ["sit_causal", "simulate", "--resume"]),
    ("validate: --out is an existing file", ["sit_causal", "validate", "--out", "a_file"]),
    ("check-uic: a duplicate JSON key", ["sit_causal", "check-uic", "dup.json"]),
    ("train: max_steps 0", ["sit_nlp", "train", "--config", str(ROOT / "configs/tiny.yaml"), "--max_steps=0"]),
    ("train: negative lr", ["sit_nlp", "train", "--config", str(ROOT / "configs/tiny.yaml"), "--lr=-1"]),
    ("train: batch_size 0", ["sit_nlp", "train", "--config", str(ROOT / "configs/tiny.yaml"),
                             "--train.batch_size=0"]),
    ("train: --config names a folder", ["sit_nlp", "train", "--config", "."]),
    ("train: the run folder holds a run", ["sit_nlp", "train", "--config", str(ROOT / "configs/tiny.yaml"),
                                           "--out_dir=train_run"]),
    ("train: --resume and --overwrite", ["sit_nlp", "train", "--config", str(ROOT / "configs/tiny.yaml"),
                                         "--out_dir=train_run", "--resume", "--overwrite"]),
    ("eval: --device tpu", ["sit_nlp", "eval", "--checkpoint", "train_run", "--device", "tpu"]),
    ("score: one task, two categories", ["sit_nlp", "score", "mixed.jsonl"]),
    ("score: --out exists", ["sit_nlp", "score", "mixed.jsonl", "--out", "scores.json"]),
]


def main() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    print(f"load average {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d')}")
    print("| case | exit | seconds | stderr (one line) |\n|---|---|---|---|")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        _setup(tmp)
        for title, (package, *args) in CASES:
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", f"{package}.cli", *args], cwd=tmp, env=env,
                                  capture_output=True, text=True, timeout=300)
            seconds = time.perf_counter() - t0
            lines = proc.stderr.strip().splitlines()
            ok = proc.returncode == 2 and len(lines) == 1
            failed += not ok
            shown = (lines[0] if len(lines) == 1 else f"{len(lines)} lines: {lines[-1] if lines else ''}")
            print(f"| {title} | {proc.returncode}{'' if ok else ' (FAIL)'} | {seconds:.1f} | "
                  f"`{shown.replace('|', '/')[:160]}` |")
    print(f"\n{len(CASES) - failed} of {len(CASES)} cases: exit code 2 and one line")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
