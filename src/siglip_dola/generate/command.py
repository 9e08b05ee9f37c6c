"""CLI wiring for `siglip-dola generate` and `siglip-dola janus-convert`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this module's subcommands; each sets ``func(args) -> int``."""
