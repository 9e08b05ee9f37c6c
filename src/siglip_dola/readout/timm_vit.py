"""timm ViTs with a pooling head, and any object with the Janus/timm method pair.

The readout needs two methods that timm's ``VisionTransformer`` and DeepSeek Janus's copy
of it (``janus.models.siglip_vit.VisionTransformer``) both have:

* ``get_intermediate_layers(x, n, norm=..., return_prefix_tokens=...)``: runs every block
  once and returns the requested blocks' outputs, here through the final ``norm``;
* ``forward_head(x, pre_logits=...)``: the model's own pooling (MAP attention pool for
  SigLIP), ``fc_norm`` and, with ``pre_logits=False``, classifier/projection.

Janus's ``get_intermediate_layers`` silently drops negative indices and returns a tuple,
so indices are passed as non-negative block indices and the count is checked.

A timm ``VisionTransformer`` whose head is a single-query ``AttentionPoolLatent`` (SigLIP's MAP
head: timm, open_clip and Janus towers built here) is read out in the head's fused form
instead (see :mod:`~siglip_dola.readout.attention_pool`): the blocks run once, each requested
layer's normed tokens are reduced to [B, heads, width] as its block produces them, and the
head's projection and MLP run once for all layers; no [L * B, T, width] stack is built.
Other towers and heads (DeepSeek's own class, more latents, q/k norms, token pooling) take
the method pair.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
from siglip_dola.readout.attention_pool import LatentPooling, supports_fused_latent_pool
from siglip_dola.readout.base import Batch, LayerEmbeddings, Sample, collate_samples
from siglip_dola.readout.pixels import Uint8Pixels, split_torchvision

__all__ = ["PixelTransform", "TimmViTReadout", "supports_fused_readout", "timm_transform"]

Transform = Callable[[Image.Image], torch.Tensor]


class PixelTransform:
    """A per-image pixel transform ([3, H, W] out) as the model input ``pixel_values``."""

    def __init__(self, transform: Transform) -> None:
        self.transform = transform

    def __call__(self, image: Image.Image) -> Sample:
        return {"pixel_values": self.transform(image)}

    def uint8_split(self) -> Uint8Pixels | None:
        """The transform as uint8 pixels + a device lookup table, where it splits so exactly
        (see :mod:`~siglip_dola.readout.pixels`); ``None`` otherwise."""
        own = getattr(self.transform, "uint8_split", None)  # e.g. Janus's transform
        return own() if own is not None else split_torchvision(self.transform)


class TimmViTReadout:
    """Per-layer readout through ``norm`` + ``forward_head`` (+ an optional projection).

    ``pre_logits=True`` stops before the classifier (the SigLIP image embedding of a timm
    ViT with a MAP head). ``projection`` is applied after the head (open_clip's
    ``visual.head``). ``transform`` maps one RGB PIL image to a [3, H, W] tensor; by
    default it is built from the model's timm data config. ``fused_head=False`` reads every
    layer out through the head module even where the fused form applies.
    """

    def __init__(
        self,
        model: nn.Module,
        name: str = "timm",
        transform: Transform | None = None,
        pre_logits: bool = True,
        projection: nn.Module | None = None,
        fused_head: bool = True,
    ) -> None:
        missing = [m for m in ("get_intermediate_layers", "forward_head") if not hasattr(model, m)]
        blocks = getattr(model, "blocks", None)
        if missing or blocks is None:
            lacks = missing + ([] if blocks is not None else ["blocks"])
            raise ValueError(
                f"{name}: {type(model).__name__} lacks {lacks}; expected a timm/Janus-style "
                f"VisionTransformer with get_intermediate_layers(x, n, norm=...) and "
                f"forward_head(x, pre_logits=True)"
            )
        self.model = model
        self.name = name
        self.depth = len(blocks)
        self.pre_logits = pre_logits
        self.projection = projection
        self._transform = transform
        self.fused_head = fused_head and supports_fused_readout(model)
        self._embed_dim: int | None = None
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------------- identity

    @property
    def embed_dim(self) -> int:
        if self._embed_dim is None:
            self._embed_dim = self._probe_embed_dim()
        return self._embed_dim

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(*self._modules(), extra=self.name)
        return self._fingerprint

    # ------------------------------------------------------------------------- inputs

    @property
    def image_transform(self) -> PixelTransform:
        """The model's own transform of one image, as ``pixel_values`` (runs in loader workers)."""
        if self._transform is None:
            self._transform = timm_transform(self.model)
        return PixelTransform(self._transform)

    def preprocess(self, images: Sequence[Image.Image]) -> Batch:
        """The model's own transform applied to each image, stacked as pixel_values."""
        transform = self.image_transform
        device, dtype = parameter_device_dtype(self.model)
        return move_batch(collate_samples([transform(image) for image in images]), device, dtype)

    # ------------------------------------------------------------------------- readout

    @torch.no_grad()
    def forward_layers(self, batch: Batch, layers: Sequence[int]) -> LayerEmbeddings:
        """One pass through the blocks -> head(norm(h_l)) for ``layers`` plus N, [L, B, D]."""
        numbers = resolve_layers(layers, self.depth)
        pixels = self._pixels(batch)
        if self.fused_head:
            pooled = self._fused_layers(pixels, numbers)
            return LayerEmbeddings(numbers, pooled.view(len(numbers), pixels.shape[0], -1))
        outputs = self.model.get_intermediate_layers(
            pixels, n=[layer - 1 for layer in numbers], norm=True, return_prefix_tokens=True
        )
        if len(outputs) != len(numbers):
            raise RuntimeError(
                f"{self.name}: get_intermediate_layers returned {len(outputs)} outputs for "
                f"{len(numbers)} requested layers {list(numbers)}"
            )
        stacked = torch.cat([_full_sequence(out) for out in outputs])  # [L * B, T, width]
        pooled = self.pool(stacked)
        return LayerEmbeddings(numbers, pooled.view(len(numbers), pixels.shape[0], -1))

    @torch.no_grad()
    def image_embedding(self, batch: Batch) -> torch.Tensor:
        """The model's own embedding: forward_head(forward_features(x)) (+ projection)."""
        pixels = self._pixels(batch)
        if not hasattr(self.model, "forward_features"):
            return self.forward_layers(batch, ()).final
        return self.pool(self.model.forward_features(pixels))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The model's head on already-normalised tokens [B, T, width] -> [B, D]."""
        pooled = self.model.forward_head(tokens, pre_logits=self.pre_logits)
        return pooled if self.projection is None else self.projection(pooled)

    def _fused_layers(self, pixels: torch.Tensor, numbers: tuple[int, ...]) -> torch.Tensor:
        """The blocks once, each requested layer's tokens mixed by the folded head as its block
        produces them, then the head's output block and what follows the pool in
        ``forward_head`` for all layers at once: [L * B, D]."""
        model = self.model
        slot = {layer - 1: i for i, layer in enumerate(numbers)}
        hidden = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(pixels))))
        # The patch embedding leaves tokens transposed in memory (conv output flattened, then
        # transposed) and every residual add keeps that layout, so each linear layer would copy
        # its input first; one copy here gives the blocks contiguous tokens (same values).
        hidden = hidden.contiguous()
        pooling = LatentPooling(model.attn_pool)
        skip = 0 if getattr(model, "pool_include_prefix", False) else model.num_prefix_tokens
        mixed = hidden.new_empty((len(numbers), hidden.shape[0], pooling.heads, hidden.shape[-1]))
        for index, block in enumerate(model.blocks):
            hidden = block(hidden)
            if index in slot:
                pooling.mix(model.norm(hidden)[:, skip:], out=mixed[slot[index]])
        pooled = pooling.project_in_chunks(mixed.flatten(0, 1), hidden.shape[0] * hidden.shape[1])
        pooled = model.head_drop(model.fc_norm(pooled))
        if not self.pre_logits:
            pooled = model.head(pooled)
        return pooled if self.projection is None else self.projection(pooled)

    def to(self, device: Any = None, dtype: Any = None) -> TimmViTReadout:
        for module in self._modules():
            module.to(device=device, dtype=dtype)
        self._fingerprint = None
        return self

    def compile(self) -> TimmViTReadout:
        """The tower's blocks through ``torch.compile`` (in place; the method pair and the
        model's own forward use them too); returns self."""
        compile_blocks(self.model.blocks)
        return self

    # ------------------------------------------------------------------------- internals

    def _modules(self) -> list[nn.Module]:
        return [self.model] + ([self.projection] if self.projection is not None else [])

    def _pixels(self, batch: Batch) -> torch.Tensor:
        if "pixel_values" not in batch:
            raise ValueError(f"{self.name}: the batch lacks 'pixel_values'; use preprocess()")
        device, dtype = parameter_device_dtype(self.model)
        return move_batch({"pixel_values": batch["pixel_values"]}, device, dtype)["pixel_values"]

    @torch.no_grad()
    def _probe_embed_dim(self) -> int:
        # The head on one dummy token tells the output size of any pooling/projection.
        width = int(getattr(self.model, "embed_dim", 0) or self.model.num_features)
        tokens = getattr(self.model, "num_prefix_tokens", 0) + 1
        device, dtype = parameter_device_dtype(self.model)
        return int(self.pool(torch.zeros(1, tokens, width, device=device, dtype=dtype)).shape[-1])


