"""timm ViT readout (MAP head, class token) and Janus-style method-pair objects."""

from __future__ import annotations

import pytest
import timm
import torch
from _tiny_models import (
    DEPTH,
    IMAGE,
    JanusStyleViT,
    capture_outputs,
    count_calls,
    random_images,
    tiny_timm_kwargs,
    tiny_timm_vit,
)
from safetensors.torch import save_file

from siglip_dola.models import load_model
from siglip_dola.readout.timm_vit import TimmViTReadout

ATOL = 1e-5
ARCH = "vit_base_patch16_siglip_224"


@pytest.fixture(scope="module")
def vit():
    return tiny_timm_vit(ARCH)


@pytest.fixture(scope="module")
def weights_file(vit, tmp_path_factory):
    path = tmp_path_factory.mktemp("timm") / "tiny.safetensors"
    save_file(vit.state_dict(), str(path))
    return path


@pytest.fixture(scope="module")
def loaded(weights_file):
    return load_model(f"timm:{ARCH}:{weights_file}", model_kwargs=tiny_timm_kwargs())


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(0))


def _reference_layers(model, pixels):
    """head(norm(h_l)) of every block, from hooks on the library's own forward."""
    with capture_outputs(list(model.blocks)) as hidden, torch.no_grad():
        model(pixels)
        return [model.forward_head(model.norm(h), pre_logits=True) for h in hidden]


def test_final_layer_equals_model_embedding(vit, loaded, pixels):
    with torch.no_grad():
        own = vit(pixels)  # num_classes=0: the pre-logits MAP embedding
    result = loaded.vision.forward_layers({"pixel_values": pixels}, [1])
    torch.testing.assert_close(result.final, own, atol=ATOL, rtol=0)
    torch.testing.assert_close(
        loaded.vision.image_embedding({"pixel_values": pixels}), own, atol=ATOL, rtol=0
    )
    assert loaded.vision.embed_dim == own.shape[-1]
    assert loaded.text is None and loaded.logit_scale is None


def test_every_layer_equals_head_of_norm_of_block_output(vit, loaded, pixels):
    expected = _reference_layers(vit, pixels)
    result = loaded.vision.forward_layers({"pixel_values": pixels}, range(1, DEPTH + 1))
    for layer, want in enumerate(expected, start=1):
        torch.testing.assert_close(result.layer(layer), want, atol=ATOL, rtol=0)
    assert (result.layer(1) - result.layer(2)).abs().max() > 1e-2


@pytest.mark.parametrize("layers", [(), (2,), (1, 2, 3)])
def test_each_block_runs_once_per_batch(loaded, pixels, layers):
    model = loaded.vision.model
    assert loaded.vision.fused_head
    # The fused head uses attn_pool's parameters without calling the module; its MLP runs once
    # for all layers.
    watched = [*model.blocks, model.patch_embed, model.attn_pool, model.attn_pool.mlp]
    with count_calls(watched) as counts:
        loaded.vision.forward_layers({"pixel_values": pixels}, layers)
    assert counts == [1] * (DEPTH + 1) + [0, 1]


def test_module_path_runs_each_block_once(vit, pixels):
    readout = TimmViTReadout(vit, fused_head=False)
    with count_calls([*vit.blocks, vit.attn_pool, vit.patch_embed]) as counts:
        readout.forward_layers({"pixel_values": pixels}, (1, 3))
    assert counts == [1] * (DEPTH + 2)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"class_token": True},  # the head skips the prefix token
        {"reg_tokens": 2, "no_embed_class": True},
        {"qkv_bias": False},
    ],
    ids=["siglip", "class-token", "registers", "no-bias"],
)
def test_fused_readout_equals_module_readout(overrides, pixels):
    vit = tiny_timm_vit(ARCH, **overrides)
    fused, module = TimmViTReadout(vit), TimmViTReadout(vit, fused_head=False)
    assert fused.fused_head and not module.fused_head
    # exact algebra: equal to float64 rounding
    vit.double()
    every = range(1, DEPTH + 1)
    want = module.forward_layers({"pixel_values": pixels.double()}, every)
    got = fused.forward_layers({"pixel_values": pixels.double()}, every)
    assert got.layers == want.layers
    torch.testing.assert_close(got.embeddings, want.embeddings, atol=1e-10, rtol=1e-10)
    # float32: within the adapters' tolerance, scaled to the embeddings' size
    vit.float()
    expected = _reference_layers(vit, pixels)
    got = fused.forward_layers({"pixel_values": pixels}, every)
    scale = max(e.abs().max().item() for e in expected)
    for layer, want in enumerate(expected, start=1):
        torch.testing.assert_close(got.layer(layer), want, atol=ATOL * max(scale, 1), rtol=0)
    assert (got.layer(1) - got.layer(DEPTH)).abs().max() > 1e-2


