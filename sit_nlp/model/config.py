"""The model's own configuration: what builds a :class:`sit_nlp.model.seq2seq.Seq2SeqSIT` and its selection step.

:class:`ModelConfig` (the ``model`` section of a run's config) builds the model with the SIT objective's
defaults for a sequence model (:func:`seq2seq_objective`, the ``loss`` section) and the latent module's
settings (:func:`latent_config`); :class:`GraphConfig` (the ``graph`` section) drives the selection step
(:mod:`sit_nlp.model.task_graph`). A run's whole config (the training package's ``Config``) composes these
sections with the data and training ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from sit_causal.objective import ObjectiveConfig

if TYPE_CHECKING:
    from sit_causal.latent import LatentConfig

__all__ = ["ConfigError", "GraphConfig", "LoraSettings", "ModelConfig", "latent_config", "seq2seq_objective"]


class ConfigError(ValueError):
    """A bad config file, key or value; ``str(err)`` is one line."""


@dataclass
class LoraSettings:
    """LoRA on the backbone through ``peft`` (the ``model.lora`` mapping; absent or ``null``: off).

    Each targeted linear map ``W`` ``(out, in)`` becomes ``W x + (alpha / rank) B A x`` with ``A`` ``(rank, in)``
    (random) and ``B`` ``(out, rank)`` (zeros: the model starts as the backbone); only ``A`` and ``B`` of the
    backbone are trained, SIT's own modules are trained in full. ``target_modules``: module names separated by
    commas (``q_proj,v_proj``), ``all-linear``, or ``null`` for ``peft``'s default of the architecture.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: str | None = None


@dataclass
class ModelConfig:
    """The backbone and the SIT components (shapes in :mod:`sit_nlp.model.seq2seq`)."""

    backbone: str = "tiny-bart"  # preset (sit_nlp.model.backbones.PRESETS), local directory or hub name
    # encoder-decoder (Seq2SeqSIT) or decoder-only (DecoderSIT, a causal LM); auto: inferred from the backbone
    architecture: Literal["auto", "encoder-decoder", "decoder-only"] = "auto"
    lora: LoraSettings | None = None  # LoRA on the backbone (peft); None: every backbone weight is trained
    # decoder-only: h_x and h_t are the hidden states after this many layers (through the final norm), so the
    # prompt's extra pass runs only these layers; None: after the last layer
    factor_layer: int | None = None
    # decoder-only: how the selected factors reach the answer: soft prefix tokens that replace the prompt (one per
    # prompt token), or their pooled projection added to every answer embedding (the prompt left out: an ablation)
    decoder_guidance: Literal["prefix", "added"] = "prefix"
    tokenizer: str | None = None  # *-random presets: a tokenizer folder (None: trained on the data, OUT/tokenizer)
    tokenizer_vocab: int = 16384  # *-random presets: BPE vocabulary when the tokenizer is trained on the data
    method: Literal["sit", "vanilla"] = "sit"
    dropout: float | None = None  # None: the backbone's own (tiny presets: 0.1)
    init_seed: int = 0  # random init of tiny presets and of the SIT modules
    n_factors: int = 8  # n
    factor_dim: int | None = None  # d_f; None: D // n_factors (factors as channels of the hidden state)
    latent_hidden: int = 128  # width of the prior and selection MLPs
    selection: Literal["sigmoid", "hard-concrete", "straight-through", "none"] = "sigmoid"
    temperature: float = 1.0
    max_logit: float | None = None  # selection logits squashed to max_logit * tanh(raw / max_logit); None: raw
    selector_init_std: float = 0.1  # std of the selector's output weights at the start (0: every task the same)
    selector_init_logit: float = 1.0  # initial logit of every gate (1: open, sigmoid(1) ~ 0.73)
    learn_prior: bool = True  # a learned conditional prior (False: standard normal, an ablation)
    # what the prior p(z | c) is conditioned on: the record's data source (the meta-SCM's p(L | D); a source not
    # seen in training gets the learned pooled prior), the instruction (h_t), or nothing (one learned prior)
    prior_context: Literal["dataset", "instruction", "none"] = "dataset"
    prior_context_dropout: float = 0.1  # prior_context=dataset: fraction of training examples given the pooled prior
    sample_latent: bool = False  # the decoder reads the posterior mean in training and at eval (True: a sample)
    logvar_min: float = -9.0  # clamp of every log-variance of the posterior and the prior
    logvar_max: float = 5.0
    # decoder memory: factors only; + a learned gate on the encoder (starts near closed); or + an encoder
    # residual that starts open (SIT = the backbone at step 0) and fades to 0 over residual_fade of training
    guidance: Literal["factors", "gated", "residual"] = "factors"
    # where the factors are inferred from: the instruction-formatted source (the encoder sees the task), or the
    # record's input alone (q(z | x) as in the meta-SCM; the decoder gets the instruction as one memory token)
    factor_input: Literal["formatted", "input"] = "formatted"
    # the factors per token (channels of the hidden state) or one vector per record (the masked mean of the
    # encoder states: one L per sample, as in the meta-SCM; the decoders read it as one memory token)
    factor_pool: Literal["token", "sentence"] = "token"
    residual_fade: float | None = 0.25  # guidance=residual: fraction of training after which rho = 0 (None: never)
    source_decoder_layers: int = 1  # depth of the source reconstruction decoder
    source_decoder_heads: int | None = None  # None: max(1, D // 64)
    source_max_len: int = 64  # reconstruct the first source_max_len tokens of the input
    task_bank_size: int = 64  # UIC / distinction losses over the masks of up to this many training instructions
    logits_chunk: int = 4096  # rows per chunk of the source decoder's cross-entropy

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):  # a config.yaml read back: the nested mapping becomes its dataclass
            self.lora = LoraSettings(**self.lora)


