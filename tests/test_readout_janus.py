"""Janus / Janus-Pro checkpoint folders: sharded files, index json, only the vision tower."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from _tiny_janus import build_tiny_janus, write_deepseek_layout
from _tiny_models import (
    DEPTH,
    HEADS,
    IMAGE,
    capture_outputs,
    count_calls,
    random_images,
    save_janus_checkpoint,
    tiny_timm_vit,
)
from PIL import Image
from safetensors.torch import save_file

from siglip_dola.checkpoints import ATTN_POOL_FILE, JANUS_VISION_PREFIX
from siglip_dola.generate.convert import convert_checkpoint
from siglip_dola.models import detect_scheme, load_model
from siglip_dola.readout.janus import (
    JanusImageTransform,
    read_janus_vision_weights,
    read_pooling_head,
)

ATOL = 1e-5
ARCH = "vit_large_patch16_siglip_384"  # the shape Janus uses; made tiny by the tensors
KWARGS = {"num_heads": HEADS}  # the one size the tensors cannot tell


@pytest.fixture(scope="module")
def tower():
    return tiny_timm_vit(ARCH)


@pytest.fixture(scope="module", params=["safetensors", "bin"])
def folder(request, tower, tmp_path_factory):
    return save_janus_checkpoint(
        tmp_path_factory.mktemp(f"janus_{request.param}"), tower, request.param
    )


@pytest.fixture(scope="module")
def loaded(folder):
    return load_model(f"janus:{folder}", model_kwargs=KWARGS)


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))


def test_final_layer_equals_tower_embedding(tower, loaded, pixels):
    with torch.no_grad():
        own = tower(pixels)
    result = loaded.vision.forward_layers({"pixel_values": pixels}, [2])
    torch.testing.assert_close(result.final, own, atol=ATOL, rtol=0)
    assert loaded.vision.depth == DEPTH
    assert loaded.text is None


def test_every_layer_equals_head_of_norm_of_block_output(tower, loaded, pixels):
    with capture_outputs(list(tower.blocks)) as hidden, torch.no_grad():
        tower(pixels)
        expected = [tower.forward_head(tower.norm(h), pre_logits=True) for h in hidden]
    result = loaded.vision.forward_layers({"pixel_values": pixels}, range(1, DEPTH + 1))
    for layer, want in enumerate(expected, start=1):
        torch.testing.assert_close(result.layer(layer), want, atol=ATOL, rtol=0)
    assert (result.layer(1) - result.layer(DEPTH)).abs().max() > 1e-2


def test_each_block_runs_once_per_batch(loaded, pixels):
    model = loaded.vision.model
    assert loaded.vision.fused_head  # built as a timm ViT: the MAP head's fused form
    with count_calls([*model.blocks, model.attn_pool, model.attn_pool.mlp]) as counts:
        loaded.vision.forward_layers({"pixel_values": pixels}, [1, 3])
    assert counts == [1] * DEPTH + [0, 1]


def test_fused_readout_equals_module_readout_in_float64(folder, pixels):
    vision = load_model(f"janus:{folder}", model_kwargs=KWARGS, dtype=torch.float64).vision
    every = range(1, DEPTH + 1)
    got = vision.forward_layers({"pixel_values": pixels.double()}, every)
    vision.fused_head = False
    want = vision.forward_layers({"pixel_values": pixels.double()}, every)
    torch.testing.assert_close(got.embeddings, want.embeddings, atol=1e-10, rtol=1e-10)


def test_only_vision_tensors_are_read(folder):
    weights = read_janus_vision_weights(folder)
    assert weights and all(not k.startswith(("language_model", "aligner", "gen_")) for k in weights)
    assert "attn_pool.latent" in weights and "blocks.0.attn.qkv.weight" in weights


def test_shards_without_vision_keys_are_never_opened(tower, tmp_path, pixels):
    folder = save_janus_checkpoint(tmp_path, tower)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    # A language-model shard that cannot even be parsed: opening it would fail.
    (folder / "model-00003-of-00003.safetensors").write_bytes(b"not a checkpoint")
    index["weight_map"]["language_model.model.layers.0.mlp.up_proj.weight"] = (
        "model-00003-of-00003.safetensors"
    )
    index_path.write_text(json.dumps(index))
    loaded = load_model(f"janus:{folder}", model_kwargs=KWARGS)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.vision.image_embedding({"pixel_values": pixels}),
            tower(pixels),
            atol=ATOL,
            rtol=0,
        )


def _break_shards_without_head(folder):
    """Make every shard that holds no pooling-head key unreadable; returns their names."""
    index_name = next(folder.glob("*.index.json"))
    weight_map = json.loads(index_name.read_text())["weight_map"]
    head_shards = {
        f for k, f in weight_map.items() if k.startswith(JANUS_VISION_PREFIX + "attn_pool.")
    }
    broken = sorted(set(weight_map.values()) - head_shards)
    assert head_shards and broken
    for name in broken:
        (folder / name).write_bytes(b"not a checkpoint")
    return broken


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_reading_the_head_only_opens_the_shards_holding_it(tower, tmp_path, fmt):
    folder = save_janus_checkpoint(tmp_path / "janus", tower, fmt)
    _break_shards_without_head(folder)
    own = {k: v for k, v in tower.state_dict().items() if k.startswith("attn_pool.")}
    for head in (read_janus_vision_weights(folder, prefix="attn_pool."), read_pooling_head(folder)):
        assert sorted(head) == sorted(own)
        for key, value in own.items():
            torch.testing.assert_close(head[key], value, atol=0, rtol=0)


def test_a_prefix_without_tensors_is_named(folder):
    with pytest.raises(
        ValueError, match=r"holds no vision_model\.vision_tower\.nothing\.\* tensors"
    ):
        read_janus_vision_weights(folder, prefix="nothing.")


def _set_vision_params(folder, **params):
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"] = {"params": params}
    (folder / "config.json").write_text(json.dumps(config))


def test_heads_come_from_config_json(tower, tmp_path, pixels):
    folder = save_janus_checkpoint(tmp_path / "janus", tower)
    with pytest.raises(ValueError, match=r"cannot tell the attention heads.*num_heads"):
        load_model(f"janus:{folder}")  # width 32 names no head count
    _set_vision_params(folder, heads=HEADS)
    loaded = load_model(f"janus:{folder}")
    assert loaded.vision.model.blocks[0].attn.num_heads == HEADS
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.vision.image_embedding({"pixel_values": pixels}),
            tower(pixels),
            atol=ATOL,
            rtol=0,
        )
    _set_vision_params(folder, heads=4)  # the config is what counts, not timm's 16
    assert load_model(f"janus:{folder}").vision.model.blocks[0].attn.num_heads == 4
    _set_vision_params(folder, model_name="siglip_large_patch16_384")
    assert load_model(f"janus:{folder}").vision.model.blocks[0].attn.num_heads == 16


# ----------------------------------------------------------------------------- HF format


@pytest.fixture(scope="module")
def deepseek_and_converted(tmp_path_factory):
    """The same tiny Janus in DeepSeek's layout and converted by our janus-convert."""
    model, tokenizer = build_tiny_janus(seed=2, vision_layers=3)
    root = tmp_path_factory.mktemp("janus_formats")
    deepseek = write_deepseek_layout(model, tokenizer, root / "ds")
    return deepseek, convert_checkpoint(deepseek, root / "hf")


