"""SIT on a decoder-only (causal) language model: the answer reads the prompt through its selected factors.

``D`` the backbone width, ``n`` factors of ``d_f`` dims (default ``d_f = D / n``), ``B`` batch, ``T_p``
prompt tokens (left-padded), ``T_a`` answer tokens with eos, ``U`` distinct instructions in the batch, ``V``
vocabulary; batches from :class:`sit_nlp.data.decoder_batching.DecoderCollator`::

    prompt (B, T_p) --backbone (no LM head)--> h_x (B, T_p, D)        the prompt's last hidden states
    instruction_ids (U, L) --same backbone, masked mean--> h_t (U, D)  the task representation
    SITLatentModule(h_x, h_t, c): z (B, T_p, n, d_f), mask m_t (B, n), KL (B, T_p)     sit_causal.latent
    prefix = LN(Linear(n d_f -> D)(m_t * z))  (B, T_p, D): one soft token per prompt token, built from the
        selected factors alone; the LayerNorm's scale starts at the RMS of the token embeddings
        guidance="gated":    prefix += sigmoid(g) * E[prompt], g (D,) learned, starts at -4
        guidance="residual": prefix = rho(p) E[prompt] + LN_0(W (m_t * z)), LN_0's scale at 0, so SIT
                             starts as the backbone exactly and rho fades to 0 over residual_fade
    the backbone reads [prefix | E[answer[:-1]]] (B, T_p + T_a - 1, D): logits of the last T_a positions
        (B, T_a, V) predict the answer; the raw prompt never reaches them (every prompt position is replaced
        by its prefix token)
    source decoder: as Seq2SeqSIT's (all factors z, the truncated raw input, the shared token embedding)

So the four parts of the paper keep their meaning through the one objective (:mod:`sit_causal.objective`):
``target`` is the answer's NLL given the selected factors only, ``source`` the input reconstructed from all
factors, ``kl`` the posterior against the context-conditioned prior, ``uic`` and ``distinction`` the
structural terms on the task bank's masks (rows = the bank's training instructions, columns = factors).

Why soft prefix tokens and not a projection of the factors added at the answer positions: the answer must
not read the prompt except through the selected factors. Adding the factors to the answer's embeddings
while the answer still attends to the prompt leaves the prompt's every token a path around the selection;
dropping the prompt instead leaves one pooled factor vector per record, losing the per-token channels of
the encoder-decoder model. One prefix token per prompt token keeps the per-token factor channels (the
seq2seq model's cross-attention memory becomes self-attention context) and is the only path from prompt to
answer ([docs/design.md](docs/design.md) section 5).

``method="vanilla"`` is the control: the same backbone, batches and loss on ``[prompt | answer]``, no
latent path. The class reuses :class:`sit_nlp.model.seq2seq.Seq2SeqSIT` (the latent path, task bank, task
graph, source decoder, the objective's sums and counts, ``forward``) and replaces what touches the
backbone: :meth:`encode`, :meth:`target_logits`, :meth:`generate`. LoRA (``model.lora``) wraps the backbone
with ``peft``; :func:`apply_lora` freezes every other backbone weight, SIT's own modules stay trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sit_causal.objective import ObjectiveConfig
from sit_nlp.data.decoder_batching import position_ids
from sit_nlp.model.backbones import Backbone, causal_lm
from sit_nlp.model.config import ConfigError, LoraSettings, ModelConfig
from sit_nlp.model.seq2seq import Seq2SeqSIT, masked_mean

__all__ = ["DecoderSIT", "apply_lora", "hidden_after", "lora_state_dict", "trainable_fraction"]


def apply_lora(model: nn.Module, settings: LoraSettings, seed: int) -> nn.Module:
    """``model`` wrapped by ``peft`` with LoRA adapters (:class:`sit_nlp.model.config.LoraSettings`): every
    backbone weight frozen but the adapters' ``A`` ``(rank, in)`` and ``B`` ``(out, rank)``; ``A`` drawn inside
    a forked RNG seeded by ``seed`` (the global RNG untouched), ``B = 0``."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("model.lora needs the package peft: pip install peft==0.21.0") from None
    targets: str | list[str] | None = settings.target_modules
    if targets is not None and targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, task_type="CAUSAL_LM", bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return get_peft_model(model, config)
        except ValueError as err:
            first = str(err).strip().splitlines()[0]
            raise ConfigError(f"model.lora: {first}") from None


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter weights of a ``peft``-wrapped backbone, keyed as ``peft`` saves them."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def trainable_fraction(model: DecoderSIT) -> dict[str, float]:
    """Trainable parameters: of the backbone (LoRA adapters, or every weight), of SIT's own modules, their
    sum, the backbone's size without adapters, and the sum as a fraction of that size."""
    backbone = sum(p.numel() for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad)
    own = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone.") and p.requires_grad)
    base = sum(p.numel() for n, p in model.backbone.named_parameters() if "lora_" not in n)
    return {"backbone_trainable": backbone, "sit_modules": own, "trainable": backbone + own,
            "backbone_parameters": base, "fraction": (backbone + own) / max(1, base)}


