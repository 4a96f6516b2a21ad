"""The SIT objective: one composition of the loss terms, used by both halves.

Both SIT models (:class:`sit_causal.experiments.synthetic.SyntheticSIT` on synthetic data,
:class:`sit_nlp.model.seq2seq.Seq2SeqSIT`
on a Hugging Face encoder-decoder) return the same **named, unweighted** terms; this module weights them
with one configuration keyed on training progress ``p in [0, 1]`` and the training loops only reduce,
backpropagate and log::

    L(p) = w_tgt L_target + w_src L_source + beta(p) KL + w_uic L_uic + w_dis L_distinction
           + s(p) L_sparsity + w_sel L_selection + v(p) L_invariance

* ``target``: negative log-likelihood of each sample's task target, predicted from the selected factors
  ``m_t * z`` only;
* ``source``: negative log-likelihood of the source reconstructed from all factors ``z``;
* ``kl``: ``KL(q(z | x) || p(z | c))`` to the task- (or dataset-) conditioned prior;
* ``uic``, ``distinction``, ``sparsity``: the **structural** terms, computed on the ``(m, n)`` mask matrix
  ``M`` of the training tasks (rows = tasks, columns = factors) returned by :func:`structural_masks`;
* ``selection``: distillation of a fixed task-to-factor graph ``A`` ``(m, n)`` into the selector
  (:func:`selection_distillation`), used once the selection step has found the graph
  (:mod:`sit_causal.selection`);
* ``invariance``: within each task, how much the target risk depends on the data source (the environment of
  the invariance literature): the V-REx variance of per-source risks (:func:`vrex_penalty`) or the IRMv1
  squared gradient of each source's risk w.r.t. a dummy scale on the logits (:func:`irm_penalty`); the form
  is ``ObjectiveConfig.invariance``, the term :func:`invariance_term`. A model returns it only when
  ``w_invariance > 0`` (default 0: no existing total changes), from per-example target losses with the
  examples' task and source ids;

with ``beta(p) = w_kl min(1, p / kl_anneal)`` and ``s(p) = 0`` for ``p < sparsity_start``, then a linear ramp
to ``w_sparsity`` over ``sparsity_ramp`` (gates closed before the factors are learned never reopen: a closed
hard-concrete gate gets no gradient from the target loss), and ``v(p)`` = :meth:`ObjectiveConfig.invariance_weight`
(0 before ``invariance_start``, then a linear ramp to ``w_invariance`` over ``invariance_ramp``: the usual
IRM/V-REx warm-up, which lets the likelihood fit first). Progress is :func:`training_progress`.

Which mask feeds the structural terms is decided here (:func:`structural_masks`): the gate-open
probabilities of the training tasks' selection logits (:func:`sit_causal.latent.selection_open_probability`).
Unlike a sampled or clamped hard-concrete mask they never saturate to an exact 0 or 1, so the UIC,
distinction and sparsity terms keep a gradient on every gate; for a sigmoid selection they are the mask
itself. The design is described in ``docs/design.md`` (section 7).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from sit_causal.latent import SITLatentModule, selection_open_probability, task_distinction_loss, uic_loss

__all__ = [
    "INVARIANCE_FORMS",
    "STRUCTURAL_TERMS",
    "TERMS",
    "ObjectiveConfig",
    "dummy_scale",
    "invariance_term",
    "irm_penalty",
    "per_source_risks",
    "selection_distillation",
    "structural_masks",
    "structural_terms",
    "training_progress",
    "vrex_penalty",
]

TERMS: tuple[str, ...] = ("target", "source", "kl", "uic", "distinction", "sparsity", "selection", "invariance")
"""Every term name a SIT model may return, in the order they are logged."""
STRUCTURAL_TERMS: tuple[str, ...] = ("uic", "distinction", "sparsity")
"""Terms computed on the training tasks' mask matrix (rows = tasks, columns = factors)."""
INVARIANCE_FORMS: tuple[str, ...] = ("vrex", "irm")
"""Forms of the ``invariance`` term: :func:`vrex_penalty` or :func:`irm_penalty`."""


def training_progress(step: int, total_steps: int) -> float:
    """``p = step / (total_steps - 1)`` in ``[0, 1]`` (0 at the first step, 1 at the last)."""
    return min(1.0, max(0.0, step / max(1, total_steps - 1)))


