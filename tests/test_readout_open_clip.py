"""open_clip SigLIP readout: a model config registered from a local file, a local tokenizer."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from _tiny_models import (
    DEPTH,
    IMAGE,
    capture_outputs,
    count_calls,
    perturb_norms,
    random_images,
    save_open_clip_config,
    save_sentencepiece_tokenizer,
    spread_weights,
)
from safetensors.torch import save_file

from siglip_dola.models import load_model

ATOL = 1e-5


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return save_sentencepiece_tokenizer(tmp_path_factory.mktemp("oc_tok"))


@pytest.fixture(scope="module", params=["none", "linear"], ids=["no-proj", "linear-proj"])
def saved(request, tokenizer_dir, tmp_path_factory):
    """(config path, weights file, the original open_clip model)."""
    folder = tmp_path_factory.mktemp(f"oc_{request.param}")
    config = save_open_clip_config(folder, tokenizer_dir, proj=request.param)
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model(config.stem).eval()
    spread_weights(model.visual)
    perturb_norms(model)
    with torch.no_grad():  # a logit scale other than the init value shows it is read back
        model.logit_scale.fill_(1.7)
    weights = folder / "weights.safetensors"
    save_file(model.state_dict(), str(weights))
    return config, weights, model


@pytest.fixture(scope="module")
def loaded(saved):
    config, weights, _ = saved
    return load_model(f"open_clip:{config}:{weights}")


@pytest.fixture(scope="module")
def batch(loaded):
    return loaded.vision.preprocess(random_images(3))


def test_final_layer_equals_encode_image(saved, loaded, batch):
    _, _, model = saved
    with torch.no_grad():
        own = model.encode_image(batch["pixel_values"])
    torch.testing.assert_close(
        loaded.vision.forward_layers(batch, []).final, own, atol=ATOL, rtol=0
    )
    torch.testing.assert_close(loaded.vision.image_embedding(batch), own, atol=ATOL, rtol=0)
    assert loaded.vision.embed_dim == own.shape[-1] == loaded.text.embed_dim


def test_every_layer_equals_projected_head_of_norm(saved, loaded, batch):
    _, _, model = saved
    trunk, head = model.visual.trunk, model.visual.head
    with capture_outputs(list(trunk.blocks)) as hidden, torch.no_grad():
        model.encode_image(batch["pixel_values"])
        expected = [head(trunk.forward_head(trunk.norm(h))) for h in hidden]
    result = loaded.vision.forward_layers(batch, range(1, DEPTH + 1))
    for layer, want in enumerate(expected, start=1):
        torch.testing.assert_close(result.layer(layer), want, atol=ATOL, rtol=0)
    assert (result.layer(1) - result.layer(DEPTH)).abs().max() > 1e-2


def test_each_block_runs_once_per_batch(loaded, batch):
    trunk = loaded.vision.model
    projection = loaded.vision.projection
    assert loaded.vision.fused_head  # the trunk's MAP head in its fused form: module not called
    watched = [*trunk.blocks, trunk.attn_pool, trunk.attn_pool.mlp, projection]
    with count_calls(watched) as counts:
        loaded.vision.forward_layers(batch, [1, 2, 3])
    assert counts == [1] * DEPTH + [0, 1, 1]


def test_fused_readout_equals_module_readout_in_float64(saved, batch):
    config, weights, _ = saved
    vision = load_model(f"open_clip:{config}:{weights}", dtype=torch.float64).vision
    pixels = {"pixel_values": batch["pixel_values"].double()}
    every = range(1, DEPTH + 1)
    got = vision.forward_layers(pixels, every)
    vision.fused_head = False
    want = vision.forward_layers(pixels, every)
    torch.testing.assert_close(got.embeddings, want.embeddings, atol=1e-10, rtol=1e-10)


def test_text_equals_encode_text(saved, loaded):
    config, _, model = saved
    texts = ["A photo of a CAT!", "a red car", "sandal"]
    tokens = open_clip.get_tokenizer(config.stem)(texts)
    with torch.no_grad():
        own = model.encode_text(tokens)
    torch.testing.assert_close(loaded.text.encode_text(texts), own, atol=ATOL, rtol=0)
    assert loaded.logit_scale == pytest.approx(1.7)


def test_text_tower_to_renews_its_fingerprint(saved):
    config, weights, _ = saved
    text = load_model(f"open_clip:{config}:{weights}").text
    before = text.fingerprint
    assert text.to(dtype=torch.float64) is text
    assert next(text.text_module.parameters()).dtype == torch.float64
    assert text.fingerprint != before


def test_preprocess_is_open_clips(loaded, batch):
    assert batch["pixel_values"].shape == (3, 3, IMAGE, IMAGE)


def test_local_dir_format(saved, tokenizer_dir, tmp_path):
    """open_clip's own folder format: open_clip_config.json + weights + tokenizer files."""
    config, weights, model = saved
    model_cfg = json.loads(config.read_text())
    model_cfg["text_cfg"]["hf_tokenizer_name"] = "local"  # open_clip reads the folder itself
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    (tmp_path / "open_clip_model.safetensors").write_bytes(weights.read_bytes())
    for item in tokenizer_dir.iterdir():
        (tmp_path / item.name).write_bytes(item.read_bytes())
    for spec in (f"open_clip:{tmp_path}", str(tmp_path)):
        loaded = load_model(spec)
        batch = loaded.vision.preprocess(random_images(2))
        with torch.no_grad():
            own = model.encode_image(batch["pixel_values"])
        torch.testing.assert_close(
            loaded.vision.forward_layers(batch, [1]).final, own, atol=ATOL, rtol=0
        )
        assert loaded.text.encode_text(["a cat"]).shape == (1, own.shape[-1])


def test_non_timm_image_tower_rejected(tmp_path):
    config = {
        "embed_dim": 16,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "patch_size": 16,
            "head_width": 16,
        },
        "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
    }
    path = tmp_path / "dola-test-plain-vit.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="not a timm trunk"):
        load_model(f"open_clip:{path}")


def test_missing_pretrained_file(saved, tmp_path):
    config, _, _ = saved
    with pytest.raises(ValueError, match="does not exist"):
        load_model(f"open_clip:{config}:{tmp_path / 'missing.safetensors'}")


def test_unknown_open_clip_name():
    with pytest.raises(ValueError, match="no-such-model"):
        load_model("open_clip:no-such-model")
