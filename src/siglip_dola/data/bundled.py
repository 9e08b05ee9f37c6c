"""What ships with the package: the demo model and the held-out Fashion-MNIST images."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from siglip_dola.data.imageset import ImageSet

__all__ = [
    "BUNDLED_CLASS_NAMES",
    "BUNDLED_SETS",
    "BUNDLED_TEMPLATES",
    "bundled_model_dir",
    "load_bundled_fashion_mnist",
]

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
BUNDLED_SETS = ("bundled:fashion-mnist", "bundled:photos")


def _assets() -> Path:
    return Path(str(resources.files("siglip_dola") / "assets"))


def bundled_model_dir() -> Path:
    """The demo SigLIP model (transformers format) shipped with the package."""
    return _assets() / "demo_model"


def load_bundled_fashion_mnist() -> ImageSet:
    """The bundled held-out Fashion-MNIST test subset (MIT licence, see assets/LICENSE-data)."""
    path = _assets() / "fashion_mnist_test.npz"
    with np.load(path) as data:
        images, labels = data["images"], data["labels"].astype(np.int64)
    return ImageSet(
        "fashion-mnist",
        BUNDLED_CLASS_NAMES,
        list(images),
        labels,
        templates=BUNDLED_TEMPLATES,
        metadata={"format": "bundled"},
    )
