"""Data sets: folders, label files, the bundled set; bad images are counted skips."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from siglip_dola.data import (
    BUNDLED_CLASS_NAMES,
    ImageError,
    load_dataset,
    load_image,
    to_rgb,
)


def _png(path, mode="RGB", size=(8, 8), value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode != "RGB" else (value, value, value)).save(path)
    return path


@pytest.mark.parametrize(
    "mode,value",
    [
        ("L", 100),
        ("LA", (100, 255)),
        ("RGBA", (10, 20, 30, 255)),
        ("P", 3),
        ("I;16", 30000),
        ("CMYK", (0, 0, 0, 0)),
        ("1", 1),
        ("I", 70000),
        ("F", 0.5),
    ],
)
def test_every_mode_becomes_8bit_rgb(mode, value):
    image = Image.new(mode, (5, 4), value)
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (5, 4)


def test_transparent_pixels_composite_on_white():
    image = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_scaled_not_clipped():
    image = Image.new("I;16", (2, 2), 65535)
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


def test_bad_files(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageError, match="unreadable image"):
        load_image(corrupt)
    with pytest.raises(ImageError, match="too small"):
        load_image(_png(tmp_path / "tiny.png", size=(1, 1)))
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "nope.png")


def test_image_folder(tmp_path):
    root = tmp_path / "data"
    _png(root / "cat" / "a.png")
    _png(root / "cat" / "b.jpg")
    _png(root / "dog" / "sub" / "c.png", mode="L")
    (root / "dog" / "notes.txt").write_text("not an image")
    ds = load_dataset(str(root))
    assert ds.class_names == ("cat", "dog")
    assert ds.labels.tolist() == [0, 0, 1]
    assert ds.image(2).mode == "RGB"
    assert load_dataset(f"folder:{root}").class_names == ("cat", "dog")


def test_empty_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        load_dataset(str(tmp_path / "empty"))
    (tmp_path / "noimg" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no images"):
        load_dataset(str(tmp_path / "noimg"))
    with pytest.raises(ValueError, match="not found"):
        load_dataset(str(tmp_path / "missing"))


def test_csv_and_json_label_files(tmp_path):
    _png(tmp_path / "img" / "a.png")
    _png(tmp_path / "img" / "b.png")
    (tmp_path / "labels.csv").write_text("image,label\nimg/a.png,cat\nimg/b.png,dog\n")
    ds = load_dataset(str(tmp_path / "labels.csv"))
    assert ds.class_names == ("cat", "dog") and ds.labels.tolist() == [0, 1]
    assert ds.items[0] == tmp_path / "img" / "a.png"
    (tmp_path / "labels.json").write_text(json.dumps([{"image": "img/b.png", "label": "dog"}]))
    ds = load_dataset(f"json:{tmp_path / 'labels.json'}", class_names=["cat", "dog"])
    assert ds.labels.tolist() == [1]


def test_unknown_class_in_label_file(tmp_path):
    (tmp_path / "labels.csv").write_text("image,label\na.png,cat\nb.png,cow\n")
    with pytest.raises(ValueError, match=r"line 3: unknown class 'cow'"):
        load_dataset(str(tmp_path / "labels.csv"), class_names=["cat", "dog"])
    (tmp_path / "bad.csv").write_text("path,cls\na.png,cat\n")
    with pytest.raises(ValueError, match="columns 'image' and 'label'"):
        load_dataset(str(tmp_path / "bad.csv"))
    (tmp_path / "bad.json").write_text('[{"image": "a.png"}')
    with pytest.raises(ValueError, match="invalid JSON at line 1"):
        load_dataset(str(tmp_path / "bad.json"))


def test_bundled_fashion_mnist():
    ds = load_dataset("bundled:fashion-mnist")
    assert len(ds) >= 2000
    assert ds.class_names == BUNDLED_CLASS_NAMES
    assert set(np.unique(ds.labels)) == set(range(10))
    assert ds.image(0).mode == "RGB" and ds.image(0).size == (28, 28)
    val, test = ds.split_indices(0.25, seed=0)
    assert not set(val) & set(test) and len(val) + len(test) == len(ds)
    assert ds.split_indices(0.25, seed=0) == (val, test)
    with pytest.raises(ValueError, match="unknown bundled data set"):
        load_dataset("bundled:imagenet")
