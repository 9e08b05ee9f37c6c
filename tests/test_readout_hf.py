"""transformers SigLIP / SigLIP2 readout on tiny models saved with save_pretrained."""

from __future__ import annotations

import pytest
import torch
from _tiny_models import DEPTH, capture_outputs, count_calls, random_images, save_hf_siglip
from torch import nn

from siglip_dola.models import load_model
from siglip_dola.readout.base import LayerEmbeddings
from siglip_dola.readout.hf import HFSiglipReadout, find_vision_transformer, pooled_output

ATOL = 1e-5


@pytest.fixture(scope="module", params=[1, 2], ids=["siglip", "siglip2-naflex"])
def saved(request, tmp_path_factory):
    folder = save_hf_siglip(tmp_path_factory.mktemp(f"hf{request.param}"), version=request.param)
    return request.param, folder


@pytest.fixture(scope="module")
def loaded(saved):
    version, folder = saved
    return load_model(f"hf:{folder}")


@pytest.fixture(scope="module")
def reference(saved):
    """The same checkpoint loaded by transformers alone: the library's own answers."""
    from transformers import AutoImageProcessor, AutoModel

    version, folder = saved
    model = AutoModel.from_pretrained(folder).float().eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    return model, processor


@pytest.fixture(scope="module")
def batch(loaded):
    return loaded.vision.preprocess(random_images(5))


def test_naflex_batch_has_padding_that_matters(saved, loaded, batch):
    version, _ = saved
    if version == 1:
        assert set(batch) == {"pixel_values"}
        return
    # Padded patches, and a head whose output depends on the mask: otherwise the tests below
    # could not tell whether the patch mask reaches the head.
    assert set(batch) == {"pixel_values", "pixel_attention_mask", "spatial_shapes"}
    assert (batch["pixel_attention_mask"] == 0).any()
    vision = loaded.vision.vision
    hidden = torch.randn(2, batch["pixel_values"].shape[1], vision.config.hidden_size)
    with torch.no_grad():
        masked = vision.head(hidden, batch["pixel_attention_mask"][:2])
        unmasked = vision.head(hidden)
    assert (masked - unmasked).abs().max() > 1e-4


def test_final_layer_equals_library_embedding(loaded, reference, batch):
    model, processor = reference
    inputs = processor(images=random_images(5), return_tensors="pt")
    with torch.no_grad():
        own = pooled_output(model.get_image_features(**{k: inputs[k] for k in batch}))
    readout = loaded.vision.forward_layers(batch, [])
    assert readout.layers == (DEPTH,)
    torch.testing.assert_close(readout.final, own, atol=ATOL, rtol=0)
    torch.testing.assert_close(loaded.vision.image_embedding(batch), own, atol=ATOL, rtol=0)


def test_every_layer_equals_head_of_norm_of_block_output(saved, loaded, reference, batch):
    version, _ = saved
    model, _ = reference
    vision = find_vision_transformer(model)
    with capture_outputs(list(vision.encoder.layers)) as hidden, torch.no_grad():
        model.get_image_features(**batch)
        expected = []
        for h in hidden:
            normed = vision.post_layernorm(h)
            pooled = (
                vision.head(normed, batch["pixel_attention_mask"])
                if version == 2
                else vision.head(normed)
            )
            expected.append(pooled)
    readout = loaded.vision.forward_layers(batch, range(1, DEPTH + 1))
    assert readout.layers == tuple(range(1, DEPTH + 1))
    assert readout.embeddings.shape == (DEPTH, 5, loaded.vision.embed_dim)
    for layer, want in enumerate(expected, start=1):
        torch.testing.assert_close(readout.layer(layer), want, atol=ATOL, rtol=0)
    # The layers really differ, so a mix-up of layers could not pass the loop above.
    assert (readout.layer(1) - readout.layer(DEPTH)).abs().max() > 1e-2


@pytest.mark.parametrize("layers", [(), (1,), (1, 2, 3), (3, 1, 3, 2)])
def test_each_block_runs_once_per_batch(loaded, batch, layers):
    vision = loaded.vision.vision
    # The head's MLP runs once in the module call and in the fused single-query form alike.
    with count_calls([vision.embeddings, *vision.encoder.layers, vision.head.mlp]) as counts:
        result = loaded.vision.forward_layers(batch, layers)
    assert counts[:-1] == [1] * (DEPTH + 1)
    assert counts[-1] == 1  # all pooling heads in one call
    assert result.layers == tuple(sorted(set(layers) | {DEPTH}))


