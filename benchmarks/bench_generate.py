"""Batched multi-prompt Janus generation vs DeepSeek's one-prompt-at-a-time loop (one run,
one ratio).

    python benchmarks/bench_generate.py                      # tiny random model, CPU, fp32
    python benchmarks/bench_generate.py --size janus-pro-1b --device cuda --dtype bfloat16
    python benchmarks/bench_generate.py --size janus-pro-7b --device cuda --dtype bfloat16

Both sides make the same images: ``--prompts`` prompts x ``--parallel-size`` candidates with
CFG pairs, sampled image tokens, VQ decode to uint8. The reference
(``reference_image_tokens`` in ``tests/_deepseek_reference.py``, DeepSeek's loop) decodes one
prompt per call; ours (:func:`siglip_dola.generate.sampling.generate_image_tokens`) puts
``--batch-prompts`` prompts (default: all) into one left-padded batch with one KV cache.
Repetitions alternate and the medians are compared. Target on the tiny CPU model: >= 2x.
The Janus-Pro sizes build random-init layers of the real widths and depths (no weights are
downloaded) and report peak GPU memory per image.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the test oracle
from _deepseek_reference import reference_image_tokens  # noqa: E402

from siglip_dola.generate.sampling import (  # noqa: E402
    ImageRow,
    SamplingConfig,
    SpecialTokens,
    candidate_seed,
    decode_images,
    generate_image_tokens,
)

SPECIAL = SpecialTokens(bos=0, pad=1, boi=2)
SIZES = {
    # text (hidden, layers, heads, intermediate, vocab), VQ (base, latent, res blocks,
    # channel multipliers), image-token grid. The tiny VQ decoder upsamples 2x instead of
    # 16x so that, as in Janus-Pro (where the 576-step language-model loop costs several
    # times the VQ decode), the token loop dominates; decoding is the same work on both sides.
    "tiny": dict(text=(128, 2, 4, 256, 1000), vq=(32, 32, 1, [1, 1]), grid=8, codebook=1024),
    "janus-pro-1b": dict(
        text=(2048, 24, 16, 5632, 102400),
        vq=(128, 256, 2, [1, 1, 2, 2, 4]),
        grid=24,
        codebook=16384,
    ),
    "janus-pro-7b": dict(
        text=(4096, 30, 32, 11008, 102400),
        vq=(128, 256, 2, [1, 1, 2, 2, 4]),
        grid=24,
        codebook=16384,
    ),
}


def build_model(
    size: str,
    device: torch.device,
    dtype: torch.dtype,
    text_layers: int | None = None,
    grid: int | None = None,
):
    """A random-init JanusForConditionalGeneration with the named size, built in place."""
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    spec = SIZES[size]
    hidden, layers, heads, intermediate, vocab = spec["text"]
    base, latent, res_blocks, multiplier = spec["vq"]
    grid = grid or spec["grid"]
    text = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=text_layers or layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=4096,
    )
    tiny = size == "tiny"
    vision = JanusVisionConfig(
        hidden_size=64 if tiny else 1024,
        num_hidden_layers=1 if tiny else 24,
        num_attention_heads=2 if tiny else 16,
        image_size=16 * grid,
        patch_size=16,
        projection_dim=hidden,
        num_image_tokens=grid * grid,
    )
    vq = JanusVQVAEConfig(
        num_embeddings=spec["codebook"],
        base_channels=base,
        latent_channels=latent,
        num_res_blocks=res_blocks,
        channel_multiplier=multiplier,
        projection_dim=hidden,
        image_token_embed_dim=hidden,
    )
    config = JanusConfig(
        text_config=text, vision_config=vision, vq_config=vq, tie_word_embeddings=False
    )
    from transformers import JanusForConditionalGeneration

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = JanusForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def random_prompts(count: int, vocab: int, seed: int = 0) -> list[tuple[int, ...]]:
    """Token ids of prompts of assorted lengths (BOS ... <begin_of_image>)."""
    gen = torch.Generator().manual_seed(seed)
    prompts = []
    for i in range(count):
        length = 12 + (7 * i) % 20
        body = torch.randint(3, vocab, (length,), generator=gen).tolist()
        prompts.append((SPECIAL.bos, *body, SPECIAL.boi))
    return prompts


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument(
        "--text-layers",
        type=int,
        default=None,
        help="override the number of language-model layers (smaller GPUs)",
    )
    ap.add_argument(
        "--grid",
        type=int,
        default=None,
        help="image tokens per side (default: 8 tiny, 24 Janus-Pro)",
    )
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--parallel-size", type=int, default=4)
    ap.add_argument("--batch-prompts", type=int, default=None, help="default: all prompts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    model = build_model(args.size, device, dtype, args.text_layers, args.grid)
    prompts = random_prompts(args.prompts, model.config.text_config.vocab_size)
    config = SamplingConfig(cfg_weight=5.0, temperature=1.0)
    batch_prompts = args.batch_prompts or args.prompts
    k = args.parallel_size
    images = args.prompts * k

    def ours() -> None:
        for start in range(0, len(prompts), batch_prompts):
            part = prompts[start : start + batch_prompts]
            rows = [
                ImageRow(p, candidate_seed(0, start + i, j))
                for i, p in enumerate(part)
                for j in range(k)
            ]
            tokens = generate_image_tokens(model, rows, config, SPECIAL)
            for i in range(len(part)):
                decode_images(model, tokens[i * k : (i + 1) * k])

    generator = torch.Generator(device=device).manual_seed(0)

    def reference() -> None:
        for p in prompts:
            tokens = reference_image_tokens(
                model,
                p,
                SPECIAL.pad,
                parallel_size=k,
                cfg_weight=5.0,
                temperature=1.0,
                generator=generator,
            )
            decode_images(model, tokens)

    weights = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    peaks: dict[str, int] = {}
    for name, fn in (("reference", reference), ("ours", ours)):  # warm-up + peak memory
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        fn()
        if device.type == "cuda":
            peaks[name] = torch.cuda.max_memory_allocated(device) - weights
    times: dict[str, list[float]] = {"reference": [], "ours": []}
    for _ in range(args.repeats):
        for name, fn in (("reference", reference), ("ours", ours)):
            times[name].append(timed(fn, device))

    ref_t, our_t = statistics.median(times["reference"]), statistics.median(times["ours"])
    grid = model.model.vqmodel.quantize.quant_state_dims
    print(
        f"model: {args.size} (text layers {model.config.text_config.num_hidden_layers}), "
        f"{args.dtype} on {device}; {args.prompts} prompts x {k} images, "
        f"{grid[0] * grid[1]} tokens/image, CFG pairs, {args.repeats} alternating repeats"
    )
    print(f"reference loop (one prompt per call): {ref_t:8.3f} s  {images / ref_t:8.2f} images/s")
    print(
        f"batched ({batch_prompts} prompts per batch):     {our_t:8.3f} s  "
        f"{images / our_t:8.2f} images/s"
    )
    print(f"ratio: {ref_t / our_t:.2f}x images/s (target >= 2x)")
    if peaks:
        for name, peak in peaks.items():
            print(
                f"peak GPU memory above the weights, {name}: {peak / 2**30:.2f} GiB "
                f"({peak / 2**20 / (k if name == 'reference' else batch_prompts * k):.0f} "
                f"MiB per image in flight); weights {weights / 2**30:.2f} GiB"
            )


if __name__ == "__main__":
    main()
