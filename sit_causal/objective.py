"""The SIT objective: one composition of the loss terms, used by both halves.

Both SIT models (:class:`sit_causal.experiments.synthetic.SyntheticSIT` on synthetic data,
:class:`sit_nlp.model.seq2seq.Seq2SeqSIT`
on a Hugging Face encoder-decoder) return the same **named, unweighted** terms; this module weights them
with one configuration keyed on training progress ``p in [0, 1]`` and the training loops only reduce,
backpropagate and log::

    L(p) = w_tgt L_target + w_src L_source + beta(p) KL + w_uic L_uic + w_dis L_distinction
           + s(p) L_sparsity + w_sel L_selection

* ``target``: negative log-likelihood of each sample's task target, predicted from the selected factors
  ``m_t * z`` only;
* ``source``: negative log-likelihood of the source reconstructed from all factors ``z``;
* ``kl``: ``KL(q(z | x) || p(z | c))`` to the task- (or dataset-) conditioned prior;
* ``uic``, ``distinction``, ``sparsity``: the **structural** terms, computed on the ``(m, n)`` mask matrix
  ``M`` of the training tasks (rows = tasks, columns = factors) returned by :func:`structural_masks`;
* ``selection``: distillation of a fixed task-to-factor graph ``A`` ``(m, n)`` into the selector
  (:func:`selection_distillation`), used once the selection step has found the graph
  (:mod:`sit_causal.selection`);

with ``beta(p) = w_kl min(1, p / kl_anneal)`` and ``s(p) = 0`` for ``p < sparsity_start``, then a linear ramp
to ``w_sparsity`` over ``sparsity_ramp`` (gates closed before the factors are learned never reopen: a closed
hard-concrete gate gets no gradient from the target loss). Progress is :func:`training_progress`.

Which mask feeds the structural terms is decided here (:func:`structural_masks`): the gate-open
probabilities of the training tasks' selection logits (:func:`sit_causal.latent.selection_open_probability`).
Unlike a sampled or clamped hard-concrete mask they never saturate to an exact 0 or 1, so the UIC,
distinction and sparsity terms keep a gradient on every gate; for a sigmoid selection they are the mask
itself. The design is described in ``docs/design.md`` (section 7).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from sit_causal.latent import SITLatentModule, selection_open_probability, task_distinction_loss, uic_loss

__all__ = [
    "STRUCTURAL_TERMS",
    "TERMS",
    "ObjectiveConfig",
    "selection_distillation",
    "structural_masks",
    "structural_terms",
    "training_progress",
]

TERMS: tuple[str, ...] = ("target", "source", "kl", "uic", "distinction", "sparsity", "selection")
"""Every term name a SIT model may return, in the order they are logged."""
STRUCTURAL_TERMS: tuple[str, ...] = ("uic", "distinction", "sparsity")
"""Terms computed on the training tasks' mask matrix (rows = tasks, columns = factors)."""


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

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value == value:
                raise ValueError(f"ObjectiveConfig.{f.name} must be a number, got {value!r}")
            if value < 0:
                raise ValueError(f"ObjectiveConfig.{f.name} must be >= 0, got {value}")
        if not 0 < self.uic_margin <= 1:
            raise ValueError(f"ObjectiveConfig.uic_margin must be in (0, 1], got {self.uic_margin}")
        if self.distinction_temperature <= 0:
            raise ValueError("ObjectiveConfig.distinction_temperature must be > 0")

    def to_dict(self) -> dict[str, float]:
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

    def weights(self, progress: float) -> dict[str, float]:
        """The weight of every term of :data:`TERMS` at ``progress``."""
        return {"target": self.w_target, "source": self.w_source, "kl": self.beta(progress), "uic": self.w_uic,
                "distinction": self.w_distinction, "sparsity": self.sparsity_weight(progress),
                "selection": self.w_selection}

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
