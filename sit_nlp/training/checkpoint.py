"""The files of a run: model folders with the run's config, ``checkpoint-N`` folders, resuming, the run folder.

* :func:`save_trained` / :func:`load_trained`: a model folder (:mod:`sit_nlp.model.checkpoint`) with the run's
  resolved config as ``config.yaml``; ``final/`` is one (:func:`save_final`), so is every checkpoint.
* Checkpoints (``out_dir/checkpoint-N``, as Hugging Face Trainer names them, written into ``*.tmp`` and renamed,
  so a killed job never leaves a half checkpoint): the model as a model folder (safetensors; ``sit-nlp eval``
  takes any checkpoint), and in ``training_state/`` the optimizer, scheduler, every process's RNG states,
  the latent noise generator and the data position (:class:`TrainState`). :func:`restore_checkpoint` continues
  from one; the resumed run replays exactly the same batches and noise.
* The run folder: :func:`check_run_folder` refuses, before any work, to mix two runs in one folder;
  :func:`run_artifacts` names what ``--overwrite`` removes; :func:`interrupted_line` says what an
  interrupted run kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import Tensor

from sit_causal.fileio import check_output_dir, replace_directory
from sit_causal.inputs import UsageFailure
from sit_nlp.model.checkpoint import load_model, save_model
from sit_nlp.model.seq2seq import Seq2SeqSIT, TaskBank
from sit_nlp.training.config import Config, ConfigError, config_to_dict, load_saved_config, save_config
from sit_nlp.training.data import DataStream

__all__ = [
    "CHECKPOINT",
    "RESUMABLE_CHANGES",
    "RUN_ARTIFACTS",
    "TRAINING_STATE",
    "TrainState",
    "check_run_folder",
    "checkpoint_dirs",
    "interrupted_line",
    "load_trained",
    "maybe_save_checkpoint",
    "restore_checkpoint",
    "run_artifacts",
    "save_checkpoint",
    "save_final",
    "save_trained",
]


def save_trained(
    model: Seq2SeqSIT, config: Config, tokenizer: Any, out_dir: str | Path,
    state_dict: dict[str, Tensor] | None = None, bank: TaskBank | None = None, final: bool = False,
) -> None:
    """Write a self-contained model folder (:func:`sit_nlp.model.checkpoint.save_model`: backbone, SIT
    modules, tokenizer, task bank, marker, README) with ``config.yaml``, the resolved training config.
    :meth:`Seq2SeqSIT.from_pretrained` and :func:`load_trained` load the folder back.

    ``state_dict`` is the full (gathered) state dict when training was distributed/sharded; ``final``:
    the end-of-training model (``final/``) rather than an intermediate checkpoint.
    """
    out = save_model(model, tokenizer, out_dir, state_dict=state_dict, bank=bank, final=final)
    resolved = Config(**{s: getattr(config, s) for s in ("model", "data", "loss", "graph", "train")})
    save_config(resolved, out / "config.yaml")


def load_trained(path: str | Path) -> tuple[Seq2SeqSIT, Any, Config]:
    """Load a folder written by :func:`save_trained`: ``(model in eval mode, tokenizer, config)``."""
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"{path}: not a trained model directory (no config.yaml)")
    cfg = load_saved_config(path / "config.yaml")
    model, tokenizer = load_model(path, cfg.model, cfg.loss, cfg.data.max_instruction_len)
    return model, tokenizer, cfg


class TrainState:
    """Step counter, latent-noise generator and data position: checkpointed with the model."""

    def __init__(self, generator: torch.Generator, stream: DataStream) -> None:
        self.step, self.generator, self.stream = 0, generator, stream

    def state_dict(self) -> dict[str, Any]:
        """Step, the generator's state and the data position (:meth:`DataStream.state_dict`)."""
        return {"step": self.step, "generator": self.generator.get_state(), "data": self.stream.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a state saved by :meth:`state_dict`."""
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])
        self.stream.load_state_dict(state["data"])


CHECKPOINT = re.compile(r"checkpoint-(\d+)")
"""The name of a checkpoint folder (``checkpoint-N``, ``N`` the step)."""
TRAINING_STATE = "training_state"
"""The folder of a checkpoint that holds the optimizer, scheduler, RNG and data states."""


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    """The run's ``checkpoint-N`` folders, oldest first (a ``.tmp`` left by a killed save is not one)."""
    found = [p for p in Path(out_dir).glob("checkpoint-*") if CHECKPOINT.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _skip_model_weights(models: list, weights: list, output_dir: str) -> None:
    """accelerate save hook: the model is saved as a model folder by :func:`save_checkpoint` (safetensors,
    loadable by ``eval`` and ``from_pretrained``), not a second time inside the training state."""
    weights.clear()


def _skip_model_loading(models: list, input_dir: str) -> None:
    """accelerate load hook: the weights come from the checkpoint's model folder (:func:`restore_checkpoint`)."""
    models.clear()


def save_checkpoint(step: int, cfg: Config, accelerator: Accelerator, state: TrainState, model: torch.nn.Module,
                    tokenizer: Any, bank: TaskBank | None) -> Path:
    """A ``checkpoint-N`` folder, atomically (``.tmp`` then rename), laid out as Hugging Face Trainer's:

    * the model, as :func:`save_trained` writes it (safetensors, ``config.yaml``, tokenizer):
      ``sit-nlp eval --checkpoint``, ``sit-nlp masks`` and ``Seq2SeqSIT.from_pretrained`` accept it;
    * ``training_state/``: accelerate's optimizer, scheduler and RNG states (``optimizer.bin``,
      ``scheduler.bin``, ``random_states_{rank}.pkl``: accelerate's own formats), and per process
      ``train_state_{rank}.json`` (step, data position) with ``generator_{rank}.safetensors`` (the latent
      noise generator's state).
    Only the newest ``train.keep_checkpoints`` folders are kept."""
    from safetensors.torch import save_file

    out_dir = Path(cfg.train.out_dir)
    final = out_dir / f"checkpoint-{step}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / TRAINING_STATE).mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        fsdp = accelerator.distributed_type == DistributedType.FSDP
        handle = None if fsdp else accelerator.register_save_state_pre_hook(_skip_model_weights)
        try:
            accelerator.save_state(str(tmp / TRAINING_STATE), safe_serialization=True)
        finally:
            if handle is not None:
                handle.remove()
        rank = accelerator.process_index
        own = state.state_dict()
        save_file({"state": own.pop("generator")}, str(tmp / TRAINING_STATE / f"generator_{rank}.safetensors"))
        (tmp / TRAINING_STATE / f"train_state_{rank}.json").write_text(json.dumps(own), encoding="utf-8")
        full_state = accelerator.get_state_dict(model)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_trained(accelerator.unwrap_model(model), cfg, tokenizer, tmp, state_dict=full_state, bank=bank)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
    except BaseException:  # a full disk, Ctrl-C: the half-written checkpoint goes, the finished ones stay
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if accelerator.is_main_process:
        for old in checkpoint_dirs(out_dir)[: -cfg.train.keep_checkpoints or None]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def maybe_save_checkpoint(step: int, cfg: Config, accelerator: Accelerator, state: TrainState,
                          model: torch.nn.Module, tokenizer: Any, bank: TaskBank | None,
                          force: bool = False) -> Path | None:
    """Every ``train.save_every`` steps (and at the end): :func:`save_checkpoint`."""
    every = cfg.train.save_every
    if not (force or (every > 0 and step % every == 0)):
        return None
    return save_checkpoint(step, cfg, accelerator, state, model, tokenizer, bank)


RUN_ARTIFACTS = ("final", "metrics.jsonl", "task_graph.json", "task_graph_energies.json", "tokenizer")
"""What a run writes into ``train.out_dir`` besides ``config.yaml`` and its ``checkpoint-N`` folders: what
``--overwrite`` removes (with the checkpoints, :func:`run_artifacts`)."""


def run_artifacts(out_dir: Path) -> list[str]:
    """Names of everything a run wrote into ``out_dir``: :data:`RUN_ARTIFACTS` present and the checkpoints
    (and a ``checkpoint-N.tmp`` a killed save left)."""
    names = [name for name in RUN_ARTIFACTS if (out_dir / name).exists()]
    return names + sorted(p.name for p in out_dir.glob("checkpoint-*")
                          if CHECKPOINT.fullmatch(p.name.removesuffix(".tmp")))
RESUMABLE_CHANGES = frozenset({"train.quiet", "train.stop_after", "train.tensorboard", "train.log_every",
                               "train.eval_every", "train.save_every", "train.keep_checkpoints", "train.threads"})
"""Config keys that may differ between a run and its ``--resume`` (they change no computed number)."""


def _saved_chat_template(out_dir: Path) -> bool:
    """Whether a tokenizer saved in the run folder ``out_dir`` (its checkpoints or ``final/``) carries a chat
    template (``chat_template.jinja``, or a ``chat_template`` key in ``tokenizer_config.json``). Without one,
    ``data.chat_template`` ``auto`` and ``none`` render the same prompts (an encoder-decoder's tokenizer, the
    testbed's word-level one), so resuming across them changes nothing."""
    for config in out_dir.glob("*/tokenizer_config.json"):
        if (config.parent / "chat_template.jinja").is_file():
            return True
        try:
            if json.loads(config.read_text(encoding="utf-8")).get("chat_template"):
                return True
        except (OSError, ValueError, AttributeError):
            return True  # unreadable: assume the template could matter (the refusal names the fix)
    return False


def check_run_folder(cfg: Config, resume: bool, overwrite: bool, allow_config_change: bool = False,
                     resume_from: Path | None = None) -> None:
    """Before any work: a run folder that already holds a run is refused unless ``resume`` (whose saved
    config must match, key by key, except :data:`RESUMABLE_CHANGES`, unless ``allow_config_change``) or
    ``overwrite`` (the old run's artifacts are removed). ``resume_from``: a ``checkpoint-N`` folder of
    this run to resume from instead of the newest. Raises :class:`ConfigError` (one line)."""
    out_dir = Path(cfg.train.out_dir)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"train.out_dir {out_dir} is a file, not a folder")
    held = run_artifacts(out_dir) if out_dir.is_dir() else []
    if resume_from is not None:
        if not resume:
            raise ConfigError("--resume-from needs --resume")
        if not CHECKPOINT.fullmatch(resume_from.name) or not (resume_from / TRAINING_STATE).is_dir():
            raise ConfigError(f"--resume-from {resume_from}: not a checkpoint-N folder with {TRAINING_STATE}/")
        if resume_from.resolve().parent != out_dir.resolve():
            raise ConfigError(f"--resume-from {resume_from}: not a checkpoint of train.out_dir {out_dir}")
    if resume:
        saved = out_dir / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"--resume: no checkpoint under {out_dir} (no run there: no config.yaml)")
        old, new = config_to_dict(load_saved_config(saved)), config_to_dict(cfg)
        changed = [f"{sec}.{key}" for sec in new for key in new[sec]
                   if old.get(sec, {}).get(key) != new[sec][key] and f"{sec}.{key}" not in RESUMABLE_CHANGES]
        if "data.chat_template" in changed and not _saved_chat_template(out_dir):
            changed.remove("data.chat_template")  # no template to apply: every setting gives the plain prompt
        if changed and not allow_config_change:
            hint = (" (a run saved before data.chat_template existed has plain prompts: "
                    "--data.chat_template=none resumes it as trained)") if "data.chat_template" in changed else ""
            raise ConfigError(f"--resume: the config differs from the run's in {', '.join(changed)}; "
                              f"pass --allow-config-change to resume anyway{hint}")
        return
    if held and not overwrite:
        raise ConfigError(f"{out_dir} already holds a run ({', '.join(held)}); pass --resume to continue it, "
                          "--overwrite to replace it, or choose another --train.out_dir")
    try:
        check_output_dir(out_dir, "train.out_dir")  # a small file written and removed: what root cannot write too
    except UsageFailure as err:
        raise ConfigError(str(err)) from None


