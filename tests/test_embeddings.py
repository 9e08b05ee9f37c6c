"""The input pipeline: worker preprocessing changes no pixel, extraction resumes block by block."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from _tiny_models import (
    perturb_norms,
    save_hf_siglip,
    save_open_clip_config,
    save_sentencepiece_tokenizer,
    spread_weights,
    tiny_timm_kwargs,
    tiny_timm_vit,
)
from PIL import Image
from safetensors.torch import save_file

from siglip_dola.data import ImageSet, bundled_model_dir, load_dataset, load_image_folder
from siglip_dola.embeddings import BLOCK_IMAGES, extract_layer_embeddings
from siglip_dola.models import load_model
from siglip_dola.readout.base import collate_samples, transform_images
from siglip_dola.settings import RunSettings

ARCH_SIGLIP = "vit_base_patch16_siglip_224"


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """JPEG and PNG files of mixed sizes and modes (RGB, L, RGBA, P, 16-bit, CMYK) in two
    class folders, plus one corrupt file."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    sizes = [(40, 30), (64, 64), (23, 51), (120, 80), (33, 33), (70, 41)]
    for i in range(18):
        w, h = sizes[i % len(sizes)]
        rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        mode = ("RGB", "L", "RGBA", "P", "I;16", "CMYK")[i % 6]
        if mode == "I;16":
            image = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
        else:
            image = rgb.convert(mode)
        suffix = ".jpg" if mode in ("RGB", "L", "CMYK") else ".png"
        folder = root / ("cat" if i % 2 else "dog")
        folder.mkdir(exist_ok=True)
        image.save(folder / f"{i:02d}{suffix}")
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The HF (SigLIP and SigLIP2), timm and open_clip adapters on tiny random models."""
    out = {}
    for version in (1, 2):
        folder = save_hf_siglip(tmp_path_factory.mktemp(f"hf{version}"), version=version)
        out[f"hf-v{version}"] = load_model(f"hf:{folder}")
    vit = tiny_timm_vit(ARCH_SIGLIP)
    weights = tmp_path_factory.mktemp("timm") / "tiny.safetensors"
    save_file(vit.state_dict(), str(weights))
    out["timm"] = load_model(f"timm:{ARCH_SIGLIP}:{weights}", model_kwargs=tiny_timm_kwargs())
    tokenizer = save_sentencepiece_tokenizer(tmp_path_factory.mktemp("oc_tok"))
    config = save_open_clip_config(tmp_path_factory.mktemp("oc"), tokenizer)
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    clip = open_clip.create_model(config.stem).eval()
    spread_weights(clip.visual)
    perturb_norms(clip)
    clip_weights = config.parent / "weights.safetensors"
    save_file(clip.state_dict(), str(clip_weights))
    out["open_clip"] = load_model(f"open_clip:{config}:{clip_weights}")
    return out


@pytest.mark.parametrize("family", ["hf-v1", "hf-v2", "timm", "open_clip"])
def test_workers_give_the_same_embeddings(models, mixed_folder, family):
    vision = models[family].vision
    images = load_image_folder(mixed_folder)
    settings = RunSettings(batch_size=4, progress=False)
    inline = extract_layer_embeddings(vision, images, (1, 2), settings)
    workers = extract_layer_embeddings(vision, images, (1, 2), settings.replace(workers=2))
    assert inline.embeddings.shape[1] == 18 and len(inline.skipped) == 1
    assert np.array_equal(inline.embeddings, workers.embeddings)
    assert np.array_equal(inline.indices, workers.indices)
    assert [s.source for s in inline.skipped] == [s.source for s in workers.skipped]


@pytest.mark.parametrize("family", ["hf-v1", "hf-v2", "timm", "open_clip"])
def test_per_image_transform_equals_the_batch_preprocessing(models, mixed_folder, family):
    vision = models[family].vision
    images = [load_image_folder(mixed_folder).image(i) for i in range(0, 18, 2)]
    batch = vision.preprocess(images)
    stacked = collate_samples([vision.image_transform(image) for image in images])
    at_once = transform_images(vision.image_transform, images)  # the loader's batched call
    assert batch.keys() == stacked.keys() == at_once.keys()
    for key in batch:
        assert torch.equal(batch[key], stacked[key]), key
        assert torch.equal(at_once[key], stacked[key]), key
    processor = getattr(vision, "image_processor", None)
    if processor is not None:  # the library's own batch processing: the same pixels
        own = processor(images=images, return_tensors="pt")
        for key in batch:
            assert torch.equal(batch[key], own[key]), key


@pytest.mark.parametrize("family", ["hf-v1", "timm", "open_clip"])
def test_uint8_transfer_gives_the_same_embeddings(models, mixed_folder, family):
    # Forced here on a CPU (auto uses it on CUDA): resized 8-bit pixels from the workers,
    # mapped to the transform's own float32 values after the move.
    vision = models[family].vision
    assert vision.image_transform.uint8_split() is not None
    images = load_image_folder(mixed_folder)
    settings = RunSettings(batch_size=4, progress=False, transfer="float32")
    floats = extract_layer_embeddings(vision, images, (1, 2), settings)
    for workers in (0, 2):
        bytes_ = extract_layer_embeddings(
            vision, images, (1, 2), settings.replace(transfer="uint8", workers=workers)
        )
        assert np.array_equal(floats.embeddings, bytes_.embeddings)
        assert np.array_equal(floats.indices, bytes_.indices)


def test_uint8_pixels_equal_the_transform_and_cross_processes(models, mixed_folder):
    folder = load_image_folder(mixed_folder)
    images = [folder.image(i) for i in range(len(folder)) if "broken" not in folder.source(i)]
    assert len(images) == 18
    for family in ("hf-v1", "timm", "open_clip"):
        transform = models[family].vision.image_transform
        split = pickle.loads(pickle.dumps(transform.uint8_split()))
        sample = split(images[0])["pixel_values"]
        assert sample.dtype == torch.uint8
        want = collate_samples([transform(image) for image in images])["pixel_values"]
        got = split.finish(collate_samples([split(image) for image in images]))["pixel_values"]
        assert got.dtype == torch.float32 and torch.equal(want, got), family
    # SigLIP2's patches and padding mask are more than pixels: float32 travel
    assert models["hf-v2"].vision.image_transform.uint8_split() is None


def test_transforms_that_do_not_split_stay_float32():
    from torchvision import transforms as T

    from siglip_dola.readout.pixels import split_torchvision

    normalize = T.Normalize((0.5,) * 3, (0.5,) * 3)
    assert split_torchvision(T.Compose([T.Resize(8), T.ToTensor(), normalize])) is not None
    # a float step after the tensor conversion: not a per-value table
    assert split_torchvision(T.Compose([T.ToTensor(), T.Lambda(lambda x: x * x)])) is None
    assert split_torchvision(lambda image: image) is None


def test_a_whole_cached_set_shows_its_cached_count(bundled, mixed_folder, tmp_path, capsys):
    images = load_image_folder(mixed_folder)
    settings = RunSettings(batch_size=8, cache_dir=tmp_path)
    extract_layer_embeddings(bundled.vision, images, (3,), settings)
    capsys.readouterr()
    extract_layer_embeddings(bundled.vision, images, (3,), settings)
    assert "cached=19" in capsys.readouterr().err


# ----------------------------------------------------------------------------- GPU options


def _fresh(family: str, tmp_path: Path):
    if family == "hf":
        return load_model(f"hf:{save_hf_siglip(tmp_path / 'hf', version=1)}").vision
    vit = tiny_timm_vit(ARCH_SIGLIP)
    save_file(vit.state_dict(), str(tmp_path / "tiny.safetensors"))
    spec = f"timm:{ARCH_SIGLIP}:{tmp_path / 'tiny.safetensors'}"
    return load_model(spec, model_kwargs=tiny_timm_kwargs()).vision


@pytest.mark.parametrize("family", ["hf", "timm"])
def test_compile_gives_the_same_embeddings(mixed_folder, tmp_path, family):
    # torch.compile on a CPU takes tens of seconds per model, even this tiny one.
    vision = _fresh(family, tmp_path)
    images = load_image_folder(mixed_folder)
    settings = RunSettings(batch_size=8, progress=False)
    eager = extract_layer_embeddings(vision, images, (1, 2, 3), settings)
    compiled = extract_layer_embeddings(vision, images, (1, 2, 3), settings.replace(compile=True))
    blocks = vision.blocks if family == "hf" else vision.model.blocks
    assert all(block._compiled_call_impl is not None for block in blocks)
    np.testing.assert_allclose(compiled.embeddings, eager.embeddings, atol=1e-5, rtol=0)
    assert np.abs(eager.embeddings).max() > 0.1  # tolerances that mean something


def test_compile_failure_is_one_clear_error(bundled, mixed_folder, monkeypatch):
    from torch._dynamo.exc import TorchDynamoException

    vision = bundled.vision

    def failing(batch, layers):
        raise TorchDynamoException("no C++ compiler found\nlong trace")

    monkeypatch.setattr(vision, "compile", lambda: vision)
    monkeypatch.setattr(vision, "forward_layers", failing)
    settings = RunSettings(progress=False, compile=True)
    with pytest.raises(
        ValueError,
        match=r"^--compile: torch.compile cannot compile .* here "
        r"\(TorchDynamoException: no C\+\+ compiler found\); run without",
    ):
        extract_layer_embeddings(vision, load_image_folder(mixed_folder), (), settings)


def test_fused_attention_is_on_and_equals_eager(tmp_path, mixed_folder):
    """transformers' SDPA and timm's fused attention (the defaults) equal the eager maths."""
    from transformers import AutoModel

    from siglip_dola.readout.hf import HFSiglipReadout

    images = load_image_folder(mixed_folder)
    settings = RunSettings(batch_size=8, progress=False)
    hf = _fresh("hf", tmp_path)
    assert hf.vision.config._attn_implementation == "sdpa"
    eager_model = AutoModel.from_pretrained(tmp_path / "hf", attn_implementation="eager")
    eager = HFSiglipReadout(eager_model.float(), hf.image_processor, name=hf.name)
    assert eager.vision.config._attn_implementation == "eager"
    np.testing.assert_allclose(
        extract_layer_embeddings(hf, images, (1, 2), settings).embeddings,
        extract_layer_embeddings(eager, images, (1, 2), settings).embeddings,
        atol=1e-5,
        rtol=0,
    )
    timm_vision = _fresh("timm", tmp_path)
    attentions = [block.attn for block in timm_vision.model.blocks]
    assert all(attn.fused_attn for attn in attentions)
    fused = extract_layer_embeddings(timm_vision, images, (1, 2), settings).embeddings
    for attn in attentions:
        attn.fused_attn = False
    unfused = extract_layer_embeddings(timm_vision, images, (1, 2), settings).embeddings
    np.testing.assert_allclose(fused, unfused, atol=1e-5, rtol=0)
    assert not np.array_equal(fused, unfused)  # the two paths really differ in rounding


# ----------------------------------------------------------------------------- resumption


class _Interrupting:
    """A readout that counts the images it reads and raises KeyboardInterrupt at a batch."""

    def __init__(self, vision, stop_at: int | None = None) -> None:
        self.vision = vision
        self.stop_at = stop_at
        self.batches = self.images = 0

    def __getattr__(self, name):
        return getattr(self.vision, name)

    def forward_layers(self, batch, layers):
        self.batches += 1
        if self.batches == self.stop_at:
            raise KeyboardInterrupt
        self.images += batch["pixel_values"].shape[0]
        return self.vision.forward_layers(batch, layers)


@pytest.fixture(scope="module")
def bundled():
    return load_model(f"hf:{bundled_model_dir()}")


def test_an_interrupted_extraction_resumes_where_it_stopped(bundled, tmp_path):
    data = load_dataset("bundled:fashion-mnist")
    settings = RunSettings(batch_size=128, cache_dir=tmp_path, progress=False)
    reference = extract_layer_embeddings(
        bundled.vision, data, (12, 20), settings.replace(cache_dir=None)
    )
    stopped = _Interrupting(bundled.vision, stop_at=10)  # blocks 0 and 1 finished (8 batches)
    with pytest.raises(KeyboardInterrupt):
        extract_layer_embeddings(stopped, data, (12, 20), settings)
    blocks = sorted(p.name for p in tmp_path.glob("embeddings/*/blocks/block-*"))
    assert blocks == ["block-000000", "block-000001"]
    again = _Interrupting(bundled.vision)
    resumed = extract_layer_embeddings(again, data, (12, 20), settings)
    assert again.images == len(data) - 2 * BLOCK_IMAGES
    assert np.array_equal(resumed.embeddings, reference.embeddings)
    assert np.array_equal(resumed.indices, reference.indices)
    # joined into one file; a third run reads it and computes nothing
    assert not list(tmp_path.glob("embeddings/*/blocks/block-*"))
    third = _Interrupting(bundled.vision)
    extract_layer_embeddings(third, data, (12, 20), settings)
    assert third.images == 0


def test_a_block_cache_with_skips_round_trips(bundled, mixed_folder, tmp_path):
    images = load_image_folder(mixed_folder)
    settings = RunSettings(batch_size=5, cache_dir=tmp_path, progress=False)
    first = extract_layer_embeddings(bundled.vision, images, (3,), settings)
    second = extract_layer_embeddings(bundled.vision, images, (3,), settings)
    assert np.array_equal(np.asarray(first.embeddings), np.asarray(second.embeddings))
    assert first.skipped == second.skipped and len(first.skipped) == 1
    assert np.array_equal(first.labels, second.labels)


def test_every_image_unusable_is_an_error(bundled, tmp_path):
    (tmp_path / "a.png").write_bytes(b"no")
    files = ImageSet("x", ("a",), [tmp_path / "a.png"], np.zeros(1, dtype=np.int64))
    with pytest.raises(ValueError, match="no usable image in x: all 1 were skipped"):
        extract_layer_embeddings(bundled.vision, files, (), RunSettings(progress=False))


# ----------------------------------------------------------------------------- the command line

SIGNAL_AT_BATCH = textwrap.dedent(
    """
    # Runs the real command line, sending itself a real signal at a chosen point.
    import os, signal, sys
    from pathlib import Path
    from siglip_dola import embeddings
    from siglip_dola.cli import main
    from siglip_dola.readout import hf

    log, point, number, sig = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    counts = {"forward": 0, "rename": 0}
    forward, rename = hf.HFSiglipReadout.forward_layers, Path.rename

    def counted_forward(self, batch, layers):
        counts["forward"] += 1
        if point == "forward" and counts["forward"] == number:
            os.kill(os.getpid(), getattr(signal, sig))
        with open(log, "a") as f:
            f.write(f"{batch['pixel_values'].shape[0]}\\n")
        return forward(self, batch, layers)

    def counted_rename(self, target):
        counts["rename"] += 1
        if point == "rename" and counts["rename"] == number:
            os.kill(os.getpid(), getattr(signal, sig))
        return rename(self, target)

    hf.HFSiglipReadout.forward_layers = counted_forward
    Path.rename = counted_rename
    sys.exit(main(sys.argv[5:]))
    """
)


def _eval(tmp_path: Path, name: str, point: str, number: int, sig: str, cache: bool = True):
    log = tmp_path / f"{name}.log"
    argv = [
        "eval", "--quiet", "--batch-size", "128", "--static-layers", "12,20",
        "--output", str(tmp_path / f"{name}.json"),
    ]  # fmt: skip
    argv += ["--cache-dir", str(tmp_path / "cache")] if cache else ["--no-cache"]
    result = subprocess.run(
        [sys.executable, "-c", SIGNAL_AT_BATCH, str(log), point, str(number), sig, *argv],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    images = sum(int(x) for x in log.read_text().split()) if log.exists() else 0
    return result, images


def _variants(path: Path) -> list:
    return json.loads(path.read_text())["dola"]["variants"]


def test_sigint_then_rerun_processes_only_the_rest(tmp_path):
    full, _ = _eval(tmp_path, "full", "never", 0, "SIGINT", cache=False)
    assert full.returncode == 0, full.stderr[-2000:]
    stopped, _ = _eval(tmp_path, "stopped", "forward", 10, "SIGINT")
    assert stopped.returncode == 130 and "interrupted" in stopped.stderr
    assert "Traceback" not in stopped.stderr and not (tmp_path / "stopped.json").exists()
    rerun, images = _eval(tmp_path, "rerun", "never", 0, "SIGINT")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert images == 2000 - 2 * BLOCK_IMAGES  # blocks 0 and 1 came from the cache
    assert _variants(tmp_path / "rerun.json") == _variants(tmp_path / "full.json")


def test_sigkill_while_writing_a_block_leaves_nothing_a_rerun_trusts(tmp_path):
    # rename 1: block 0 in place; rename 2: block 1 written in full, killed before its rename
    killed, _ = _eval(tmp_path, "killed", "rename", 2, "SIGKILL")
    assert killed.returncode == -9
    cache = tmp_path / "cache" / "embeddings"
    assert [p.name for p in cache.glob("*/blocks/block-*")] == ["block-000000"]
    assert list(cache.glob("*/blocks/.block-000001.*"))  # the unfinished write is still there
    rerun, images = _eval(tmp_path, "rerun", "never", 0, "SIGKILL")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert images == 2000 - BLOCK_IMAGES
    full, _ = _eval(tmp_path, "full", "never", 0, "SIGKILL", cache=False)
    assert _variants(tmp_path / "rerun.json") == _variants(tmp_path / "full.json")
