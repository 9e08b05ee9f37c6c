"""Data formats written by the real libraries: clip_benchmark webdataset folders (streamed
shard by shard), Hugging Face datasets, the Karpathy caption files."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
from _data_fixtures import (
    bundled_images,
    png_bytes,
    write_hf_saved,
    write_parquet,
    write_wds,
    write_wds_retrieval,
)
from PIL import Image

from siglip_dola.data import (
    BUNDLED_CLASS_NAMES,
    BUNDLED_TEMPLATES,
    WebDatasetSource,
    load_dataset,
    load_retrieval_set,
    read_classes,
)


class MeanPixel:
    """A picklable stand-in for a model transform: the image's mean pixel."""

    def __call__(self, image):
        return {"pixels": torch.tensor(np.asarray(image, dtype=np.float32).mean())}


@pytest.fixture(autouse=True)
def _hf_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _batches(source, workers=0, batch_size=8):
    dataset = source.block_batches(range(len(source.shards)), batch_size, MeanPixel())
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, collate_fn=lambda x: x
    )
    return list(loader)


# ----------------------------------------------------------------------------- webdataset


def test_wds_layout_streams_shard_by_shard(tmp_path):
    root = write_wds(tmp_path / "wds_fashion", 50, shard_size=20)
    source = load_dataset(f"wds:{root}")
    assert isinstance(source, WebDatasetSource) and source.name == "wds/fashion"
    assert [b.size for b in source.cache_blocks()] == [20, 20, 10]
    assert source.class_names == BUNDLED_CLASS_NAMES and source.templates == BUNDLED_TEMPLATES
    assert load_dataset(str(root)).name == "wds/fashion"  # found from the layout, no wds:
    images, labels = bundled_images(50)
    expected = [
        float(np.asarray(Image.fromarray(i).convert("RGB"), np.float32).mean()) for i in images
    ]
    for workers in (0, 2):
        batches = _batches(source, workers)
        by_block: dict[int, list] = {}
        for b in batches:
            by_block.setdefault(b.block, []).append(b)
        assert sorted(by_block) == [0, 1, 2]
        for block, parts in by_block.items():
            assert [p.last for p in parts] == [False] * (len(parts) - 1) + [True]
            positions = [q for p in parts for q in p.positions]
            assert positions == list(range(20 * block, min(20 * block + 20, 50)))
        positions = sorted(q for b in batches for q in b.positions)
        assert positions == list(range(50))
        got = {
            q: (lab, float(v))
            for b in batches
            for q, lab, v in zip(b.positions, b.labels, b.batch["pixels"])
        }
        assert [got[q][0] for q in range(50)] == labels.tolist()
        assert [got[q][1] for q in range(50)] == pytest.approx(expected)


def test_wds_bad_samples_are_counted_skips(tmp_path):
    extra = [
        {"__key__": "s9000000", "png": b"\x89PNG\r\n\x1a\n not really", "cls": 1},
        {"__key__": "s9000001", "cls": 2},  # no image
        {"__key__": "s9000002", "png": png_bytes(bundled_images(1)[0][0])},  # no label
        {"__key__": "s9000003", "png": png_bytes(bundled_images(1)[0][0]), "cls": "boot"},
    ]
    root = write_wds(tmp_path / "w", 6, shard_size=5, extra_samples=extra)
    source = load_dataset(f"wds:{root}")
    assert len(source) == 10 and source.labels.tolist()[6:] == [1, -1, -1, -1]
    batches = _batches(source, batch_size=3)
    skipped = [s for b in batches for s in b.skipped]
    assert len(skipped) == 4
    reasons = " | ".join(f"{s.source}: {s.reason}" for s in skipped)
    assert "s9000000: unreadable image" in reasons
    assert "no image (webp, png, jpg, jpeg member) (sample s9000001)" in reasons
    assert "no label (cls member) (sample s9000002)" in reasons
    assert "label 'boot' in cls is not a class index" in reasons
    assert sorted(q for b in batches for q in b.positions) == list(range(6))


