"""Bad input through the real command line: one line on stderr, exit 2, nothing changed.

Every case runs ``python -m siglip_dola`` in a subprocess, as a user would, and asserts:
exit code 2, exactly one line on stderr that names the problem, no traceback, the output
folder unchanged and no temp file left anywhere below the test's folder. The read-only
cases use a read-only bind mount (``unshare -m`` + ``mount -o ro``) when the tests run as
root, who can write anywhere else, or a folder without write permission otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _tiny_janus import tiny_janus_dir, write_prompts
from PIL import Image

from siglip_dola.data import bundled_model_dir, load_dataset
from siglip_dola.variants import PROFILE_FORMAT

# The hub's port closed: hub ids fail the way they do offline, at once.
ENV = {"HF_ENDPOINT": "http://127.0.0.1:9", "OMP_NUM_THREADS": "1"}


def run_cli(args: list[str], home: Path, prefix: list[str] | None = None, env: dict | None = None):
    environment = {**os.environ, **ENV, "SIGLIP_DOLA_CACHE": str(home / "cache"), **(env or {})}
    return subprocess.run(
        [*(prefix or []), sys.executable, "-m", "siglip_dola", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Inputs the cases use: images, a label file, a profile, prompts, a model without
    weights (its config alone tells the depth), a huge image."""
    root = tmp_path_factory.mktemp("inputs")
    data = load_dataset("bundled:fashion-mnist")
    images = root / "images"
    rows = ["image,label"]
    for i in range(6):
        name = data.class_names[data.labels[i]]
        path = images / name / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.items[i]).save(path)
        rows.append(f"{path},{name}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    broken = root / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"not a png")
    profile = {
        "format": PROFILE_FORMAT,
        "model": "bundled",
        "mode": "dynamic",
        "layers": [18, 20, 22],
        "alpha": 0.1,
        "bucket": [17, 24],
        "templates": ["a photo of a {c}."],
    }
    (root / "profile.json").write_text(json.dumps(profile))
    write_prompts(root / "prompts.json", ["a red square", "a blue circle"])
    no_weights = root / "no-weights"
    shutil.copytree(bundled_model_dir(), no_weights)
    (no_weights / "model.safetensors").unlink()
    return {
        "images": images,
        "csv": root / "labels.csv",
        "broken": broken,
        "profile": root / "profile.json",
        "prompts": root / "prompts.json",
        "no_weights": no_weights,
        "janus": tiny_janus_dir(),
    }


def _readonly_prefix(folder: Path) -> list[str] | None:
    """How to run a command that sees ``folder`` read-only; None where this platform can
    make no read-only folder for this user."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return []
    if shutil.which("unshare") is None:
        return None
    prefix = ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(folder)]
    probe = subprocess.run([*prefix, "touch", str(folder / "probe")], capture_output=True)
    if probe.returncode == 0 or (folder / "probe").exists():
        (folder / "probe").unlink(missing_ok=True)
        return None
    return prefix


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


def _leftovers(folder: Path) -> list[Path]:
    return [
        p
        for p in folder.rglob(".*")
        if p.name.endswith(".tmp") or p.name.startswith(".siglip-dola-probe")
    ]


# ----------------------------------------------------------------------------- the cases

# (id, arguments, text the error line must contain). {ro} is a read-only folder, {out} a
# folder that must stay unchanged; file placeholders name the fixtures above.
CASES = [
    ("eval-output-read-only", ["eval", "--output", "{ro}/r.json"], "cannot write"),
    ("eval-plots-read-only", ["eval", "--plots", "{ro}/plots"], "cannot write"),
    ("eval-cache-read-only", ["eval", "--cache-dir", "{ro}/cache"], "cannot write"),
    ("calibrate-profile-read-only", ["calibrate", "--profile", "{ro}/p.json"], "cannot write"),
    (
        "classify-output-read-only",
        ["classify", "{images}", "--classes", "a,b", "--output", "{ro}/p.json"],
        "cannot write",
    ),
    ("demo-out-read-only", ["demo", "--out", "{ro}/demo"], "cannot write"),
    (
        "generate-out-read-only",
        ["generate", "--json", "{prompts}", "--out", "{ro}/gen", "--model", "{janus}"],
        "cannot write",
    ),
    ("eval-cuda-without-gpu", ["eval", "--device", "cuda"], "CUDA is not available"),
    (
        "classify-cuda-without-gpu",
        ["classify", "{images}", "--classes", "a,b", "--device", "cuda"],
        "CUDA is not available",
    ),
    ("unknown-device", ["eval", "--device", "tpu"], "device 'tpu'"),
    ("classify-top-k-0", ["classify", "{images}", "--classes", "a,b", "--top-k", "0"], "--top-k must be >= 1"),
    ("rerank-negative-tau", ["rerank", "--tau", "-1"], "--tau must be"),
    ("rerank-zero-tau", ["rerank", "--tau", "0"], "--tau must be"),
    ("eval-zero-tau", ["eval", "--tau", "0"], "--tau must be"),
    ("eval-missing-profile", ["eval", "--profile", "{out}/missing.json"], "does not exist"),
    (
        "profile-and-explicit-flags",
        ["classify", "{images}", "--classes", "a,b", "--profile", "{profile}", "--alpha", "0.2"],
        "cannot be combined with --alpha",
    ),
    ("csv-duplicate-classes", ["eval", "--dataset", "{csv}", "--classes", "a,b,a"], "duplicate class names"),
    (
        "classify-nothing-readable",
        ["classify", "{broken}", "--classes", "a,b", "--no-cache", "--quiet"],
        "no usable image",
    ),
    # checked before the weights load: this model folder has a config and no weights
    ("alphas-out-of-range", ["eval", "--model", "{no_weights}", "--alphas", "0.1,1.5"], "alpha must be in [0, 1]"),
    ("static-layer-0", ["eval", "--model", "{no_weights}", "--static-layers", "0"], "1..23"),
    ("static-layer-final", ["eval", "--model", "{no_weights}", "--static-layers", "24"], "1..23"),
    ("layer-99", ["rerank", "--model", "{no_weights}", "--layers", "99"], "1..23"),
    (
        "classify-static-layer-0",
        ["classify", "{images}", "--classes", "a,b", "--model", "{no_weights}", "--static-layer", "0"],
        "1..23",
    ),
    ("tau-zero-before-load", ["eval", "--model", "{no_weights}", "--tau", "0"], "--tau must be"),
    (
        "duplicate-classes-before-load",
        ["classify", "{images}", "--classes", "a,b,A", "--model", "{no_weights}"],
        "duplicate class names",
    ),
    ("mistyped-model-path", ["eval", "--model", "models/nonexist"], "does not exist"),
    ("hub-id-unreachable", ["eval", "--model", "hf:someone/not-here"], "hub cannot be reached"),
    ("eval-shortlist-for-classification", ["eval", "--shortlist", "10"], "--shortlist applies"),
    ("layers-plots-without-data", ["layers", "--plots", "{out}/p"], "--plots needs --dataset"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case, files, tmp_path):
    name, args, expected = case
    out = tmp_path / "out"
    (out / "earlier").mkdir(parents=True)
    (out / "earlier" / "results.json").write_text("{}")
    ro = tmp_path / "ro"
    (ro / "earlier").mkdir(parents=True)
    prefix: list[str] = []
    places = {"out": out, "ro": ro, **files}
    argv = [a.format(**places) for a in args]
    if "{ro}" in " ".join(args):
        found = _readonly_prefix(ro)
        if found is None:
            pytest.skip("this platform cannot make a read-only folder for this user")
        prefix = found
    before = _tree(out), _tree(ro)
    result = run_cli(argv, tmp_path, prefix)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and lines[0].startswith("siglip-dola ")
    assert expected in lines[0], lines[0]
    assert (_tree(out), _tree(ro)) == before
    assert not _leftovers(tmp_path), _leftovers(tmp_path)


def test_earlier_plots_are_kept_without_overwrite(files, tmp_path):
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "per_layer_accuracy.png").write_bytes(b"earlier")
    result = run_cli(["eval", "--no-cache", "--plots", plots], tmp_path)
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert (plots / "per_layer_accuracy.png").read_bytes() == b"earlier"
    again = run_cli(["eval", "--quiet", "--no-cache", "--plots", plots, "--overwrite"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (plots / "per_layer_accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_rerank_writes_its_plots(tmp_path):
    result = run_cli(["rerank", "--quiet", "--no-cache", "--plots", tmp_path / "p"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert {p.name for p in (tmp_path / "p").iterdir()} == {
        "retrieval_recall.png",
        "retrieval_chosen_layers.png",
    }


def test_eval_with_a_profile_scores_exactly_its_variant(files, tmp_path):
    out = tmp_path / "r.json"
    result = run_cli(
        ["eval", "--quiet", "--no-cache", "--profile", files["profile"], "--output", out], tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    names = [v["name"] for v in json.loads(out.read_text())["dola"]["variants"]]
    assert names == ["baseline", "dynamic [17-24] a=0.1"]


def test_a_profile_for_another_model_is_named(files, tmp_path):
    other = json.loads(files["profile"].read_text()) | {
        "model": "hf:google/siglip-large-patch16-384"
    }
    (tmp_path / "other.json").write_text(json.dumps(other))
    argv = ["classify", files["images"], "--classes", "a,b", "--quiet", "--no-cache"]
    result = run_cli([*argv, "--profile", tmp_path / "other.json"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning: profile" in result.stderr and "siglip-large-patch16-384" in result.stderr


# ----------------------------------------------------------------------------- hygiene


def test_outputs_follow_the_umask(files, tmp_path):
    out = tmp_path / "out"
    saved = os.umask(0o022)
    try:
        runs = [
            ["eval", "--quiet", "--no-cache", "--output", out / "r.json", "--plots", out / "plots"],
            ["calibrate", "--quiet", "--no-cache", "--profile", out / "p.json"],
            ["classify", files["images"], "--classes", "a,b", "--quiet", "--output", out / "c.csv"],
            ["demo", "--quiet", "--no-cache", "--out", out / "demo"],
        ]
        for argv in runs:
            result = run_cli(argv, tmp_path)
            assert result.returncode == 0, result.stderr[-2000:]
    finally:
        os.umask(saved)
    written = [p for p in out.rglob("*") if p.is_file()]
    assert len(written) >= 8
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {"0o644"}


def test_a_clean_run_prints_only_our_lines(files, tmp_path):
    result = run_cli(["eval", "--quiet", "--no-cache", "--static-layers", "none"], tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    cached = run_cli(["eval", "--quiet", "--static-layers", "none"], tmp_path)
    again = run_cli(["eval", "--quiet", "--static-layers", "none"], tmp_path)  # cache hit
    assert cached.stderr == again.stderr == "", again.stderr
    noisy = run_cli(["eval", "--no-cache", "--static-layers", "none"], tmp_path)
    assert "[transformers]" not in noisy.stderr and "Warning" not in noisy.stderr


def test_help_imports_neither_torch_nor_transformers(tmp_path):
    probe = (
        "import sys; from siglip_dola.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'timm', 'open_clip') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1] == "[]", result.stdout


def test_version_and_unknown_flags(tmp_path):
    from siglip_dola import __version__

    version = run_cli(["--version"], tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"siglip-dola {__version__}"
    unknown = run_cli(["eval", "--bogus"], tmp_path)
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("usage: siglip-dola eval") and "--bogus" in unknown.stderr


def test_every_flag_explains_itself():
    import argparse

    from siglip_dola.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, sub in commands.choices.items()
        for action in sub._actions
        if not action.help and action.dest != "help"
    ]
    assert not missing, missing
    calibrate = commands.choices["calibrate"].format_help()
    assert "default 0.05,0.1,0.2" in " ".join(calibrate.split())


def test_a_huge_image_within_the_limit_is_read(tmp_path):
    # 10000 x 10000 is under the stated limit of 16384 x 16384 pixels
    from siglip_dola.data import load_image

    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((10000, 10000), dtype=np.uint8)).save(path)
    assert load_image(path).size == (10000, 10000)
