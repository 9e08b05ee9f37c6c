"""Streaming a clip_benchmark webdataset folder vs the same images as a class folder: eval time
in one run, and peak memory while streaming a large set.

    python benchmarks/bench_data.py            # 2,000 images timed, 20,000 streamed
    python benchmarks/bench_data.py --repeats 7 --stream-images 40000

Time: the first 2,000 bundled Fashion-MNIST images are written as PNG files twice, as a
webdataset folder in clip_benchmark's layout (webdataset's ShardWriter, 512 samples a shard)
and as an image folder (one subfolder per class). Each side is a whole ``eval`` as the command
runs it - open the data set (the webdataset shards are indexed, the folder listed), build the
text bank, read every image out at all 24 layers, evaluate every default variant - on the
bundled model, in this process, no cache. After one untimed eval of each, the two alternate
for ``--repeats`` rounds (ABBA order); the medians are compared (and the fastest of each).
The command line's allocator setting is applied (``siglip_dola.allocator``), as in
``siglip-dola bench``. Target: webdataset / folder <= 1.1x. The input pipeline alone (open,
decode and transform every image, no model) is timed in the same rounds, to show where a
difference comes from.

Memory: a child process streams a webdataset folder of N images (the 2,000 repeated) through
``extract_layer_embeddings`` (final layer only, one loader process), after a warm-up run on
a small set; the peak resident-set growth over the run is measured (VmHWM reset at the start)
for N = 2,000 and N = --stream-images. The result itself (N x 64 float32 embeddings, labels,
positions) necessarily grows with N; the bound stated below is for the growth beyond it,
which must not depend on N: at most BOUND_MB, and the large set's at most 8 MB above the
small set's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BOUND_MB = 64.0  # peak growth beyond the result's own bytes, for any N
SHARD = 512  # samples per webdataset shard

CHILD = """
import json, sys, time
from pathlib import Path
from siglip_dola.data import bundled_model_dir, load_dataset
from siglip_dola.embeddings import extract_layer_embeddings
from siglip_dola.models import load_model
from siglip_dola.settings import RunSettings

def status_mb(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":")) / 1024

