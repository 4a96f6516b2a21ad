"""``sit-nlp train``: the command line of :func:`sit_nlp.training.loop.train`.

Under ``accelerate launch``: ``accelerate launch [--config_file ...] -m sit_nlp.cli.main train --config ...``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from sit_causal.cli.common import interrupted
from sit_causal.inputs import UsageFailure
from sit_nlp.data.records import RecordError
from sit_nlp.model.backbones import BackboneError
from sit_nlp.training import loop
from sit_nlp.training.checkpoint import interrupted_line
from sit_nlp.training.config import ConfigError, load_config

__all__ = ["train_command"]


def train_command(
    ctx: typer.Context,
    config: Path = typer.Option(None, "--config", "-c", help="YAML config (configs/tiny.yaml, ...)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in train.out_dir."),
    resume_from: Path | None = typer.Option(None, "--resume-from",
                                            help="With --resume: this checkpoint-N folder instead of the latest."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run already in train.out_dir."),
    allow_config_change: bool = typer.Option(False, "--allow-config-change",
                                             help="With --resume: resume although the config differs."),
    threads: int | None = typer.Option(None, "--threads", help="torch threads (= --train.threads=N)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or log lines (metrics.jsonl still written)."),
    json_out: bool = typer.Option(False, "--json", help="Print the final metrics as one JSON object."),
) -> None:
    """Train SIT or vanilla; extra --key=value arguments override the config (e.g. --train.lr=3e-4)."""
    try:
        if threads is not None and threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        cfg = load_config(config, list(ctx.args))
        if quiet or json_out:
            cfg.train.quiet = True
        if threads is not None:
            cfg.train.threads = threads
        result = loop.train(cfg, resume=resume, overwrite=overwrite, allow_config_change=allow_config_change,
                            resume_from=resume_from)
    except (ConfigError, RecordError, BackboneError) as err:
        raise UsageFailure(str(err)) from None
    except KeyboardInterrupt:
        raise interrupted("sit-nlp", interrupted_line(Path(cfg.train.out_dir))) from None
    if json_out and int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result))

