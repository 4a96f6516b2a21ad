"""The training configuration: typed dataclasses, a YAML file, ``--key=value`` overrides.

A config has five sections (``model``, ``data``, ``loss``, ``graph``, ``train``): the model's own
(:class:`~sit_nlp.model.config.ModelConfig`, :class:`~sit_nlp.model.config.GraphConfig` and the objective,
:mod:`sit_nlp.model.config`) composed with the data and the loop's (:class:`DataConfig`, :class:`TrainConfig`,
here). A YAML file gives any subset of their keys, and command-line overrides name a key by its dotted
path (``--train.lr=1e-4``) or, when the leaf name is unique across sections, by the leaf alone
(``--lr=1e-4``). Values are parsed as YAML scalars (``yaml.safe_load``) and checked against the field's
type. An unknown key is one line of error with a suggestion (``difflib``), which the CLI prints with exit
code 2. The resolved config is written as ``config.yaml`` next to every checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sit_causal.fileio import load_yaml, write_text_atomic
from sit_causal.objective import ObjectiveConfig
from sit_nlp.model.config import ConfigError, GraphConfig, ModelConfig, latent_config, seq2seq_objective

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "TrainConfig",
    "apply_overrides",
    "check_config",
    "check_limits",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "load_saved_config",
    "save_config",
]


@dataclass
class DataConfig:
    """Where the instruction records are (``builtin:NAME`` = a file in ``sit_nlp/assets/``)."""

    train_file: str = "builtin:tiny_train.jsonl"
    eval_file: str | None = "builtin:tiny_eval.jsonl"
    max_source_len: int = 512
    max_target_len: int = 128
    max_instruction_len: int = 128  # the default mixture's longest definition + wording: 110 MiniLM tokens
    length_group_size: int = 50  # length-grouped batches: sort within windows of this many batches
    # k > 0: every task in a micro-batch holds >= min(k, its sources) data sources (the invariance term
    # compares a task's risk across sources within a batch); batches are then not length-grouped
    sources_per_batch: int = 0
    # decoder-only prompts: the tokenizer's chat template (auto: when it has one; none: plain text; always:
    # refuse a tokenizer without one); sit_nlp.data.decoder_batching. A saved config without the key: none
    chat_template: Literal["auto", "none", "always"] = "auto"


@dataclass
class TrainConfig:
    """The loop: optimisation, precision, logging and checkpoints."""

    out_dir: str = "runs/tiny"
    seed: int = 0
    batch_size: int = 8  # per process, per micro-batch
    grad_accum: int = 1
    max_steps: int = 100  # optimizer steps
    lr: float = 1e-3
    latent_lr: float | None = None  # learning rate of the modules SIT adds to the backbone (None: lr)
    weight_decay: float = 0.01
    warmup_steps: int = 10
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float = 1.0
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    compile: bool = False
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    tensorboard: bool = False
    peak_tflops: float | None = None  # MFU denominator per process; None: measured on a GPU
    stop_after: int | None = None  # stop (without the final save) after this many steps, as a killed job would
    quiet: bool = False
    threads: int | None = None  # torch.set_num_threads for the run (None: torch's default); CPU runs


@dataclass
class Config:
    """A run's whole config: the model's sections (``model``, ``loss``, ``graph``) with ``data`` and ``train``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: ObjectiveConfig = field(default_factory=seq2seq_objective)
    graph: GraphConfig = field(default_factory=GraphConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


_SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "loss": ObjectiveConfig, "graph": GraphConfig,
                              "train": TrainConfig}


def _all_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, cls in _SECTIONS.items() for f in dataclasses.fields(cls)]


def _unknown(key: str) -> ConfigError:
    keys = _all_keys()
    candidates = keys + [k.split(".", 1)[1] for k in keys]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {key!r}{hint}")


_ALIASES = {"graph.from": "graph.from_file"}  # a key that is a Python keyword


def _resolve_key(key: str) -> tuple[str, str]:
    key = _ALIASES.get(key, key)
    if "." in key:
        section, name = key.split(".", 1)
        if section in _SECTIONS and name in {f.name for f in dataclasses.fields(_SECTIONS[section])}:
            return section, name
        raise _unknown(key)
    owners = [s for s, cls in _SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)}]
    if len(owners) == 1:
        return owners[0], key
    if len(owners) > 1:
        raise ConfigError(f"config key {key!r} is ambiguous: use one of {', '.join(f'{o}.{key}' for o in owners)}")
    raise _unknown(key)


