"""Class names: what ``--classes`` may hold, WordNet-id and index mappings, and the warnings
for names that would make prompts meaningless ("a photo of a 3.", "a photo of a n01440764.").

``--classes`` holds a comma-separated list, a file with one name per line, a WordNet-id
mapping (``LOC_synset_mapping.txt`` lines ``n01440764 tench, Tinca tinca``, or JSON
``{wnid: name}``), a JSON list, or ``imagenet`` (the built-in ImageNet-1k table). Names are
in class-index order: integer labels and numbered class folders map through them by index.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from siglip_dola.data.imagenet import IMAGENET_TABLE, imagenet_classes, is_wordnet_id
from siglip_dola.io import read_json

__all__ = [
    "ClassNames",
    "class_name_warnings",
    "is_class_number",
    "names_by_index",
    "names_of_wordnet_ids",
    "read_class_names",
    "read_classes",
]

_NUMBER = re.compile(r"\d+")
_LOC_LINE = re.compile(r"(n\d{8})\s+(\S.*)")


def is_class_number(text: str) -> bool:
    """A non-negative integer written in digits ("0", "17")."""
    return _NUMBER.fullmatch(text) is not None


@dataclass(frozen=True)
class ClassNames:
    """Class names in class-index order and, for a WordNet-id mapping, the id of each.

    ``origin`` names where they came from in error messages (``--classes FILE``)."""

    names: tuple[str, ...]
    wnids: tuple[str, ...] | None = None
    origin: str = "--classes"

    def name_of_wnid(self) -> dict[str, str] | None:
        return None if self.wnids is None else dict(zip(self.wnids, self.names))

    @classmethod
    def imagenet(cls) -> ClassNames:
        table = imagenet_classes()
        return cls(table.names, table.wnids, f"--classes {IMAGENET_TABLE}")


def read_classes(text: str | None) -> ClassNames | None:
    """Parse ``--classes`` (see the module docstring); ``None`` stays ``None``."""
    if text is None:
        return None
    path = Path(text)
    if not path.is_file():
        if text.strip().lower() == IMAGENET_TABLE:
            return ClassNames.imagenet()
        return ClassNames(tuple(x.strip() for x in text.split(",")), origin="--classes")
    origin = f"--classes {path}"
    if path.suffix.lower() == ".json":
        return _json_classes(path, origin)
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    matches = [_LOC_LINE.fullmatch(line) for line in lines]
    if lines and all(matches):
        return ClassNames(
            tuple(m.group(2).strip() for m in matches), tuple(m.group(1) for m in matches), origin
        )
    return ClassNames(tuple(lines), origin=origin)


def _json_classes(path: Path, origin: str) -> ClassNames:
    data = read_json(path)
    if isinstance(data, list) and all(isinstance(x, str) for x in data):
        return ClassNames(tuple(x.strip() for x in data), origin=origin)
    if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
        keys = [str(k).strip() for k in data]
        values = tuple(str(v).strip() for v in data.values())
        if keys and all(is_wordnet_id(k) for k in keys):
            return ClassNames(values, tuple(keys), origin)
        if keys and all(is_class_number(k) for k in keys):
            order = sorted(range(len(keys)), key=lambda i: int(keys[i]))
            if [int(keys[i]) for i in order] != list(range(len(keys))):
                raise ValueError(f"{path}: class indices must be 0..{len(keys) - 1}")
            return ClassNames(tuple(values[i] for i in order), origin=origin)
    raise ValueError(
        f"{path}: expected a JSON list of class names, {{wordnet id: name}} or {{index: name}}"
    )


def read_class_names(text: str | None) -> list[str] | None:
    """``--classes`` as a list of names in class-index order (see :func:`read_classes`)."""
    classes = read_classes(text)
    return None if classes is None else list(classes.names)


def names_by_index(given: ClassNames, needed: int, what: str) -> tuple[str, ...]:
    """``given``'s names for labels 0..needed-1, or an error naming both sides."""
    if needed > len(given.names):
        raise ValueError(
            f"{what} uses class index {needed - 1} but {given.origin} names only "
            f"{len(given.names)} classes (0..{len(given.names) - 1})"
        )
    return given.names


def names_of_wordnet_ids(
    wnids: Sequence[str], given: ClassNames | None, what: str
) -> tuple[str, ...] | None:
    """Names for WordNet ids: from ``given``'s mapping, else from the ImageNet-1k table.

    ``None`` when the table lacks one of them (the ids stay, with a warning); an error when
    the user's mapping lacks one."""
    if given is not None and given.wnids is not None:
        mapping, origin = given.name_of_wnid(), given.origin
        missing = [w for w in wnids if w not in mapping]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ValueError(
                f"{origin} has no name for {len(missing)} WordNet id(s) of {what}: {shown}"
            )
        return tuple(mapping[w] for w in wnids)
    mapping = imagenet_classes().name_of()
    if all(w in mapping for w in wnids):
        return tuple(mapping[w] for w in wnids)
    return None


def class_name_warnings(names: Sequence[str]) -> list[str]:
    """Warnings for class names that are all numbers or all WordNet ids: prompts built from
    them mean nothing to a text tower, so the figures would be silently wrong."""
    if not names:
        return []
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    if all(is_class_number(n) for n in names):
        return [
            f"class names are all numbers ({shown}): prompts read 'a photo of a {names[0]}.'; "
            "map them with --classes NAMES (by index) or --classes imagenet"
        ]
    if all(is_wordnet_id(n) for n in names):
        return [
            f"class names are WordNet ids without a mapping ({shown}): prompts read 'a photo "
            f"of a {names[0]}.'; map them with --classes LOC_synset_mapping.txt or a JSON "
            "{wnid: name} file"
        ]
    return []
