"""The meta-SCM: config, invertible mixing, parent-only targets, random streams, files, splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sit_causal.sim.maps import build_mixing
from sit_causal.sim.scm import (
    SCMConfig,
    build_mechanism,
    generate,
    generate_train_test,
    load_dataset,
)
from sit_causal.theory.graph import TaskFactorGraph, save_graph

SMALL = SCMConfig(n_factors=4, n_tasks=4, datasets_per_task=2, samples_per_dataset=200, obs_dim=6, seed=5)


def test_shapes_types_and_dataset_to_task_map() -> None:
    ds = generate(SMALL)
    n_samples = 8 * 200
    assert ds.latents.shape == (n_samples, 4) and ds.x.shape == (n_samples, 6) and ds.y.shape == (n_samples,)
    assert ds.dataset_id.dtype == np.int64 and ds.task_id.dtype == np.int64 and ds.y.dtype == np.float64
    assert np.array_equal(np.bincount(ds.dataset_id), np.full(8, 200))
    assert np.array_equal(ds.task_id, ds.dataset_task[ds.dataset_id])
    assert np.array_equal(ds.dataset_task, [0, 0, 1, 1, 2, 2, 3, 3])
    assert ds.natural_params.shape == (8, 4, 1)
    assert ds.graph.adjacency.shape == (4, 4)
    # each dataset's latent means follow its natural parameters (gauss-mean: eta = mean)
    means = np.stack([ds.latents[ds.dataset_id == d].mean(axis=0) for d in range(8)])
    np.testing.assert_allclose(means, ds.natural_params[..., 0], atol=0.3)


@pytest.mark.parametrize("activation", ["leaky_relu", "xtanh"])
@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("obs_dim", [3, 7])
def test_mixing_is_invertible(activation: str, depth: int, obs_dim: int) -> None:
    rng = np.random.default_rng(depth * 10 + obs_dim)
    f = build_mixing(3, obs_dim, depth, activation, 0.2, rng)  # type: ignore[arg-type]
    latents = 3.0 * rng.standard_normal((2000, 3))
    x = f(latents)
    np.testing.assert_allclose(f.inverse(x), latents, atol=1e-9)
    # the Jacobian df/dL (central differences, (N, obs_dim, n)) has full column rank and bounded conditioning
    eps = 1e-6
    jac = np.stack([(f(latents[:300] + eps * e) - f(latents[:300] - eps * e)) / (2 * eps) for e in np.eye(3)],
                   axis=-1)
    assert jac.shape == (300, obs_dim, 3)
    sv = np.linalg.svd(jac, compute_uv=False)
    assert sv.min() > 0.2 ** (depth - 1) - 1e-6


def test_forward_noise_and_chunking_agree_with_the_plain_map() -> None:
    f = build_mixing(4, 6, 3, "leaky_relu", 0.2, np.random.default_rng(0))
    latents = np.random.default_rng(1).standard_normal((5000, 4))
    np.testing.assert_allclose(f.forward(latents, chunk=777), f(latents), rtol=1e-12)
    noisy = f.forward(latents, noise_std=0.1, rng=np.random.default_rng(2), chunk=1000)
    resid = noisy - f(latents)
    assert abs(resid.std() - 0.1) < 0.005 and abs(resid.mean()) < 0.005


@pytest.mark.parametrize("mode", ["uic", "bernoulli:0.5", "nested"])
def test_targets_move_with_every_parent_and_only_parents(mode: str) -> None:
    cfg = SCMConfig(n_factors=5, n_tasks=4, seed=3, graph_mode=mode)
    mech = build_mechanism(cfg)
    rng = np.random.default_rng(0)
    base = mech.family.sample(mech.natural_params, rng, samples_per_dataset=20)
    for t in range(cfg.n_tasks):
        g0 = mech.targets.task_function(base, t)
        for i in range(cfg.n_factors):
            moved = base.copy()
            moved[:, i] += 0.5
            delta = np.abs(mech.targets.task_function(moved, t) - g0)
            if mech.graph.adjacency[t, i]:
                assert delta.min() > 1e-3, (t, i)  # every sample moves: g_t is strictly monotone in L_i
            else:
                assert delta.max() == 0.0, (t, i)


def test_targets_are_nonlinear_and_each_sample_uses_its_own_task() -> None:
    cfg = SCMConfig(n_factors=3, n_tasks=3, target_noise=0.0, seed=1)
    mech = build_mechanism(cfg)
    ds = generate(cfg)
    all_tasks = mech.targets.all_tasks(ds.latents)
    np.testing.assert_allclose(ds.y, all_tasks[np.arange(ds.n_samples), ds.task_id])
    # a nonlinear g_t: the best affine fit leaves a clear residual
    t = 0
    design = np.column_stack([np.ones(ds.n_samples), ds.latents])
    coef, *_ = np.linalg.lstsq(design, all_tasks[:, t], rcond=None)
    resid = all_tasks[:, t] - design @ coef
    assert resid.var() > 1e-3 * all_tasks[:, t].var()


def test_classification_labels() -> None:
    ds = generate(SCMConfig(target_kind="classification", seed=2))
    assert ds.y.dtype == np.int64 and set(np.unique(ds.y)) == {0, 1}
    for t in range(ds.n_tasks):
        assert 0.3 < ds.y[ds.task_id == t].mean() < 0.7  # thresholds at the median of g_t


def test_seed_streams_are_separate_and_reproducible() -> None:
    a, b = generate(SMALL), generate(SMALL)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    other = generate(SMALL, stream=1)
    assert np.array_equal(other.natural_params, a.natural_params) and other.graph == a.graph
    assert not np.allclose(other.latents, a.latents)
    # more samples: same mechanism, and the first dataset's samples are unchanged
    bigger = SCMConfig(**{**SMALL.to_dict(), "samples_per_dataset": 400})
    m1, m2 = build_mechanism(SMALL), build_mechanism(bigger)
    assert np.array_equal(m1.natural_params, m2.natural_params)
    assert all(np.array_equal(w1, w2) for w1, w2 in zip(m1.mixing.weights, m2.mixing.weights, strict=True))
    assert np.array_equal(m1.targets.a, m2.targets.a)
    # a different target kind leaves the prior and the mixing alone
    m3 = build_mechanism(SCMConfig(**{**SMALL.to_dict(), "target_kind": "classification"}))
    assert np.array_equal(m1.natural_params, m3.natural_params)
    assert np.array_equal(m1.mixing.weights[0], m3.mixing.weights[0])
    assert not np.array_equal(generate(SCMConfig(**{**SMALL.to_dict(), "seed": 6})).x[:10], a.x[:10])


def test_train_test_from_one_mechanism() -> None:
    train, test = generate_train_test(SMALL, test_samples_per_dataset=50)
    assert test.n_samples == 8 * 50 and train.stream == 0 and test.stream == 1
    mech = train.mechanism()
    clean = mech.mixing(test.latents)
    assert np.abs(test.x - clean).max() < 0.1  # the test x come from the same f (noise std 0.01)
    assert not np.allclose(train.latents[:50], test.latents[:50])


def test_split_is_stratified_disjoint_and_complete() -> None:
    ds = generate(SMALL)
    train, test = ds.split(0.25, np.random.default_rng(0))
    assert train.n_samples + test.n_samples == ds.n_samples
    assert np.array_equal(np.bincount(test.dataset_id), np.full(8, 50))
    rows = np.concatenate([train.latents, test.latents])
    assert np.unique(rows, axis=0).shape[0] == ds.n_samples
    with pytest.raises(ValueError):
        ds.split(1.0, np.random.default_rng(0))


def test_save_load_round_trip(tmp_path: Path) -> None:
    ds = generate(SCMConfig(**{**SMALL.to_dict(), "target_kind": "classification"}), stream=2)
    out = ds.save(tmp_path / "run")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "data.npz", "graph.json"]
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["seed"] == 5 and meta["stream"] == 2
    assert {"numpy", "python", "scipy", "sit"} <= set(meta["versions"])
    back = load_dataset(out)
    for name in ("dataset_id", "task_id", "latents", "x", "y", "natural_params", "dataset_task"):
        a, b = getattr(ds, name), getattr(back, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert back.graph == ds.graph and back.config == ds.config and back.stream == 2
    rebuilt = back.mechanism()  # the mechanism is reproducible from the files alone
    np.testing.assert_allclose(rebuilt.mixing.inverse(rebuilt.mixing(back.latents)), back.latents, atol=1e-9)
    with np.load(out / "data.npz", allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)


def test_graph_from_a_file(tmp_path: Path) -> None:
    graph = TaskFactorGraph.from_matrix([[1, 1, 0], [0, 1, 1], [1, 0, 1]],
                                        factors=["a", "b", "c"], tasks=["t1", "t2", "t3"])
    path = tmp_path / "g.json"
    save_graph(graph, path, fmt="node-link")
    ds = generate(SCMConfig(n_factors=3, n_tasks=3, samples_per_dataset=10, graph_path=str(path)))
    assert ds.graph == graph
    with pytest.raises(ValueError, match="n_factors=4"):
        generate(SCMConfig(n_factors=4, n_tasks=3, obs_dim=4, graph_path=str(path)))


def test_families_and_activations_all_generate() -> None:
    for family in ("gauss-mean", "gauss-meanvar", "laplace-scale"):
        for activation in ("leaky_relu", "xtanh"):
            cfg = SCMConfig(family=family, activation=activation, samples_per_dataset=50,  # type: ignore[arg-type]
                            mixing_depth=2, seed=9)
            ds = generate(cfg)
            assert np.isfinite(ds.x).all() and np.isfinite(ds.y).all()
            assert ds.natural_params.shape[-1] == (2 if family == "gauss-meanvar" else 1)
    mech = build_mechanism(SCMConfig(family="gauss-meanvar", n_factors=5, n_tasks=4, datasets_per_task=2))
    assert not mech.variety().holds  # 8 datasets < 5*2 + 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"obs_dim": 3}, "obs_dim"),
        ({"family": "gamma"}, "family"),
        ({"family_options": {"bogus": 1}}, "bogus"),
        ({"activation": "relu"}, "activation"),
        ({"activation_slope": 0.0}, "activation_slope"),
        ({"target_kind": "ranking"}, "target_kind"),
        ({"obs_noise": -1.0}, "obs_noise"),
        ({"n_tasks": 0}, "n_tasks"),
        ({"seed": -1}, "seed"),
        ({"graph_mode": "ring"}, "graph mode"),
    ],
)
def test_config_rejects_bad_values(change: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        SCMConfig(**{**SMALL.to_dict(), **change})


def test_config_dict_round_trip_rejects_unknown_keys() -> None:
    assert SCMConfig.from_dict(SMALL.to_dict()) == SMALL
    assert hash(SCMConfig.from_dict(SMALL.to_dict())) == hash(SMALL)
    assert SCMConfig(seed=np.int64(3), obs_noise=0).to_dict()["seed"] == 3
    json.dumps(SMALL.to_dict())
    with pytest.raises(ValueError, match="unknown SCMConfig key"):
        SCMConfig.from_dict({**SMALL.to_dict(), "n_layers": 3})


def test_uic_mode_needs_enough_tasks() -> None:
    with pytest.raises(ValueError, match="Sperner"):
        build_mechanism(SCMConfig(n_factors=7, n_tasks=4, obs_dim=7))
