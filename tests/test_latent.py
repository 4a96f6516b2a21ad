"""Tests of the shared latent module: shapes, gradients, KL, selection, UIC and distinction losses."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from sit_causal.latent import (
    LatentConfig,
    SITLatentModule,
    gaussian_kl,
    learned_graph,
    selection_open_probability,
    soft_separation,
    task_distinction_loss,
    uic_loss,
)
from sit_causal.theory.uic import check_uic


def _module(selection: str = "sigmoid", d: int = 1, seed: int = 0) -> SITLatentModule:
    cfg = LatentConfig(n_factors=4, input_dim=12, task_dim=6, factor_dim=d, hidden_dim=16, selection=selection)
    with torch.random.fork_rng():  # parameter init from a seed without touching the caller's RNG state
        torch.manual_seed(seed)
        return SITLatentModule(cfg)


@pytest.mark.parametrize("selection", ["sigmoid", "hard-concrete", "straight-through", "none"])
@pytest.mark.parametrize("extra", [(), (7,)])
def test_shapes_and_every_parameter_gets_gradient(selection: str, extra: tuple[int, ...]) -> None:
    mod = _module(selection, d=3)
    g = torch.Generator().manual_seed(1)
    h_x = torch.randn(5, *extra, 12, generator=g)
    h_t = torch.randn(5, 6, generator=g)
    out = mod(h_x, h_t, generator=g)
    assert out.z.shape == (5, *extra, 4, 3)
    assert out.mean.shape == out.logvar.shape == out.z.shape
    assert out.kl.shape == (5, *extra)
    assert out.mask.shape == (5, 4)
    assert out.target_guidance.shape == out.z.shape
    assert torch.all((out.mask >= 0) & (out.mask <= 1))
    loss = out.kl.mean() + out.target_guidance.pow(2).mean() + out.source_guidance.mean()
    loss = loss + uic_loss(out.mask) + out.mask.sum()
    loss.backward()
    for name, p in mod.named_parameters():
        if selection == "none" and name.startswith("selector"):
            continue  # 'none' selects everything: the selector is unused by design
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_eval_uses_posterior_mean_and_training_samples() -> None:
    mod = _module()
    h_x, h_t = torch.randn(3, 12), torch.randn(3, 6)
    mod.eval()
    out = mod(h_x, h_t)
    assert torch.equal(out.z, out.mean)
    mod.train()
    out = mod(h_x, h_t, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(out.z, out.mean)


def test_explicit_generator_makes_samples_reproducible() -> None:
    mod = _module("hard-concrete")
    h_x, h_t = torch.randn(3, 12), torch.randn(3, 6)
    a = mod(h_x, h_t, generator=torch.Generator().manual_seed(5))
    b = mod(h_x, h_t, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.z, b.z) and torch.equal(a.mask, b.mask)


def test_target_guidance_is_mask_times_factors() -> None:
    mod = _module(d=2)
    out = mod(torch.randn(2, 5, 12), torch.randn(2, 6), sample=False)
    expected = out.z * out.mask[:, None, :, None]
    assert torch.allclose(out.target_guidance, expected)


def test_logvar_is_clamped() -> None:
    mod = _module()
    with torch.no_grad():
        mod.posterior.bias.fill_(100.0)
    out = mod(torch.zeros(2, 12), torch.zeros(2, 6))
    assert float(out.logvar.detach().max()) <= mod.config.logvar_max


def test_prior_depends_on_context_mean_and_variance() -> None:
    mod = _module()
    c1, c2 = torch.zeros(1, 6), torch.ones(1, 6)
    m1, v1 = mod.prior_params(c1)
    m2, v2 = mod.prior_params(c2)
    assert not torch.allclose(m1, m2) and not torch.allclose(v1, v2)


def test_gaussian_kl_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    m, lv, pm, plv = (torch.randn(4, 3, 2, generator=g) for _ in range(4))
    q = torch.distributions.Normal(m, (0.5 * lv).exp())
    p = torch.distributions.Normal(pm, (0.5 * plv).exp())
    ref = torch.distributions.kl_divergence(q, p).sum(dim=(-2, -1))
    assert torch.allclose(gaussian_kl(m, lv, pm, plv), ref, atol=1e-5)
    assert torch.allclose(gaussian_kl(m, lv, m, lv), torch.zeros(4), atol=1e-6)


def _all_binary(m: int, n: int) -> list[np.ndarray]:
    return [np.array(bits, dtype=float).reshape(m, n) for bits in itertools.product([0, 1], repeat=m * n)]


def test_uic_loss_is_zero_exactly_on_uic_graphs_small_exhaustive() -> None:
    """On every binary 3 x 3 matrix: loss 0 iff the UIC checker says the UIC holds."""
    for a in _all_binary(3, 3):
        holds = check_uic(learned_graph(a)).uic_holds
        loss = float(uic_loss(torch.tensor(a)))
        assert (loss == 0.0) == holds, a


def test_uic_loss_zero_with_margin_and_positive_on_violation() -> None:
    uic = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    soft = uic * 0.9 + 0.05  # within 0.05 of a UIC matrix
    assert check_uic(learned_graph(uic)).uic_holds
    assert float(uic_loss(soft, margin=0.5)) == 0.0
    nested = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    assert float(uic_loss(nested)) > 0.0
    # the gradient pushes a violating matrix towards separation
    x = nested.clone().mul(0.8).add(0.1).requires_grad_(True)
    uic_loss(x).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_soft_separation_smooth_upper_bounds_hard() -> None:
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 5, generator=g)
    hard = soft_separation(masks)
    smooth = soft_separation(masks, sharpness=50.0)
    assert torch.all(smooth >= hard - 1e-6)
    assert torch.all(smooth <= hard + np.log(6) / 50.0 + 1e-6)


def test_task_distinction_loss_prefers_separated_tasks() -> None:
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3, 8)
    together = centres[ids] + 0.01 * torch.randn(6, 8, generator=g)
    mixed = torch.randn(6, 8, generator=g)
    assert float(task_distinction_loss(together, ids)) < float(task_distinction_loss(mixed, ids))
    # one task only: nothing to distinguish
    assert float(task_distinction_loss(together, torch.zeros(6, dtype=torch.long))) == 0.0
    # all tasks distinct: repulsion only, lower when apart
    apart = torch.eye(3, 8)
    close = torch.ones(3, 8) + 0.01 * torch.randn(3, 8, generator=g)
    single = torch.arange(3)
    assert float(task_distinction_loss(apart, single)) < float(task_distinction_loss(close, single))


def test_learned_graph_of_module_is_checkable() -> None:
    mod = _module().eval()
    masks, _ = mod.selection_mask(torch.randn(5, 6))
    graph = learned_graph(masks, tasks=[f"t{i}" for i in range(5)])
    assert graph.adjacency.shape == (5, 4)
    assert graph.tasks[0] == "t0"
    check_uic(graph)  # runs on the learned graph


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        LatentConfig(n_factors=0, input_dim=3, task_dim=3)
    with pytest.raises(ValueError):
        LatentConfig(n_factors=2, input_dim=3, task_dim=3, selection="gumbel")  # type: ignore[arg-type]


def test_max_logit_bounds_selection_logits_and_keeps_gradient() -> None:
    cfg = LatentConfig(n_factors=4, input_dim=12, task_dim=6, hidden_dim=16, selection="hard-concrete",
                       max_logit=3.0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        mod = SITLatentModule(cfg)
    with torch.no_grad():
        mod.selector[-1].bias.fill_(6.0)
    h_t = torch.randn(5, 6, requires_grad=True)
    _, logits = mod.selection_mask(h_t, sample=False)
    assert float(logits.detach().max()) <= 3.0
    open_p = selection_open_probability(logits, cfg)
    open_p.sum().backward()
    assert float(mod.selector[-1].bias.grad.abs().sum()) > 0
    with pytest.raises(ValueError):
        LatentConfig(n_factors=2, input_dim=3, task_dim=3, max_logit=0.0)


def test_selection_open_probability_matches_sampled_gates() -> None:
    """The hard-concrete P(gate > 0) formula against the empirical rate of open sampled gates."""
    cfg = LatentConfig(n_factors=3, input_dim=4, task_dim=2, selection="hard-concrete", temperature=2 / 3)
    logits = torch.tensor([[-2.0, 0.0, 1.5]]).expand(20000, 3)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(logits.shape, generator=g).clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / cfg.temperature) * 1.2 - 0.1
    empirical = (s > 0).float().mean(0)
    assert torch.allclose(selection_open_probability(logits[:1], cfg)[0], empirical, atol=0.01)


def test_selector_starts_open_and_task_dependent() -> None:
    mod = _module()
    h_t = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    mask, logits = mod.selection_mask(h_t)
    assert torch.all(mask > 0.5)  # open: every factor gets gradient
    assert not torch.allclose(logits[0], logits[1])  # not the symmetric all-equal start
    flat = SITLatentModule(LatentConfig(n_factors=4, input_dim=12, task_dim=6, selector_init_std=0.0))
    _, flat_logits = flat.selection_mask(h_t)
    assert torch.allclose(flat_logits, torch.ones_like(flat_logits))
