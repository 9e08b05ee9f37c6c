"""The `siglip-dola` command line: one module per command, over the library.

Each command module declares its flags (``register``), turns them into one checked options
object before any model loads, calls the library and prints. Errors in the user's input end
the command with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
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

DEBUG_ENV = "SIGLIP_DOLA_DEBUG"
COMMAND_MODULES = (demo, evaluate, rerank, summary, calibrate, classify, layers, bench, generate)


def build_parser() -> argparse.ArgumentParser:
    from siglip_dola import __version__

    parser = argparse.ArgumentParser(
        prog="siglip-dola",
        description="DoLa (Decoding by Contrasting Layers) for SigLIP vision transformers: "
        "zero-shot classification and retrieval re-scoring, Janus-Pro batch generation.",
        epilog=f"Set {DEBUG_ENV}=1 to see the traceback behind an error.",
    )
    parser.add_argument("--version", action="version", version=f"siglip-dola {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse; an unknown flag is reported with the usage of the command it was given to."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        commands = next(
            (a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {}
        )
        owner = commands.get(getattr(args, "command", None), parser)
        owner.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the results' run metadata
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    from siglip_dola.allocator import keep_freed_memory

    keep_freed_memory()
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, OSError) as exc:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"siglip-dola {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"siglip-dola {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (library messages are one line; OS errors name
    the file)."""
    if isinstance(exc, OSError) and not isinstance(exc, FileExistsError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}:{where}" if where else exc.strerror
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
