"""Hugging Face ``datasets`` (``datasets:PATH``): a ``save_to_disk`` folder (Dataset or
DatasetDict), parquet / arrow files or a folder of them, or a hub id (network or cache).

The image column is the one with the ``Image`` feature and the label column the one with
the ``ClassLabel`` feature, unless ``--image-column`` / ``--label-column`` name them. Class
names come from the ``ClassLabel`` names (WordNet ids map to the ImageNet names); integer
label columns map through ``--classes`` by index, string label columns are class names.
Images are decoded row by row when read (in the loader workers), under the set's pixel
limit: a row that does not decode is a counted skip.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from siglip_dola.data.classes import (
    ClassNames,
    class_name_warnings,
    is_class_number,
    names_by_index,
    names_of_wordnet_ids,
)
from siglip_dola.data.imagenet import is_wordnet_id
from siglip_dola.data.images import MAX_PIXELS, ImageError, load_image
from siglip_dola.data.imageset import ImageSet

__all__ = ["DatasetImages", "is_saved_dataset", "load_hf_dataset"]

DEFAULT_SPLIT = "test"
SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes
TABLE_SUFFIXES = (".parquet", ".arrow")


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in SAVED_MARKERS)


def _datasets():
    try:
        import datasets
    except ImportError:  # pragma: no cover - a dependency of the package
        raise ValueError(
            "datasets: data sets need the 'datasets' package: pip install datasets"
        ) from None
    return datasets


@dataclass(frozen=True)
class DatasetImage:
    """Row ``row`` of a table's image column (encoded bytes or a file path)."""

    images: DatasetImages
    row: int

    @property
    def source(self) -> str:
        return f"{self.images.name}[{self.row}]"

    def load(self, max_pixels: int) -> Image.Image:
        value = self.images.table[int(self.row)][self.images.column]
        if value is None:
            raise ImageError("no image in this row")
        if value.get("bytes") is not None:
            return load_image(value["bytes"], max_pixels)
        if value.get("path"):
            return load_image(value["path"], max_pixels)
        raise ImageError("no image in this row")


class DatasetImages:
    """The image column of a ``datasets.Dataset`` (not decoded by ``datasets``), as the
    lazy items of an :class:`ImageSet`: ``rows`` are the rows it holds."""

    def __init__(self, table: Any, column: str, name: str, rows: np.ndarray | None = None):
        self.table = table
        self.column = column
        self.name = name
        self.rows = np.arange(len(table), dtype=np.int64) if rows is None else rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> DatasetImage:
        return DatasetImage(self, int(self.rows[index]))

    def take(self, indices: Sequence[int]) -> DatasetImages:
        return DatasetImages(self.table, self.column, self.name, self.rows[list(indices)])

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{self.table._fingerprint}:{self.column}".encode())
        h.update(self.rows.tobytes())
        return h.hexdigest()[:16]


def _open(location: str, split: str | None) -> tuple[Any, str]:
    """(a ``datasets.Dataset``, a description of where it came from); ``datasets``' own
    progress bars stay off while it reads."""
    datasets = _datasets()
    quiet = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        return _open_quietly(datasets, location, split)
    finally:
        if not quiet:
            datasets.utils.enable_progress_bars()


def _open_quietly(datasets: Any, location: str, split: str | None) -> tuple[Any, str]:
    path = Path(location).expanduser()
    if path.is_dir():
        if is_saved_dataset(path):
            loaded = datasets.load_from_disk(str(path))
            return _pick_split(loaded, split, path), "save_to_disk folder"
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in TABLE_SUFFIXES)
        if not files:
            raise ValueError(
                f"{path} is neither a save_to_disk folder ({' or '.join(SAVED_MARKERS)}) nor "
                "a folder of .parquet / .arrow files"
            )
        loaded = datasets.load_dataset(str(path))
        return _pick_split(loaded, split, path), "folder of table files"
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".arrow":
            return datasets.Dataset.from_file(str(path)), "arrow file"
        if suffix == ".parquet":
            return datasets.load_dataset("parquet", data_files=str(path), split="train"), (
                "parquet file"
            )
        raise ValueError(f"datasets:{path}: expected a .parquet or .arrow file or a folder")
    if location.startswith((".", "/", "~")) or location.endswith(TABLE_SUFFIXES):
        raise ValueError(f"datasets:{location} does not exist")
    split = split or DEFAULT_SPLIT
    try:
        loaded = datasets.load_dataset(location, split=split)
    except Exception as exc:  # offline, unknown id, missing split: one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(
            f"datasets:{location} is no local path, and the hub could not give it "
            f"(split {split!r}): {type(exc).__name__}: {first}"
        ) from None
    return loaded, "hub"


def _pick_split(loaded: Any, split: str | None, path: Path) -> Any:
    """``split`` of a DatasetDict; without one, ``test``, or the only split there is."""
    datasets = _datasets()
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            split = (
                DEFAULT_SPLIT if DEFAULT_SPLIT in loaded or len(loaded) != 1 else next(iter(loaded))
            )
        if split not in loaded:
            raise ValueError(
                f"{path} has no split {split!r}; its splits: {', '.join(loaded)} (--split)"
            )
        return loaded[split]
    return loaded


