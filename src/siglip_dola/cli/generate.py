"""`siglip-dola generate` (Janus-Pro batch text-to-image) and `siglip-dola janus-convert`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

GENERATE_EPILOG = """\
output: OUT/prompt_XXXX/img_YY.jpg (best first), prompt.txt, record.json, and
OUT/manifest.jsonl (one line per finished prompt). Reruns skip finished prompts.
examples:
  siglip-dola generate --json prompts.json --out gen --model deepseek-community/Janus-Pro-7B
  siglip-dola generate --json prompts.json --out gen --model ./Janus-Pro-7B --parallel-size 16 \\
      --per-prompt 2 --select dola --scorer hf:google/siglip-large-patch16-384
  torchrun --nproc_per_node=4 -m siglip_dola generate --json prompts.json --out gen --model ...
"""


def _add_generate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="Janus-Pro batch text-to-image from a prompt JSON file (best-of-N optional)",
        description='Generate images for every prompt of a JSON file {"prompts": [...]} with '
        "a Janus-Pro checkpoint (HF format or DeepSeek format), DeepSeek's sampling recipe "
        "(CFG pairs, temperature, full softmax), batched across prompts.",
        epilog=GENERATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", required=True, type=Path, help='prompt file {"prompts": [...]}')
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--model",
        required=True,
        help="Janus-Pro checkpoint: HF-format folder or hub id, or a DeepSeek-format "
        "folder (converted once, see --converted-dir)",
    )
    g = p.add_argument_group("sampling")
    g.add_argument(
        "--parallel-size",
        type=int,
        default=16,
        help="candidate images per prompt (default 16); --select first only "
        "generates the --per-prompt it keeps, which are the same images",
    )
    g.add_argument(
        "--per-prompt",
        type=int,
        default=1,
        help="images kept per prompt, <= --parallel-size (default 1)",
    )
    g.add_argument(
        "--cfg-weight",
        type=float,
        default=5.0,
        help="classifier-free guidance weight w (default 5)",
    )
    g.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="sampling temperature; 0 = greedy (default 1)",
    )
    g.add_argument(
        "--top-k", type=int, default=0, help="sample from the top k only (default 0: off)"
    )
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        help="run seed; image j of prompt i uses a seed derived from (seed, i, j)",
    )
    g = p.add_argument_group("hardware")
    g.add_argument("--dtype", default="bfloat16", help="bfloat16 (default), float16 or float32")
    g.add_argument(
        "--device",
        default="auto",
        help="cuda, cuda:N, cpu, mps or auto (default auto: cuda if available, else cpu)",
    )
    g.add_argument(
        "--batch-prompts",
        default="auto",
        help="prompts decoded together (default auto: from free GPU memory; CPU 4)",
    )
    g.add_argument(
        "--shard",
        default=None,
        help="i/n: this process takes the i-th of n contiguous blocks of the prompts "
        "(torchrun sets it itself)",
    )
    g.add_argument(
        "--converted-dir",
        default=None,
        help="where a DeepSeek-format --model is converted to HF format "
        "(default ~/.cache/siglip_dola/janus-hf/...)",
    )
    g = p.add_argument_group("best-of-N selection")
    g.add_argument("--select", default="first", help="first (default), siglip or dola")
    g.add_argument(
        "--scorer", default=None, help="SigLIP model spec, e.g. hf:google/siglip-large-patch16-384"
    )
    g.add_argument(
        "--scorer-text",
        default=None,
        help="text tower spec for a vision-only scorer (timm:, janus:)",
    )
    g.add_argument(
        "--negatives",
        default=None,
        help="texts to score against (one per line, or JSON); default: the other prompts",
    )
    g.add_argument(
        "--dola-layers",
        default=None,
        help="DoLa candidate layers, e.g. 18,20,22 or bucket:3 (default: last bucket)",
    )
    g.add_argument("--alpha", type=float, default=0.1, help="DoLa APC alpha (default 0.1)")
    g = p.add_argument_group("output")
    g.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality (default 95)")
    g.add_argument(
        "--overwrite", action="store_true", help="redo prompts that already have results in --out"
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p.set_defaults(func=cmd_generate)


def _add_convert(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "janus-convert",
        help="convert a DeepSeek-format Janus/Janus-Pro checkpoint to HF (transformers) format",
        description="Convert a DeepSeek-format checkpoint folder (config.json model_type "
        "multi_modality, pytorch_model*.bin shards) to transformers' "
        "JanusForConditionalGeneration format, one shard at a time, safetensors out. The SigLIP "
        "pooling head (attn_pool), which HF has no place for, is kept in "
        "DST/vision_attn_pool.safetensors.",
    )
    p.add_argument("src", type=Path, help="DeepSeek-format checkpoint folder")
    p.add_argument("dst", type=Path, help="HF-format folder to write")
    p.add_argument(
        "--dtype", default=None, help="cast to bfloat16, float16 or float32 (default: keep)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    p.add_argument("--quiet", action="store_true", help="no log lines")
    p.set_defaults(func=cmd_convert)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this module's subcommands; each sets ``func(args) -> int``."""
    _add_generate(subparsers)
    _add_convert(subparsers)


def _log(quiet: bool):
    def log(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    return log


def cmd_generate(args: argparse.Namespace) -> int:
    from siglip_dola.generate.options import GenerateOptions
    from siglip_dola.generate.runner import run_generation

    opts = GenerateOptions.from_args(args)  # every input check, before any model loads
    summary = run_generation(opts, log=_log(opts.quiet))
    if not opts.quiet:
        rate = summary.images / summary.seconds if summary.seconds > 0 else 0.0
        print(
            f"{summary.generated} prompt(s) generated, {summary.skipped} skipped as finished, "
            f"{summary.images} image(s) in {summary.seconds:.1f} s ({rate:.2f} images/s); "
            f"manifest: {opts.out / 'manifest.jsonl'}"
        )
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from siglip_dola.generate.convert import convert_checkpoint
    from siglip_dola.generate.options import parse_dtype
    from siglip_dola.hub import quiet_transformers
    from siglip_dola.io import check_output_folder

    dtype = parse_dtype(args.dtype) if args.dtype else None
    check_output_folder(args.dst)  # writable, before a minutes-long conversion starts
    log = _log(args.quiet)

    def on_shard(path: Path) -> None:
        log(f"converted {path.name}")

    with quiet_transformers():
        out = convert_checkpoint(
            args.src, args.dst, overwrite=args.overwrite, dtype=dtype, on_shard=on_shard
        )
    if not args.quiet:
        print(f"wrote {out} (HF-format Janus; load with JanusForConditionalGeneration)")
    return 0
