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

Loss terms: the named terms of the one SIT objective (:mod:`sit_causal.objective`), here as **sums and
counts** of one micro-batch; :mod:`sit_nlp.training.loop` divides the sums by the counts of the whole accumulation
window (the reduction) and hands the terms to :meth:`sit_causal.objective.ObjectiveConfig.total`:

* ``target_nll``: summed token cross-entropy of the target (``target_tokens`` non-pad tokens): term ``target``;
* ``source_nll``: summed token cross-entropy of the source reconstruction (``source_tokens``): ``source``;
* ``kl``: ``KL(q(z|x) || p(z|t))`` summed over non-pad source tokens (``kl_tokens``): ``kl``;
* ``uic``, ``distinction``, ``sparsity``: :func:`sit_causal.objective.structural_terms` on the mask matrix
  of the task bank (:func:`sit_causal.objective.structural_masks`; rows = the bank's training instructions,
  columns = factors): scalars per micro-batch;
* ``selection``: once the task graph is fixed (:meth:`Seq2SeqSIT.set_task_graph`), the distillation of the
  graph into the selector (:func:`sit_causal.objective.selection_distillation`) on the bank.

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

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import BaseModelOutput

from sit_causal.latent import LatentOutput, SITLatentModule
from sit_causal.objective import ObjectiveConfig, selection_distillation, structural_masks, structural_terms
from sit_nlp.model.backbones import Backbone, hidden_size, load_backbone, quiet_transformers
from sit_nlp.training.config import (
    Config,
    ConfigError,
    ModelConfig,
    latent_config,
    load_config,
    save_config,
    seq2seq_objective,
)

__all__ = [
    "Seq2SeqSIT",
    "SourceDecoder",
    "TaskBank",
    "chunked_token_nll",
    "load_trained",
    "masked_mean",
    "save_trained",
]

SIT_WEIGHTS = "sit_modules.safetensors"
SOURCES = "sources.json"  # the prior's data sources, in id order (prior_context: dataset)


def masked_mean(states: Tensor, mask: Tensor) -> Tensor:
    """Mean over positions of ``states`` ``(N, L, D)`` where ``mask`` ``(N, L)`` is 1: ``(N, D)``."""
    m = mask.to(states.dtype).unsqueeze(-1)
    return (states * m).sum(1) / m.sum(1).clamp_min(1.0)


def chunked_token_nll(hidden: Tensor, targets: Tensor, weight: Tensor, scale: float, chunk: int) -> Tensor:
    """``sum_k -log softmax(scale * hidden[k] @ weight^T)[targets[k]]`` in float32, chunk by chunk.

    Each chunk's logits ``(chunk, V)`` are recomputed in the backward pass (activation checkpointing),
    so at most one chunk of logits is alive at any time.

    Arguments:
        hidden: ``(N, D)`` decoder states of the non-pad positions.
        targets: ``(N,)`` token ids.
        weight: ``(V, D)`` output embedding.
        scale: multiplier of the logits.
        chunk: rows per chunk.
    """

    def piece(h: Tensor, w: Tensor, t: Tensor) -> Tensor:
        return F.cross_entropy((h @ w.T).float() * scale, t, reduction="sum")

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start : start + chunk], targets[start : start + chunk]
        if torch.is_grad_enabled() and hidden.requires_grad:
            total = total + checkpoint(piece, h, weight, t, use_reentrant=False)
        else:
            total = total + piece(h, weight, t)
    return total


