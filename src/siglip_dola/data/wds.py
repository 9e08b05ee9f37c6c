"""clip_benchmark's webdataset folders (``wds:DIR``), streamed shard by shard.

The layout clip_benchmark's ``clip_benchmark_export_wds`` writes and its ``wds/`` data sets
read::

    DIR/classnames.txt                          one class name per line, line index = label
    DIR/zeroshot_classification_templates.txt   one template per line ({c}), optional
    DIR/dataset_type.txt                        "retrieval" for caption sets, optional
    DIR/<split>/nshards.txt                     the number of shards N
    DIR/<split>/0.tar ... DIR/<split>/{N-1}.tar samples: an image under webp/png/jpg/jpeg,
                                                the label in cls (retrieval: captions in txt,
                                                one per line)

Opening a folder indexes its shards (tar headers and the small ``cls``/``txt`` members only;
image data is not read): labels are checked against the class names before any model
loads, and each shard's sample count is known. The images are then streamed by the
``webdataset`` library, one cache block per shard (:class:`WebDatasetSource` implements
:class:`siglip_dola.data.loading.StreamingSource`): an interrupted run resumes shard by shard,
data-parallel ranks take contiguous ranges of shards, and several loader workers take whole
shards each. A sample's position is its index in data order (shard by shard). Samples
without an image or a label, and images that do not decode, are counted, listed skips.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from siglip_dola.data.classes import ClassNames, class_name_warnings, names_of_wordnet_ids
from siglip_dola.data.imagenet import is_wordnet_id
from siglip_dola.data.images import MAX_PIXELS, Skipped
from siglip_dola.data.templates import read_template_file
from siglip_dola.data.wds_index import IMAGE_KEYS, ShardIndex, index_shard

__all__ = [
    "CLASSNAMES_FILE",
    "IMAGE_KEYS",
    "NSHARDS_FILE",
    "TEMPLATES_FILE",
    "TYPE_FILE",
    "ShardIndex",
    "WebDatasetSource",
    "is_wds_folder",
    "load_wds",
    "wds_dataset_type",
]

CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
TYPE_FILE = "dataset_type.txt"
NSHARDS_FILE = "nshards.txt"


def is_wds_folder(path: Path) -> bool:
    """A folder in clip_benchmark's layout: some ``<split>/nshards.txt``."""
    return path.is_dir() and any((p / NSHARDS_FILE).is_file() for p in path.iterdir() if p.is_dir())


def wds_dataset_type(root: Path) -> str:
    """``classification`` (the default), ``retrieval`` or ``multilabel`` (dataset_type.txt)."""
    path = root / TYPE_FILE
    if not path.is_file():
        return "classification"
    return path.read_text(encoding="utf-8").strip().lower() or "classification"


