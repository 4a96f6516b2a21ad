"""The training loop: vanilla and SIT in one loop, exact gradient accumulation, kill-and-resume, DDP."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from sit_nlp.data.batching import Seq2SeqCollator
from sit_nlp.data.records import read_records, write_records
from sit_nlp.model.backbones import ASSETS, load_backbone
from sit_nlp.model.config import ModelConfig, seq2seq_objective
from sit_nlp.model.seq2seq import Seq2SeqSIT
from sit_nlp.training.checkpoint import load_trained
from sit_nlp.training.config import load_config
from sit_nlp.training.data import build_task_bank
from sit_nlp.training.loop import accumulate_gradients, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
RECORDS = read_records(ASSETS / "tiny_train.jsonl")



def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines() if x.strip()]


@pytest.mark.parametrize("method", ["sit", "vanilla"])
def test_vanilla_and_sit_train_in_the_same_loop(method: str, tmp_path: Path) -> None:
    cfg = load_config(TINY, [f"--method={method}", f"--out_dir={tmp_path}", "--max_steps=6", "--log_every=2",
                             "--batch_size=4", "--save_every=0", "--quiet=true"])
    result = train(cfg)
    logged = [r for r in rows(tmp_path) if "loss" in r]
    assert [r["step"] for r in logged] == [2, 4, 6]
    sit_terms = {"source", "kl", "uic", "distinction"}
    for r in logged:
        assert all(torch.isfinite(torch.tensor(r[k])) for k in ("target", "grad_norm", "lr", "tokens_per_s"))
        assert (sit_terms <= set(r)) == (method == "sit")
    assert result["eval_target"] is not None
    model, _, cfg2 = load_trained(tmp_path / "final")
    assert cfg2.model.method == method and model.is_sit == (method == "sit")
    assert (tmp_path / "checkpoint-6" / "config.yaml").is_file()


@pytest.mark.parametrize("method", ["sit", "vanilla"])
def test_gradient_accumulation_invariance(method: str) -> None:
    """batch 4 x accumulation 1 == batch 2 x 2 == batch 1 x 4 (loss terms and gradients), dropout 0,
    posterior mean (no sampling noise)."""
    backbone = load_backbone("tiny-bart", dropout=0.0)
    cfg = ModelConfig(backbone="tiny-bart", method=method, n_factors=4, latent_hidden=16, dropout=0.0,
                      sample_latent=False, source_max_len=12)
    objective = replace(seq2seq_objective(), w_kl=0.5, kl_anneal=0.0)
    base = Seq2SeqSIT(cfg, backbone, objective)
    tasks = sorted({r.task for r in RECORDS})
    collator = Seq2SeqCollator(backbone.tokenizer, backbone.model.config.decoder_start_token_id, tasks,
                               max_source_len=48, max_target_len=12, source_recon_len=12)
    base.set_task_bank(build_task_bank(RECORDS, collator, 16) if base.is_sit else None)
    examples = collator.tokenize(RECORDS[:4])  # four different lengths and tasks
    assert len({e.length for e in examples}) > 1
    accelerator = Accelerator(cpu=True)
    results = []
    for size in (4, 2, 1):
        model = copy.deepcopy(base)
        micro = [collator(examples[i : i + size]) for i in range(0, 4, size)]
        terms = accumulate_gradients(accelerator, model, micro, progress=0.5, generator=None)
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((terms, grads))
    ref_terms, ref_grads = results[0]
    for terms, grads in results[1:]:
        for key, value in ref_terms.items():
            assert terms[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        torch.testing.assert_close(grads, ref_grads, rtol=1e-4, atol=1e-6)
        assert grads.norm().item() == pytest.approx(ref_grads.norm().item(), rel=1e-5)


def test_kill_and_resume_gives_the_same_losses(tmp_path: Path) -> None:
    """Dropout and latent sampling on, accumulation 2, an epoch boundary crossed after the resume point."""
    data = tmp_path / "train.jsonl"
    write_records(RECORDS[:40], data)  # 5 batches of 8 per epoch: epochs roll over at steps 3 and 5
    common = [f"--train_file={data}", "--eval_file=null", "--max_steps=7", "--grad_accum=2", "--log_every=1",
              "--save_every=4", "--quiet=true", "--dropout=0.1"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    train(load_config(TINY, [*common, f"--out_dir={full}"]))
    out = train(load_config(TINY, [*common, f"--out_dir={killed}", "--stop_after=5"]))
    assert out["stopped_at"] == 5 and not (killed / "final").exists()
    assert (killed / "checkpoint-4" / "training_state").is_dir()
    train(load_config(TINY, [*common, f"--out_dir={killed}"]), resume=True)
    a = [r for r in rows(full) if "loss" in r]
    b = [r for r in rows(killed) if "loss" in r]
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 8))
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss", "target", "source", "kl", "uic", "distinction", "grad_norm", "lr"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-7), (ra["step"], key)


def test_resume_without_checkpoint_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sit_causal.cli.common import run_app
    from sit_nlp.cli.main import app

    code = run_app(app, "sit-nlp", ["train", "--config", str(TINY), f"--out_dir={tmp_path}", "--resume"])
    assert code == 2 and "no checkpoint" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None,
                    reason="accelerate launcher not installed")
@pytest.mark.slow
def test_distributed_two_processes_gloo(tmp_path: Path) -> None:
    """``accelerate launch --multi_gpu --num_processes 2`` on a CPU-only machine starts two processes
    (torchrun); ``Accelerator(cpu=True)`` makes them a gloo DDP group. (``accelerate launch --cpu
    --num_processes 2`` starts a single process unless MPI is configured.)"""
    launcher = str(Path(sys.executable).parent / "accelerate")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "sit_nlp.cli.main", "train", "--config", str(TINY), f"--out_dir={tmp_path}",
           "--max_steps=3", "--batch_size=4", "--log_every=1", "--save_every=0", "--quiet", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = tmp_path / "checkpoint-3" / "training_state"
    for rank in (0, 1):  # both ranks reached the end and saved their own state
        assert (ckpt / f"train_state_{rank}.json").is_file() and (ckpt / f"random_states_{rank}.pkl").is_file()
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["step"] == 3
    model, tokenizer, cfg = load_trained(tmp_path / "final")
    assert model.is_sit and cfg.train.max_steps == 3 and len(tokenizer) == 512


def test_selection_step_fixes_a_uic_graph_during_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """graph.find_at=0.5: at step 4 of 8 the task graph is found on the learned factors, written (readable by
    the checker), fixed as the training tasks' masks, distilled into the selector, and kept by the final model."""
    from sit_causal.cli.common import run_app
    from sit_causal.cli.main import app as causal_app
    from sit_causal.theory.graph import load_graph

    cfg = load_config(TINY, [f"--out_dir={tmp_path}", "--max_steps=8", "--log_every=1", "--batch_size=4",
                             "--save_every=0", "--quiet=true", "--find_at=0.5", "--examples_per_task=4"])
    train(cfg)
    detail = json.loads((tmp_path / "task_graph_energies.json").read_text())
    assert detail["step"] == 4
    tasks = sorted({r.task for r in RECORDS})
    graph = load_graph(tmp_path / "task_graph.json")
    assert list(graph.tasks) == tasks and graph.adjacency.shape == (len(tasks), 8)
    assert np.allclose(np.array(detail["energies"]).sum(axis=1), 1.0)
    assert detail["uic_holds"] == (run_app(causal_app, "sit-causal", ["check-uic", str(tmp_path / "task_graph.json"),
                                                                      "--json"]) == 0)
    capsys.readouterr()
    logged = [r for r in rows(tmp_path) if "loss" in r]
    assert all("selection" not in r for r in logged if r["step"] <= 4)
    assert all("selection" in r for r in logged if r["step"] > 4)
    model, tokenizer, cfg2 = load_trained(tmp_path / "final")
    assert model.has_task_graph and model.graph_tasks == tasks
    assert np.array_equal(model.task_graph.numpy().astype(int), graph.adjacency.astype(int))
    # at inference a training instruction gets its task's graph row, an unseen one the selector's mask
    collator = Seq2SeqCollator(tokenizer, model.backbone.config.decoder_start_token_id, (),
                               cfg2.data.max_source_len, cfg2.data.max_target_len, cfg2.data.max_instruction_len)
    seen = [next(r for r in RECORDS if r.task == t) for t in tasks]
    batch = collator(collator.tokenize(seen))
    found = model.instruction_rows(batch["instruction_ids"], batch["instruction_mask"])[batch["instruction_index"]]
    assert found.tolist() == list(range(len(tasks)))
    unseen = collator(collator.tokenize([replace(seen[0], instruction="an instruction never seen in training")]))
    assert model.instruction_rows(unseen["instruction_ids"], unseen["instruction_mask"]).tolist() == [-1]
    # sit-nlp masks reports the masks inference uses: the fixed graph's rows for the training tasks
    from sit_nlp.cli.main import app as nlp_app

    assert run_app(nlp_app, "sit-nlp", ["masks", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "m"),
                                        "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["closed_fraction_train"] == pytest.approx(detail["closed_fraction"])
    assert report["uic_holds"] == detail["uic_holds"]
    assert 0.0 <= report["task_graph"]["selector_agreement"] <= 1.0


def test_factor_contributions_see_only_the_channels_the_decoder_reads() -> None:
    backbone = load_backbone("tiny-bart", dropout=0.0)
    cfg = ModelConfig(backbone="tiny-bart", method="sit", n_factors=4, latent_hidden=16, dropout=0.0,
                      source_max_len=12)
    model = Seq2SeqSIT(cfg, backbone).eval()
    tasks = sorted({r.task for r in RECORDS})
    collator = Seq2SeqCollator(backbone.tokenizer, backbone.model.config.decoder_start_token_id, tasks,
                               max_source_len=48, max_target_len=12, source_recon_len=12)
    batch = collator(collator.tokenize(RECORDS[:5]))
    d_f = model.latent.config.factor_dim
    with torch.no_grad():  # the decoder's memory ignores factor 2's channels
        model.memory_proj[0].weight[:, 2 * d_f : 3 * d_f] = 0.0
    c = model.factor_contributions(batch)
    assert c.shape == (5, 4) and bool((c >= 0).all())
    assert torch.all(c[:, 2] == 0) and bool((c[:, [0, 1, 3]] > 0).all())


def test_a_run_folder_is_never_overwritten_or_mixed(tmp_path: Path) -> None:
    from sit_nlp.training.config import ConfigError

    args = [f"--out_dir={tmp_path}", "--max_steps=2", "--batch_size=4", "--save_every=1", "--quiet=true",
            "--find_at=null"]
    train(load_config(TINY, args))
    before = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    with pytest.raises(ConfigError, match="already holds a run"):
        train(load_config(TINY, args))
    with pytest.raises(ConfigError, match=r"differs from the run's in train.lr"):
        train(load_config(TINY, [*args, "--lr=1e-2"]), resume=True)
    with pytest.raises(ConfigError, match="exclude each other"):
        train(load_config(TINY, args), resume=True, overwrite=True)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == before  # nothing touched
    train(load_config(TINY, [*args, "--max_steps=3", "--save_every=3"]), overwrite=True)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3"]  # no stale checkpoint-1/2


def test_bad_config_values_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from sit_causal.cli.common import run_app
    from sit_nlp.cli.main import app

    for override, needle in (("--max_steps=0", "train.max_steps must be >= 1"),
                             ("--lr=-1", "train.lr must be a positive number"),
                             ("--train.batch_size=0", "train.batch_size must be >= 1"),
                             ("--find_at=1.5", "graph.find_at must be in [0, 1)"),
                             ("--w_uic=-1", "must be >= 0")):
        code = run_app(app, "sit-nlp", ["train", "--config", str(TINY), f"--out_dir={tmp_path}", override])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and needle in err, (override, err)
    code = run_app(app, "sit-nlp", ["train", "--config", str(tmp_path)])
    assert code == 2 and "is a folder" in capsys.readouterr().err


def test_the_final_evaluation_runs_once(tmp_path: Path) -> None:
    """max_steps a multiple of eval_every: the loop's last evaluation is the final one, not repeated."""
    train(load_config(TINY, [f"--out_dir={tmp_path}", "--max_steps=4", "--eval_every=2", "--batch_size=4",
                             "--save_every=0", "--quiet=true", "--find_at=null"]))
    assert [r["step"] for r in rows(tmp_path) if "eval_target" in r] == [2, 4]


@pytest.mark.slow
def test_sit_evaluates_the_path_it_trains(tmp_path: Path) -> None:
    """One path: the trained SIT model, reloaded from final/, gives on its training records the same NLL by
    the evaluation path as by the training path (within 5 %), no worse than vanilla's; the final eval logged
    during training is the reloaded model's."""
    from accelerate import Accelerator

    from sit_nlp.training.metrics import evaluation_nll

    nll = {}
    for method in ("sit", "vanilla"):
        out = tmp_path / method
        cfg = load_config(TINY, [f"--method={method}", f"--out_dir={out}", "--max_steps=200", "--save_every=0",
                                 "--quiet=true", "--threads=1", "--eval_file=builtin:tiny_train.jsonl"])
        result = train(cfg)
        model, tok, _ = load_trained(out / "final")
        collator = Seq2SeqCollator(tok, model.backbone.config.decoder_start_token_id,
                                   sorted({r.task for r in RECORDS}), cfg.data.max_source_len,
                                   cfg.data.max_target_len, cfg.data.max_instruction_len, cfg.model.source_max_len)
        examples = collator.tokenize(RECORDS)
        accelerator = Accelerator(cpu=True)
        nll[method] = evaluation_nll(accelerator, model, examples, collator, 16)
        assert nll[method] == pytest.approx(result["eval_target"], rel=1e-5)
        if method == "sit":
            trained_path = evaluation_nll(accelerator, model, examples, collator, 16, sample=cfg.model.sample_latent)
            assert abs(nll["sit"] - trained_path) <= 0.05 * trained_path
    assert nll["sit"] <= nll["vanilla"]


def test_checkpoints_are_model_folders_any_of_which_eval_and_resume_take(tmp_path: Path) -> None:
    """checkpoint-N folders: safetensors model folders (from_pretrained, eval's resolver), the training state
    beside them; --resume-from an older one replays the same losses; final/ is marked."""
    from safetensors import safe_open

    from sit_nlp.evaluation.evaluate import resolve_checkpoint
    from sit_nlp.model.checkpoint import MARKER

    args = [f"--out_dir={tmp_path}", "--max_steps=4", "--batch_size=4", "--save_every=2", "--keep_checkpoints=3",
            "--log_every=1", "--quiet=true", "--find_at=null"]
    train(load_config(TINY, args))
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    ckpt = tmp_path / "checkpoint-2"
    assert not list(ckpt.rglob("*.pt")) and (ckpt / "model.safetensors").is_file()
    assert resolve_checkpoint(ckpt) == ckpt
    model = Seq2SeqSIT.from_pretrained(ckpt)
    assert model.is_sit and not model.training
    with safe_open(str(tmp_path / "final" / "model.safetensors"), "pt") as fh:  # plain HF loading warns
        assert any(k.startswith("SIT_WARNING.") for k in fh.keys())
    marker = json.loads((tmp_path / "final" / MARKER).read_text())
    assert marker["final"] and not marker["plain_hf_is_the_trained_model"]
    first = [r for r in rows(tmp_path) if "loss" in r]
    train(load_config(TINY, args), resume=True, resume_from=ckpt)
    again = [r for r in rows(tmp_path) if "loss" in r]
    assert [r["step"] for r in again] == [1, 2, 3, 4]
    for ra, rb in zip(first, again, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5), ra["step"]


def test_a_random_preset_trains_its_tokenizer_on_the_data_once(tmp_path: Path) -> None:
    """The *-random presets: the BPE is trained on the training records into OUT/tokenizer and reused
    (a resumed run tokenises exactly as before); model.tokenizer=DIR takes a given one."""
    from sit_nlp.training.config import ConfigError
    from sit_nlp.training.data import run_tokenizer

    cfg = load_config(TINY, [f"--out_dir={tmp_path}", "--backbone=bart-base-random", "--tokenizer_vocab=300"])
    accelerator = Accelerator(cpu=True)
    tok = run_tokenizer(cfg, RECORDS, accelerator)
    saved = tmp_path / "tokenizer" / "tokenizer.json"
    assert saved.is_file() and 260 <= len(tok) <= 300
    stamp = saved.stat().st_mtime_ns
    again = run_tokenizer(cfg, RECORDS[:3], accelerator)  # other records: the saved tokenizer is reused
    assert again.get_vocab() == tok.get_vocab() and saved.stat().st_mtime_ns == stamp
    given = load_config(TINY, [f"--out_dir={tmp_path / 'b'}", "--backbone=bart-base-random",
                               f"--model.tokenizer={tmp_path / 'tokenizer'}"])
    assert run_tokenizer(given, RECORDS, accelerator).get_vocab() == tok.get_vocab()
    missing = load_config(TINY, ["--backbone=bart-base-random", f"--model.tokenizer={tmp_path / 'nope'}"])
    with pytest.raises(ConfigError, match="not a tokenizer folder"):
        run_tokenizer(missing, RECORDS, accelerator)