def test_padded_batches_take_the_fused_head(saved, loaded, batch):
    # SigLIP2's padded NaFlex batches too: the masked head is computed in its fused form
    # (equal to the module, see test_every_layer_equals_head_of_norm_of_block_output), so
    # neither the head module nor its attention module is called.
    vision = loaded.vision.vision
    assert loaded.vision.fused_head
    with count_calls([vision.head, vision.head.attention, vision.head.mlp]) as counts:
        loaded.vision.forward_layers(batch, [1, 2])
    assert counts == [0, 0, 1]


def test_text_embeddings_equal_library(saved, loaded, reference):
    from transformers import AutoTokenizer

    version, folder = saved
    model, _ = reference
    texts = ["a photo of a cat.", "A Blurry Photo of a RED car", "sandal"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(
        [t.lower() for t in texts],
        padding="max_length",
        max_length=16,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        own = pooled_output(model.get_text_features(input_ids=ids))
    got = loaded.text.encode_text(texts)
    assert got.shape == (3, loaded.text.embed_dim)
    torch.testing.assert_close(got, own, atol=ATOL, rtol=0)
    torch.testing.assert_close(loaded.text.encode_text(["SANDAL"]), got[2:], atol=ATOL, rtol=0)
    assert loaded.logit_scale == pytest.approx(float(model.logit_scale.detach()))


def test_text_is_padded_to_the_context_length(loaded):
    ids = loaded.text.tokenize(["a cat", "a photo of a dog"])
    assert ids.shape == (2, 16)


@pytest.mark.parametrize("bad", [0, DEPTH + 1, -1])
def test_layer_outside_range_names_it(loaded, batch, bad):
    with pytest.raises(ValueError, match=rf"outside 1\.\.{DEPTH}"):
        loaded.vision.forward_layers(batch, [bad])


def test_non_integer_layer_rejected(loaded, batch):
    with pytest.raises(TypeError):
        loaded.vision.forward_layers(batch, [1.5])


def test_batch_without_inputs_rejected(loaded):
    with pytest.raises(ValueError, match="preprocess"):
        loaded.vision.forward_layers({}, [1])


def test_empty_text_list_rejected(loaded):
    with pytest.raises(ValueError, match="non-empty"):
        loaded.text.encode_text([])


class _TupleLayer(nn.Module):
    """An encoder layer answering like transformers 4.x: a tuple (hidden_states,)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, hidden, mask, output_attentions=False):
        return (self.layer(hidden, mask),)


class _V4Wrapper(nn.Module):
    """4.x layout: SiglipVisionModel.vision_model is the transformer with the parts."""

    def __init__(self, vision: nn.Module) -> None:
        super().__init__()
        self.vision_model = vision

    def forward(self, **inputs):
        return pooled_output(self.vision_model(**inputs))  # a tensor, as 4.x returns


def test_transformers_4x_layer_and_layout_conventions(saved, batch):
    from transformers import AutoModel

    _, folder = saved
    model = AutoModel.from_pretrained(folder).float().eval()
    vision = find_vision_transformer(model)
    with torch.no_grad():
        own = pooled_output(model.get_image_features(**batch))
    vision.encoder.layers = nn.ModuleList(_TupleLayer(layer) for layer in vision.encoder.layers)
    readout = HFSiglipReadout(_V4Wrapper(vision), name="v4-style")
    result = readout.forward_layers(batch, [2])
    assert isinstance(result, LayerEmbeddings)
    torch.testing.assert_close(result.final, own, atol=ATOL, rtol=0)


def test_pooled_output_accepts_tensor_and_output_object():
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    tensor = torch.ones(2, 3)
    assert pooled_output(tensor) is tensor
    assert pooled_output(BaseModelOutputWithPooling(pooler_output=tensor)) is tensor
    with pytest.raises(TypeError):
        pooled_output(BaseModelOutputWithPooling(last_hidden_state=tensor))


def test_text_is_lower_cased_when_the_tokenizer_does_not_say_otherwise(reference):
    from siglip_dola.readout.hf import HFSiglipText

    model, _ = reference

    class CaseSensitiveTokenizer:  # like SigLIP2's Gemma tokenizer in transformers 4.x
        seen: list[str] = []

        def __call__(self, texts, **kwargs):
            self.seen.extend(texts)
            assert kwargs["padding"] == "max_length" and kwargs["max_length"] == 16
            return {"input_ids": torch.ones(len(texts), 16, dtype=torch.long)}

    tokenizer = CaseSensitiveTokenizer()
    HFSiglipText(model, tokenizer).encode_text(["A Photo of a CAT"])
    assert tokenizer.seen == ["a photo of a cat"]
