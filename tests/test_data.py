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
    (tmp_path / "bad.csv").write_text("picture,kind\na.png,cat\n")
    with pytest.raises(
        ValueError, match=r"no image path column .*columns found: \['picture', 'kind'\]"
    ):
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


# ----------------------------------------------------------------------------- pixel limit


def test_one_pixel_limit_for_pil_and_us(tmp_path):
    from siglip_dola.cli.options import DEFAULT_PIXEL_LIMIT_TEXT
    from siglip_dola.data import MAX_PIXELS

    assert DEFAULT_PIXEL_LIMIT_TEXT.endswith(str(MAX_PIXELS)) and MAX_PIXELS == 16384**2
    # 10,000 x 10,000 is above PIL's own default guard (~89.5 M pixels) but within ours
    big = tmp_path / "big.png"
    Image.new("1", (10000, 10000)).save(big)
    before = Image.MAX_IMAGE_PIXELS
    assert load_image(big).size == (10000, 10000)
    assert Image.MAX_IMAGE_PIXELS == before  # PIL's guard is restored after the decode
    with pytest.raises(ImageError, match=r"too large \(10000x10000 .*--max-pixels"):
        load_image(big, max_pixels=10000 * 10000 - 1)
    small = _png(tmp_path / "small.png", size=(40, 30))
    with pytest.raises(ImageError, match="limit 1000"):
        load_image(small, max_pixels=1000)


def _decode_size(path_and_limit):
    path, limit = path_and_limit
    return load_image(path, limit).size


def test_pixel_limit_holds_in_loader_workers(tmp_path):
    import torch

    big = tmp_path / "big.png"
    Image.new("1", (10000, 10000)).save(big)
    loader = torch.utils.data.DataLoader(
        [(big, 16384**2)], batch_size=None, num_workers=1, collate_fn=_decode_size
    )
    assert list(loader) == [(10000, 10000)]


def test_max_pixels_travels_with_the_set(tmp_path):
    root = tmp_path / "data"
    _png(root / "cat" / "a.png", size=(40, 40))
    _png(root / "dog" / "b.png", size=(8, 8))
    ds = load_dataset(str(root), max_pixels=100)
    assert ds.max_pixels == 100 and ds.subset([1]).max_pixels == 100
    with pytest.raises(ImageError, match="limit 100"):
        ds.image(0)
    assert ds.image(1).size == (8, 8)
    assert ds.fingerprint() != load_dataset(str(root)).fingerprint()
    with pytest.raises(ValueError, match="positive integer"):
        load_dataset(str(root), max_pixels=0)


# ----------------------------------------------------------------------------- class names


def test_imagenet_table():
    from siglip_dola.data import imagenet_classes

    table = imagenet_classes()
    assert len(table.wnids) == len(set(table.wnids)) == 1000
    assert list(table.wnids) == sorted(table.wnids)
    assert table.names[:3] == ("tench", "goldfish", "great white shark")
    assert table.wnids[0] == "n01440764"
    assert len({n.lower() for n in table.names}) == 1000
    assert table.names[744] == "projectile" and table.names[836] == "sunglass"


