"""Tests of the executor interface (:mod:`sit_causal.executor`): the same sweep gives the same results
serially, in local processes and on a local Dask cluster."""

from __future__ import annotations

import pytest

from sit_causal.cli.common import run_app
from sit_causal.cli.main import app
from sit_causal.executor import DaskExecutor, LocalExecutor, dask_available, make_executor
from sit_causal.experiments.experiment import SimulateConfig, SyntheticTrainConfig
from sit_causal.experiments.runner import run_simulation
from sit_causal.experiments.validate import run_theory

TINY = SimulateConfig(factors=3, tasks=3, seeds=2, samples=30, test_samples=20, datasets_per_task=2,
                      methods=("ivae", "multitask"), train=SyntheticTrainConfig(steps=8, batch_size=64))
needs_dask = pytest.mark.skipif(not dask_available(), reason="dask distributed is not installed (the [dask] extra)")


def _rows(result: dict) -> list[dict]:
    timing = ("time_s", "train_s", "select_s", "select_stages")
    return [{k: v for k, v in r.items() if k not in timing} for r in result["results"]]


def _square(job: int, report) -> int:
    report(3)
    return job * job


def test_local_executor_serial_runs_every_job_with_progress() -> None:
    done: dict[int, int] = {}
    steps: list[int] = []
    LocalExecutor(1).run(_square, [1, 2, 3], done.__setitem__, progress=steps.append)
    assert done == {0: 1, 1: 4, 2: 9} and sum(steps) == 9


def test_make_executor_refuses_bad_combinations() -> None:
    with pytest.raises(ValueError, match="unknown executor"):
        make_executor("ray")
    with pytest.raises(ValueError, match="--scheduler needs --executor dask"):
        make_executor("local", scheduler="tcp://127.0.0.1:8786")


@needs_dask
def test_dask_local_cluster_gives_the_local_results() -> None:
    local = run_simulation(TINY, quiet=True)
    with DaskExecutor(workers=1, processes=False) as ex:
        done: dict[int, int] = {}
        steps: list[int] = []
        ex.run(_square, [4, 5], done.__setitem__, progress=steps.append, weights=[7, 7])
        assert done == {0: 16, 1: 25} and sum(steps) == 14  # progress by weight as each job ends
        remote = run_simulation(TINY, quiet=True, executor=ex)
        theory_remote = run_theory(["block"], 1, 3, 3, 0, ("simulator",), quiet=True, executor=ex)
    assert _rows(remote) == _rows(local)
    assert remote["summary"][0]["mcc_pearson_mean"] == local["summary"][0]["mcc_pearson_mean"]
    theory_local = run_theory(["block"], 1, 3, 3, 0, ("simulator",), quiet=True)
    assert theory_remote["factors"] == theory_local["factors"]


@pytest.mark.parametrize(("argv", "needle"), [(["--executor", "ray"], "--executor must be one of"),
                                              (["--scheduler", "tcp://127.0.0.1:8786"], "--scheduler needs"),
                                              (["--executor", "dask", "--scheduler", "localhost"],
                                               "--scheduler must be an address")])
@pytest.mark.parametrize("command", ["simulate", "validate"])
def test_executor_options_exit_2(command: str, argv: list[str], needle: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert run_app(app, "sit-causal", [command, *argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
