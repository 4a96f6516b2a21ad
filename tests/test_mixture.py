"""Mixture files and split building, on the invented tiny BIG-bench fixture."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sit_causal.inputs import UsageFailure
from sit_nlp.data.mixture import TaskSpec, build_mixture, load_mixture, split_task, write_mixture
from sit_nlp.data.records import InstructionRecord, read_records

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "configs" / "mixtures" / "tiny.yaml"
TINY_ROOT = REPO / "configs" / "mixtures" / "bigbench_tiny"
HF = REPO / "tests" / "fixtures" / "hf"


def _write_yaml(path: Path, **changes: object) -> Path:
    raw = yaml.safe_load(TINY_YAML.read_text())
    raw["bigbench_root"] = str(TINY_ROOT)
    raw.update(changes)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_tiny_mixture_builds_three_groups_without_leakage() -> None:
    mix = load_mixture(TINY_YAML)
    built = build_mixture(mix)
    train, val, held = (built.splits[s] for s in ("train", "validation", "heldout"))
    assert train and val and held
    groups = {r.extra["group"] for r in held}
    assert groups == {"in_domain", "out_of_domain", "cross_task"}
    train_tasks = {t.task for t in mix.role("train")}
    assert {r.task for r in train} == train_tasks == {r.task for r in val}
    assert {r.task for r in held if r.extra["group"] == "in_domain"} == train_tasks
    assert {r.task for r in held if r.extra["group"] == "out_of_domain"} == {"toy_triples_to_text"}
    assert {r.task for r in held if r.extra["group"] == "cross_task"} == {"toy_entailment"}
    for task in train_tasks:  # no input is both trained on and held out (duplicates are merged first)
        seen = [{r.input for r in split if r.task == task} for split in (train, val, held)]
        assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert all(r.category for r in train + val + held)
    assert built.manifest["tasks"]["toy_mappings/plural"]["merged_duplicates"] == 1
    assert built.manifest["tasks"]["toy_data_to_text"]["dropped_skipped"] == 2


def test_split_sizes_follow_caps_and_fractions() -> None:
    mix = load_mixture(TINY_YAML)
    counts = build_mixture(mix).manifest["tasks"]
    for spec in mix.tasks:
        c = counts[spec.task]
        usable = c["available"] - c["dropped_long"] - c["merged_duplicates"]
        if spec.role == "train":
            assert c["heldout"] == min(spec.max_in_domain, int(usable * spec.in_domain_fraction))
            assert c["validation"] == min(spec.max_validation, int(usable * spec.validation_fraction))
            assert c["train"] == min(spec.max_train, usable - c["heldout"] - c["validation"])
        else:
            assert c["heldout"] == min(spec.max_heldout, usable) and c["train"] == c["validation"] == 0


def test_same_seed_same_split_other_seed_other_split() -> None:
    mix = load_mixture(TINY_YAML)
    a, b = build_mixture(mix), build_mixture(mix)
    assert [r.id for r in a.splits["heldout"]] == [r.id for r in b.splits["heldout"]]
    c = build_mixture(mix, seed=1)
    assert [r.id for r in a.splits["train"]] != [r.id for r in c.splits["train"]]


def test_heldout_does_not_move_when_train_cap_changes(tmp_path: Path) -> None:
    small = load_mixture(_write_yaml(tmp_path / "a.yaml", defaults={**yaml.safe_load(TINY_YAML.read_text())["defaults"],
                                                                     "max_train": 3}))
    full = load_mixture(TINY_YAML)
    a, b = build_mixture(small), build_mixture(full)
    assert [r.id for r in a.splits["heldout"]] == [r.id for r in b.splits["heldout"]]
    assert len(a.splits["train"]) == 3 * len(small.role("train")) < len(b.splits["train"])


def _records(n: int) -> list[InstructionRecord]:
    return [InstructionRecord(task="t", instruction="i", input=f"x{k}", output=f"y{k}", id=str(k)) for k in range(n)]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 60), frac_in=st.floats(0, 0.9), frac_val=st.floats(0, 0.9), cap=st.integers(0, 80),
       seed=st.integers(0, 2**31))
def test_split_task_partitions_a_subset(n: int, frac_in: float, frac_val: float, cap: int, seed: int) -> None:
    spec = TaskSpec("t", "c", "train", max_train=cap, in_domain_fraction=frac_in, validation_fraction=frac_val,
                    max_in_domain=1000, max_validation=1000)
    part = split_task(spec, _records(n), seed)
    ids = [r.id for r in part.train + part.validation + part.heldout]
    assert len(ids) == len(set(ids)) <= n  # disjoint, nothing invented
    assert len(part.train) <= cap and all(r.extra["group"] == "in_domain" for r in part.heldout)
    if frac_in + frac_val <= 1:
        assert len(part.train) == min(cap, n - len(part.heldout) - len(part.validation))


def test_duplicates_merge_references_and_training_expands_them() -> None:
    def rec(i: int, inp: str, ref: str) -> InstructionRecord:
        return InstructionRecord(task="t", instruction="i", input=inp, output=ref, id=str(i))

    records = [rec(0, "a", "r1"), rec(1, "b", "s1"), rec(2, "a", "r2"), rec(3, "a", "r1"), rec(4, "b", "s2")]
    held = split_task(TaskSpec("t", "c", "cross_task"), records, 0)
    assert held.merged_duplicates == 3
    assert {r.id: r.references for r in held.heldout} == {"0": ("r1", "r2"), "1": ("s1", "s2")}
    train = split_task(TaskSpec("t", "c", "train", in_domain_fraction=0, validation_fraction=0), records, 0)
    assert sorted((r.id, r.output, r.references) for r in train.train) == [
        ("0", "r1", ("r1",)), ("0#1", "r2", ("r2",)), ("1", "s1", ("s1",)), ("1#1", "s2", ("s2",))]
    capped = split_task(TaskSpec("t", "c", "train", max_train=3, in_domain_fraction=0, validation_fraction=0),
                        records, 0)
    assert len(capped.train) == 3


def test_length_filters_drop_before_splitting() -> None:
    records = [*_records(10), InstructionRecord(task="t", instruction="i", input="x" * 50, output="y", id="long")]
    spec = TaskSpec("t", "c", "cross_task", max_input_chars=10)
    part = split_task(spec, records, 0)
    assert part.dropped_long == 1 and len(part.heldout) == 10 and all(r.id != "long" for r in part.heldout)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": [{"task": "toy_nope", "category": "data_to_text"}]}, "unknown BIG-bench task 'toy_nope'"),
        ({"train": []}, "'train' must be a non-empty list"),
        ({"surprise": 1}, "unknown key"),
        ({"defaults": {"max_trian": 3}}, "unknown defaults key"),
        ({"defaults": {"validation_fraction": 1.5}}, r"validation_fraction must be a number in \[0, 1\)"),
        ({"train": [{"task": "toy_data_to_text"}]}, "'category' must be a non-empty string"),
        ({"heldout": {"out_of_domain": [{"task": "toy_entailment", "category": "nli"}]}}, "which no training task has"),
        ({"heldout": {"cross_task": [{"task": "toy_triples_to_text", "category": "data_to_text"}]}},
         "which a training task has"),
        ({"heldout": {"cross_task": [{"task": "toy_data_to_text", "category": "zzz"}]}}, "appears twice"),
        ({"train": [{"task": "toy_data_to_text", "category": "d", "split": "test"}]}, "only apply to source: hf"),
        ({"defaults": {"max_validation": 0}}, "the validation split is empty"),
    ],
)
def test_bad_mixtures_are_one_line_errors(tmp_path: Path, change: dict, message: str) -> None:
    path = _write_yaml(tmp_path / "bad.yaml", **change)
    with pytest.raises(UsageFailure, match=message) as err:
        build_mixture(load_mixture(path))
    assert "\n" not in str(err.value)


def test_missing_cache_is_reported(tmp_path: Path) -> None:
    with pytest.raises(UsageFailure, match=r"BIG-bench cache not found.*sit-nlp data fetch"):
        build_mixture(load_mixture(TINY_YAML), cache=tmp_path / "none")


def test_write_is_atomic_and_refuses_to_overwrite(tmp_path: Path) -> None:
    built = build_mixture(load_mixture(TINY_YAML))
    out = write_mixture(built, tmp_path / "data")
    assert sorted(p.name for p in out.iterdir()) == ["heldout.jsonl", "manifest.json", "train.jsonl",
                                                     "validation.jsonl"]
    held = read_records(out / "heldout.jsonl")
    assert [r.extra["group"] for r in held] == [r.extra["group"] for r in built.splits["heldout"]]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["train"] == len(read_records(out / "train.jsonl"))
    with pytest.raises(UsageFailure, match="already exists"):
        write_mixture(built, out)
    write_mixture(built, out, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no temporary or old directory left


def test_hf_tasks_join_a_mixture_from_local_files(tmp_path: Path) -> None:
    heldout = {"out_of_domain": [{"task": "xsum", "category": "data_to_text", "source": "hf",
                                  "data_files": str(HF / "xsum.jsonl"), "split": "test"}],
               "cross_task": [{"task": "super_glue_rte", "category": "nli", "source": "hf",
                               "data_files": [str(HF / "super_glue_rte.jsonl")]}]}
    built = build_mixture(load_mixture(_write_yaml(tmp_path / "hf.yaml", heldout=heldout)))
    rte = [r for r in built.splits["heldout"] if r.task == "super_glue_rte"]
    assert len(rte) == 3 and all(r.options == ("yes", "no") and r.extra["group"] == "cross_task" for r in rte)
    assert {r.id.split(":")[1] for r in built.splits["heldout"] if r.task == "xsum"} == {"test"}


def test_malformed_local_jsonl_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "rte.jsonl"
    bad.write_text('{"premise": "a", "hypothesis": "b", "label": 0, "idx": 0}\n{"premise": oops\n')
    heldout = {"cross_task": [{"task": "super_glue_rte", "category": "nli", "source": "hf", "data_files": str(bad)}]}
    with pytest.raises(UsageFailure, match="super_glue_rte: could not load") as err:
        build_mixture(load_mixture(_write_yaml(tmp_path / "m.yaml", heldout=heldout)))
    assert "\n" not in str(err.value)


def test_build_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sit_causal.cli.common import run_app
    from sit_nlp.cli.main import app

    out = tmp_path / "data"
    assert run_app(app, "sit-nlp", ["data", "build", "--mixture", str(TINY_YAML), "--out", str(out), "--quiet"]) == 0
    assert "| **total** |" in capsys.readouterr().out
    assert run_app(app, "sit-nlp", ["data", "build", "--mixture", str(TINY_YAML), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    bad = _write_yaml(tmp_path / "bad.yaml", train=[{"task": "toy_nope", "category": "data_to_text"}])
    code = run_app(app, "sit-nlp", ["data", "build", "--mixture", str(bad), "--out", str(tmp_path / "d2"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "d2").exists()
    code = run_app(app, "sit-nlp", ["data", "build", "--mixture", str(TINY_YAML), "--out", str(out), "--force",
                                    "--json", "--quiet", "--seed", "3"])
    assert code == 0 and json.loads(capsys.readouterr().out)["seed"] == 3


def test_shipped_mixtures_parse() -> None:
    for path in sorted((REPO / "configs" / "mixtures").glob("*.yaml")):
        mix = load_mixture(path)
        assert mix.role("train") and (mix.role("out_of_domain") or mix.role("cross_task"))


def test_build_refuses_a_tracked_folder_in_the_repository(capsys: pytest.CaptureFixture[str]) -> None:
    from sit_causal.cli.common import run_app
    from sit_nlp.cli.main import app

    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    out = REPO / "configs" / "zz_no_data_here"
    code = run_app(app, "sit-nlp", ["data", "build", "--mixture", str(TINY_YAML), "--out", str(out), "--quiet"])
    assert code == 2 and "not git-ignored" in capsys.readouterr().err and not out.exists()


def test_records_with_unicode_line_separators_round_trip(tmp_path: Path) -> None:
    """U+2028, U+0085 and form feeds occur in real inputs; JSONL lines must split on newline only."""
    odd = "a\u2028b\u2029c\x85d\x0ce\rf"
    rec = InstructionRecord(task="t", instruction="i", input=odd, output=odd, id="0")
    built = build_mixture(load_mixture(TINY_YAML))
    built.splits["train"].append(rec)
    out = write_mixture(built, tmp_path / "d")
    back = read_records(out / "train.jsonl")
    assert back[-1].input == odd and len(back) == len(built.splits["train"])


def test_source_chars_filter_counts_instruction_input_and_options() -> None:
    short = InstructionRecord(task="t", instruction="ii", input="xx", output="a", options=("a", "bb"), id="s")
    long_ = replace(short, id="l", input="x" * 5)
    part = split_task(TaskSpec("t", "c", "cross_task", max_source_chars=7), [short, long_], 0)
    assert [r.id for r in part.heldout] == ["s"] and part.dropped_long == 1


def test_every_split_gets_balanced_instruction_wordings() -> None:
    """paraphrases=3: each split's records of a task carry 3 wordings of the instruction (template 0 the
    original), balanced within the task, so the task bank holds positives for task distinction."""
    from sit_nlp.data.paraphrase import paraphrase

    records = [InstructionRecord(task="t", instruction="Say it.", input=f"x{i}", output="y", id=str(i))
               for i in range(40)]
    part = split_task(TaskSpec("t", "c", "train", paraphrases=3, in_domain_fraction=0.2), records, 0)
    for split in (part.train, part.heldout):
        counts = {k: sum(1 for r in split if r.extra["paraphrase"] == k) for k in range(3)}
        assert max(counts.values()) - min(counts.values()) <= 1
        assert {r.instruction for r in split} == {paraphrase("Say it.", k) for k in range(3)}
        assert all(r.instruction == paraphrase("Say it.", r.extra["paraphrase"]) for r in split)
    assert paraphrase("Say it.", 0) == "Say it."
    single = split_task(TaskSpec("t", "c", "cross_task", paraphrases=1), records, 0)
    assert {r.instruction for r in single.heldout} == {"Say it."}