def test_classes_flag_forms(tmp_path):
    from siglip_dola.data import read_class_names, read_classes

    assert read_class_names("a, b ,c") == ["a", "b", "c"]
    assert read_classes(None) is None
    imagenet = read_classes("imagenet")
    assert len(imagenet.names) == 1000 and imagenet.wnids[1] == "n01443537"
    loc = tmp_path / "LOC_synset_mapping.txt"
    loc.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n")
    mapping = read_classes(str(loc))
    assert mapping.names == ("tench, Tinca tinca", "goldfish, Carassius auratus")
    assert mapping.wnids == ("n01440764", "n01443537")
    as_json = tmp_path / "map.json"
    as_json.write_text(json.dumps({"n01443537": "gold fish", "n01440764": "tench"}))
    assert read_classes(str(as_json)).name_of_wnid() == {
        "n01443537": "gold fish",
        "n01440764": "tench",
    }
    (tmp_path / "idx.json").write_text(json.dumps({"1": "dog", "0": "cat"}))
    assert read_classes(str(tmp_path / "idx.json")).names == ("cat", "dog")
    (tmp_path / "plain.txt").write_text("cat\n\ndog\n")
    assert read_classes(str(tmp_path / "plain.txt")).names == ("cat", "dog")
    (tmp_path / "bad.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(ValueError, match="expected a JSON list of class names"):
        read_classes(str(tmp_path / "bad.json"))


# ----------------------------------------------------------------------------- folders


def test_wordnet_id_folders_get_imagenet_names(tmp_path):
    root = tmp_path / "imagenet-a"
    for wnid in ("n01498041", "n01443537"):  # any subset of the 1,000 (ImageNet-A style)
        _png(root / wnid / "x.png")
    ds = load_dataset(str(root))
    assert ds.class_names == ("goldfish", "stingray") and ds.warnings == []
    (tmp_path / "map.json").write_text(json.dumps({"n01443537": "gold fish", "n01498041": "ray"}))
    ds = load_dataset(str(root), class_names=_classes(str(tmp_path / "map.json")))
    assert ds.class_names == ("gold fish", "ray")
    (tmp_path / "short.json").write_text(json.dumps({"n01443537": "gold fish"}))
    with pytest.raises(ValueError, match="no name for 1 WordNet id.*n01498041"):
        load_dataset(str(root), class_names=_classes(str(tmp_path / "short.json")))
    unknown = tmp_path / "in21k"
    for wnid in ("n00000001", "n00000002"):
        _png(unknown / wnid / "x.png")
    ds = load_dataset(str(unknown))
    assert ds.class_names == ("n00000001", "n00000002")
    assert len(ds.warnings) == 1 and "WordNet ids without a mapping" in ds.warnings[0]


def _classes(text):
    from siglip_dola.data import read_classes

    return read_classes(text)


def test_numbered_folders(tmp_path):
    v2 = tmp_path / "imagenetv2"
    for k in range(1000):
        (v2 / str(k)).mkdir(parents=True)
    _png(v2 / "0" / "a.png")
    _png(v2 / "2" / "b.png")
    _png(v2 / "10" / "c.png")
    ds = load_dataset(str(v2))
    assert len(ds.class_names) == 1000 and ds.class_names[:2] == ("tench", "goldfish")
    assert ds.labels.tolist() == [0, 10, 2] and ds.warnings == []  # folder order: 0, 10, 2
    digits = tmp_path / "mnist"
    for k in (0, 1, 2, 10):
        _png(digits / str(k) / "a.png")
    ds = load_dataset(str(digits))
    assert ds.class_names == ("0", "1", "2", "10") and ds.labels.tolist() == [0, 1, 3, 2]
    assert len(ds.warnings) == 1 and "all numbers" in ds.warnings[0]
    names = [f"class {k}" for k in range(11)]
    ds = load_dataset(str(digits), class_names=names)
    assert ds.class_names == tuple(names) and ds.labels.tolist() == [0, 1, 10, 2]
    assert ds.warnings == []
    with pytest.raises(ValueError, match="uses class index 10 but --classes names only 3"):
        load_dataset(str(digits), class_names=["a", "b", "c"])
    ds = load_dataset(str(digits), class_names=_classes("imagenet"))
    assert ds.class_names[10] == "brambling"


def test_split_and_nested_folders_refused(tmp_path):
    root = tmp_path / "cifar"
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            _png(root / split / cls / "a.png")
    with pytest.raises(ValueError, match=r"look like splits \(test, train\).*--split"):
        load_dataset(str(root))
    assert load_dataset(str(root), split="test").class_names == ("cat", "dog")
    assert load_dataset(str(root), split="test").name == "cifar"
    assert load_dataset(str(root / "test")).name == "cifar"  # a split folder: its parent's name
    with pytest.raises(ValueError, match="no split folder 'val'; its subfolders: test, train"):
        load_dataset(str(root), split="val")
    with pytest.raises(
        ValueError, match=r"nested a level deeper; pass .*cifar as the data set with --split"
    ):
        load_dataset(str(tmp_path))
    deeper = tmp_path / "animals"
    _png(deeper / "mammals" / "cat" / "a.png")
    _png(deeper / "mammals" / "dog" / "a.png")
    _png(deeper / "birds" / "a.png")
    with pytest.raises(ValueError, match=r"mammals holds no images of its own"):
        load_dataset(str(deeper))
    cifar100 = tmp_path / "cifar100"  # a lone class named like a split is a class
    for cls in ("train", "tractor", "tulip"):
        _png(cifar100 / cls / "a.png")
    assert load_dataset(str(cifar100)).class_names == ("tractor", "train", "tulip")


def test_unsupported_formats_list_what_is(tmp_path):
    (tmp_path / "shard.tar").write_bytes(b"x")
    with pytest.raises(
        ValueError, match=r"unsupported data set format: .*shard.tar \(a single tar"
    ):
        load_dataset(str(tmp_path / "shard.tar"))
    (tmp_path / "t.parquet").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"read it with datasets:.*supported: an image folder"):
        load_dataset(str(tmp_path / "t.parquet"))
    (tmp_path / "x.zip").write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported data set format.*wds:DIR"):
        load_dataset(str(tmp_path / "x.zip"))
    tars = tmp_path / "tars"
    tars.mkdir()
    (tars / "0.tar").write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported data set format.*single tar"):
        load_dataset(str(tars))


