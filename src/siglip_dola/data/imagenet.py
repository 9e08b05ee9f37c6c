"""The 1,000 ImageNet-1k classes: WordNet ids in class-index order and the class names that
zero-shot papers prompt with (OpenAI's, as clip_benchmark and open_clip ship them; see the
header of ``assets/imagenet1k_classes.tsv`` for the sources and the two renamed classes)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

__all__ = ["IMAGENET_TABLE", "ImageNetClasses", "imagenet_classes", "is_wordnet_id"]

IMAGENET_TABLE = "imagenet"  # ``--classes imagenet`` names the table
_WORDNET_ID = re.compile(r"n\d{8}")


def is_wordnet_id(text: str) -> bool:
    """``n01440764``-style WordNet noun synset ids."""
    return _WORDNET_ID.fullmatch(text) is not None


@dataclass(frozen=True)
class ImageNetClasses:
    """Parallel tuples in class-index order (index = the ImageNet-1k label)."""

    wnids: tuple[str, ...]
    names: tuple[str, ...]  # zero-shot class names ("tench", "goldfish", ...)

    def name_of(self) -> dict[str, str]:
        """WordNet id -> class name."""
        return dict(zip(self.wnids, self.names))


@cache
def imagenet_classes() -> ImageNetClasses:
    """The table, read once from the package's assets."""
    path = Path(str(resources.files("siglip_dola") / "assets" / "imagenet1k_classes.tsv"))
    rows = [
        line.split("\t")
        for line in path.read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    header, rows = rows[0], rows[1:]
    if header != ["wnid", "name"] or len(rows) != 1000:
        raise RuntimeError(f"{path} is not the 1,000-row ImageNet class table")
    wnids, names = (tuple(column) for column in zip(*rows))
    return ImageNetClasses(wnids, names)
