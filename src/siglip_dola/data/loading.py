"""What loader workers hand to the embedding pipeline (:mod:`siglip_dola.embeddings`): batches
of model inputs with their positions, labels and skips, and the protocol of sources read block
by block (webdataset shards). It sits below both the data formats and the pipeline, so that
neither imports the other's module."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from siglip_dola.data.images import ImageError, Skipped

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from siglip_dola.readout.base import Batch, ImageTransform, Sample

__all__ = [
    "BATCH_TRANSFORM_PIXELS",
    "ImageItem",
    "LoadedBatch",
    "SourceBlock",
    "StreamingSource",
    "load_and_transform",
    "load_batch",
]

# Images decoded before one batched transform call, at most (in pixels, ~48 MB of RGB): the
# call's fixed cost is shared without holding a whole batch of large photos in memory.
BATCH_TRANSFORM_PIXELS = 16_000_000


@dataclass
class LoadedBatch:
    """One batch as a loader worker prepared it: the model inputs of the images that could be
    used (stacked), their positions in the source and labels, the images skipped and why, and
    whether it is the last batch of its cache block."""

    block: int
    positions: list[int]
    labels: list[int]
    batch: Batch | None
    skipped: list[Skipped]
    last: bool

    def pin_memory(self) -> LoadedBatch:
        if self.batch is not None:
            self.batch = {k: v.pin_memory() for k, v in self.batch.items()}
        return self


@dataclass(frozen=True)
class SourceBlock:
    """A cache block of a source: its number and, where known before reading, its size."""

    number: int
    size: int | None


@runtime_checkable
class StreamingSource(Protocol):
    """An image source read block by block in data order instead of by random access (for
    example webdataset shards, one block each). ``block_batches`` gives a dataset (map-style
    or iterable) whose items are :class:`LoadedBatch` es of the named blocks, each block's
    batches in order and its last one flagged; with several loader workers, batches of
    different blocks may interleave."""

    name: str
    class_names: tuple[str, ...]
    skipped: list[Skipped]

    def fingerprint(self) -> str: ...

    def cache_blocks(self) -> list[SourceBlock]: ...

    def block_batches(
        self, blocks: Sequence[int], batch_size: int, transform: ImageTransform
    ) -> torch.utils.data.Dataset: ...


def load_and_transform(
    load: Any, transform: ImageTransform, source: str
) -> tuple[Sample | None, Skipped | None]:
    """``transform(load())``, or the reason the image cannot be used (a counted skip)."""
    try:
        return transform(load()), None
    except Exception as exc:
        return None, Skipped(source, _skip_reason(exc))


def _skip_reason(exc: Exception) -> str:
    if isinstance(exc, ImageError):
        return str(exc)
    return f"preprocessing failed ({type(exc).__name__}: {exc})"  # the processor refused it


# (position, source, the image's loader): what a batch is made of
ImageItem = tuple[int, str, Callable[[], "Image.Image"]]


def load_batch(
    items: Sequence[ImageItem],
    transform: ImageTransform,
    max_pixels: int = BATCH_TRANSFORM_PIXELS,
) -> tuple[list[int], Batch | None, list[tuple[int, Skipped]]]:
    """(the positions used, their stacked model inputs, (position, skip) of the others) of
    ``items`` in position order.

    A transform with a ``batch`` method (the transformers processors) gets the decoded images
    in chunks of up to ``max_pixels`` pixels, one call each; if a chunk's call fails, its
    images go one at a time, so only the image at fault is skipped. Other transforms get one
    image at a time, as it is decoded."""
    if getattr(transform, "batch", None) is None:
        return _one_at_a_time(items, transform)
    return _in_chunks(items, transform, max_pixels)


def _one_at_a_time(
    items: Sequence[ImageItem], transform: ImageTransform
) -> tuple[list[int], Batch | None, list[tuple[int, Skipped]]]:
    from siglip_dola.readout.base import collate_samples

    samples, positions, skipped = [], [], []
    for position, source, load in items:
        sample, skip = load_and_transform(load, transform, source)
        if skip is None:
            samples.append(sample)
            positions.append(position)
        else:
            skipped.append((position, skip))
    return positions, collate_samples(samples) if samples else None, skipped


def _in_chunks(
    items: Sequence[ImageItem], transform: ImageTransform, max_pixels: int
) -> tuple[list[int], Batch | None, list[tuple[int, Skipped]]]:
    from siglip_dola.readout.base import transform_images

    parts: list[Batch] = []
    positions: list[int] = []
    skipped: list[tuple[int, Skipped]] = []
    chunk: list[tuple[int, str, Image.Image]] = []
    pixels = 0

    def flush() -> None:
        try:
            parts.append(transform_images(transform, [image for _, _, image in chunk]))
            positions.extend(position for position, _, _ in chunk)
        except Exception:  # find the image at fault: the others are used
            decoded = [(p, source, lambda im=im: im) for p, source, im in chunk]
            kept, batch, skips = _one_at_a_time(decoded, transform)
            positions.extend(kept)
            parts.extend([batch] if batch is not None else [])
            skipped.extend(skips)
        chunk.clear()

    for position, source, load in items:
        try:
            image = load()
        except Exception as exc:
            skipped.append((position, Skipped(source, _skip_reason(exc))))
            continue
        chunk.append((position, source, image))
        pixels += image.width * image.height
        if pixels >= max_pixels:
            flush()
            pixels = 0
    if chunk:
        flush()
    skipped.sort(key=lambda entry: entry[0])
    return positions, _concat(parts), skipped


def _concat(parts: list[Batch]) -> Batch | None:
    if len(parts) <= 1:
        return parts[0] if parts else None
    import torch

    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
