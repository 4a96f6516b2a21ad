"""Zero-shot evaluation of a trained model: predictions JSONL for ``sit-nlp score``.

For every record of the split, one prediction line (the schema of :mod:`sit_nlp.evaluation.scoring`)::

    {"task", "id", "prediction", "references", "category", "group", "paraphrase",
     "options", "option_scores", "option_lengths", "label"}   # the last four for multiple-choice records only

* ``prediction``: greedy (or beam, ``--num-beams``) generation from the instruction-formatted source
  (:func:`sit_nlp.data.batching.format_source`), for SIT through the selected factors
  (:meth:`sit_nlp.model.seq2seq.Seq2SeqSIT.generate`), for vanilla through the encoder;
* ``option_scores[k]`` = ``log p(option_k + eos | source)``, summed over the option's tokens, from the
  model's teacher-forced forward (:meth:`sit_nlp.model.seq2seq.Seq2SeqSIT.sequence_log_likelihood`); the argmax is
  the rank-classification answer (T0's protocol), ``label`` the correct option; ``option_lengths[k]`` its
  target tokens, for the length-normalised answer ``argmax_k option_scores[k] / option_lengths[k]``;
* ``group`` and ``paraphrase`` (the instruction wording's index, :mod:`sit_nlp.data.paraphrase`) when the record
  has them.

Batches are built in file order and written as they are done (a temporary file renamed at the end): no
logits or generated tensors are kept beyond one batch. Option scoring flattens (record, option) pairs of a
batch into batches of at most ``batch_size`` pairs.

The command, ``sit-nlp eval``, is :mod:`sit_nlp.cli.evaluate`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from sit_causal.fileio import atomic_open
from sit_causal.inputs import UsageFailure
from sit_nlp.data.records import InstructionRecord

__all__ = [
    "check_device",
    "check_device_name",
    "evaluate_records",
    "option_log_likelihoods",
    "option_token_counts",
    "resolve_checkpoint",
    "resolve_split",
]

_DEVICE = re.compile(r"(cpu|mps|cuda(:\d+)?)")


def resolve_checkpoint(path: Path) -> Path:
    """``path`` itself if it holds a saved model (``config.yaml`` + weights), else ``path/final``."""
    def is_model(p: Path) -> bool:
        return (p / "config.yaml").is_file() and any(p.glob("*.safetensors"))

    if is_model(path):
        return path
    if is_model(path / "final"):
        return path / "final"
    raise UsageFailure(f"{path}: no trained model here (expected config.yaml and weights, or a final/ folder)")


def _builtin(spec: str) -> Path:
    """``builtin:NAME`` as training resolves it (:func:`sit_nlp.data.records.resolve_data_path`)."""
    from sit_nlp.data.records import resolve_data_path  # the one resolver; imported only for builtin: names

    path = resolve_data_path(spec)
    if not path.is_file():
        known = ", ".join(sorted(f"builtin:{p.name}" for p in path.parent.glob("*.jsonl")))
        raise UsageFailure(f"--data {spec}: no such built-in file (built-in: {known or 'none'})")
    return path


def resolve_split(split: str, data: Path | str | None, train_file: str) -> Path:
    """The records file: ``data`` if it is a file (``builtin:NAME`` = a file in ``sit_nlp/assets/``, as for
    training), else ``data/<split>.jsonl``; without ``data``, the folder of the training file named in the
    checkpoint's config (the ``sit-nlp data build`` output)."""
    if data is not None and str(data).startswith("builtin:"):
        return _builtin(str(data))
    data = Path(data) if data is not None else None
    if data is not None and data.is_file():
        return data
    if data is None:
        if train_file.startswith("builtin:"):
            from sit_nlp.data.records import ASSETS

            known = sorted(f"builtin:{q.name}" for q in ASSETS.glob("*.jsonl") if f"builtin:{q.name}" != train_file)
            raise UsageFailure(f"the checkpoint was trained on {train_file}, which has no {split} split: pass --data "
                               f"with the {split} records (a built mixture folder, a JSONL file, or one of "
                               f"{', '.join(known) or 'the built-in files'})")
        data = Path(train_file).parent
    path = data / f"{split}.jsonl"
    if not path.is_file():
        raise UsageFailure(f"{path}: no such split file (build the mixture with `sit-nlp data build`)")
    return path


