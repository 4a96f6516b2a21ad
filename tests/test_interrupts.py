"""Interrupts and a killed parent: Ctrl-C exits 130 with one line saying what was kept, and local workers
never outlive their parent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

_SLEEPER = '''
import os, sys, time
from pathlib import Path
from sit_causal.executor import LocalExecutor

def job(i, report):
    Path(sys.argv[1], f"worker_{os.getpid()}").write_text("")
    time.sleep(120)
    return i

if __name__ == "__main__":
    LocalExecutor(2).run(job, [0, 1, 2, 3], lambda i, r: None)
'''


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its (gone) parent's reaper counts as dead
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_workers_die_with_a_killed_parent(tmp_path: Path) -> None:
    script = tmp_path / "sleeper.py"
    script.write_text(_SLEEPER)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=ENV, start_new_session=True)
    try:
        assert _wait_for(lambda: len(list(tmp_path.glob("worker_*"))) == 2, 60), "the workers did not start"
        pids = [int(p.name.split("_")[1]) for p in tmp_path.glob("worker_*")]
        parent.kill()  # SIGKILL: no handler of the parent runs
        parent.wait()
        assert _wait_for(lambda: not any(_alive(pid) for pid in pids), 5), "a worker outlived its parent by 5 s"
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)


def _interrupt(argv: list[str], cwd: Path, ready: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    """Run ``python -m argv`` in its own process group, send Ctrl-C (SIGINT to the group) once ``ready``
    exists, and return what it printed."""
    proc = subprocess.Popen([sys.executable, "-m", *argv], cwd=cwd, env=ENV, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: ready.exists() or proc.poll() is not None, timeout), "never got ready"
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.slow
def test_simulate_ctrl_c_with_two_workers_keeps_finished_seeds(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    args = ["sit_causal.cli.main", "simulate", "--out", str(out), "--factors", "3", "--tasks", "3", "--seeds", "4",
            "--workers", "2", "--samples", "40", "--steps", "500", "--methods", "ivae", "--quiet"]
    # Ctrl-C once the first seed is saved, while the others run
    res = _interrupt(args, tmp_path, out / "seeds" / "seed_0.json")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 130, res.stderr
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stderr
    assert "interrupted" in lines[0] and "--resume" in lines[0], lines
    kept = sorted(p.name for p in (out / "seeds").glob("seed_*.json"))
    assert kept and all(json.loads((out / "seeds" / k).read_text()) for k in kept)
