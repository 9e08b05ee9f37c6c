"""The command line end to end on the bundled model and data (real model, real files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from siglip_dola.cli import main
from siglip_dola.data import bundled_model_dir, load_dataset
from siglip_dola.models import load_model
from siglip_dola.text import build_text_bank

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundled():
    return load_model(f"hf:{bundled_model_dir()}")


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory):
    """40 bundled images written as PNG files in class folders, plus a corrupt file."""
    data = load_dataset("bundled:fashion-mnist")
    root = tmp_path_factory.mktemp("folder")
    for i in range(40):
        name = data.class_names[data.labels[i]]
        path = root / name / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.items[i]).save(path)
    (root / "bag" / "broken.png").parent.mkdir(exist_ok=True)
    (root / "bag" / "broken.png").write_bytes(b"not an image at all")
    return root


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_eval_baseline_equals_direct_computation(tmp_path, bundled, capsys):
    out = tmp_path / "results.json"
    code, stdout, _ = _run(
        ["eval", "--quiet", "--no-cache", "--static-layers", "20,22", "--output", str(out)], capsys
    )
    assert code == 0 and "baseline" in stdout
    results = json.loads(out.read_text())
    assert results["task"] == "zeroshot_classification" and "dola" in results
    # direct: argmax of the model's own image embedding against the text bank
    data = load_dataset("bundled:fashion-mnist")
    bank = build_text_bank(
        bundled.text, data.class_names, data.templates, cache_dir=None, progress=False
    )
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data), 500):
            images = [data.image(i) for i in range(start, min(start + 500, len(data)))]
            emb = bundled.vision.image_embedding(bundled.vision.preprocess(images))
            pred = (torch.nn.functional.normalize(emb, dim=-1) @ bank.T).argmax(-1)
            correct += int((pred.numpy() == data.labels[start : start + 500]).sum())
    assert results["metrics"]["acc1"] == pytest.approx(correct / len(data), abs=1e-9)
    names = [v["name"] for v in results["dola"]["variants"]]
    assert "dynamic [17-24] a=0.1" in names and "static L22 a=0.1" in names
    assert len(results["dola"]["per_layer_acc1"]) == 24


def test_eval_folder_counts_corrupt_file(tmp_path, small_folder, capsys):
    out = tmp_path / "r.json"
    plots = tmp_path / "plots"
    code, _, err = _run(
        [
            "eval",
            "--quiet",
            "--no-cache",
            "--dataset",
            str(small_folder),
            "--templates",
            "bundled",
            "--output",
            str(out),
            "--plots",
            str(plots),
        ],
        capsys,
    )
    assert code == 0
    results = json.loads(out.read_text())
    assert results["dola"]["num_images"] == 40
    assert results["dola"]["skipped"]["count"] == 1 and "broken.png" in err
    assert {p.name for p in plots.iterdir()} == {
        "per_layer_accuracy.png",
        "chosen_layers.png",
        "kept_set_sizes.png",
        "flips_per_static_layer.png",
    }
    # no silent overwrite
    code, _, err = _run(
        ["eval", "--quiet", "--dataset", str(small_folder), "--output", str(out)], capsys
    )
    assert code == 2 and "--overwrite" in err


def test_calibrate_then_classify_with_profile(tmp_path, small_folder, capsys):
    profile = tmp_path / "profile.json"
    code, stdout, _ = _run(
        ["calibrate", "--quiet", "--no-cache", "--val-fraction", "0.5", "--profile", str(profile)],
        capsys,
    )
    assert code == 0 and "profile:" in stdout
    data = json.loads(profile.read_text())
    assert data["format"] == "siglip-dola-profile/1" and data["mode"] in (
        "off",
        "dynamic",
        "static",
        "apc",
    )
    preds = tmp_path / "preds.json"
    classes = ",".join(load_dataset("bundled:fashion-mnist").class_names)
    code, stdout, err = _run(
        [
            "classify",
            str(small_folder / "bag"),
            str(small_folder / "coat"),
            "--classes",
            classes,
            "--profile",
            str(profile),
            "--quiet",
            "--no-cache",
            "--output",
            str(preds),
        ],
        capsys,
    )
    assert code == 0
    rows = json.loads(preds.read_text())
    assert len(rows["predictions"]) >= 1 and len(rows["skipped"]) == 1
    top = rows["predictions"][0]["top_k"]
    assert len(top) == 5 and sum(t["p"] for t in top) <= 1 + 1e-5


def test_classify_csv_dynamic_and_errors(tmp_path, small_folder, capsys):
    preds = tmp_path / "preds.csv"
    classes = ",".join(load_dataset("bundled:fashion-mnist").class_names)
    code, stdout, _ = _run(
        [
            "classify",
            str(small_folder / "coat"),
            "--classes",
            classes,
            "--layers",
            "18,20,22",
            "--quiet",
            "--no-cache",
            "--output",
            str(preds),
        ],
        capsys,
    )
    assert code == 0 and "[M=" in stdout
    lines = preds.read_text().splitlines()
    assert lines[0].startswith("image,prediction,p,contrast_layer")
    assert all(int(line.split(",")[3]) in (18, 20, 22) for line in lines[1:])
    code, _, err = _run(["classify", str(small_folder), "--classes", "a,b,a", "--no-cache"], capsys)
    assert code == 2 and "duplicate class names" in err
    code, _, err = _run(
        ["classify", str(small_folder), "--classes", "a,b", "--layers", "24"], capsys
    )
    assert code == 2 and "1..23" in err
    code, _, err = _run(["classify", str(tmp_path / "missing.png"), "--classes", "a,b"], capsys)
    assert code == 2 and "does not exist" in err


def test_layers_command(tmp_path, small_folder, capsys):
    code, stdout, _ = _run(
        [
            "layers",
            "--dataset",
            str(small_folder),
            "--templates",
            "bundled",
            "--quiet",
            "--no-cache",
            "--plots",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0
    assert "[17-24]  candidates 18, 20, 22" in stdout and "layer 24:" in stdout
    assert (tmp_path / "per_layer_accuracy.png").is_file()


def test_demo_writes_table_json_and_plots(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, _ = _run(["demo", "--quiet", "--no-cache", "--out", str(out)], capsys)
    assert code == 0
    assert "dynamic [17-24] a=0.1" in stdout and "calibration on validation" in stdout
    results = json.loads((out / "results.json").read_text())
    _, test_ids = load_dataset("bundled:fashion-mnist").split_indices(0.25, seed=0)
    assert results["dola"]["num_images"] == len(test_ids) > 1400
    assert (out / "profile.json").is_file() and (out / "chosen_layers.png").is_file()
    code, _, err = _run(["demo", "--quiet", "--no-cache", "--out", str(out)], capsys)
    assert code == 2 and "--overwrite" in err


def test_rerank_bundled_photos(tmp_path, capsys):
    out = tmp_path / "retrieval.json"
    code, stdout, _ = _run(
        ["rerank", "--quiet", "--no-cache", "--shortlist", "all", "--output", str(out)], capsys
    )
    assert code == 0 and "text_retrieval_recall@1" in stdout
    results = json.loads(out.read_text())
    assert results["task"] == "zeroshot_retrieval"
    assert set(results["metrics"]) == set(results["dola"]["metrics"])
    assert results["dola"]["num_captions"] == 2 * results["dola"]["num_images"]


def test_help_for_every_command():
    for command in (
        "demo",
        "eval",
        "calibrate",
        "classify",
        "layers",
        "bench",
        "rerank",
        "generate",
    ):
        result = subprocess.run(
            [sys.executable, "-m", "siglip_dola", command, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0 and "usage: siglip-dola" in result.stdout, command


def test_two_process_gloo_eval_equals_single_process(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SIGLIP_DOLA_CACHE": str(tmp_path / "cache")}
    common = ["eval", "--quiet", "--static-layers", "12,20", "--alphas", "0.1,0.3"]
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "siglip_dola",
            *common,
            "--no-cache",
            "--output",
            str(tmp_path / "one.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    multi = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node=2",
            "--master_port=29533",
            "-m",
            "siglip_dola",
            *common,
            "--output",
            str(tmp_path / "two.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert multi.returncode == 0, multi.stderr[-3000:]
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["dola"]["processes"] == 2 and two["dola"]["num_images"] == one["dola"]["num_images"]
    n = one["dola"]["num_images"]
    for a, b in zip(one["dola"]["variants"], two["dola"]["variants"]):
        assert a["name"] == b["name"]
        for metric in ("acc1", "acc5"):
            assert round(a["metrics"][metric] * n) == round(b["metrics"][metric] * n), a["name"]
        assert a.get("chosen_layer_histogram") == b.get("chosen_layer_histogram")
    # the cache blocks the 2-process run wrote (2,000 images: 4 blocks of 512) are read back
    # by a single process, which computes nothing and joins them into one file
    blocks = list((tmp_path / "cache" / "embeddings").glob("*/blocks/block-*"))
    assert sorted(b.name for b in blocks) == [f"block-{i:06d}" for i in range(4)]
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "siglip_dola",
            *[a for a in common if a != "--quiet"],
            "--output",
            str(tmp_path / "again.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "cached=2000" in again.stderr
    assert (
        json.loads((tmp_path / "again.json").read_text())["dola"]["variants"]
        == one["dola"]["variants"]
    )
    assert not list((tmp_path / "cache" / "embeddings").glob("*/blocks/block-*"))
    assert list((tmp_path / "cache" / "embeddings").glob("*/all/embeddings.npy"))
