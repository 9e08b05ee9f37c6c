"""Labelled image sets: image folders, CSV/JSON label files, and the bundled demo set.

Images are decoded lazily and converted to 8-bit RGB whatever their mode (grayscale, RGBA,
palette, CMYK, 16-bit). An unreadable image is skipped, counted and listed (``Skipped``),
never silently dropped.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from siglip_dola.io import read_records

__all__ = [
    "BUNDLED_CLASS_NAMES",
    "BUNDLED_TEMPLATES",
    "IMAGE_EXTENSIONS",
    "ImageSet",
    "Skipped",
    "bundled_model_dir",
    "load_dataset",
    "image_files",
    "load_image",
    "read_class_names",
    "to_rgb",
]

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)
MIN_SIDE = 2  # pixels; smaller images carry nothing a ViT can read
MAX_PIXELS = 16384 * 16384  # guard against decompression bombs

BUNDLED_CLASS_NAMES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
# Evaluation templates of the bundled demo: none of them was used to train the demo model
# (scripts/train_demo_model.py lists the training templates).
BUNDLED_TEMPLATES = (
    "a good photo of the {c}.",
    "a cropped photo of a {c}.",
    "a black and white photo of the {c}.",
    "a rendering of a {c}.",
    "a photo of the small {c}.",
    "a bright photo of a {c}.",
)


def _assets() -> Path:
    return Path(str(resources.files("siglip_dola") / "assets"))


def bundled_model_dir() -> Path:
    """The demo SigLIP model (transformers format) shipped with the package."""
    return _assets() / "demo_model"


@dataclass(frozen=True)
class Skipped:
    """An image that could not be used, and why."""

    source: str
    reason: str


class ImageError(ValueError):
    """An image file that cannot be used."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (alpha composited on white, 16-bit scaled down)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if image.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(scaled.clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")  # CMYK, L, YCbCr, ...


def load_image(path: Path | str) -> Image.Image:
    """Open, validate and convert an image file to RGB; raises ``ImageError`` with the reason."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ImageError(f"image too large ({im.width}x{im.height} pixels)")
                im = ImageOps.exif_transpose(im)
                im.load()
                image = to_rgb(im)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"image too large: {exc}") from None
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except Exception as exc:  # PIL raises many types for corrupt files
        raise ImageError(f"unreadable image ({type(exc).__name__}: {exc})") from None
    if min(image.size) < MIN_SIDE:
        raise ImageError(f"image too small ({image.width}x{image.height} pixels)")
    return image


@dataclass
class ImageSet:
    """A labelled image set. Items are file paths or in-memory uint8 arrays [H, W] / [H, W, 3]."""

    name: str
    class_names: tuple[str, ...]
    items: list[Path | np.ndarray]
    labels: np.ndarray  # int64 [N], indices into class_names
    templates: tuple[str, ...] | None = None  # the set's own evaluation templates, if any
    skipped: list[Skipped] = field(default_factory=list)  # problems found while listing

    def __len__(self) -> int:
        return len(self.items)

    def source(self, index: int) -> str:
        item = self.items[index]
        return str(item) if isinstance(item, Path) else f"{self.name}[{index}]"

    def image(self, index: int) -> Image.Image:
        """The RGB image at ``index``; raises ``ImageError`` for an unusable file."""
        item = self.items[index]
        if isinstance(item, Path):
            return load_image(item)
        return to_rgb(Image.fromarray(item))

    def subset(self, indices: Sequence[int], name: str | None = None) -> ImageSet:
        idx = list(indices)
        return ImageSet(
            name=name or self.name,
            class_names=self.class_names,
            items=[self.items[i] for i in idx],
            labels=self.labels[idx],
            templates=self.templates,
            skipped=list(self.skipped),
        )

    def split_indices(self, fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
        """Seeded, class-stratified (validation, rest) positions."""
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
        rng = np.random.default_rng(seed)
        val: list[int] = []
        for c in range(len(self.class_names)):
            members = np.flatnonzero(self.labels == c)
            rng.shuffle(members)
            val.extend(members[: int(round(len(members) * fraction))].tolist())
        val_set = set(val)
        return sorted(val), [i for i in range(len(self)) if i not in val_set]

    def split(self, fraction: float, seed: int = 0) -> tuple[ImageSet, ImageSet]:
        """Seeded, class-stratified (validation, rest) subsets."""
        val, rest = self.split_indices(fraction, seed)
        return self.subset(val, f"{self.name}:val"), self.subset(rest, f"{self.name}:test")

    def fingerprint(self) -> str:
        """Identifies the items and labels (paths and sizes, or array bytes)."""
        h = hashlib.sha256()
        h.update(json.dumps(list(self.class_names)).encode())
        h.update(self.labels.astype(np.int64).tobytes())
        for item in self.items:
            if isinstance(item, Path):
                stat = item.stat() if item.exists() else None
                h.update(
                    f"{item}:{stat.st_size if stat else -1}:{stat.st_mtime_ns if stat else -1}".encode()
                )
            else:
                h.update(np.ascontiguousarray(item).tobytes())
        return h.hexdigest()[:16]


def image_files(folder: Path) -> list[Path]:
    """Image files anywhere below ``folder``, sorted."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def load_image_folder(root: Path) -> ImageSet:
    """One subfolder per class (sorted names), images anywhere below it."""
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class subfolders: expected ROOT/<class name>/<images>")
    items: list[Path | np.ndarray] = []
    labels = []
    for index, name in enumerate(classes):
        files = image_files(root / name)
        items.extend(files)
        labels.extend([index] * len(files))
    if not items:
        raise ValueError(
            f"{root} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders"
        )
    return ImageSet(root.name, tuple(classes), items, np.asarray(labels, dtype=np.int64))


