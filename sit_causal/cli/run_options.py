"""The command-line options ``sit-causal simulate`` and ``sit-causal validate`` share, declared once.

:class:`RunFlags` holds typer ``OptionInfo`` objects that both commands use as the defaults of their
signatures; each command puts the values into one
:class:`~sit_causal.experiments.options.RunOptions`, which checks them.
"""

from __future__ import annotations

import typer

from sit_causal.experiments.options import RunOptions

__all__ = ["RunFlags"]


class RunFlags:
    """The shared options (``--seeds`` is declared by each command: its default and meaning differ)."""

    seed = typer.Option(RunOptions.seed, "--seed", help="first seed (also draws the random graphs)")
    samples = typer.Option(RunOptions.samples, "--samples", help="training samples per dataset")
    datasets_per_task = typer.Option(RunOptions.datasets_per_task, "--datasets-per-task",
                                     help="datasets of each task")
    steps = typer.Option(RunOptions.steps, "--steps", help="Adam steps per model")
    batch_size = typer.Option(RunOptions.batch_size, "--batch-size", help="mini-batch size")
    lr = typer.Option(RunOptions.lr, "--lr", help="Adam learning rate")
    threads = typer.Option(RunOptions.threads, "--threads", help="torch threads per worker")
    workers = typer.Option(RunOptions.workers, "--workers",
                           help="processes running seeds in parallel (min(2, CPU count))")
    align_restarts = typer.Option(RunOptions.align_restarts, "--align-restarts",
                                  help="random rotations of the selection step")
    align_steps = typer.Option(RunOptions.align_steps, "--align-steps",
                               help="steps of the selection step's refinement (0 = count search only)")
    executor = typer.Option(RunOptions.executor, "--executor",
                            help="where the (graph, seed) jobs run: local (processes of this machine, --workers) "
                                 "or dask (Dask distributed; the [dask] extra)")
    scheduler = typer.Option(RunOptions.scheduler, "--scheduler", metavar="ADDRESS",
                             help="--executor dask: the scheduler's address (tcp://host:port); none starts a "
                                  "LocalCluster of --workers processes")
    as_json = typer.Option(RunOptions.as_json, "--json", help="print the results object as one JSON object")
    quiet = typer.Option(RunOptions.quiet, "--quiet", help="no progress output")
