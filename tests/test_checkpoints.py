"""Checkpoint files and the Janus layout: safe loading, shards, folder formats, tower shape and
tensor names in both formats."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from _tiny_janus import build_tiny_janus, deepseek_state_dict
from _tiny_models import save_janus_checkpoint, tiny_timm_vit
from safetensors.torch import save_file

from siglip_dola.checkpoints import (
    HF_VISION_PREFIX,
    JANUS_VISION_PREFIX,
    checkpoint_shards,
    janus_format,
    load_state_dict_file,
    vision_name_to_hf,
    vision_tensors_from_hf,
    vision_tensors_to_hf,
    vision_tower_shape,
)


def test_the_module_stays_on_a_low_floor():
    """torch and safetensors only: no transformers / timm; from the package only ``io``
    (standard library only itself)."""
    import siglip_dola.checkpoints as module

    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert {name for name in imported if name.startswith("siglip_dola")} <= {"siglip_dola.io"}
    roots = {name.split(".")[0] for name in imported if not name.startswith("siglip_dola")}
    stdlib = {"__future__", "collections", "dataclasses", "json", "math", "pathlib", "pickle"}
    assert roots <= stdlib | {"re", "typing", "torch", "safetensors"}
    assert {"torch", "safetensors"} <= roots


# ----------------------------------------------------------------------------- weight files


class _Payload:
    """Not a tensor: unpickling it would need to run code."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": _Payload()}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_state_dict_file(path)


def test_plain_torch_checkpoints_load(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save({"state_dict": {"module.w": torch.ones(2)}}, path)
    assert list(load_state_dict_file(path)) == ["w"]


def test_checkpoint_shards_from_the_index(tmp_path):
    folder = save_janus_checkpoint(tmp_path / "janus", tiny_timm_vit())
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert checkpoint_shards(folder) == [folder / n for n in shards]
    assert checkpoint_shards(folder, lambda k: k.startswith("language_model.")) == [
        folder / shards[0]
    ]
    assert checkpoint_shards(folder, lambda k: k.startswith("no such key")) == []
    (folder / shards[1]).unlink()
    assert checkpoint_shards(folder, lambda k: k.startswith("language_model.")) == [
        folder / shards[0]
    ]
    with pytest.raises(ValueError, match=r"names shards that are not in .*00002-of-00002"):
        checkpoint_shards(folder)


def test_checkpoint_shards_prefers_safetensors_and_falls_back_to_one_file(tmp_path):
    with pytest.raises(ValueError, match="no weights in"):
        checkpoint_shards(tmp_path)
    save_file({"a": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    torch.save({"a": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    assert checkpoint_shards(tmp_path, lambda k: False) == [tmp_path / "model.safetensors"]
    (tmp_path / "pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": {"a": "pytorch_model.bin"}})
    )
    assert checkpoint_shards(tmp_path) == [tmp_path / "pytorch_model.bin"]
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model.safetensors"}})
    )
    assert checkpoint_shards(tmp_path) == [tmp_path / "model.safetensors"]
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weights": {}}))
    with pytest.raises(ValueError, match="has no 'weight_map'"):
        checkpoint_shards(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        checkpoint_shards(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- folder formats


def test_janus_format(tmp_path):
    deepseek = save_janus_checkpoint(tmp_path / "ds", tiny_timm_vit())
    assert janus_format(deepseek) == "deepseek"
    (deepseek / "config.json").unlink()
    assert janus_format(deepseek) == "deepseek"  # the index maps vision-tower keys
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "janus"}))
    assert janus_format(hf) == "hf"
    (hf / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert janus_format(hf) is None
    (hf / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON at line"):
        janus_format(hf)


# ----------------------------------------------------------------------------- the tower


@pytest.fixture(scope="module")
def both_layouts():
    """The tiny Janus tower under timm names (DeepSeek, spelled out independently in
    _tiny_janus) and under transformers' names (prefixes removed)."""
    model, _ = build_tiny_janus()
    deepseek = {
        k[len(JANUS_VISION_PREFIX) :]: v
        for k, v in deepseek_state_dict(model, attn_pool=False).items()
        if k.startswith(JANUS_VISION_PREFIX)
    }
    hf = {
        k[len(HF_VISION_PREFIX) :]: v
        for k, v in model.state_dict().items()
        if k.startswith(HF_VISION_PREFIX)
    }
    return deepseek, hf


def test_tower_names_map_both_ways(both_layouts):
    deepseek, hf = both_layouts
    to_hf = {}
    for name, tensor in deepseek.items():
        to_hf.update(vision_tensors_to_hf(name, tensor))
    assert sorted(to_hf) == sorted(hf)
    assert all(torch.equal(to_hf[k], hf[k]) for k in hf)
    back = vision_tensors_from_hf(hf)
    assert sorted(back) == sorted(deepseek)
    assert all(torch.equal(back[k], deepseek[k]) for k in deepseek)
    assert (
        vision_name_to_hf("blocks.3.attn.qkv.bias")
        == "encoder.layers.3.self_attn.{q,k,v}_proj.bias"
    )
    assert vision_name_to_hf("attn_pool.latent") is None


def test_tower_names_from_hf_errors(both_layouts):
    _, hf = both_layouts
    with pytest.raises(ValueError, match=r"\[embeddings\.mystery\] are not part of"):
        vision_tensors_from_hf({**hf, "embeddings.mystery": torch.zeros(1)})
    partial = {k: v for k, v in hf.items() if "k_proj" not in k}
    with pytest.raises(ValueError, match="lacks the k part of blocks.0.attn.qkv"):
        vision_tensors_from_hf(partial)


@pytest.mark.parametrize(
    ("config", "heads"),
    [
        ({"model_type": "multi_modality", "vision_config": {"params": {"heads": 4}}}, 4),
        (
            {
                "model_type": "multi_modality",
                "vision_config": {"params": {"model_name": "siglip_large_patch16_384"}},
            },
            16,
        ),
        ({"model_type": "janus", "vision_config": {"num_attention_heads": 8}}, 8),
        ({"model_type": "multi_modality"}, None),  # width 32: not a multiple of 64
        (None, None),
    ],
)
def test_tower_shape_takes_the_heads_from_the_config(config, heads):
    shapes = {
        "patch_embed.proj.weight": (32, 3, 8, 8),
        "pos_embed": (1, 16, 32),
        "blocks.0.mlp.fc1.weight": (128, 32),
        "blocks.1.norm1.weight": (32,),
    }
    shape = vision_tower_shape(shapes, config)
    assert shape.heads == heads
    assert (shape.width, shape.depth, shape.patch_size, shape.image_size) == (32, 2, 8, 32)
    assert shape.mlp_ratio == 4.0 and not shape.qk_norm
    wide = dict(shapes, **{"patch_embed.proj.weight": (128, 3, 8, 8), "pos_embed": (1, 16, 128)})
    assert vision_tower_shape(wide, {}).heads == 2  # unnamed: SigLIP's 64-wide heads


def test_tower_shape_names_a_missing_tensor():
    with pytest.raises(ValueError, match="lacks 'pos_embed'"):
        vision_tower_shape({"patch_embed.proj.weight": (32, 3, 8, 8)})
