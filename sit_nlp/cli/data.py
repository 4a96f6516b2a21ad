"""``sit-nlp data``: fetch BIG-bench, build mixtures, convert Hugging Face datasets, train a tokenizer.

Each command checks its arguments and hands the work to the library module of its data
(:mod:`sit_nlp.data.bigbench`, :mod:`sit_nlp.data.mixture`, :mod:`sit_nlp.data.hf_adapters`,
:mod:`sit_nlp.data.tokenizer`). Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

import typer

from sit_causal.fileio import check_output_dir, replace_directory
from sit_causal.inputs import UsageFailure, safe_text
from sit_nlp.data.bigbench import fetch
from sit_nlp.data.hf_adapters import ADAPTERS, load_hf_records
from sit_nlp.data.mixture import (
    TaskSpec,
    build_mixture,
    counts_table,
    load_mixture,
    refuse_tracked_output,
    write_mixture,
)
from sit_nlp.data.records import RecordError, read_records, resolve_data_path, write_records
from sit_nlp.data.tokenizer import SPECIAL_TOKENS, record_texts, train_bpe_tokenizer

__all__ = ["fetch_command", "hf_command", "mixture_build_command", "tokenizer_command"]


def fetch_command(
    cache: Path | None = typer.Option(None, "--cache", help="cache directory (default $SIT_CACHE/bigbench "
                                      "or ~/.cache/sit/bigbench)"),
    source: Path | None = typer.Option(None, "--from", help="an existing BIG-bench directory or archive "
                                       "(sdist .tar.gz, wheel, zip) instead of installing from PyPI"),
    force: bool = typer.Option(False, "--force", help="replace an existing cache"),
    as_json: bool = typer.Option(False, "--json", help="print the fetch manifest as one JSON object"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress messages"),
) -> None:
    """Fetch BIG-bench (bigbench==1.0.0) into a cache outside the repository and verify it."""
    log = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr))
    manifest = fetch(cache, source=source, force=force, log=log)
    if as_json:
        print(json.dumps(manifest))
    else:
        print(f"BIG-bench {manifest['status']}: {manifest['n_task_files']} task files under {manifest['tasks_root']}")


def mixture_build_command(
    mixture: Path = typer.Option(..., "--mixture", help="mixture YAML (configs/mixtures/NAME.yaml)"),
    out: Path = typer.Option(..., "--out", help="output directory for {train,validation,heldout}.jsonl"),
    cache: Path | None = typer.Option(None, "--cache", help="BIG-bench tree (default: the mixture's "
                                      "bigbench_root, else the fetched cache)"),
    seed: int | None = typer.Option(None, "--seed", help="override the mixture's seed"),
    force: bool = typer.Option(False, "--force", help="replace an existing output directory"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as one JSON object"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Build train / validation / held-out JSONL splits from a mixture file."""
    from tqdm import tqdm

    if seed is not None and not 0 <= seed < 2**32:
        raise UsageFailure(f"--seed must be in [0, {2**32 - 1}], got {seed}")
    mix = load_mixture(mixture)

    def progress(tasks: Iterable[TaskSpec]) -> Iterable[TaskSpec]:
        return tqdm(list(tasks), desc="tasks", unit="task", file=sys.stderr, disable=quiet)

    if out.exists() and not force:  # fail before the (long) load
        raise UsageFailure(f"{out} already exists; pass --force to replace it")
    check_output_dir(out, "--out", replace=True)  # a file, a file as parent, no write permission
    if any(t.source == "bigbench" for t in mix.tasks):
        refuse_tracked_output(out)
    built = build_mixture(mix, cache=cache, seed=seed, progress=progress)
    write_mixture(built, out, force=force)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    if as_json:
        print(json.dumps(manifest))
    else:
        print(counts_table(manifest))
        print(f"wrote {safe_text(out)}/{{train,validation,heldout}}.jsonl and manifest.json")


def hf_command(
    name: str = typer.Argument(..., help=f"adapter: {', '.join(ADAPTERS)}"),
    out: Path = typer.Option(..., "--out", help="output JSONL of instruction records"),
    split: str = typer.Option("validation", "--split", help="dataset split"),
    data_files: list[Path] | None = typer.Option(None, "--data-files", help="local files in the dataset's "
                                                 "column schema (repeatable); default: the hub"),
    max_examples: int | None = typer.Option(None, "--max", help="seeded random subset of this size"),
    seed: int = typer.Option(0, "--seed"),
    hub_path: str | None = typer.Option(None, "--hub-path", help="override the adapter's hub dataset"),
    hub_config: str | None = typer.Option(None, "--hub-config", help="override the hub config name"),
    revision: str | None = typer.Option(None, "--revision", help="hub revision (e.g. refs/convert/parquet)"),
) -> None:
    """Convert a Hugging Face dataset (Gigaword, XSum, CNN/DailyMail, SuperGLUE RTE) to instruction JSONL."""
    records = load_hf_records(name, split, data_files=data_files or None, max_examples=max_examples, seed=seed,
                              hub_path=hub_path, hub_config=hub_config, revision=revision)
    if not records:
        raise UsageFailure(f"{name}: no usable rows in split {split!r}")
    n = write_records(records, out)
    print(f"wrote {n} {name} records to {out}")


def tokenizer_command(
    data: Path = typer.Option(..., "--data", help="training records (JSONL) or a built mixture folder"),
    out: Path = typer.Option(..., "--out", help="folder to write the tokenizer into (save_pretrained layout)"),
    vocab: int = typer.Option(16384, "--vocab", help="BPE vocabulary size (>= 260)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a tokenizer already in --out"),
) -> None:
    """Train the byte-level BPE tokenizer of the *-random presets on training records (offline)."""
    if vocab < len(SPECIAL_TOKENS) + 256:
        raise UsageFailure(f"--vocab must be >= {len(SPECIAL_TOKENS) + 256}, got {vocab}")
    source = data / "train.jsonl" if data.is_dir() else data
    if not source.is_file():
        raise UsageFailure(f"--data {data}: no such file (or folder with train.jsonl)")
    check_output_dir(out, "--out", must_be_empty=not overwrite, replace=True)
    try:
        records = read_records(resolve_data_path(str(source)))
    except RecordError as err:
        raise UsageFailure(str(err)) from None
    tok = train_bpe_tokenizer(record_texts(records), vocab)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tok.save_pretrained(str(tmp))
    replace_directory(tmp, out)
    print(f"wrote {out} ({len(tok)} entries, trained on {len(records)} records of {source})", file=sys.stderr)