def test_wds_bad_layouts_are_clear_errors(tmp_path):
    root = write_wds(tmp_path / "w", 12, shard_size=5)
    with pytest.raises(ValueError, match=r"w/val/nshards.txt not found.*splits here: test"):
        load_dataset(f"wds:{root}", split="val")
    (root / "test" / "nshards.txt").write_text("three\n")
    with pytest.raises(ValueError, match="nshards.txt must hold the number of shards"):
        load_dataset(f"wds:{root}")
    (root / "test" / "nshards.txt").write_text("4\n")
    with pytest.raises(ValueError, match=r"lacks 1 of the 4 shards .*: 3.tar"):
        load_dataset(f"wds:{root}")
    (root / "test" / "nshards.txt").write_text("3\n")
    (root / "classnames.txt").write_text("a\nb\nc\n")
    with pytest.raises(
        ValueError, match=r"classnames.txt names 3 classes \(labels 0..2\) but \d+ sample"
    ):
        load_dataset(f"wds:{root}")
    with pytest.raises(ValueError, match=r"--classes names 2 classes but .*classnames.txt names 3"):
        load_dataset(f"wds:{root}", class_names=["x", "y"])
    (root / "classnames.txt").unlink()
    with pytest.raises(
        ValueError, match="classnames.txt not found: name the classes with --classes"
    ):
        load_dataset(f"wds:{root}")
    assert (
        load_dataset(f"wds:{root}", class_names=list(BUNDLED_CLASS_NAMES)).class_names
        == BUNDLED_CLASS_NAMES
    )
    (root / "test" / "1.tar").write_bytes(b"this is no tar file" * 100)
    with pytest.raises(ValueError, match=r"1.tar is not a readable tar file"):
        load_dataset(f"wds:{root}", class_names=list(BUNDLED_CLASS_NAMES))
    retrieval = write_wds_retrieval(tmp_path / "caps", 4)
    with pytest.raises(ValueError, match="caption set .*--task zeroshot_retrieval"):
        load_dataset(f"wds:{retrieval}")


def test_wds_wordnet_class_names_map(tmp_path):
    root = write_wds(tmp_path / "w", 10, class_names=("n01440764", "n01443537") * 5)
    with pytest.raises(ValueError, match="duplicate|names"):
        # ten names with repeats are not the point here: use distinct ids
        from siglip_dola.text import validate_class_names

        validate_class_names(load_dataset(f"wds:{root}").class_names)
    table = read_classes("imagenet")
    (root / "classnames.txt").write_text("\n".join(table.wnids[:10]) + "\n")
    assert load_dataset(f"wds:{root}").class_names == table.names[:10]


def test_wds_truncated_shards(tmp_path):
    root = write_wds(tmp_path / "w", 12, shard_size=12)
    shard = root / "test" / "0.tar"
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    whole = shard.read_bytes()
    cut = members[-4].offset_data + 10  # inside a late member's data
    source = load_dataset(f"wds:{root}")
    shard.write_bytes(whole[:cut])  # cut short after it was opened: the rest are counted skips
    batches = _batches(source, batch_size=5)
    kept = sorted(q for b in batches for q in b.positions)
    skipped = [s for b in batches for s in b.skipped]
    assert len(kept) + len(skipped) == len(source) == 12 and 1 <= len(skipped) <= 3
    assert all(s.reason.startswith(("not read:", "image member unreadable")) for s in skipped)
    assert batches[-1].last and [b.last for b in batches].count(True) == 1
    with pytest.raises(ValueError, match=r"0.tar is not a readable tar file"):
        load_dataset(f"wds:{root}")  # cut short before: the shard is refused, named