@dataclass
class ObjectiveConfig:
    """Weights and schedules of the SIT objective (the module docstring gives ``L(p)``).

    Arguments:
        w_target, w_source: weights of the target and source likelihood terms.
        w_kl: final KL weight ``beta``; ``kl_anneal``: fraction of training over which ``beta`` ramps up
            linearly from 0 (0 = no annealing).
        w_uic, uic_margin: weight and margin of :func:`sit_causal.latent.uic_loss` on the mask matrix.
        w_distinction, distinction_temperature: weight and temperature of
            :func:`sit_causal.latent.task_distinction_loss` on the mask matrix's rows.
        w_sparsity: final weight of the mean gate-open probability (the expected fraction of edges of
            the learned graph); ``sparsity_start``, ``sparsity_ramp``: its schedule as fractions of training.
        w_selection: weight of :func:`selection_distillation` (only present once a graph is fixed).
        w_invariance: final weight of the invariance term (:func:`invariance_term`; 0 = off, the default);
            ``invariance``: its form, ``"vrex"`` (:func:`vrex_penalty`) or ``"irm"`` (:func:`irm_penalty`);
            ``invariance_start``, ``invariance_ramp``: its schedule as fractions of training (0 before the
            start, then a linear ramp to ``w_invariance``; ramp 0 = a step).
    """

    w_target: float = 1.0
    w_source: float = 1.0
    w_kl: float = 1.0
    kl_anneal: float = 0.2
    w_uic: float = 1.0
    uic_margin: float = 0.5
    w_distinction: float = 0.1
    distinction_temperature: float = 0.5
    w_sparsity: float = 0.0
    sparsity_start: float = 0.0
    sparsity_ramp: float = 0.2
    w_selection: float = 1.0
    w_invariance: float = 0.0
    invariance: Literal["vrex", "irm"] = "vrex"
    invariance_start: float = 0.0
    invariance_ramp: float = 0.0

    def __post_init__(self) -> None:
        if self.invariance not in INVARIANCE_FORMS:
            raise ValueError(f"ObjectiveConfig.invariance must be one of {', '.join(INVARIANCE_FORMS)}, "
                             f"got {self.invariance!r}")
        for f in fields(self):
            if f.name == "invariance":
                continue
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value == value:
                raise ValueError(f"ObjectiveConfig.{f.name} must be a number, got {value!r}")
            if value < 0:
                raise ValueError(f"ObjectiveConfig.{f.name} must be >= 0, got {value}")
        if not 0 < self.uic_margin <= 1:
            raise ValueError(f"ObjectiveConfig.uic_margin must be in (0, 1], got {self.uic_margin}")
        if self.distinction_temperature <= 0:
            raise ValueError("ObjectiveConfig.distinction_temperature must be > 0")

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)

    # ------------------------------------------------------------------ schedules
    def beta(self, progress: float) -> float:
        """KL weight at ``progress``: ``w_kl * min(1, progress / kl_anneal)``."""
        if self.kl_anneal <= 0:
            return self.w_kl
        return self.w_kl * min(1.0, progress / self.kl_anneal)

    def sparsity_weight(self, progress: float) -> float:
        """Sparsity weight at ``progress``: 0 before ``sparsity_start``, then a linear ramp to ``w_sparsity``."""
        if progress < self.sparsity_start:
            return 0.0
        if self.sparsity_ramp <= 0:
            return self.w_sparsity
        return self.w_sparsity * min(1.0, (progress - self.sparsity_start) / self.sparsity_ramp)

    def invariance_weight(self, progress: float) -> float:
        """Invariance weight at ``progress``: 0 before ``invariance_start``, then a linear ramp to
        ``w_invariance`` over ``invariance_ramp`` (a step when the ramp is 0)."""
        if progress < self.invariance_start:
            return 0.0
        if self.invariance_ramp <= 0:
            return self.w_invariance
        return self.w_invariance * min(1.0, (progress - self.invariance_start) / self.invariance_ramp)

    def weights(self, progress: float) -> dict[str, float]:
        """The weight of every term of :data:`TERMS` at ``progress``."""
        return {"target": self.w_target, "source": self.w_source, "kl": self.beta(progress), "uic": self.w_uic,
                "distinction": self.w_distinction, "sparsity": self.sparsity_weight(progress),
                "selection": self.w_selection, "invariance": self.invariance_weight(progress)}

    def uses(self, term: str) -> bool:
        """Whether ``term`` ever has a non-zero weight (a model may skip computing a term that does not)."""
        if term not in TERMS:
            raise KeyError(f"unknown loss term {term!r}; terms: {', '.join(TERMS)}")
        return self.weights(1.0)[term] > 0

    # ------------------------------------------------------------------ the total
    def total(self, terms: Mapping[str, Tensor], progress: float) -> Tensor:
        """``sum_k w_k(progress) * terms[k]`` over the terms a model returned (each a scalar tensor).

        A term whose weight is 0 at ``progress`` still enters as ``0 * term`` (its parameters get a zero
        gradient, not none). Raises ``KeyError`` for a name outside :data:`TERMS` (a typo must not drop a term
        silently).
        """
        w = self.weights(progress)
        unknown = [k for k in terms if k not in w]
        if unknown:
            raise KeyError(f"unknown loss term(s) {', '.join(unknown)}; terms: {', '.join(TERMS)}")
        if not terms:
            raise ValueError("a model returned no loss terms")
        # every returned term stays in the graph, a zero weight included (multiplied, never skipped): under
        # DDP every parameter must get a gradient, e.g. the prior while the KL weight is still 0
        return torch.stack([(w[k] * v).float() for k, v in terms.items()]).sum()