def _read_lines(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _shard_paths(root: Path, split: str) -> list[Path]:
    split_dir = root / split
    nshards = split_dir / NSHARDS_FILE
    if not nshards.is_file():
        splits = sorted(p.name for p in root.iterdir() if (p / NSHARDS_FILE).is_file())
        raise ValueError(
            f"{nshards} not found: a clip_benchmark webdataset folder holds "
            f"DIR/<split>/{NSHARDS_FILE} (the shard count) beside 0.tar ... N-1.tar"
            + (f"; splits here: {', '.join(splits)} (--split)" if splits else "")
        )
    text = nshards.read_text(encoding="utf-8").strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(
            f"{nshards} must hold the number of shards (an integer >= 1), got {text!r}"
        )
    paths = [split_dir / f"{i}.tar" for i in range(int(text))]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise ValueError(
            f"{split_dir} lacks {len(missing)} of the {len(paths)} shards that {nshards} counts: "
            f"{', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
        )
    return paths


def _index_split(
    root: Path, split: str, retrieval: bool
) -> tuple[list[ShardIndex], list[list[str]], list[tuple[Path, str, int]]]:
    shards, captions, labels = [], [], []
    offset = 0
    for number, path in enumerate(_shard_paths(root, split)):
        shard, texts, keyed = index_shard(path, number, offset, retrieval)
        shards.append(shard)
        captions.extend(texts)
        labels.extend((path, key, label) for key, label in keyed)
        offset += shard.count
    return shards, captions, labels


class WebDatasetSource:
    """A clip_benchmark webdataset split as a streaming source (see the module docstring).

    ``len()`` counts the samples (skipped ones included); ``labels`` [N] holds each sample's
    class index (-1 where it is skipped; 0 for caption sets).
    """

    def __init__(
        self,
        name: str,
        class_names: tuple[str, ...],
        shards: list[ShardIndex],
        *,
        templates: tuple[str, ...] | None = None,
        warnings: list[str] | None = None,
        max_pixels: int = MAX_PIXELS,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.class_names = class_names
        self.shards = shards
        self.templates = templates
        self.warnings = list(warnings or [])
        self.max_pixels = max_pixels
        self.metadata = dict(metadata or {})
        self.skipped: list[Skipped] = []  # skips are found per shard, while streaming

    def __len__(self) -> int:
        return sum(shard.count for shard in self.shards)

    @property
    def labels(self) -> np.ndarray:
        parts = [shard.labels for shard in self.shards]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def fingerprint(self) -> str:
        """Identifies the class names, the shards (path, size, mtime) and the pixel limit."""
        h = hashlib.sha256()
        h.update(json.dumps([list(self.class_names), self.max_pixels]).encode())
        for shard in self.shards:
            h.update(f"{shard.path}:{shard.size}:{shard.mtime_ns}".encode())
        return h.hexdigest()[:16]

    def cache_blocks(self) -> list[Any]:
        from siglip_dola.data.loading import SourceBlock

        return [SourceBlock(shard.number, shard.count) for shard in self.shards]

    def block_batches(self, blocks: Sequence[int], batch_size: int, transform: Any) -> Any:
        """An iterable dataset of the named shards' ``LoadedBatch`` es (workers take whole
        shards; each shard's batches in order, its last one flagged)."""
        from siglip_dola.data.wds_stream import ShardBatches

        return ShardBatches(
            [self.shards[b] for b in blocks], batch_size, transform, self.max_pixels
        )


def load_wds(
    root: Path | str,
    classes: ClassNames | None = None,
    *,
    split: str = "test",
    name: str | None = None,
    max_pixels: int = MAX_PIXELS,
    retrieval: bool | None = None,
) -> tuple[WebDatasetSource, list[list[str]]]:
    """Open a clip_benchmark webdataset folder: (the source, the captions of each sample for
    a caption set, else empty lists). ``retrieval`` checks the folder's type."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"webdataset folder {root} does not exist")
    kind = wds_dataset_type(root)
    if kind not in ("classification", "retrieval"):
        raise ValueError(
            f"{root / TYPE_FILE} says {kind!r}: only classification and retrieval sets are read"
        )
    if retrieval is not None and retrieval != (kind == "retrieval"):
        task = "zeroshot_retrieval" if kind == "retrieval" else "zeroshot_classification"
        raise ValueError(f"{root} is a {kind} set ({TYPE_FILE}): evaluate it with --task {task}")
    is_retrieval = kind == "retrieval"
    shards, captions, labels = _index_split(root, split, is_retrieval)
    names: tuple[str, ...] = ()
    templates = None
    if not is_retrieval:
        names = _class_names(root, classes)
        _check_labels(root, names, classes, labels)
        if (root / TEMPLATES_FILE).is_file():
            templates = read_template_file(root / TEMPLATES_FILE)
    return (
        WebDatasetSource(
            name or f"wds/{root.name.removeprefix('wds_')}",
            names,
            shards,
            templates=templates,
            warnings=class_name_warnings(names),
            max_pixels=max_pixels,
            metadata={
                "format": "wds",
                "path": str(root),
                "split": split,
                "shards": len(shards),
                "dataset_type": kind,
            },
        ),
        captions,
    )


def _class_names(root: Path, classes: ClassNames | None) -> tuple[str, ...]:
    path = root / CLASSNAMES_FILE
    own = tuple(_read_lines(path)) if path.is_file() else None
    if classes is not None and classes.wnids is None:  # names by label index
        if own is not None and len(classes.names) != len(own):
            raise ValueError(
                f"{classes.origin} names {len(classes.names)} classes but {path} names {len(own)}"
            )
        return classes.names
    if own is None:
        if classes is None:
            raise ValueError(f"{path} not found: name the classes with --classes (by label index)")
        return classes.names  # a WordNet-id mapping, in its order
    if all(is_wordnet_id(n) for n in own):
        return names_of_wordnet_ids(own, classes, str(path)) or own
    if classes is not None:
        raise ValueError(f"{classes.origin} maps WordNet ids, but {path} names classes by name")
    return own


def _check_labels(
    root: Path,
    names: tuple[str, ...],
    classes: ClassNames | None,
    labels: list[tuple[Path, str, int]],
) -> None:
    """Every label must name a class: the error names the file that has too few."""
    bad = [(path, key, label) for path, key, label in labels if label >= len(names)]
    if bad:
        path, key, label = bad[0]
        origin = classes.origin if classes is not None else str(root / CLASSNAMES_FILE)
        top = max(label for _, _, label in bad)
        raise ValueError(
            f"{origin} names {len(names)} classes (labels 0..{len(names) - 1}) but {len(bad)} "
            f"sample(s) have larger labels (up to {top}; first: {path.name} sample {key}, "
            f"label {label})"
        )
