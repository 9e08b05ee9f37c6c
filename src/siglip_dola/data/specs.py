"""``--dataset`` values: which format a spec names, the name every command writes for it,
and the loaders behind them.

A spec is ``SCHEME:LOCATION`` or a bare path, whose format is then found from what is there:
a folder in clip_benchmark's webdataset layout (``<split>/nshards.txt``) is ``wds:``, a
``save_to_disk`` folder is ``datasets:``, another folder is an image folder, a ``.csv`` /
``.tsv`` / ``.json`` / ``.jsonl`` file a label file. Anything else is refused with the list of
what is supported. ``wds/NAME`` (clip_benchmark's own naming) and plain names resolve through
a ``--dataset-root`` template (``{dataset}``, ``{dataset_cleaned}`` as clip_benchmark has
them).

Data set names (the ``dataset`` of every results file, one function: :func:`dataset_name`):
``wds/<folder name without wds_>`` for webdataset folders (clip_benchmark's ``wds/`` names),
the name given when a ``--dataset-root`` template resolved it, ``mscoco_captions`` /
``flickr30k`` for the Karpathy files, the folder name (its parent's for a split-named
folder) or the file stem otherwise, ``fashion-mnist`` / ``photos`` for the bundled sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from siglip_dola.data.bundled import load_bundled_fashion_mnist
from siglip_dola.data.classes import ClassNames
from siglip_dola.data.folders import load_image_folder, split_folder_name
from siglip_dola.data.hf_datasets import TABLE_SUFFIXES, is_saved_dataset, load_hf_dataset
from siglip_dola.data.images import MAX_PIXELS, check_max_pixels
from siglip_dola.data.imageset import ImageSet
from siglip_dola.data.label_files import LABEL_FILE_SUFFIXES, load_label_file
from siglip_dola.data.retrieval_sets import (
    RetrievalSet,
    is_karpathy_json,
    load_bundled_photos,
    load_caption_pairs,
    load_karpathy_json,
    load_wds_retrieval,
)
from siglip_dola.data.wds import WebDatasetSource, is_wds_folder, load_wds, wds_dataset_type

__all__ = [
    "DEFAULT_SPLIT",
    "FORMATS",
    "RETRIEVAL_FORMATS",
    "DataSpec",
    "dataset_name",
    "load_dataset",
    "load_retrieval_set",
    "parse_data_spec",
]

DEFAULT_SPLIT = "test"  # clip_benchmark's default split (wds:, datasets:, Karpathy JSON)
SCHEMES = ("bundled", "folder", "csv", "tsv", "json", "jsonl", "wds", "datasets", "karpathy")
FORMATS = (
    "an image folder (DIR/<class>/<images>), a label file (.csv, .tsv, .json, .jsonl), "
    "wds:DIR (clip_benchmark webdataset folder), datasets:PATH (Hugging Face save_to_disk "
    "folder, .parquet/.arrow files, hub id), bundled:fashion-mnist"
)
RETRIEVAL_FORMATS = (
    "bundled:photos, a CSV/JSON of (image, caption) pairs, a Karpathy-split JSON "
    "(dataset_coco.json, dataset_flickr30k.json) with --images-root, wds:DIR (clip_benchmark "
    "webdataset caption set)"
)


@dataclass(frozen=True)
class DataSpec:
    """A parsed ``--dataset`` value: ``scheme`` is one of :data:`SCHEMES` or ``path`` (found
    from what is at ``location``); ``given_name`` is set when a root template resolved it."""

    text: str
    scheme: str
    location: str
    given_name: str | None = None


def parse_data_spec(text: str, root: str | None = None) -> DataSpec:
    """Split a spec into scheme and location; with ``root`` (a ``--dataset-root`` template)
    the spec's name is put into it."""
    text = str(text).strip()
    if not text:
        raise ValueError("--dataset is empty")
    if text == "bundled":
        return DataSpec(text, "bundled", "fashion-mnist")
    scheme, sep, rest = text.partition(":")
    if not (sep and scheme in SCHEMES and rest):
        scheme, rest = "path", text
    if scheme == "bundled":
        return DataSpec(text, scheme, rest)
    if scheme == "path" and text.startswith("wds/"):  # clip_benchmark's naming
        scheme, rest = "wds", text[len("wds/") :]
        if root is None:
            raise ValueError(
                f"{text} is a clip_benchmark data set name: give its folder with --dataset-root "
                "(e.g. 'data/wds_{dataset_cleaned}'), or use wds:DIR"
            )
    if root is None:
        return DataSpec(text, scheme, rest)
    cleaned = rest.replace("/", "-")
    if "{" in root:
        try:
            location = root.format(dataset=rest, dataset_cleaned=cleaned)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"--dataset-root {root!r}: only {{dataset}} and {{dataset_cleaned}} may be used "
                f"({type(exc).__name__}: {exc})"
            ) from None
    else:
        location = str(Path(root) / rest)
    return DataSpec(text, scheme, location, f"wds/{rest}" if scheme == "wds" else rest)


