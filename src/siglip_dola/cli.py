"""The `siglip-dola` command line (thin over the Python API)."""

from __future__ import annotations

import argparse
import sys

from siglip_dola.generate import command as generate_command

COMMAND_MODULES = (generate_command,)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="siglip-dola",
        description="DoLa (Decoding by Contrasting Layers) for SigLIP vision transformers.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