def seq2seq_objective() -> ObjectiveConfig:
    """The ``loss`` section's defaults: the one SIT objective (:class:`sit_causal.objective.ObjectiveConfig`)
    weighted for a sequence model, whose terms are per-token means over the accumulation window."""
    return ObjectiveConfig(w_target=1.0, w_source=1.0, w_kl=0.01, kl_anneal=0.5, w_uic=0.1, uic_margin=0.5,
                           w_distinction=0.1, distinction_temperature=0.1, w_sparsity=0.0, sparsity_start=0.0,
                           sparsity_ramp=0.2, w_selection=1.0)


@dataclass
class GraphConfig:
    """The selection step inside training (:mod:`sit_nlp.model.task_graph`): find the task-to-factor graph on the
    learned representation, fix the training tasks' masks to it, distil it into the selector.

    ``find_at``: fraction of ``train.max_steps`` after which the graph is found (``None``: never; the masks
    are learned jointly, the ``sit-joint`` recipe); ``coverage``: each task keeps the fewest factors whose
    energies cover this fraction of its row; ``form``: the condition the repair enforces (``linear``: the
    UIC, ``orthogonal``: its weaker form); ``examples_per_task``: training examples per task that estimate
    the energies; ``energy_batch_size``: examples per forward-backward pass while estimating; ``statistic``:
    what builds the graph, ``energy`` (the energies' coverage graph) or ``invariant`` (the energies restricted
    to the factors given which each task's target has the same law in every data source,
    :func:`sit_causal.selection.invariance.select_invariant` on the same examples; :mod:`sit_nlp.model.task_graph`;
    its trees need about 100 examples per task before they compare anything, below that it keeps the energy graph).
    """

    find_at: float | None = 0.5
    from_file: str | None = None  # a graph.json installed as the task graph at step 0 (no selection step); key: from
    coverage: float = 0.8
    form: Literal["linear", "orthogonal"] = "linear"
    examples_per_task: int = 32
    energy_batch_size: int = 16
    statistic: Literal["energy", "invariant"] = "energy"


def latent_config(mc: ModelConfig, width: int, factor_dim: int) -> LatentConfig:
    """The :class:`sit_causal.latent.LatentConfig` of the ``model`` section for a backbone of width ``D``
    (``width``, both ``h_x`` and ``h_t``) and factors of ``factor_dim`` dims: every latent-module option
    of the config reaches the module through here. The prior's context is ``h_t`` (``prior_context:
    instruction``) or a learned source embedding of ``latent_hidden`` dims (``dataset``, ``none``)."""
    from sit_causal.latent import LatentConfig

    context_dim = None if mc.prior_context == "instruction" else mc.latent_hidden
    return LatentConfig(
        n_factors=mc.n_factors, input_dim=width, task_dim=width, context_dim=context_dim, factor_dim=factor_dim,
        hidden_dim=mc.latent_hidden,
        selection=mc.selection, temperature=mc.temperature, learn_prior=mc.learn_prior,
        logvar_min=mc.logvar_min, logvar_max=mc.logvar_max, max_logit=mc.max_logit,
        selector_init_std=mc.selector_init_std, selector_init_logit=mc.selector_init_logit,
    )