def test_wds_embeddings_resume_by_shard_and_equal_the_arrays(tmp_path):
    from siglip_dola.data import bundled_model_dir
    from siglip_dola.embeddings import extract_layer_embeddings
    from siglip_dola.models import load_model
    from siglip_dola.settings import RunSettings

    model = load_model(f"hf:{bundled_model_dir()}")
    root = write_wds(tmp_path / "w", 45, shard_size=20)
    source = load_dataset(f"wds:{root}")
    settings = RunSettings(batch_size=20, progress=False, cache_dir=tmp_path / "cache")
    first = extract_layer_embeddings(model.vision, source, [6], settings, shard=(0, 2))
    assert first.indices.tolist() == list(range(40))  # rank 0 of 2: shards 0 and 1
    blocks = sorted(p.name for p in (tmp_path / "cache").glob("embeddings/*/blocks/*"))
    assert blocks == ["block-000000", "block-000001"]
    whole = extract_layer_embeddings(model.vision, source, [6], settings)
    reference = load_dataset("bundled:fashion-mnist").subset(range(45))
    plain = extract_layer_embeddings(model.vision, reference, [6], settings.replace(cache_dir=None))
    # batches of 20 in shards of 20 hold the same images as in the set's own blocks: equal bits
    assert np.array_equal(np.asarray(whole.embeddings), np.asarray(plain.embeddings))
    assert whole.labels.tolist() == plain.labels.tolist()


def test_wds_caption_set(tmp_path):
    root = write_wds_retrieval(tmp_path / "wds_caps", 10, shard_size=4)
    data = load_retrieval_set(f"wds:{root}")
    assert data.name == "wds/caps" and data.num_images == 10 and len(data.captions) == 20
    assert data.caption_image.tolist() == [i // 2 for i in range(20)]
    first = BUNDLED_CLASS_NAMES[bundled_images(1)[1][0]]
    assert data.captions[:2] == [f"a photo of a {first}.", f"a {first}, number 0."]
    assert isinstance(data.images, WebDatasetSource)
    assert data.image_captions()[3] == [6, 7]


# ----------------------------------------------------------------------------- HF datasets


def _pixels(image_set, i):
    return np.asarray(image_set.image(i))


def test_saved_dataset_dict_and_its_splits(tmp_path):
    root = write_hf_saved(tmp_path / "fm_saved", 30)
    data = load_dataset(f"datasets:{root}")
    assert data.name == "fm_saved" and len(data) == 30 and data.metadata["split"] == "test"
    assert data.class_names == BUNDLED_CLASS_NAMES
    images, labels = bundled_images(30)
    assert data.labels.tolist() == labels.tolist()
    assert np.array_equal(_pixels(data, 7), np.asarray(Image.fromarray(images[7]).convert("RGB")))
    assert len(load_dataset(f"datasets:{root}", split="train")) == 5
    with pytest.raises(ValueError, match="has no split 'val'; its splits: test, train"):
        load_dataset(f"datasets:{root}", split="val")
    one = load_dataset(f"datasets:{root / 'test'}")  # a saved Dataset, not a dict
    assert len(one) == 30 and one.subset([3, 4]).labels.tolist() == labels[3:5].tolist()
    arrow = next((root / "test").glob("*.arrow"))
    assert len(load_dataset(f"datasets:{arrow}")) == 30
    assert one.fingerprint() == load_dataset(f"datasets:{root / 'test'}").fingerprint()


def test_parquet_files_and_folders(tmp_path):
    path = write_parquet(tmp_path / "pq" / "test-00000-of-00001.parquet", 20)
    data = load_dataset(f"datasets:{path}")
    assert data.class_names == BUNDLED_CLASS_NAMES and len(data) == 20
    folder = load_dataset(f"datasets:{tmp_path / 'pq'}")
    assert folder.labels.tolist() == data.labels.tolist() and folder.name == "pq"
    with pytest.raises(ValueError, match="no split 'train'; its splits: test"):
        load_dataset(f"datasets:{tmp_path / 'pq'}", split="train")


def test_dataset_columns_by_type_or_by_flag(tmp_path):
    import datasets

    images, labels = bundled_images(6)
    rows = {
        "picture": [{"bytes": png_bytes(i), "path": None} for i in images],
        "category": [BUNDLED_CLASS_NAMES[k] for k in labels],
        "other": list(range(6)),
    }
    features = datasets.Features(
        {
            "picture": datasets.Image(),
            "category": datasets.Value("string"),
            "other": datasets.Value("int64"),
        }
    )
    path = tmp_path / "t.parquet"
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    with pytest.raises(
        ValueError, match=r"no ClassLabel column .*--label-column.*'category': 'Value'"
    ):
        load_dataset(f"datasets:{path}")
    data = load_dataset(f"datasets:{path}", label_column="category")
    assert data.class_names == tuple(sorted({BUNDLED_CLASS_NAMES[k] for k in labels}))
    data = load_dataset(f"datasets:{path}", label_column="other", class_names=list("abcdef"))
    assert data.class_names == tuple("abcdef") and data.labels.tolist() == list(range(6))
    with pytest.raises(ValueError, match="column 'other' is a Value, not an Image column"):
        load_dataset(f"datasets:{path}", image_column="other", label_column="category")
    with pytest.raises(ValueError, match=r"no column 'pic' \(--image-column\)"):
        load_dataset(f"datasets:{path}", image_column="pic", label_column="category")


def test_dataset_wordnet_class_labels_and_bad_rows(tmp_path):
    import datasets

    from siglip_dola.data import imagenet_classes

    images, _ = bundled_images(3)
    table = imagenet_classes()
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(table.wnids[:3]))}
    )
    rows = {
        "image": [
            {"bytes": png_bytes(images[0]), "path": None},
            {"bytes": b"junk", "path": None},
            None,
        ],
        "label": [0, 1, 2],
    }
    path = tmp_path / "w.parquet"
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    data = load_dataset(f"datasets:{path}")
    assert data.class_names == table.names[:3]
    assert data.image(0).size == (28, 28)
    from siglip_dola.data import ImageError

    with pytest.raises(ImageError, match="unreadable image"):
        data.image(1)
    with pytest.raises(ImageError, match="no image in this row"):
        data.image(2)


