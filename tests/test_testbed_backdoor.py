"""The backdoor testbed (the meta-SCM in text), the prior's context, the given task graph and the controls."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sit_causal.selection.probe import removal_effects, select_with_probes
from sit_causal.theory.graph import load_graph
from sit_causal.theory.uic import check_uic
from sit_nlp.data.records import read_records
from sit_nlp.testbed import grammar
from sit_nlp.testbed.build import TestbedConfig, TestbedError, build_testbed, load_testbed_config, write_testbed
from sit_nlp.testbed.evaluation import fit_logistic
from sit_nlp.testbed.grammar import FACTORS

SMALL = {"test_per_task": 40, "model_d": 32, "model_ffn": 64, "model_heads": 2, "model_max_positions": 96}


@pytest.fixture(scope="module")
def drawn() -> dict:
    return build_testbed(TestbedConfig(**SMALL), 11)


def _yesno(drawn: dict, split: str = "train") -> dict[str, list]:
    records = drawn["train"] if split == "train" else [r for r in drawn["heldout"] if r.extra["split"] == split]
    out: dict[str, list] = {}
    for r in records:
        if r.options:
            out.setdefault(r.task, []).append(r)
    return out


def test_backdoor_is_the_default_and_the_graph_satisfies_the_uic(drawn: dict) -> None:
    meta = drawn["meta"]
    assert meta["mechanism"] == "backdoor" and meta["theory_applies"] is True
    assert check_uic(drawn["graph"]).uic_holds
    adj = np.asarray(drawn["graph"].adjacency)
    assert np.all(adj[:4].sum(axis=1) == 1) and not adj[:4, FACTORS.index("number")].any()
    sources = {r.dataset for r in drawn["train"] if r.task == "yesno_1"}
    assert len(sources) == 8  # the prior's variety: 8 training sources per task
    assert set(meta["splits"]) == {"in_distribution", "heldout_sources", "flipped_d", "balanced_d", "heldout_tasks",
                                   "generation"}


def test_factors_are_independent_within_a_source(drawn: dict) -> None:
    for records in _yesno(drawn).values():
        lat = np.array([r.extra["factors"] for r in records])
        source = np.array([r.extra["dataset_id"] for r in records])
        assert len(records) >= 1000
        centred = lat.copy()
        for d in np.unique(source):
            centred[source == d] -= centred[source == d].mean(0)
        corr = np.corrcoef(centred.T)
        assert np.abs(corr[np.triu_indices(6, 1)]).max() < 0.1


def test_spurious_and_causal_factors_correlate_through_the_source(drawn: dict) -> None:
    tasks = {t["name"]: t for t in drawn["meta"]["tasks"]}
    for name, records in _yesno(drawn).items():
        lat = np.array([r.extra["factors"] for r in records])
        s, (c,) = FACTORS.index(tasks[name]["spurious"]), [FACTORS.index(f) for f in tasks[name]["factors"]]
        assert abs(np.corrcoef(lat[:, s], lat[:, c])[0, 1]) >= 0.2


def test_the_spurious_factor_adds_nothing_given_the_causal_ones_and_the_source(drawn: dict) -> None:
    tasks = {t["name"]: t for t in drawn["meta"]["tasks"]}

    def nll(x: np.ndarray, y: np.ndarray) -> float:
        w, b, mu, sd = fit_logistic(x, y, l2=1e-4)
        p = 1 / (1 + np.exp(-(((x - mu) / sd) @ w + b)))
        return float(-np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12)))

    for name, records in _yesno(drawn).items():
        bits = np.array([r.extra["bits"] for r in records], dtype=float)
        source = np.array([r.extra["dataset_id"] for r in records])
        onehot = (source[:, None] == np.unique(source)[None, :]).astype(float)[:, 1:]
        y = np.array([r.extra["label"] for r in records], dtype=float)
        c = [FACTORS.index(f) for f in tasks[name]["factors"]]
        s = FACTORS.index(tasks[name]["spurious"])
        base = np.hstack([bits[:, c], onehot])
        assert nll(base, y) - nll(np.hstack([base, bits[:, [s]]]), y) < 0.01


def test_flipped_sources_reverse_the_tie_and_the_text_hides_some_words(drawn: dict) -> None:
    agree = {split: np.mean([r.extra["spurious_agrees"] for rs in _yesno(drawn, split).values() for r in rs])
             for split in ("in_distribution", "flipped_d", "balanced_d")}
    assert agree["in_distribution"] > 0.75 and agree["flipped_d"] < 0.25 and 0.35 < agree["balanced_d"] < 0.65
    hidden = [len(r.extra["ambiguous"]) for r in drawn["train"]]
    assert 0.1 < np.mean(hidden) / 5 < 0.3  # ambiguity 0.2 over the 5 factors that have words
    for r in drawn["train"][:50]:
        assert "number" not in r.extra["ambiguous"]
        for name in r.extra["ambiguous"]:
            assert grammar.AMBIGUOUS[name].split()[0] in r.input.replace("things", "thing").split()


def test_words_parse_back_and_the_ceiling_reads_them() -> None:
    rng = np.random.default_rng(0)
    lat = rng.normal(size=(400, 6))
    hidden = np.zeros((400, 6), dtype=bool)
    hidden[:200, 0] = True
    words = grammar.factor_words(lat, ambiguous=hidden)
    for w in words[:60]:
        assert grammar.parse_sentence(grammar.render_sentence(w)) == w
    decoded = grammar.decode_words(words)
    assert np.all(decoded[:200, 0] == 0.0)  # an ambiguous word carries nothing
    assert np.all(np.sign(decoded[200:, 0]) == np.sign(lat[200:, 0]))
    for i in range(1, 6):
        assert np.corrcoef(decoded[:, i], lat[:, i])[0, 1] > 0.75


def test_mechanism_option_and_config_checks(tmp_path: Path) -> None:
    assert load_testbed_config(None, {"mechanism": "anti-causal"}).n_generation_tasks == 2
    assert load_testbed_config(None).resolved_label_noise == 0.05
    (tmp_path / "c.yaml").write_text("mechanism: anti-causal\n", encoding="utf-8")
    cfg = load_testbed_config(tmp_path / "c.yaml")
    assert cfg.train_per_dataset == 600 and cfg.resolved_label_noise == 0.25
    for bad in ({"mechanism": "colour"}, {"ambiguity": 1.0}, {"sources_per_task": 1},
                {"family": "gauss-meanvar"}, {"n_yesno_tasks": 3}):
        with pytest.raises(TestbedError):
            TestbedConfig(**{**SMALL, **bad}).check()
            build_testbed(TestbedConfig(**{**SMALL, **bad}), 0)


@pytest.mark.slow
def test_selection_statistic_on_true_factors_finds_the_true_graph(tmp_path: Path) -> None:
    from sit_nlp.testbed.controls import recovery_ceiling, true_factor_selection

    out = tmp_path / "tb"
    write_testbed(TestbedConfig(**SMALL), 11, out)
    sel = true_factor_selection(out)
    assert sel["f1"] >= 0.9 and sel["uic_holds"]
    records = [r for r in read_records(out / "heldout.jsonl") if r.extra["split"] == "balanced_d"]
    ceiling = recovery_ceiling(records)
    assert 0.75 < ceiling["mcc"] < 0.95  # 20 % of the words say nothing
    # the anti-causal shortcut takes the energy of the yes/no tasks from their true factors
    anti = tmp_path / "anti"
    write_testbed(TestbedConfig(**{**SMALL, "mechanism": "anti-causal", "train_per_dataset": 300}), 11, anti)
    assert true_factor_selection(anti)["f1"] < sel["f1"]


def test_removal_effects_keep_the_factor_the_target_reads() -> None:
    rng = np.random.default_rng(1)
    d = rng.normal(size=(3000, 1))
    z = np.hstack([d + rng.normal(size=(3000, 1)), d + rng.normal(size=(3000, 1)), rng.normal(size=(3000, 2))])
    y = (z[:, 0] > 0).astype(int)  # z1 correlates with z0 (through d) but adds nothing given z0
    task = np.zeros(3000, dtype=int)
    energies = removal_effects(z, y[:, None], task, 1, [2])
    assert energies[0, 0] > 0.8
    both = ((z[:, 0] > 0) ^ (z[:, 2] > 0)).astype(int)  # a target that reads z0 and z2
    found = select_with_probes(z, both[:, None], task, 1, [2], coverage=0.9)
    assert found.coverage_graph[0, 0] and found.coverage_graph[0, 2] and not found.coverage_graph[0, 3]


def _tiny_model(prior_context: str, sources: list[str]):
    from sit_nlp.model.backbones import load_backbone
    from sit_nlp.model.seq2seq import Seq2SeqSIT
    from sit_nlp.training.config import ModelConfig

    cfg = ModelConfig(backbone="tiny-bart", n_factors=4, latent_hidden=16, source_max_len=12, dropout=0.0,
                      prior_context=prior_context, prior_context_dropout=0.0)
    backbone = load_backbone("tiny-bart", dropout=0.0, seed=0)
    return Seq2SeqSIT(cfg, backbone, sources=sources).eval(), backbone


@pytest.mark.parametrize("mode", ["dataset", "instruction", "none"])
def test_prior_context_decides_what_the_prior_sees(mode: str) -> None:
    from sit_nlp.data.batching import Seq2SeqCollator
    from sit_nlp.data.records import InstructionRecord

    model, backbone = _tiny_model(mode, ["src-a", "src-b"])
    records = [InstructionRecord(task="t", instruction="say it", input="a b c", output="x", dataset=d)
               for d in ("src-a", "src-b", "src-new")]
    collator = Seq2SeqCollator(backbone.tokenizer, model.backbone.config.decoder_start_token_id, ["t"], 32, 8, 16, 12,
                               sources=["src-a", "src-b"])
    batch = collator(collator.tokenize(records))
    assert batch["dataset_ids"].tolist() == [0, 1, -1]
    seen: list[torch.Tensor] = []
    hook = model.latent.register_forward_hook(lambda _m, _a, out: seen.append(out.prior_mean.detach()))
    with torch.no_grad():
        model.latent_path(batch)
    hook.remove()
    prior = seen[0].reshape(3, -1)
    if mode == "dataset":  # one prior per source; an unseen source gets the pooled row
        assert not torch.allclose(prior[0], prior[1])
        pooled = model.source_embedding.weight[-1]
        assert torch.allclose(model.prior_context(batch, 3)[2], pooled)
    else:  # the same instruction (or nothing): the same prior whatever the source
        assert torch.allclose(prior[0], prior[1]) and torch.allclose(prior[1], prior[2])


def test_given_task_graph_pads_the_factor_channels(tmp_path: Path) -> None:
    from sit_nlp.training.config import ConfigError
    from sit_nlp.training.loop import given_task_graph

    out = tmp_path / "tb"
    write_testbed(TestbedConfig(**{**SMALL, "train_per_dataset": 20}), 3, out)
    graph = load_graph(out / "graph.json")
    tasks = sorted(graph.tasks)
    adj = given_task_graph(out / "graph.json", tasks, 8)
    assert adj.shape == (len(tasks), 8) and not adj[:, 6:].any()
    for row, task in enumerate(tasks):
        assert adj[row, :6].tolist() == np.asarray(graph.adjacency)[graph.tasks.index(task)].astype(float).tolist()
    with pytest.raises(ConfigError, match="no row"):
        given_task_graph(out / "graph.json", [*tasks, "other"], 8)
    with pytest.raises(ConfigError, match=r"more than model\.n_factors"):
        given_task_graph(out / "graph.json", tasks, 4)
    meta = json.loads((out / "testbed.json").read_text(encoding="utf-8"))
    assert meta["split_roles"]["flipped"] == "flipped_d"


def test_sentence_pool_reads_one_factor_vector_per_record() -> None:
    from sit_nlp.data.batching import Seq2SeqCollator
    from sit_nlp.data.records import InstructionRecord
    from sit_nlp.model.backbones import load_backbone
    from sit_nlp.model.seq2seq import Seq2SeqSIT
    from sit_nlp.training.config import ModelConfig

    cfg = ModelConfig(backbone="tiny-bart", n_factors=4, factor_dim=2, latent_hidden=16, source_max_len=12,
                      dropout=0.0, factor_pool="sentence", factor_input="input")
    backbone = load_backbone("tiny-bart", dropout=0.0, seed=0)
    model = Seq2SeqSIT(cfg, backbone, sources=["s"])
    records = [InstructionRecord(task="t", instruction="say it", input="a b c d e", output="x", dataset="s"),
               InstructionRecord(task="t", instruction="say it", input="a b", output="y", dataset="s")]
    collator = Seq2SeqCollator(backbone.tokenizer, model.backbone.config.decoder_start_token_id, ["t"], 32, 8, 16, 12,
                               sources=["s"])
    batch = collator(collator.tokenize(records))
    _, lat, _, memory = model.latent_path(batch)
    assert lat.mean.shape == (2, 1, 4, 2) and memory.shape[:2] == (2, 2)  # the factor token and the task token
    out = model(batch)
    assert torch.isfinite(out["target_nll"]) and int(out["kl_tokens"]) == 2
    model.eval()
    contributions = model.factor_contributions(batch)
    assert contributions.shape == (2, 4) and bool((contributions >= 0).all())


def test_claims_read_the_backdoor_split_roles() -> None:
    from sit_nlp.testbed.report import claims, columns, past_prior, summarise_runs

    roles = {"aligned": "in_distribution", "flipped": "flipped_d", "balanced": "balanced_d"}

    def run(method: str, seed: int, flipped: float) -> dict:
        return {"method": method, "seed": seed, "accuracy": {"in_distribution": 0.95, "flipped_d": flipped},
                "aligned_minus_flipped": 0.95 - flipped, "seconds": {"train": 1.0}}

    results = [run("vanilla", s, 0.60 + 0.01 * s) for s in range(3)] + [run("sit", s, 0.80 + 0.01 * s)
                                                                        for s in range(3)]
    results += [run("sit-true-graph", s, 0.85) for s in range(3)]
    summary = summarise_runs(results)
    learned = past_prior(results, {"in_distribution": 0.5}, aligned="in_distribution")
    verdict = claims(summary, learned, roles, ceiling_mcc=0.84)
    assert verdict["flipped_plus_10_points"]["split"] == "flipped_d" and verdict["flipped_plus_10_points"]["met"]
    assert verdict["true_graph_at_least_sit"]["met"] and verdict["every_seed_past_prior"]["met"]
    keys = [k for k, _ in columns(summary, roles)]
    assert keys[:2] == ["acc/in_distribution", "acc/flipped_d"] and "gap" in keys


@pytest.mark.parametrize(("graph", "needle"), [("missing", "no such graph file"), ("other", "has no row")])
def test_train_refuses_a_given_graph_that_does_not_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       graph: str, needle: str) -> None:
    from sit_nlp.cli.main import main

    path = tmp_path / "graph.json"
    if graph == "other":
        path.write_text('{"factors": ["a"], "tasks": ["x"], "adjacency": [[1]], "rows": "tasks"}', encoding="utf-8")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        main(["train", "--config", str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"),
              f"--train.out_dir={out}", f"--graph.from={path}"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1 and needle in lines[0]
    assert not out.exists()  # refused before the run folder is written
