"""The input pipeline: what the main process does per image, workers vs in-process, transfers.

    python benchmarks/bench_pipeline.py                    # CPU section (this machine)
    python benchmarks/bench_pipeline.py --gpu               # GPU section: ViT-L/16-384, bf16

CPU section: 512 photo-like JPEGs of 500 x 375 (random crops of scikit-image's sample photos,
written once under ``--data``) and tiny random-init models with a 384 x 384 input (32-pixel
patches, 4 blocks of width 32: the input pipeline dominates), for the transformers and the timm
adapters:

* main-process CPU time per image outside the model's forward (``time.process_time`` of this
  process - all its threads, not the workers - over the extraction, minus the same clock
  inside ``forward_layers``), with ``--workers 2`` and ``0``; target <= 1 ms with 2 workers;
* wall time of ``siglip-dola eval`` (run in this process) with ``--workers 2`` vs ``0``, one
  thread per process (``OMP_NUM_THREADS=1``), repetitions interleaved, median ratio; target
  <= 0.85 for timm, <= 1.1 for transformers;
* images/s of the input pipeline alone (decode + transform + stack, no model), float32 and
  uint8 pixels;
* main-process cost per image of receiving a [B, 3, 384, 384] batch from a worker, float32
  vs uint8 (the uint8 path sends resized 8-bit pixels; the device maps them to the same float32
  values through a lookup table), plus the pinned copy where CUDA is present.

GPU section (``--gpu``): full-size SigLIP ViT-L/16-384 (random init) in bf16, 2,048 JPEGs:
end-to-end images/s of extraction + scoring of every DoLa variant (all layers read out), of
the baseline (final layer only), and of the model alone on random tensors already on the GPU;
the ratios (target e2e / model alone >= 0.9, DoLa / baseline <= 1.03) and peak GPU memory.

Every ratio is measured within one run. Figures from a machine shared with other work are
noisy: say so when quoting them.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads: one thread per process

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from siglip_dola.data import bundled_model_dir, load_image_folder  # noqa: E402
from siglip_dola.embeddings import (  # noqa: E402
    BLOCK_IMAGES,
    LoadedBatch,
    _batches,
    _loader,
    extract_layer_embeddings,
)
from siglip_dola.readout.base import collate_samples  # noqa: E402
from siglip_dola.settings import RunSettings, default_cache_dir  # noqa: E402

PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "camera",
    "moon",
    "page",
)
SIZE = (500, 375)
SIDE = 384


# ----------------------------------------------------------------------------- inputs


def write_photos(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` JPEGs of 500 x 375 cropped from scikit-image's sample photos, one class folder
    per photo; written once (a marker file says the folder is complete)."""
    marker = folder / f".complete-{count}"
    if marker.exists():
        return folder
    from skimage import data as skdata

    sources = {}
    for name in PHOTOS:
        try:
            image = np.asarray(getattr(skdata, name)())
        except Exception:  # a sample that needs a download in this scikit-image version
            continue
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        sources[name] = Image.fromarray(image[:, :, :3].astype(np.uint8), "RGB")
    if not sources:
        raise SystemExit("scikit-image has no sample photo available offline here")
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    names = sorted(sources)
    for i in range(count):
        name = names[i % len(names)]
        photo = sources[name]
        width, height = photo.size
        scale = rng.uniform(0.5, 1.0)
        crop_w = int(min(width, height * 4 / 3) * scale)
        crop_h = int(crop_w * 3 / 4)
        left = int(rng.integers(0, width - crop_w + 1))
        top = int(rng.integers(0, height - crop_h + 1))
        crop = photo.crop((left, top, left + crop_w, top + crop_h)).resize(SIZE, Image.BICUBIC)
        (folder / name).mkdir(parents=True, exist_ok=True)
        crop.save(folder / name / f"{i:05d}.jpg", quality=90)
    marker.write_text("")
    return folder