def interrupted_line(out_dir: Path) -> str:
    """What an interrupted run kept in ``out_dir`` and how to continue it (one line)."""
    steps = sorted(int(m.group(1)) for p in out_dir.glob("checkpoint-*") if (m := CHECKPOINT.fullmatch(p.name)))
    if steps:
        return f"{out_dir} keeps checkpoint-{steps[-1]} (step {steps[-1]}); continue with --resume (same config)"
    return f"no checkpoint was saved yet; nothing to resume in {out_dir} (rerun with --overwrite)"


def restore_checkpoint(accelerator: Accelerator, cfg: Config, state: TrainState, model: torch.nn.Module,
                       checkpoint: Path | None = None) -> int:
    """Continue from ``checkpoint`` (a ``checkpoint-N`` folder; default: the newest): the model's weights
    and buffers from its model folder, optimizer, scheduler and RNGs from ``training_state/``, then the
    step, data position and noise generator of this process. Returns the step ``N``."""
    from safetensors.torch import load_file

    found = checkpoint_dirs(Path(cfg.train.out_dir))
    if checkpoint is None and not found:
        raise ConfigError(f"--resume: no checkpoint under {cfg.train.out_dir} (no checkpoint-N folder)")
    ckpt = found[-1] if checkpoint is None else checkpoint
    rank = accelerator.process_index
    own = ckpt / TRAINING_STATE / f"train_state_{rank}.json"
    if not own.is_file():
        raise ConfigError(f"--resume: {ckpt} has no {TRAINING_STATE}/{own.name} "
                          "(not a checkpoint-N folder, or saved with a different number of processes?)")
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if not fsdp:
        saved, _, _ = load_trained(ckpt)
        unwrapped = accelerator.unwrap_model(model)
        if unwrapped.is_sit:
            unwrapped.init_task_graph(int(saved.task_graph.shape[0]))
        unwrapped.load_state_dict(saved.state_dict())
        del saved
    handle = None if fsdp else accelerator.register_load_state_pre_hook(_skip_model_loading)
    try:
        accelerator.load_state(str(ckpt / TRAINING_STATE))
    finally:
        if handle is not None:
            handle.remove()
    train_state = json.loads(own.read_text(encoding="utf-8"))
    train_state["generator"] = load_file(str(ckpt / TRAINING_STATE / f"generator_{rank}.safetensors"))["state"]
    state.load_state_dict(train_state)
    return int(train_state["step"])


def save_final(accelerator: Accelerator, model: torch.nn.Module, cfg: Config, tokenizer: Any,
               bank: TaskBank | None) -> Path:
    """The end-of-training model as ``out_dir/final`` (:func:`save_trained`), written aside and renamed:
    a full disk never leaves half a ``final/``. Every process takes part (the state dict is gathered)."""
    out_dir = Path(cfg.train.out_dir)
    full_state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        aside = out_dir / ".final.build"  # the folder is still named final: its README names it
        shutil.rmtree(aside, ignore_errors=True)
        try:
            save_trained(accelerator.unwrap_model(model), cfg, tokenizer, aside / "final", state_dict=full_state,
                         bank=bank, final=True)
            replace_directory(aside / "final", out_dir / "final")
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    accelerator.wait_for_everyone()
    return out_dir / "final"