def test_hub_id_without_a_network_is_one_line(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="no local path, and the hub could not give it") as info:
        load_dataset("datasets:someone/no-such-set", split="validation")
    assert "\n" not in str(info.value) and "'validation'" in str(info.value)
    with pytest.raises(ValueError, match=r"datasets:\./missing.parquet does not exist"):
        load_dataset("datasets:./missing.parquet")


# ----------------------------------------------------------------------------- Karpathy


def _karpathy(tmp_path, dataset="coco"):
    images, _ = bundled_images(4)
    root = tmp_path / "coco"
    entries = []
    for i, img in enumerate(images):
        folder = "val2014"
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / folder / f"COCO_{i}.png")
        sentences = [{"raw": f"caption {k} of image {i}.", "tokens": []} for k in range(6)]
        split = "test" if i < 3 else "train"
        entries.append(
            {
                "filepath": folder,
                "filename": f"COCO_{i}.png",
                "split": split,
                "sentences": sentences,
            }
        )
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"dataset": dataset, "images": entries}))
    return path, root


def test_karpathy_json(tmp_path):
    path, root = _karpathy(tmp_path)
    data = load_retrieval_set(str(path), images_root=root)
    assert data.name == "mscoco_captions" and data.num_images == 3
    assert len(data.captions) == 15 and data.captions[5] == "caption 0 of image 1."
    assert data.images.image(2).size == (28, 28)
    assert load_retrieval_set(str(path), images_root=root, split="train").num_images == 1
    with pytest.raises(
        ValueError, match=r"no images in split 'val'; splits: \{'test': 3, 'train': 1\}"
    ):
        load_retrieval_set(str(path), images_root=root, split="val")
    missing = load_retrieval_set(str(path))  # images looked for beside the JSON: not there
    assert not missing.images.items[0].exists()
