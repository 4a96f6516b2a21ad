"""A testbed job's training config: every method trains with the shared settings plus its own few changes.

:data:`SHARED` and :data:`CHANGES` are the reference: the nested config every job trained with, and what each
method changes in it; :func:`sit_nlp.testbed.jobs.training_config` must give the same checked config."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from sit_nlp.testbed.jobs import TESTBED_METHODS, MethodSpec, TestbedJob, plan_jobs, training_config
from sit_nlp.training.config import check_config, config_from_dict

REPO = Path(__file__).resolve().parents[1]

# the settings every method shares (data = the testbed folder, out = the job's folder)
SHARED: dict[str, dict[str, Any]] = {
    "model": {"backbone": "DATA/model", "method": "sit", "init_seed": "SEED", "n_factors": 8, "factor_dim": 16,
              "latent_hidden": 64, "source_decoder_layers": 1, "source_max_len": 16, "task_bank_size": 64,
              "factor_input": "input", "prior_context": "dataset"},
    "data": {"train_file": "DATA/train.jsonl", "eval_file": "DATA/validation.jsonl", "max_source_len": 64,
             "max_target_len": 12, "max_instruction_len": 32, "length_group_size": 1},
    "graph": {"find_at": 0.5, "examples_per_task": 32},
    "train": {"out_dir": "OUT", "seed": "SEED", "batch_size": "BATCH", "max_steps": "STEPS", "lr": "LR",
              "warmup_steps": "STEPS/20", "log_every": "STEPS/10", "save_every": 0, "keep_checkpoints": 1,
              "quiet": True, "threads": "THREADS"},
}

# what each method changes
CHANGES: dict[str, dict[str, dict[str, Any]]] = {
    "vanilla": {"model": {"method": "vanilla"}},
    "sit": {},
    "sit-no-uic": {"loss": {"w_uic": 0.0}},
    "sit-no-distinction": {"loss": {"w_distinction": 0.0}},
    "sit-open": {"model": {"selection": "none"}, "graph": {"find_at": None}},
    "sit-input": {"model": {"factor_input": "input"}},
    "sit-formatted": {"model": {"factor_input": "formatted"}},
    "sit-true-graph": {"graph": {"from_file": "DATA/graph.json", "find_at": None}},
    "sit-prior-instruction": {"model": {"prior_context": "instruction"}},
    "sit-prior-none": {"model": {"prior_context": "none"}},
    "sit-sentence": {"model": {"factor_pool": "sentence", "factor_dim": 4}},
    "sit-sentence-1d": {"model": {"factor_pool": "sentence", "factor_dim": 1}},
    "sit-invariant": {"loss": {"invariance": "vrex", "w_invariance": 10.0}, "data": {"sources_per_batch": 2}},
    "vanilla-vrex": {"model": {"method": "vanilla"}, "loss": {"invariance": "vrex", "w_invariance": 10.0},
                     "data": {"sources_per_batch": 2}},
    "vanilla-irm": {"model": {"method": "vanilla"}, "loss": {"invariance": "irm", "w_invariance": 1.0},
                    "data": {"sources_per_batch": 2}},
    "sit-invariant-select": {"loss": {"invariance": "vrex", "w_invariance": 10.0}, "data": {"sources_per_batch": 2},
                             "graph": {"statistic": "invariant", "examples_per_task": 512}},
}


def _expected(method: str, data: Path, out: Path, seed: int, steps: int, threads: int | None, batch_size: int,
              lr: float) -> dict[str, dict[str, Any]]:
    """The nested config of one job: :data:`SHARED` with the placeholders filled, then the method's changes."""
    fill = {"SEED": seed, "BATCH": batch_size, "STEPS": steps, "LR": lr, "STEPS/20": max(1, steps // 20),
            "STEPS/10": max(1, steps // 10), "THREADS": threads, "OUT": str(out)}

    def value(v: Any) -> Any:
        if isinstance(v, str) and v.startswith("DATA/"):
            return str(data / v[len("DATA/"):])
        return fill.get(v, v) if isinstance(v, str) else v

    nested = {s: {k: value(v) for k, v in values.items()} for s, values in SHARED.items()}
    for section, values in CHANGES[method].items():
        nested.setdefault(section, {}).update({k: value(v) for k, v in values.items()})
    return nested


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "tb"
    folder.mkdir()
    shutil.copy(REPO / "examples" / "graph_uic.json", folder / "graph.json")
    return folder


def test_every_method_has_its_reference() -> None:
    assert list(CHANGES) == list(TESTBED_METHODS)
    assert all(isinstance(spec, MethodSpec) for spec in TESTBED_METHODS.values())


@pytest.mark.parametrize("method", list(CHANGES))
@pytest.mark.parametrize(("seed", "steps", "threads", "batch_size", "lr"), [(0, 3000, 1, 32, 2e-3),
                                                                          (3, 15, None, 8, 1e-3)])
def test_each_method_trains_with_the_shared_settings_and_its_changes(data: Path, tmp_path: Path, method: str,
                                                                     seed: int, steps: int, threads: int | None,
                                                                     batch_size: int, lr: float) -> None:
    job = TestbedJob(method, seed, data, tmp_path, steps, batch_size, lr, threads)
    assert job.folder == tmp_path / "runs" / method / f"seed{seed}"
    expected = check_config(config_from_dict(_expected(method, data, job.folder, seed, steps, threads, batch_size, lr)))
    assert training_config(job) == expected


def test_jobs_are_planned_seed_major_with_resolved_folders(data: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    jobs = plan_jobs(Path("tb"), Path("out"), ["vanilla", "sit"], 2, 10, 8, 1e-3, 1, (2,), 3)
    assert [(j.method, j.seed) for j in jobs] == [("vanilla", 0), ("sit", 0), ("vanilla", 1), ("sit", 1)]
    assert all(j.data == data.resolve() and j.out == (tmp_path / "out").resolve() for j in jobs)
    assert jobs[0].fewshot_ks == (2,) and jobs[0].fewshot_steps == 3 and jobs[0].threads == 1


def test_an_unknown_method_is_no_job(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown testbed method 'sitt'"):
        TestbedJob("sitt", 0, data, tmp_path, 10)


def test_a_lost_worker_is_read_back_from_its_result_or_named(tmp_path: Path) -> None:
    import json

    from sit_nlp.testbed.jobs import _result_of_lost_worker

    job = TestbedJob("sit", 1, tmp_path, tmp_path / "out", 10)
    with pytest.raises(RuntimeError, match="sit seed 1 ended without a result"):
        _result_of_lost_worker(job)
    job.folder.mkdir(parents=True)
    (job.folder / "result.json").write_text(json.dumps({"method": "sit", "seed": 1}), encoding="utf-8")
    assert _result_of_lost_worker(job) == {"method": "sit", "seed": 1}