warm, big = sys.argv[1:3]
model = load_model(f"hf:{bundled_model_dir()}")
settings = RunSettings(batch_size=64, progress=False)
extract_layer_embeddings(model.vision, load_dataset(f"wds:{warm}"), (), settings)
source = load_dataset(f"wds:{big}")  # the index of the big set is part of what is measured
start = status_mb("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the high-water mark VmHWM to the current RSS
t0 = time.perf_counter()
result = extract_layer_embeddings(model.vision, source, (), settings)
seconds = time.perf_counter() - t0
result_mb = (result.embeddings.nbytes + result.labels.nbytes + result.indices.nbytes) / 2**20
print(json.dumps({"images": len(result.indices), "seconds": seconds, "result_mb": result_mb,
                  "peak_growth_mb": status_mb("VmHWM") - start}))
"""


def write_sets(folder: Path, count: int, repeat: int = 1) -> tuple[Path, Path]:
    """(webdataset folder, image folder) of the first ``count`` bundled images (the
    webdataset one ``repeat`` times over)."""
    import io

    import webdataset
    from PIL import Image

    from siglip_dola.data import BUNDLED_CLASS_NAMES, BUNDLED_TEMPLATES, load_dataset

    data = load_dataset("bundled:fashion-mnist")
    encoded = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(data.items[i]).save(buffer, format="PNG")
        encoded.append((buffer.getvalue(), int(data.labels[i])))
    wds = folder / f"wds_fashion_{count * repeat}"
    (wds / "test").mkdir(parents=True)
    (wds / "classnames.txt").write_text("\n".join(BUNDLED_CLASS_NAMES) + "\n")
    (wds / "zeroshot_classification_templates.txt").write_text("\n".join(BUNDLED_TEMPLATES) + "\n")
    with webdataset.ShardWriter(str(wds / "test" / "%d.tar"), maxcount=SHARD, verbose=0) as sink:
        for r in range(repeat):
            for i, (png, label) in enumerate(encoded):
                sink.write({"__key__": f"s{r * count + i:07d}", "png": png, "cls": label})
        shards = sink.shard
    (wds / "test" / "nshards.txt").write_text(f"{shards}\n")
    images = folder / f"folder_{count}"
    if repeat == 1:
        for i, (png, label) in enumerate(encoded):
            path = images / BUNDLED_CLASS_NAMES[label] / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
    return wds, images


def one_eval(model, spec: str, settings) -> float:
    from siglip_dola.data import load_dataset
    from siglip_dola.text import resolve_templates
    from siglip_dola.variants import VariantGrid
    from siglip_dola.zeroshot import evaluate_dataset

    t0 = time.perf_counter()
    source = load_dataset(spec)
    templates = resolve_templates("bundled", source.templates)
    variants = VariantGrid().variants(model.vision.depth)
    evaluate_dataset(model, source, templates, variants, settings=settings)
    return time.perf_counter() - t0


def one_pass(model, spec: str, settings) -> float:
    """The input pipeline alone: open the set, decode and transform every image, no model."""
    from siglip_dola.data import load_dataset
    from siglip_dola.embeddings import StreamingSource, _batches, _image_set_blocks, _loader

    t0 = time.perf_counter()
    source = load_dataset(spec)
    if isinstance(source, StreamingSource):
        blocks = [b.number for b in source.cache_blocks()]
    else:
        blocks = [b.number for b in _image_set_blocks(source)]
    dataset = _batches(source, blocks, settings.batch_size, model.vision.image_transform)
    for _ in _loader(dataset, settings):
        pass
    return time.perf_counter() - t0


def time_ratio(folder: Path, images: int, repeats: int, workers: int) -> dict:
    from siglip_dola.data import bundled_model_dir
    from siglip_dola.models import load_model
    from siglip_dola.settings import RunSettings

    wds, image_folder = write_sets(folder, images)
    model = load_model(f"hf:{bundled_model_dir()}")
    settings = RunSettings(batch_size=64, workers=workers, progress=False)
    specs = {"wds": f"wds:{wds}", "folder": str(image_folder)}
    for spec in specs.values():
        one_eval(model, spec, settings)
    times: dict[str, list[float]] = {"wds": [], "folder": []}
    inputs: dict[str, list[float]] = {"wds": [], "folder": []}
    for round_ in range(repeats):
        order = list(specs.items()) if round_ % 2 == 0 else list(specs.items())[::-1]
        for side, spec in order:  # ABBA: neither side always runs first
            times[side].append(one_eval(model, spec, settings))
            inputs[side].append(one_pass(model, spec, settings))
    wds_s, folder_s = statistics.median(times["wds"]), statistics.median(times["folder"])
    wds_in, folder_in = statistics.median(inputs["wds"]), statistics.median(inputs["folder"])
    return {
        "input_wds_median_s": round(wds_in, 3),
        "input_folder_median_s": round(folder_in, 3),
        "input_ratio": round(wds_in / folder_in, 3),
        "images": images,
        "workers": workers,
        "repeats": repeats,
        "wds_median_s": round(wds_s, 3),
        "folder_median_s": round(folder_s, 3),
        "ratio": round(wds_s / folder_s, 3),
        "ratio_of_minima": round(min(times["wds"]) / min(times["folder"]), 3),
        "wds_s": [round(t, 3) for t in times["wds"]],
        "folder_s": [round(t, 3) for t in times["folder"]],
    }


def stream_memory(folder: Path, images: int) -> dict:
    warm, _ = write_sets(folder / "warm", 256)
    base = 2000
    big, _ = write_sets(folder / f"big{images}", base, repeat=max(1, images // base))
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(warm), str(big)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="images timed (at most 2,000)")
    parser.add_argument("--stream-images", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="loader workers of the timed evals (default: the command line's on --device cpu)",
    )
    parser.add_argument("--output", type=Path, default=None, help="results JSON")
    args = parser.parse_args()
    from siglip_dola.allocator import keep_freed_memory
    from siglip_dola.settings import default_workers

    keep_freed_memory()
    if args.workers is None:
        args.workers = default_workers("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        timing = time_ratio(folder / "timed", min(args.images, 2000), args.repeats, args.workers)
        print(
            f"eval on {timing['images']} images, {timing['workers']} loader worker(s): "
            f"webdataset {timing['wds_median_s']:.3f} s, "
            f"folder {timing['folder_median_s']:.3f} s (medians of {args.repeats}): "
            f"ratio {timing['ratio']:.3f}x (target <= 1.1x); fastest of each: "
            f"{timing['ratio_of_minima']:.3f}x"
        )
        print(
            f"the input pipeline alone (open, decode, transform; no model): webdataset "
            f"{timing['input_wds_median_s']:.3f} s, folder {timing['input_folder_median_s']:.3f} s: "
            f"{timing['input_ratio']:.3f}x"
        )
        small = stream_memory(folder / "small", 2000)
        large = stream_memory(folder / "large", args.stream_images)
    memory = {"small": small, "large": large, "bound_mb": BOUND_MB}
    for run in (small, large):
        run["beyond_result_mb"] = round(run["peak_growth_mb"] - run["result_mb"], 2)
        print(
            f"streaming {run['images']} images: peak growth {run['peak_growth_mb']:.1f} MB, "
            f"result {run['result_mb']:.1f} MB, beyond it {run['beyond_result_mb']:.1f} MB "
            f"(bound {BOUND_MB:.0f} MB), {run['images'] / run['seconds']:.0f} images/s"
        )
    flat = large["beyond_result_mb"] <= small["beyond_result_mb"] + 8
    within = large["beyond_result_mb"] <= BOUND_MB and small["beyond_result_mb"] <= BOUND_MB
    memory["flat"], memory["within_bound"] = flat, within
    print(f"memory within the bound: {within}; not growing with the set: {flat}")
    if args.output:
        args.output.write_text(json.dumps({"time": timing, "memory": memory}, indent=2) + "\n")


if __name__ == "__main__":
    main()
