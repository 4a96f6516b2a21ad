"""``graph.statistic: invariant``: the selection step inside training reads the data sources (tiny models, CPU)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from sit_nlp.model.config import GraphConfig
from sit_nlp.model.task_graph import invariant_task_graph, pooled_factor_values, target_classes

ROOT = Path(__file__).resolve().parents[1]


def test_pooled_values_are_each_channels_first_principal_component() -> None:
    rng = np.random.default_rng(0)
    s = rng.normal(size=200)
    means = np.zeros((200, 3, 2))
    means[:, 0] = 5.0 + s[:, None] * np.array([-0.6, 0.8])  # varies along (-0.6, 0.8) around (5, 5)
    means[:, 1] = 2.0  # no variation
    means[:, 2, 0] = s  # d_f = 1 in effect: the centred value itself
    z = pooled_factor_values(means)
    assert z.shape == (200, 3)
    # the direction's largest entry is positive: (-0.6, 0.8), so the value is s, centred
    assert np.allclose(z[:, 0], s - s.mean())
    assert np.allclose(z[:, 1], 0.0)
    assert np.allclose(z[:, 2], s - s.mean())
    with pytest.raises(ValueError, match="must be"):
        pooled_factor_values(np.zeros((4, 3)))


def test_target_classes_one_output_per_short_target_set_and_one_per_word_of_a_generation_target() -> None:
    targets = ["yes", "no", "no", "yes",  # task 0: 2 distinct targets, one output
               "red cat", "blue cat", "red dogs", "green cat", "pink cow", "red"]  # task 1: 6 > 4 distinct
    task = np.array([0] * 4 + [1] * 6)
    classes, names = target_classes(targets, task, 2, target_bins=4, max_word_classes=3)
    assert names == ["target", "word 0", "word 1"]
    assert classes[:4, 0].tolist() == [1, 0, 0, 1]  # sorted: no = 0, yes = 1
    assert (classes[:4, 1:] == -1).all() and (classes[4:, 0] == -1).all()
    # word 0: red x3 -> 0, then blue, green, pink (ties by name): blue -> 1, green and pink share the last class 2
    assert classes[4:, 1].tolist() == [0, 1, 0, 2, 2, 0]
    # word 1: cat x3 -> 0, cow -> 1, dogs -> 2; "red" has no second word
    assert classes[4:, 2].tolist() == [0, 0, 2, 0, 1, -1]


def _flip_data(n: int = 1200, seed: int = 0) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Three tasks, two sources each, factors ``(a, b, c)`` (columns 0, 1, 2) ``~ N(0, 1)``: task 0 answers
    ``1[a > 0]`` (20 % flipped) and its ``b`` is drawn from the answer with an effect that flips sign between the
    sources; task 1 answers ``1[b > 0]``, task 2 ``1[c > 0]`` (10 % flipped)."""
    rng = np.random.default_rng(seed)
    zs, ys, ts, es = [], [], [], []
    for task in (0, 1, 2):
        for source in (0, 1):
            z = rng.normal(size=(n, 3))
            y = (z[:, task] > 0) ^ (rng.random(n) < (0.2 if task == 0 else 0.1))
            if task == 0:
                z[:, 1] = (2.0 * y - 1.0) * (1.5 if source == 0 else -1.5) + rng.normal(size=n)
            zs.append(z)
            ys += ["yes" if v else "no" for v in y]
            ts.append(np.full(n, task))
            es.append(np.full(n, source))
    return np.concatenate(zs), ys, np.concatenate(ts), np.concatenate(es)


