"""The shared SIT latent module: factors, task-conditioned prior, task-guided selection, and the
UIC and task-distinction losses.

One implementation used by both halves of the project: :mod:`sit_causal` feeds it an MLP encoding of
synthetic observations, :mod:`sit_nlp` the hidden states of a transformer encoder. Its inputs are
representations, never raw data.

Shapes (``B`` = batch, ``*`` = any extra positions such as tokens, ``n`` = factors, ``d`` = factor dim):

* ``h_x``: ``(B, *, D_x)`` source representation (pooled: ``(B, D_x)``; per token: ``(B, T, D_x)``);
* ``h_t``: ``(B, D_t)`` task representation (an embedding of a task id, or a pooled instruction);
* ``context``: ``(B, D_c)`` the conditioning variable of the prior (dataset / task); defaults to ``h_t``;
* factors ``z``, posterior ``mean``/``logvar``: ``(B, *, n, d)``; prior ``mean``/``logvar``: ``(B, 1.., n, d)``;
* selection mask ``m_t``: ``(B, n)``; mask matrices over tasks: ``(m, n)``, **rows = tasks, columns = factors**.

The maths:

* posterior ``q(z | x) = N(mean(h_x), diag(exp(logvar(h_x))))``, log-variance clamped to
  ``[logvar_min, logvar_max]``; training uses the reparameterised sample ``mean + exp(logvar / 2) * eps``,
  evaluation the posterior mean;
* prior ``p(z | c) = N(mu(c), diag(exp(s(c))))``: a conditionally factorial Gaussian, an exponential
  family with sufficient statistics ``T(z) = (z, z^2)`` and natural parameters
  ``(mu / sigma^2, -1 / (2 sigma^2))`` that both depend on ``c`` (a zero-mean prior is a known failure);
* ``KL(q || p) = 1/2 sum_{i,k} [s - logvar + (exp(logvar) + (mean - mu)^2) / exp(s) - 1]``, in float32;
* selection ``m_t = sigmoid(w(h_t) / tau)``, or a hard-concrete sample, or a straight-through hard mask;
* source guidance ``z`` (all factors), target guidance ``m_t * z`` (only the selected ones; multiplying,
  never skipping modules, so every parameter gets a gradient under DDP).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sit_causal.theory.graph import TaskFactorGraph

__all__ = [
    "LatentConfig",
    "LatentOutput",
    "SITLatentModule",
    "gaussian_kl",
    "learned_graph",
    "selection_open_probability",
    "soft_separation",
    "task_distinction_loss",
    "uic_loss",
]

Selection = Literal["sigmoid", "hard-concrete", "straight-through", "none"]


@dataclass
class LatentConfig:
    """Configuration of :class:`SITLatentModule`.

    Arguments:
        n_factors: number of latent factors ``n``.
        input_dim: ``D_x``, last dimension of the source representation ``h_x``.
        task_dim: ``D_t``, dimension of the task representation ``h_t``.
        context_dim: ``D_c``, dimension of the prior's conditioning variable; ``None`` = ``task_dim``
            (the prior is conditioned on ``h_t``).
        factor_dim: ``d``, dimension of each factor (1 for scalar factors).
        hidden_dim: width of the prior and selection MLPs.
        selection: ``"sigmoid"`` (soft), ``"hard-concrete"`` (stochastic relaxed Bernoulli in training,
            Louizos et al. 2018), ``"straight-through"`` (hard 0/1 forward, sigmoid gradient backward), or
            ``"none"`` (every factor selected: the iVAE-style ablation).
        temperature: ``tau`` of the selection sigmoid (and of the concrete relaxation).
        learn_prior: condition the prior on ``context``; ``False`` gives the standard normal prior
            (a documented failure mode, kept as an ablation).
        logvar_min, logvar_max: clamp of every log-variance.
        selector_init_std: std of the selector's output weights at initialisation (0 = all tasks start
            with the same mask, a symmetric start that task distinction cannot leave).
        selector_init_logit: initial bias of every selection logit (1: gates start mostly open).
        max_logit: if set, selection logits are squashed to ``max_logit * tanh(raw / max_logit)``, so no
            gate saturates beyond ``sigmoid(max_logit / tau)`` and every gate keeps a gradient (unbounded
            logits of a task-embedding selector reach +/-20 within a hundred Adam steps, and a clamped
            hard-concrete gate then never moves again). ``None`` (default): raw logits.
    """

    n_factors: int
    input_dim: int
    task_dim: int
    context_dim: int | None = None
    factor_dim: int = 1
    hidden_dim: int = 64
    selection: Selection = "sigmoid"
    temperature: float = 1.0
    learn_prior: bool = True
    logvar_min: float = -9.0
    logvar_max: float = 5.0
    max_logit: float | None = None
    selector_init_std: float = 0.1
    selector_init_logit: float = 1.0

    def __post_init__(self) -> None:
        for name in ("n_factors", "input_dim", "task_dim", "factor_dim", "hidden_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"LatentConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.selection not in ("sigmoid", "hard-concrete", "straight-through", "none"):
            raise ValueError(f"unknown selection {self.selection!r}")
        if self.temperature <= 0:
            raise ValueError("LatentConfig.temperature must be > 0")
        if self.logvar_min >= self.logvar_max:
            raise ValueError("LatentConfig.logvar_min must be < logvar_max")
        if self.max_logit is not None and self.max_logit <= 0:
            raise ValueError("LatentConfig.max_logit must be > 0 (or None)")

    def to_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class LatentOutput:
    """Everything one forward pass of :class:`SITLatentModule` produces.

    Shapes: ``z``, ``mean``, ``logvar``: ``(B, *, n, d)``; ``prior_mean``, ``prior_logvar``: broadcastable
    to ``(B, *, n, d)``; ``kl``: ``(B, *)`` (summed over factors and factor dims, float32);
    ``mask``, ``mask_logits``: ``(B, n)``; ``source_guidance`` = ``z``;
    ``target_guidance`` = ``mask * z``, shape ``(B, *, n, d)``.
    """

    z: Tensor
    mean: Tensor
    logvar: Tensor
    prior_mean: Tensor
    prior_logvar: Tensor
    kl: Tensor
    mask: Tensor
    mask_logits: Tensor
    source_guidance: Tensor
    target_guidance: Tensor


def gaussian_kl(mean: Tensor, logvar: Tensor, prior_mean: Tensor, prior_logvar: Tensor) -> Tensor:
    """``KL(N(mean, e^logvar) || N(prior_mean, e^prior_logvar))`` summed over the last two dims
    (factors, factor dims), computed in float32 whatever the autocast dtype."""
    with torch.autocast(device_type=mean.device.type, enabled=False):
        m, lv = mean.float(), logvar.float()
        pm, plv = prior_mean.float(), prior_logvar.float()
        kl = 0.5 * (plv - lv + (lv.exp() + (m - pm).pow(2)) * torch.exp(-plv) - 1.0)
        return kl.sum(dim=(-2, -1))


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


class SITLatentModule(nn.Module):
    """Latent factors with a task-conditioned prior and task-guided selection (docs/design.md section 4).

    Sub-modules: ``posterior`` (linear ``D_x -> 2 n d``: the encoder that produces ``h_x`` lives in the
    model using this module), ``prior`` (MLP ``D_c -> 2 n d``), ``selector`` (MLP ``D_t -> n``).
    """

    def __init__(self, config: LatentConfig) -> None:
        super().__init__()
        self.config = config
        n, d = config.n_factors, config.factor_dim
        self.posterior = nn.Linear(config.input_dim, 2 * n * d)
        context_dim = config.task_dim if config.context_dim is None else config.context_dim
        self.prior = _mlp(context_dim, config.hidden_dim, 2 * n * d)
        self.selector = _mlp(config.task_dim, config.hidden_dim, n)
        self.reset_selector()

    def reset_selector(self, generator: torch.Generator | None = None) -> None:
        """The selector's documented start: output bias ``selector_init_logit`` for every gate (1: open,
        ``sigmoid(1) ~ 0.73``, so every factor gets gradient) and output weights ``N(0, selector_init_std^2)``
        drawn from ``generator`` (0: exactly zero, every task starts with the same mask). A model that
        re-initialises its parameters from its own seed calls this afterwards to restore the start.
        (At exactly zero the distinction loss sits at a symmetric saddle in ``sit_nlp``: it never moved.)"""
        cfg = self.config
        out = self.selector[-1]
        with torch.no_grad():
            if cfg.selector_init_std > 0:
                out.weight.copy_(torch.randn(out.weight.shape, generator=generator) * cfg.selector_init_std)
            else:
                out.weight.zero_()
            out.bias.fill_(cfg.selector_init_logit)

    # ------------------------------------------------------------------ pieces
    def _split(self, out: Tensor) -> tuple[Tensor, Tensor]:
        n, d = self.config.n_factors, self.config.factor_dim
        out = out.reshape(*out.shape[:-1], 2, n, d)
        mean, logvar = out.unbind(dim=-3)
        return mean, logvar.clamp(self.config.logvar_min, self.config.logvar_max)

    def encode(self, h_x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and clamped log-variance, each ``(B, *, n, d)``."""
        return self._split(self.posterior(h_x))

    def prior_params(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Prior mean and clamped log-variance ``(B, n, d)`` from the conditioning variable ``(B, D_c)``."""
        if not self.config.learn_prior:
            shape = (context.shape[0], self.config.n_factors, self.config.factor_dim)
            zeros = context.new_zeros(shape)
            return zeros, zeros
        return self._split(self.prior(context))

    def selection_mask(
        self, h_t: Tensor, generator: torch.Generator | None = None, sample: bool | None = None
    ) -> tuple[Tensor, Tensor]:
        """The task's selection mask ``m_t`` ``(B, n)`` in ``[0, 1]`` and its logits ``(B, n)``.

        ``hard-concrete`` samples only when ``sample`` is true (default: in training; ``u ~ U(0,1)`` from
        ``generator``; ``m = clamp(sigmoid((logit + log u - log(1-u)) / tau) * 1.2 - 0.1, 0, 1)``);
        otherwise it is the deterministic ``clamp(sigmoid(logit / tau) * 1.2 - 0.1, 0, 1)``. ``sample``
        has no effect on the other selections (they are deterministic).
        """
        logits = self.selector(h_t)
        cfg = self.config
        if cfg.max_logit is not None:
            logits = cfg.max_logit * torch.tanh(logits / cfg.max_logit)
        if sample is None:
            sample = self.training
        if cfg.selection == "none":
            return torch.ones_like(logits), logits
        if cfg.selection == "sigmoid":
            return torch.sigmoid(logits / cfg.temperature), logits
        if cfg.selection == "straight-through":
            soft = torch.sigmoid(logits / cfg.temperature)
            hard = (logits > 0).to(soft.dtype)
            return hard + soft - soft.detach(), logits
        # hard-concrete, stretched to (-0.1, 1.1) and clipped
        if sample:
            u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
            u = u.clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / cfg.temperature)
        else:
            s = torch.sigmoid(logits / cfg.temperature)
        return (s * 1.2 - 0.1).clamp(0.0, 1.0), logits

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        h_x: Tensor,
        h_t: Tensor,
        context: Tensor | None = None,
        generator: torch.Generator | None = None,
        sample: bool | None = None,
        mask_override: Tensor | None = None,
    ) -> LatentOutput:
        """Run the module.

        Arguments:
            h_x: ``(B, *, D_x)`` source representation.
            h_t: ``(B, D_t)`` task representation.
            context: ``(B, D_c)`` conditioning variable of the prior; ``None`` uses ``h_t``.
            generator: source of the reparameterisation (and hard-concrete) noise; ``None`` uses
                torch's default generator.
            sample: draw ``z`` from the posterior (default: in training mode) or use its mean.
            mask_override: ``(B, n)`` masks to use instead of the selector's (a fixed task graph's rows);
                ``mask_logits`` are still the selector's.
        """
        if h_t.dim() != 2 or h_t.shape[0] != h_x.shape[0]:
            raise ValueError(f"h_t must be (B, D_t) with B = {h_x.shape[0]}, got {tuple(h_t.shape)}")
        mean, logvar = self.encode(h_x)
        extra = h_x.dim() - 2  # number of extra position dims between B and the factors
        pm, plv = self.prior_params(h_t if context is None else context)
        pm = pm.reshape(pm.shape[0], *([1] * extra), *pm.shape[1:])
        plv = plv.reshape(plv.shape[0], *([1] * extra), *plv.shape[1:])
        kl = gaussian_kl(mean, logvar, pm, plv)
        if sample is None:
            sample = self.training
        if sample:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar) * eps
        else:
            z = mean
        mask, logits = self.selection_mask(h_t, generator=generator)
        if mask_override is not None:
            if mask_override.shape != mask.shape:
                raise ValueError(f"mask_override must be {tuple(mask.shape)}, got {tuple(mask_override.shape)}")
            mask = mask_override.to(mask.dtype)
        mask_b = mask.reshape(mask.shape[0], *([1] * extra), mask.shape[1], 1).to(z.dtype)
        return LatentOutput(
            z=z, mean=mean, logvar=logvar, prior_mean=pm, prior_logvar=plv, kl=kl,
            mask=mask, mask_logits=logits, source_guidance=z, target_guidance=mask_b * z,
        )


# ---------------------------------------------------------------------- losses
def selection_open_probability(mask_logits: Tensor, config: LatentConfig) -> Tensor:
    """Probability that each gate of the selection is open (nonzero), the mask-sparsity penalty.

    * ``hard-concrete``: the expected L0 norm of Louizos et al. (2018),
      ``P(m > 0) = sigmoid(logit - tau * log(-gamma / zeta))`` with the stretch ``gamma = -0.1``,
      ``zeta = 1.1``. Unlike an L1 penalty on a soft mask it cannot be dodged by shrinking the mask and
      scaling the factor up, because the gate's noise is scale-free.
    * ``sigmoid`` and ``straight-through``: ``sigmoid(logit / tau)`` (the soft mask itself).
    * ``none``: ones (everything is selected).

    Arguments:
        mask_logits: ``(..., n)`` logits from :meth:`SITLatentModule.selection_mask`.
        config: the module's configuration (selection kind and temperature).

    Returns:
        ``(..., n)`` probabilities in ``[0, 1]``; their mean over a mask matrix ``(m, n)`` (rows = tasks,
        columns = factors) is the expected fraction of edges of the learned graph.
    """
    if config.selection == "none":
        return torch.ones_like(mask_logits)
    if config.selection == "hard-concrete":
        return torch.sigmoid(mask_logits - config.temperature * math.log(0.1 / 1.1))
    return torch.sigmoid(mask_logits / config.temperature)


def soft_separation(masks: Tensor, sharpness: float | None = None) -> Tensor:
    """Soft separation ``sep[i, j] = max_t M[t, i] (1 - M[t, j])`` of every ordered factor pair.

    Arguments:
        masks: ``(m, n)`` mask matrix, **rows = tasks, columns = factors**, entries in ``[0, 1]``.
        sharpness: ``None`` takes the exact max (subgradient through the argmax task); a positive
            value ``beta`` takes the smooth max ``(1/beta) log sum_t exp(beta * .)`` bounded above by
            ``max + log(m) / beta``.

    Returns:
        ``(n, n)`` matrix; ``sep[i, j]`` near 1 means some task reads ``i`` and not ``j`` (the UIC's
        requirement for the pair), near 0 that every task reading ``i`` also reads ``j``. The diagonal
        is meaningless and set to 1.
    """
    if masks.dim() != 2:
        raise ValueError(f"masks must be (tasks, factors), got shape {tuple(masks.shape)}")
    m = masks.float()
    pair = m.unsqueeze(2) * (1.0 - m).unsqueeze(1)  # (tasks, i, j)
    if sharpness is None:
        sep = pair.amax(dim=0)
    else:
        sep = torch.logsumexp(sharpness * pair, dim=0) / sharpness
        sep = sep.clamp(max=1.0)
    eye = torch.eye(m.shape[1], dtype=torch.bool, device=m.device)
    return sep.masked_fill(eye, 1.0)


def uic_loss(masks: Tensor, margin: float = 0.5, sharpness: float | None = None) -> Tensor:
    """Differentiable relaxation of the UIC on the learned mask matrix.

    ``L_uic = 1 / (n (n - 1)) * sum_{i != j} relu(margin - sep[i, j])^2`` with ``sep`` from
    :func:`soft_separation`. For a binary matrix that satisfies the UIC every ``sep[i, j] = 1`` and the
    loss is 0; a soft matrix whose entries are within ``delta`` of such a matrix has
    ``sep >= (1 - delta)^2`` and still scores 0 while ``(1 - delta)^2 >= margin``. A pair in containment
    (every task reading ``i`` reads ``j``) has ``sep[i, j] = 0`` and costs ``margin^2``; a factor read by
    no task costs ``margin^2`` for every partner.

    Arguments:
        masks: ``(m, n)``, rows = tasks, columns = factors, in ``[0, 1]``.
        margin: required separation of every pair, in ``(0, 1]``.
        sharpness: see :func:`soft_separation`.
    """
    n = masks.shape[1]
    if n < 2:
        return masks.new_zeros((), dtype=torch.float32)
    sep = soft_separation(masks, sharpness)
    off = ~torch.eye(n, dtype=torch.bool, device=masks.device)
    return F.relu(margin - sep[off]).pow(2).mean()


def task_distinction_loss(reps: Tensor, task_ids: Tensor, temperature: float = 0.1) -> Tensor:
    """Supervised contrastive (InfoNCE) loss over task ids: same task together, different tasks apart.

    With cosine similarities ``s_ab = <r_a, r_b> / (|r_a| |r_b|) / temperature`` and ``P(a)`` the other
    batch items of ``a``'s task::

        L = mean_{a : P(a) != {}} [ -1/|P(a)| sum_{p in P(a)} log( exp(s_ap) / sum_{k != a} exp(s_ak) ) ]

    (Khosla et al. 2020). If no item has a positive (every task appears once), the loss is the repulsion
    term alone, ``mean_a log sum_{k != a} exp(s_ak)``, which pushes different tasks apart. A batch of one
    task, or of one item, returns 0.

    Arguments:
        reps: ``(B, D)`` task representations or masks.
        task_ids: ``(B,)`` integer task ids.
        temperature: softmax temperature.
    """
    if reps.dim() != 2 or task_ids.shape != reps.shape[:1]:
        raise ValueError("reps must be (B, D) and task_ids (B,)")
    b = reps.shape[0]
    if b < 2 or bool((task_ids == task_ids[0]).all()):
        return reps.new_zeros((), dtype=torch.float32)
    r = F.normalize(reps.float(), dim=-1)
    sim = r @ r.T / temperature
    self_mask = torch.eye(b, dtype=torch.bool, device=reps.device)
    sim = sim.masked_fill(self_mask, -math.inf)
    log_denominator = torch.logsumexp(sim, dim=1)  # (B,)
    positives = (task_ids.unsqueeze(0) == task_ids.unsqueeze(1)) & ~self_mask
    n_pos = positives.sum(dim=1)
    if int(n_pos.max()) == 0:
        return log_denominator.mean()
    log_prob = sim - log_denominator.unsqueeze(1)
    pos_sum = log_prob.masked_fill(~positives, 0.0).sum(dim=1)
    has_pos = n_pos > 0
    return -(pos_sum[has_pos] / n_pos[has_pos]).mean()


def learned_graph(
    masks: Tensor | np.ndarray,
    threshold: float = 0.5,
    tasks: Sequence[str] | None = None,
    factors: Sequence[str] | None = None,
) -> TaskFactorGraph:
    """Binarise a ``(m, n)`` mask matrix (rows = tasks, columns = learned factors) at ``threshold``."""
    arr = masks.detach().float().cpu().numpy() if isinstance(masks, Tensor) else np.asarray(masks, float)
    n = arr.shape[1]
    names = [f"z{i + 1}" for i in range(n)] if factors is None else list(factors)
    return TaskFactorGraph.from_matrix(arr > threshold, factors=names, tasks=tasks)