def test_converted_folder_reads_out_like_the_deepseek_folder(deepseek_and_converted):
    deepseek, converted = deepseek_and_converted
    assert detect_scheme(converted) == "janus"
    original, hf = load_model(f"janus:{deepseek}"), load_model(f"janus:{converted}")
    assert original.vision.depth == hf.vision.depth == 3
    assert hf.vision.model.blocks[0].attn.num_heads == 2  # from the HF config.json
    images = random_images(3)
    batch = original.vision.preprocess(images)
    torch.testing.assert_close(hf.vision.preprocess(images)["pixel_values"], batch["pixel_values"])
    want = original.vision.forward_layers(batch, [1, 2])
    got = hf.vision.forward_layers(batch, [1, 2])
    assert want.layers == got.layers == (1, 2, 3)
    torch.testing.assert_close(got.embeddings, want.embeddings, atol=1e-6, rtol=0)
    assert (want.layer(1) - want.layer(3)).abs().max() > 1e-3  # the layers differ


def test_hf_folder_without_the_head_file_names_head_from(deepseek_and_converted, tmp_path):
    deepseek, converted = deepseek_and_converted
    headless = tmp_path / "hf"
    shutil.copytree(converted, headless)
    (headless / ATTN_POOL_FILE).unlink()
    with pytest.raises(
        ValueError, match=rf"no SigLIP pooling head.*{ATTN_POOL_FILE}.*head_from.*--head-from"
    ):
        load_model(f"janus:{headless}")
    # --head-from a converted folder (its head file) or the DeepSeek original
    pixels = load_model(f"janus:{deepseek}").vision.preprocess(random_images(2))
    want = load_model(f"janus:{deepseek}").vision.forward_layers(pixels, [1]).embeddings
    for source in (converted, deepseek):
        got = load_model(f"janus:{headless}", head_from=source).vision.forward_layers(pixels, [1])
        torch.testing.assert_close(got.embeddings, want, atol=1e-6, rtol=0)


