"""Small file helpers: atomic writes (temp file + rename) so an interrupted run leaves no
half-written output, and output paths checked before any work (writable, no silent
overwrite). Outputs get the permissions the user's umask gives, as any other new file."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "OutputError",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_output_folder",
    "check_writable",
    "read_json_list",
    "read_records",
]


class OutputError(ValueError):
    """An output that cannot be written (read-only place, no permission, disk full)."""


def _file_mode() -> int:
    # os.umask is the only way to read the mask; setting it back at once leaves it unchanged.
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to a temp file beside ``path`` and rename it into place: readers see
    the old file or the new one, never a part. Raises :class:`OutputError` (no temp file
    left) when the place cannot be written."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, _file_mode())  # mkstemp makes 0600 files; outputs follow the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _probe(folder: Path, what: Path) -> None:
    """Create and remove a file in the nearest existing folder at or above ``folder``:
    nothing is left behind, not even the folders a later write will create."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write {what}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".siglip-dola-probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write {what}: {existing}: {exc.strerror or exc}") from None


def check_writable(path: Path | str, overwrite: bool) -> Path:
    """Before any work: refuse to replace an existing output unless ``overwrite`` is set,
    and check that the file can be created (one line, :class:`OutputError`, if not)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{path} is a folder; expected a file name")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
    _probe(path.parent, path)
    return path


def check_output_folder(
    folder: Path | str, names: Sequence[str] = (), overwrite: bool = False
) -> Path:
    """Before any work: ``folder`` can be written, and none of the files ``names`` it will
    receive exists there already unless ``overwrite`` is set."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file, not a folder")
    if not overwrite:
        taken = [name for name in names if (folder / name).exists()]
        if taken:
            raise FileExistsError(
                f"{folder} already holds {', '.join(taken)}; pass --overwrite to replace them"
            )
    _probe(folder, folder)
    return folder


def read_json(path: Path | str, what: str = "") -> Any:
    """A JSON file's content; a ``ValueError`` that names the file (after ``what``, e.g.
    ``"profile "``), the line and the column when it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{what}{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None


def read_json_list(path: Path, entry_hint: str) -> list[Any]:
    """A JSON file holding a list; errors name the file, line and column."""
    rows = read_json(path)
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