def test_heads_that_do_not_fold_take_the_module(pixels):
    for overrides in ({"global_pool": "token", "class_token": True}, {"global_pool": "avg"}):
        vit = tiny_timm_vit(ARCH, **overrides)
        readout = TimmViTReadout(vit)
        assert not readout.fused_head
        torch.testing.assert_close(
            readout.forward_layers({"pixel_values": pixels}, [2]).final,
            vit(pixels).detach(),
            atol=ATOL,
            rtol=0,
        )
    vit = tiny_timm_vit(ARCH)
    vit.attn_pool.latent_len = 2  # more than one latent query: no single-query fold
    assert not TimmViTReadout(vit).fused_head
    assert not TimmViTReadout(JanusStyleViT(tiny_timm_vit(ARCH))).fused_head


def test_timm_folder_from_save_for_hf(vit, tmp_path, pixels):
    timm.models.save_for_hf(
        vit, str(tmp_path), model_args=tiny_timm_kwargs(), safe_serialization=True
    )
    for spec in (f"timm:{tmp_path}", str(tmp_path)):  # explicit scheme, and detected folder
        loaded = load_model(spec)
        torch.testing.assert_close(
            loaded.vision.forward_layers({"pixel_values": pixels}, [2]).final,
            vit(pixels).detach(),
            atol=ATOL,
            rtol=0,
        )


def test_weights_file_beside_timm_config(vit, tmp_path, pixels):
    timm.models.save_for_hf(
        vit, str(tmp_path), model_args=tiny_timm_kwargs(), safe_serialization=True
    )
    loaded = load_model(f"timm:{tmp_path / 'model.safetensors'}")
    torch.testing.assert_close(
        loaded.vision.image_embedding({"pixel_values": pixels}),
        vit(pixels).detach(),
        atol=ATOL,
        rtol=0,
    )


def test_preprocess_gives_model_sized_pixels(loaded):
    batch = loaded.vision.preprocess(random_images(4))
    assert batch["pixel_values"].shape == (4, 3, IMAGE, IMAGE)
    assert batch["pixel_values"].dtype == torch.float32


def test_class_token_vit(pixels):
    """Prefix tokens are rejoined before the head (token pooling reads the class token)."""
    vit = tiny_timm_vit(
        "vit_tiny_patch16_224", class_token=True, global_pool="token", num_classes=5
    )
    readout = TimmViTReadout(vit)
    result = readout.forward_layers({"pixel_values": pixels}, [1, 3])
    with torch.no_grad():
        own = vit.forward_head(vit.forward_features(pixels), pre_logits=True)
    torch.testing.assert_close(result.final, own, atol=ATOL, rtol=0)
    expected = _reference_layers(vit, pixels)
    torch.testing.assert_close(result.layer(1), expected[0], atol=ATOL, rtol=0)
    assert readout.embed_dim == vit.embed_dim  # pre-logits, not the 5 classes


def test_janus_style_method_pair(vit, pixels):
    janus_like = JanusStyleViT(vit)
    readout = TimmViTReadout(janus_like, name="janus-like")
    result = readout.forward_layers({"pixel_values": pixels}, [1, 2, 3])
    expected = _reference_layers(vit, pixels)
    for layer in (1, 2, 3, DEPTH):
        torch.testing.assert_close(result.layer(layer), expected[layer - 1], atol=ATOL, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(
            readout.image_embedding({"pixel_values": pixels}), janus_like(pixels)
        )
    with count_calls(list(vit.blocks)) as counts:
        readout.forward_layers({"pixel_values": pixels}, [1, 2])
    assert counts == [1] * DEPTH


def test_dropped_layers_are_detected(vit, pixels):
    class Dropping(JanusStyleViT):
        def get_intermediate_layers(self, x, n=1, **kwargs):
            return super().get_intermediate_layers(x, n=list(n)[:-1], **kwargs)

    with pytest.raises(RuntimeError, match="returned 1 outputs for 2 requested layers"):
        TimmViTReadout(Dropping(vit)).forward_layers({"pixel_values": pixels}, [1])


def test_object_without_method_pair_rejected():
    with pytest.raises(ValueError, match="get_intermediate_layers"):
        TimmViTReadout(torch.nn.Linear(2, 2))


def test_missing_keys_are_named(vit, tmp_path):
    state = {k: v for k, v in vit.state_dict().items() if not k.startswith("blocks.2.mlp")}
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \[blocks\.2\.mlp\.fc1\.bias"):
        load_model(
            f"timm:{ARCH}:{tmp_path / 'partial.safetensors'}", model_kwargs=tiny_timm_kwargs()
        )


def test_missing_weights_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_model(f"timm:{ARCH}:{tmp_path / 'nope.safetensors'}")


def test_unknown_architecture(weights_file):
    with pytest.raises(ValueError, match="no_such_vit"):
        load_model(f"timm:no_such_vit:{weights_file}")


def test_bare_weights_file_needs_architecture(weights_file):
    with pytest.raises(ValueError, match="name the architecture"):
        load_model(f"timm:{weights_file}")