def check_device_name(device: str | None) -> None:
    """Refuse (one line) a ``--device`` that is not ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; imports nothing."""
    if device is not None and not _DEVICE.fullmatch(device):
        raise UsageFailure(f"--device {device!r}: unknown device; use cpu, cuda, cuda:N or mps")


def check_device(device: str | None) -> str:
    """The device to run on, refused (one line) unless it is ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` and
    present here; ``None`` is ``cuda`` when available, else ``cpu``. Imports torch (not the model)."""
    check_device_name(device)
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageFailure(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise UsageFailure(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UsageFailure("--device mps: MPS is not available on this machine; use --device cpu")
    return device


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _to(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device) for k, v in batch.items()}


def option_log_likelihoods(
    model: Any, collator: Any, records: Sequence[InstructionRecord], batch_size: int, device: Any,
    mask: Any = None,
) -> list[list[float]]:
    """``log p(option + eos | source)`` for every option of every record: one list per record.

    Arguments:
        model: a :class:`~sit_nlp.model.seq2seq.Seq2SeqSIT` in eval mode.
        collator: the :class:`~sit_nlp.data.batching.Seq2SeqCollator` of the checkpoint.
        records: multiple-choice records (``options`` set).
        batch_size: (record, option) pairs per forward pass.
        mask: SIT only, an explicit selection mask ``(n,)`` for every record (the selector's otherwise).
    """
    pairs = [replace(r, output=o, references=(o,)) for r in records for o in (r.options or ())]
    flat: list[float] = []
    for chunk in _chunks(pairs, batch_size):
        batch = _to(collator(collator.tokenize(chunk)), device)
        scores = model.sequence_log_likelihood(batch, mask=None if mask is None else mask.to(device))
        flat.extend(scores.float().cpu().tolist())
    out, pos = [], 0
    for r in records:
        k = len(r.options or ())
        out.append(flat[pos:pos + k])
        pos += k
    return out


def option_token_counts(collator: Any, records: Sequence[InstructionRecord]) -> list[list[int]]:
    """Target tokens (eos included) of every option of every record, as scored by
    :func:`option_log_likelihoods`: the denominators of length-normalised rank classification."""
    out = []
    for r in records:
        pairs = [replace(r, output=o, references=(o,)) for o in (r.options or ())]
        out.append([len(ex.target) for ex in collator.tokenize(pairs)])
    return out


def evaluate_records(
    model: Any,
    tokenizer: Any,
    collator: Any,
    records: Sequence[InstructionRecord],
    out: Path,
    batch_size: int = 16,
    generate_kwargs: dict[str, Any] | None = None,
    device: Any = "cpu",
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write one prediction line per record to ``out`` (temporary file, then rename: an interrupted run
    leaves no partial file); returns the count. Prompts are the collator's (a decoder-only collator with a
    chat template renders them with it, :mod:`sit_nlp.data.decoder_batching`), and generation then stops at
    its :attr:`~sit_nlp.data.decoder_batching.DecoderCollator.stop_ids` unless ``generate_kwargs`` names
    ``eos_token_id``."""
    import torch

    kwargs = dict(generate_kwargs or {})
    stop = getattr(collator, "stop_ids", None)  # a chat template's end of turn (and eos): where the answer ends
    if stop and "eos_token_id" not in kwargs:
        kwargs["eos_token_id"] = stop
    n = 0
    with atomic_open(out) as fh, torch.no_grad():
        for chunk in _chunks(records, batch_size):
            batch = _to(collator(collator.tokenize(chunk)), device)
            ids = model.generate(batch, **kwargs)
            texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
            mc = [r for r in chunk if r.options]
            scores = iter(option_log_likelihoods(model, collator, mc, batch_size, device))
            lengths = iter(option_token_counts(collator, mc))
            for r, text in zip(chunk, texts, strict=True):
                line: dict[str, Any] = {"task": r.task, "id": r.id, "prediction": text.strip(),
                                        "references": list(r.all_references), "category": r.category}
                for key in ("group", "paraphrase"):
                    if key in r.extra:
                        line[key] = r.extra[key]
                if r.options:
                    line.update(options=list(r.options), option_scores=next(scores), label=r.output,
                                option_lengths=next(lengths))
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")
            n += len(chunk)
            if progress is not None:
                progress(len(chunk))
    return n
