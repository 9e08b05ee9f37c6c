"""Label files: a table of (image path, label) rows in CSV, TSV, JSON or JSON Lines.

The image and label columns are found by name (``image``/``filepath``/``path``/...,
``label``/``class``/``target``/...) or named with ``--image-column`` / ``--label-column``;
a missing column is an error that lists the columns found. Labels may be class names,
integers (mapped by index through ``--classes``) or WordNet ids (mapped through the
ImageNet table or a ``--classes`` mapping). Relative paths are resolved against the
file's folder.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from siglip_dola.data.classes import (
    ClassNames,
    class_name_warnings,
    is_class_number,
    names_by_index,
    names_of_wordnet_ids,
)
from siglip_dola.data.imagenet import is_wordnet_id
from siglip_dola.data.images import MAX_PIXELS
from siglip_dola.data.imageset import ImageSet
from siglip_dola.io import read_json_list

__all__ = [
    "IMAGE_COLUMNS",
    "LABEL_COLUMNS",
    "LABEL_FILE_COLUMNS",
    "LABEL_FILE_SUFFIXES",
    "find_column",
    "load_label_file",
    "read_table",
]

LABEL_FILE_COLUMNS = ("image", "label")  # the names written first in every message
IMAGE_COLUMNS = ("image", "filepath", "file_path", "image_path", "path", "file", "filename",
                 "file_name", "img")  # fmt: skip
LABEL_COLUMNS = ("label", "class", "class_name", "classname", "target", "category", "cls",
                 "label_name")  # fmt: skip
LABEL_FILE_SUFFIXES = (".csv", ".tsv", ".tab", ".json", ".jsonl", ".ndjson")


def read_table(path: Path) -> tuple[list[str], list[tuple[str, dict[str, Any]]]]:
    """(column names, rows) of a CSV/TSV file with a header, a JSON list of objects or a JSON
    Lines file; each row comes with ``where`` ("line N", "entry N") for messages."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        rows = read_json_list(path, "{column: value}")
        out = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise ValueError(f"{path}: entry {i} is not an object")
            out.append((f"entry {i}", row))
        return _columns_of(r for _, r in out), out
    if suffix in (".jsonl", ".ndjson"):
        out = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"{path}: invalid JSON on line {number}, column {exc.colno}: {exc.msg}"
                    ) from None
                if not isinstance(row, dict):
                    raise ValueError(f"{path}: line {number} is not a JSON object")
                out.append((f"line {number}", row))
        return _columns_of(r for _, r in out), out
    delimiter = "\t" if suffix in (".tsv", ".tab") else ","
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = columns
        return columns, [(f"line {n}", row) for n, row in enumerate(reader, start=2)]


def _columns_of(rows) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def find_column(
    columns: Sequence[str], given: str | None, candidates: Sequence[str], what: str, flag: str,
    path: Path,
) -> str:  # fmt: skip
    """The column named ``given``, else the first of ``candidates`` present (any case)."""
    if given is not None:
        if given in columns:
            return given
        raise ValueError(f"{path}: no column {given!r} ({flag}); columns found: {list(columns)}")
    lowered = {c.lower(): c for c in columns}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    raise ValueError(
        f"{path}: no {what} column (looked for {', '.join(candidates[:4])}, ...; name it with "
        f"{flag}); columns found: {list(columns)}"
    )


def _label_text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def load_label_file(
    path: Path | str,
    class_names: ClassNames | Sequence[str] | None = None,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    max_pixels: int = MAX_PIXELS,
    name: str | None = None,
) -> ImageSet:
    """A label file as an :class:`ImageSet` (see the module docstring).

    ``class_names``: for class-name labels the classes (in order) they must come from; for
    integer labels the names by index; for WordNet-id labels a mapping. Without, the classes
    are the sorted distinct labels (numerically for integers).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"label file {path} does not exist")
    given = _as_class_names(class_names)
    columns, rows = read_table(path)
    if not rows:
        raise ValueError(f"{path} lists no images")
    image_col = find_column(
        columns, image_column, IMAGE_COLUMNS, "image path", "--image-column", path
    )
    label_col = find_column(columns, label_column, LABEL_COLUMNS, "label", "--label-column", path)
    entries = []
    for where, row in rows:
        image, label = row.get(image_col), _label_text(row.get(label_col))
        if image is None or not str(image).strip():
            raise ValueError(f"{path}, {where}: empty image path (column {image_col!r})")
        if not label:
            raise ValueError(f"{path}, {where}: empty label (column {label_col!r})")
        entries.append((where, str(image).strip(), label))
    names, index = _classes(path, [label for _, _, label in entries], given)
    items: list[Path] = []
    labels = []
    for where, image, label in entries:
        if label not in index:
            raise ValueError(
                f"{path}, {where}: unknown class {label!r}; known classes: {list(names)}"
            )
        image_path = Path(image)
        items.append(image_path if image_path.is_absolute() else path.parent / image_path)
        labels.append(index[label])
    return ImageSet(
        name or path.stem,
        names,
        items,
        np.asarray(labels, dtype=np.int64),
        warnings=class_name_warnings(names),
        max_pixels=max_pixels,
        metadata={
            "format": "label file",
            "path": str(path),
            "image_column": image_col,
            "label_column": label_col,
        },
    )


def _as_class_names(class_names: ClassNames | Sequence[str] | None) -> ClassNames | None:
    if class_names is None or isinstance(class_names, ClassNames):
        return class_names
    return ClassNames(tuple(str(n) for n in class_names))


def _classes(
    path: Path, labels: list[str], given: ClassNames | None
) -> tuple[tuple[str, ...], dict[str, int]]:
    """Class names, and the class index of each distinct label."""
    distinct = sorted(set(labels))
    what = f"{path}'s labels"
    if all(is_class_number(x) for x in distinct):
        if given is not None:
            numbers = {x: int(x) for x in distinct}
            return names_by_index(given, max(numbers.values()) + 1, what), numbers
        ordered = sorted(distinct, key=int)
        return tuple(ordered), {x: i for i, x in enumerate(ordered)}
    if all(is_wordnet_id(x) for x in distinct) and (given is None or given.wnids is not None):
        wnids = list(given.wnids) if given is not None else distinct
        names = names_of_wordnet_ids(wnids, given, what)
        if names is None:
            return tuple(distinct), {x: i for i, x in enumerate(distinct)}
        if given is None:
            return names, {x: i for i, x in enumerate(distinct)}
        return names, {w: i for i, w in enumerate(given.wnids)}
    if given is not None:
        return given.names, {n: i for i, n in enumerate(given.names)}
    return tuple(distinct), {x: i for i, x in enumerate(distinct)}
