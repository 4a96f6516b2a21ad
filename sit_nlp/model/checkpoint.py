"""The SIT model folder: a trained :class:`~sit_nlp.model.seq2seq.Seq2SeqSIT` on disk, and back.

A model folder (``final/``, or any ``checkpoint-N/`` of a run) holds

* the backbone in Hugging Face format (``save_pretrained``; for vanilla the whole trained model) and its
  tokenizer; a SIT folder's backbone weights carry one marker tensor, so Hugging Face warns when the folder
  is loaded as a plain model;
* ``sit_modules.safetensors``: the modules SIT adds to the backbone (latent module, memory projection,
  source decoder, prior context) and its buffers (the task graph, the encoder residual);
* with LoRA (``model.lora``, decoder-only): instead of the backbone, the ``peft`` adapter
  (``adapter_config.json``, ``adapter_model.safetensors``; the folder is a ``peft`` adapter folder), the base
  model being rebuilt from ``model.backbone`` (a preset, a GGUF file or a hub name) when the folder is loaded;
* ``config.yaml``: the run's resolved config (the training package's ``save_trained`` writes it); its
  ``model`` and ``loss`` sections build the model (:func:`read_model_config`);
* ``task_bank.json`` (the training instructions), ``task_graph_tasks.json`` (the task graph's rows),
  ``sources.json`` (the prior's data sources, in id order);
* the marker ``sit_model.json`` and a ``README.md`` saying how to load the folder.

:func:`save_model` writes everything but ``config.yaml``; :func:`load_model` builds the model from its own
settings and loads the folder; :meth:`Seq2SeqSIT.from_pretrained` does both from the folder alone.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import Tensor

from sit_causal.fileio import load_yaml
from sit_causal.objective import ObjectiveConfig
from sit_nlp.model.backbones import load_backbone, quiet_transformers
from sit_nlp.model.config import ConfigError, ModelConfig, seq2seq_objective
from sit_nlp.model.factory import build_model
from sit_nlp.model.seq2seq import Seq2SeqSIT, TaskBank

__all__ = ["MARKER", "SIT_WEIGHTS", "SOURCES", "load_model", "read_model_config", "save_model"]

MARKER = "sit_model.json"
"""The file that marks a model folder (method, whether it is the final model, how to load it)."""
SIT_WEIGHTS = "sit_modules.safetensors"
"""The modules and buffers SIT adds to the backbone."""
SOURCES = "sources.json"
"""The prior's data sources, in id order (``prior_context: dataset``)."""
_PLAIN_HF_WARNING = "SIT_WARNING.not_the_trained_SIT_model.load_with_sit_nlp.seq2seq.Seq2SeqSIT.from_pretrained"
_README = """# A SIT model folder

Written by `sit-nlp train` ({what}). Load it with

```python
from sit_nlp.model.seq2seq import Seq2SeqSIT
model = Seq2SeqSIT.from_pretrained("{name}")       # the trained model, in evaluation mode
```

or use it with `sit-nlp eval --checkpoint {name}`. {plain}
"""
_PLAIN_SIT = ("The Hugging Face files here hold the backbone alone: loaded as a plain Hugging Face model it is "
              "**not** the trained SIT model (its decoder was trained on SIT's latent memory), and Hugging Face's "
              "load report lists the marker key `" + _PLAIN_HF_WARNING + "` as a warning.")
_PLAIN_LORA = ("The backbone is stored as a LoRA adapter (`adapter_config.json`, `adapter_model.safetensors`): "
               "the base model is rebuilt from `model.backbone` of `config.yaml` when the folder is loaded.")
_PLAIN_VANILLA = "The Hugging Face files here are the whole trained model (vanilla): plain `from_pretrained` loads it."


def _mark_backbone_weights(out: Path) -> None:
    """Add one marker tensor to a SIT folder's backbone ``model.safetensors``: loading the folder as a plain
    Hugging Face model then reports it as an unexpected key, so the user is warned (our loader ignores it)."""
    weights = out / "model.safetensors"
    if not weights.is_file():  # sharded: the README and sit_model.json carry the marker
        return
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as fh:
        metadata = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    tensors[_PLAIN_HF_WARNING] = torch.zeros(1)
    save_file(tensors, str(weights), metadata=metadata)


