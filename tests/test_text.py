"""Text banks: the open_clip convention, caching keyed by model/weights/classes/templates."""

from __future__ import annotations

import pytest
import torch

from siglip_dola.data import bundled_model_dir
from siglip_dola.models import load_model
from siglip_dola.text import (
    build_text_bank,
    encode_captions,
    load_templates,
    text_bank_key,
    validate_class_names,
)


@pytest.fixture(scope="module")
def text_tower():
    return load_model(f"hf:{bundled_model_dir()}").text


def test_bank_is_mean_of_normalised_templates(text_tower):
    templates = ("a photo of a {c}.", "a {c}.")
    bank = build_text_bank(text_tower, ["coat", "bag"], templates, cache_dir=None, progress=False)
    raw = text_tower.encode_text(["a photo of a coat.", "a coat.", "a photo of a bag.", "a bag."])
    raw = torch.nn.functional.normalize(raw.float(), dim=-1).view(2, 2, -1).mean(1)
    assert torch.allclose(bank, torch.nn.functional.normalize(raw, dim=-1), atol=1e-6)
    assert torch.allclose(bank.norm(dim=-1), torch.ones(2))


def test_batching_over_classes_changes_nothing(text_tower):
    names = ["coat", "bag", "dress", "shirt", "sandal"]
    a = build_text_bank(
        text_tower, names, ("a {c}.", "the {c}."), cache_dir=None, batch_size=2, progress=False
    )
    b = build_text_bank(
        text_tower, names, ("a {c}.", "the {c}."), cache_dir=None, batch_size=512, progress=False
    )
    assert torch.allclose(a, b, atol=1e-6)


def test_cache_hit_skips_the_encoder(text_tower, tmp_path, monkeypatch):
    names, templates = ["coat", "bag"], ("a photo of a {c}.",)
    first = build_text_bank(text_tower, names, templates, cache_dir=tmp_path, progress=False)
    files = list((tmp_path / "text_banks").glob("*.pt"))
    assert len(files) == 1 and files[0].stem == text_bank_key(text_tower, names, templates)

    def fail(_texts):
        raise AssertionError("the encoder ran despite a cached bank")

    monkeypatch.setattr(text_tower, "encode_text", fail)
    again = build_text_bank(text_tower, names, templates, cache_dir=tmp_path, progress=False)
    assert torch.equal(first, again)
    with pytest.raises(AssertionError, match="encoder ran"):  # other classes: a new key
        build_text_bank(
            text_tower, ["coat", "shirt"], templates, cache_dir=tmp_path, progress=False
        )


def test_captions_allow_duplicates_and_cache(text_tower, tmp_path):
    caps = ["a cat.", "a cat.", "a dog."]
    emb = encode_captions(text_tower, caps, cache_dir=tmp_path, progress=False)
    assert emb.shape[0] == 3 and torch.allclose(emb[0], emb[1])
    assert len(list((tmp_path / "captions").glob("*.pt"))) == 1


def test_template_sets(tmp_path):
    assert len(load_templates("openai")) == 80
    assert len(load_templates("simple")) == 7
    assert load_templates("photo") == ("a photo of a {c}.",)
    assert all("{c}" in t for t in load_templates("openai"))
    f = tmp_path / "t.txt"
    f.write_text("# my templates\na sketch of a {c}.\n\nthe {c}, up close.\n")
    assert load_templates(str(f)) == ("a sketch of a {c}.", "the {c}, up close.")
    f.write_text("no placeholder here\n")
    with pytest.raises(ValueError, match="lacks the class placeholder"):
        load_templates(str(f))
    with pytest.raises(ValueError, match="unknown template set"):
        load_templates("imagenet-1k")


def test_class_name_validation():
    assert validate_class_names([" cat ", "dog"]) == ("cat", "dog")
    with pytest.raises(ValueError, match=r"duplicate class names: 'cat' \(positions 0 and 2\)"):
        validate_class_names(["Cat", "dog", "cat"])
    with pytest.raises(ValueError, match="empty class name at position"):
        validate_class_names(["cat", " "])
    with pytest.raises(ValueError, match="no class names"):
        validate_class_names([])