def supports_fused_readout(model: nn.Module) -> bool:
    """True for a timm ``VisionTransformer`` (its own forward stages) whose pooling head folds
    (:func:`~siglip_dola.readout.attention_pool.supports_fused_latent_pool`)."""
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    if not isinstance(model, VisionTransformer):
        return False
    own_stages = ("forward_features", "forward_head", "pool")
    if any(
        getattr(type(model), m, None) is not getattr(VisionTransformer, m, None) for m in own_stages
    ):
        return False
    # timm releases without pool_include_prefix gave the head every token, prefix included.
    if getattr(model, "pool_include_prefix", None) is None and model.num_prefix_tokens:
        return False
    return supports_fused_latent_pool(getattr(model, "attn_pool", None))


def _full_sequence(output: Any) -> torch.Tensor:
    # With return_prefix_tokens=True each output is (spatial, prefix) unless the model has no
    # prefix tokens (timm >= 1.0 then returns the tensor alone); the head wants both.
    if isinstance(output, (tuple, list)):
        spatial, prefix = output
        return (
            spatial if prefix is None or prefix.shape[1] == 0 else torch.cat([prefix, spatial], 1)
        )
    return output


def timm_transform(
    model: nn.Module,
    image_size: int | tuple[int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Transform:
    """Eval transform from the model's timm data config; size follows the patch embedding."""
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config({}, model=model)
    size = image_size or getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is not None:
        # The patch embedding's size wins over a pretrained config made for another size.
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        config["input_size"] = (3, int(height), int(width))
    if mean is not None:
        config["mean"] = tuple(mean)
    if std is not None:
        config["std"] = tuple(std)
    return create_transform(**config, is_training=False)
