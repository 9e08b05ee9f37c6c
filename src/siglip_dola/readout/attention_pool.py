"""Single-query attention pooling (SigLIP's MAP head) evaluated in its cheap, exact order.

The MAP head attends from one learned probe to T tokens. With one query, the key projection
folds into a [width, heads] matrix (scores = X @ U) and the value projection can be applied
after the attention-weighted average of the tokens (the weights sum to 1), so pooling costs
O(T * width * heads) instead of O(T * width^2). The result is the head's own function computed
with the head's own parameters - equal to calling the module up to float rounding (tested) -
and it makes reading out many layers nearly free next to the backbone.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["MapPooling", "fused_map_pool", "supports_fused_map_pool"]


def supports_fused_map_pool(head: nn.Module) -> bool:
    """True for a transformers SigLIP/SigLIP2 pooling head built on ``nn.MultiheadAttention``."""
    attention = getattr(head, "attention", None)
    return (
        isinstance(attention, nn.MultiheadAttention)
        and attention.in_proj_weight is not None
        and attention.bias_k is None
        and attention.bias_v is None
        and not attention.add_zero_attn
        and isinstance(getattr(head, "probe", None), torch.Tensor)
        and isinstance(getattr(head, "layernorm", None), nn.LayerNorm)
        and isinstance(getattr(head, "mlp", None), nn.Module)
    )


class MapPooling:
    """A MAP head's parameters folded once, applied in two steps.

    :meth:`mix` reduces tokens [B, T, E] to attention-weighted averages [B, H, E] (the only
    step whose cost grows with T); :meth:`project` turns those into pooled outputs [B, E].
    Reading out many layers mixes each layer's tokens as the block produces them and projects
    all of them at once, so no [L, B, T, E] stack is ever built.
    """

    def __init__(self, head: nn.Module) -> None:
        attention: nn.MultiheadAttention = head.attention
        width, heads = attention.embed_dim, attention.num_heads
        dim = width // heads
        w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
        if attention.in_proj_bias is not None:
            b_q, _, b_v = attention.in_proj_bias.chunk(3)
        else:
            b_q = b_v = torch.zeros(width, device=w_q.device, dtype=w_q.dtype)
        # The key bias adds the same amount to every token's score: it cancels in the softmax.
        query = (head.probe.reshape(1, width) @ w_q.T + b_q).view(heads, dim) / math.sqrt(dim)
        self.fold = torch.einsum("hd,hde->eh", query, w_k.view(heads, dim, width))  # [E, H]
        self.value_weight = w_v.view(heads, dim, width)
        self.value_bias = b_v.view(heads, dim)
        self.head = head
        self.width = width

    def mix(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """[B, T, E] -> the per-head attention-weighted token averages [B, H, E] (written
        into ``out`` when given: no autograd then).

        ``mask`` [B, T] (bool or 0/1; true = a real token) leaves padded tokens out of the
        softmax, as SigLIP2's head does with its additive mask of the dtype's lowest value:
        the scores of padded tokens are set to that value, so their weights are exactly 0
        (and a row without any real token averages all tokens uniformly, as the module does).
        """
        batch, count, width = tokens.shape
        # One [H, E] x [E, B * T] product scores all tokens: cheaper than a product per image.
        scores = torch.mm(self.fold.T, tokens.reshape(-1, width).T).view(-1, batch, count)
        if mask is not None:
            if mask.shape != tokens.shape[:2]:
                raise ValueError(
                    f"the patch mask has shape {tuple(mask.shape)}; expected "
                    f"{tuple(tokens.shape[:2])} (batch, tokens)"
                )
            padded = ~mask.to(device=scores.device, dtype=torch.bool)
            scores = scores.masked_fill(padded[None], torch.finfo(scores.dtype).min)
        return torch.bmm(scores.softmax(dim=-1).transpose(0, 1), tokens, out=out)  # [B, H, E]

    def project(self, mixed: torch.Tensor) -> torch.Tensor:
        """[B, H, E] from :meth:`mix` -> the head's output [B, E]."""
        values = torch.einsum("bhe,hde->bhd", mixed, self.value_weight) + self.value_bias
        pooled = self.head.attention.out_proj(values.reshape(-1, self.width))
        return pooled + self.head.mlp(self.head.layernorm(pooled))

    def __call__(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.project(self.mix(tokens, mask))


def fused_map_pool(
    head: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``head(hidden)`` (``head(hidden, mask)`` for SigLIP2's padded NaFlex batches, ``mask``
    [B, T] true on real tokens) for a MAP head: [B, T, E] -> [B, E]."""
    return MapPooling(head)(hidden, mask)
