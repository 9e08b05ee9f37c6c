"""Model specs, pairing a vision model with a text tower, safe loading, errors."""

from __future__ import annotations

import pytest
import torch
from _tiny_models import (
    HEADS,
    WIDTH,
    random_images,
    save_hf_siglip,
    save_janus_checkpoint,
    tiny_timm_kwargs,
    tiny_timm_vit,
)
from safetensors.torch import save_file

from siglip_dola.models import ModelSpec, detect_scheme, load_model, parse_spec
from siglip_dola.readout.base import LoadedModel, TextEncoder, VisionReadout
from siglip_dola.settings import parse_dtype

ARCH = "vit_base_patch16_siglip_224"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_hf_siglip(tmp_path_factory.mktemp("hf"), version=1)


@pytest.fixture(scope="module")
def timm_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("timm") / "vit.safetensors"
    save_file(tiny_timm_vit(ARCH).state_dict(), str(path))
    return path


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("hf:google/siglip-base-patch16-224", ModelSpec("hf", "google/siglip-base-patch16-224")),
        ("open_clip:ViT-B-16-SigLIP:webli", ModelSpec("open_clip", "ViT-B-16-SigLIP", "webli")),
        (
            "open_clip:hf-hub:timm/ViT-B-16-SigLIP",
            ModelSpec("open_clip", "hf-hub:timm/ViT-B-16-SigLIP"),
        ),
        (
            "open_clip:/m/c.json:/m/w.safetensors",
            ModelSpec("open_clip", "/m/c.json", "/m/w.safetensors"),
        ),
        ("timm:vit_large_patch16_siglip_384", ModelSpec("timm", "vit_large_patch16_siglip_384")),
        ("timm:vit_x:/w.pth", ModelSpec("timm", "vit_x", "/w.pth")),
        ("janus:/ckpt/Janus-Pro-7B", ModelSpec("janus", "/ckpt/Janus-Pro-7B")),
    ],
)
def test_parse_spec(spec, expected):
    assert parse_spec(spec) == expected


def test_unknown_scheme_names_it_and_the_expected_ones():
    with pytest.raises(
        ValueError, match=r"unknown model scheme 'clip'.*hf:.*open_clip:.*timm:.*janus:"
    ):
        load_model("clip:ViT-B-32")


@pytest.mark.parametrize(
    "spec",
    [
        "/no/such/model",
        "hf:/no/such/dir",
        "timm:/no/such/file.pth",
        "janus:/no/such/ckpt",
        "open_clip:/no/such/config.json",
    ],
)
def test_missing_path(spec):
    with pytest.raises(ValueError, match="does not exist"):
        load_model(spec)


@pytest.mark.parametrize("spec", ["", "  ", "hf:"])
def test_empty_spec(spec):
    with pytest.raises(ValueError):
        load_model(spec)


def test_unrecognised_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="cannot tell what model"):
        load_model(str(tmp_path))


def test_bare_folders_are_detected(hf_dir, tmp_path):
    assert detect_scheme(hf_dir) == "hf"
    janus = save_janus_checkpoint(tmp_path / "janus", tiny_timm_vit("vit_large_patch16_siglip_384"))
    assert detect_scheme(janus) == "janus"
    loaded = load_model(str(hf_dir))
    assert loaded.vision.name.startswith("hf:")


def test_non_siglip_transformers_model(tmp_path):
    from transformers import CLIPConfig

    CLIPConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'clip' model; expected a SigLIP model"):
        load_model(f"hf:{tmp_path}")


# ----------------------------------------------------------------------------- pairing


def test_loaded_model_satisfies_the_interface(hf_dir):
    loaded = load_model(f"hf:{hf_dir}", dtype="float32")
    assert isinstance(loaded, LoadedModel)
    assert isinstance(loaded.vision, VisionReadout) and isinstance(loaded.text, TextEncoder)
    assert loaded.vision.depth == 4 and loaded.vision.embed_dim == loaded.text.embed_dim == WIDTH
    assert loaded.tau == pytest.approx(1 / torch.tensor(loaded.logit_scale).exp().item())
    assert (
        len(loaded.vision.fingerprint) == 16
        and loaded.vision.fingerprint != loaded.text.fingerprint
    )