def write_tiny_models(folder: Path) -> tuple[Path, Path]:
    """A transformers SiglipModel and a timm ViT (384 x 384 input, 32-pixel patches, 4 blocks
    of width 32, random init); the timm one is paired with the transformers text tower."""
    hf_dir, timm_dir = folder / "hf-tiny-384-p32", folder / "timm-tiny-384-p32"
    if (hf_dir / "config.json").exists() and (timm_dir / "config.json").exists():
        return hf_dir, timm_dir
    import timm
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    torch.manual_seed(0)
    text = dict(
        vocab_size=75,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
        projection_size=32,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        image_size=SIDE,
        patch_size=32,
    )
    SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).save_pretrained(hf_dir)
    SiglipImageProcessor(
        size={"height": SIDE, "width": SIDE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(hf_dir)
    for name in ("spiece.model", "tokenizer_config.json"):  # the bundled model's tokenizer
        shutil.copy(bundled_model_dir() / name, hf_dir / name)
    kwargs = dict(embed_dim=32, depth=4, num_heads=2, img_size=SIDE, patch_size=32)
    vit = timm.create_model(
        "vit_base_patch16_siglip_384", pretrained=False, num_classes=0, **kwargs
    )
    timm.models.save_for_hf(vit, str(timm_dir), model_args=kwargs, safe_serialization=True)
    return hf_dir, timm_dir


# ----------------------------------------------------------------------------- clocks


@contextlib.contextmanager
def forward_clock(vision):
    """Counts the process CPU time spent inside ``vision.forward_layers``."""
    spent = {"cpu": 0.0, "wall": 0.0, "images": 0}
    original = vision.forward_layers

    def timed(batch, layers):
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            return original(batch, layers)
        finally:
            spent["cpu"] += time.process_time() - cpu
            spent["wall"] += time.perf_counter() - wall
            spent["images"] += next(iter(batch.values())).shape[0]

    vision.forward_layers = timed
    try:
        yield spent
    finally:
        del vision.forward_layers


def _all_cpu_s() -> float:
    """CPU seconds of this process and of its finished children (the loader's workers)."""
    import resource

    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main_process_ms(vision, image_set, workers: int, batch_size: int) -> dict:
    """Main-process CPU per image outside the forward, and all processes' CPU per image (what
    the work costs whatever the load of the machine: wall time follows it on idle cores)."""
    settings = RunSettings(batch_size=batch_size, workers=workers, progress=False)
    layers = tuple(range(1, vision.depth))
    with forward_clock(vision) as spent:
        cpu, wall, total = time.process_time(), time.perf_counter(), _all_cpu_s()
        extract_layer_embeddings(vision, image_set, layers, settings)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        total = _all_cpu_s() - total
    n = len(image_set)
    return {
        "workers": workers,
        "main_cpu_outside_forward_ms_per_image": (cpu - spent["cpu"]) / n * 1e3,
        "forward_cpu_ms_per_image": spent["cpu"] / n * 1e3,
        "all_processes_cpu_ms_per_image": total / n * 1e3,
        "wall_s": wall,
        "images_per_s": n / wall,
    }


def pipeline_rate(vision, image_set, workers: int, batch_size: int, transfer: str) -> dict:
    """Images/s of decode + transform + stack (the loader alone, no model)."""
    from siglip_dola.embeddings import _pixel_transfer

    settings = RunSettings(
        batch_size=batch_size, workers=workers, progress=False, transfer=transfer
    )
    transform, _ = _pixel_transfer(vision, settings)
    blocks = list(range(-(-len(image_set) // BLOCK_IMAGES)))
    start, count = time.perf_counter(), 0
    for loaded in _loader(_batches(image_set, blocks, batch_size, transform), settings):
        count += len(loaded.positions)
    wall = time.perf_counter() - start
    return {"workers": workers, "transfer": transfer, "images_per_s": count / wall}


class _Premade(torch.utils.data.Dataset):
    """Batches of [B, 3, 384, 384] pixels made in the worker (float32 or uint8)."""

    def __init__(self, batches: int, batch_size: int, dtype: torch.dtype) -> None:
        self.batches, self.batch_size, self.dtype = batches, batch_size, dtype

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, index: int) -> LoadedBatch:
        image = torch.zeros((3, SIDE, SIDE), dtype=self.dtype)
        samples = [{"pixel_values": image}] * self.batch_size
        pixels = collate_samples(samples)["pixel_values"]  # stacked into shared memory
        positions = list(range(index * self.batch_size, (index + 1) * self.batch_size))
        return LoadedBatch(0, positions, [0] * len(positions), {"pixel_values": pixels}, [], False)


def _touch_every_page(tensor: torch.Tensor) -> None:
    # What a move to a device or the model's first read costs the receiver: one fault per page.
    tensor.reshape(-1).view(torch.uint8)[::4096].sum()


def transfer_cost(dtype: torch.dtype, batch_size: int, batches: int) -> dict:
    """Main-process CPU and wall time per image of receiving batches from 2 workers (and of
    the pinned copy where CUDA is present)."""
    settings = RunSettings(batch_size=batch_size, workers=2, progress=False)
    loader = _loader(_Premade(batches, batch_size, dtype), settings)
    received, cpu_total, pin_total = 0, 0.0, 0.0
    cuda = torch.cuda.is_available()
    iterator = iter(loader)
    next(iterator)  # worker start-up is not transfer
    while True:
        cpu = time.process_time()
        try:
            loaded = next(iterator)
        except StopIteration:
            break
        _touch_every_page(loaded.batch["pixel_values"])
        cpu_total += time.process_time() - cpu
        if cuda:
            t = time.perf_counter()
            loaded.pin_memory()
            pin_total += time.perf_counter() - t
        received += len(loaded.positions)
    element = torch.empty((), dtype=dtype).element_size()
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "mb_per_image": 3 * SIDE * SIDE * element / 1e6,
        "main_cpu_ms_per_image": cpu_total / received * 1e3,
        "pin_ms_per_image": pin_total / received * 1e3 if cuda else None,
    }


def eval_wall_ratio(spec: list[str], data: Path, repeats: int, batch_size: int) -> dict:
    """``siglip-dola eval`` in this process, workers 2 vs 0 interleaved; median ratio."""
    from siglip_dola.cli import main

    times: dict[int, list[float]] = {2: [], 0: []}
    with tempfile.TemporaryDirectory() as out:
        for run in range(repeats + 1):  # the first round warms both sides up, untimed
            for workers in (2, 0):
                argv = ["eval", *spec, "--dataset", str(data), "--templates", "photo"]
                argv += ["--workers", str(workers), "--batch-size", str(batch_size)]
                argv += ["--no-cache", "--quiet", "--overwrite"]
                argv += ["--output", str(Path(out) / "results.json")]
                with contextlib.redirect_stdout(open(os.devnull, "w")):
                    start = time.perf_counter()
                    code = main(argv)
                    elapsed = time.perf_counter() - start
                if code:
                    raise SystemExit(f"eval failed ({code}): {argv}")
                if run:
                    times[workers].append(elapsed)
    two, zero = statistics.median(times[2]), statistics.median(times[0])
    return {"workers_2_s": two, "workers_0_s": zero, "ratio": two / zero, "runs_s": times}


# ----------------------------------------------------------------------------- sections


def cpu_section(args: argparse.Namespace) -> dict:
    from siglip_dola.models import load_model

    torch.set_num_threads(1)
    data = write_photos(args.data / f"photos-{args.images}", args.images)
    hf_dir, timm_dir = write_tiny_models(args.data)
    image_set = load_image_folder(data)
    specs = {
        "hf": ["--model", f"hf:{hf_dir}"],
        "timm": ["--model", f"timm:{timm_dir}", "--text-model", f"hf:{hf_dir}"],
    }
    results: dict = {"images": len(image_set), "image_size": list(SIZE), "adapters": {}}
    for name, spec in specs.items():
        vision = load_model(spec[1]).vision
        row: dict = {}
        row["main_process"] = [
            main_process_ms(vision, image_set, workers, args.batch_size) for workers in (2, 0)
        ]
        row["pipeline"] = [
            pipeline_rate(vision, image_set, workers, args.batch_size, transfer)
            for workers in (2, 0)
            for transfer in ("float32", "uint8")
        ]
        row["eval"] = eval_wall_ratio(spec, data, args.repeats, args.batch_size)
        results["adapters"][name] = row
        two, zero = (r["main_cpu_outside_forward_ms_per_image"] for r in row["main_process"])
        all_two, all_zero = (r["all_processes_cpu_ms_per_image"] for r in row["main_process"])
        print(
            f"{name:>5}: main process outside the forward {two:.2f} ms/image with 2 workers "
            f"({zero:.2f} in-process); all processes' CPU {all_two:.2f} vs {all_zero:.2f} "
            f"ms/image; eval wall workers 2 / 0 = {row['eval']['ratio']:.3f} "
            f"({row['eval']['workers_2_s']:.2f} s vs {row['eval']['workers_0_s']:.2f} s)",
            flush=True,
        )
        for rate in row["pipeline"]:
            print(
                f"       pipeline alone, workers {rate['workers']}, {rate['transfer']:>7}: "
                f"{rate['images_per_s']:.0f} images/s",
                flush=True,
            )
    results["transfer"] = [
        transfer_cost(dtype, args.batch_size, args.transfer_batches)
        for dtype in (torch.float32, torch.uint8)
    ]
    for cost in results["transfer"]:
        pin = (
            ""
            if cost["pin_ms_per_image"] is None
            else f", pinning {cost['pin_ms_per_image']:.2f} ms"
        )
        print(
            f"transfer from a worker, {cost['dtype']:>7} ({cost['mb_per_image']:.2f} MB/image): "
            f"{cost['main_cpu_ms_per_image']:.3f} ms main-process CPU per image{pin}",
            flush=True,
        )
    return results


def gpu_section(args: argparse.Namespace) -> dict:
    from siglip_dola.benchmark import ALPHAS
    from siglip_dola.settings import default_workers, parse_dtype
    from siglip_dola.variants import Variant, default_variants
    from siglip_dola.zeroshot import evaluate_embeddings

    device, dtype = torch.device(args.device), parse_dtype(args.dtype)
    cuda = device.type == "cuda"
    data = write_photos(args.data / f"photos-{args.gpu_images}", args.gpu_images)
    image_set = load_image_folder(data)
    vision = build_full_size(args.adapter, device, dtype, tiny=args.tiny)
    if args.compile:
        vision.compile()
    settings = RunSettings(
        batch_size=args.batch_size,
        workers=default_workers(str(device)) if args.workers is None else args.workers,
        device=str(device),
        dtype=args.dtype,
        progress=False,
    )
    depth = vision.depth
    classes = len(image_set.class_names)
    bank = torch.nn.functional.normalize(torch.randn(classes, vision.embed_dim), dim=-1)
    variants = {
        "baseline": ([Variant.baseline()], ()),
        "dola": (default_variants(depth, 3, ALPHAS, None, apc=True), tuple(range(1, depth))),
    }

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def end_to_end(kind: str) -> float:
        chosen, layers = variants[kind]
        sync()
        start = time.perf_counter()
        emb = extract_layer_embeddings(vision, image_set, layers, settings)
        evaluate_embeddings(emb, bank, 0.01, chosen, classes)
        sync()
        return time.perf_counter() - start

    gen = torch.Generator().manual_seed(0)
    pixels = torch.randn(args.batch_size, 3, SIDE, SIDE, generator=gen).to(device, dtype)

    def model_alone() -> float:
        batches = -(-len(image_set) // args.batch_size)
        sync()
        start = time.perf_counter()
        with torch.inference_mode():
            for _ in range(batches):
                vision.image_embedding({"pixel_values": pixels})
        sync()
        return (time.perf_counter() - start) * len(image_set) / (batches * args.batch_size)

    runs = {"model_alone": model_alone, "baseline": lambda: end_to_end("baseline")}
    runs["dola"] = lambda: end_to_end("dola")
    peaks: dict[str, float] = {}
    for name, fn in runs.items():  # warm-up (and compile), one peak-memory reading each
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        fn()
        if cuda:
            peaks[name] = torch.cuda.max_memory_allocated(device) / 2**30
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(fn())
    median = {name: statistics.median(t) for name, t in times.items()}
    n = len(image_set)
    result = {
        "device": torch.cuda.get_device_name(device) if cuda else str(device),
        "adapter": vision.name,
        "dtype": str(dtype),
        "images": n,
        "batch_size": args.batch_size,
        "workers": settings.workers,
        "compile": args.compile,
        "images_per_s": {name: n / t for name, t in median.items()},
        "end_to_end_dola_vs_model_alone": median["model_alone"] / median["dola"],
        "dola_over_baseline": median["dola"] / median["baseline"],
        "peak_gib": peaks or None,
        "runs_s": times,
    }
    rates = result["images_per_s"]
    print(
        f"{result['device']} {vision.name} {dtype} B={args.batch_size} workers={settings.workers}"
        f"{' compiled' if args.compile else ''}: model alone {rates['model_alone']:.0f} img/s, "
        f"end to end baseline {rates['baseline']:.0f} img/s, every DoLa variant "
        f"{rates['dola']:.0f} img/s ({result['end_to_end_dola_vs_model_alone']:.3f}x the model "
        f"alone; target >= 0.9); DoLa / baseline {result['dola_over_baseline']:.3f} "
        f"(target <= 1.03); peak GiB {peaks or 'n/a'}",
        flush=True,
    )
    return result


def build_full_size(adapter: str, device: torch.device, dtype: torch.dtype, tiny: bool = False):
    """SigLIP ViT-L/16-384 (random init) as the transformers or the timm adapter; ``tiny``:
    4 blocks of width 32 at the same input size (a smoke run of the section on a CPU)."""
    width, depth, heads = (32, 4, 2) if tiny else (1024, 24, 16)
    if adapter == "hf":
        from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

        from siglip_dola.readout.hf import HFSiglipReadout

        config = SiglipVisionConfig(
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=depth,
            num_attention_heads=heads,
            image_size=SIDE,
            patch_size=16,
        )
        processor = SiglipImageProcessor(
            size={"height": SIDE, "width": SIDE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )
        model = SiglipVisionModel(config).eval()
        readout = HFSiglipReadout(
            model, processor, name=f"hf: ViT-L/16-384 (random){' tiny' * tiny}"
        )
        return readout.to(device, dtype)
    import timm

    from siglip_dola.readout.timm_vit import TimmViTReadout

    kwargs = dict(embed_dim=width, depth=depth, num_heads=heads) if tiny else {}
    model = timm.create_model(
        "vit_large_patch16_siglip_384", pretrained=False, num_classes=0, **kwargs
    ).eval()
    readout = TimmViTReadout(model, name=f"timm: ViT-L/16-384 (random){' tiny' * tiny}")
    return readout.to(device, dtype)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data",
        type=Path,
        default=default_cache_dir() / "bench_pipeline",
        help="folder for the photos and tiny models, written once",
    )
    ap.add_argument("--images", type=int, default=512, help="CPU section: JPEGs (default 512)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 64 (CPU), 256 (GPU)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repetitions of each side")
    ap.add_argument("--transfer-batches", type=int, default=12)
    ap.add_argument("--gpu", action="store_true", help="the GPU section instead")
    ap.add_argument("--device", default="cuda", help="GPU section: device (default cuda)")
    ap.add_argument("--dtype", default="bfloat16", help="GPU section: dtype (default bfloat16)")
    ap.add_argument("--adapter", default="hf", choices=("hf", "timm"), help="GPU section")
    ap.add_argument("--gpu-images", type=int, default=2048, help="GPU section: JPEGs")
    ap.add_argument("--workers", type=int, default=None, help="GPU section (default: auto)")
    ap.add_argument("--compile", action="store_true", help="GPU section: torch.compile")
    ap.add_argument("--tiny", action="store_true", help="GPU section with a tiny model (smoke)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    args.batch_size = args.batch_size or (256 if args.gpu else 64)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"python {sys.version.split()[0]} torch {torch.__version__} cpus {os.cpu_count()} "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} load_avg_1min={load:.2f}",
        flush=True,
    )
    results = gpu_section(args) if args.gpu else cpu_section(args)
    results["load_avg_1min_at_start"] = load
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
