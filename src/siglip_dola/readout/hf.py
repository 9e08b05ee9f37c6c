"""transformers ``SiglipModel`` / ``Siglip2Model`` (and their vision-only models).

The readout runs the vision tower's own embeddings and encoder layers once and pools the
requested layers' outputs through ``post_layernorm`` + ``head``: the MAP head's token
reduction per layer as the block produces it, the rest for all layers in one call.
SigLIP2 (NaFlex) inputs carry ``pixel_attention_mask`` and ``spatial_shapes``; the mask goes
to the encoder and to the pooling head (padded tokens left out of its softmax), as in the model.

Works with transformers 4.4x (tensors from ``get_*_features``, layers returning tuples,
``vision_model`` wrapping a ``*VisionTransformer``) and 5.x (output objects, flat
``*VisionModel``). ``output_hidden_states`` is not used: 4.57's ``SiglipModel`` drops it.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn

from siglip_dola.readout._common import (
    compile_blocks,
    move_batch,
    parameter_device_dtype,
    resolve_layers,
    weights_fingerprint,
)
from siglip_dola.readout.attention_pool import MapPooling, supports_fused_map_pool
from siglip_dola.readout.base import Batch, LayerEmbeddings, Sample, collate_samples
from siglip_dola.readout.pixels import Uint8Pixels, ramp_image

__all__ = [
    "HFImageTransform",
    "HFSiglipReadout",
    "HFSiglipText",
    "find_vision_transformer",
    "pooled_output",
]

VISION_INPUTS = ("pixel_values", "pixel_attention_mask", "spatial_shapes")
DEFAULT_TEXT_LENGTH = 64  # SigLIP's training context length


def pooled_output(output: Any) -> torch.Tensor:
    """The embedding from ``get_*_features``: a tensor in 4.x, an output object in 5.x."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise TypeError(
            f"expected a tensor or an output with pooler_output, got {type(output).__name__}"
        )
    return pooled


def find_vision_transformer(model: nn.Module) -> nn.Module:
    """The module holding ``embeddings``, ``encoder``, ``post_layernorm`` (and ``head``)."""
    module = model
    # 5.x: SiglipModel.vision_model is a SiglipVisionModel holding the parts directly;
    # 4.x: one more level (SiglipVisionModel.vision_model is a SiglipVisionTransformer).
    for _ in range(3):
        if all(hasattr(module, part) for part in ("embeddings", "encoder", "post_layernorm")):
            return module
        module = getattr(module, "vision_model", None)
        if module is None:
            break
    raise ValueError(
        f"{type(model).__name__} is not a SigLIP vision tower: expected embeddings, encoder "
        f"and post_layernorm (transformers SiglipModel, Siglip2Model or their vision models)"
    )


def _block_output(output: Any) -> torch.Tensor:
    # 4.x encoder layers return a tuple (hidden_states, [attentions]); 5.x a tensor.
    return output[0] if isinstance(output, tuple) else output


def _encoder_attention_mask(
    vision: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None
) -> Any:
    """The encoder mask exactly as the model's own forward builds it, in 4.x and 5.x."""
    if mask is None:
        return None
    own_module = sys.modules[type(vision).__module__]
    builder = getattr(own_module, "create_bidirectional_mask", None)
    if builder is not None:  # 5.x (and late 4.x): attention-implementation aware helper
        return builder(config=vision.config, inputs_embeds=hidden, attention_mask=mask)
    if getattr(vision.config, "_attn_implementation", None) == "flash_attention_2":
        return mask
    from transformers.modeling_attn_mask_utils import _prepare_4d_attention_mask

    return _prepare_4d_attention_mask(mask, hidden.dtype)


