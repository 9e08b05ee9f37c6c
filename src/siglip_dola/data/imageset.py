""":class:`ImageSet`: a labelled image set with random access, whatever the files' format."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from siglip_dola.data.images import MAX_PIXELS, Skipped, load_image, to_rgb

__all__ = ["ImageItems", "ImageRef", "ImageSet"]


@runtime_checkable
class ImageRef(Protocol):
    """An image that is neither a file path nor an array (a row of a table, a tar member):
    where it comes from (for messages) and how to decode it."""

    @property
    def source(self) -> str: ...

    def load(self, max_pixels: int) -> Image.Image: ...


@runtime_checkable
class ImageItems(Protocol):
    """A lazy sequence of :class:`ImageRef` (a table's image column, say) that can take a
    subset without decoding and identify itself without reading every item."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> ImageRef: ...

    def take(self, indices: Sequence[int]) -> ImageItems: ...

    def fingerprint(self) -> str: ...


@dataclass
class ImageSet:
    """A labelled image set. Items are file paths, in-memory uint8 arrays [H, W] / [H, W, 3],
    or :class:`ImageRef` s (``items`` may be a lazy :class:`ImageItems`).

    ``warnings`` are problems with the set as a whole that do not stop a run (class names that
    are all numbers, say): commands print them and write them into the results.
    ``max_pixels`` is the pixel limit its images are decoded under. ``metadata`` says where
    the set came from (format, path, split, columns) for the results file.
    """

    name: str
    class_names: tuple[str, ...]
    items: Sequence[Path | np.ndarray | ImageRef] | ImageItems
    labels: np.ndarray  # int64 [N], indices into class_names
    templates: tuple[str, ...] | None = None  # the set's own evaluation templates, if any
    skipped: list[Skipped] = field(default_factory=list)  # problems found while listing
    warnings: list[str] = field(default_factory=list)
    max_pixels: int = MAX_PIXELS
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    def source(self, index: int) -> str:
        item = self.items[index]
        if isinstance(item, Path):
            return str(item)
        if isinstance(item, np.ndarray):
            return f"{self.name}[{index}]"
        return item.source

    def image(self, index: int) -> Image.Image:
        """The RGB image at ``index``; raises ``ImageError`` for an unusable one."""
        item = self.items[index]
        if isinstance(item, Path):
            return load_image(item, self.max_pixels)
        if isinstance(item, np.ndarray):
            return to_rgb(Image.fromarray(item))
        return item.load(self.max_pixels)

    def subset(self, indices: Sequence[int], name: str | None = None) -> ImageSet:
        idx = [int(i) for i in indices]
        if isinstance(self.items, ImageItems):
            items = self.items.take(idx)
        else:
            items = [self.items[i] for i in idx]
        return ImageSet(
            name=name or self.name,
            class_names=self.class_names,
            items=items,
            labels=self.labels[idx],
            templates=self.templates,
            skipped=list(self.skipped),
            warnings=list(self.warnings),
            max_pixels=self.max_pixels,
            metadata=dict(self.metadata),
        )

    def split_indices(self, fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
        """Seeded, class-stratified (validation, rest) positions."""
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
        rng = np.random.default_rng(seed)
        val: list[int] = []
        for c in range(len(self.class_names)):
            members = np.flatnonzero(self.labels == c)
            rng.shuffle(members)
            val.extend(members[: int(round(len(members) * fraction))].tolist())
        val_set = set(val)
        return sorted(val), [i for i in range(len(self)) if i not in val_set]

    def split(self, fraction: float, seed: int = 0) -> tuple[ImageSet, ImageSet]:
        """Seeded, class-stratified (validation, rest) subsets."""
        val, rest = self.split_indices(fraction, seed)
        return self.subset(val, f"{self.name}:val"), self.subset(rest, f"{self.name}:test")

    def fingerprint(self) -> str:
        """Identifies the items and labels (paths and sizes, array bytes, or the items' own
        fingerprint) and a pixel limit other than the default."""
        h = hashlib.sha256()
        h.update(json.dumps(list(self.class_names)).encode())
        h.update(self.labels.astype(np.int64).tobytes())
        if self.max_pixels != MAX_PIXELS:
            h.update(f"max_pixels:{self.max_pixels}".encode())
        if isinstance(self.items, ImageItems):
            h.update(self.items.fingerprint().encode())
            return h.hexdigest()[:16]
        for item in self.items:
            if isinstance(item, Path):
                stat = item.stat() if item.exists() else None
                h.update(
                    f"{item}:{stat.st_size if stat else -1}:{stat.st_mtime_ns if stat else -1}".encode()
                )
            elif isinstance(item, np.ndarray):
                h.update(np.ascontiguousarray(item).tobytes())
            else:
                h.update(item.source.encode())
        return h.hexdigest()[:16]