def _folder_name(path: Path) -> str:
    path = path.expanduser()
    if not path.name or path.name == "..":
        path = path.resolve()
    if split_folder_name(path.name) and path.parent.name:
        return path.parent.name
    return path.name or str(path)


def dataset_name(spec: DataSpec | str, kind: str | None = None) -> str:
    """The ``dataset`` name that every command writes for ``spec`` (see the module
    docstring); ``kind`` is the format the spec resolved to (``wds``, ``datasets``,
    ``folder``, ``file``)."""
    spec = parse_data_spec(spec) if isinstance(spec, str) else spec
    if spec.given_name is not None:
        return spec.given_name
    if spec.scheme == "bundled":
        return spec.location
    kind = kind or spec.scheme
    path = Path(spec.location)
    if kind == "wds":
        return f"wds/{_folder_name(path).removeprefix('wds_')}"
    if kind == "datasets":
        if path.exists():
            return path.stem if path.is_file() else _folder_name(path)
        return spec.location
    if kind in ("folder", "path") or path.is_dir():
        return _folder_name(path)
    return path.stem


def _unsupported(path: Path, retrieval: bool = False) -> ValueError:
    suffix = path.suffix.lower()
    if suffix == ".tar":
        hint = (
            " (a single tar file: wds:DIR reads clip_benchmark's webdataset folders, "
            "DIR/<split>/nshards.txt beside DIR/<split>/0.tar, 1.tar, ...)"
        )
    elif suffix in TABLE_SUFFIXES:
        hint = f" (read it with datasets:{path})"
    else:
        hint = ""
    formats = RETRIEVAL_FORMATS if retrieval else FORMATS
    return ValueError(f"unsupported data set format: {path}{hint}; supported: {formats}")


def _resolve_kind(spec: DataSpec, retrieval: bool = False) -> str:
    """The format a spec names: wds, datasets, folder or file (bare paths by content)."""
    if spec.scheme in ("wds", "datasets", "folder"):
        return spec.scheme
    if spec.scheme in ("csv", "tsv", "json", "jsonl", "karpathy"):
        return "file"
    path = Path(spec.location).expanduser()
    if path.is_dir():
        if is_wds_folder(path):
            return "wds"
        if is_saved_dataset(path):
            return "datasets"
        inside = {p.suffix.lower() for p in path.iterdir() if p.is_file()}
        if not any(p.is_dir() for p in path.iterdir()) and inside & {".tar", *TABLE_SUFFIXES}:
            raise _unsupported(
                path / f"*{sorted(inside & {'.tar', *TABLE_SUFFIXES})[0]}", retrieval
            )
        return "folder"
    if path.is_file():
        if path.suffix.lower() not in LABEL_FILE_SUFFIXES:
            raise _unsupported(path, retrieval)
        return "file"
    formats = RETRIEVAL_FORMATS if retrieval else FORMATS
    raise ValueError(f"data set {spec.text!r} not found: expected {formats}")


