"""The SIT model: a Hugging Face encoder-decoder whose target decoder reads task-selected latent factors.

Composition (no HF source is forked; ``D`` = backbone width, ``n`` factors of ``d_f`` dims, ``B`` batch,
``T`` source tokens, ``U`` distinct instructions in the batch, ``m`` instructions in the task bank)::

    input_ids (B, T) --encoder--> h_x (B, T, D)                       the backbone's own encoder
    instruction_ids (U, L) --same encoder, masked mean--> h_t (U, D) -> gathered to (B, D)
    dataset_ids (B,) --Embedding(sources + 1, H)--> c (B, H)          the prior's context (prior_context)
    SITLatentModule(h_x, h_t, c): z (B, T, n, d_f), mask m_t (B, n), KL (B, T)   sit_causal.latent
    target_guidance = m_t * z (B, T, n, d_f) --flatten, Linear(n d_f -> D), LayerNorm--> memory (B, T, D)
        guidance="gated": memory += sigmoid(g) * h_x, g (D,) learned, initialised at -4 (gate ~ 0.02)
        guidance="residual": memory = rho(p) h_x + LN_0(W (m_t * z)): the LayerNorm's scale starts at 0
            and rho(p) = max(0, 1 - p / residual_fade) fades the encoder path out over training progress p,
            so SIT starts as the backbone exactly (memory = h_x at step 0) and ends on the factors alone
    target decoder = the backbone's decoder, cross-attending to memory (encoder_outputs=memory)
    source decoder = a small causal transformer (source_decoder_layers, pre-LN, torch.nn) over the
        truncated raw input (B, S), cross-attending to Linear(n d_f -> D)(z) (all factors); it shares
        the backbone's input embedding matrix E (V, D) as input embedding and output head
        (logits = LN(h) D^-1/2 E^T), with a chunked, checkpointed cross-entropy that never holds the
        (B S, V) logits.

The prior ``p(z | c)`` (``model.prior_context``): ``dataset`` conditions it on the record's data source, the
meta-SCM's ``p(L | D)`` and what the synthetic half does: ``c`` is a learned embedding of the source id
(the training sources, sorted, saved as ``sources.json``). One more row is the **pooled prior**: it is the
context of a source never seen in training, and of a random ``prior_context_dropout`` fraction of training
examples, so it is trained as the prior of the mixture of sources. Predictions never read the prior (the
decoder reads the posterior mean of ``q(z | x)``, from the input alone); it shapes the factors through the
KL term in training. ``instruction``: ``c = h_t``; ``none``: the pooled row for every example.

One path: the target decoder reads the posterior mean of ``z`` in training and at inference
(``model.sample_latent: false``, the default; the KL still acts on the posterior ``q(z|x)``), so what is
evaluated is what was trained. ``sample_latent: true`` trains on the reparameterised sample instead;
training then logs the evaluation NLL of both paths (``eval_target``: the posterior mean, the path every
evaluation uses; ``eval_target_sampled``: the training path).

Factors are per-token channels (``model.factor_pool: token``, the default) or one vector per record
(``sentence``: ``h_x`` is the masked mean of the encoder states, ``T = 1``, the meta-SCM's one ``L`` per
sample; the decoders then read one memory token). Per token: with ``d_f = D / n`` the factors tile the
hidden state, and the task's mask switches whole channels off for every token, so a summarisation task
keeps token-level content through the factors it selects.

Loss terms: the named terms of the one SIT objective (:mod:`sit_causal.objective`), first as **sums and
counts** of one micro-batch (:meth:`Seq2SeqSIT.loss_sums`); in training, :meth:`Seq2SeqSIT.forward` divides the
sums by the counts of the whole accumulation window (:class:`LossWindow`, the reduction) and weighs the terms
by :meth:`sit_causal.objective.ObjectiveConfig.total` into the loss:

* ``target_nll``: summed token cross-entropy of the target (``target_tokens`` non-pad tokens): term ``target``;
* ``source_nll``: summed token cross-entropy of the source reconstruction (``source_tokens``): ``source``;
* ``kl``: ``KL(q(z|x) || p(z|t))`` summed over non-pad source tokens (``kl_tokens``): ``kl``;
* ``uic``, ``distinction``, ``sparsity``: :func:`sit_causal.objective.structural_terms` on the mask matrix
  of the task bank (:func:`sit_causal.objective.structural_masks`; rows = the bank's training instructions,
  columns = factors): scalars per micro-batch;
* ``selection``: once the task graph is fixed (:meth:`Seq2SeqSIT.set_task_graph`), the distillation of the
  graph into the selector (:func:`sit_causal.objective.selection_distillation`) on the bank;
* ``invariance`` (only when ``loss.w_invariance > 0``, for SIT and vanilla alike): within each task, how the
  per-example target risk differs across the data sources in the micro-batch
  (:func:`sit_causal.objective.invariance_term`, V-REx or IRMv1; :meth:`Seq2SeqSIT.target_terms`).

The task graph. :mod:`sit_nlp.model.task_graph` finds a task-to-factor graph ``A`` ``(m, n)`` (rows = the
training tasks, in the collator's order; columns = factors) on the learned representation and installs it:
from then on a training example of task ``t`` uses the mask ``A[t]`` (``mask_override``), the selector
is taught to reproduce ``A`` from the instructions, and at inference every instruction, seen or unseen,
gets the selector's mask binarised at 0.5, so evaluation reads the same kind of 0/1 mask training used.

The task bank is the set of distinct training instructions (up to ``task_bank_size``), encoded at every
step; using it rather than only the tasks present in a micro-batch makes the UIC loss see every task
(a batch of one task separates nothing) and makes both losses independent of how a batch is split
into micro-batches (gradient accumulation stays exact). ``method="vanilla"`` is the backbone alone:
same data, same loop, only ``target_nll``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutput

from sit_causal.latent import LatentOutput, SITLatentModule
from sit_causal.objective import (
    STRUCTURAL_TERMS,
    ObjectiveConfig,
    dummy_scale,
    invariance_term,
    selection_distillation,
    structural_masks,
    structural_terms,
)
from sit_nlp.model.backbones import Backbone, hidden_size
from sit_nlp.model.config import ConfigError, ModelConfig, latent_config, seq2seq_objective
from sit_nlp.model.source_decoder import SourceDecoder, chunked_token_nll

__all__ = [
    "LOSS_TERMS",
    "LossWindow",
    "Seq2SeqSIT",
    "TaskBank",
    "masked_mean",
]

LOSS_TERMS = ("target", "source", "kl", "uic", "distinction", "sparsity", "selection", "invariance")
"""The objective's terms, in the order a training log line shows them."""
_TOKEN_TERMS = {"target": ("target_nll", "target_tokens"), "source": ("source_nll", "source_tokens"),
                "kl": ("kl", "kl_tokens")}


