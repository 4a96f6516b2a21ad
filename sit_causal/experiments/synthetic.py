"""The synthetic SIT model and its baselines, trained by :mod:`sit_causal.experiments.runner`.

Every model maps observations ``x`` ``(B, x_dim)`` to a representation ``(B, n)`` that is scored against
the true factors ``L`` ``(B, n)``, and returns its **named, unweighted** loss terms
(:meth:`SyntheticModel.loss_terms`); the weights and schedules are the one SIT objective's
(:class:`sit_causal.objective.ObjectiveConfig`), shared with :mod:`sit_nlp`. Methods
(``SyntheticModelConfig.method``):

* ``"sit"``: ``x -> MLP encoder -> h_x -> SITLatentModule -> z`` ``(B, n)``. The prior ``p(z | d)`` is
  conditioned on an embedding of the dataset id ``d`` (iVAE's auxiliary variable; mean and variance both
  depend on ``d``); the task representation ``h_t`` is a learned embedding of the task id; the selection
  mask ``m_t = m(h_t)`` ``(B, n)`` comes from ``h_t``. A decoder reconstructs ``x`` from all factors and
  one MLP head per task predicts ``Y_t`` from the selected factors ``m_t * z`` only. Terms:
  ``target = mean_B ||y - head_t(m_t * z)||^2 / (2 sigma_y^2)``,
  ``source = mean_B ||x - dec(z)||^2 / (2 sigma_x^2)``, ``kl = mean_B KL(q(z | x) || p(z | d))``, and the
  structural terms ``uic``, ``distinction``, ``sparsity`` of :func:`sit_causal.objective.structural_terms`
  on ``M`` ``(m, n)`` (rows = tasks, columns = factors), the gate-open probabilities of all training
  tasks (:func:`sit_causal.objective.structural_masks`; each task once, so the distinction loss pushes
  masks of different tasks apart).
  The method ``sit`` is this model followed by the selection step on its frozen representation
  (:mod:`sit_causal.selection.align`); ``sit-joint`` is this model alone (masks learned jointly with the
  representation, which in practice leaves them open: docs/results/simulate.md).
* ``"sit-no-uic"`` / ``"sit-no-distinction"``: ``w_uic = 0`` / ``w_distinction = 0`` here and in the
  selection step. The text testbed's ``sit-no-uic`` (:mod:`sit_nlp.testbed.jobs`) differs: it sets only the
  training loss's ``w_uic = 0``, and its selection step still repairs the graph it finds to satisfy the UIC.
* ``"ivae"``: the same encoder, latent module (``selection="none"``), prior on the dataset and decoder;
  no task heads (terms ``source`` and ``kl``): identifiable from the prior alone (iVAE), which under a
  mean-modulated prior (``k = 1``) means only up to a linear map.
* ``"multitask"``: the same encoder, a linear bottleneck of width ``n`` (its representation) and one
  head per task reading the whole bottleneck; the term ``target`` alone. No latent module, no reconstruction.
* ``"sparse-multitask"`` (opt-in): the multi-task network with **group-sparse task heads**, end to end (in the
  spirit of Lachapelle et al. 2023, "Synergies between disentanglement and sparsity", and Fumero et al.
  2023): the bottleneck ``z`` ``(B, n)`` is standardised over the batch (``u = (z - mean_B z) / std_B z``,
  a batch normalisation without affine parameters, so the heads cannot evade the penalty by rescaling the
  representation), every head reads all of ``u``, and the term ``sparsity`` is the group lasso over each
  head's first-layer weights on each factor plus a ridge on the output weights,
  ``mean_t [ sum_j ||W1[t, j, :]||_2 + ||W2_t||_F^2 / 2 ]`` (``W1`` ``(m, n, H)``: task, factor, hidden unit;
  the ridge stops a head from shrinking ``W1`` and growing ``W2`` to evade the lasso), weighted by
  ``w_sparsity`` on its ramp. Terms ``target`` and ``sparsity``. Its
  learned graph is ``A_hat[t, j] = 1`` iff ``||W1[t, j, :]|| >= 0.5 max_k ||W1[t, k, :]||``
  (:meth:`MultiTaskModel.task_masks`).

Why the task heads identify the factors (docs/design.md section 3). Say the prior gives ``z = A L + c``
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

from sit_causal.latent import LatentConfig, LatentOutput, SITLatentModule
from sit_causal.objective import ObjectiveConfig, structural_masks, structural_terms

__all__ = [
    "DEFAULT_SYNTHETIC_METHODS",
    "SPARSE_MULTITASK_LAMBDA",
    "SYNTHETIC_METHODS",
    "SYNTHETIC_OBJECTIVE",
    "Batch",
    "Method",
    "MultiTaskModel",
    "SyntheticModel",
    "SyntheticModelConfig",
    "SyntheticSIT",
    "TaskHeads",
    "build_synthetic_model",
    "method_configs",
    "training_method",
    "unmixing_step",
]

Method = Literal["sit", "ivae", "ivae-select", "taskfree", "multitask", "sparse-multitask", "sit-joint",
                 "sit-intersect", "sit-no-uic", "sit-no-distinction"]
SYNTHETIC_METHODS: tuple[str, ...] = ("sit", "ivae", "ivae-select", "taskfree", "multitask", "sparse-multitask",
                                      "sit-joint", "sit-intersect", "sit-no-uic", "sit-no-distinction")
"""Every method of ``sit-causal simulate``. ``sit`` trains the SIT model of this module and then learns the
selection on its frozen representation (:func:`sit_causal.selection.align.align_by_task_sparsity`);
``ivae-select`` applies the same selection step to the ``ivae`` baseline's representation, and ``taskfree``
the task-free control (:func:`sit_causal.selection.taskfree.identify_without_tasks`: dataset ids only) to
SIT's. Opt-in ablations and alternative estimators: ``sparse-multitask`` (multi-task learning with
group-sparse task heads, end to end; no selection step), ``sit-joint`` (the SIT model alone, masks learned
jointly with the representation), ``sit-intersect`` (SIT's representation unmixed by
:func:`sit_causal.selection.intersect.identify_by_intersection`), ``sit-no-uic`` and ``sit-no-distinction``
(the loss switched off in the model and in the selection step). Methods that differ only in their step
share one trained model per seed (identical configuration and seed)."""
DEFAULT_SYNTHETIC_METHODS: tuple[str, ...] = ("sit", "ivae", "ivae-select", "taskfree", "multitask")
"""What ``simulate`` compares by default: SIT, the baselines, and the controls that tell SIT's own
contribution apart (the same selection step on iVAE; the task-free step on SIT's representation)."""

UnmixStep = Literal["align", "intersect", "taskfree"]
_POST_HOC: dict[str, tuple[str, UnmixStep | None]] = {
    "sit": ("sit", "align"),
    "ivae-select": ("ivae", "align"),
    "taskfree": ("sit", "taskfree"),
    "sit-joint": ("sit", None),
    "sit-intersect": ("sit", "intersect"),
    "sit-no-uic": ("sit-no-uic", "align"),
    "sit-no-distinction": ("sit-no-distinction", "align"),
}


def training_method(method: str) -> str:
    """The model a method trains (``taskfree``, ``sit-joint`` and ``sit-intersect`` train ``sit``'s model,
    ``ivae-select`` trains ``ivae``'s)."""
    return _POST_HOC.get(method, (method, None))[0]


def unmixing_step(method: str) -> UnmixStep | None:
    """The step applied to the trained model's representation: ``"align"``, ``"intersect"``, ``"taskfree"``
    or ``None``."""
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


SYNTHETIC_OBJECTIVE = ObjectiveConfig(w_target=1.0, w_source=1.0, w_kl=1.0, kl_anneal=0.2, w_uic=1.0, uic_margin=0.5,
                                      w_distinction=0.1, distinction_temperature=0.5, w_sparsity=5.0,
                                      sparsity_start=0.0, sparsity_ramp=0.2, w_selection=0.0)
"""The objective of the synthetic SIT model (``simulate``'s defaults): hard-concrete gates under a strong
sparsity penalty ramped over the first 20 % of training, full-weight KL annealed over the same span."""


@dataclass
class SyntheticModelConfig:
    """The architecture of every synthetic method; :func:`method_configs` sets the method's switches.

    Arguments:
        method: one of :data:`SYNTHETIC_METHODS`.
        n_factors: ``n``, learned factors (the representation's width).
        x_dim, y_dim: observation and per-task target dimensions.
        n_tasks: ``m``, training tasks (task ids ``0..m-1``).
        n_datasets: ``K``, datasets (the prior's auxiliary variable, ids ``0..K-1``).
        hidden_dim, encoder_layers: the encoder MLP ``x -> h_x`` (and the mirrored decoder).
        embed_dim: width of the task and dataset embeddings (``h_t`` and the prior's context).
        head_hidden: width of each task head's hidden layer.
        task_heads: build the task heads (``False`` for the iVAE-style baseline, which has no targets).
        selection, temperature: the latent module's selection (see :class:`~sit_causal.latent.LatentConfig`).
        learn_prior: condition the prior on the dataset (``False``: a standard normal prior, the known
            failure mode of a zero-mean prior, kept as an ablation).
        sigma_x, sigma_y: likelihood standard deviations of reconstruction and targets.
        max_logit: bound of the selection logits (:class:`~sit_causal.latent.LatentConfig`); ``None`` = unbounded.
        mask_lr_scale: learning-rate multiplier of the selection parameters (selector and task
            embedding): the gates must move slower than the representation, or they are decided by a
            random representation in the first steps.
        mask_init_logit, selector_init_std: the selector's start
            (:meth:`~sit_causal.latent.SITLatentModule.reset_selector`): every gate's initial logit, and the
            std of the selector's output weights (0: every task starts with the same mask).
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
    task_heads: bool = True
    selection: str = "hard-concrete"
    temperature: float = 2.0 / 3.0
    learn_prior: bool = True
    sigma_x: float = 0.2
    sigma_y: float = 0.1
    max_logit: float | None = 3.0
    mask_lr_scale: float = 1.0
    mask_init_logit: float = 1.0
    selector_init_std: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in SYNTHETIC_METHODS:
            raise ValueError(f"unknown method {self.method!r}; use one of {', '.join(SYNTHETIC_METHODS)}")
        for name in ("n_factors", "x_dim", "y_dim", "n_tasks", "n_datasets", "hidden_dim", "encoder_layers",
                     "embed_dim", "head_hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"SyntheticModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("sigma_x", "sigma_y", "temperature"):
            if float(getattr(self, name)) <= 0:
                raise ValueError(f"SyntheticModelConfig.{name} must be > 0")

    def to_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


SPARSE_MULTITASK_LAMBDA = 0.05
"""Default group-lasso weight of ``sparse-multitask`` (``w_sparsity``), relative to the target term
``MSE / (2 sigma_y^2)`` on standardised targets (docs/results/controls.md says how it was chosen)."""

MODEL_FIELDS = frozenset(f.name for f in fields(SyntheticModelConfig))
OBJECTIVE_FIELDS = frozenset(f.name for f in fields(ObjectiveConfig))


def method_configs(method: str, objective: ObjectiveConfig | None = None,
                   **kwargs: object) -> tuple[SyntheticModelConfig, ObjectiveConfig]:
    """The architecture and objective of ``method``: ``kwargs`` name fields of either config (a name in
    neither is a ``ValueError``), then the method's switches are applied on top.

    ``sit-no-uic``: ``w_uic = 0``; ``sit-no-distinction``: ``w_distinction = 0``; ``ivae``: no task heads, no
    selection, no target or structural terms; ``multitask``: the target term alone; ``sparse-multitask``: the
    target term and the heads' group lasso (term ``sparsity``) at weight ``w_sparsity``, which defaults to
    :data:`SPARSE_MULTITASK_LAMBDA` unless ``kwargs`` set it.
    """
    unknown = sorted(k for k in kwargs if k not in MODEL_FIELDS and k not in OBJECTIVE_FIELDS)
    if unknown:
        raise ValueError(f"unknown model or objective field(s): {', '.join(unknown)}")
    obj = replace(SYNTHETIC_OBJECTIVE if objective is None else objective,
                  **{k: v for k, v in kwargs.items() if k in OBJECTIVE_FIELDS})  # type: ignore[arg-type]
    cfg = SyntheticModelConfig(method=method, **{k: v for k, v in kwargs.items() if k in MODEL_FIELDS
                                                 and k != "method"})  # type: ignore[arg-type]
    if method == "sit-no-uic":
        obj = replace(obj, w_uic=0.0)
    elif method == "sit-no-distinction":
        obj = replace(obj, w_distinction=0.0)
    elif method == "ivae":
        obj = replace(obj, w_target=0.0, w_uic=0.0, w_distinction=0.0, w_sparsity=0.0, w_selection=0.0)
        cfg = replace(cfg, selection="none", task_heads=False)
    elif method == "multitask":
        obj = replace(obj, w_source=0.0, w_kl=0.0, w_uic=0.0, w_distinction=0.0, w_sparsity=0.0, w_selection=0.0)
        cfg = replace(cfg, selection="none")
    elif method == "sparse-multitask":
        lam = float(kwargs["w_sparsity"]) if "w_sparsity" in kwargs else SPARSE_MULTITASK_LAMBDA  # type: ignore[arg-type]
        obj = replace(obj, w_source=0.0, w_kl=0.0, w_uic=0.0, w_distinction=0.0, w_sparsity=lam, w_selection=0.0)
        cfg = replace(cfg, selection="none")
    return cfg, obj


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
    """Common interface of the synthetic models (what :mod:`sit_causal.experiments.runner` relies on).

    ``config`` is the architecture, ``objective`` the SIT objective whose weights the training loop applies
    (the model reads it only to know which terms to compute and their margins and temperatures).
    """

    config: SyntheticModelConfig
    objective: ObjectiveConfig

    def loss_terms(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The named, unweighted loss terms of ``batch`` (scalars; names from
        :data:`sit_causal.objective.TERMS`): what :meth:`ObjectiveConfig.total` weights."""
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


class SyntheticSIT(SyntheticModel):
    """SIT and its ablations, and the iVAE-style baseline (``method="ivae"``); see the module docstring."""

    def __init__(self, config: SyntheticModelConfig, objective: ObjectiveConfig, generator: torch.Generator) -> None:
        super().__init__()
        if config.method in ("multitask", "sparse-multitask"):
            raise ValueError(f"use MultiTaskModel for method {config.method!r}")
        self.config = config
        self.objective = objective
        c = config
        self.encoder = _mlp(c.x_dim, c.hidden_dim, None, c.encoder_layers)
        self.latent = SITLatentModule(LatentConfig(
            n_factors=c.n_factors, input_dim=c.hidden_dim, task_dim=c.embed_dim, context_dim=c.embed_dim,
            factor_dim=1, hidden_dim=c.hidden_dim, selection=c.selection,  # type: ignore[arg-type]
            temperature=c.temperature, max_logit=c.max_logit, selector_init_std=c.selector_init_std,
            selector_init_logit=c.mask_init_logit, learn_prior=c.learn_prior,
        ))
        self.decoder = _mlp(c.n_factors, c.hidden_dim, c.x_dim, c.encoder_layers)
        self.task_embedding = nn.Embedding(c.n_tasks, c.embed_dim)
        self.dataset_embedding = nn.Embedding(c.n_datasets, c.embed_dim)
        _init_from(self, generator)
        self.latent.reset_selector(generator)  # the latent module's documented start, after the re-draw
        self.heads = TaskHeads(c.n_tasks, c.n_factors, c.head_hidden, c.y_dim, generator) if c.task_heads else None

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

    def param_groups(self, lr: float) -> list[dict[str, object]]:
        """Adam parameter groups: the selection parameters at ``lr * mask_lr_scale``, the rest at ``lr``."""
        slow = [*self.latent.selector.parameters(), self.task_embedding.weight]
        ids = {id(p) for p in slow}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": rest, "lr": lr}, {"params": slow, "lr": lr * self.config.mask_lr_scale}]

    def loss_terms(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        c, obj = self.config, self.objective
        out, x_hat, y_hat = self(batch, generator)
        terms: dict[str, Tensor] = {
            "source": (x_hat - batch.x).pow(2).sum(-1).mean() / (2 * c.sigma_x**2),
            "kl": out.kl.mean(),
        }
        if y_hat is not None:
            terms["target"] = (y_hat - batch.y).pow(2).sum(-1).mean() / (2 * c.sigma_y**2)
        if c.selection != "none":
            masks = structural_masks(self.latent, self.task_embedding.weight)
            ids = torch.arange(masks.shape[0], device=masks.device)
            terms |= structural_terms(masks, ids, obj)
        return terms

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
    """Multi-task network: encoder, linear bottleneck of width ``n`` (the representation), one MLP head per
    task on the whole bottleneck.

    ``method="multitask"``: the term ``target`` alone. ``method="sparse-multitask"``: the bottleneck is
    batch-standardised before the heads (``nn.BatchNorm1d`` without affine parameters; running statistics
    at evaluation) and the term ``sparsity`` is the heads' group lasso (:meth:`group_norms` summed over
    factors) plus the output ridge, averaged over tasks (module docstring).
    """

    def __init__(self, config: SyntheticModelConfig, objective: ObjectiveConfig, generator: torch.Generator) -> None:
        super().__init__()
        if config.method not in ("multitask", "sparse-multitask"):
            raise ValueError(f"MultiTaskModel is for 'multitask' and 'sparse-multitask', not {config.method!r}")
        self.config = config
        self.objective = objective
        c = config
        self.encoder = _mlp(c.x_dim, c.hidden_dim, c.n_factors, c.encoder_layers)
        self.sparse = c.method == "sparse-multitask"
        self.norm = nn.BatchNorm1d(c.n_factors, eps=1e-8, affine=False) if self.sparse else nn.Identity()
        _init_from(self, generator)
        self.heads = TaskHeads(c.n_tasks, c.n_factors, c.head_hidden, c.y_dim, generator)

    def group_norms(self) -> Tensor:
        """``||W1[t, j, :]||_2`` ``(m, n)``: rows = tasks, columns = factors (the groups of the lasso)."""
        return self.heads.w1.pow(2).sum(-1).add(1e-12).sqrt()

    def loss_terms(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        y_hat = self.heads(self.norm(self.encoder(batch.x)), batch.task_id)
        terms = {"target": (y_hat - batch.y).pow(2).sum(-1).mean() / (2 * self.config.sigma_y**2)}
        if self.sparse:
            ridge = self.heads.w2.pow(2).sum(dim=(1, 2)) / 2
            terms["sparsity"] = (self.group_norms().sum(-1) + ridge).mean()
        return terms

    @torch.no_grad()
    def represent(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    @torch.no_grad()
    def task_masks(self) -> Tensor | None:
        """``sparse-multitask``: each task's group norms divided by the task's largest ``(m, n)`` (rows = tasks,
        columns = factors; binarised at 0.5 by the scorer); ``multitask``: ``None``."""
        if not self.sparse:
            return None
        norms = self.group_norms()
        return norms / norms.max(dim=1, keepdim=True).values


def build_synthetic_model(config: SyntheticModelConfig, objective: ObjectiveConfig,
                          generator: torch.Generator) -> SyntheticModel:
    """The model of ``config.method`` trained under ``objective``, its parameters drawn from ``generator``."""
    if config.method in ("multitask", "sparse-multitask"):
        return MultiTaskModel(config, objective, generator)
    return SyntheticSIT(config, objective, generator)
