"""The data formats end to end through the command line, on the bundled model: every format
holding the same bundled images gives the bundled set's figures; bad input is one line and
exit 2 (or a counted skip); results files are clip_benchmark's; several data sets, summary."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _data_fixtures import (
    WNIDS,
    folder_order,
    write_folder,
    write_hf_saved,
    write_label_file,
    write_parquet,
    write_wds,
    write_wds_retrieval,
    write_wnid_mapping,
)

from siglip_dola.cli import main
from siglip_dola.data import BUNDLED_CLASS_NAMES, BUNDLED_TEMPLATES, imagenet_classes

N = 200  # bundled images in every fixture
FASHION = ",".join(BUNDLED_CLASS_NAMES)
# The fixtures hold the images in the bundled order (webdataset shards of 64 = the batch
# size), or for class folders in class order; the reference reads the bundled arrays in the
# same order and batches, so that even the last bits of every embedding agree.
COMMON = ["--quiet", "--no-cache", "--batch-size", "64", "--static-layers", "12,20"]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    import datasets

    root = tmp_path_factory.mktemp("formats")
    datasets.config.HF_DATASETS_CACHE = root / "hf-cache"
    write_wds(root / "wds_fashion", N, shard_size=64)
    write_hf_saved(root / "saved", N)
    write_parquet(root / "fashion.parquet", N)
    write_folder(root / "imagenet_style", N, WNIDS)
    write_wnid_mapping(root / "wnid_names.json")
    write_folder(root / "numbered", N, [str(k) for k in range(10)])
    write_folder(
        root / "imagenetv2",
        30,
        [str(k) for k in range(10)],
        empty=[str(k) for k in range(10, 1000)],
    )
    write_label_file(root / "named" / "labels.csv", N)
    write_label_file(
        root / "integer" / "labels.csv", N, integer=True, columns=("filepath", "class")
    )
    return root


@pytest.fixture(scope="module")
def reference():
    """The bundled set's own figures on the first N images, in the bundled order and in the
    class-folder order (batches of 64, as COMMON)."""
    from siglip_dola.data import bundled_model_dir, load_dataset
    from siglip_dola.models import load_model
    from siglip_dola.settings import RunSettings
    from siglip_dola.variants import VariantGrid
    from siglip_dola.zeroshot import evaluate_dataset

    model = load_model(f"hf:{bundled_model_dir()}")
    bundled = load_dataset("bundled:fashion-mnist")
    variants = VariantGrid(static_layers="12,20").variants(model.vision.depth)
    out = {}
    for order, positions in (("bundled", range(N)), ("folder", folder_order(N))):
        evaluation = evaluate_dataset(
            model,
            bundled.subset(positions),
            BUNDLED_TEMPLATES,
            variants,
            settings=RunSettings(batch_size=64, progress=False),
        )
        out[order] = {r.variant.name: r.metrics for r in evaluation.results}
    assert out["bundled"]["baseline"]["acc1"] == out["folder"]["baseline"]["acc1"]
    return out


def _eval(argv, tmp_path, capsys, name="r.json"):
    out = tmp_path / name
    code = main(["eval", *COMMON, *argv, "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(out.read_text()), captured


def _figures(results):
    return {
        v["name"]: {k: v["metrics"][k] for k in ("acc1", "acc5")}
        for v in results["dola"]["variants"]
    }


FORMATS = {
    "wds": lambda r: ["--dataset", f"wds:{r / 'wds_fashion'}"],
    "wds-2-workers": lambda r: ["--dataset", str(r / "wds_fashion"), "--workers", "2"],
    "datasets-saved": lambda r: ["--dataset", f"datasets:{r / 'saved'}", "--templates", "bundled"],
    "datasets-parquet": lambda r: ["--dataset", f"datasets:{r / 'fashion.parquet'}", "--templates", "bundled"],
    "imagenet-wnid-folder": lambda r: [
        "--dataset", str(r / "imagenet_style"), "--classes", str(r / "wnid_names.json"), "--templates", "bundled",
    ],
    "numbered-folder": lambda r: ["--dataset", str(r / "numbered"), "--classes", FASHION, "--templates", "bundled"],
    "csv-named": lambda r: [
        "--dataset", str(r / "named" / "labels.csv"), "--classes", FASHION, "--templates", "bundled",
    ],
    "csv-integer": lambda r: [
        "--dataset", str(r / "integer" / "labels.csv"), "--classes", FASHION, "--templates", "bundled",
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def format_results(fixtures, tmp_path_factory):
    """Each format's eval, run once for the tests below: {format: (results, stderr)}."""
    out = tmp_path_factory.mktemp("format-results")
    done = {}

    def run(fmt):
        if fmt not in done:
            path = out / f"{fmt}.json"
            code = main(["eval", *COMMON, *FORMATS[fmt](fixtures), "--output", str(path)])
            assert code == 0, fmt
            done[fmt] = json.loads(path.read_text())
        return done[fmt]

    return run


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_gives_the_bundled_figures(fmt, format_results, reference, capsys):
    results = format_results(fmt)
    captured = capsys.readouterr()
    assert results["dola"]["num_images"] == N and results["dola"]["skipped"]["count"] == 0
    assert results["classnames"] == list(BUNDLED_CLASS_NAMES)
    assert results["templates"] == list(BUNDLED_TEMPLATES)
    figures = reference["folder" if "folder" in fmt else "bundled"]
    expected = {name: {k: m[k] for k in ("acc1", "acc5")} for name, m in figures.items()}
    assert _figures(results) == expected
    assert results["metrics"] == figures["baseline"]
    assert results["warnings"] == [] and "warning" not in captured.err


