"""Single-query attention pooling (SigLIP's MAP head) evaluated in its cheap, exact order.

The MAP head attends from one learned probe to T tokens. With one query, the key projection
folds into a [width, heads] matrix (scores = X @ U) and the value projection can be applied
after the attention-weighted average of the tokens (the weights sum to 1), so pooling costs
O(T * width * heads) instead of O(T * width^2). The result is the head's own function computed
with the head's own parameters - equal to calling the module up to float rounding (tested) -
and it makes reading out many layers nearly free next to the backbone.

Two heads have this form: transformers' SigLIP/SigLIP2 head (:class:`MapPooling`, built on
``nn.MultiheadAttention``) and timm's ``AttentionPoolLatent`` with one latent query
(:class:`LatentPooling`; timm, open_clip and Janus towers). Their folds and token mixing are
the same code; only the parameter layout and the output block differ.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "LatentPooling",
    "MapPooling",
    "SingleQueryPooling",
    "fused_latent_pool",
    "fused_map_pool",
    "supports_fused_latent_pool",
    "supports_fused_map_pool",
]


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


def supports_fused_latent_pool(pool: nn.Module | None) -> bool:
    """True for timm's ``AttentionPoolLatent`` (its own forward) with one latent query, no
    q/k norm and a single-token output (``pool_type`` token or avg): the heads that fold.
    More latents, q/k norms or other pools keep the module call."""
    try:
        from timm.layers import AttentionPoolLatent
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    return (
        isinstance(pool, AttentionPoolLatent)
        and type(pool).forward is AttentionPoolLatent.forward
        and getattr(pool, "latent_len", None) == 1
        and isinstance(pool.q_norm, nn.Identity)
        and isinstance(pool.k_norm, nn.Identity)
        and isinstance(pool.kv, nn.Linear)
        and getattr(pool, "pool", None) in ("token", "avg")
    )


class SingleQueryPooling:
    """A single-query attention head folded once, applied in two steps.

    :meth:`mix` reduces tokens [B, T, E] to attention-weighted averages [B, H, E] (the only
    step whose cost grows with T); :meth:`project` turns those into pooled outputs [B, D].
    Reading out many layers mixes each layer's tokens as the block produces them and projects
    all of them at once, so no [L, B, T, E] stack is ever built.

    Subclasses set :attr:`fold` [E, H] (the scaled query folded into the key projection; the
    key bias adds the same amount to every score and cancels in the softmax),
    :attr:`value_weight` [H, d, E], :attr:`value_bias` [H, d], :attr:`heads`, :attr:`width`,
    and implement :meth:`_output` (the block after the attention: [B, H * d] -> [B, D]).
    """

    fold: torch.Tensor
    value_weight: torch.Tensor
    value_bias: torch.Tensor
    heads: int
    width: int

    def _fold_query(self, query: torch.Tensor, key_weight: torch.Tensor) -> None:
        # query [H, d] already scaled by 1/sqrt(d); key_weight [H * d, E]
        heads, dim = query.shape
        self.fold = torch.einsum("hd,hde->eh", query, key_weight.view(heads, dim, -1))  # [E, H]
        self.heads = heads

    def _tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """What the head attends over (identity here; timm's head may add a position table)."""
        return tokens

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
        tokens = self._tokens(tokens)
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
        """[B, H, E] from :meth:`mix` -> the head's output [B, D]."""
        values = torch.einsum("bhe,hde->bhd", mixed, self.value_weight) + self.value_bias
        return self._output(values.reshape(len(mixed), -1))

    def project_in_chunks(self, mixed: torch.Tensor, rows: int) -> torch.Tensor:
        """:meth:`project` over chunks of at most ``rows`` rows, joined.

        Chunks of at most B * T rows keep the head's temporaries no larger than a block's own,
        so they reuse memory the blocks just freed; larger ones would be fresh pages, and first
        writes to fresh pages (page faults) cost more than the head's arithmetic on a CPU.
        """
        if len(mixed) <= rows:
            return self.project(mixed)
        return torch.cat([self.project(part) for part in mixed.split(rows)])

    def _output(self, values: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.project(self.mix(tokens, mask))


class MapPooling(SingleQueryPooling):
    """transformers' SigLIP/SigLIP2 head (``probe``, ``attention``, ``layernorm``, ``mlp``)
    folded: ``out_proj`` then ``x + mlp(layernorm(x))`` after the attention."""

    def __init__(self, head: nn.Module) -> None:
        attention: nn.MultiheadAttention = head.attention
        width, heads = attention.embed_dim, attention.num_heads
        dim = width // heads
        w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
        if attention.in_proj_bias is not None:
            b_q, _, b_v = attention.in_proj_bias.chunk(3)
        else:
            b_q = b_v = torch.zeros(width, device=w_q.device, dtype=w_q.dtype)
        query = (head.probe.reshape(1, width) @ w_q.T + b_q).view(heads, dim) / math.sqrt(dim)
        self._fold_query(query, w_k)
        self.value_weight = w_v.view(heads, dim, width)
        self.value_bias = b_v.view(heads, dim)
        self.head = head
        self.width = width

    def _output(self, values: torch.Tensor) -> torch.Tensor:
        pooled = self.head.attention.out_proj(values)
        return pooled + self.head.mlp(self.head.layernorm(pooled))


class LatentPooling(SingleQueryPooling):
    """timm's ``AttentionPoolLatent`` with one latent query folded (see
    :func:`supports_fused_latent_pool`): its optional position table is added to the tokens,
    and ``proj``, then ``x + mlp(norm(x))`` (when the head has an MLP) follow the attention."""

    def __init__(self, pool: nn.Module) -> None:
        heads, dim = pool.num_heads, pool.head_dim
        width = heads * dim
        query = pool.q(pool.latent).reshape(heads, dim) * pool.scale  # q may be an Identity
        w_k, w_v = pool.kv.weight.chunk(2)
        if pool.kv.bias is not None:
            b_v = pool.kv.bias.chunk(2)[1]
        else:
            b_v = torch.zeros(width, device=w_v.device, dtype=w_v.dtype)
        self._fold_query(query, w_k)
        self.value_weight = w_v.view(heads, dim, -1)
        self.value_bias = b_v.view(heads, dim)
        self.pool = pool
        self.width = width

    def _tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        table = self.pool.pos_embed
        return tokens if table is None else tokens + table.unsqueeze(0).to(tokens.dtype)

    def _output(self, values: torch.Tensor) -> torch.Tensor:
        pooled = self.pool.proj_drop(self.pool.proj(values))
        if self.pool.mlp is not None:
            pooled = pooled + self.pool.mlp(self.pool.norm(pooled))
        return pooled


def fused_map_pool(
    head: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``head(hidden)`` (``head(hidden, mask)`` for SigLIP2's padded NaFlex batches, ``mask``
    [B, T] true on real tokens) for a MAP head: [B, T, E] -> [B, E]."""
    return MapPooling(head)(hidden, mask)


def fused_latent_pool(pool: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``pool(hidden)`` for a timm ``AttentionPoolLatent`` that folds: [B, T, E] -> [B, D]."""
    return LatentPooling(pool)(hidden)
