"""The source decoder: a shallow causal transformer that reconstructs the (truncated) source from all factors.

It shares the backbone's input embedding matrix ``E`` ``(V, D)`` as input embedding and output head
(``logits = LN(h) D^-1/2 E^T``); its cross-entropy (:func:`chunked_token_nll`) is chunked and checkpointed,
so it never holds the ``(B S, V)`` logits. :class:`sit_nlp.model.seq2seq.Seq2SeqSIT` uses it for the
``source`` term of the objective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["SourceDecoder", "chunked_token_nll"]


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

    def __init__(self, d_model: int, factor_width: int, layers: int, heads: int, max_len: int,
                 dropout: float) -> None:
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
        """Decoder states ``(B, S, D)`` of the shifted source ``embeds`` reading the ``factors``."""
        s = embeds.shape[1]
        x = self.embed_norm(embeds + self.positions(torch.arange(s, device=embeds.device)))
        memory = self.memory_proj(factors)
        if self.layers is not None:
            causal = nn.Transformer.generate_square_subsequent_mask(s, device=x.device, dtype=x.dtype)
            x = self.layers(x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=memory_pad)
        return self.final_norm(x)
