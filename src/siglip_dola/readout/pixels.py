"""8-bit pixel transfer: the model's transform split at its last 8-bit step.

A SigLIP transform resizes (and crops or pads) an 8-bit image, then maps every 8-bit value to a
float of its channel (``x / 255``, then ``(x - mean) / std``). Loader workers can stop after the
resize and send uint8 pixels - a quarter of float32's bytes through shared memory, the pinned
copy and the host-to-device link - and the device can finish the job. Redoing the float
arithmetic there would not be safe (a GPU divides by a scalar as a multiplication by its
reciprocal, which can round differently), so the device only looks values up: a [3, 256] table
of the float32 numbers the transform's own code gives for each channel and each 8-bit value,
computed once on the CPU. Indexing does no arithmetic, so the pixels the model sees are the
same numbers on every device.

Each split is verified when it is built: the transform and the split must give bit-identical
pixels on probe images, else there is no split and pixels travel as float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from siglip_dola.readout.base import Batch, Sample

__all__ = ["Uint8Pixels", "ramp_image", "split_torchvision"]

Geometry = Callable[[Image.Image], torch.Tensor]  # RGB image -> uint8 [3, H, W]


def ramp_image() -> Image.Image:
    """A 16 x 16 RGB image whose pixel (r, c) is v = 16 r + c in every channel: each 8-bit
    value once, so a transform's output reshaped to [3, 256] is its lookup table. (Square:
    a one-pixel-high image would look channels-first to some processors.)"""
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    return Image.fromarray(np.repeat(levels[:, :, None], 3, axis=2), mode="RGB")


def _probe_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(61, 47), (20, 90), (128, 128)]
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")
        for w, h in sizes
    ]


class Uint8Pixels:
    """A model transform as uint8 pixels (in the workers) + a lookup table (on the device).

    ``geometry`` maps one RGB image to uint8 [3, H, W]; ``table`` [3, 256] float32 holds the
    transform's value of each channel's 8-bit levels. Picklable, like any image transform.
    """

    def __init__(self, geometry: Geometry, table: torch.Tensor, key: str = "pixel_values") -> None:
        if table.shape != (3, 256) or table.dtype != torch.float32:
            raise ValueError(f"expected a float32 [3, 256] table, got {table.dtype} {table.shape}")
        self.geometry = geometry
        self.table = table.contiguous()
        self.key = key
        self._offsets = (torch.arange(3, dtype=torch.int32) * 256).view(1, 3, 1, 1)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_on_device"] = {}
        return state

    def __call__(self, image: Image.Image) -> Sample:
        pixels = self.geometry(image)
        if pixels.dtype != torch.uint8 or pixels.ndim != 3 or pixels.shape[0] != 3:
            raise ValueError(
                f"the 8-bit half of the transform gave {pixels.dtype} {tuple(pixels.shape)}; "
                f"expected uint8 [3, H, W]"
            )
        return {self.key: pixels}

    def finish(self, batch: Batch) -> Batch:
        """uint8 pixels [B, 3, H, W] (on any device) -> the transform's float32 values there."""
        pixels = batch[self.key]
        device = pixels.device
        if device not in self._on_device:
            self._on_device[device] = (self.table.reshape(-1).to(device), self._offsets.to(device))
        table, offsets = self._on_device[device]
        return {**batch, self.key: table[pixels.int() + offsets]}

    @classmethod
    def verified(
        cls,
        geometry: Geometry,
        ramp_values: Any,
        transform: Callable[[Image.Image], torch.Tensor],
        key: str = "pixel_values",
    ) -> Uint8Pixels | None:
        """The split whose table is ``ramp_values`` (the transform's float half applied to
        :func:`ramp_image`, [3, 16, 16]) if it gives ``transform``'s pixels exactly, else None."""
        if not isinstance(ramp_values, torch.Tensor) or ramp_values.shape != (3, 16, 16):
            return None
        if ramp_values.dtype != torch.float32:
            return None
        split = cls(geometry, ramp_values.reshape(3, 256), key)
        return split if split.matches(transform) else None

    def matches(self, transform: Callable[[Image.Image], torch.Tensor]) -> bool:
        """True when the split gives bit-identical pixels to ``transform`` (image -> float
        [3, H, W]) on the probe images."""
        for image in _probe_images():
            want = transform(image)
            got = self.finish({self.key: self(image)[self.key][None]})[self.key][0]
            if want.dtype != torch.float32 or not torch.equal(want, got):
                return False
        return True


class _PilGeometry:
    """The PIL steps of a torchvision pipeline, then the 8-bit image as a [3, H, W] tensor."""

    def __init__(self, steps: Sequence[Callable[[Any], Any]]) -> None:
        self.steps = list(steps)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        for step in self.steps:
            image = step(image)
        if not isinstance(image, Image.Image) or image.mode != "RGB":
            raise ValueError(f"the transform's resize gave {type(image).__name__}, not RGB")
        return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def split_torchvision(transform: Any) -> Uint8Pixels | None:
    """The split of a torchvision ``Compose`` of PIL steps, then ``ToTensor`` (timm's
    ``MaybeToTensor`` too) and ``Normalize`` (timm and open_clip eval transforms); ``None`` for
    any other pipeline, or one whose split does not give identical pixels."""
    from torchvision import transforms as T

    steps = getattr(transform, "transforms", None)
    if not isinstance(transform, T.Compose) or not steps:
        return None
    first = next((i for i, s in enumerate(steps) if isinstance(s, T.ToTensor)), None)
    if first is None:
        return None
    tail = steps[first:]
    if not all(isinstance(s, (T.ToTensor, T.Normalize)) for s in tail):
        return None
    return Uint8Pixels.verified(
        _PilGeometry(steps[:first]), T.Compose(tail)(ramp_image()), transform
    )