def _coerce_section(key: str, value: Any, tp: type) -> Any:
    """A nested dataclass (``model.lora``) from a mapping: each key checked against its field, unknown keys
    rejected, missing ones at their defaults."""
    if isinstance(value, tp):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping (or null), got {value!r}")
    hints = typing.get_type_hints(tp)
    out = tp()
    for name, item in value.items():
        if name not in hints:
            close = difflib.get_close_matches(str(name), list(hints), n=1, cutoff=0.6)
            hint = f" (did you mean {key + '.' + close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {key + '.' + str(name)!r}{hint}")
        setattr(out, name, _coerce(f"{key}.{name}", item, hints[name]))
    return out


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp`` (int, float, bool, str, Literal, X | None, a nested
    dataclass given as a mapping)."""
    if dataclasses.is_dataclass(tp):
        return _coerce_section(key, value, tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - only the types above are used


def _set(cfg: Config, section: str, name: str, value: Any) -> None:
    obj = getattr(cfg, section)
    hints = typing.get_type_hints(type(obj))
    setattr(obj, name, _coerce(f"{section}.{name}", value, hints[name]))


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build a :class:`Config` from nested ``{section: {key: value}}`` (unknown keys rejected)."""
    if not isinstance(raw, dict):
        raise ConfigError("a config must be a mapping of sections (model, data, loss, graph, train)")
    cfg = Config()
    for section, values in raw.items():
        if section not in _SECTIONS:
            raise _unknown(str(section))
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
        for name, value in values.items():
            sec, key = _resolve_key(f"{section}.{name}")
            _set(cfg, sec, key, value)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    return {s: dataclasses.asdict(getattr(cfg, s)) for s in _SECTIONS}


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``--key=value`` strings (the leading dashes are optional) in order; returns ``cfg``."""
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ConfigError(f"override {item!r} must look like --key=value")
        key, raw = text.split("=", 1)
        try:
            value = load_yaml(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        key = key.replace("-", "_")
        if key.count(".") >= 2:  # a key of a nested section: --model.lora.rank=16
            outer, _, leaf = key.rpartition(".")
            section, name = _resolve_key(outer)
            current = getattr(getattr(cfg, section), name)
            merged = dataclasses.asdict(current) if dataclasses.is_dataclass(current) else {}
            _set(cfg, section, name, {**merged, leaf: value})
            continue
        section, name = _resolve_key(key)
        _set(cfg, section, name, value)
    return cfg


def check_config(cfg: Config) -> Config:
    """Range checks a type check cannot do; the first bad value is a one-line :class:`ConfigError`."""
    tc, dc, mc, gc = cfg.train, cfg.data, cfg.model, cfg.graph
    for key, value in (("train.max_steps", tc.max_steps), ("train.batch_size", tc.batch_size),
                       ("train.grad_accum", tc.grad_accum), ("model.n_factors", mc.n_factors),
                       ("model.latent_hidden", mc.latent_hidden), ("data.max_source_len", dc.max_source_len),
                       ("data.max_target_len", dc.max_target_len), ("data.max_instruction_len", dc.max_instruction_len),
                       ("model.source_max_len", mc.source_max_len), ("graph.examples_per_task", gc.examples_per_task),
                       ("graph.energy_batch_size", gc.energy_batch_size), ("train.threads", tc.threads)):
        if value is not None and value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    for key, value in (("train.warmup_steps", tc.warmup_steps), ("train.log_every", tc.log_every),
                       ("train.eval_every", tc.eval_every), ("train.save_every", tc.save_every),
                       ("train.weight_decay", tc.weight_decay), ("train.keep_checkpoints", tc.keep_checkpoints),
                       ("model.source_decoder_layers", mc.source_decoder_layers)):
        if value < 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    for key, value in (("train.lr", tc.lr), ("train.latent_lr", tc.latent_lr)):
        if value is not None and (not value > 0 or value == float("inf")):
            raise ConfigError(f"{key} must be a positive number, got {value}")
    if mc.tokenizer_vocab < 260:
        raise ConfigError(f"model.tokenizer_vocab must be >= 260 (4 special tokens + 256 bytes), "
                          f"got {mc.tokenizer_vocab}")
    if mc.temperature <= 0:
        raise ConfigError(f"model.temperature must be > 0, got {mc.temperature}")
    if gc.find_at is not None and not 0 <= gc.find_at < 1:
        raise ConfigError(f"graph.find_at must be in [0, 1) (or null), got {gc.find_at}")
    if gc.from_file is not None and not Path(gc.from_file).is_file():
        raise ConfigError(f"graph.from: {gc.from_file}: no such graph file")
    if not 0 < gc.coverage <= 1:
        raise ConfigError(f"graph.coverage must be in (0, 1], got {gc.coverage}")
    try:
        dataclasses.replace(cfg.loss)  # re-runs ObjectiveConfig's own checks
    except ValueError as err:
        raise ConfigError(f"loss: {err}") from None
    if mc.residual_fade is not None and not 0 <= mc.residual_fade <= 1:
        raise ConfigError(f"model.residual_fade must be in [0, 1] (or null), got {mc.residual_fade}")
    if mc.lora is not None:
        if not 1 <= mc.lora.rank <= 4096:
            raise ConfigError(f"model.lora.rank must be in [1, 4096], got {mc.lora.rank}")
        if not mc.lora.alpha > 0:
            raise ConfigError(f"model.lora.alpha must be > 0, got {mc.lora.alpha}")
        if not 0 <= mc.lora.dropout < 1:
            raise ConfigError(f"model.lora.dropout must be in [0, 1), got {mc.lora.dropout}")
        if mc.architecture == "encoder-decoder":
            raise ConfigError("model.lora is for decoder-only backbones (model.architecture: decoder-only or auto)")
    if dc.chat_template == "always" and mc.architecture == "encoder-decoder":
        raise ConfigError("data.chat_template: always is for decoder-only backbones (use auto or none)")
    if not 0 <= mc.prior_context_dropout < 1:
        raise ConfigError(f"model.prior_context_dropout must be in [0, 1), got {mc.prior_context_dropout}")
    if not mc.logvar_min < mc.logvar_max:
        raise ConfigError(f"model.logvar_min must be < model.logvar_max, got {mc.logvar_min} >= {mc.logvar_max}")
    try:
        latent_config(mc, width=1, factor_dim=1)
    except ValueError as err:
        raise ConfigError(f"model: {err}") from None
    return check_limits(cfg)


# the largest value of each integer setting: a run beyond it would not fit a machine, or would stall. The
# selection step's UIC repair grows steeply with the factors: on 8 tasks, 64 factors take 4 s, 128 take 14 s,
# 256 take 100 s (2 CPU cores)
MAX_N_FACTORS = 64
_INT_LIMITS: dict[str, tuple[int, int]] = {
    "train.seed": (0, 2**32 - 1), "model.init_seed": (0, 2**32 - 1),
    "train.batch_size": (1, 4096), "train.grad_accum": (1, 4096), "train.max_steps": (1, 10**9),
    "model.n_factors": (1, MAX_N_FACTORS), "model.factor_layer": (1, 4096),
    "model.factor_dim": (1, 65536), "model.latent_hidden": (1, 65536),
    "model.tokenizer_vocab": (260, 2**20), "model.source_decoder_layers": (0, 64),
    "model.source_decoder_heads": (1, 1024), "model.source_max_len": (1, 65536),
    "model.task_bank_size": (1, 65536), "model.logits_chunk": (1, 2**24),
    "data.max_source_len": (1, 65536), "data.max_target_len": (1, 65536),
    "data.max_instruction_len": (1, 65536), "data.length_group_size": (1, 10**6), "data.sources_per_batch": (0, 4096),
    "graph.examples_per_task": (1, 10**6), "graph.energy_batch_size": (1, 4096),
    "train.warmup_steps": (0, 10**9), "train.log_every": (0, 10**9), "train.eval_every": (0, 10**9),
    "train.save_every": (0, 10**9), "train.keep_checkpoints": (0, 10**6), "train.stop_after": (1, 10**9),
    "train.threads": (1, 4096),
}


def check_limits(cfg: Config) -> Config:
    """The range of every integer setting (:data:`_INT_LIMITS`) and the floats no type check bounds: the
    first bad value is a one-line :class:`ConfigError` (floats are already finite, :func:`_coerce`)."""
    for key, (low, high) in _INT_LIMITS.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is not None and not low <= value <= high:
            why = " (the selection step's UIC repair would take minutes)" if key == "model.n_factors" else ""
            raise ConfigError(f"{key} must be in [{low}, {high}], got {value}{why}")
    if not cfg.train.max_grad_norm > 0:
        raise ConfigError(f"train.max_grad_norm must be > 0, got {cfg.train.max_grad_norm}")
    if cfg.train.peak_tflops is not None and not cfg.train.peak_tflops > 0:
        raise ConfigError(f"train.peak_tflops must be > 0 (or null), got {cfg.train.peak_tflops}")
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (``None``: the defaults), apply the overrides, check the values."""
    if path is None:
        cfg = Config()
    else:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"{path}: is a folder, not a config file")
        try:
            raw = load_yaml(path.read_text(encoding="utf-8-sig"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text file (not UTF-8)") from None
        except OSError as err:
            raise ConfigError(f"{path}: cannot read ({err.strerror or err.__class__.__name__})") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        cfg = config_from_dict(raw or {})
    return check_config(apply_overrides(cfg, overrides or []))


def load_saved_config(path: str | Path) -> Config:
    """The config a run or model folder saved (``config.yaml``), as :func:`load_config` reads it, except that a
    file without ``data.chat_template`` (written before the setting existed, when prompts were plain text)
    reads as ``none``, so a saved run is evaluated with the prompts it was trained on."""
    cfg = load_config(path)
    raw = load_yaml(Path(path).read_text(encoding="utf-8-sig")) or {}
    data = raw.get("data") if isinstance(raw, dict) else None
    if not isinstance(data, dict) or "chat_template" not in data:
        cfg.data.chat_template = "none"
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (loadable by :func:`load_config`)."""
    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
