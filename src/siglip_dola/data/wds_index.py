"""Indexing a webdataset shard without reading its images: the tar headers (each checksum
checked, pax names followed) and the small ``cls`` / ``txt`` members, grouped into samples as
webdataset groups them (by key, its ``__meta__`` members left out)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_KEYS", "ShardIndex", "index_shard"]

IMAGE_KEYS = ("webp", "png", "jpg", "jpeg")  # clip_benchmark's order of preference
_SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta: not sample members


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


def index_shard(
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
