"""One image in, 8-bit RGB out: the decoding rules and size limits, stated once.

Images are decoded lazily and converted to 8-bit RGB whatever their mode (grayscale, RGBA,
palette, CMYK, 16-bit). An image that cannot be used raises :class:`ImageError` with the
reason; the data sets turn it into a :class:`Skipped` entry (counted and listed, never a
silent loss).

The pixel limit is one number, :data:`MAX_PIXELS` (16384 x 16384) unless a data set carries
another (``--max-pixels``): PIL's own decompression-bomb guard is set to the same number for
the duration of each decode, in whatever process decodes (loader workers included), so the
two never disagree.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "MIN_SIDE",
    "ImageError",
    "Skipped",
    "check_max_pixels",
    "image_files",
    "load_image",
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
MAX_PIXELS = 16384 * 16384  # default limit (decompression bombs); --max-pixels raises it


@dataclass(frozen=True)
class Skipped:
    """An image that could not be used, and why."""

    source: str
    reason: str


class ImageError(ValueError):
    """An image that cannot be used."""


def check_max_pixels(value: int) -> int:
    """A pixel limit as a positive int, or a one-line ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"the pixel limit must be a positive integer, got {value!r}")
    return int(value)


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


def _too_large(width: int, height: int, max_pixels: int) -> ImageError:
    return ImageError(
        f"image too large ({width}x{height} = {width * height} pixels, limit {max_pixels}; "
        "--max-pixels raises it)"
    )


def _header_size(target: Path | io.BytesIO) -> tuple[int, int]:
    """Width and height from the header alone, PIL's guard off (the size of a refused image)."""
    if isinstance(target, io.BytesIO):
        target.seek(0)
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(target) as im:
            return im.size
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def load_image(source: Path | str | bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open, validate and convert an image (a file, or its encoded bytes) to RGB.

    Raises ``ImageError`` with the reason: unreadable, too small (a side under
    :data:`MIN_SIDE`), more than ``max_pixels`` pixels, file not found.
    """
    data = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else None
    target = data if data is not None else Path(source)
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels  # PIL warns above this (an error here), as we refuse
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(target) as im:
                if im.width * im.height > max_pixels:
                    raise _too_large(im.width, im.height, max_pixels)
                im = ImageOps.exif_transpose(im)
                im.load()
                image = to_rgb(im)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(*_header_size(target), max_pixels) from None
    except FileNotFoundError:
        raise ImageError("file not found") from None
    except Exception as exc:  # PIL raises many types for corrupt files
        raise ImageError(f"unreadable image ({type(exc).__name__}: {exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    if min(image.size) < MIN_SIDE:
        raise ImageError(f"image too small ({image.width}x{image.height} pixels)")
    return image


def image_files(folder: Path) -> list[Path]:
    """Image files anywhere below ``folder``, sorted."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