class SourceDecoder(nn.Module):
    """Shallow causal decoder reconstructing the (truncated) source from all factors.

    ``forward(embeds (B, S, D), factors (B, T, n d_f), memory_pad (B, T) bool) -> (B, S, D)``.
    """

    def __init__(self, d_model: int, factor_width: int, layers: int, heads: int, max_len: int, dropout: float):
        super().__init__()
        self.memory_proj = nn.Linear(factor_width, d_model)
        self.positions = nn.Embedding(max_len, d_model)
        self.embed_norm = nn.LayerNorm(d_model)
        layer = nn.TransformerDecoderLayer(
            d_model, heads, dim_feedforward=4 * d_model, dropout=dropout, batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerDecoder(layer, layers) if layers > 0 else None
        self.final_norm = nn.LayerNorm(d_model)

    def forward(self, embeds: Tensor, factors: Tensor, memory_pad: Tensor) -> Tensor:
        s = embeds.shape[1]
        x = self.embed_norm(embeds + self.positions(torch.arange(s, device=embeds.device)))
        memory = self.memory_proj(factors)
        if self.layers is not None:
            causal = nn.Transformer.generate_square_subsequent_mask(s, device=x.device, dtype=x.dtype)
            x = self.layers(x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=memory_pad)
        return self.final_norm(x)


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
        # rho, the weight of the encoder residual (guidance="residual"): 1 at the start, set by the training
        # loop from the progress (set_progress); saved with the model, so evaluation uses the final value
        self.register_buffer("encoder_residual", torch.ones(()))
        self.graph_tasks: list[str] = []  # names of the task graph's rows (the training tasks, sorted)
        self._graph_rows: dict[tuple[int, ...], int] = {}  # training instruction (token ids) -> graph row

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Seq2SeqSIT:
        """The trained model of a folder written by :func:`save_trained` (``final/`` or any
        ``checkpoint-N/``; a run folder means its ``final/``), in evaluation mode. Tokenizer and config:
        :func:`load_trained`."""
        path = Path(path)
        if not (path / "config.yaml").is_file() and (path / "final" / "config.yaml").is_file():
            path = path / "final"
        model, _, _ = load_trained(path)
        return model

    # ------------------------------------------------------------------ pieces
    @property
    def pad_id(self) -> int:
        return int(self.backbone.config.pad_token_id)

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
                sample: bool | None = None) -> dict[str, Tensor]:
        """Loss sums and counts of one micro-batch (see the module docstring); ``sample`` as in
        :meth:`latent_path`."""
        labels = batch["labels"]
        out: dict[str, Tensor] = {"target_tokens": (labels != -100).sum()}
        if not self.is_sit:
            logits = self.target_logits(batch, None)
            out["target_nll"] = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="sum")
            return out
        _, lat, h_t_bank, memory = self.latent_path(batch, generator, sample=sample)
        logits = self.target_logits(batch, memory)
        out["target_nll"] = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="sum")
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


# ---------------------------------------------------------------------- save / load
MARKER = "sit_model.json"
"""The file that marks a folder written by :func:`save_trained` (method, step, how to load it)."""
_PLAIN_HF_WARNING = "SIT_WARNING.not_the_trained_SIT_model.load_with_sit_nlp.seq2seq.Seq2SeqSIT.from_pretrained"
_README = """# A SIT model folder

Written by `sit-nlp train` ({what}). Load it with

```python
from sit_nlp.model.seq2seq import Seq2SeqSIT
model = Seq2SeqSIT.from_pretrained("{name}")       # the trained model, in evaluation mode
```

or use it with `sit-nlp eval --checkpoint {name}`. {plain}
"""
_PLAIN_SIT = ("The Hugging Face files here hold the backbone alone: loaded as a plain Hugging Face model it is "
              "**not** the trained SIT model (its decoder was trained on SIT's latent memory), and Hugging Face's "
              "load report lists the marker key `" + _PLAIN_HF_WARNING + "` as a warning.")
_PLAIN_VANILLA = "The Hugging Face files here are the whole trained model (vanilla): plain `from_pretrained` loads it."


def _mark_backbone_weights(out: Path) -> None:
    """Add one marker tensor to a SIT folder's backbone ``model.safetensors``: loading the folder as a plain
    Hugging Face model then reports it as an unexpected key, so the user is warned (our loader ignores it)."""
    weights = out / "model.safetensors"
    if not weights.is_file():  # sharded: the README and sit_model.json carry the marker
        return
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as fh:
        metadata = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    tensors[_PLAIN_HF_WARNING] = torch.zeros(1)
    save_file(tensors, str(weights), metadata=metadata)