def test_missing_keys_are_named(tower, tmp_path):
    folder = save_janus_checkpoint(tmp_path, tower, drop=["blocks.1.mlp.fc2"])
    with pytest.raises(
        ValueError, match=r"missing keys \[blocks\.1\.mlp\.fc2\.bias, blocks\.1\.mlp\.fc2\.weight\]"
    ):
        load_model(f"janus:{folder}", model_kwargs=KWARGS)


def test_missing_pooling_head_says_how_to_supply_one(tower, tmp_path):
    folder = save_janus_checkpoint(tmp_path, tower, drop=["attn_pool."])
    with pytest.raises(
        ValueError, match=r"no SigLIP pooling head.*attn_pool.*head_from.*--head-from"
    ):
        load_model(f"janus:{folder}", model_kwargs=KWARGS)


@pytest.mark.parametrize("prefix", ["", "visual.trunk."], ids=["timm", "open_clip"])
def test_head_from_a_siglip_checkpoint(tower, tmp_path, pixels, prefix):
    folder = save_janus_checkpoint(tmp_path / "janus", tower, drop=["attn_pool."])
    head_file = tmp_path / "siglip.safetensors"
    save_file({prefix + k: v for k, v in tower.state_dict().items()}, str(head_file))
    loaded = load_model(f"janus:{folder}", head_from=head_file, model_kwargs=KWARGS)
    with torch.no_grad():
        own = tower(pixels)
    torch.testing.assert_close(
        loaded.vision.forward_layers({"pixel_values": pixels}, [1]).final, own, atol=ATOL, rtol=0
    )


def test_head_from_without_a_head(tower, tmp_path):
    folder = save_janus_checkpoint(tmp_path / "janus", tower, drop=["attn_pool."])
    headless = tmp_path / "headless.safetensors"
    save_file({"norm.weight": torch.ones(3)}, str(headless))
    with pytest.raises(ValueError, match="holds no SigLIP pooling head"):
        load_model(f"janus:{folder}", head_from=headless, model_kwargs=KWARGS)


def test_folder_without_vision_tower(tmp_path):
    save_file(
        {"language_model.lm_head.weight": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors")
    )
    with pytest.raises(ValueError, match="no vision_model.vision_tower"):
        load_model(f"janus:{tmp_path}")


def test_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_model(f"janus:{tmp_path / 'nowhere'}")


def test_detected_as_janus(folder):
    loaded = load_model(str(folder), model_kwargs=KWARGS)
    assert loaded.vision.name.startswith("janus:")


def test_janus_preprocessing_pads_to_square_with_the_mean_colour(loaded):
    wide = Image.fromarray(np.full((10, 40, 3), 250, dtype=np.uint8))
    pixels = loaded.vision.preprocess([wide, *random_images(2)])["pixel_values"]
    assert pixels.shape == (3, 3, IMAGE, IMAGE)
    background = (127 / 255 - 0.5) / 0.5
    torch.testing.assert_close(pixels[0, :, 0, :], torch.full((3, IMAGE), background))
    assert pixels[0, :, IMAGE // 2, IMAGE // 2].min() > 0.9  # the image itself, centred


def test_transform_reads_preprocessor_config(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_size": 48, "image_mean": [0.2, 0.4, 0.6], "image_std": [0.5, 0.5, 0.5]})
    )
    transform = JanusImageTransform.from_folder(tmp_path)
    assert transform.image_size == 48 and transform.background == (51, 102, 153)
    assert transform(random_images(1)[0]).shape == (3, 48, 48)