class _Stop(Exception):
    """Raised by the hook of :func:`hidden_after` to leave the backbone's forward after layer ``k``."""


def hidden_after(decoder: nn.Module, k: int, kwargs: dict[str, Any]) -> Tensor:
    """The hidden states ``(B, T, D)`` after the first ``k`` layers of a causal LM's decoder stack (``layers``:
    Llama, Qwen2, SmolLM2; ``h``: GPT-2), through its final norm (``norm`` / ``ln_f``) when it has one. A forward
    hook on layer ``k`` ends the forward there, so layers ``k+1..L`` and the final norm's original call never run;
    gradients flow as usual."""
    layers = getattr(decoder, "layers", None)
    if layers is None:
        layers = getattr(decoder, "h", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"model.factor_layer: {type(decoder).__name__} has no layers/h list to stop in")
    if not 1 <= k <= len(layers):
        raise ConfigError(f"model.factor_layer must be in [1, {len(layers)}] for this backbone, got {k}")
    captured: list[Tensor] = []

    def stop(module: nn.Module, args: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    handle = layers[k - 1].register_forward_hook(stop)
    try:
        decoder(**kwargs)
    except _Stop:
        pass
    finally:
        handle.remove()
    norm = getattr(decoder, "norm", None) or getattr(decoder, "ln_f", None)
    return captured[0] if norm is None else norm(captured[0])


class DecoderSIT(Seq2SeqSIT):
    """A causal LM with (``method="sit"``) or without (``"vanilla"``) the SIT latent path; see the module
    docstring. Same contract as :class:`~sit_nlp.model.seq2seq.Seq2SeqSIT`: ``forward(batch, generator,
    sample, window, progress)`` returns the sums and counts, or with ``window`` the weighted loss and its named
    terms; :meth:`generate` and :meth:`sequence_log_likelihood` serve ``sit-nlp eval``.

    Arguments:
        config: the ``model`` section (``factor_input: formatted`` and ``factor_pool: token`` only).
        backbone: a ``causal-lm`` backbone (:func:`sit_nlp.model.backbones.load_backbone`).
        objective: the ``loss`` section.
        sources: the prior's data sources, in id order.
    """

    def __init__(self, config: ModelConfig, backbone: Backbone, objective: ObjectiveConfig | None = None,
                 sources: Sequence[str] = ()) -> None:
        if backbone.family != "causal-lm":
            raise ConfigError(f"backbone {backbone.name!r} is an encoder-decoder: use Seq2SeqSIT "
                              "(model.architecture: encoder-decoder)")
        if config.factor_input != "formatted":
            raise ConfigError("model.factor_input: input is for encoder-decoders; a decoder-only SIT reads the prompt")
        if config.factor_pool != "token":
            raise ConfigError("model.factor_pool: sentence is for encoder-decoders; a decoder-only SIT keeps "
                              "one prefix token per prompt token")
        if config.decoder_guidance == "added" and config.guidance != "factors":
            raise ConfigError("model.decoder_guidance: added takes model.guidance: factors (no prompt to gate)")
        super().__init__(config, backbone, objective, sources)
        if self.is_sit and config.guidance != "residual":
            # the prefix tokens start at the scale of the token embeddings the backbone was trained on
            rms = backbone.model.get_input_embeddings().weight.detach().float().pow(2).mean().sqrt()
            with torch.no_grad():
                self.memory_proj[1].weight.fill_(float(rms))
        if config.lora is not None:
            self.backbone = apply_lora(self.backbone, config.lora, config.init_seed + 2)

    # ------------------------------------------------------------------ the backbone
    @property
    def lm(self) -> nn.Module:
        """The Hugging Face causal LM (inside the ``peft`` wrapper with LoRA: its LoRA layers run)."""
        return causal_lm(self.backbone)

    def encode(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Hidden states ``(B, T, D)`` of the backbone without its LM head (left or right padding: position ids
        from the mask): after the last layer, or with ``model.factor_layer = k`` after layer ``k`` through the
        backbone's final norm, the remaining layers never run (:func:`hidden_after`)."""
        decoder = self.lm.get_decoder()
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask,
                  "position_ids": position_ids(attention_mask), "use_cache": False}
        if self.config.factor_layer is None:
            return decoder(**kwargs).last_hidden_state
        return hidden_after(decoder, self.config.factor_layer, kwargs)

    def memory(self, target_guidance: Tensor, h_x: Tensor) -> Tensor:
        """The factor part of the prefix, ``LN(W flatten(m_t * z))`` ``(B, T_p, D)``; the gate or residual on the
        prompt embeddings is added by :meth:`prefix`, which has the prompt."""
        return self.memory_proj(target_guidance.flatten(-2))

    def prefix(self, memory: Tensor, prompt_ids: Tensor) -> Tensor:
        """What replaces the prompt ``(B, T_p, D)``: ``memory``, plus ``sigmoid(g) E[prompt]`` (``gated``) or
        ``rho E[prompt]`` (``residual``)."""
        if self.memory_gate is not None:
            return memory + torch.sigmoid(self.memory_gate) * self.backbone.get_input_embeddings()(prompt_ids)
        if self.config.guidance == "residual":
            embedded = self.backbone.get_input_embeddings()(prompt_ids)
            return memory + self.encoder_residual.to(embedded.dtype) * embedded
        return memory

    def _context(self, batch: dict[str, Tensor], memory: Tensor | None) -> Tensor:
        """``(B, T_p, D)``: the prompt's embeddings (vanilla) or the prefix (SIT)."""
        if memory is None:
            return self.backbone.get_input_embeddings()(batch["input_ids"])
        return self.prefix(memory, batch["input_ids"])

    def _start_ids(self, batch: dict[str, Tensor]) -> Tensor:
        """``(B, 1)`` the token the answer starts from without a prompt (``decoder_guidance: added``): bos, else eos."""
        config = self.lm.config
        start = config.bos_token_id if config.bos_token_id is not None else config.eos_token_id
        return batch["input_ids"].new_full((batch["input_ids"].shape[0], 1), int(start))

    def added_guidance(self, memory: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """``decoder_guidance: added``: the prefix's masked mean over the prompt, ``(B, D)``, which is added to the
        embedding of every answer position."""
        return masked_mean(memory, batch["attention_mask"])

    def _added_logits(self, batch: dict[str, Tensor], memory: Tensor) -> Tensor:
        """Logits ``(B, T_a, V)`` of ``[start | answer[:-1]]`` with :meth:`added_guidance` on every embedding."""
        labels = batch["labels"]
        ids = torch.cat([self._start_ids(batch), batch["decoder_input_ids"][:, :-1]], dim=1)
        embeds = self.backbone.get_input_embeddings()(ids)
        embeds = embeds + self.added_guidance(memory, batch).unsqueeze(1).to(embeds.dtype)
        mask = torch.cat([torch.ones_like(labels[:, :1]), (labels != -100)[:, :-1].long()], dim=1)
        return self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids(mask),
                       use_cache=False).logits

    def target_logits(self, batch: dict[str, Tensor], memory: Tensor | None) -> Tensor:
        """Logits ``(B, T_a, V)`` aligned with ``batch["labels"]``: the backbone over ``[context | answer[:-1]]``
        (context = the prompt for vanilla, the prefix of selected factors for SIT), LM head on the last ``T_a``
        positions only."""
        if memory is not None and self.config.decoder_guidance == "added":
            return self._added_logits(batch, memory)
        labels = batch["labels"]
        answer = self.backbone.get_input_embeddings()(batch["decoder_input_ids"][:, :-1])
        context = self._context(batch, memory)
        embeds = torch.cat([context, answer.to(context.dtype)], dim=1)
        mask = torch.cat([batch["attention_mask"], (labels != -100)[:, :-1].to(batch["attention_mask"].dtype)], dim=1)
        out = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids(mask),
                      logits_to_keep=labels.shape[1], use_cache=False)
        return out.logits

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate(self, batch: dict[str, Tensor], **generate_kwargs: Any) -> Tensor:
        """The answer's token ids ``(B, new tokens)`` after the prompt (greedy, or beam search with
        ``num_beams``): vanilla from the prompt, SIT from the prefix of the posterior mean's selected factors
        (with a fixed task graph, a training instruction's graph row, else the selector's binarised mask).
        Keyword arguments go to Hugging Face ``generate``."""
        memory = None
        if self.is_sit:
            _, _, _, memory = self.latent_path(batch)
        if memory is not None and self.config.decoder_guidance == "added":
            return self._generate_added(batch, memory, generate_kwargs)
        embeds = self._context(batch, memory)
        return self.lm.generate(inputs_embeds=embeds, attention_mask=batch["attention_mask"], **generate_kwargs)

    def _generate_added(self, batch: dict[str, Tensor], memory: Tensor, generate_kwargs: dict[str, Any]) -> Tensor:
        """Generation with ``decoder_guidance: added``: from the start token alone, a forward hook adding the
        pooled guidance to every embedded token (repeated over beams)."""
        guidance = self.added_guidance(memory, batch)

        def add(module: nn.Module, args: Any, output: Tensor) -> Tensor:
            g = guidance.repeat_interleave(output.shape[0] // guidance.shape[0], dim=0)
            return output + g.unsqueeze(1).to(output.dtype)

        start = self._start_ids(batch)
        handle = self.backbone.get_input_embeddings().register_forward_hook(add)
        try:
            out = self.lm.generate(input_ids=start, attention_mask=torch.ones_like(start), **generate_kwargs)
        finally:
            handle.remove()
        return out[:, 1:]
