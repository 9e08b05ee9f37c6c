"""Small file helpers: atomic writes (temp file + rename) so an interrupted run leaves no
half-written output, and guarded output paths (no silent overwrite)."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_writable",
    "read_json_list",
    "read_records",
]


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def check_writable(path: Path | str, overwrite: bool) -> Path:
    """Refuse to replace an existing output unless ``overwrite`` is set."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
    return path


def read_json_list(path: Path, entry_hint: str) -> list[Any]:
    """A JSON file holding a list; errors name the file, line and column."""
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of {entry_hint} objects")
    return rows


def read_records(path: Path, columns: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """Rows of a CSV file (with a header) or a JSON list of objects, each holding ``columns``.

    Returns (where, row) pairs, ``where`` being "line N" (CSV, header = line 1) or "entry N"
    (JSON), for error messages that point at the row.
    """
    names = " and ".join(repr(c) for c in columns)
    if path.suffix.lower() == ".json":
        rows = read_json_list(path, "{" + ", ".join(f"{c!r}: ..." for c in columns) + "}")
        out = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or not set(columns) <= set(row):
                raise ValueError(f"{path}: entry {i} must be an object with {names}")
            out.append((f"entry {i}", row))
        return out
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not set(columns) <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected a CSV header with columns {names}")
        return [(f"line {n}", row) for n, row in enumerate(reader, start=2)]
