"""Cost of the DoLa maths next to the score product it post-processes (one run, one ratio).

    python benchmarks/bench_dola.py            # B=256, C=1000, K=4, D=1024, CPU

Baseline: one [B, D] x [D, C] product (the final layer's scores). DoLa: log-softmax of K+1
layers, JSD of every candidate, per-image selection, APC mask and contrast. Repetitions of the
two are interleaved and the medians compared. Target: ratio <= 2.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from siglip_dola.dola import apply_dola


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--candidates", type=int, default=4)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    gen = torch.Generator().manual_seed(0)
    device = torch.device(args.device)
    layers = list(range(1, args.candidates + 2))
    emb = torch.randn(args.batch, args.dim, generator=gen).to(device)
    bank = torch.randn(args.classes, args.dim, generator=gen).to(device)
    scores = (torch.randn(len(layers), args.batch, args.classes, generator=gen) * 5).to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def product() -> None:
        emb @ bank.T
        sync()

    def dola_maths() -> None:
        apply_dola(scores, layers=layers, alpha=0.1)
        sync()

    for fn in (product, dola_maths):
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {"product": [], "dola": []}
    for _ in range(args.repeats):
        for name, fn in (("product", product), ("dola", dola_maths)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    p, d = statistics.median(times["product"]), statistics.median(times["dola"])
    print(
        f"B={args.batch} C={args.classes} K={args.candidates} D={args.dim} "
        f"device={args.device} threads={torch.get_num_threads()} repeats={args.repeats}"
    )
    print(f"score product [B,D]x[D,C]: {p * 1e3:8.2f} ms (median)")
    print(f"DoLa maths (K+1 layers):   {d * 1e3:8.2f} ms (median)")
    print(f"ratio DoLa / product: {d / p:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