def masked_mean(states: Tensor, mask: Tensor) -> Tensor:
    """Mean over positions of ``states`` ``(N, L, D)`` where ``mask`` ``(N, L)`` is 1: ``(N, D)``."""
    m = mask.to(states.dtype).unsqueeze(-1)
    return (states * m).sum(1) / m.sum(1).clamp_min(1.0)


@dataclass
class TaskBank:
    """The training instructions whose masks feed the UIC and distinction losses.

    ``ids``, ``mask``: ``(m, L)``; ``task_ids``: ``(m,)``; ``tasks``/``instructions``: one name and text per row.
    """

    ids: Tensor
    mask: Tensor
    task_ids: Tensor
    tasks: list[str]
    instructions: list[str]


@dataclass(frozen=True)
class LossWindow:
    """The accumulation window a training micro-batch belongs to: how its sums become the objective's terms.

    ``counts``: the non-pad token counts of the whole window over every process (``target``: target tokens,
    ``source``: reconstructed source tokens, ``kl``: encoder tokens); ``micro_batches``: micro-batches in the
    window; ``world``: processes (DDP averages gradients over them).
    """

    counts: dict[str, float]
    micro_batches: int
    world: int

    def reduce(self, out: dict[str, Tensor]) -> dict[str, Tensor]:
        """The objective's terms of one micro-batch's sums: a token sum over the window's count, times
        ``world``; a structural term over the number of micro-batches."""
        terms: dict[str, Tensor] = {}
        for name, (key, _) in _TOKEN_TERMS.items():
            if key in out:
                terms[name] = self.world * out[key] / self.counts[name]
        for name in (*STRUCTURAL_TERMS, "selection", "invariance"):
            if name in out:
                terms[name] = out[name] / self.micro_batches
        return terms


