"""Cost of the DoLa readout next to the model's own image embedding (one run, one ratio).

    python benchmarks/bench_readout.py                      # ViT-L/16-384, B=4, fp32, CPU
    python benchmarks/bench_readout.py --device cuda --dtype bfloat16 --batch-size 64

Full-size SigLIP ViT-L/16-384 image towers with random weights (speed does not depend on the
values), one per adapter: transformers ``SiglipVisionModel`` (``hf``), timm
``vit_large_patch16_siglip_384`` (``timm``), open_clip ``ViT-L-16-SigLIP-384`` (``open_clip``:
the timm trunk + open_clip's projection), the same timm tower rebuilt from a Janus-layout state
dict (``janus``), and the seed-compatible ``rerank_with_dola_siglip`` on the timm tower
(``compat``).

* baseline: the library's own image embedding + one [B, D] x [D, C] score product;
* DoLa: one readout of the final layer and the candidate layers (one backbone pass, every
  layer's tokens reduced by the fused MAP head as its block produces them) + one score product
  per layer + the DoLa maths (apply_dola); for ``compat`` the whole seed entry point.

Repetitions of the two are interleaved on the same inputs and the medians compared; on CUDA
the peak memory of each side is reported too. Target: ratio <= 1.0 for every adapter.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch

from siglip_dola.compat import rerank_with_dola_siglip
from siglip_dola.dola import apply_dola, class_scores
from siglip_dola.settings import parse_dtype


def build_hf(device: torch.device, dtype: torch.dtype):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from siglip_dola.readout.hf import HFSiglipReadout

    config = SiglipVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=384,
        patch_size=16,
    )
    model = SiglipVisionModel(config).eval()
    return HFSiglipReadout(model, name="hf:siglip-large-patch16-384 (random)").to(device, dtype)


def build_timm(device: torch.device, dtype: torch.dtype):
    import timm

    from siglip_dola.readout.timm_vit import TimmViTReadout

    model = timm.create_model(
        "vit_large_patch16_siglip_384", pretrained=False, num_classes=0
    ).eval()
    return TimmViTReadout(model, name="timm:vit_large_patch16_siglip_384 (random)").to(
        device, dtype
    )


def build_open_clip(device: torch.device, dtype: torch.dtype):
    import open_clip

    from siglip_dola.readout.open_clip import OpenClipReadout

    model = open_clip.create_model("ViT-L-16-SigLIP-384", pretrained=None).eval()
    model.text = None  # the image tower is what is timed
    return OpenClipReadout(model, name="open_clip:ViT-L-16-SigLIP-384 (random)").to(device, dtype)


def build_janus(device: torch.device, dtype: torch.dtype):
    import timm

    from siglip_dola.readout.janus import JanusImageTransform, build_janus_vision_tower
    from siglip_dola.readout.timm_vit import TimmViTReadout

    weights = timm.create_model(
        "vit_large_patch16_siglip_384", pretrained=False, num_classes=0
    ).state_dict()
    tower = build_janus_vision_tower(weights, num_heads=16)
    return TimmViTReadout(
        tower, name="janus (random ViT-L/16-384 tower)", transform=JanusImageTransform()
    ).to(device, dtype)


BUILDERS = {
    "hf": build_hf,
    "timm": build_timm,
    "open_clip": build_open_clip,
    "janus": build_janus,
    "compat": build_timm,
}


def measure(
    readout, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, seed_api: bool
) -> dict:
    gen = torch.Generator().manual_seed(0)
    batch = {
        "pixel_values": torch.randn(args.batch_size, 3, 384, 384, generator=gen).to(device, dtype)
    }
    bank = torch.randn(args.classes, readout.embed_dim, generator=gen).to(device)
    candidates = tuple(args.candidates)
    tau = 0.01

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def baseline() -> None:
        z = readout.image_embedding(batch)
        class_scores(z, bank, tau=tau, normalize=True)
        sync()

    def dola() -> None:
        layers = readout.forward_layers(batch, candidates)
        scores = class_scores(layers.embeddings, bank, tau=tau, normalize=True)
        apply_dola(scores, layers=layers.layers, candidate_layers=candidates, alpha=0.1)
        sync()

    def seed_entry_point() -> None:
        rerank_with_dola_siglip(
            readout.model, batch["pixel_values"], bank, tau=tau, candidate_layers=candidates
        )
        sync()

    runs: dict[str, Callable[[], None]] = {
        "baseline": baseline,
        "dola": seed_entry_point if seed_api else dola,
    }
    peak: dict[str, float] = {}
    with torch.inference_mode():
        for name, fn in runs.items():
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(args.warmup):
                fn()
            if device.type == "cuda":
                peak[name] = torch.cuda.max_memory_allocated(device) / 2**20
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    base, contrast = statistics.median(times["baseline"]), statistics.median(times["dola"])
    return {
        "model": readout.name + (" via rerank_with_dola_siglip" if seed_api else ""),
        "baseline_s": base,
        "dola_s": contrast,
        "ratio": contrast / base,
        "baseline_runs_s": times["baseline"],
        "dola_runs_s": times["dola"],
        "peak_mib": peak or None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--adapters",
        default=",".join(BUILDERS),
        help=f"comma-separated, of {', '.join(BUILDERS)} (default all)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--candidates", type=int, nargs="+", default=[18, 20, 22])
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions of each path")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), parse_dtype(args.dtype)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"device={device} dtype={dtype} B={args.batch_size} C={args.classes} "
        f"candidates={args.candidates} repeats={args.repeats} threads={torch.get_num_threads()} "
        f"load_avg_1min={load:.2f}"
    )
    results = []
    for key in args.adapters.split(","):
        torch.manual_seed(0)
        key = key.strip()
        readout = BUILDERS[key](device, dtype)
        result = measure(readout, args, device, dtype, seed_api=key == "compat")
        results.append(result)
        memory = ""
        if result["peak_mib"]:
            memory = "   peak {baseline:.0f} / {dola:.0f} MiB".format(**result["peak_mib"])
        print(
            f"{key:>9}: baseline {result['baseline_s']:.3f} s   DoLa {result['dola_s']:.3f} s   "
            f"ratio {result['ratio']:.3f}  (target <= 1.0){memory}",
            flush=True,
        )
        del readout
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": str(device),
                    "dtype": str(dtype),
                    "batch_size": args.batch_size,
                    "classes": args.classes,
                    "load_avg_1min": load,
                    "results": results,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
