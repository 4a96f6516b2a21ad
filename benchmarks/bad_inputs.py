"""Every bad input and fault of the CLIs, run as a user would: exit code, the one line on stderr, seconds.

Each case runs in a fresh subprocess (``python -m sit_causal.cli.main ...`` / ``python -m sit_nlp.cli.main ...``) in a
scratch folder holding the inputs it needs (an existing file, finished runs, a tiny trained checkpoint, a
small testbed and damaged copies of it, a 200 KB tmpfs that fills up, a read-only mount). Kinds:

* ``input``: a bad value, file or folder: exit 2 and one line on stderr;
* ``stdout``: standard output is ``/dev/full``: exit 2 and ``cannot write standard output``;
* ``full-disk``: the output folder is a 200 KB tmpfs: exit 2, one line, and no damaged file left there;
* ``refused-path``: an output under ``/proc`` or ``/sys``: exit 2 and one line, before any work;
* ``size``: an oversized request: exit 2 and one line within 5 s (the estimate in the line);
* ``interrupt``: Ctrl-C (SIGINT to the process group) mid-run: exit 130, one line saying what was kept;
* ``orphan``: SIGKILL to the parent of a 2-worker ``simulate``: no worker alive 5 s later;
* ``reuse`` / ``gate``: a run that would report what it did not do: refused (2) or void (1).

A case passes when the exit code is the expected one, stderr holds exactly the expected number of lines
(no traceback) and the line holds the expected words. The tmpfs and read-only cases need root (``mount``);
without it they are listed as skipped. Prints a Markdown table (the one in docs/results/bad_inputs.md).

    python benchmarks/bad_inputs.py            # every case (a few minutes on 2 cores)
    python benchmarks/bad_inputs.py --fast     # the cases that need no training (tests/test_bad_inputs_bench.py)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
MIXTURE = str(ROOT / "configs" / "mixtures" / "tiny.yaml")
SIM_TINY = ["--factors", "3", "--tasks", "3", "--seeds", "1", "--samples", "30", "--steps", "5", "--methods", "ivae",
            "--quiet"]
VAL_TINY = ["--stage", "theory", "--factors", "3", "--tasks", "3", "--modes", "block", "--theory-graphs", "1",
            "--functions", "simulator", "--samples", "60", "--datasets-per-task", "2", "--quiet"]
TESTBED_TINY = ("mechanism: anti-causal\nn_yesno_tasks: 4\nn_generation_tasks: 2\nn_heldout_tasks: 2\n"
                "train_per_dataset: 40\nvalidation_per_dataset: 8\ntest_per_task: 12\n")


@dataclass
class Case:
    title: str
    kind: str
    argv: list[str]  # [package, *args]
    expect: int = 2
    needle: str = ""
    lines: int = 1
    stdout: str | None = None  # a path standard output goes to (/dev/full, a file on the tmpfs)
    fast: bool = True  # runs without training (the test suite's subset)
    needs: tuple[str, ...] = ()  # fixtures: checkpoint, testbed, tmpfs, readonly
    within: float | None = None  # seconds the refusal must take at most
    special: str | None = None  # interrupt / orphan
    ready: str | None = None  # interrupt: a path whose existence means "mid-run"
    check: Callable[[Path], str | None] | None = field(default=None, repr=False)  # extra check: None if fine


def _no_tmp_left(folder: str) -> Callable[[Path], str | None]:
    def check(tmp: Path) -> str | None:
        left = [p.name for p in (tmp / folder).rglob("*") if p.name.endswith(".tmp")]
        return f"partial files left: {left}" if left else None
    return check


def _drop_stdout_file(tmp: Path) -> str | None:
    (tmp / "full" / "uic.json").unlink(missing_ok=True)  # free the disk for the next rows
    return None


def _finished_json_whole(tmp: Path) -> str | None:
    path = tmp / "full" / "scores.json"
    return None if path.read_text() == '{"finished": true}\n' else "the finished file was damaged"


CASES: list[Case] = [
    # ------------------------------------------------------------------ inputs (the original set)
    Case("simulate: --out is an existing file", "input", ["sit_causal", "simulate", "--out", "a_file"]),
    Case("simulate: --out holds a finished run", "input", ["sit_causal", "simulate", "--out", "finished_run"]),
    Case("simulate: a run too big for memory", "size", ["sit_causal", "simulate", "--factors", "1000", "--tasks",
                                                        "16"]),
    Case("simulate: a graph generator asked for 100000 tasks", "size", ["sit_causal", "simulate", "--tasks",
                                                                        "100000"]),
    Case("simulate: a method named twice", "input", ["sit_causal", "simulate", "--methods", "sit,sit"]),
    Case("simulate: an unknown --set field", "input", ["sit_causal", "simulate", "--set", "w_uicc=1"]),
    Case("simulate: --resume without --out", "input", ["sit_causal", "simulate", "--resume"]),
    Case("validate: --out is an existing file", "input", ["sit_causal", "validate", "--out", "a_file"]),
    Case("check-uic: a duplicate JSON key", "input", ["sit_causal", "check-uic", "dup.json"]),
    Case("train: max_steps 0", "input", ["sit_nlp", "train", "--config", TINY, "--max_steps=0"]),
    Case("train: negative lr", "input", ["sit_nlp", "train", "--config", TINY, "--lr=-1"]),
    Case("train: batch_size 0", "input", ["sit_nlp", "train", "--config", TINY, "--train.batch_size=0"]),
    Case("train: --config names a folder", "input", ["sit_nlp", "train", "--config", "."]),
    Case("train: the run folder holds a run", "input", ["sit_nlp", "train", "--config", TINY, "--out_dir=train_run"]),
    Case("train: --resume and --overwrite", "input", ["sit_nlp", "train", "--config", TINY, "--out_dir=train_run",
                                                      "--resume", "--overwrite"]),
    Case("eval: --device tpu", "input", ["sit_nlp", "eval", "--checkpoint", "train_run", "--device", "tpu"]),
    Case("score: one task, two categories", "input", ["sit_nlp", "score", "mixed.jsonl"]),
    Case("score: --out exists", "input", ["sit_nlp", "score", "mixed.jsonl", "--out", "scores.json"]),
    # ------------------------------------------------------------------ standard output cannot be written
    *[Case(f"{' '.join(a[1:3])}{' ' + a[3] if len(a) > 3 and a[3].startswith('--') else ''} > /dev/full", "stdout",
           a, needle="cannot write standard output", stdout="/dev/full")
      for a in (["sit_causal", "check-uic", "graph.json", "--json"],
                ["sit_causal", "check-uic", "nested.json", "--repair"],
                ["sit_nlp", "score", "good.jsonl"], ["sit_nlp", "score", "good.jsonl", "--json"])],
    Case("simulate > /dev/full", "stdout", ["sit_causal", "simulate", *SIM_TINY], needle="cannot write standard output",
         stdout="/dev/full", fast=False),
    Case("simulate --json > /dev/full", "stdout", ["sit_causal", "simulate", *SIM_TINY, "--json"],
         needle="cannot write standard output", stdout="/dev/full", fast=False),
    Case("validate --json > /dev/full", "stdout", ["sit_causal", "validate", *VAL_TINY, "--json"],
         needle="cannot write standard output", stdout="/dev/full", fast=False),
    # ------------------------------------------------------------------ a 200 KB disk that fills up
    Case("train into a full disk", "full-disk", ["sit_nlp", "train", "--config", TINY, "--max_steps=2",
                                                 "--train.out_dir=full/run", "--quiet"],
         needle="no space left on device", needs=("tmpfs",), fast=False, check=_no_tmp_left("full")),
    Case("validate --out on a full disk", "full-disk", ["sit_causal", "validate", *VAL_TINY, "--modes", "block,uic",
                                                        "--theory-graphs", "3", "--out", "full/val"],
         needle="no space left on device", needs=("tmpfs",), fast=False, check=_no_tmp_left("full")),
    Case("testbed build --out on a full disk", "full-disk", ["sit_nlp", "testbed", "build", "--out", "full/tb",
                                                             "--config", "testbed_tiny.yaml"],
         needle="no space left on device", needs=("tmpfs",), fast=False, check=_no_tmp_left("full")),
    Case("data build --out on a full disk", "full-disk", ["sit_nlp", "data", "build", "--mixture", "big_mixture.yaml",
                                                          "--out", "full/mix", "--quiet"],
         needle="no space left on device", needs=("tmpfs",), check=_no_tmp_left("full")),
    Case("check-uic stdout to a file on a full disk", "full-disk", ["sit_causal", "check-uic", "wide.json", "--json",
                                                                    "--all-pairs"],
         needle="cannot write standard output: no space left on device", stdout="full/uic.json", needs=("tmpfs",),
         check=_drop_stdout_file),
    Case("score --out --force over a finished file on a full disk", "full-disk",
         ["sit_nlp", "score", "many.jsonl", "--out", "full/scores.json", "--force"], needle="no space left on device",
         needs=("tmpfs",), check=_finished_json_whole),
    # ------------------------------------------------------------------ paths the system refuses (even to root)
    Case("score --out /proc/...", "refused-path", ["sit_nlp", "score", "good.jsonl", "--out", "/proc/sit/s.json"],
         needle="cannot write /proc/sit/s.json"),
    Case("train --train.out_dir=/proc/...", "refused-path", ["sit_nlp", "train", "--config", TINY,
                                                             "--train.out_dir=/proc/sit-run"], needle="cannot write"),
    Case("simulate --out /proc/...", "refused-path", ["sit_causal", "simulate", "--out", "/proc/sit-sim"],
         needle="cannot write /proc/sit-sim"),
    Case("validate --out /sys/...", "refused-path", ["sit_causal", "validate", "--out", "/sys/sit-val"],
         needle="cannot write /sys/sit-val"),
    Case("testbed build --out /proc/...", "refused-path", ["sit_nlp", "testbed", "build", "--out", "/proc/sit-tb"],
         needle="cannot write /proc/sit-tb"),
    Case("testbed run --out /proc/...", "refused-path", ["sit_nlp", "testbed", "run", "--data", "testbed", "--out",
                                                         "/proc/sit-tbr", "--fewshot-ks", "2"],
         needle="cannot write /proc/sit-tbr", needs=("testbed",)),
    Case("compare --plot /proc/...", "refused-path", ["sit_nlp", "compare", "sit=good.jsonl", "vanilla=good.jsonl",
                                                      "--plot", "/proc/sit.png"], needle="cannot write /proc/sit.png"),
    Case("masks --out /proc/...", "refused-path", ["sit_nlp", "masks", "--checkpoint", "tiny_run", "--data",
                                                   "builtin:tiny_eval.jsonl", "--out", "/proc/sit-masks"],
         needle="cannot write /proc/sit-masks", needs=("checkpoint",), fast=False),
    Case("eval --out /proc/...", "refused-path", ["sit_nlp", "eval", "--checkpoint", "tiny_run", "--data",
                                                  "builtin:tiny_eval.jsonl", "--out", "/proc/sit-pred.jsonl"],
         needle="cannot write /proc/sit-pred.jsonl", needs=("checkpoint",), fast=False),
    Case("data build --out /proc/...", "refused-path", ["sit_nlp", "data", "build", "--mixture", MIXTURE, "--out",
                                                        "/proc/sit-mix"], needle="cannot write /proc/sit-mix"),
    Case("simulate --out on a read-only mount", "refused-path", ["sit_causal", "simulate", "--out", "ro/sim"],
         needle="read-only file system", needs=("readonly",)),
    # ------------------------------------------------------------------ config values
    Case("train: a binary file as --config", "input", ["sit_nlp", "train", "--config", "binary.yaml"],
         needle="not a text file"),
    *[Case(f"train: {' '.join(o)}", "input", ["sit_nlp", "train", "--config", TINY, *o, "--train.out_dir=never"],
           needle=n)
      for o, n in ((["--model.temperature=.nan"], "finite"), (["--train.weight_decay=.nan"], "finite"),
                   (["--train.batch_size=100000"], "train.batch_size"), (["--train.seed=-1"], "train.seed"),
                   (["--train.max_grad_norm=-1"], "max_grad_norm"), (["--model.factor_dim=0"], "factor_dim"),
                   (["--model.method=vanilla", "--train.weight_decay=.nan"], "finite"))],
    Case("train: a duplicate YAML key in --config", "input", ["sit_nlp", "train", "--config", "dup.yaml"],
         needle="duplicate key 'lr'"),
    Case("data build: a duplicate YAML key in the mixture", "input", ["sit_nlp", "data", "build", "--mixture",
                                                                      "dup_mixture.yaml", "--out", "mix"],
         needle="duplicate key"),
    Case("data build --seed -1", "input", ["sit_nlp", "data", "build", "--mixture", MIXTURE, "--out", "mix", "--seed",
                                           "-1"], needle="--seed"),
    Case("simulate --set learn_prior=maybe", "input", ["sit_causal", "simulate", "--set", "learn_prior=maybe"],
         needle="expected true or false"),
    *[Case(f"testbed run {f} {v}", "input", ["sit_nlp", "testbed", "run", "--data", "testbed", "--out", "tbr", f, v],
           needle=f, needs=("testbed",)) for f, v in (("--lr", "inf"), ("--lr", "nan"), ("--oracle-tolerance", "nan"))],
    # ------------------------------------------------------------------ damaged testbed folders
    Case("testbed run: heldout.jsonl has a garbage line", "input", ["sit_nlp", "testbed", "run", "--data", "tb_garbage",
                                                                    "--out", "tbr"], needle="heldout.jsonl:2",
         needs=("testbed",)),
    Case("testbed run: model is a file", "input", ["sit_nlp", "testbed", "run", "--data", "tb_model_file", "--out",
                                                   "tbr"], needle="model is not a folder", needs=("testbed",)),
    Case("testbed run: testbed.json lacks factors", "input", ["sit_nlp", "testbed", "run", "--data", "tb_no_factors",
                                                              "--out", "tbr"], needle="lacks factors",
         needs=("testbed",)),
    # ------------------------------------------------------------------ sizes estimated before work
    Case("simulate --seeds 1000000000", "size", ["sit_causal", "simulate", "--seeds", "1000000000"],
         needle="estimated", within=5),
    Case("simulate --factors 40 --tasks 40 --max-hours 0.25", "size",
         ["sit_causal", "simulate", "--factors", "40", "--tasks", "40", "--max-hours", "0.25"], needle="estimated",
         within=5),
    Case("validate --tasks 100000", "size", ["sit_causal", "validate", "--tasks", "100000"], needle="GB", within=5),
    Case("validate --theory-graphs 1000000000", "size", ["sit_causal", "validate", "--theory-graphs", "1000000000"],
         needle="CPU-hours", within=5),
    Case("score: one line of 5M tokens", "size", ["sit_nlp", "score", "huge.jsonl"], needle="ROUGE-L would fill",
         within=5),
    Case("train --model.n_factors=1000", "size", ["sit_nlp", "train", "--config", TINY, "--model.n_factors=1000"],
         needle="n_factors", within=5),
    Case("testbed build: n_yesno_tasks 100000", "size", ["sit_nlp", "testbed", "build", "--out", "tbx", "--config",
                                                         "tb_tasks.yaml"], needle="n_yesno_tasks", within=5),
    Case("testbed build: the backdoor mechanism with 2 generation tasks", "input",
         ["sit_nlp", "testbed", "build", "--out", "tbx", "--config", "tb_backdoor.yaml"], needle="backdoor"),
    Case("testbed build: train_per_dataset 10000000", "size", ["sit_nlp", "testbed", "build", "--out", "tbx",
                                                               "--config", "tb_records.yaml"], needle="records",
         within=5),
    # ------------------------------------------------------------------ unclear lines
    Case("check-uic: a byte-order mark (accepted)", "input", ["sit_causal", "check-uic", "bom.json"], expect=0,
         lines=0),
    Case("check-uic: a control character in a string", "input", ["sit_causal", "check-uic", "ctrl.json"],
         needle="Invalid control character at line"),
    Case("check-uic: an empty file", "input", ["sit_causal", "check-uic", "empty.json"], needle="is empty"),
    Case("eval: a built-in run without --data", "input", ["sit_nlp", "eval", "--checkpoint", "tiny_run"],
         needle="builtin:tiny_eval.jsonl", needs=("checkpoint",), fast=False),
    Case("train: missing data leaves no config.yaml", "input",
         ["sit_nlp", "train", "--config", TINY, "--train.out_dir=nodata_run", "--data.train_file=missing.jsonl"],
         needle="no such file", check=lambda tmp: "config.yaml left" if (tmp / "nodata_run" / "config.yaml").exists()
         else None),
    # ------------------------------------------------------------------ runs that would report what they did not do
    Case("testbed run: finished runs with other settings", "reuse",
         ["sit_nlp", "testbed", "run", "--data", "testbed", "--out", "tb_done", "--seeds", "1", "--methods", "vanilla",
          "--steps", "20", "--lr", "0.01", "--batch-size", "8", "--fewshot-ks", "2"], needle="other settings",
         needs=("testbed",)),
    # ------------------------------------------------------------------ interrupts and a killed parent
    Case("simulate --workers 2 + Ctrl-C", "interrupt",
         ["sit_causal", "simulate", "--out", "sim_int", "--factors", "3", "--tasks", "3", "--seeds", "4", "--workers",
          "2", "--samples", "40", "--steps", "500", "--methods", "ivae", "--quiet"], expect=130,
         needle="--resume", special="interrupt", ready="sim_int/seeds/seed_0.json", fast=False),
    Case("validate + Ctrl-C (keeps finished pieces)", "interrupt",
         ["sit_causal", "validate", "--out", "val_int", "--factors", "3", "--tasks", "3", "--modes", "uic",
          "--theory-graphs", "1", "--functions", "simulator", "--graphs", "3", "--seeds", "1", "--steps", "300",
          "--samples", "60", "--datasets-per-task", "2", "--workers", "1", "--quiet"], expect=130,
         needle="kept in", special="interrupt", ready="val_int/partial/theory.json", fast=False),
    Case("train + Ctrl-C", "interrupt", ["sit_nlp", "train", "--config", TINY, "--train.out_dir=train_int",
                                         "--max_steps=100000", "--save_every=5", "--quiet"], expect=130,
         needle="--resume", special="interrupt", ready="train_int/checkpoint-5", fast=False),
    Case("simulate --workers 2 + SIGKILL to the parent", "orphan",
         ["sit_causal", "simulate", "--factors", "3", "--tasks", "3", "--seeds", "4", "--workers", "2", "--samples",
          "40", "--steps", "100000", "--methods", "ivae", "--quiet"], special="orphan", fast=False),
]


def _setup(tmp: Path, needs: set[str], env: dict[str, str], huge: bool = True) -> set[str]:
    """The scratch inputs; returns the fixtures that could be made."""
    made = set()
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
    (tmp / "good.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (tmp / "many.jsonl").write_text("".join(json.dumps({**rows[0], "task": f"task{i}"}) + "\n" for i in range(400)))
    if huge:
        words = " ".join(["word"] * 5_000_000)
        (tmp / "huge.jsonl").write_text(json.dumps({**rows[0], "prediction": words, "references": [words]}) + "\n")
    (tmp / "dup.json").write_text('{"factors": ["a"], "factors": ["b"], "tasks": ["t"], "adjacency": [[1]]}')
    (tmp / "scores.json").write_text("{}")
    shutil.copy(ROOT / "examples" / "graph_uic.json", tmp / "graph.json")
    shutil.copy(ROOT / "examples" / "graph_nested.json", tmp / "nested.json")
    (tmp / "bom.json").write_bytes(b"\xef\xbb\xbf" + (tmp / "graph.json").read_bytes())
    (tmp / "ctrl.json").write_text('{"a": "x\x01y"}')
    (tmp / "empty.json").write_text("")
    wide = {"factors": [f"f{j}" for j in range(40)], "tasks": [f"t{i}" for i in range(40)],
            "adjacency": [[int((i * 7 + j * 3) % 5 < 3) for j in range(40)] for i in range(40)], "rows": "tasks"}
    (tmp / "wide.json").write_text(json.dumps(wide))
    (tmp / "binary.yaml").write_bytes(bytes(range(256)))
    (tmp / "dup.yaml").write_text("train:\n  lr: 0.1\n  lr: 0.2\n")
    mixture = Path(MIXTURE).read_text().replace("bigbench_root: bigbench_tiny",
                                                f"bigbench_root: {ROOT / 'configs' / 'mixtures' / 'bigbench_tiny'}")
    (tmp / "dup_mixture.yaml").write_text(mixture + "\nseed: 1\nseed: 2\n")
    (tmp / "big_mixture.yaml").write_text(mixture)
    (tmp / "testbed_tiny.yaml").write_text(TESTBED_TINY)
    (tmp / "tb_tasks.yaml").write_text("n_yesno_tasks: 100000\n")
    (tmp / "tb_backdoor.yaml").write_text("mechanism: backdoor\nn_generation_tasks: 2\n")
    (tmp / "tb_records.yaml").write_text("train_per_dataset: 10000000\n")

    def run(args: list[str]) -> bool:
        return subprocess.run([sys.executable, "-m", *args], cwd=tmp, env=env, capture_output=True,
                              timeout=600).returncode == 0

    if "checkpoint" in needs and run(["sit_nlp.cli.main", "train", "--config", TINY, "--train.out_dir=tiny_run",
                                      "--max_steps=2", "--quiet"]):
        made.add("checkpoint")
    if "testbed" in needs and run(["sit_nlp.cli.main", "testbed", "build", "--out", "testbed", "--config",
                                   "testbed_tiny.yaml"]):
        made.add("testbed")
        _damaged_testbeds(tmp)
    if "tmpfs" in needs and _mount(tmp / "full", "size=200k"):
        made.add("tmpfs")
        (tmp / "full" / "scores.json").write_text('{"finished": true}\n')
        # about two 4 KB pages stay free: the probe (one byte) passes, the outputs do not fit
        (tmp / "full" / "filler").write_bytes(b"\0" * (200 * 1024 - 3 * 4096))
    if "readonly" in needs and _mount(tmp / "ro", "size=64k,ro"):
        made.add("readonly")
    return made


def _damaged_testbeds(tmp: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from sit_nlp.testbed.jobs import TestbedJob, training_config
    from sit_nlp.training.config import save_config

    good = tmp / "testbed"
    for name in ("tb_garbage", "tb_model_file", "tb_no_factors"):
        shutil.copytree(good, tmp / name)
    lines = (tmp / "tb_garbage" / "heldout.jsonl").read_text().splitlines()
    (tmp / "tb_garbage" / "heldout.jsonl").write_text("\n".join([lines[0], "{garbage", *lines[1:]]) + "\n")
    shutil.rmtree(tmp / "tb_model_file" / "model")
    (tmp / "tb_model_file" / "model").write_text("x")
    meta = json.loads((tmp / "tb_no_factors" / "testbed.json").read_text())
    del meta["factors"]
    (tmp / "tb_no_factors" / "testbed.json").write_text(json.dumps(meta))
    # a finished 150-step run, as `testbed run --steps 150 --batch-size 8 --lr 0.002` leaves it
    job = TestbedJob("vanilla", 0, good.resolve(), (tmp / "tb_done").resolve(), 150, batch_size=8, lr=0.002, threads=1,
                     fewshot_ks=(2,))
    (job.folder / "final").mkdir(parents=True)
    save_config(training_config(job), job.folder / "config.yaml")


def _reset_full_disk(full: Path) -> None:
    """Every full-disk row starts alike: the finished scores.json and the filler, nothing else."""
    for path in full.iterdir():
        if path.name not in ("filler", "scores.json"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    (full / "scores.json").write_text('{"finished": true}\n')


def _mount(where: Path, options: str) -> bool:
    where.mkdir(exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def _unmount(tmp: Path) -> None:
    for name in ("full", "ro"):
        if os.path.ismount(tmp / name):
            subprocess.run(["umount", str(tmp / name)], capture_output=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    return True


def _children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except FileNotFoundError:
        return []
    return [int(x) for x in out.split()]


def _run_case(case: Case, tmp: Path, env: dict[str, str]) -> tuple[int, str, float, str | None]:
    """(exit code, stderr, seconds, a problem beyond the exit code and lines or None)."""
    package, *args = case.argv
    cmd = [sys.executable, "-m", f"{package}.cli", *args]
    t0 = time.perf_counter()
    if case.special is None:
        with contextlib.ExitStack() as stack:
            out = (stack.enter_context(open(tmp / case.stdout, "w")) if case.stdout else subprocess.PIPE)
            proc = subprocess.run(cmd, cwd=tmp, env=env, stdout=out, stderr=subprocess.PIPE, text=True, timeout=600)
        seconds = time.perf_counter() - t0
        problem = case.check(tmp) if case.check else None
        if case.within is not None:
            startup = _startup_seconds(case, tmp, env)
            if seconds - startup > case.within:
                problem = f"took {seconds:.1f} s, {seconds - startup:.1f} s after the start-up (> {case.within:g} s)"
        return proc.returncode, proc.stderr, seconds, problem
    proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        if case.special == "interrupt":
            end = time.monotonic() + 300
            while not (tmp / case.ready).exists() and proc.poll() is None and time.monotonic() < end:
                time.sleep(0.1)
            if proc.poll() is not None:
                return proc.returncode, proc.communicate()[1], time.perf_counter() - t0, "finished before Ctrl-C"
            os.killpg(proc.pid, signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            return proc.returncode, err, time.perf_counter() - t0, None
        # orphan: SIGKILL the parent once its workers run, then look for them 5 s later
        end = time.monotonic() + 120
        workers: list[int] = []
        while time.monotonic() < end and len(workers) < 2:
            time.sleep(0.5)
            workers = [c for c in _children(proc.pid) if "spawn_main" in _cmdline(c)]
        proc.kill()
        proc.wait()
        time.sleep(5)
        alive = [w for w in workers if _alive(w)]
        problem = (f"{len(alive)} of {len(workers)} workers alive 5 s after the parent died" if alive else None) \
            if workers else "no workers seen"
        note = f"{len(workers)} workers, none alive 5 s after the parent's SIGKILL" if problem is None else problem
        return 0 if problem is None else 1, note, time.perf_counter() - t0, problem
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


_STARTUP: dict[tuple[str, ...], float] = {}


def _startup_seconds(case: Case, tmp: Path, env: dict[str, str]) -> float:
    """Seconds the command takes to start (its ``--help``, which imports what it imports), so that a size
    check is timed on its own whatever the machine's load."""
    package, *args = case.argv
    words = tuple([package, *[a for a in args[:2] if not a.startswith("-")]][:3])
    if words not in _STARTUP:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", f"{package}.cli", *words[1:], "--help"], cwd=tmp, env=env,
                       capture_output=True, timeout=300)
        _STARTUP[words] = time.perf_counter() - t0
    return _STARTUP[words]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def run_cases(cases: list[Case], quiet: bool = False) -> list[dict[str, object]]:
    """Run ``cases`` in a scratch folder; one row per case."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        needs = {n for c in cases for n in c.needs}
        made = _setup(tmp, needs, env, huge=any("huge.jsonl" in c.argv for c in cases))
        try:
            for case in cases:
                missing = [n for n in case.needs if n not in made]
                if missing:
                    rows.append({"case": case, "status": "skipped", "why": f"no {', '.join(missing)}"})
                    continue
                if "tmpfs" in case.needs:
                    _reset_full_disk(tmp / "full")
                rc, err, seconds, problem = _run_case(case, tmp, env)
                lines = err.strip().splitlines()
                traceback = "Traceback" in err
                if case.special == "orphan":
                    ok, lines, traceback = problem is None, [err], False  # err: what was seen
                else:
                    ok = (rc == case.expect and len(lines) == case.lines and not traceback and problem is None
                          and (not case.needle or case.needle in err))
                rows.append({"case": case, "status": "pass" if ok else "FAIL", "rc": rc, "seconds": seconds,
                             "line": problem or (lines[-1] if lines else ""), "traceback": traceback,
                             "lines": len(lines)})
                if not quiet:
                    print(f"{rows[-1]['status']:7s} {case.title}", file=sys.stderr)
        finally:
            _unmount(tmp)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="only the cases that need no training")
    args = parser.parse_args()
    cases = [c for c in CASES if c.fast or not args.fast]
    t0 = time.time()
    load = os.getloadavg()[0]
    rows = run_cases(cases)
    print(f"{platform.node() or 'machine'}: {os.cpu_count()} CPU cores, load average {load:.2f} at the start; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {time.time() - t0:.0f} s in all\n")
    print("| kind | case | exit | seconds | stderr (the one line) |\n|---|---|---|---|---|")
    for row in rows:
        case = row["case"]
        if row["status"] == "skipped":
            print(f"| {case.kind} | {case.title} | skipped | | {row['why']} |")
            continue
        mark = "" if row["status"] == "pass" else " (FAIL)"
        print(f"| {case.kind} | {case.title} | {row['rc']}{mark} | {row['seconds']:.1f} | "
              f"`{str(row['line']).replace('|', '/')[:150]}` |")
    kinds = sorted({r["case"].kind for r in rows})
    print("\n| kind | cases | passed | tracebacks | skipped |\n|---|---|---|---|---|")
    for kind in kinds:
        of = [r for r in rows if r["case"].kind == kind]
        print(f"| {kind} | {len(of)} | {sum(r['status'] == 'pass' for r in of)} | "
              f"{sum(bool(r.get('traceback')) for r in of)} | {sum(r['status'] == 'skipped' for r in of)} |")
    failed = [r for r in rows if r["status"] == "FAIL"]
    tracebacks = sum(bool(r.get("traceback")) for r in rows)
    print(f"\n{len(rows) - len(failed)} of {len(rows)} cases pass ({sum(r['status'] == 'skipped' for r in rows)} "
          f"skipped); {tracebacks} tracebacks")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
