"""The fused single-query MAP pooling equals calling transformers' own pooling head."""

from __future__ import annotations

import pytest
import torch
from transformers import Siglip2VisionConfig, SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead
from transformers.models.siglip2.modeling_siglip2 import Siglip2MultiheadAttentionPoolingHead

from siglip_dola.readout.attention_pool import (
    MapPooling,
    fused_latent_pool,
    fused_map_pool,
    supports_fused_latent_pool,
    supports_fused_map_pool,
)


def _head(cls, config, dtype):
    head = cls(config).eval().to(dtype)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.5)  # O(1)-and-larger outputs, so that tolerances mean something
    return head


@pytest.mark.parametrize("width,heads,tokens", [(64, 4, 16), (96, 6, 37), (32, 1, 5)])
def test_fused_equals_siglip_head(width, heads, tokens):
    torch.manual_seed(width + tokens)
    config = SiglipVisionConfig(
        hidden_size=width, num_attention_heads=heads, intermediate_size=2 * width
    )
    with torch.no_grad():
        head = _head(SiglipMultiheadAttentionPoolingHead, config, torch.float64)
        assert supports_fused_map_pool(head)
        hidden = torch.randn(7, tokens, width, dtype=torch.float64) * 2
        # exact algebra: equal to float64 rounding
        torch.testing.assert_close(
            fused_map_pool(head, hidden), head(hidden), atol=1e-10, rtol=1e-10
        )
        head, hidden = head.float(), hidden.float()
        expected = head(hidden)
        scale = expected.abs().max().item()
        torch.testing.assert_close(
            fused_map_pool(head, hidden), expected, atol=1e-5 * scale, rtol=0
        )


def test_fused_equals_siglip2_head_without_padding():
    torch.manual_seed(0)
    config = Siglip2VisionConfig(hidden_size=48, num_attention_heads=4, intermediate_size=96)
    with torch.no_grad():
        head = _head(Siglip2MultiheadAttentionPoolingHead, config, torch.float64)
        hidden = torch.randn(3, 10, 48, dtype=torch.float64)
        torch.testing.assert_close(
            fused_map_pool(head, hidden), head(hidden), atol=1e-10, rtol=1e-10
        )


def test_other_heads_are_not_fused():
    assert not supports_fused_map_pool(torch.nn.Linear(4, 4))


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_fused_masked_equals_siglip2_head_with_padding(implementation):
    torch.manual_seed(1)
    config = Siglip2VisionConfig(hidden_size=48, num_attention_heads=4, intermediate_size=96)
    config._attn_implementation = implementation
    with torch.no_grad():
        head = _head(Siglip2MultiheadAttentionPoolingHead, config, torch.float64)
        hidden = torch.randn(5, 12, 48, dtype=torch.float64) * 2
        # NaFlex patch masks: 1 = real patch, 0 = padding at the end of the row
        mask = torch.ones(5, 12, dtype=torch.int32)
        mask[0, 7:] = 0
        mask[2, 1:] = 0
        mask[3, 11:] = 0  # row 1 and row 4 are unpadded
        expected = head(hidden, mask)
        # The padding matters: without the mask every padded row would come out otherwise.
        unmasked = fused_map_pool(head, hidden)
        assert (unmasked - expected)[[0, 2, 3]].abs().amax(dim=-1).min() > 1e-3
        torch.testing.assert_close(
            fused_map_pool(head, hidden, mask), expected, atol=1e-10, rtol=1e-10
        )
        torch.testing.assert_close(
            fused_map_pool(head, hidden, mask.bool()), expected, atol=1e-10, rtol=1e-10
        )
        # Padded tokens get no weight at all: their values do not matter.
        garbage = hidden.masked_fill(~mask.bool()[..., None], 1e6)
        torch.testing.assert_close(
            fused_map_pool(head, garbage, mask), expected, atol=1e-10, rtol=1e-10
        )


def test_mask_of_the_wrong_shape_is_refused():
    config = Siglip2VisionConfig(hidden_size=16, num_attention_heads=2, intermediate_size=32)
    head = _head(Siglip2MultiheadAttentionPoolingHead, config, torch.float64)
    with pytest.raises(ValueError, match="patch mask has shape"):
        fused_map_pool(head, torch.randn(2, 5, 16, dtype=torch.float64), torch.ones(2, 4))


def test_mix_into_a_buffer_equals_a_fresh_result():
    torch.manual_seed(3)
    config = SiglipVisionConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64)
    head = _head(SiglipMultiheadAttentionPoolingHead, config, torch.float32)
    pooling = MapPooling(head)
    layers = [torch.randn(5, 9, 32) for _ in range(3)]
    buffer = torch.full((3, 5, 4, 32), float("nan"))
    with torch.no_grad():
        for i, tokens in enumerate(layers):
            returned = pooling.mix(tokens, out=buffer[i])
            assert returned.data_ptr() == buffer[i].data_ptr()
        for i, tokens in enumerate(layers):
            torch.testing.assert_close(buffer[i], pooling.mix(tokens), atol=0, rtol=0)
            torch.testing.assert_close(
                pooling.project(buffer[i]), head(tokens), atol=1e-5, rtol=1e-5
            )


# ----------------------------------------------------------------------------- timm's head


def _latent_pool(dtype, **kwargs):
    from timm.layers import AttentionPoolLatent

    pool = AttentionPoolLatent(**{"in_features": 48, "num_heads": 4, **kwargs}).eval()
    with torch.no_grad():
        for p in pool.parameters():
            p.normal_(0, 0.5)
    return pool.to(dtype)


LATENT_CASES = [
    {},
    {"qkv_bias": False},
    {"pos_embed": "abs", "feat_size": 9},
    {"out_features": 0},  # pre-logits mode: no projection, norm or MLP
    {"norm_layer": torch.nn.LayerNorm, "mlp_ratio": 2.0},
    {"num_heads": 1},
]


@pytest.mark.parametrize("kwargs", LATENT_CASES, ids=lambda k: ",".join(k) or "default")
@pytest.mark.parametrize("fused_attn", [True, False], ids=["sdpa", "eager"])
def test_fused_equals_timm_latent_pool(kwargs, fused_attn):
    torch.manual_seed(len(kwargs))
    with torch.no_grad():
        pool = _latent_pool(torch.float64, **kwargs)
        pool.fused_attn = fused_attn
        assert supports_fused_latent_pool(pool)
        hidden = torch.randn(6, 9, 48, dtype=torch.float64) * 2
        torch.testing.assert_close(
            fused_latent_pool(pool, hidden), pool(hidden), atol=1e-10, rtol=1e-10
        )
        pool, hidden = pool.float(), hidden.float()
        expected = pool(hidden)
        scale = expected.abs().max().item()
        torch.testing.assert_close(
            fused_latent_pool(pool, hidden), expected, atol=1e-5 * scale, rtol=0
        )


def test_timm_heads_that_do_not_fold():
    assert not supports_fused_latent_pool(_latent_pool(torch.float32, latent_len=2))
    assert not supports_fused_latent_pool(_latent_pool(torch.float32, qk_norm=True))
    assert not supports_fused_latent_pool(_latent_pool(torch.float32, pool_type=""))
    assert not supports_fused_latent_pool(None)
    assert not supports_fused_latent_pool(torch.nn.Linear(4, 4))