class Seq2SeqSIT(nn.Module):
    """A seq2seq backbone with (``method="sit"``) or without (``"vanilla"``) the SIT latent path.

    Arguments:
        config: the ``model`` section of the config.
        backbone: the loaded backbone (:func:`sit_nlp.model.backbones.load_backbone`).
        objective: the ``loss`` section, the SIT objective (which terms to compute, margins, temperatures).
    """

    def __init__(self, config: ModelConfig, backbone: Backbone, objective: ObjectiveConfig | None = None,
                 sources: Sequence[str] = ()) -> None:
        super().__init__()
        self.config = config
        self.sources = list(sources)  # the prior's data sources (prior_context: dataset), in id order
        self.objective = objective or seq2seq_objective()
        self.backbone = backbone.model
        self.family = backbone.family
        self.is_sit = config.method == "sit"
        self.bank: TaskBank | None = None
        if not self.is_sit:
            return
        d = hidden_size(self.backbone)
        n = config.n_factors
        d_f = config.factor_dim or max(1, d // n)
        heads = config.source_decoder_heads or max(1, d // 64)
        if d % heads:
            raise ConfigError(f"model.source_decoder_heads={heads} does not divide the width {d}")
        dropout = 0.0 if config.dropout is None else config.dropout
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.init_seed + 1)
            self.latent = SITLatentModule(latent_config(config, width=d, factor_dim=d_f))
            self.memory_proj = nn.Sequential(nn.Linear(n * d_f, d), nn.LayerNorm(d))
            self.memory_gate = nn.Parameter(torch.full((d,), -4.0)) if config.guidance == "gated" else None
            # factor_input="input": the instruction reaches the target decoder as one memory token
            self.task_token = (nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d)) if config.factor_input == "input"
                               else None)
            if config.guidance == "residual":  # the factor path starts silent: memory = h_x at step 0
                nn.init.zeros_(self.memory_proj[1].weight)
            self.source_decoder = SourceDecoder(
                d, n * d_f, config.source_decoder_layers, heads, config.source_max_len, dropout
            )
            # the prior's context: one row per training source, and the pooled prior (last row)
            self.source_embedding = (nn.Embedding(len(self.sources) + 1, config.latent_hidden)
                                     if config.prior_context != "instruction" else None)
        # the task graph (rows = training tasks, columns = factors); empty until init_task_graph
        self.register_buffer("task_graph", torch.zeros(0, n))
        self.register_buffer("graph_fixed", torch.zeros((), dtype=torch.bool))
        # rho, the weight of the encoder residual (guidance="residual"): 1 at the start, set from the training
        # progress by every training forward (set_progress); saved with the model, so evaluation uses the final value
        self.register_buffer("encoder_residual", torch.ones(()))
        self.graph_tasks: list[str] = []  # names of the task graph's rows (the training tasks, sorted)
        self._graph_rows: dict[tuple[int, ...], int] = {}  # training instruction (token ids) -> graph row

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Seq2SeqSIT:
        """The trained model of a model folder (:mod:`sit_nlp.model.checkpoint`: ``final/`` or any
        ``checkpoint-N/``; a run folder means its ``final/``), in evaluation mode, built from the folder's
        own ``model`` and ``loss`` settings. With the tokenizer and the run's whole config: ``load_trained`` of
        the training package's checkpoint module."""
        from sit_nlp.model.checkpoint import load_model, read_model_config

        path = Path(path)
        if not (path / "config.yaml").is_file() and (path / "final" / "config.yaml").is_file():
            path = path / "final"
        model, _ = load_model(path, *read_model_config(path))
        return model

    # ------------------------------------------------------------------ pieces
    @property
    def pad_id(self) -> int:
        return int(self.backbone.config.pad_token_id)

    @torch.compiler.disable  # a Python float: traced, it would recompile the model at every step
    def set_progress(self, progress: float) -> None:
        """Training progress ``p`` in ``[0, 1]``: sets ``rho = max(0, 1 - p / residual_fade)`` for
        ``guidance="residual"`` (``residual_fade`` ``None``: the residual stays at 1); no-op otherwise."""
        if not self.is_sit or self.config.guidance != "residual":
            return
        fade = self.config.residual_fade
        rho = 1.0 if fade is None else max(0.0, 1.0 - progress / fade) if fade > 0 else 0.0
        self.encoder_residual.fill_(rho)

    def memory(self, target_guidance: Tensor, h_x: Tensor) -> Tensor:
        """The target decoder's memory ``(B, T, D)`` from the selected factors ``(B, T, n, d_f)`` and the
        encoder states ``h_x`` ``(B, T, D)`` (read only by the ``gated`` and ``residual`` guidance)."""
        memory = self.memory_proj(target_guidance.flatten(-2))
        if self.memory_gate is not None:
            memory = memory + torch.sigmoid(self.memory_gate) * h_x
        elif self.config.guidance == "residual":
            memory = memory + self.encoder_residual.to(h_x.dtype) * h_x
        return memory

    def factor_source(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Token ids and attention mask ``(B, T)`` the factors are inferred from: the instruction-formatted
        source (``model.factor_input: formatted``) or the record's input alone (``input``)."""
        if self.is_sit and self.config.factor_input == "input":
            return batch["input_only_ids"], batch["input_only_mask"]
        return batch["input_ids"], batch["attention_mask"]

    def decoder_memory(self, target_guidance: Tensor, h_x: Tensor, h_t: Tensor) -> Tensor:
        """The target decoder's memory: :meth:`memory` ``(B, T, D)``, followed with ``factor_input: input``
        by the task token ``LN(W h_t)`` ``(B, 1, D)`` (the instruction alone: it carries nothing of the
        input, so the input still reaches the decoder only through the selected factors)."""
        memory = self.memory(target_guidance, h_x)
        if self.task_token is None:
            return memory
        return torch.cat([memory, self.task_token(h_t).unsqueeze(1).to(memory.dtype)], dim=1)

    def factor_mask(self, batch: dict[str, Tensor]) -> Tensor:
        """Which factor positions are real ``(B, T)``: the factor source's attention mask, or ``(B, 1)`` ones
        with ``model.factor_pool: sentence`` (one factor vector per record)."""
        _, mask = self.factor_source(batch)
        if self.config.factor_pool == "sentence":
            return mask.new_ones(mask.shape[0], 1)
        return mask

    def factor_states(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``h_x`` the latent module reads, ``(B, T, D)`` per token or ``(B, 1, D)`` (``factor_pool: sentence``:
        the masked mean of the encoder states, the meta-SCM's one ``L`` per record), and its mask."""
        ids, mask = self.factor_source(batch)
        h_x = self.encode(ids, mask)
        if self.config.factor_pool == "sentence":
            return masked_mean(h_x, mask).unsqueeze(1), mask.new_ones(mask.shape[0], 1)
        return h_x, mask

    def memory_mask(self, batch: dict[str, Tensor]) -> Tensor:
        """Attention mask ``(B, T')`` of the target decoder's memory (vanilla: the formatted source)."""
        if not self.is_sit:
            return batch["attention_mask"]
        mask = self.factor_mask(batch)
        if self.task_token is None:
            return mask
        return torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)

    def set_task_bank(self, bank: TaskBank | None) -> None:
        """Install the training instructions for the UIC / distinction losses (``None``: batch only)."""
        self.bank = bank

    def set_training_tasks(self, tasks: list[str], bank: TaskBank | None) -> None:
        """Before training: the task bank (:meth:`set_task_bank`) and, for SIT, room for the task graph of the
        training ``tasks`` (rows in this order) and the graph row of every training instruction of the bank."""
        self.set_task_bank(bank)
        if not self.is_sit:
            return
        self.init_task_graph(len(tasks))
        if bank is not None:
            self.register_training_instructions(bank.ids, bank.mask, bank.task_ids, tasks)

    def init_task_graph(self, n_tasks: int) -> None:
        """Room for a ``(n_tasks, n)`` task graph (not yet fixed): called before a checkpoint is loaded."""
        self.task_graph = torch.zeros(n_tasks, self.config.n_factors, device=self.task_graph.device)
        self.graph_fixed = torch.zeros((), dtype=torch.bool, device=self.task_graph.device)

    def set_task_graph(self, adjacency: Tensor) -> None:
        """Fix the training tasks' masks to ``adjacency`` ``(m, n)`` 0/1 (rows = training tasks in the
        collator's order, columns = factors)."""
        a = torch.as_tensor(adjacency, dtype=torch.float32, device=self.task_graph.device)
        if a.dim() != 2 or a.shape[1] != self.config.n_factors:
            raise ValueError(f"the task graph must be (tasks, {self.config.n_factors}), got {tuple(a.shape)}")
        self.task_graph = a
        self.graph_fixed = torch.ones((), dtype=torch.bool, device=a.device)

    def register_training_instructions(self, ids: Tensor, mask: Tensor, rows: Tensor, tasks: list[str]) -> None:
        """Remember which graph row each training instruction belongs to (``ids``, ``mask`` ``(m, L)``,
        ``rows`` ``(m,)``; ``tasks`` names the graph's rows): at inference a training task's instruction gets
        its graph row, the mask it was trained with, and only an unseen instruction the selector's mask."""
        self.graph_tasks = list(tasks)
        self._graph_rows = {}
        for r in range(ids.shape[0]):
            if int(rows[r]) >= 0:
                self._graph_rows[tuple(ids[r][mask[r].bool()].tolist())] = int(rows[r])

    def instruction_rows(self, instruction_ids: Tensor, instruction_mask: Tensor) -> Tensor:
        """Graph row of every instruction ``(U,)`` (``-1``: not a training instruction)."""
        keys = [tuple(instruction_ids[u][instruction_mask[u].bool()].tolist()) for u in range(instruction_ids.shape[0])]
        return torch.as_tensor([self._graph_rows.get(k, -1) for k in keys], dtype=torch.long,
                               device=instruction_ids.device)

    @property
    def has_task_graph(self) -> bool:
        return self.is_sit and bool(self.graph_fixed)

    def _mask_override(self, h_t: Tensor, task_ids: Tensor | None) -> Tensor | None:
        """With a fixed graph, each example's graph row: in training by its task id, at inference by its
        instruction (a training instruction); any other example gets the selector's mask binarised at 0.5."""
        if not self.has_task_graph:
            return None
        soft, _ = self.latent.selection_mask(h_t, sample=False)
        hard = (soft > 0.5).to(soft.dtype)
        if task_ids is None:
            return hard
        known = (task_ids >= 0) & (task_ids < self.task_graph.shape[0])
        rows = self.task_graph[task_ids.clamp(0, max(0, self.task_graph.shape[0] - 1))].to(soft.dtype)
        return torch.where(known.unsqueeze(1), rows, hard)

    def prior_context(self, batch: dict[str, Tensor], size: int,
                      generator: torch.Generator | None = None) -> Tensor | None:
        """The prior's context ``(B, H)`` (``None``: ``h_t``, ``prior_context: instruction``): the embedding of
        each example's source id; an unknown source (``-1``, or no ``dataset_ids`` in the batch), every example
        with ``prior_context: none``, and in training a ``prior_context_dropout`` fraction drawn from
        ``generator``, get the pooled row."""
        if self.source_embedding is None:
            return None
        pooled = len(self.sources)
        device = self.source_embedding.weight.device
        ids = batch.get("dataset_ids") if self.config.prior_context == "dataset" else None
        if ids is None:
            ids = torch.full((size,), pooled, dtype=torch.long, device=device)
        else:
            ids = torch.where((ids >= 0) & (ids < pooled), ids, torch.full_like(ids, pooled))
            if self.training and self.config.prior_context_dropout > 0:
                drop = torch.rand(ids.shape, generator=generator, device=ids.device) < self.config.prior_context_dropout
                ids = torch.where(drop, torch.full_like(ids, pooled), ids)
        return self.source_embedding(ids)

    def encode(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Encoder states ``(B, T, D)``."""
        return self.backbone.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def task_representation(self, instruction_ids: Tensor, instruction_mask: Tensor) -> Tensor:
        """``h_t`` ``(U, D)``: the masked mean of the encoder states of the instruction alone."""
        return masked_mean(self.encode(instruction_ids, instruction_mask), instruction_mask)

    def _instructions_with_bank(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """``h_t`` of the batch's instructions ``(U, D)`` and of the bank ``(m, D)`` in one encoder call."""
        ids, mask = batch["instruction_ids"], batch["instruction_mask"]
        u = ids.shape[0]
        if self.bank is None:
            return self.task_representation(ids, mask), None
        bank_ids = self.bank.ids.to(ids.device)
        bank_mask = self.bank.mask.to(ids.device)
        width = max(ids.shape[1], bank_ids.shape[1])
        ids = torch.cat([F.pad(ids, (0, width - ids.shape[1]), value=self.pad_id),
                         F.pad(bank_ids, (0, width - bank_ids.shape[1]), value=self.pad_id)])
        mask = torch.cat([F.pad(mask, (0, width - mask.shape[1])), F.pad(bank_mask, (0, width - bank_mask.shape[1]))])
        h = self.task_representation(ids, mask)
        return h[:u], h[u:]

    def latent_path(
        self, batch: dict[str, Tensor], generator: torch.Generator | None = None, open_all: bool = False,
        sample: bool | None = None, mask: Tensor | None = None,
    ) -> tuple[Tensor, LatentOutput, Tensor | None, Tensor]:
        """Encoder states, latent output, the bank's ``h_t`` and the target decoder's memory ``(B, T, D)``.

        ``open_all``: every gate open (the selection step's energies are measured so). ``sample``: draw
        ``z`` from the posterior (default: ``model.sample_latent`` in training mode, the posterior mean
        otherwise; ``True`` in evaluation mode measures the sampled training path). ``mask``: an explicit
        selection mask ``(B, n)`` (or ``(n,)`` for every example) in ``[0, 1]`` that replaces the selector's
        and the task graph's (a new task's mask learned from a few examples,
        :mod:`sit_nlp.testbed.fewshot`); gradients flow into it."""
        h_x, _ = self.factor_states(batch)
        h_t_batch, h_t_bank = self._instructions_with_bank(batch)
        h_t = h_t_batch[batch["instruction_index"]]
        if sample is None:
            sample = self.config.sample_latent and self.training
        if open_all:
            override = h_t.new_ones(h_t.shape[0], self.config.n_factors)
        elif mask is not None:
            override = mask.to(h_t.dtype).expand(h_t.shape[0], self.config.n_factors)
        else:
            task_ids = batch.get("task_ids")
            if not self.training and self.has_task_graph:  # inference: the instruction says which row
                task_ids = self.instruction_rows(batch["instruction_ids"], batch["instruction_mask"])
                task_ids = task_ids[batch["instruction_index"]]
            override = self._mask_override(h_t, task_ids)
        context = self.prior_context(batch, h_t.shape[0], generator)
        lat = self.latent(h_x, h_t, context=context, generator=generator, sample=sample, mask_override=override)
        return h_x, lat, h_t_bank, self.decoder_memory(lat.target_guidance, h_x, h_t)

    def target_logits(self, batch: dict[str, Tensor], memory: Tensor | None) -> Tensor:
        """Decoder logits ``(B, T_y, V)`` (teacher forcing); the backbone's own forward."""
        if memory is None:
            out = self.backbone(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                decoder_input_ids=batch["decoder_input_ids"], use_cache=False,
            )
        else:
            out = self.backbone(
                encoder_outputs=BaseModelOutput(last_hidden_state=memory), attention_mask=self.memory_mask(batch),
                decoder_input_ids=batch["decoder_input_ids"], use_cache=False,
            )
        return out.logits

    # ------------------------------------------------------------------ training forward
    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None,
                sample: bool | None = None, window: LossWindow | None = None,
                progress: float = 0.0) -> dict[str, Tensor]:
        """The loss of one training micro-batch, or its sums and counts.

        With ``window`` (training): sets the training ``progress`` (:meth:`set_progress`), reduces the
        micro-batch's sums over the window (:meth:`LossWindow.reduce`) and weighs the terms by the objective
        at ``progress``: ``{"loss": the weighted total, TERM: value, ...}``, the terms of :data:`LOSS_TERMS`
        present. Without: the sums and counts (:meth:`loss_sums`). ``sample`` as in :meth:`latent_path`.
        """
        if window is None:
            return self.loss_sums(batch, generator, sample)
        self.set_progress(progress)
        return self._objective(self.loss_sums(batch, generator, sample), window, progress)

    @torch.compiler.disable  # the progress is a Python float: traced, it would recompile at every step
    def _objective(self, out: dict[str, Tensor], window: LossWindow, progress: float) -> dict[str, Tensor]:
        """``{"loss": total, **terms}`` of one micro-batch's sums (:meth:`forward`)."""
        terms = window.reduce(out)
        return {"loss": self.objective.total(terms, progress), **terms}

    def target_terms(self, batch: dict[str, Tensor], memory: Tensor | None) -> dict[str, Tensor]:
        """``target_nll``, the summed token cross-entropy of the targets, and, when the objective weighs the
        invariance term, ``invariance`` (:func:`sit_causal.objective.invariance_term`) from each example's
        mean token NLL ``l_b = (1 / |y_b|) sum_k -log p(y_bk | ...)`` with the batch's ``task_ids`` and
        ``dataset_ids`` (``(B,)``: the data source is the environment). For the ``irm`` form every example's
        logits are multiplied by its dummy scale ``w_b = 1`` first (the forward value is unchanged)."""
        labels = batch["labels"]
        logits = self.target_logits(batch, memory).float()
        if not (self.objective.uses("invariance") and torch.is_grad_enabled()):  # evaluation: the NLL alone
            return {"target_nll": F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")}
        scale = dummy_scale(labels.shape[0], logits.device) if self.objective.invariance == "irm" else None
        if scale is not None:
            logits = logits * scale.view(-1, 1, 1)
        token_nll = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape)
        per_example = token_nll.sum(1) / (labels != -100).sum(1).clamp_min(1)
        return {"target_nll": token_nll.sum(),
                **invariance_term(self.objective, per_example, batch["task_ids"], batch["dataset_ids"], scale)}

    def loss_sums(self, batch: dict[str, Tensor], generator: torch.Generator | None = None,
                  sample: bool | None = None) -> dict[str, Tensor]:
        """Loss sums and counts of one micro-batch (see the module docstring); ``sample`` as in
        :meth:`latent_path`."""
        labels = batch["labels"]
        out: dict[str, Tensor] = {"target_tokens": (labels != -100).sum()}
        if not self.is_sit:
            return out | self.target_terms(batch, None)
        _, lat, h_t_bank, memory = self.latent_path(batch, generator, sample=sample)
        out |= self.target_terms(batch, memory)
        # source reconstruction from all factors
        src_labels = batch["source_labels"]
        embedding = self.backbone.get_input_embeddings()
        factor_mask = self.factor_mask(batch)
        hidden = self.source_decoder(
            embedding(batch["source_decoder_input_ids"]), lat.source_guidance.flatten(-2), factor_mask == 0,
        )
        keep = src_labels != -100
        d = hidden.shape[-1]
        out["source_nll"] = chunked_token_nll(
            hidden[keep], src_labels[keep], embedding.weight, d**-0.5, self.config.logits_chunk
        )
        out["source_tokens"] = keep.sum()
        enc_mask = factor_mask.bool()
        out["kl"] = lat.kl[enc_mask].sum()
        out["kl_tokens"] = enc_mask.sum()
        # structural terms over the task bank (or the batch's distinct instructions)
        if h_t_bank is not None:
            h_tasks = h_t_bank
            task_ids = self.bank.task_ids.to(h_tasks.device)
        else:
            h_tasks = self.task_representation(batch["instruction_ids"], batch["instruction_mask"])
            first = torch.full((h_tasks.shape[0],), -1, dtype=torch.long, device=h_tasks.device)
            task_ids = first.scatter(0, batch["instruction_index"], batch["task_ids"])
        out |= structural_terms(structural_masks(self.latent, h_tasks), task_ids, self.objective)
        if self.has_task_graph and self.objective.uses("selection"):
            known = (task_ids >= 0) & (task_ids < self.task_graph.shape[0])
            if bool(known.any()):
                out["selection"] = selection_distillation(self.latent, h_tasks[known],
                                                          self.task_graph[task_ids[known]])
        out["mask_mean"] = lat.mask.detach().float().mean()
        return out

    def factor_contributions(self, batch: dict[str, Tensor]) -> Tensor:
        """Per-example, per-factor contributions ``(B, n)`` to the target log-likelihood, every gate open.

        ``c_bj = (sum_{tokens, dims} dNLL_b / dz_bj * z_bj)^2``: the squared first-order change of example
        ``b``'s target NLL when factor channel ``j`` is removed (the selection step's statistic,
        :func:`sit_causal.selection.graph.task_factor_energies`). Posterior means, no dropout noise: call in
        evaluation mode; needs gradients (it runs its own ``torch.enable_grad``).
        """
        if not self.is_sit:
            raise ValueError("a vanilla model has no factors")
        with torch.no_grad():
            h_x, factor_mask = self.factor_states(batch)
            h_t = self.task_representation(batch["instruction_ids"], batch["instruction_mask"])
            h_t = h_t[batch["instruction_index"]]
            ones = h_t.new_ones(h_t.shape[0], self.config.n_factors)
            lat = self.latent(h_x, h_t, context=self.prior_context(batch, h_t.shape[0]), sample=False,
                              mask_override=ones)
        with torch.enable_grad():
            guidance = lat.target_guidance.detach().requires_grad_(True)  # (B, T, n, d)
            logits = self.target_logits(batch, self.decoder_memory(guidance, h_x, h_t))
            nll = F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), reduction="sum")
            (grad,) = torch.autograd.grad(nll, guidance)
        keep = factor_mask.to(grad.dtype)[:, :, None, None]
        first_order = (grad * guidance.detach() * keep).sum(dim=(1, 3))  # (B, n)
        return first_order.pow(2).detach()

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def instruction_masks(self, instruction_ids: Tensor, instruction_mask: Tensor) -> Tensor:
        """Selection masks ``(U, n)`` of instructions (deterministic, evaluation mode): rows = tasks."""
        if not self.is_sit:
            raise ValueError("a vanilla model has no selection masks")
        was = self.training
        self.eval()
        try:
            mask, _ = self.latent.selection_mask(self.task_representation(instruction_ids, instruction_mask))
        finally:
            self.train(was)
        return mask

    @torch.no_grad()
    def sequence_log_likelihood(self, batch: dict[str, Tensor], mask: Tensor | None = None) -> Tensor:
        """``log p(labels | source)`` summed over target tokens, ``(B,)``: rank classification of options.
        ``mask``: an explicit selection mask for SIT (:meth:`latent_path`)."""
        memory = None
        if self.is_sit:
            _, _, _, memory = self.latent_path(batch, mask=mask)
        elif mask is not None:
            raise ValueError("a vanilla model has no selection mask")
        logits = self.target_logits(batch, memory).float()
        labels = batch["labels"]
        logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        return (logp * (labels != -100)).sum(-1)

    @torch.no_grad()
    def generate(self, batch: dict[str, Tensor], **generate_kwargs: Any) -> Tensor:
        """Batched generation (beam search with ``num_beams``) for both methods; returns token ids.

        SIT decodes from the selected factors of the posterior mean (``memory``; with a fixed task graph, the
        selector's binarised mask); vanilla from the encoder. Keyword arguments go to Hugging Face
        ``generate`` (``num_beams``, ``max_new_tokens``, ...).
        """
        if not self.is_sit:
            return self.backbone.generate(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **generate_kwargs
            )
        _, _, _, memory = self.latent_path(batch)
        return self.backbone.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=memory), attention_mask=self.memory_mask(batch),
            **generate_kwargs,
        )
