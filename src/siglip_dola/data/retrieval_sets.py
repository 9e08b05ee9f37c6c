"""Retrieval data: images with captions.

``bundled:photos``; a CSV (columns image,caption) / JSON list of (image, caption(s)) pairs;
the COCO / Flickr30k Karpathy-split JSON (``dataset_coco.json``, ``dataset_flickr30k.json``:
``images[].filename``, ``split``, ``sentences[].raw``; the first five captions of each
image of the split, images under ``--images-root``); clip_benchmark's webdataset caption sets
(``dataset_type.txt`` = retrieval, captions in ``txt``, one per line).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from siglip_dola.data.images import MAX_PIXELS
from siglip_dola.data.imageset import ImageSet
from siglip_dola.data.label_files import find_column, read_table
from siglip_dola.data.wds import WebDatasetSource, load_wds
from siglip_dola.io import read_json

__all__ = [
    "CAPTIONS_PER_IMAGE",
    "KARPATHY_NAMES",
    "RetrievalSet",
    "is_karpathy_json",
    "load_caption_pairs",
    "load_karpathy_json",
    "load_bundled_photos",
    "load_wds_retrieval",
]

CAPTIONS_PER_IMAGE = 5  # the Karpathy-split protocol: five captions per image
# The Karpathy files' "dataset" field -> clip_benchmark's data set names.
KARPATHY_NAMES = {"coco": "mscoco_captions", "flickr30k": "flickr30k", "flickr8k": "flickr8k"}


@dataclass
class RetrievalSet:
    """Images with one or more captions each; ``caption_image[t]`` is the position of
    caption t's image in ``images`` (an :class:`ImageSet`, or a streaming source)."""

    name: str
    images: ImageSet | WebDatasetSource
    captions: list[str]
    caption_image: np.ndarray  # int64 [T]
    image_count: int | None = None  # images counted (default: len(images))
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return len(self.images) if self.image_count is None else self.image_count

    def image_captions(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in range(self.num_images)]
        for t, i in enumerate(self.caption_image.tolist()):
            out[i].append(t)
        return out


def _from_pairs(
    name: str,
    pairs: list[tuple[Any, str]],
    keys: list[Any],
    items: list,
    max_pixels: int = MAX_PIXELS,
    metadata: dict[str, Any] | None = None,
) -> RetrievalSet:
    index = {key: i for i, key in enumerate(keys)}
    captions = [caption for _, caption in pairs]
    owner = np.asarray([index[key] for key, _ in pairs], dtype=np.int64)
    images = ImageSet(name, (), items, np.arange(len(items), dtype=np.int64), max_pixels=max_pixels)
    return RetrievalSet(name, images, captions, owner, metadata=dict(metadata or {}))


def load_bundled_photos() -> RetrievalSet:
    """scikit-image's sample photos, captioned by the first line of their docstrings."""
    try:
        from skimage import data as skdata
    except ImportError:
        raise ValueError("bundled:photos needs scikit-image: pip install scikit-image") from None
    names = (
        "astronaut",
        "camera",
        "chelsea",
        "coffee",
        "coins",
        "hubble_deep_field",
        "immunohistochemistry",
        "moon",
        "page",
        "rocket",
        "retina",
        "grass",
        "gravel",
        "brick",
        "clock",
        "cell",
        "colorwheel",
        "text",
        "horse",
        "logo",
    )
    pairs, keys, items = [], [], []
    for name in names:
        loader = getattr(skdata, name, None)
        if loader is None:
            continue
        try:
            image = np.asarray(loader())
        except Exception:  # a sample that needs a download in this scikit-image version
            continue
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        caption = (inspect.getdoc(loader) or name).splitlines()[0].strip()
        keys.append(name)
        items.append(image)
        pairs.append((name, caption))
        pairs.append((name, f"an image called {name.replace('_', ' ')}."))
    if not items:
        raise ValueError("scikit-image provides none of its sample photos here")
    return _from_pairs("photos", pairs, keys, items, metadata={"format": "bundled"})