def test_integer_labels_with_classes_equal_named_labels(fixtures, format_results, tmp_path, capsys):
    named, integer = format_results("csv-named"), format_results("csv-integer")
    assert named["dola"]["variants"] == integer["dola"]["variants"]
    assert named["dola"]["per_layer_acc1"] == integer["dola"]["per_layer_acc1"]
    capsys.readouterr()
    bare, captured = _eval(
        ["--dataset", str(fixtures / "integer" / "labels.csv")], tmp_path, capsys
    )
    assert bare["classnames"] == [str(k) for k in range(10)]
    assert "warning: labels: class names are all numbers" in captured.err
    assert bare["warnings"] and "all numbers" in bare["warnings"][0]


def test_imagenet_fixtures_prompt_with_the_imagenet_names(fixtures, tmp_path, capsys, monkeypatch):
    import siglip_dola.zeroshot as zeroshot

    banks = []
    build = zeroshot.build_text_bank

    def spy(encoder, class_names, *args, **kwargs):
        banks.append(list(class_names))
        return build(encoder, class_names, *args, **kwargs)

    monkeypatch.setattr(zeroshot, "build_text_bank", spy)
    table = imagenet_classes().name_of()
    results, _ = _eval(["--dataset", str(fixtures / "imagenet_style")], tmp_path, capsys, "a.json")
    expected = [table[w] for w in sorted(WNIDS)]
    assert banks[-1] == expected == results["classnames"] and results["warnings"] == []
    assert (
        results["templates"] == [t for t in results["templates"] if "{c}" in t]
        and len(results["templates"]) == 80
    )
    # 1,000 classes: one template keeps the text bank small on a CPU
    v2 = ["--dataset", str(fixtures / "imagenetv2"), "--templates", "photo"]
    results, _ = _eval(v2, tmp_path, capsys, "b.json")
    assert banks[-1] == list(imagenet_classes().names) == results["classnames"]
    assert results["dola"]["num_images"] == 30


