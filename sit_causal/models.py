"""The synthetic SIT model and its baselines, trained by :mod:`sit_causal.simulate`.

Every model maps observations ``x`` ``(B, x_dim)`` to a representation ``(B, n)`` that is scored against
the true factors ``L`` ``(B, n)``. Methods (``ModelConfig.method``):

* ``"sit"``: ``x -> MLP encoder -> h_x -> SITLatentModule -> z`` ``(B, n)``. The prior ``p(z | d)`` is
  conditioned on an embedding of the dataset id ``d`` (iVAE's auxiliary variable; mean and variance both
  depend on ``d``); the task representation ``h_t`` is a learned embedding of the task id; the selection
  mask ``m_t = m(h_t)`` ``(B, n)`` comes from ``h_t``. A decoder reconstructs ``x`` from all factors and
  one MLP head per task predicts ``Y_t`` from the selected factors ``m_t * z`` only. Loss::

      L = w_tgt * L_tgt + a * L_src + beta(step) * KL + b * L_uic(M) + c * L_dis(M) + s * L_sparse(M)

  with ``L_tgt = mean_B ||y - head_t(m_t * z)||^2 / (2 sigma_y^2)``,
  ``L_src = mean_B ||x - dec(z)||^2 / (2 sigma_x^2)``, ``KL = mean_B KL(q(z | x) || p(z | d))`` with
  ``beta`` annealed linearly from 0 to ``beta_kl``, and ``M`` ``(m, n)`` (rows = tasks, columns =
  factors) the gate-open probabilities of all training tasks: ``L_uic`` = :func:`~sit_causal.latent.uic_loss`,
  ``L_dis`` = :func:`~sit_causal.latent.task_distinction_loss` over the rows of ``M`` (each task once:
  masks of different tasks pushed apart), ``L_sparse`` = mean gate-open probability
  (:func:`~sit_causal.latent.selection_open_probability`, the expected L0 of hard-concrete gates).
  The method ``sit`` is this model followed by the selection step on its frozen representation
  (:mod:`sit_causal.align`); ``sit-joint`` is this model alone (masks learned jointly with the
  representation, which in practice leaves them open: docs/results/simulate.md).
* ``"sit-no-uic"`` / ``"sit-no-distinction"``: ``b = 0`` / ``c = 0`` here and in the selection step.
* ``"ivae"``: the same encoder, latent module (``selection="none"``), prior on the dataset and decoder;
  no task heads (``L = L_src + beta KL``): identifiable from the prior alone (iVAE), which under a
  mean-modulated prior (``k = 1``) means only up to a linear map.
* ``"multitask"``: the same encoder, a linear bottleneck of width ``n`` (its representation) and one
  head per task reading the whole bottleneck; ``L = L_tgt``. No latent module, no reconstruction.

Why the task heads identify the factors (DESIGN.md section 3). Say the prior gives ``z = A L + c``
(iVAE, linear identifiability). Head ``t`` sees only ``z[S'_t]``; to predict ``Y_t = g_t(L[S_t])``, a
generic nonlinear function of every factor of ``S_t``, the row space of ``A[S'_t]`` must contain the
coordinate axes of ``S_t``. The sparsity penalty makes ``|S'_t| = |S_t|``, so ``A[S'_t]`` is supported on
the columns ``S_t`` exactly: ``A[j, k] != 0`` only if every task selecting ``z_j`` reads ``L_k``, i.e.
``C_j ⊆ C_k``. When the task sets form an antichain (the UIC) only ``k = j`` remains, and ``A`` is a
scaled permutation; a factor with a non-empty mixing set keeps the entries of its mixing set.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

import torch
from torch import Tensor, nn

from sit_causal.latent import (
    LatentConfig,
    LatentOutput,
    SITLatentModule,
    selection_open_probability,
    task_distinction_loss,
    uic_loss,
)

__all__ = [
    "METHODS",
    "Batch",
    "Method",
    "ModelConfig",
    "MultiTaskModel",
    "SITModel",
    "SyntheticModel",
    "TaskHeads",
    "build_model",
    "training_method",
    "unmixing_step",
]

Method = Literal["sit", "sit-joint", "sit-intersect", "ivae", "multitask", "sit-no-uic", "sit-no-distinction"]
METHODS: tuple[str, ...] = ("sit", "sit-joint", "sit-intersect", "ivae", "multitask", "sit-no-uic",
                            "sit-no-distinction")
"""Every method of ``sit-causal simulate``. ``sit``, ``sit-no-uic`` and ``sit-no-distinction`` train the SIT
model of this module and then learn the selection on the frozen representation
(:func:`sit_causal.align.align_by_task_sparsity`; the ablation switches off its loss there too);
``sit-joint`` is the SIT model alone (masks learned jointly with the representation) and ``sit-intersect``
the SIT model followed by :func:`sit_causal.intersect.identify_by_intersection`. ``sit``, ``sit-joint`` and
``sit-intersect`` share one trained model per seed (identical configuration and seed)."""

UnmixStep = Literal["align", "intersect"]
_POST_HOC: dict[str, tuple[str, UnmixStep | None]] = {
    "sit": ("sit", "align"),
    "sit-joint": ("sit", None),
    "sit-intersect": ("sit", "intersect"),
    "sit-no-uic": ("sit-no-uic", "align"),
    "sit-no-distinction": ("sit-no-distinction", "align"),
}


def training_method(method: str) -> str:
    """The model a method trains (``sit-joint`` and ``sit-intersect`` train ``sit``'s model)."""
    return _POST_HOC.get(method, (method, None))[0]


def unmixing_step(method: str) -> UnmixStep | None:
    """The step applied to the trained model's representation: ``"align"``, ``"intersect"`` or ``None``."""
    return _POST_HOC.get(method, (method, None))[1]


@dataclass
class Batch:
    """One batch of the meta-SCM's samples.

    Shapes: ``x`` ``(B, x_dim)`` float; ``y`` ``(B, y_dim)`` float, the target of the sample's own task;
    ``task_id`` ``(B,)`` long in ``[0, m)``; ``dataset_id`` ``(B,)`` long in ``[0, K)``.
    """

    x: Tensor
    y: Tensor
    task_id: Tensor
    dataset_id: Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def index(self, idx: Tensor) -> Batch:
        """The sub-batch at integer positions ``idx`` ``(b,)``."""
        return Batch(self.x[idx], self.y[idx], self.task_id[idx], self.dataset_id[idx])


@dataclass
class ModelConfig:
    """One configuration for every method; :meth:`for_method` sets the method's switches.

    Arguments:
        method: one of :data:`METHODS`.
        n_factors: ``n``, learned factors (the representation's width).
        x_dim, y_dim: observation and per-task target dimensions.
        n_tasks: ``m``, training tasks (task ids ``0..m-1``).
        n_datasets: ``K``, datasets (the prior's auxiliary variable, ids ``0..K-1``).
        hidden_dim, encoder_layers: the encoder MLP ``x -> h_x`` (and the mirrored decoder).
        embed_dim: width of the task and dataset embeddings (``h_t`` and the prior's context).
        head_hidden: width of each task head's hidden layer.
        selection, temperature: the latent module's selection (see :class:`~sit_causal.latent.LatentConfig`).
        w_target, w_source, w_uic, w_distinction, w_sparsity: loss weights ``w_tgt, a, b, c, s``.
        beta_kl: final KL weight; ``kl_anneal``: fraction of training over which it ramps up from 0.
        sparsity_start, sparsity_ramp: the sparsity weight is 0 until the fraction ``sparsity_start`` of
            training, then ramps linearly to ``w_sparsity`` over the fraction ``sparsity_ramp`` (gates
            closed before the factors are learned never reopen: a closed hard-concrete gate gets no
            gradient from the target loss).
        sigma_x, sigma_y: likelihood standard deviations of reconstruction and targets.
        max_logit: bound of the selection logits (:class:`~sit_causal.latent.LatentConfig`); ``None`` = unbounded.
        mask_lr_scale: learning-rate multiplier of the selection parameters (selector and task
            embedding): the gates must move slower than the representation, or they are decided by a
            random representation in the first steps.
        mask_init_logit: initial selection logit of every gate (the bias of the selector's output layer).
        uic_margin: margin of the UIC loss.
        distinction_temperature: temperature of the task distinction loss.
    """

    method: str = "sit"
    n_factors: int = 5
    x_dim: int = 5
    y_dim: int = 1
    n_tasks: int = 8
    n_datasets: int = 40
    hidden_dim: int = 64
    encoder_layers: int = 3
    embed_dim: int = 16
    head_hidden: int = 32
    selection: str = "hard-concrete"
    temperature: float = 2.0 / 3.0
    w_target: float = 1.0
    w_source: float = 1.0
    w_uic: float = 1.0
    w_distinction: float = 0.1
    w_sparsity: float = 5.0
    beta_kl: float = 1.0
    kl_anneal: float = 0.2
    sparsity_start: float = 0.0
    sparsity_ramp: float = 0.2
    sigma_x: float = 0.2
    sigma_y: float = 0.1
    max_logit: float | None = 3.0
    mask_lr_scale: float = 1.0
    mask_init_logit: float = 1.0
    uic_margin: float = 0.5
    distinction_temperature: float = 0.5

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        for name in ("n_factors", "x_dim", "y_dim", "n_tasks", "n_datasets", "hidden_dim", "encoder_layers",
                     "embed_dim", "head_hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("sigma_x", "sigma_y", "temperature"):
            if float(getattr(self, name)) <= 0:
                raise ValueError(f"ModelConfig.{name} must be > 0")

    @classmethod
    def for_method(cls, method: str, **kwargs: object) -> ModelConfig:
        """The configuration of ``method`` with its switches applied on top of ``kwargs``."""
        cfg = cls(method=method, **kwargs)  # type: ignore[arg-type]
        if method == "sit-no-uic":
            cfg = replace(cfg, w_uic=0.0)
        elif method == "sit-no-distinction":
            cfg = replace(cfg, w_distinction=0.0)
        elif method == "ivae":
            cfg = replace(cfg, w_target=0.0, w_uic=0.0, w_distinction=0.0, w_sparsity=0.0, selection="none")
        elif method == "multitask":
            cfg = replace(cfg, w_source=0.0, beta_kl=0.0, w_uic=0.0, w_distinction=0.0, w_sparsity=0.0,
                          selection="none")
        return cfg

    def to_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def beta(self, progress: float) -> float:
        """KL weight at training progress ``progress in [0, 1]``: ``beta_kl * min(1, progress / kl_anneal)``."""
        if self.kl_anneal <= 0:
            return self.beta_kl
        return self.beta_kl * min(1.0, progress / self.kl_anneal)

    def sparsity_weight(self, progress: float) -> float:
        """Mask-sparsity weight at ``progress``: 0 before ``sparsity_start``, then a linear ramp to ``w_sparsity``."""
        if progress < self.sparsity_start:
            return 0.0
        if self.sparsity_ramp <= 0:
            return self.w_sparsity
        return self.w_sparsity * min(1.0, (progress - self.sparsity_start) / self.sparsity_ramp)


def _mlp(d_in: int, d_hidden: int, d_out: int | None, layers: int) -> nn.Sequential:
    """``layers`` hidden layers of width ``d_hidden`` with leaky-ReLU, then a linear output to ``d_out``
    (``None``: no output layer; the last hidden activation is the output)."""
    mods: list[nn.Module] = []
    d = d_in
    for _ in range(layers):
        mods += [nn.Linear(d, d_hidden), nn.LeakyReLU(0.2)]
        d = d_hidden
    if d_out is not None:
        mods.append(nn.Linear(d, d_out))
    return nn.Sequential(*mods)


class TaskHeads(nn.Module):
    """``m`` independent one-hidden-layer MLP heads ``R^n -> R^{y_dim}``, evaluated in one batched pass.

    ``head_t(u) = W2_t^T tanh(W1_t^T u + b1_t) + b2_t`` with ``W1`` ``(m, n, H)``, ``W2`` ``(m, H, y)``.
    :meth:`forward` evaluates every head on every row and keeps each row's own task (``m`` is small).
    """

    def __init__(self, n_tasks: int, in_dim: int, hidden: int, out_dim: int, generator: torch.Generator) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(n_tasks, in_dim, hidden, generator=generator) / in_dim**0.5)
        self.b1 = nn.Parameter(torch.zeros(n_tasks, hidden))
        self.w2 = nn.Parameter(torch.randn(n_tasks, hidden, out_dim, generator=generator) / hidden**0.5)
        self.b2 = nn.Parameter(torch.zeros(n_tasks, out_dim))

    def forward(self, u: Tensor, task_id: Tensor) -> Tensor:
        """``u`` ``(B, n)``, ``task_id`` ``(B,)`` -> predictions ``(B, y_dim)`` of each row's task head."""
        h = torch.tanh(torch.einsum("bn,tnh->bth", u, self.w1) + self.b1)  # (B, m, H)
        out = torch.einsum("bth,thy->bty", h, self.w2) + self.b2  # (B, m, y)
        return out[torch.arange(u.shape[0], device=u.device), task_id]


def _init_from(module: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise every ``nn.Linear`` / ``nn.Embedding`` of ``module`` from ``generator``
    (Kaiming-uniform-like for Linear, N(0, 1) for embeddings), so a model is a function of its seed."""
    for mod in module.modules():
        if isinstance(mod, nn.Linear):
            bound = 1.0 / mod.in_features**0.5
            with torch.no_grad():
                mod.weight.copy_((torch.rand(mod.weight.shape, generator=generator) * 2 - 1) * bound)
                mod.bias.copy_((torch.rand(mod.bias.shape, generator=generator) * 2 - 1) * bound)
        elif isinstance(mod, nn.Embedding):
            with torch.no_grad():
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=generator))


class SyntheticModel(nn.Module):
    """Common interface of the synthetic models (what :mod:`sit_causal.simulate` relies on)."""

    config: ModelConfig

    def loss(
        self, batch: Batch, progress: float, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Total training loss (scalar) and every unweighted term as a float (for logging).

        ``progress in [0, 1]`` is the fraction of training done (drives the KL and sparsity schedules).
        """
        raise NotImplementedError

    def param_groups(self, lr: float) -> list[dict[str, object]]:
        """Adam parameter groups (default: every parameter at ``lr``)."""
        return [{"params": list(self.parameters()), "lr": lr}]

    @torch.no_grad()
    def represent(self, x: Tensor) -> Tensor:
        """The representation scored against the true factors: ``(N, x_dim) -> (N, n)``."""
        raise NotImplementedError

    @torch.no_grad()
    def task_masks(self) -> Tensor | None:
        """Deterministic selection masks of the training tasks ``(m, n)`` (rows = tasks, columns =
        learned factors), or ``None`` for a method without selection."""
        return None


class SITModel(SyntheticModel):
    """SIT and its ablations, and the iVAE-style baseline (``method="ivae"``); see the module docstring."""

    def __init__(self, config: ModelConfig, generator: torch.Generator) -> None:
        super().__init__()
        if config.method == "multitask":
            raise ValueError("use MultiTaskModel for method 'multitask'")
        self.config = config
        c = config
        self.encoder = _mlp(c.x_dim, c.hidden_dim, None, c.encoder_layers)
        self.latent = SITLatentModule(LatentConfig(
            n_factors=c.n_factors, input_dim=c.hidden_dim, task_dim=c.embed_dim, context_dim=c.embed_dim,
            factor_dim=1, hidden_dim=c.hidden_dim, selection=c.selection,  # type: ignore[arg-type]
            temperature=c.temperature, max_logit=c.max_logit,
        ))
        self.decoder = _mlp(c.n_factors, c.hidden_dim, c.x_dim, c.encoder_layers)
        self.task_embedding = nn.Embedding(c.n_tasks, c.embed_dim)
        self.dataset_embedding = nn.Embedding(c.n_datasets, c.embed_dim)
        _init_from(self, generator)
        # every gate starts with the same logit (default 1: mostly open, so every factor gets gradient)
        nn.init.zeros_(self.latent.selector[-1].weight)
        nn.init.constant_(self.latent.selector[-1].bias, c.mask_init_logit)
        self.heads = TaskHeads(c.n_tasks, c.n_factors, c.head_hidden, c.y_dim, generator) if c.w_target > 0 else None

    def forward(
        self, batch: Batch, generator: torch.Generator | None = None
    ) -> tuple[LatentOutput, Tensor, Tensor | None]:
        """Latent output (``z`` ``(B, n, 1)``), reconstruction ``(B, x_dim)`` and target prediction
        ``(B, y_dim)`` (``None`` without task heads)."""
        h_x = self.encoder(batch.x)
        h_t = self.task_embedding(batch.task_id)
        out = self.latent(h_x, h_t, context=self.dataset_embedding(batch.dataset_id), generator=generator)
        x_hat = self.decoder(out.source_guidance.squeeze(-1))
        y_hat = None if self.heads is None else self.heads(out.target_guidance.squeeze(-1), batch.task_id)
        return out, x_hat, y_hat

    def task_mask_logits(self) -> Tensor:
        """Selection logits of every training task ``(m, n)`` (bounded as the module bounds them)."""
        _, logits = self.latent.selection_mask(self.task_embedding.weight, sample=False)
        return logits

    def param_groups(self, lr: float) -> list[dict[str, object]]:
        """Adam parameter groups: the selection parameters at ``lr * mask_lr_scale``, the rest at ``lr``."""
        slow = [*self.latent.selector.parameters(), self.task_embedding.weight]
        ids = {id(p) for p in slow}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": rest, "lr": lr}, {"params": slow, "lr": lr * self.config.mask_lr_scale}]

    def loss(
        self, batch: Batch, progress: float, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        c = self.config
        out, x_hat, y_hat = self(batch, generator)
        l_src = (x_hat - batch.x).pow(2).sum(-1).mean() / (2 * c.sigma_x**2)
        kl = out.kl.mean()
        total = c.w_source * l_src + c.beta(progress) * kl
        terms: dict[str, float] = {"source": l_src.item(), "kl": kl.item()}
        if y_hat is not None:
            l_tgt = (y_hat - batch.y).pow(2).sum(-1).mean() / (2 * c.sigma_y**2)
            total = total + c.w_target * l_tgt
            terms["target"] = l_tgt.item()
        if c.selection != "none":
            # (m, n) gate-open probabilities of every training task: unlike the clamped deterministic
            # hard-concrete mask they never saturate to an exact 0 or 1, so the UIC, distinction and
            # sparsity terms keep a gradient on every gate
            logits = self.task_mask_logits()
            masks = selection_open_probability(logits, self.latent.config)
            if c.w_uic > 0:
                l_uic = uic_loss(masks, margin=c.uic_margin)
                total = total + c.w_uic * l_uic
                terms["uic"] = l_uic.item()
            if c.w_distinction > 0:
                ids = torch.arange(masks.shape[0], device=masks.device)
                l_dis = task_distinction_loss(masks, ids, temperature=c.distinction_temperature)
                total = total + c.w_distinction * l_dis
                terms["distinction"] = l_dis.item()
            if c.w_sparsity > 0:
                l_sp = masks.mean()
                total = total + c.sparsity_weight(progress) * l_sp
                terms["sparsity"] = l_sp.item()
        terms["total"] = total.item()
        return total, terms

    @torch.no_grad()
    def represent(self, x: Tensor) -> Tensor:
        mean, _ = self.latent.encode(self.encoder(x))
        return mean.squeeze(-1)

    @torch.no_grad()
    def task_masks(self) -> Tensor | None:
        if self.config.selection == "none":
            return None
        masks, _ = self.latent.selection_mask(self.task_embedding.weight, sample=False)
        return masks


class MultiTaskModel(SyntheticModel):
    """Plain multi-task network: encoder, linear bottleneck of width ``n`` (the representation), one MLP
    head per task on the whole bottleneck; trained on ``L_tgt`` alone."""

    def __init__(self, config: ModelConfig, generator: torch.Generator) -> None:
        super().__init__()
        self.config = config
        c = config
        self.encoder = _mlp(c.x_dim, c.hidden_dim, c.n_factors, c.encoder_layers)
        _init_from(self, generator)
        self.heads = TaskHeads(c.n_tasks, c.n_factors, c.head_hidden, c.y_dim, generator)

    def loss(
        self, batch: Batch, progress: float, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        y_hat = self.heads(self.encoder(batch.x), batch.task_id)
        l_tgt = (y_hat - batch.y).pow(2).sum(-1).mean() / (2 * self.config.sigma_y**2)
        return l_tgt, {"target": l_tgt.item(), "total": l_tgt.item()}

    @torch.no_grad()
    def represent(self, x: Tensor) -> Tensor:
        return self.encoder(x)


def build_model(config: ModelConfig, generator: torch.Generator) -> SyntheticModel:
    """The model of ``config.method``, its parameters drawn from ``generator``."""
    if config.method == "multitask":
        return MultiTaskModel(config, generator)
    return SITModel(config, generator)


