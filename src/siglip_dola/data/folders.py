"""Image folders: ``ROOT/<class>/<images>`` (torchvision's ImageFolder layout).

Class folders named by WordNet id (ImageNet and its -A/-R/-Sketch style subsets) get the
ImageNet class names; numbered folders are class indices (ImageNet-V2's ``0``..``999`` map
to the ImageNet names, other numbers keep their names unless ``--classes`` names them).
Folders that look like splits (``train/``, ``test/``) or classes nested a level too deep are
refused with a hint instead of being evaluated as classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from siglip_dola.data.classes import (
    ClassNames,
    class_name_warnings,
    is_class_number,
    names_by_index,
    names_of_wordnet_ids,
)
from siglip_dola.data.imagenet import imagenet_classes, is_wordnet_id
from siglip_dola.data.images import IMAGE_EXTENSIONS, MAX_PIXELS, image_files
from siglip_dola.data.imageset import ImageSet

__all__ = ["SPLIT_NAMES", "load_image_folder", "split_folder_name"]

SPLIT_NAMES = frozenset({"train", "training", "val", "valid", "validation", "test", "testing"})


def split_folder_name(name: str) -> bool:
    return name.lower() in SPLIT_NAMES


def _subfolders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_image_folder(
    root: Path | str,
    classes: ClassNames | None = None,
    *,
    split: str | None = None,
    max_pixels: int = MAX_PIXELS,
    name: str | None = None,
) -> ImageSet:
    """One subfolder per class, images anywhere below it; ``split`` picks ``ROOT/<split>``.

    ``classes``: display names for the class folders in their order (same count), the class
    names of numbered folders by index, or a WordNet-id mapping for WordNet-id folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist")
    if split is not None:
        if not (root / split).is_dir():
            raise ValueError(
                f"{root} has no split folder {split!r}; its subfolders: "
                f"{', '.join(_subfolders(root)) or 'none'}"
            )
        root = root / split
    folders = _subfolders(root)
    if not folders:
        raise ValueError(f"{root} has no class subfolders: expected ROOT/<class name>/<images>")
    _refuse_splits(root, folders)
    files = {folder: image_files(root / folder) for folder in folders}
    _refuse_nesting(root, files)
    names, label_of = _class_names(root, folders, classes)
    items: list[Path] = []
    labels: list[int] = []
    for folder in folders:
        items.extend(files[folder])
        labels.extend([label_of[folder]] * len(files[folder]))
    if not items:
        raise ValueError(
            f"{root} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders"
        )
    return ImageSet(
        name or root.name,
        names,
        items,
        np.asarray(labels, dtype=np.int64),
        warnings=class_name_warnings(names),
        max_pixels=max_pixels,
        metadata={"format": "folder", "path": str(root), "split": split},
    )


def _refuse_splits(root: Path, folders: list[str]) -> None:
    """``ROOT/train``, ``ROOT/test``: splits, not classes (a lone ``train`` class, as in
    CIFAR-100, is a class)."""
    splits = [f for f in folders if split_folder_name(f)]
    if splits and (len(splits) == len(folders) or len(splits) >= 2):
        raise ValueError(
            f"{root}'s subfolders look like splits ({', '.join(splits)}), not classes: pass "
            f"--split {splits[-1]} or the split's folder ({root / splits[-1]})"
        )


def _refuse_nesting(root: Path, files: dict[str, list[Path]]) -> None:
    """A class folder with no images of its own but images in several subfolders holds
    classes itself: the data set is one level further down."""
    for folder, paths in files.items():
        base = root / folder
        if any(p.parent == base for p in paths):
            continue
        inner = sorted({p.relative_to(base).parts[0] for p in paths})
        if len(inner) >= 2:
            shown = ", ".join(inner[:4]) + (", ..." if len(inner) > 4 else "")
            raise ValueError(
                f"{base} holds no images of its own but subfolders with images ({shown}): "
                f"the class folders are nested a level deeper; pass {base} as the data set"
                + (" with --split" if any(split_folder_name(x) for x in inner) else "")
            )


def _class_names(
    root: Path, folders: list[str], classes: ClassNames | None
) -> tuple[tuple[str, ...], dict[str, int]]:
    """Class names and the label of each class folder."""
    what = f"the class folders of {root}"
    if all(is_class_number(f) for f in folders):
        numbers = {f: int(f) for f in folders}
        if classes is not None:
            names = names_by_index(classes, max(numbers.values()) + 1, what)
            return names, numbers
        if sorted(numbers.values()) == list(range(1000)):  # ImageNet-V2: index = folder
            return imagenet_classes().names, numbers
        ordered = sorted(folders, key=int)
        return tuple(ordered), {f: i for i, f in enumerate(ordered)}
    label_of = {f: i for i, f in enumerate(folders)}
    if classes is not None and classes.wnids is None:
        if len(classes.names) != len(folders):
            raise ValueError(
                f"{classes.origin} names {len(classes.names)} classes but {root} has "
                f"{len(folders)} class folders"
            )
        return classes.names, label_of
    if all(is_wordnet_id(f) for f in folders):
        names = names_of_wordnet_ids(folders, classes, what)
        return names or tuple(folders), label_of
    if classes is not None:  # a WordNet-id mapping, but the folders are names
        raise ValueError(
            f"{classes.origin} maps WordNet ids, but the class folders of {root} are not "
            f"WordNet ids ({', '.join(folders[:3])}, ...)"
        )
    return tuple(folders), label_of