class HFImageTransform:
    """A transformers image processor applied to one image: its vision inputs without the
    batch dimension. Each image is resized, normalised (and, for SigLIP2, patchified and padded
    to the processor's fixed patch count) on its own, so stacking per-image results gives the
    same tensors as processing the batch at once."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> Sample:
        out = self.processor(images=[image], return_tensors="pt")
        return {key: out[key][0] for key in VISION_INPUTS if key in out}

    def batch(self, images: Sequence[Image.Image]) -> Batch:
        """The inputs of several images from one processor call: the same tensors as
        stacking :meth:`__call__`'s (tested), at a fraction of the per-call overhead."""
        out = self.processor(images=list(images), return_tensors="pt")
        return {key: out[key] for key in VISION_INPUTS if key in out}

    def uint8_split(self) -> Uint8Pixels | None:
        """The processor's resize in the workers as uint8, its rescale and normalisation as a
        lookup table on the device (see :mod:`~siglip_dola.readout.pixels`); ``None`` where
        the output is more than pixels (SigLIP2's patches and mask) or the split would change
        a pixel."""
        image = ramp_image()
        if set(self(image)) != {"pixel_values"}:
            return None
        try:
            ramp = self.processor(images=[image], do_resize=False, return_tensors="pt")
        except (TypeError, ValueError):
            return None
        return Uint8Pixels.verified(
            _ProcessorGeometry(self.processor),
            ramp["pixel_values"][0],
            lambda image: self(image)["pixel_values"],
        )


class _ProcessorGeometry:
    """The processor without its rescale and normalisation: resized 8-bit pixels [3, H, W]."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        out = self.processor(
            images=[image], do_rescale=False, do_normalize=False, return_tensors="pt"
        )
        return torch.as_tensor(out["pixel_values"][0])


class HFSiglipReadout:
    """Per-layer readout of a transformers SigLIP / SigLIP2 image tower."""

    def __init__(
        self,
        model: nn.Module,
        image_processor: Any = None,
        name: str = "hf",
        fused_head: bool = True,
    ) -> None:
        self.model = model.eval()
        self.vision = find_vision_transformer(model)
        if not getattr(self.vision, "use_head", True) or getattr(self.vision, "head", None) is None:
            raise ValueError(
                f"{name}: the vision tower has no pooling head (vision_use_head=False); DoLa reads "
                f"layers out through the model's own head"
            )
        self.blocks = self.vision.encoder.layers
        self.image_processor = image_processor
        self.name = name
        self.depth = len(self.blocks)
        self.embed_dim = int(self.vision.config.hidden_size)
        self.naflex = "spatial_shapes" in _forward_arguments(self.vision.embeddings)
        # The head's exact single-query form (see attention_pool) when the head is the
        # standard MAP head; any other head is called as a module.
        self.fused_head = fused_head and supports_fused_map_pool(self.vision.head)
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.vision, extra=self.name)
        return self._fingerprint

    @property
    def image_transform(self) -> HFImageTransform:
        """The model's own image processor, one image at a time (runs in loader workers)."""
        if self.image_processor is None:
            raise ValueError(f"{self.name}: no image processor was loaded with this model")
        return HFImageTransform(self.image_processor)

    def preprocess(self, images: Sequence[Image.Image]) -> Batch:
        """The model's own image processor (resize/normalise; NaFlex patches for SigLIP2)."""
        transform = self.image_transform
        device, dtype = parameter_device_dtype(self.vision)
        return move_batch(collate_samples([transform(image) for image in images]), device, dtype)

    @torch.no_grad()
    def forward_layers(self, batch: Batch, layers: Sequence[int]) -> LayerEmbeddings:
        """One pass through the blocks -> head(post_layernorm(h_l)) for ``layers`` plus N."""
        numbers = resolve_layers(layers, self.depth)
        slot = {layer - 1: i for i, layer in enumerate(numbers)}
        batch = self._inputs(batch)
        hidden, encoder_mask = self._embed(batch)
        patch_mask = batch.get("pixel_attention_mask") if self.naflex else None
        # The fused head reduces each layer's tokens as the block produces them (padded NaFlex
        # tokens left out) into one buffer allocated before the blocks run; any other head gets
        # the layers stacked and pools them as a module.
        # Folding the head per batch costs O(width^2) and never goes stale.
        pooling = MapPooling(self.vision.head) if self.fused_head else None
        if pooling is not None:
            heads = self.vision.head.attention.num_heads
            mixed = hidden.new_empty((len(numbers), hidden.shape[0], heads, hidden.shape[-1]))
        kept: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            hidden = _block_output(block(hidden, encoder_mask))
            if index not in slot:
                continue
            if pooling is None:
                kept.append(hidden)
            else:
                tokens = self.vision.post_layernorm(hidden)
                pooling.mix(tokens, patch_mask, out=mixed[slot[index]])
        if pooling is not None:
            pooled = pooling.project_in_chunks(
                mixed.flatten(0, 1), hidden.shape[0] * hidden.shape[1]
            )
        else:
            stacked = self.vision.post_layernorm(torch.cat(kept))  # [L * B, T, width]
            mask = None if patch_mask is None else patch_mask.repeat(len(numbers), 1)
            pooled = self.vision.head(stacked, mask) if self.naflex else self.vision.head(stacked)
        return LayerEmbeddings(numbers, pooled.view(len(numbers), hidden.shape[0], -1))

    @torch.no_grad()
    def image_embedding(self, batch: Batch) -> torch.Tensor:
        """The library's own image embedding (``get_image_features`` / ``pooler_output``)."""
        batch = self._inputs(batch)
        if hasattr(self.model, "get_image_features"):
            return pooled_output(self.model.get_image_features(**batch))
        return pooled_output(self.model(**batch))

    def to(self, device: Any = None, dtype: Any = None) -> HFSiglipReadout:
        self.vision.to(device=device, dtype=dtype)
        self._fingerprint = None
        return self

    def compile(self) -> HFSiglipReadout:
        """The encoder layers through ``torch.compile`` (in place; the library's own forward
        uses them too); returns self."""
        compile_blocks(self.blocks)
        return self

    def _inputs(self, batch: Batch) -> Batch:
        missing = [k for k in VISION_INPUTS[: 3 if self.naflex else 1] if k not in batch]
        if missing:
            raise ValueError(
                f"{self.name}: the batch lacks {missing}; use this model's preprocess()"
            )
        device, dtype = parameter_device_dtype(self.vision)
        return move_batch({k: batch[k] for k in VISION_INPUTS if k in batch}, device, dtype)

    def _embed(self, batch: Batch) -> tuple[torch.Tensor, Any]:
        # The patch embedding leaves tokens transposed in memory (conv output flattened, then
        # transposed), and every residual add keeps that layout, so each linear layer would copy
        # its input first. One copy here gives the blocks contiguous tokens: same values, less work.
        if self.naflex:
            hidden = self.vision.embeddings(batch["pixel_values"], batch["spatial_shapes"])
            mask = _encoder_attention_mask(self.vision, hidden, batch.get("pixel_attention_mask"))
            return hidden.contiguous(), mask
        return self.vision.embeddings(batch["pixel_values"]).contiguous(), None


