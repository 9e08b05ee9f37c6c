"""Data-set fixtures written by the real libraries in the real layouts, all holding the same
bundled Fashion-MNIST images (PNG, lossless): clip_benchmark's webdataset folder (webdataset's
ShardWriter), Hugging Face ``save_to_disk`` and parquet (Image + ClassLabel features),
ImageNet-style WordNet-id and numbered folders, label files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from siglip_dola.data import BUNDLED_CLASS_NAMES, BUNDLED_TEMPLATES, load_dataset

# Ten ImageNet WordNet ids standing in for the ten Fashion-MNIST classes, in ascending order
# so that a folder of them lists its classes in the bundled order (classes 0, 100, ..., 900).
WNIDS = (
    "n01440764",
    "n01860187",
    "n02097474",
    "n02165105",
    "n02669723",
    "n03042490",
    "n03532672",
    "n03887697",
    "n04243546",
    "n04562935",
)


def folder_order(count: int) -> list[int]:
    """The bundled positions in the order a class-folder fixture lists them (by class)."""
    _, labels = bundled_images(count)
    return sorted(range(count), key=lambda i: (int(labels[i]), i))


def bundled_images(count: int) -> tuple[list[np.ndarray], np.ndarray]:
    data = load_dataset("bundled:fashion-mnist")
    return [data.items[i] for i in range(count)], data.labels[:count].copy()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_wds(
    root: Path,
    count: int,
    shard_size: int = 70,
    split: str = "test",
    class_names=BUNDLED_CLASS_NAMES,
    templates=BUNDLED_TEMPLATES,
    extra_samples: list[dict] | None = None,
) -> Path:
    """clip_benchmark's layout, written as its convert_dataset writes it (ShardWriter,
    keys s0000000.., image under png, label in cls)."""
    import webdataset

    images, labels = bundled_images(count)
    (root / split).mkdir(parents=True, exist_ok=True)
    if class_names is not None:
        (root / "classnames.txt").write_text("\n".join(class_names) + "\n")
    if templates is not None:
        (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    samples = [
        {"__key__": f"s{i:07d}", "png": png_bytes(img), "cls": int(label)}
        for i, (img, label) in enumerate(zip(images, labels))
    ]
    samples += extra_samples or []
    with webdataset.ShardWriter(
        str(root / split / "%d.tar"), maxcount=shard_size, verbose=0
    ) as sink:
        for sample in samples:
            sink.write(sample)
        shards = sink.shard
    (root / split / "nshards.txt").write_text(f"{shards}\n")
    return root


def write_wds_retrieval(root: Path, count: int, shard_size: int = 7, split: str = "test") -> Path:
    import webdataset

    images, labels = bundled_images(count)
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "dataset_type.txt").write_text("retrieval\n")
    with webdataset.ShardWriter(
        str(root / split / "%d.tar"), maxcount=shard_size, verbose=0
    ) as sink:
        for i, (img, label) in enumerate(zip(images, labels)):
            name = BUNDLED_CLASS_NAMES[label]
            captions = [f"a photo of a {name}.", f"a {name}, number {i}."]
            sink.write({"__key__": f"s{i:07d}", "png": png_bytes(img), "txt": "\n".join(captions)})
        shards = sink.shard
    (root / split / "nshards.txt").write_text(f"{shards}\n")
    return root


def _hf_dataset(count: int):
    import datasets

    images, labels = bundled_images(count)
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=list(BUNDLED_CLASS_NAMES))}
    )
    rows = {
        "img": [{"bytes": png_bytes(i), "path": None} for i in images],
        "label": labels.tolist(),
    }
    return datasets.Dataset.from_dict(rows, features=features)


def write_hf_saved(root: Path, count: int) -> Path:
    import datasets

    ds = _hf_dataset(count)
    datasets.DatasetDict({"test": ds, "train": ds.select(range(5))}).save_to_disk(str(root))
    return root


def write_parquet(path: Path, count: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _hf_dataset(count).to_parquet(str(path))
    return path


def write_folder(root: Path, count: int, folder_names, empty: tuple[str, ...] = ()) -> Path:
    images, labels = bundled_images(count)
    for i, (img, label) in enumerate(zip(images, labels)):
        path = root / folder_names[label] / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(img))
    for name in empty:
        (root / name).mkdir(parents=True, exist_ok=True)
    return root


def write_label_file(
    path: Path, count: int, integer: bool = False, columns=("image", "label")
) -> Path:
    images, labels = bundled_images(count)
    lines = [",".join(columns)]
    for i, (img, label) in enumerate(zip(images, labels)):
        image = path.parent / "images" / f"{i:04d}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(png_bytes(img))
        value = str(int(label)) if integer else BUNDLED_CLASS_NAMES[label]
        lines.append(f"images/{image.name},{value}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_wnid_mapping(path: Path) -> Path:
    path.write_text(json.dumps(dict(zip(WNIDS, BUNDLED_CLASS_NAMES))))
    return path
