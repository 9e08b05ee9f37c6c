"""Blocked vs unblocked retrieval re-ranking: time and peak memory, in one run.

    python benchmarks/bench_retrieval.py        # 1,000 images x 100,000 captions, D=1024

Both variants run the same code (image->text and text->image, baseline + DoLa re-ranking of
a shortlist of 50, 4 layers). "Unblocked" sets the block budget to the whole image x caption
score matrix, so each direction's baseline scores are one matrix product (the text->image
pair re-scoring is still cut where its [layers, pairs, shortlist] tensor would exceed that).
Each measurement runs in a fresh child process (peak RSS growth over the inputs, after a
small warm-up run; glibc's mmap threshold fixed so that freed blocks go back to the OS at
once); the two alternate for --repeats rounds and medians are compared. Target: blocked
time within 1.2x of unblocked, at a fraction of its memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = """
import json, sys, time
import torch
from siglip_dola.retrieval import image_to_text, text_to_image
images, captions, dim, budget = map(int, sys.argv[1:5])
gen = torch.Generator().manual_seed(0)

def status_mb(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":")) / 1024

def rerank(layers, text):
    i2t, lists = image_to_text(layers, (18, 20, 22, 24), text, 0.01, shortlist=50, max_block_elements=budget)
    text_to_image(layers, (18, 20, 22, 24), text, 0.01, lists, shortlist=50, max_block_elements=budget)

# a small run first maps the code pages, so that the peak below is memory the computation holds
rerank(torch.randn(4, 100, dim, generator=gen), torch.randn(1000, dim, generator=gen))
layers = torch.randn(4, images, dim, generator=gen)
text = torch.randn(captions, dim, generator=gen)
start = status_mb("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the high-water mark VmHWM to the current RSS
t0 = time.perf_counter()
rerank(layers, text)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "peak_growth_mb": status_mb("VmHWM") - start}))
"""


def run(images: int, captions: int, dim: int, budget: int) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(images), str(captions), str(dim), str(budget)],
        capture_output=True,
        text=True,
        env=env,
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--captions", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--block-elements", type=int, default=4_000_000, help="blocked budget (default 4M)"
    )
    args = ap.parse_args()
    whole = args.images * args.captions  # the full image x caption score matrix in one block
    results: dict[str, list[dict]] = {"blocked": [], "unblocked": []}
    for _ in range(args.repeats):
        results["blocked"].append(run(args.images, args.captions, args.dim, args.block_elements))
        results["unblocked"].append(run(args.images, args.captions, args.dim, whole))
    summary = {
        name: {
            key: statistics.median(r[key] for r in runs) for key in ("seconds", "peak_growth_mb")
        }
        for name, runs in results.items()
    }
    b, u = summary["blocked"], summary["unblocked"]
    print(
        f"{args.images} images x {args.captions} captions, D={args.dim}, shortlist 50, "
        f"{args.repeats} alternating runs (medians)"
    )
    print(f"unblocked: {u['seconds']:7.2f} s, peak memory growth {u['peak_growth_mb']:8.0f} MB")
    print(f"blocked:   {b['seconds']:7.2f} s, peak memory growth {b['peak_growth_mb']:8.0f} MB")
    print(
        f"time ratio blocked/unblocked: {b['seconds'] / u['seconds']:.2f}x (target <= 1.2x); "
        f"memory ratio: {b['peak_growth_mb'] / u['peak_growth_mb']:.2f}"
    )


if __name__ == "__main__":
    main()