def load_caption_pairs(
    path: Path, *, name: str | None = None, max_pixels: int = MAX_PIXELS
) -> RetrievalSet:
    """A CSV/TSV/JSONL (columns image, caption) or JSON list of {image, caption | captions}
    rows; an image may appear in several rows. Relative paths resolve against the file's
    folder."""
    columns, rows = read_table(path)
    if not rows:
        raise ValueError(f"{path} lists no (image, caption) pairs")
    image_col = find_column(
        columns, None, ("image", "filepath", "path", "file", "filename"), "image path",
        "an 'image' header", path,
    )  # fmt: skip
    if "caption" not in columns and "captions" not in columns:
        raise ValueError(f"{path}: no 'caption' (or 'captions') column; columns found: {columns}")
    pairs = []
    for where, row in rows:
        captions = row.get("captions", [row.get("caption")])
        if isinstance(captions, str):
            captions = [captions]
        for caption in captions:
            if not isinstance(caption, str) or not caption.strip():
                raise ValueError(f"{path}, {where}: empty caption (or none)")
            pairs.append((str(row[image_col]), caption))
    keys = list(dict.fromkeys(image for image, _ in pairs))
    items = [Path(k) if Path(k).is_absolute() else path.parent / k for k in keys]
    return _from_pairs(
        name or path.stem, pairs, keys, items, max_pixels, {"format": "pairs", "path": str(path)}
    )


def is_karpathy_json(path: Path) -> bool:
    """A JSON object with an ``images`` list (the Karpathy-split files), not a list of pairs."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    with path.open(encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    return head.startswith("{") and '"images"' in head


def load_karpathy_json(
    path: Path,
    *,
    split: str = "test",
    images_root: Path | None = None,
    name: str | None = None,
    max_pixels: int = MAX_PIXELS,
) -> RetrievalSet:
    """The images of ``split`` with their first five captions (``sentences[].raw``); an image
    is ``images_root/<filepath>/<filename>`` (COCO) or ``images_root/<filename>``."""
    data = read_json(path)
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected the Karpathy-split layout {{'images': [...]}}")
    root = Path(images_root) if images_root is not None else path.parent
    if not root.is_dir():
        raise ValueError(f"--images-root {root} is not a folder")
    chosen = [e for e in entries if isinstance(e, dict) and e.get("split") == split]
    if not chosen:
        counts: dict[str, int] = {}
        for e in entries:
            if isinstance(e, dict):
                counts[str(e.get("split"))] = counts.get(str(e.get("split")), 0) + 1
        raise ValueError(f"{path} has no images in split {split!r}; splits: {counts} (--split)")
    pairs, keys, items = [], [], []
    for number, entry in enumerate(chosen):
        filename = entry.get("filename")
        sentences = entry.get("sentences")
        if not isinstance(filename, str) or not isinstance(sentences, list):
            raise ValueError(
                f"{path}: image {number} of split {split!r} lacks filename or sentences"
            )
        captions = [s.get("raw", "").strip() for s in sentences if isinstance(s, dict)]
        captions = [c for c in captions if c][:CAPTIONS_PER_IMAGE]
        if not captions:
            raise ValueError(f"{path}: image {filename} has no caption (sentences[].raw)")
        folder = entry.get("filepath")
        image = root / folder / filename if folder else root / filename
        if folder and not image.exists() and (root / filename).exists():
            image = root / filename
        keys.append(number)
        items.append(image)
        pairs.extend((number, caption) for caption in captions)
    default = KARPATHY_NAMES.get(str(data.get("dataset", "")).lower(), path.stem)
    return _from_pairs(
        name or default,
        pairs,
        keys,
        items,
        max_pixels,
        {"format": "karpathy json", "path": str(path), "split": split, "images_root": str(root)},
    )


def load_wds_retrieval(
    root: Path,
    *,
    split: str = "test",
    name: str | None = None,
    max_pixels: int = MAX_PIXELS,
) -> RetrievalSet:
    """A clip_benchmark webdataset caption set: its images stream; the captions (small
    ``txt`` members) are read when the folder is opened."""
    source, captions = load_wds(root, split=split, name=name, max_pixels=max_pixels, retrieval=True)
    texts = [caption for sample in captions for caption in sample]
    owner = np.asarray(
        [position for position, sample in enumerate(captions) for _ in sample], dtype=np.int64
    )
    if not texts:
        raise ValueError(f"{root} ({split}) holds no captioned image")
    return RetrievalSet(source.name, source, texts, owner, metadata=dict(source.metadata))
