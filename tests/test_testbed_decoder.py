"""The testbed's decoder-only backbone: what `testbed build` writes beside the BART, the jobs that train it,
the refusals of `testbed run --backbone`, and a 20-step decoder-only run end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

from sit_nlp.data.decoder_batching import format_prompt
from sit_nlp.data.records import read_records
from sit_nlp.testbed.backbone import DECODER_FOLDER, ensure_decoder_backbone
from sit_nlp.testbed.build import TestbedConfig
from sit_nlp.testbed.jobs import ENCODER_DECODER_ONLY, TESTBED_METHODS, TestbedJob, training_config

TINY = {"mechanism": "anti-causal", "train_per_dataset": 40, "validation_per_dataset": 10, "test_per_task": 12,
        "model_d": 32, "model_ffn": 64, "model_heads": 2, "model_max_positions": 96}


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``sit-nlp ARGV``: (exit code, stdout, stderr)."""
    return run_cli("sit_nlp.cli.main", argv, capsys)


@pytest.fixture(scope="module")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sit_nlp.testbed.build import write_testbed

    out = tmp_path_factory.mktemp("decoder") / "tb"
    write_testbed(TestbedConfig(**TINY), 1, out)
    return out


def test_build_writes_a_causal_lm_of_the_same_width_with_the_same_tokenizer(testbed: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from sit_nlp.model.backbones import load_backbone

    bart = load_backbone(str(testbed / "model"))
    decoder = load_backbone(str(testbed / DECODER_FOLDER))
    assert decoder.family == "causal-lm" and bart.family == "bart"
    cfg = decoder.model.config
    assert cfg.hidden_size == bart.model.config.d_model == TINY["model_d"]
    assert cfg.num_hidden_layers == bart.model.config.encoder_layers + bart.model.config.decoder_layers
    assert cfg.vocab_size == len(decoder.tokenizer) == len(bart.tokenizer)
    assert decoder.tokenizer.get_vocab() == bart.tokenizer.get_vocab()
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (0, 1, 2)
    # the decoder's prompt (with its answer cue) has no unknown word
    records = read_records(testbed / "heldout.jsonl")
    ids = decoder.tokenizer([format_prompt(r) for r in records], add_special_tokens=False)["input_ids"]
    assert all(decoder.tokenizer.unk_token_id not in row for row in ids)
    meta = json.loads((testbed / "testbed.json").read_text(encoding="utf-8"))
    assert meta["decoder_parameters"] == sum(p.numel() for p in decoder.model.parameters())


def test_an_older_testbed_gets_the_same_decoder_written_from_its_own_config(testbed: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(testbed, old)
    shutil.rmtree(old / DECODER_FOLDER)
    written = ensure_decoder_backbone(old)
    assert written == old / DECODER_FOLDER and not (old / (DECODER_FOLDER + ".tmp")).exists()
    from safetensors.torch import load_file

    a, b = load_file(str(testbed / DECODER_FOLDER / "model.safetensors")), load_file(str(written / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    stamp = (written / "model.safetensors").stat().st_mtime_ns
    assert ensure_decoder_backbone(old) == written and (written / "model.safetensors").stat().st_mtime_ns == stamp


def test_decoder_jobs_train_the_causal_lm_on_the_prompt(testbed: Path, tmp_path: Path) -> None:
    for method in ("vanilla", "sit", "sit-true-graph"):
        enc = training_config(TestbedJob(method, 2, testbed, tmp_path, 30))
        dec = training_config(TestbedJob(method, 2, testbed, tmp_path, 30, backbone="decoder-only"))
        assert dec.model.backbone == str(testbed / DECODER_FOLDER) and enc.model.backbone == str(testbed / "model")
        assert dec.model.architecture == "decoder-only" and enc.model.architecture == "auto"
        assert dec.model.factor_input == "formatted" and enc.model.factor_input == "input"
        # nothing else differs: the same data, objective, selection step and budget
        assert dec.data == enc.data and dec.loss == enc.loss and dec.graph == enc.graph and dec.train == enc.train
    assert set(ENCODER_DECODER_ONLY) <= set(TESTBED_METHODS)
    for method in ENCODER_DECODER_ONLY:
        with pytest.raises(ValueError, match="for the encoder-decoder backbone"):
            TestbedJob(method, 0, testbed, tmp_path, 30, backbone="decoder-only")
    with pytest.raises(ValueError, match="unknown testbed backbone"):
        TestbedJob("sit", 0, testbed, tmp_path, 30, backbone="gpt")


@pytest.mark.parametrize(("extra", "needle"), [
    (["--backbone", "gpt"], "--backbone must be one of encoder-decoder, decoder-only, decoder, got 'gpt'"),
    (["--backbone", "decoder", "--methods", "vanilla,sit-sentence"], "--methods: sit-sentence changes what an "
                                                                     "encoder reads"),
])
def test_bad_backbone_requests_exit_2_with_one_line(testbed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    extra: list[str], needle: str) -> None:
    rc, _, err = _run_cli(["testbed", "run", "--data", str(testbed), "--out", str(tmp_path / "run"), "--fewshot-ks",
                           "2", *extra], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and needle in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_decoder_run_20_steps_end_to_end(testbed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "tb"
    shutil.copytree(testbed, data)
    shutil.rmtree(data / DECODER_FOLDER)  # a testbed built before the decoder: run writes it first
    out = tmp_path / "run"
    args = ["testbed", "run", "--data", str(data), "--out", str(out), "--steps", "20", "--seeds", "1",
            "--methods", "vanilla,sit", "--batch-size", "8", "--fewshot-ks", "2,4", "--fewshot-steps", "3",
            "--quiet", "--backbone", "decoder"]
    rc, stdout, err = _run_cli(args, capsys)
    assert "wrote the decoder-only backbone" in err and (data / DECODER_FOLDER / "config.json").is_file()
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert rc == (0 if report["gate"]["passed"] else 1)
    assert report["backbone"] == "decoder-only" and "backbone decoder-only" in stdout
    runs = {r["method"]: r for r in report["runs"]}
    assert set(runs) == {"vanilla", "sit"} and all(r["backbone"] == "decoder-only" for r in runs.values())
    for r in runs.values():
        assert 0.0 <= r["accuracy"]["flipped"] <= 1.0 and 0.0 <= r["probe_spurious"] <= 1.0
        assert set(r["fewshot"]["ks"]) == {2, 4}
    sit = runs["sit"]
    assert 0.0 <= sit["factors"]["mcc"] <= 1.0 and sit["graph"] is not None
    assert set(sit["fewshot"]["accuracy"]) == {"zero-shot", "select", "finetune"}
    saved = yaml.safe_load((out / "runs" / "sit" / "seed0" / "final" / "config.yaml").read_text(encoding="utf-8"))
    assert saved["model"]["architecture"] == "decoder-only" and saved["model"]["backbone"].endswith(DECODER_FOLDER)
    # the same --out asked for with the encoder-decoder: its finished runs are not reused as if they were
    rc, _, err = _run_cli([a if a != "decoder" else "encoder-decoder" for a in args], capsys)
    assert rc == 2 and "other settings" in err and "model.backbone" in err
