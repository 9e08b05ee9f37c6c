"""The `siglip-dola` command line: one module per command, over the library.

Each command module declares its flags (``register``), turns them into one checked options
object before any model loads, calls the library and prints. Errors in the user's input end
the command with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from siglip_dola.cli import (
    bench,
    calibrate,
    classify,
    demo,
    evaluate,
    generate,
    layers,
    rerank,
    summary,
)
from siglip_dola.cli.options import UsageError

__all__ = ["build_parser", "main"]

COMMAND_MODULES = (demo, evaluate, rerank, summary, calibrate, classify, layers, bench, generate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="siglip-dola",
        description="DoLa (Decoding by Contrasting Layers) for SigLIP vision transformers: "
        "zero-shot classification and retrieval re-scoring, Janus-Pro batch generation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the results' run metadata
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    from siglip_dola.allocator import keep_freed_memory

    keep_freed_memory()
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"siglip-dola {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"siglip-dola {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