def save_model(
    model: Seq2SeqSIT, tokenizer: Any, out_dir: str | Path, state_dict: dict[str, Tensor] | None = None,
    bank: TaskBank | None = None, final: bool = False,
) -> Path:
    """Write ``model`` as a model folder (module docstring), all but ``config.yaml``; returns the folder.

    ``state_dict`` is the full (gathered) state dict when training was distributed/sharded; ``bank``: the
    training instructions (``task_bank.json``, for the learned graph); ``final``: the end-of-training model
    (``final/``) rather than an intermediate checkpoint.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict() if state_dict is None else state_dict
    backbone_sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    lora = model.config.lora is not None
    with quiet_transformers():
        if lora:  # the adapter alone (a peft adapter folder); the base model is rebuilt from model.backbone
            model.backbone.save_pretrained(out, state_dict=backbone_sd, save_embedding_layers=False)
        else:
            model.backbone.save_pretrained(out, state_dict=backbone_sd)
    if model.is_sit and not lora:
        _mark_backbone_weights(out)
    tokenizer.save_pretrained(out)
    marker = {"format": "sit-nlp model folder", "method": model.config.method, "final": final,
              "load": "sit_nlp.model.seq2seq.Seq2SeqSIT.from_pretrained",
              "plain_hf_is_the_trained_model": not model.is_sit and not lora, "lora_adapter": lora}
    (out / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_README.format(
        what="the model at the end of training" if final else "an intermediate checkpoint", name=out.name,
        plain=_PLAIN_LORA if lora else _PLAIN_SIT if model.is_sit else _PLAIN_VANILLA), encoding="utf-8")
    extras = {k: v.contiguous() for k, v in sd.items() if not k.startswith("backbone.")}
    if extras:
        save_file(extras, str(out / SIT_WEIGHTS))
    if bank is not None:
        rows = [{"task": t, "instruction": i} for t, i in zip(bank.tasks, bank.instructions, strict=True)]
        (out / "task_bank.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    if model.is_sit and model.has_task_graph:
        (out / "task_graph_tasks.json").write_text(json.dumps(model.graph_tasks), encoding="utf-8")
    if model.is_sit and model.sources:
        (out / SOURCES).write_text(json.dumps(model.sources), encoding="utf-8")
    return out


def read_model_config(path: str | Path) -> tuple[ModelConfig, ObjectiveConfig, int]:
    """The settings that build a model folder's model, from its ``config.yaml``: the ``model`` section, the
    ``loss`` section (over :func:`seq2seq_objective`) and ``data.max_instruction_len`` (the length the task
    bank's instructions are tokenised to). A missing or malformed file: :class:`ConfigError` (one line)."""
    file = Path(path) / "config.yaml"
    if not file.is_file():
        raise ConfigError(f"{path}: not a trained model directory (no config.yaml)")
    try:
        raw = load_yaml(file.read_text(encoding="utf-8-sig")) or {}
        model = ModelConfig(**(raw.get("model") or {}))
        objective = dataclasses.replace(seq2seq_objective(), **(raw.get("loss") or {}))
        instruction_len = int(raw["data"]["max_instruction_len"])
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError, KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{file}: not the config of a model folder ({err.__class__.__name__}: {err})") from None
    return model, objective, instruction_len


def _load_adapter(model: Seq2SeqSIT, path: Path) -> None:
    """Load a folder's LoRA adapter into ``model``'s ``peft``-wrapped backbone; a missing or mismatched adapter
    is a one-line :class:`ConfigError`."""
    from peft import set_peft_model_state_dict

    file = path / "adapter_model.safetensors"
    if not file.is_file():
        raise ConfigError(f"{path}: model.lora is set but the folder holds no adapter_model.safetensors")
    result = set_peft_model_state_dict(model.backbone, load_file(str(file)))
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [k for k in getattr(result, "missing_keys", []) or [] if "lora_" in k]
    if unexpected or missing:
        raise ConfigError(f"{path}: the LoRA adapter does not match the config (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")


def load_model(path: str | Path, config: ModelConfig, objective: ObjectiveConfig,
               max_instruction_len: int) -> tuple[Seq2SeqSIT, Any]:
    """The model of a model folder, built from ``config`` and ``objective``, in evaluation mode, and its
    tokenizer; ``max_instruction_len``: the length the training instructions are tokenised to (the graph
    row of each, with a fixed task graph)."""
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"{path}: not a trained model directory (no config.yaml)")
    if config.lora is not None:  # the base model from its own spec, the adapter from the folder
        backbone = load_backbone(config.backbone, dropout=config.dropout, seed=config.init_seed, warn_sit_folder=False)
    else:
        backbone = load_backbone(str(path), warn_sit_folder=False)
    sources = json.loads((path / SOURCES).read_text(encoding="utf-8")) if (path / SOURCES).is_file() else []
    model = build_model(config, backbone, objective, sources=sources)
    if config.lora is not None:
        _load_adapter(model, path)
    if model.is_sit:
        extras = load_file(str(path / SIT_WEIGHTS))
        if "task_graph" in extras:
            model.init_task_graph(int(extras["task_graph"].shape[0]))
        missing, unexpected = model.load_state_dict(extras, strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise ConfigError(f"{path}: SIT weights do not match the config (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
        names, bank_file = path / "task_graph_tasks.json", path / "task_bank.json"
        if model.has_task_graph and names.is_file() and bank_file.is_file():
            tasks = json.loads(names.read_text(encoding="utf-8"))
            bank = json.loads(bank_file.read_text(encoding="utf-8"))
            enc = backbone.tokenizer([b["instruction"] for b in bank], truncation=True,
                                     max_length=max_instruction_len, padding=True, return_tensors="pt")
            rows = torch.as_tensor([tasks.index(b["task"]) if b["task"] in tasks else -1 for b in bank])
            model.register_training_instructions(enc["input_ids"], enc["attention_mask"], rows, tasks)
    model.eval()
    return model, backbone.tokenizer