def load_dataset(
    spec: str | DataSpec,
    class_names: ClassNames | Sequence[str] | None = None,
    *,
    split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    max_pixels: int = MAX_PIXELS,
    root: str | None = None,
) -> ImageSet | WebDatasetSource:
    """A labelled image set for a ``--dataset`` value (see the module docstring): an
    :class:`ImageSet`, or for ``wds:`` folders a streaming :class:`WebDatasetSource`.

    ``class_names`` (``--classes``): for a label file, the classes its labels come from (by
    name, or by index for integer labels); for a folder, a webdataset folder, a
    ``datasets`` table or the bundled set, display names of its classes in their order, the
    names of numbered classes by index, or a WordNet-id mapping. ``split`` picks a split
    (``test`` by default for ``wds:`` and ``datasets:``; a folder's ``<split>/``).
    """
    max_pixels = check_max_pixels(max_pixels)
    classes = _as_classes(class_names)
    spec = parse_data_spec(spec, root) if isinstance(spec, str) else spec
    if spec.scheme == "bundled":
        if spec.location == "fashion-mnist" or spec.text == "bundled":
            image_set = load_bundled_fashion_mnist()
            image_set.max_pixels = max_pixels
            return _renamed(image_set, classes, spec.text)
        raise ValueError(
            f"unknown bundled data set {spec.text!r}: available: bundled:fashion-mnist"
        )
    kind = _resolve_kind(spec)
    name = dataset_name(spec, kind)
    location = Path(spec.location).expanduser()
    if kind == "wds":
        if wds_dataset_type(location) == "retrieval":
            raise ValueError(
                f"{location} is a caption set (dataset_type.txt: retrieval): evaluate it with "
                "--task zeroshot_retrieval or the rerank command"
            )
        source, _ = load_wds(
            location, classes, split=split or DEFAULT_SPLIT, name=name, max_pixels=max_pixels
        )
        return source
    if kind == "datasets":
        return load_hf_dataset(
            spec.location,
            classes,
            split=split,
            image_column=image_column,
            label_column=label_column,
            max_pixels=max_pixels,
            name=name,
        )
    if kind == "folder":
        return load_image_folder(location, classes, split=split, max_pixels=max_pixels, name=name)
    if location.suffix.lower() not in LABEL_FILE_SUFFIXES:
        raise _unsupported(location)
    return load_label_file(
        location,
        classes,
        image_column=image_column,
        label_column=label_column,
        max_pixels=max_pixels,
        name=name,
    )


def _as_classes(class_names: ClassNames | Sequence[str] | None) -> ClassNames | None:
    if class_names is None or isinstance(class_names, ClassNames):
        return class_names
    return ClassNames(tuple(str(n).strip() for n in class_names))


def _renamed(image_set: ImageSet, classes: ClassNames | None, spec: str) -> ImageSet:
    """Display names for a set's classes, in their order (same count)."""
    if classes is None or list(classes.names) == list(image_set.class_names):
        return image_set
    if len(classes.names) != len(image_set.class_names):
        raise ValueError(
            f"{classes.origin} names {len(classes.names)} classes but {spec} has "
            f"{len(image_set.class_names)}"
        )
    image_set.class_names = classes.names
    return image_set


def load_retrieval_set(
    spec: str | DataSpec,
    *,
    split: str | None = None,
    images_root: Path | str | None = None,
    max_pixels: int = MAX_PIXELS,
    root: str | None = None,
) -> RetrievalSet:
    """``bundled:photos``, a CSV/JSON of (image, caption) pairs (an image may appear in
    several rows), a Karpathy-split JSON (``split``, default test; images under
    ``images_root``, default the file's folder), or a clip_benchmark webdataset caption
    set."""
    max_pixels = check_max_pixels(max_pixels)
    spec = parse_data_spec(spec, root) if isinstance(spec, str) else spec
    if spec.scheme == "bundled":
        if spec.location == "photos":
            return load_bundled_photos()
        raise ValueError(f"unknown bundled retrieval set {spec.text!r}: available: bundled:photos")
    kind = _resolve_kind(spec, retrieval=True)
    name = dataset_name(spec, kind)
    location = Path(spec.location).expanduser()
    if kind == "wds":
        return load_wds_retrieval(
            location, split=split or DEFAULT_SPLIT, name=name, max_pixels=max_pixels
        )
    if kind != "file":
        raise ValueError(
            f"unsupported retrieval data set: {spec.text} is a {kind} set; supported: "
            f"{RETRIEVAL_FORMATS}"
        )
    images_root = None if images_root is None else Path(images_root)
    if spec.scheme == "karpathy" or is_karpathy_json(location):
        return load_karpathy_json(
            location,
            split=split or DEFAULT_SPLIT,
            images_root=images_root,
            name=spec.given_name,
            max_pixels=max_pixels,
        )
    if location.suffix.lower() not in LABEL_FILE_SUFFIXES:
        raise _unsupported(location, retrieval=True)
    return load_caption_pairs(location, name=name, max_pixels=max_pixels)