# ---------------------------------------------------------------------- structural terms
def structural_masks(latent: SITLatentModule, h_tasks: Tensor) -> Tensor:
    """The mask matrix that feeds the structural terms: ``(m, n)``, rows = training tasks (one
    representation ``h_tasks`` ``(m, D_t)`` per row), columns = factors, entries the gate-open
    probabilities of the tasks' selection logits (differentiable, never exactly 0 or 1)."""
    _, logits = latent.selection_mask(h_tasks, sample=False)
    return selection_open_probability(logits, latent.config)


def structural_terms(masks: Tensor, task_ids: Tensor, config: ObjectiveConfig) -> dict[str, Tensor]:
    """The UIC, task-distinction and sparsity terms on ``masks`` ``(m, n)`` (rows = tasks, columns =
    factors), each only if its weight is ever non-zero.

    Arguments:
        masks: from :func:`structural_masks`.
        task_ids: ``(m,)`` the task of each row (rows of one task are positives of the distinction loss;
            ``-1`` marks a row of no training task).
        config: margins, temperatures and which terms are on.
    """
    out: dict[str, Tensor] = {}
    if config.uses("uic"):
        out["uic"] = uic_loss(masks, margin=config.uic_margin)
    if config.uses("distinction"):
        out["distinction"] = task_distinction_loss(masks, task_ids, temperature=config.distinction_temperature)
    if config.uses("sparsity"):
        out["sparsity"] = masks.float().mean()
    return out


def selection_distillation(latent: SITLatentModule, h_tasks: Tensor, graph_rows: Tensor) -> Tensor:
    """Binary cross-entropy of the selector's gate-open probabilities against a fixed graph.

    ``L_sel = mean_{t, j} BCE(P_tj, A_tj)`` with ``P`` ``(m, n)`` = :func:`structural_masks` of the
    task representations ``h_tasks`` ``(m, D_t)`` and ``A`` = ``graph_rows`` ``(m, n)`` in ``{0, 1}`` (row
    ``t``: the graph row of the task of ``h_tasks[t]``). It teaches the selector, which reads the task's
    instruction, to reproduce the selected graph, so an unseen instruction gets a mask too.
    """
    p = structural_masks(latent, h_tasks).float().clamp(1e-6, 1 - 1e-6)
    return F.binary_cross_entropy(p, graph_rows.to(p.dtype))


# ---------------------------------------------------------------------- invariance across sources
def _check_groups(losses: Tensor, task_ids: Tensor, source_ids: Tensor) -> tuple[Tensor, Tensor]:
    if losses.dim() != 1:
        raise ValueError(f"per-example losses must be (N,), got shape {tuple(losses.shape)}")
    task_ids, source_ids = torch.as_tensor(task_ids), torch.as_tensor(source_ids)
    if task_ids.shape != losses.shape or source_ids.shape != losses.shape:
        raise ValueError("losses, task_ids and source_ids must all be (N,)")
    return task_ids.to(losses.device).long(), source_ids.to(losses.device).long()