def _column(
    features: Any, given: str | None, kind: type, what: str, flag: str, where: str
) -> str | None:
    columns = {name: type(feature).__name__ for name, feature in features.items()}
    if given is not None:
        if given not in features:
            raise ValueError(f"{where}: no column {given!r} ({flag}); columns: {columns}")
        return given
    found = [name for name, feature in features.items() if isinstance(feature, kind)]
    if len(found) > 1:
        raise ValueError(
            f"{where}: several {what} columns ({', '.join(found)}): pick one with {flag}"
        )
    return found[0] if found else None


def load_hf_dataset(
    location: str,
    classes: ClassNames | None = None,
    *,
    split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    max_pixels: int = MAX_PIXELS,
    name: str | None = None,
) -> ImageSet:
    """A Hugging Face data set as an :class:`ImageSet` (see the module docstring); ``split``
    defaults to ``test`` (or a folder's only split)."""
    datasets = _datasets()
    table, origin = _open(location, split)
    where = f"datasets:{location}"
    features = table.features
    columns = {n: type(f).__name__ for n, f in features.items()}
    image_col = _column(features, image_column, datasets.Image, "image", "--image-column", where)
    if image_col is None:
        raise ValueError(
            f"{where}: no Image column (name it with --image-column); columns: {columns}"
        )
    if not isinstance(features[image_col], datasets.Image):
        raise ValueError(
            f"{where}: column {image_col!r} is a {columns[image_col]}, not an Image column"
        )
    label_col = _column(
        features, label_column, datasets.ClassLabel, "ClassLabel", "--label-column", where
    )
    if label_col is None:
        label_col = next((c for c in ("label", "labels") if c in features), None)
    if label_col is None:
        raise ValueError(
            f"{where}: no ClassLabel column (name the label column with --label-column); "
            f"columns: {columns}"
        )
    raw = table.select_columns([label_col]).with_format("numpy")[label_col]
    names, labels = _classes(features[label_col], np.asarray(raw), classes, where, label_col)
    images = table.select_columns([image_col]).cast_column(image_col, datasets.Image(decode=False))
    set_name = name or Path(location.rstrip("/")).name.removesuffix(".parquet").removesuffix(
        ".arrow"
    )
    return ImageSet(
        set_name,
        names,
        DatasetImages(images, image_col, set_name),
        labels,
        warnings=class_name_warnings(names),
        max_pixels=max_pixels,
        metadata={
            "format": "datasets",
            "path": location,
            "source": origin,
            "split": split or DEFAULT_SPLIT,
            "image_column": image_col,
            "label_column": label_col,
        },
    )


def _classes(
    feature: Any, raw: np.ndarray, classes: ClassNames | None, where: str, column: str
) -> tuple[tuple[str, ...], np.ndarray]:
    """Class names and int64 labels of a label column."""
    datasets = _datasets()
    what = f"{where}'s column {column!r}"
    if isinstance(feature, datasets.ClassLabel):
        own = tuple(str(n) for n in feature.names)
        labels = raw.astype(np.int64)
        if (labels < 0).any():
            raise ValueError(f"{what} holds unlabelled rows (-1): pick a labelled split")
        if classes is not None and classes.wnids is None:
            if len(classes.names) != len(own):
                raise ValueError(
                    f"{classes.origin} names {len(classes.names)} classes but {what} has {len(own)}"
                )
            return classes.names, labels
        if all(is_wordnet_id(n) for n in own):
            return names_of_wordnet_ids(own, classes, what) or own, labels
        if classes is not None:
            raise ValueError(f"{classes.origin} maps WordNet ids, but {what} names classes by name")
        return own, labels
    if raw.dtype.kind in "iu":
        labels = raw.astype(np.int64)
        if (labels < 0).any():
            raise ValueError(f"{what} holds negative labels")
        if classes is not None:
            return names_by_index(classes, int(labels.max()) + 1, what), labels
        distinct = np.unique(labels)
        return tuple(str(x) for x in distinct), np.searchsorted(distinct, labels).astype(np.int64)
    texts = np.asarray([str(x).strip() for x in raw])
    distinct = sorted(set(texts.tolist()))
    if all(is_class_number(x) for x in distinct) and classes is not None:
        labels = texts.astype(np.int64)
        return names_by_index(classes, int(labels.max()) + 1, what), labels
    if classes is not None:
        index = {n: i for i, n in enumerate(classes.names)}
        unknown = [x for x in distinct if x not in index]
        if unknown:
            raise ValueError(
                f"{what}: unknown class {unknown[0]!r}; known classes: {list(classes.names)}"
            )
        return classes.names, np.asarray([index[x] for x in texts], dtype=np.int64)
    if all(is_wordnet_id(x) for x in distinct):
        mapped = names_of_wordnet_ids(distinct, None, what)
        index = {x: i for i, x in enumerate(distinct)}
        return mapped or tuple(distinct), np.asarray([index[x] for x in texts], dtype=np.int64)
    index = {x: i for i, x in enumerate(distinct)}
    return tuple(distinct), np.asarray([index[x] for x in texts], dtype=np.int64)