LABEL_FILE_COLUMNS = ("image", "label")


def load_label_file(path: Path, class_names: Sequence[str] | None = None) -> ImageSet:
    """A CSV (columns image,label) or JSON list of (image path, label); relative paths are
    resolved against the file's folder. With ``class_names`` an unknown label is an error;
    without, the classes are the sorted distinct labels."""
    if not path.is_file():
        raise ValueError(f"label file {path} does not exist")
    rows = [
        (where, str(r["image"]), str(r["label"]))
        for where, r in read_records(path, LABEL_FILE_COLUMNS)
    ]
    if not rows:
        raise ValueError(f"{path} lists no images")
    if class_names is None:
        classes = tuple(sorted({label for _, _, label in rows}))
    else:
        classes = tuple(class_names)
    index = {name: i for i, name in enumerate(classes)}
    items: list[Path | np.ndarray] = []
    labels = []
    for where, image, label in rows:
        if label not in index:
            raise ValueError(
                f"{path}, {where}: unknown class {label!r}; known classes: {list(classes)}"
            )
        image_path = Path(image)
        items.append(image_path if image_path.is_absolute() else path.parent / image_path)
        labels.append(index[label])
    return ImageSet(path.stem, classes, items, np.asarray(labels, dtype=np.int64))


def load_bundled_fashion_mnist() -> ImageSet:
    """The bundled held-out Fashion-MNIST test subset (MIT licence, see assets/LICENSE-data)."""
    path = _assets() / "fashion_mnist_test.npz"
    with np.load(path) as data:
        images, labels = data["images"], data["labels"].astype(np.int64)
    return ImageSet(
        "fashion-mnist", BUNDLED_CLASS_NAMES, list(images), labels, templates=BUNDLED_TEMPLATES
    )


def read_class_names(text: str | None) -> list[str] | None:
    """``--classes``: a comma-separated list, or a file with one name per line."""
    if text is None:
        return None
    path = Path(text)
    if path.is_file():
        return [
            line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
    return [x.strip() for x in text.split(",")]


def load_dataset(spec: str, class_names: Sequence[str] | None = None) -> ImageSet:
    """``bundled:fashion-mnist``, ``folder:DIR`` (or just DIR), ``csv:FILE``/``json:FILE``
    (or just the file).

    ``class_names``: for a label file, the classes (in order) its labels must come from; for
    a folder or the bundled set, display names for its classes in their order (same count).
    """
    image_set = _load_dataset(spec, class_names)
    if class_names is not None and list(image_set.class_names) != list(class_names):
        if len(class_names) != len(image_set.class_names):
            raise ValueError(
                f"--classes names {len(class_names)} classes but {spec} has "
                f"{len(image_set.class_names)}"
            )
        image_set.class_names = tuple(class_names)
    return image_set


def _load_dataset(spec: str, class_names: Sequence[str] | None) -> ImageSet:
    if spec in ("bundled", "bundled:fashion-mnist"):
        return load_bundled_fashion_mnist()
    if spec.startswith("bundled:"):
        raise ValueError(f"unknown bundled data set {spec!r}: available: bundled:fashion-mnist")
    scheme, _, rest = spec.partition(":")
    if scheme in ("folder", "csv", "json") and rest:
        path = Path(rest)
    else:
        path = Path(spec)
    if path.is_dir():
        return load_image_folder(path)
    if path.is_file():
        return load_label_file(path, class_names)
    raise ValueError(
        f"data set {spec!r} not found: expected bundled:fashion-mnist, an image folder "
        "(one subfolder per class) or a CSV/JSON label file"
    )