def _groups(task_ids: Tensor, source_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The (task, source) pairs present: ``pairs`` ``(G, 2)`` (sorted), each example's group ``(N,)`` and
    each group's size ``(G,)``."""
    pairs, group = torch.unique(torch.stack([task_ids, source_ids], dim=1), dim=0, return_inverse=True)
    return pairs, group, torch.bincount(group, minlength=pairs.shape[0])


def per_source_risks(losses: Tensor, task_ids: Tensor, source_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean risk of every (task, source) pair present in a batch.

    ``R_te = (1 / |B_te|) sum_{i in B_te} l_i`` with ``B_te`` the examples of task ``t`` from source ``e``.

    Arguments:
        losses: ``(N,)`` per-example target losses (differentiable).
        task_ids, source_ids: ``(N,)`` integer task and source of each example (a source id need only be
            unique within its task).

    Returns ``(risks (G,), tasks (G,), sources (G,))``, one entry per pair, sorted by (task, source).
    """
    task_ids, source_ids = _check_groups(losses, task_ids, source_ids)
    pairs, group, counts = _groups(task_ids, source_ids)
    sums = torch.zeros(pairs.shape[0], dtype=losses.dtype, device=losses.device).index_add(0, group, losses)
    return sums / counts.to(losses.dtype), pairs[:, 0], pairs[:, 1]


def vrex_penalty(losses: Tensor, task_ids: Tensor, source_ids: Tensor, min_sources: int = 2) -> Tensor:
    """V-REx penalty within tasks (Krueger et al. 2021, "risk extrapolation"), averaged over tasks.

    With ``R_te`` the mean risk of task ``t`` on the batch's examples from source ``e``
    (:func:`per_source_risks`) and ``E_t`` the sources of task ``t`` in the batch,

        ``P_t = (1 / |E_t|) sum_{e in E_t} (R_te - Rbar_t)^2``,  ``Rbar_t = (1 / |E_t|) sum_e R_te``,
        ``L_vrex = (1 / |T'|) sum_{t in T'} P_t``,  ``T' = {t : |E_t| >= min_sources}``.

    Tasks are the rows of the task-by-factor graph: each task is compared only with itself across its own
    sources (two tasks' risks are never compared; they read different factors). ``P_t`` is 0 exactly when
    every source of ``t`` has the same risk; it grows quadratically with their spread. A shortcut that is
    worth more in one source than another (the anti-causal testbed's spurious factor, 0.95 vs 0.85 agreement)
    makes the risks differ; the causal route's risk is the label noise in every source. Returns a
    differentiable 0 (``0 * losses.sum()``) when no task has ``min_sources`` sources in the batch.
    """
    if min_sources < 2:
        raise ValueError("a variance across sources needs min_sources >= 2")
    risks, tasks, _ = per_source_risks(losses, task_ids, source_ids)
    _, task_group, n_sources = torch.unique(tasks, return_inverse=True, return_counts=True)
    m = n_sources.shape[0]
    mean = torch.zeros(m, dtype=risks.dtype, device=risks.device).index_add(0, task_group, risks) / n_sources
    sq = (risks - mean[task_group]) ** 2
    var = torch.zeros(m, dtype=risks.dtype, device=risks.device).index_add(0, task_group, sq) / n_sources
    keep = n_sources >= min_sources
    if not bool(keep.any()):
        return losses.sum() * 0.0
    return var[keep].mean()


def dummy_scale(n: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """The IRMv1 dummy classifier ``w = 1``, one per example: ``(n,)`` ones with ``requires_grad``.

    Multiply each example's logits by its entry (``logits * w.view(-1, *[1] * (logits.dim() - 1))``) before
    the per-example loss, and hand both to :func:`irm_penalty`. One scalar per example (rather than one
    shared scalar) gives every example's derivative ``dl_i / dw_i`` from a single backward pass; at ``w = 1``
    the forward value is unchanged.
    """
    return torch.ones(n, device=device, dtype=dtype, requires_grad=True)


def irm_penalty(losses: Tensor, scale: Tensor, task_ids: Tensor, source_ids: Tensor, halves: bool = True) -> Tensor:
    """IRMv1 penalty within tasks (Arjovsky et al. 2019), averaged over sources, then tasks.

    With ``l_i(w)`` the loss of example ``i`` computed from its logits times a dummy scale ``w`` (the fixed
    "classifier" ``w = 1.0``), the penalty of task ``t`` in source ``e`` is the squared gradient of the
    source's mean risk,

        ``P_te = ( d/dw (1 / |B_te|) sum_{i in B_te} l_i(w) |_{w = 1} )^2 = ( mean_{i in B_te} g_i )^2``,
        ``g_i = dl_i / dw_i`` (per example, from :func:`dummy_scale`),

    zero exactly when ``w = 1`` is already the optimal rescaling of the logits in that source, i.e. when the
    predictor is simultaneously optimal (in scale) in every source. With ``halves`` (the unbiased estimate of
    the same quantity) each group ``B_te`` is split into two halves ``A, B`` by alternating position in the
    batch and ``P_te = mean_{i in A} g_i * mean_{i in B} g_i`` (an unbiased estimate of the squared expected
    gradient; it can be negative in a batch); a group of one example keeps the squared form.
    ``L_irm = (1 / |T|) sum_t (1 / |E_t|) sum_{e in E_t} P_te`` over the tasks and sources present (rows =
    tasks of the task-by-factor graph). The returned tensor is differentiable w.r.t. the model
    (``create_graph=True``).

    Arguments:
        losses: ``(N,)`` per-example losses computed from ``logits * scale`` (per example).
        scale: ``(N,)`` the dummy scales (:func:`dummy_scale`), leaves with ``requires_grad``.
        task_ids, source_ids: ``(N,)`` integer task and source of each example.
        halves: the unbiased two-halves estimate (default) or the plain squared mean gradient.
    """
    task_ids, source_ids = _check_groups(losses, task_ids, source_ids)
    if scale.shape != losses.shape or not scale.requires_grad:
        raise ValueError("scale must be the (N,) dummy scales the losses were computed with (requires_grad)")
    (g,) = torch.autograd.grad(losses.sum(), scale, create_graph=True)
    pairs, group, counts = _groups(task_ids, source_ids)
    n_groups = pairs.shape[0]
    zeros = torch.zeros(n_groups, dtype=g.dtype, device=g.device)
    if halves:
        # position of each example within its group, in batch order: even -> half A, odd -> half B
        order = torch.argsort(group, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(group)
        rank[order] = torch.arange(group.numel(), device=group.device) - starts[group[order]]
        in_b = (rank % 2).bool()
        n_b = torch.bincount(group[in_b], minlength=n_groups).to(g.dtype)
        n_a = counts.to(g.dtype) - n_b
        mean_a = zeros.index_add(0, group[~in_b], g[~in_b]) / n_a.clamp_min(1)
        mean_b = zeros.index_add(0, group[in_b], g[in_b]) / n_b.clamp_min(1)
        penalty = torch.where(n_b > 0, mean_a * mean_b, mean_a ** 2)
    else:
        penalty = (zeros.index_add(0, group, g) / counts.to(g.dtype)) ** 2
    tasks = pairs[:, 0]
    _, task_group, n_sources = torch.unique(tasks, return_inverse=True, return_counts=True)
    per_task = torch.zeros(n_sources.shape[0], dtype=g.dtype, device=g.device).index_add(0, task_group, penalty)
    return (per_task / n_sources).mean()


def invariance_term(config: ObjectiveConfig, losses: Tensor, task_ids: Tensor, source_ids: Tensor,
                    scale: Tensor | None = None) -> dict[str, Tensor]:
    """``{"invariance": penalty}`` in the configured form, or ``{}`` when ``w_invariance`` is never
    non-zero (a model then skips the per-source bookkeeping; every existing total stays as it was).

    Arguments:
        config: ``invariance`` picks :func:`vrex_penalty` or :func:`irm_penalty`.
        losses: ``(N,)`` per-example target losses (for ``irm``: computed from logits times ``scale``).
        task_ids, source_ids: ``(N,)`` task and source of each example.
        scale: the dummy scales of :func:`dummy_scale` (``irm`` only).
    """
    if not config.uses("invariance"):
        return {}
    if config.invariance == "irm":
        if scale is None:
            raise ValueError("the irm invariance term needs the dummy scales the losses were computed with")
        return {"invariance": irm_penalty(losses, scale, task_ids, source_ids)}
    return {"invariance": vrex_penalty(losses, task_ids, source_ids)}