def save_trained(
    model: Seq2SeqSIT, config: Config, tokenizer: Any, out_dir: str | Path,
    state_dict: dict[str, Tensor] | None = None, bank: TaskBank | None = None, final: bool = False,
) -> None:
    """Write a self-contained model directory: the backbone in Hugging Face format (``save_pretrained``;
    for vanilla the whole model), the SIT modules in ``sit_modules.safetensors``, the tokenizer,
    ``config.yaml`` (the resolved training config), ``task_bank.json`` (training instructions, for the
    learned graph), the marker ``sit_model.json`` and a ``README.md`` saying how to load it. A SIT folder's
    backbone weights carry one marker tensor, so Hugging Face warns when it is loaded as a plain model.
    :meth:`Seq2SeqSIT.from_pretrained` loads the folder back.

    ``state_dict`` is the full (gathered) state dict when training was distributed/sharded; ``final``:
    the end-of-training model (``final/``) rather than an intermediate checkpoint.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = model.state_dict() if state_dict is None else state_dict
    backbone_sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    with quiet_transformers():
        model.backbone.save_pretrained(out, state_dict=backbone_sd)
    if model.is_sit:
        _mark_backbone_weights(out)
    tokenizer.save_pretrained(out)
    marker = {"format": "sit-nlp model folder", "method": model.config.method, "final": final,
              "load": "sit_nlp.model.seq2seq.Seq2SeqSIT.from_pretrained",
              "plain_hf_is_the_trained_model": not model.is_sit}
    (out / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_README.format(
        what="the model at the end of training" if final else "an intermediate checkpoint", name=out.name,
        plain=_PLAIN_SIT if model.is_sit else _PLAIN_VANILLA), encoding="utf-8")
    extras = {k: v.contiguous() for k, v in sd.items() if not k.startswith("backbone.")}
    if extras:
        save_file(extras, str(out / SIT_WEIGHTS))
    resolved = Config(**{s: getattr(config, s) for s in ("model", "data", "loss", "graph", "train")})
    save_config(resolved, out / "config.yaml")
    if bank is not None:
        rows = [{"task": t, "instruction": i} for t, i in zip(bank.tasks, bank.instructions, strict=True)]
        (out / "task_bank.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    if model.is_sit and model.has_task_graph:
        (out / "task_graph_tasks.json").write_text(json.dumps(model.graph_tasks), encoding="utf-8")
    if model.is_sit and model.sources:
        (out / SOURCES).write_text(json.dumps(model.sources), encoding="utf-8")


def load_trained(path: str | Path) -> tuple[Seq2SeqSIT, Any, Config]:
    """Load a directory written by :func:`save_trained`: ``(model in eval mode, tokenizer, config)``."""
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"{path}: not a trained model directory (no config.yaml)")
    cfg = load_config(path / "config.yaml")
    backbone = load_backbone(str(path), warn_sit_folder=False)
    sources = json.loads((path / SOURCES).read_text(encoding="utf-8")) if (path / SOURCES).is_file() else []
    model = Seq2SeqSIT(cfg.model, backbone, cfg.loss, sources=sources)
    if model.is_sit:
        extras = load_file(str(path / SIT_WEIGHTS))
        if "task_graph" in extras:
            model.init_task_graph(int(extras["task_graph"].shape[0]))
        missing, unexpected = model.load_state_dict(extras, strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise ConfigError(f"{path}: SIT weights do not match the config (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
        names, bank_file = path / "task_graph_tasks.json", path / "task_bank.json"
        if model.has_task_graph and names.is_file() and bank_file.is_file():
            tasks = json.loads(names.read_text(encoding="utf-8"))
            bank = json.loads(bank_file.read_text(encoding="utf-8"))
            enc = backbone.tokenizer([b["instruction"] for b in bank], truncation=True,
                                     max_length=cfg.data.max_instruction_len, padding=True, return_tensors="pt")
            rows = torch.as_tensor([tasks.index(b["task"]) if b["task"] in tasks else -1 for b in bank])
            model.register_training_instructions(enc["input_ids"], enc["attention_mask"], rows, tasks)
    model.eval()
    return model, backbone.tokenizer, cfg
