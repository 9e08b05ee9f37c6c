"""The readout interface: what every model family adapter provides.

An adapter turns one backbone forward pass into per-layer image embeddings
z_l = head(norm(h_l)) for the requested layers l (1-based; layer N always included), using
the model's own final norm and pooling head. It holds no DoLa maths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image

Batch = dict[str, torch.Tensor]  # model inputs, e.g. {"pixel_values": [B, 3, H, W]}
Sample = dict[str, torch.Tensor]  # one image's inputs, without the batch dimension


@runtime_checkable
class ImageTransform(Protocol):
    """The CPU side of a model's preprocessing: one RGB image -> its input tensors.

    Picklable, so that data-loader worker processes run it; the main process only stacks
    (:func:`collate_samples`) and moves the result to the device.
    """

    def __call__(self, image: Image.Image) -> Sample:
        """The model inputs of one image (no batch dimension)."""


def transform_images(transform: ImageTransform, images: Sequence[Image.Image]) -> Batch:
    """The batch of ``images``: the transform's own ``batch(images)`` where it has one (one
    processor call instead of one per image; it must give exactly the stacked per-image
    inputs), else each image transformed and stacked."""
    batch = getattr(transform, "batch", None)
    if batch is not None:
        return batch(images)
    return collate_samples([transform(image) for image in images])


def collate_samples(samples: Sequence[Sample]) -> Batch:
    """Per-image inputs stacked into a batch (every image has the same keys and shapes).

    In a data-loader worker the batch is stacked straight into shared memory, as torch's own
    collate does: sending it to the main process then copies nothing more."""
    if not samples:
        raise ValueError("no samples to collate")
    return {key: _stack([s[key] for s in samples]) for key in samples[0]}


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    first = tensors[0]
    if torch.utils.data.get_worker_info() is None or first.device.type != "cpu":
        return torch.stack(tensors)
    try:
        storage = first._typed_storage()._new_shared(first.numel() * len(tensors))
    except (AttributeError, RuntimeError):  # pragma: no cover - a torch without the helper
        return torch.stack(tensors)
    out = first.new(storage).resize_(len(tensors), *first.shape)
    return torch.stack(tensors, out=out)


@dataclass(frozen=True)
class LayerEmbeddings:
    """Per-layer embeddings of one batch: ``embeddings[i]`` belongs to ``layers[i]``.

    ``layers`` is ascending and ends with the final layer N.
    """

    layers: tuple[int, ...]
    embeddings: torch.Tensor  # [L, B, D]

    def layer(self, number: int) -> torch.Tensor:
        """Embeddings [B, D] of one layer."""
        try:
            return self.embeddings[self.layers.index(number)]
        except ValueError:
            raise KeyError(
                f"layer {number} was not read out; available: {list(self.layers)}"
            ) from None

    @property
    def final(self) -> torch.Tensor:
        return self.embeddings[-1]


@runtime_checkable
class VisionReadout(Protocol):
    """An image tower that can read any of its layers out through its own head."""

    name: str  # the model spec it was loaded from
    depth: int  # N, number of transformer blocks
    embed_dim: int  # D of the image embedding
    fingerprint: str  # identifies the weights (for caches)
    image_transform: ImageTransform  # CPU-side preprocessing of one image (picklable)

    def preprocess(self, images: Sequence[Image.Image]) -> Batch:
        """The model's own preprocessing of RGB PIL images into a batch of inputs on the
        model's device: ``image_transform`` per image, stacked, moved."""

    def forward_layers(self, batch: Batch, layers: Sequence[int]) -> LayerEmbeddings:
        """One backbone pass -> embeddings of ``layers`` plus N, as [L, B, D]."""

    def image_embedding(self, batch: Batch) -> torch.Tensor:
        """The library's own image embedding [B, D] (the baseline)."""

    def to(self, device: Any = None, dtype: Any = None) -> VisionReadout:
        """Move/cast the model; returns self."""


@runtime_checkable
class TextEncoder(Protocol):
    """The paired text tower."""

    name: str
    embed_dim: int
    fingerprint: str

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings [C, D] of ``texts`` with the model's own tokenizer settings (unnormalised)."""

    def to(self, device: Any = None, dtype: Any = None) -> TextEncoder:
        """Move/cast the text tower; returns self (the fingerprint follows the new dtype)."""


@dataclass
class LoadedModel:
    """A vision readout, its text tower and its learned logit scale (log space)."""

    vision: VisionReadout
    text: TextEncoder | None
    logit_scale: float | None  # tau = 1 / exp(logit_scale); None when the model has none

    @property
    def tau(self) -> float:
        return (
            1.0
            if self.logit_scale is None
            else float(torch.tensor(self.logit_scale).exp().reciprocal())
        )
