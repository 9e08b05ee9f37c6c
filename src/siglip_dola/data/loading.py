"""What loader workers hand to the embedding pipeline (:mod:`siglip_dola.embeddings`): batches
of model inputs with their positions, labels and skips, and the protocol of sources read block
by block (webdataset shards). It sits below both the data formats and the pipeline, so that
neither imports the other's module."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from siglip_dola.data.images import ImageError, Skipped

if TYPE_CHECKING:
    import torch

    from siglip_dola.readout.base import Batch, ImageTransform, Sample

__all__ = ["LoadedBatch", "SourceBlock", "StreamingSource", "load_and_transform"]


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
    except ImageError as exc:
        return None, Skipped(source, str(exc))
    except Exception as exc:  # the model's processor refused this image
        return None, Skipped(source, f"preprocessing failed ({type(exc).__name__}: {exc})")
