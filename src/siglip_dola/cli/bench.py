"""`siglip-dola bench`: eval with baseline only vs every DoLa variant, as one ratio."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from siglip_dola.cli.options import (
    DataOptions,
    ModelOptions,
    UsageError,
    add_data_options,
    add_model_options,
    add_run_options,
    run_settings_from_args,
)
from siglip_dola.settings import RunSettings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="time eval with baseline only vs every DoLa variant, and vs every variant with "
        "the references and bootstrap intervals (one run, two ratios)",
    )
    add_model_options(p)
    add_run_options(p)
    add_data_options(p)
    g = p.add_argument_group("benchmark")
    g.add_argument("--repeats", type=int, default=3, help="timed repeats of each side (default 3)")
    g.add_argument("--output", type=Path, default=None, help="timings JSON")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class BenchOptions:
    model: ModelOptions
    data: DataOptions
    repeats: int
    output: Path | None
    settings: RunSettings

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchOptions:
        from siglip_dola.io import check_writable

        if args.output is not None:
            check_writable(args.output, args.overwrite)
        if args.repeats < 1:
            raise UsageError(f"--repeats must be >= 1, got {args.repeats}")
        return cls(
            model=ModelOptions.from_args(args),
            data=DataOptions.from_args(args),
            repeats=args.repeats,
            output=args.output,
            settings=run_settings_from_args(args),
        )


def run(args: argparse.Namespace) -> int:
    from siglip_dola.benchmark import run_eval_benchmark

    opts = BenchOptions.from_args(args)
    image_set, templates = opts.data.load()
    model = opts.model.load(opts.settings)
    print(
        f"timing eval on {len(image_set)} images of {image_set.name}, "
        f"{opts.repeats} alternating repeats ..."
    )
    r = run_eval_benchmark(
        model, image_set, templates, repeats=opts.repeats, settings=opts.settings
    )
    print(f"eval, baseline only (layer N, q_N):          {r['eval_baseline_s']:8.3f} s (median)")
    print(
        f"eval, all {r['variants']:>3} variants (layers 1..{r['depth']}): "
        f"{r['eval_all_variants_s']:8.3f} s (median)"
    )
    print(
        f"eval, {r['variants_with_references']:>3} variants with references and "
        f"{r['bootstrap_resamples']}-resample bootstrap intervals: "
        f"{r['eval_with_references_s']:8.3f} s (median)"
    )
    print(
        f"ratios: {r['eval_ratio']:.3f}x without references (target <= 1.15x), "
        f"{r['eval_ratio_with_references']:.3f}x with references and bootstrap (target <= 1.2x)"
    )
    print(
        f"fastest repeat of each: {r['eval_baseline_min_s']:.3f} s, "
        f"{r['eval_all_variants_min_s']:.3f} s, {r['eval_with_references_min_s']:.3f} s; "
        f"ratios {r['eval_ratio_of_minima']:.3f}x, "
        f"{r['eval_ratio_with_references_of_minima']:.3f}x"
    )
    print(
        f"text bank: first build {r['text_bank_first_s']:.3f} s, cache hit "
        f"{r['text_bank_cache_hit_s']:.4f} s ({100 * r['text_bank_hit_fraction']:.2f}% of the "
        "first; target < 5%)"
    )
    if opts.output:
        from siglip_dola.io import atomic_write_json

        atomic_write_json(opts.output, r)
    return 0