def test_two_process_torchrun_on_webdataset_equals_one(fixtures, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [
        "eval",
        "--quiet",
        "--no-cache",
        "--dataset",
        f"wds:{fixtures / 'wds_fashion'}",
        "--static-layers",
        "12,20",
    ]
    one = subprocess.run(
        [sys.executable, "-m", "siglip_dola", *common, "--output", str(tmp_path / "one.json")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [str(torchrun), "--nproc_per_node=2", "--master_port=29541", "-m", "siglip_dola", *common,
         "--output", str(tmp_path / "two.json")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert b["dola"]["processes"] == 2 and a["dola"]["num_images"] == b["dola"]["num_images"] == N
    for x, y in zip(a["dola"]["variants"], b["dola"]["variants"]):
        assert x["name"] == y["name"]
        for metric in ("acc1", "acc5"):
            assert round(x["metrics"][metric] * N) == round(y["metrics"][metric] * N), x["name"]
        assert x.get("chosen_layer_histogram") == y.get("chosen_layer_histogram")


# ----------------------------------------------------------------------------- bad input


def _refused(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    return err


def test_refusals_are_one_line_before_any_model_loads(fixtures, tmp_path, capsys, monkeypatch):
    import siglip_dola.models

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before the input was checked")

    monkeypatch.setattr(siglip_dola.models, "load_model", no_model)
    splits = tmp_path / "splits"
    write_folder(splits / "train", 20, BUNDLED_CLASS_NAMES)
    write_folder(splits / "test", 20, BUNDLED_CLASS_NAMES)
    nested = tmp_path / "outer"
    write_folder(nested / "inner", 20, BUNDLED_CLASS_NAMES)
    (tmp_path / "one.tar").write_bytes(b"x" * 512)
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    wds = fixtures / "wds_fashion"
    no_nshards = tmp_path / "no_nshards"
    write_wds(no_nshards, 5, shard_size=5)
    (no_nshards / "test" / "nshards.txt").unlink()
    (no_nshards / "test" / "nshards.txt.bak").write_text("1")
    few = tmp_path / "few"
    write_wds(few, 40, shard_size=20, class_names=BUNDLED_CLASS_NAMES[:3])
    corrupt = tmp_path / "corrupt"
    write_wds(corrupt, 10, shard_size=5)
    (corrupt / "test" / "1.tar").write_bytes(b"\x00garbage" * 100)
    (tmp_path / "cols.csv").write_text("picture,kind\na.png,cat\n")
    cases = {
        "look like splits": ["eval", "--dataset", str(splits)],
        "nested a level deeper": ["eval", "--dataset", str(nested)],
        "unsupported data set format: ": ["eval", "--dataset", str(tmp_path / "one.tar")],
        "read it with datasets:": ["eval", "--dataset", str(tmp_path / "t.parquet")],
        "nshards.txt not found": ["eval", "--dataset", f"wds:{no_nshards}"],
        "classnames.txt names 3 classes": ["eval", "--dataset", f"wds:{few}"],
        "1.tar is not a readable tar file": ["eval", "--dataset", f"wds:{corrupt}"],
        "columns found: ['picture', 'kind']": ["eval", "--dataset", str(tmp_path / "cols.csv")],
        "--max-pixels must be a positive": ["eval", "--max-pixels", "0"],
        "needs random access": ["calibrate", "--dataset", f"wds:{wds}", "--profile", str(tmp_path / "p.json")],
        "give its folder with --dataset-root": ["eval", "--dataset", "wds/cifar10"],
        "must hold {dataset}": ["eval", "--dataset", f"wds:{wds}", str(fixtures / "numbered"),
                                "--output", str(tmp_path / "x.json")],
        "has no split 'val'": ["eval", "--dataset", f"datasets:{fixtures / 'saved'}", "--split", "val"],
        "no split folder 'val'": ["eval", "--dataset", str(fixtures / "numbered"), "--split", "val"],
        "caption set": ["eval", "--dataset", str(tmp_path / "caps")],
    }  # fmt: skip
    write_wds_retrieval(tmp_path / "caps", 4)
    for expected, argv in cases.items():
        err = _refused(argv + ["--quiet", "--no-cache"], capsys)
        assert expected in err, (expected, err)


def test_duplicate_classes_are_named_before_the_csv_is_read(fixtures, capsys, monkeypatch):
    import siglip_dola.data

    monkeypatch.setattr(siglip_dola.data, "load_dataset", lambda *a, **k: pytest.fail("data read"))
    err = _refused(
        ["eval", "--dataset", str(fixtures / "named" / "labels.csv"), "--classes",
         "t-shirt,trouser,ankle boot,Ankle Boot", "--no-cache"], capsys,
    )  # fmt: skip
    assert "duplicate class names: 'Ankle Boot' (positions 2 and 3)" in err


def test_webdataset_bad_members_are_counted_skips(tmp_path, capsys):
    from _data_fixtures import png_bytes

    extra = [
        {"__key__": "x0", "png": b"\x89PNG\r\n\x1a\nbroken", "cls": 1},
        {"__key__": "x1", "cls": 3},
        {"__key__": "x2", "jpg": b"\xff\xd8 no jpeg", "cls": 0},
    ]
    root = write_wds(tmp_path / "w", 20, shard_size=8, extra_samples=extra)
    results, captured = _eval(["--dataset", f"wds:{root}"], tmp_path, capsys)
    assert results["dola"]["num_images"] == 20 and results["dola"]["skipped"]["count"] == 3
    assert "skipped 3 image(s)" in captured.err and "x0: unreadable image" in captured.err
    assert png_bytes  # (the fixture writer's encoder, used above through write_wds)


# ----------------------------------------------------------------------------- results


CLIP_BENCHMARK_KEYS = ("dataset", "model", "pretrained", "task", "metrics", "language")


def _clip_benchmark_csv(files, out):
    """What clip_benchmark's `clip_benchmark build` reads of each results file (cli.py,
    main_build, v1.6.2): ``metrics`` merged into the row, ``model + ' ' + pretrained``."""
    rows, fieldnames = [], set()
    for path in files:
        data = json.loads(Path(path).read_text())
        row = dict(data["metrics"])
        row.update(data)
        del row["metrics"]
        row["model_fullname"] = row["model"] + " " + row["pretrained"]
        fieldnames.update(row)
        rows.append(row)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted(fieldnames))
        writer.writeheader()
        writer.writerows(rows)


def test_results_carry_clip_benchmarks_keys(fixtures, tmp_path, capsys):
    results, _ = _eval(["--dataset", f"wds:{fixtures / 'wds_fashion'}"], tmp_path, capsys)
    assert list(results)[:6] == list(CLIP_BENCHMARK_KEYS)
    assert results["dataset"] == "wds/fashion" and results["model"] == "bundled"
    assert results["pretrained"] == "bundled" and results["language"] == "en"
    assert set(results["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    run = results["run"]
    assert run["command"][:2] == ["siglip-dola", "eval"] and run["time"].endswith("+00:00")
    assert {"torch", "webdataset", "datasets", "siglip-dola"} <= set(run["versions"])
    assert results["data"]["format"] == "wds" and results["data"]["split"] == "test"
    retrieval = tmp_path / "ret.json"
    assert main(["rerank", "--quiet", "--no-cache", "--output", str(retrieval)]) == 0
    ret = json.loads(retrieval.read_text())
    assert list(ret)[:6] == list(CLIP_BENCHMARK_KEYS) and ret["dataset"] == "photos"
    out = tmp_path / "benchmark.csv"
    _clip_benchmark_csv([tmp_path / "r.json", retrieval], out)
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["model_fullname"] == "bundled bundled" and rows[0]["acc1"]
    try:  # clip_benchmark itself, where it is installed (it is no dependency: see README)
        from clip_benchmark.cli import main_build
    except ImportError:
        return
    from argparse import Namespace

    main_build(
        Namespace(files=[str(tmp_path / "r.json"), str(retrieval)], output=str(tmp_path / "cb.csv"))
    )
    rows = list(csv.DictReader((tmp_path / "cb.csv").open()))
    assert {r["dataset"] for r in rows} == {"wds/fashion", "photos"}


def test_several_data_sets_one_file_each_and_a_summary(fixtures, tmp_path, capsys):
    template = str(fixtures / "wds_{dataset}")
    out = tmp_path / "results"
    argv = ["eval", *COMMON, "--dataset", "wds/fashion", "numbered", "--dataset-root", template,
            "--classes", FASHION, "--templates", "bundled", "--output", f"{out}/{{dataset}}.json"]  # fmt: skip
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2 and "numbered" in captured.err  # resolved through the template too: absent
    argv[argv.index("numbered")] = f"folder:{fixtures / 'numbered'}"
    argv[argv.index("--dataset-root") : argv.index("--dataset-root") + 2] = []
    argv[argv.index("wds/fashion")] = f"wds:{fixtures / 'wds_fashion'}"
    assert main(argv) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["numbered.json", "wds_fashion.json"]
    first = json.loads((out / "wds_fashion.json").read_text())
    assert first["dataset"] == "wds/fashion"
    capsys.readouterr()
    # clip_benchmark's naming: wds/<name> through a --dataset-root template
    named = tmp_path / "named"
    assert main(["eval", *COMMON, "--dataset", "wds/fashion", "--dataset-root", template,
                 "--output", f"{named}/{{dataset}}_{{task}}.json"]) == 0  # fmt: skip
    assert (named / "wds_fashion_zeroshot_classification.json").is_file()
    summary = tmp_path / "summary"
    assert main(["summary", str(out), str(named), "--out", str(summary)]) == 0
    printed = capsys.readouterr().out
    assert "| wds/fashion | classification | 200 | acc1 |" in printed
    assert "| numbered | classification | 200 | acc1 |" in printed
    rows = list(csv.DictReader((summary / "summary.csv").open()))
    assert len(rows) == 3 and {r["dataset"] for r in rows} == {"wds/fashion", "numbered"}
    assert float(rows[0]["change"]) == pytest.approx(
        float(rows[0]["dola"]) - float(rows[0]["baseline"])
    )
    assert (summary / "summary_change.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (summary / "summary.md").read_text().startswith("| data set |")
    assert main(["summary", str(out), "--out", str(summary)]) == 2  # no silent overwrite
    assert main(["summary", str(tmp_path / "nothing.json"), "--out", str(tmp_path / "s2")]) == 2


# ----------------------------------------------------------------------------- retrieval


def test_retrieval_formats_agree(fixtures, tmp_path, capsys):
    from _data_fixtures import bundled_images
    from PIL import Image

    caps = write_wds_retrieval(tmp_path / "wds_caps", 12, shard_size=5)
    images, labels = bundled_images(12)
    rows = [["image", "caption"]]
    entries = []
    (tmp_path / "img").mkdir()
    for i, (img, label) in enumerate(zip(images, labels)):
        Image.fromarray(img).save(tmp_path / "img" / f"{i}.png")
        name = BUNDLED_CLASS_NAMES[label]
        captions = [f"a photo of a {name}.", f"a {name}, number {i}."]
        rows += [[f"img/{i}.png", c] for c in captions]
        entries.append(
            {"filename": f"{i}.png", "split": "test", "sentences": [{"raw": c} for c in captions]}
        )
    with (tmp_path / "pairs.csv").open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    (tmp_path / "dataset_flickr30k.json").write_text(
        json.dumps({"dataset": "flickr30k", "images": entries})
    )
    common = ["--quiet", "--no-cache", "--batch-size", "1", "--shortlist", "all"]
    outputs = {}
    for key, argv in {
        "wds": ["rerank", "--dataset", f"wds:{caps}"],
        "pairs": ["rerank", "--dataset", str(tmp_path / "pairs.csv")],
        "karpathy": ["rerank", "--dataset", str(tmp_path / "dataset_flickr30k.json"),
                     "--images-root", str(tmp_path / "img")],
        "eval-karpathy": ["eval", "--task", "zeroshot_retrieval", "--dataset", str(tmp_path / "dataset_flickr30k.json"),
                          "--images-root", str(tmp_path / "img")],
    }.items():  # fmt: skip
        out = tmp_path / f"{key}.json"
        assert main([*argv, *common, "--output", str(out)]) == 0, capsys.readouterr().err
        outputs[key] = json.loads(out.read_text())
    names = {k: v["dataset"] for k, v in outputs.items()}
    assert names == {
        "wds": "wds/caps",
        "pairs": "pairs",
        "karpathy": "flickr30k",
        "eval-karpathy": "flickr30k",
    }
    for key in ("pairs", "karpathy", "eval-karpathy"):
        assert outputs[key]["metrics"] == outputs["wds"]["metrics"], key
        assert outputs[key]["dola"]["metrics"] == outputs["wds"]["dola"]["metrics"], key
    assert outputs["wds"]["dola"]["num_captions"] == 24


def test_help_imports_no_torch():
    code = (
        "import sys\n"
        "from siglip_dola.cli import main\n"
        "for argv in (['--help'], ['eval', '--help'], ['summary', '--help'], ['rerank', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('torch' in sys.modules, 'datasets' in sys.modules, 'webdataset' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False False False"
    assert "--dataset-root" in result.stdout and "--max-pixels" in result.stdout