def test_a_factor_whose_effect_flips_across_sources_is_dropped() -> None:
    from sit_causal.selection.graph import graph_from_energies
    from sit_causal.theory.graph import TaskFactorGraph
    from sit_causal.theory.uic import check_uic

    z, y, task, source = _flip_data()
    # the contribution energies give task 0's row to the flipping factor b: the energy graph keeps it there
    energies = np.array([[0.4, 0.55, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    assert graph_from_energies(energies, 0.8)[0].tolist() == [True, True, False]
    found = invariant_task_graph(z, y, task, source, energies, ["t0", "t1", "t2"], GraphConfig(), seed=0)
    assert found.statistic == "invariant" and found.invariant is not None
    assert found.invariant["invariant_sets"] == np.eye(3, dtype=int).tolist()
    assert found.invariant["sources_per_task"] == [2, 2, 2]
    chosen = {o["task"]: o for o in found.invariant["outputs"]}
    assert chosen["t0"]["output"] == "target" and chosen["t0"]["factors"] == ["z1"]  # a, not b
    assert chosen["t0"]["found"] and chosen["t0"]["p"] >= 0.05
    assert found.energies[0, 1] == 0.0 and np.allclose(found.energies.sum(1), 1.0)
    assert np.array_equal(found.adjacency, np.eye(3, dtype=bool)) and not found.repair.flips
    graph = TaskFactorGraph.from_matrix(found.adjacency.astype(int), factors=["z1", "z2", "z3"],
                                        tasks=["t0", "t1", "t2"])
    assert check_uic(graph).uic_holds


def test_the_statistic_is_checked_like_any_config_value() -> None:
    from sit_nlp.training.config import ConfigError, load_config

    assert load_config(None).graph.statistic == "energy"
    assert load_config(None, ["--graph.statistic=invariant"]).graph.statistic == "invariant"
    with pytest.raises(ConfigError) as err:
        load_config(None, ["--graph.statistic=ica"])
    assert "graph.statistic" in str(err.value) and "\n" not in str(err.value)


def test_the_invariant_selection_step_runs_inside_training(tmp_path: Path) -> None:
    """A tiny run on the toy mixture split into two sources per task: at step 3 of 6 the invariant statistic
    builds the graph, which satisfies the UIC, is written with what the test decided, and is installed."""
    from sit_causal.theory.graph import load_graph
    from sit_causal.theory.uic import check_uic
    from sit_nlp.data.records import read_records, write_records
    from sit_nlp.model.backbones import ASSETS
    from sit_nlp.training.checkpoint import load_trained
    from sit_nlp.training.config import load_config
    from sit_nlp.training.loop import train

    records = read_records(ASSETS / "tiny_train.jsonl")
    two = [dataclasses.replace(r, dataset=f"{r.task}/d{i % 2 + 1}") for i, r in enumerate(records)]
    write_records(two, tmp_path / "train.jsonl")
    out = tmp_path / "run"
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [
        f"--out_dir={out}", f"--train_file={tmp_path / 'train.jsonl'}", "--max_steps=6", "--log_every=3",
        "--batch_size=8", "--save_every=0", "--eval_every=0", "--quiet=true", "--find_at=0.5",
        "--examples_per_task=40", "--graph.statistic=invariant", "--sources_per_batch=2", "--n_factors=4"])
    train(cfg)
    detail = json.loads((out / "task_graph_energies.json").read_text())
    tasks = sorted({r.task for r in records})
    assert detail["step"] == 3 and detail["statistic"] == "invariant" and detail["tasks"] == tasks
    inv = detail["invariant"]
    assert inv["sources_per_task"] == [2] * len(tasks)
    assert np.allclose(np.array(inv["contribution_energies"]).sum(1), 1.0)
    assert np.allclose(np.array(detail["energies"]).sum(1), 1.0)
    # one output per yes/no-like task, one per word position of a generation task
    outputs = {(o["task"], o["output"]) for o in inv["outputs"]}
    assert ("sentiment", "target") in outputs and ("copy_text", "word 0") in outputs
    assert all(0.0 <= o["p"] <= 1.0 for o in inv["outputs"])
    graph = load_graph(out / "task_graph.json")
    assert detail["uic_holds"] and check_uic(graph).uic_holds
    assert graph.adjacency.tolist() == detail["adjacency"]
    model, _, cfg2 = load_trained(out / "final")
    assert cfg2.graph.statistic == "invariant" and model.has_task_graph
    assert np.array_equal(model.task_graph.numpy().astype(int), graph.adjacency.astype(int))
