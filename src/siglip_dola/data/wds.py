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
:class:`siglip_dola.embeddings.StreamingSource`): an interrupted run resumes shard by shard,
data-parallel ranks take contiguous ranges of shards, and several loader workers take whole
shards each. A sample's position is its index in data order (shard by shard). Samples
without an image or a label, and images that do not decode, are counted, listed skips.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from siglip_dola.data.classes import ClassNames, class_name_warnings, names_of_wordnet_ids
from siglip_dola.data.imagenet import is_wordnet_id
from siglip_dola.data.images import MAX_PIXELS, Skipped
from siglip_dola.data.templates import read_template_file

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

IMAGE_KEYS = ("webp", "png", "jpg", "jpeg")  # clip_benchmark's order of preference
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
TYPE_FILE = "dataset_type.txt"
NSHARDS_FILE = "nshards.txt"
_SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: not sample members


def is_wds_folder(path: Path) -> bool:
    """A folder in clip_benchmark's layout: some ``<split>/nshards.txt``."""
    return path.is_dir() and any((p / NSHARDS_FILE).is_file() for p in path.iterdir() if p.is_dir())


def wds_dataset_type(root: Path) -> str:
    """``classification`` (the default), ``retrieval`` or ``multilabel`` (dataset_type.txt)."""
    path = root / TYPE_FILE
    if not path.is_file():
        return "classification"
    return path.read_text(encoding="utf-8").strip().lower() or "classification"


@dataclass
class ShardIndex:
    """What opening a shard found: its samples' count, labels and the samples to skip."""

    number: int
    path: Path
    offset: int  # position of the shard's first sample
    count: int
    labels: np.ndarray  # int64 [count]; -1 where the sample is skipped
    skips: dict[int, str] = field(default_factory=dict)  # index in shard -> reason
    size: int = 0
    mtime_ns: int = 0


_BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")  # regular-file member types (tarfile's isreg, less sparse)


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _checksum_ok(header: bytes) -> bool:
    """The header's checksum field against its bytes (the field counted as spaces), unsigned
    or, as some old tar programs wrote it, signed."""
    stored, rest = _octal(header[148:156]), header[:148] + header[156:]
    unsigned = sum(rest) + 256
    return stored == unsigned or stored == unsigned - 256 * sum(b > 127 for b in rest)


def _pax_path(data: bytes) -> str | None:
    """The ``path`` record of a pax extended header ("<length> path=<name>\n" records)."""
    while data:
        length = int(data.split(b" ", 1)[0])
        record, data = data[:length], data[length:]
        key, _, value = record.split(b" ", 1)[1].partition(b"=")
        if key == b"path":
            return value[:-1].decode("utf-8", "surrogateescape")
    return None


def _tar_members(f, total: int):
    """(name, data offset, size) of each regular member of an uncompressed tar file, from its
    512-byte headers only (ustar names with prefix, pax ``path`` records, GNU long names);
    the members' data is skipped, not read. Raises ``ValueError`` for a damaged or cut-short
    archive (every tar writer ends an archive with zero blocks)."""
    long_name: str | None = None
    while True:
        at = f.tell()
        header = f.read(_BLOCK)
        if header == b"\0" * _BLOCK:
            return  # the end-of-archive blocks
        if len(header) < _BLOCK:
            where = "without its end-of-archive blocks" if not header else "inside a header"
            raise ValueError(f"the archive ends {where} at byte {at} (cut short?)")
        if not _checksum_ok(header):
            raise ValueError(f"invalid header at byte {at} (checksum)")
        size, kind = _octal(header[124:136]), header[156:157]
        start = at + _BLOCK
        end = start + (size + _BLOCK - 1) // _BLOCK * _BLOCK
        if start + size > total:
            raise ValueError(f"the archive ends inside a member's data at byte {total}")
        if kind in (b"x", b"L"):
            data = f.read(size)
            long_name = (
                _pax_path(data)
                if kind == b"x"
                else data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            )
        elif kind in _REGULAR:
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            prefix = header[345:500].split(b"\0", 1)[0]
            if header[257:262] == b"ustar" and prefix:
                name = f"{prefix.decode('utf-8', 'surrogateescape')}/{name}"
            yield (long_name or name), start, size
            long_name = None
        else:
            long_name = None if kind != b"g" else long_name
        f.seek(end)


def _sample_members(f, total: int):
    """(key, {suffix: (offset, size)}) per sample, grouped as webdataset groups them:
    consecutive regular files with the same base (the file name up to its first dot),
    lower-case suffixes, metadata files and repeated suffixes left out."""
    from webdataset.tariterators import base_plus_ext, meta_prefix, meta_suffix

    key, members = None, {}
    for name, offset, size in _tar_members(f, total):
        if _SKIP_META.match(name):
            continue
        if "/" not in name and name.startswith(meta_prefix) and name.endswith(meta_suffix):
            continue
        prefix, suffix = base_plus_ext(name)
        if prefix is None:
            continue
        if prefix != key:
            if key is not None:
                yield key, members
            key, members = prefix, {}
        members.setdefault(suffix.lower(), (offset, size))
    if key is not None:
        yield key, members


def _member_text(f, member: tuple[int, int]) -> str:
    offset, size = member
    f.seek(offset)
    return f.read(size).decode("utf-8", "replace")


def _index_shard(
    path: Path, number: int, offset: int, retrieval: bool
) -> tuple[ShardIndex, list[list[str]], list[tuple[str, int]]]:
    """Index one shard: (its index, captions per sample (retrieval), (key, label) pairs)."""
    labels: list[int] = []
    skips: dict[int, str] = {}
    captions: list[list[str]] = []
    keyed_labels: list[tuple[str, int]] = []
    stat = path.stat()
    try:
        with path.open("rb") as f:
            for i, (key, members) in enumerate(_sample_members(f, stat.st_size)):
                label, reason, texts = -1, None, []
                if not any(k in members for k in IMAGE_KEYS):
                    reason = f"no image ({', '.join(IMAGE_KEYS)} member)"
                elif retrieval:
                    if "txt" not in members:
                        reason = "no captions (txt member)"
                    else:
                        text = _member_text(f, members["txt"])
                        texts = [line.strip() for line in text.splitlines() if line.strip()]
                        if texts:
                            label = 0
                        else:
                            reason = "no captions (empty txt member)"
                elif "cls" not in members:
                    reason = "no label (cls member)"
                else:
                    text = _member_text(f, members["cls"]).strip()
                    if text.isdigit():
                        label = int(text)
                        keyed_labels.append((key, label))
                    else:
                        reason = f"label {text[:20]!r} in cls is not a class index"
                labels.append(label)
                captions.append(texts)
                if reason is not None:
                    skips[i] = f"{reason} (sample {key})"
    except (ValueError, OSError) as exc:
        reason = " ".join(str(exc).split())
        raise ValueError(f"{path} is not a readable tar file ({reason})") from None
    index = ShardIndex(
        number,
        path,
        offset,
        len(labels),
        np.asarray(labels, dtype=np.int64),
        skips,
        stat.st_size,
        stat.st_mtime_ns,
    )
    return index, captions, keyed_labels


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
        shard, texts, keyed = _index_shard(path, number, offset, retrieval)
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
        from siglip_dola.embeddings import SourceBlock

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
