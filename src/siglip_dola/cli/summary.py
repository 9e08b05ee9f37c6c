"""`siglip-dola summary`: one table of baseline vs the best DoLa variant per data set, from
results files (markdown and CSV), with a PNG of the change per data set
(:mod:`siglip_dola.summary` computes it)."""

from __future__ import annotations

import argparse
from pathlib import Path

FILES = ("summary.md", "summary.csv", "summary_change.png")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "summary",
        help="baseline vs best DoLa variant per data set, from results files (table + plot)",
    )
    p.add_argument("results", nargs="+", type=Path, help="results JSON files or folders of them")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("summary"),
        help=f"folder for {', '.join(FILES)} (default ./summary)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace earlier summary files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from siglip_dola.io import atomic_write_bytes, atomic_write_text, check_writable
    from siglip_dola.summary import markdown_table, plot_changes, summarise, summary_csv

    targets = [args.out / name for name in FILES]
    for target in targets:
        check_writable(target, args.overwrite)
    rows = summarise(args.results)
    table = markdown_table(rows)
    print(table, end="")
    atomic_write_text(targets[0], table)
    atomic_write_text(targets[1], summary_csv(rows))
    atomic_write_bytes(targets[2], plot_changes(rows))
    for target in targets:
        print(f"wrote: {target}")
    return 0
