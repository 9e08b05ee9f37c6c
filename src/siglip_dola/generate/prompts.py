"""Prompt files: ``{"prompts": ["...", ...]}``, checked with errors that say where."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["PromptFileError", "load_negatives", "load_prompts", "validate_prompts"]


class PromptFileError(ValueError):
    """A prompt or negatives file that cannot be used; the message names the position."""


def _read_text(path: Path, what: str) -> str:
    if not path.exists():
        raise PromptFileError(f"{what} {path} does not exist")
    if not path.is_file():
        raise PromptFileError(f"{what} {path} is not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PromptFileError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"{path} is not UTF-8 text (byte {exc.start})") from None


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PromptFileError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None


def validate_prompts(items: Any, where: str, key: str = "prompts") -> list[str]:
    """A non-empty list of non-empty strings; errors name the offending index."""
    if not isinstance(items, list):
        raise PromptFileError(f"{where}: {key!r} must be a list of strings, got {_kind(items)}")
    if not items:
        raise PromptFileError(f"{where}: {key!r} is empty")
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise PromptFileError(f"{where}: {key}[{index}] is {_kind(item)}, expected a string")
        if not item.strip():
            raise PromptFileError(f"{where}: {key}[{index}] is empty")
    return list(items)


def _kind(value: Any) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def load_prompts(path: Path | str) -> list[str]:
    """The prompts of a JSON file ``{"prompts": [...]}``."""
    path = Path(path).expanduser()
    data = _parse_json(path, _read_text(path, "prompt file"))
    if not isinstance(data, dict):
        raise PromptFileError(
            f'{path}: expected a JSON object {{"prompts": [...]}}, got {_kind(data)}'
        )
    if "prompts" not in data:
        keys = ", ".join(repr(k) for k in data) or "none"
        raise PromptFileError(f"{path}: missing the 'prompts' key (keys found: {keys})")
    return validate_prompts(data["prompts"], str(path))


def load_negatives(path: Path | str) -> list[str]:
    """Negative texts for best-of-N scoring: a JSON list / ``{"prompts"|"negatives": [...]}``
    (``.json`` files) or one text per line (blank lines skipped)."""
    path = Path(path).expanduser()
    text = _read_text(path, "negatives file")
    if path.suffix.lower() == ".json":
        data = _parse_json(path, text)
        if isinstance(data, dict):
            key = next((k for k in ("negatives", "prompts") if k in data), None)
            if key is None:
                raise PromptFileError(f"{path}: expected a 'negatives' or 'prompts' list")
            return validate_prompts(data[key], str(path), key)
        return validate_prompts(data, str(path), "negatives")
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise PromptFileError(f"{path}: no negative texts (one per line expected)")
    return lines