class HFSiglipText:
    """The text tower of a transformers SigLIP / SigLIP2 model, with its own tokenizer."""

    def __init__(self, model: nn.Module, tokenizer: Any, name: str = "hf") -> None:
        if not hasattr(model, "get_text_features"):
            raise ValueError(f"{name}: {type(model).__name__} has no text tower")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        text_config = model.config.text_config
        self.max_length = int(getattr(text_config, "max_position_embeddings", DEFAULT_TEXT_LENGTH))
        head = getattr(self.text_module, "head", None)
        self.embed_dim = int(head.out_features if head is not None else text_config.hidden_size)
        # SigLIP was trained on lower-cased text; SiglipTokenizer says so itself, SigLIP2's
        # Gemma tokenizer lower-cases in its normaliser (5.x) or not at all (4.x).
        self.lower_case = bool(getattr(tokenizer, "do_lower_case", True))
        self._fingerprint: str | None = None

    @property
    def text_module(self) -> nn.Module:
        return self.model.text_model

    def to(self, device: Any = None, dtype: Any = None) -> HFSiglipText:
        """Move/cast the text tower; returns self (the fingerprint hashes the dtype)."""
        self.text_module.to(device=device, dtype=dtype)
        self._fingerprint = None
        return self

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.text_module, extra=self.name)
        return self._fingerprint

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids [C, max_length]: padded to the context length as SigLIP was trained."""
        texts = [t.lower() for t in texts] if self.lower_case else list(texts)
        encoded = self.tokenizer(
            texts,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        return encoded["input_ids"]

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings [C, D]. Only token ids are passed: SigLIP's text tower attends to its
        padding (big_vision and open_clip use no padding mask), so a mask would change it."""
        if isinstance(texts, str) or not len(texts):
            raise ValueError("encode_text expects a non-empty list of strings")
        device, _ = parameter_device_dtype(self.text_module)
        ids = self.tokenize(texts).to(device)
        return pooled_output(self.model.get_text_features(input_ids=ids))


def _forward_arguments(module: nn.Module) -> tuple[str, ...]:
    return tuple(inspect.signature(module.forward).parameters)