# ----------------------------------------------------------------------------- label files


def test_label_file_columns_and_formats(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png")
    (tmp_path / "l.csv").write_text("filepath,class\na.png,cat\nb.png,dog\n")
    ds = load_dataset(str(tmp_path / "l.csv"))
    assert ds.class_names == ("cat", "dog") and ds.metadata["image_column"] == "filepath"
    (tmp_path / "l.tsv").write_text("Path\tTarget\na.png\tcat\nb.png\tdog\n")
    assert load_dataset(str(tmp_path / "l.tsv")).labels.tolist() == [0, 1]
    (tmp_path / "l.jsonl").write_text(
        '{"img": "a.png", "y": "dog"}\n\n{"img": "b.png", "y": "cat"}\n'
    )
    ds = load_dataset(str(tmp_path / "l.jsonl"), image_column="img", label_column="y")
    assert ds.labels.tolist() == [1, 0]
    with pytest.raises(
        ValueError, match=r"no column 'z' \(--label-column\); columns found: \['img', 'y'\]"
    ):
        load_dataset(str(tmp_path / "l.jsonl"), label_column="z")
    (tmp_path / "bad.jsonl").write_text('{"img": "a.png"}\n{oops\n')
    with pytest.raises(ValueError, match="invalid JSON on line 2"):
        load_dataset(str(tmp_path / "bad.jsonl"), image_column="img", label_column="y")


def test_integer_labels_map_by_index(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "l.csv").write_text("image,label\na.png,2\na.png,0\na.png,10\n")
    ds = load_dataset(str(tmp_path / "l.csv"))
    assert ds.class_names == ("0", "2", "10") and ds.labels.tolist() == [1, 0, 2]
    assert "all numbers" in ds.warnings[0]
    names = [f"c{k}" for k in range(11)]
    ds = load_dataset(str(tmp_path / "l.csv"), class_names=names)
    assert ds.class_names == tuple(names) and ds.labels.tolist() == [2, 0, 10] and not ds.warnings
    with pytest.raises(ValueError, match="class index 10 but --classes names only 3"):
        load_dataset(str(tmp_path / "l.csv"), class_names=["a", "b", "c"])


def test_wordnet_id_labels(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "l.csv").write_text("image,label\na.png,n01443537\na.png,n01440764\n")
    ds = load_dataset(str(tmp_path / "l.csv"))
    assert ds.class_names == ("tench", "goldfish") and ds.labels.tolist() == [1, 0]
    ds = load_dataset(str(tmp_path / "l.csv"), class_names=_classes("imagenet"))
    assert len(ds.class_names) == 1000 and ds.labels.tolist() == [1, 0]
