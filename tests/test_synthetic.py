"""Tests of the synthetic SIT model and its baselines: shapes, gradients, method switches, and that a
short training run recovers factors well above the entangled floor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sit_causal.experiments.experiment import SyntheticTrainConfig
from sit_causal.experiments.runner import to_batch, train_model
from sit_causal.experiments.synthetic import (
    SYNTHETIC_METHODS,
    Batch,
    MultiTaskModel,
    SyntheticSIT,
    build_synthetic_model,
    method_configs,
)
from sit_causal.metrics import mcc
from sit_causal.objective import ObjectiveConfig
from sit_causal.sim.scm import SCMConfig, generate_train_test
from sit_causal.theory.graph import TaskFactorGraph


def _batch(b: int = 32, x_dim: int = 6, m: int = 3, k: int = 6, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    task = torch.randint(0, m, (b,), generator=g)
    return Batch(x=torch.randn(b, x_dim, generator=g), y=torch.randn(b, 1, generator=g), task_id=task,
                 dataset_id=task * (k // m) + torch.randint(0, k // m, (b,), generator=g))


def _build(method: str, seed: int = 0):
    cfg, objective = method_configs(method, n_factors=4, x_dim=6, n_tasks=3, n_datasets=6, hidden_dim=16,
                                    embed_dim=8, head_hidden=8)
    return build_synthetic_model(cfg, objective, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", SYNTHETIC_METHODS)
def test_every_method_has_shapes_and_gradients(method: str) -> None:
    model = _build(method)
    assert isinstance(model, MultiTaskModel if method in ("multitask", "sparse-multitask") else SyntheticSIT)
    batch = _batch()
    terms = model.loss_terms(batch, generator=torch.Generator().manual_seed(1))
    loss = model.objective.total(terms, progress=0.9)
    assert loss.dim() == 0 and torch.isfinite(loss)
    weights = model.objective.weights(0.9)
    assert loss.item() == pytest.approx(sum(weights[k] * v.item() for k, v in terms.items()), rel=1e-5)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for n, g in grads.items()
               if not (model.config.selection == "none" and ("selector" in n or "task_embedding" in n))), method
    rep = model.represent(batch.x)
    assert rep.shape == (32, 4)
    masks = model.task_masks()
    if method in ("ivae", "multitask"):
        assert masks is None
    elif method == "sparse-multitask":
        assert masks is not None and masks.shape == (3, 4) and torch.allclose(masks.max(1).values, torch.ones(3))
    else:
        assert masks is not None and masks.shape == (3, 4)
        assert torch.all((masks >= 0) & (masks <= 1))


def test_method_switches_change_the_loss_terms() -> None:
    batch = _batch()
    terms = {}
    for method in SYNTHETIC_METHODS:
        model = _build(method)
        terms[method] = {k for k, v in model.loss_terms(batch).items() if model.objective.weights(0.9)[k] > 0}
    assert {"target", "source", "kl", "uic", "distinction", "sparsity"} <= terms["sit"]
    assert "uic" not in terms["sit-no-uic"] and "distinction" in terms["sit-no-uic"]
    assert "distinction" not in terms["sit-no-distinction"] and "uic" in terms["sit-no-distinction"]
    assert "target" not in terms["ivae"] and "source" in terms["ivae"]
    assert terms["multitask"] == {"target"}
    assert terms["sparse-multitask"] == {"target", "sparsity"}


def test_sparse_multitask_group_lasso_is_the_heads_factor_norms() -> None:
    model = _build("sparse-multitask")
    assert model.objective.w_sparsity > 0 and model.objective.w_source == 0 and model.objective.w_kl == 0
    with torch.no_grad():
        model.heads.w1.zero_()
        model.heads.w2.zero_()
        model.heads.w1[1, 2, 0] = 3.0  # task 1 reads factor 2 only, with group norm 3
        model.heads.w1[0, 0, :2] = torch.tensor([3.0, 4.0])  # task 0 reads factor 0, norm 5
    terms = model.loss_terms(_batch())
    assert terms["sparsity"].item() == pytest.approx((5.0 + 3.0) / 3, abs=1e-4)  # mean over the 3 tasks
    masks = model.task_masks()
    assert masks is not None and masks[0, 0] == 1 and masks[1, 2] == 1 and masks[0, 1:].abs().max() < 1e-5
    # the penalty cannot be evaded by rescaling the representation: the heads see a batch-standardised bottleneck
    x = _batch().x
    model.train()
    z = model.encoder(x)
    assert torch.allclose(model.norm(z), model.norm(10.0 * z), atol=0.02)
    assert torch.allclose(model.norm(z).mean(0), torch.zeros(4), atol=1e-5)
    # an explicit weight wins over the method's default
    _, obj = method_configs("sparse-multitask", w_sparsity=0.7)
    assert obj.w_sparsity == 0.7


def test_schedules_ramp_from_zero() -> None:
    cfg = ObjectiveConfig(kl_anneal=0.2, w_kl=1.0, w_sparsity=0.5, sparsity_start=0.2, sparsity_ramp=0.4)
    assert cfg.beta(0.0) == 0.0 and cfg.beta(0.1) == pytest.approx(0.5) and cfg.beta(0.5) == 1.0
    assert cfg.sparsity_weight(0.1) == 0.0
    assert cfg.sparsity_weight(0.4) == pytest.approx(0.25) and cfg.sparsity_weight(1.0) == 0.5


def test_model_is_a_function_of_its_generator() -> None:
    a = _build("sit", 3)
    b = _build("sit", 3)
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), na


def test_config_rejects_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        method_configs("vae")
    with pytest.raises(ValueError, match="unknown model or objective field"):
        method_configs("sit", w_uicc=1.0)


@pytest.mark.slow
def test_short_training_recovers_factors_above_the_entangled_floor() -> None:
    """3 factors, 3 tasks each reading one factor (the UIC holds), a leaky-ReLU mixing: 600 steps of
    SIT lift the held-out MCC far above both the untrained model and a random rotation of the truth."""
    graph = TaskFactorGraph.from_matrix(np.eye(3, dtype=int))
    scm = SCMConfig(n_factors=3, n_tasks=3, datasets_per_task=3, samples_per_dataset=300, obs_dim=6,
                    mixing_depth=2, seed=0)
    train, test = generate_train_test(scm, 300, graph=graph)
    stats = ((train.x.mean(0), train.x.std(0)), (np.zeros(3), np.ones(3) * train.y.std()))
    tr, te = to_batch(train, *stats), to_batch(test, *stats)
    cfg, objective = method_configs("sit", n_factors=3, x_dim=6, n_tasks=3, n_datasets=9, hidden_dim=32)
    gen = torch.Generator().manual_seed(0)
    model = build_synthetic_model(cfg, objective, gen)
    model.eval()
    before = mcc(test.latents, model.represent(te.x).double().numpy()).score
    train_model(model, tr, SyntheticTrainConfig(steps=600, batch_size=512, lr=5e-3), gen)
    after = mcc(test.latents, model.represent(te.x).double().numpy()).score
    rng = np.random.default_rng(0)  # the entangled floor: mean MCC of random rotations of the truth
    floor = np.mean([mcc(test.latents, test.latents @ np.linalg.qr(rng.standard_normal((3, 3)))[0]).score
                     for _ in range(20)])
    assert after > 0.9, (before, after, floor)
    assert after > max(before, floor) + 0.1, (before, after, floor)


def test_model_and_objective_fields_reach_the_model() -> None:
    cfg, objective = method_configs("sit-no-uic", n_factors=3, x_dim=6, n_tasks=3, n_datasets=6, learn_prior=False,
                                    w_kl=0.25, max_logit=2.0)
    model = build_synthetic_model(cfg, objective, torch.Generator().manual_seed(0))
    assert model.latent.config.learn_prior is False and model.latent.config.max_logit == 2.0
    assert model.objective.w_kl == 0.25 and model.objective.w_uic == 0.0  # the method's switch on top


def test_torch_threads_sets_and_restores_the_count_even_on_an_error() -> None:
    import torch

    from sit_causal.threads import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