def test_vision_only_model_takes_a_text_tower(hf_dir, timm_file):
    loaded = load_model(
        f"timm:{ARCH}:{timm_file}", text_spec=f"hf:{hf_dir}", model_kwargs=tiny_timm_kwargs()
    )
    assert loaded.text is not None and loaded.logit_scale is not None
    batch = loaded.vision.preprocess(random_images(2))
    z = loaded.vision.forward_layers(batch, [1]).final
    t = loaded.text.encode_text(["a cat", "a dog"])
    assert (z @ t.T).shape == (2, 2)
    # The text-only load dropped the transformers image tower.
    assert loaded.text.model.vision_model is None


def test_embedding_size_mismatch(hf_dir, tmp_path):
    wide = tmp_path / "wide.safetensors"
    save_file(tiny_timm_vit(ARCH, embed_dim=48).state_dict(), str(wide))
    kwargs = dict(tiny_timm_kwargs(), embed_dim=48)
    with pytest.raises(ValueError, match=r"embedding size mismatch.*D=48.*D=32"):
        load_model(f"timm:{ARCH}:{wide}", text_spec=f"hf:{hf_dir}", model_kwargs=kwargs)


def test_text_spec_without_text_tower(timm_file):
    with pytest.raises(ValueError, match="has no text tower"):
        load_model(
            f"timm:{ARCH}:{timm_file}",
            text_spec=f"timm:{ARCH}:{timm_file}",
            model_kwargs=tiny_timm_kwargs(),
        )


def test_head_from_only_for_janus(hf_dir, timm_file):
    with pytest.raises(ValueError, match="head_from only applies to janus"):
        load_model(f"hf:{hf_dir}", head_from=timm_file)


def test_dtype_and_device_are_applied(hf_dir):
    loaded = load_model(f"hf:{hf_dir}", device="cpu", dtype="bfloat16")
    batch = loaded.vision.preprocess(random_images(2))
    assert batch["pixel_values"].dtype == torch.bfloat16
    assert loaded.vision.forward_layers(batch, [2]).embeddings.dtype == torch.bfloat16
    assert loaded.text.encode_text(["a cat"]).dtype == torch.bfloat16


def test_text_tower_to_casts_and_renews_its_fingerprint(hf_dir):
    loaded = load_model(f"hf:{hf_dir}", dtype="float32")
    text = loaded.text
    before = text.fingerprint
    assert text.to(dtype=torch.bfloat16) is text
    assert next(text.text_module.parameters()).dtype == torch.bfloat16
    assert text.fingerprint != before  # the weights' dtype is part of the cache key
    assert text.encode_text(["a cat"]).dtype == torch.bfloat16


def test_parse_dtype():
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        parse_dtype("int3")


# ----------------------------------------------------------------------------- safety


def test_trust_remote_code_is_only_passed_when_asked(hf_dir, monkeypatch):
    import transformers

    seen = []
    original = transformers.AutoModel.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", spy)
    load_model(f"hf:{hf_dir}")
    load_model(f"hf:{hf_dir}", trust_remote_code=True)
    assert seen == [False, True]


def test_janus_bin_shards_load_with_weights_only(tmp_path):
    tower = tiny_timm_vit("vit_large_patch16_siglip_384")
    folder = save_janus_checkpoint(tmp_path, tower, fmt="bin")
    loaded = load_model(f"janus:{folder}", model_kwargs={"num_heads": HEADS})
    assert loaded.vision.depth == 4


def test_peek_depth_reads_configs_and_tensor_names_without_loading(tmp_path):
    from siglip_dola.models import peek_depth

    for version in (1, 2):
        folder = save_hf_siglip(tmp_path / f"hf{version}", version=version)
        assert peek_depth(f"hf:{folder}") == 4
        assert peek_depth(str(folder)) == 4
    janus = save_janus_checkpoint(tmp_path / "janus", tiny_timm_vit(depth=3))
    assert peek_depth(f"janus:{janus}") == 3
    assert peek_depth("timm:vit_base_patch16_siglip_224") is None  # only building tells
    assert peek_depth("hf:someone/not-in-the-cache") is None
