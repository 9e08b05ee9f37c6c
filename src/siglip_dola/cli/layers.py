"""`siglip-dola layers`: the layer/bucket table, and per-layer readout accuracy on data."""

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
    add_tau_option,
    parse_tau,
    run_settings_from_args,
)
from siglip_dola.settings import RunSettings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("layers", help="layer table and per-layer readout accuracy (with --dataset)")
    add_model_options(p)
    add_run_options(p)
    add_data_options(p, default=None)
    g = p.add_argument_group("layers")
    g.add_argument("--buckets", type=int, default=3, help="number of layer buckets (default 3)")
    add_tau_option(g)
    g.add_argument(
        "--plots", type=Path, default=None, help="folder for the per-layer plot (needs --dataset)"
    )
    g.add_argument("--overwrite", action="store_true", help="replace plots already in --plots")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class LayersOptions:
    model: ModelOptions
    data: DataOptions | None
    buckets: int
    tau: float | None
    plots: Path | None
    settings: RunSettings

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LayersOptions:
        from siglip_dola.io import check_output_folder
        from siglip_dola.report import LAYER_PLOTS

        if args.buckets < 1:
            raise UsageError(f"--buckets must be >= 1, got {args.buckets}")
        if args.plots is not None:
            if args.dataset is None:
                raise UsageError("--plots needs --dataset (the plot shows per-layer accuracy)")
            check_output_folder(args.plots, LAYER_PLOTS, args.overwrite)
        return cls(
            model=ModelOptions.from_args(args),
            data=DataOptions.from_args(args) if args.dataset is not None else None,
            buckets=args.buckets,
            tau=parse_tau(args.tau),
            plots=args.plots,
            settings=run_settings_from_args(args),
        )


def run(args: argparse.Namespace) -> int:
    from siglip_dola.cli.evaluate import write_plots
    from siglip_dola.layers import bucket_table
    from siglip_dola.variants import Variant
    from siglip_dola.zeroshot import evaluate_dataset

    opts = LayersOptions.from_args(args)
    model = opts.model.load(opts.settings)
    depth = model.vision.depth
    print(
        f"{opts.model.spec}: {depth} layers, embedding size {model.vision.embed_dim}, "
        f"tau {model.tau:.4g}"
    )
    print("buckets and default candidate layers:")
    for (lo, hi), cands in bucket_table(depth, opts.buckets):
        print(f"  [{lo:>2}-{hi:>2}]  candidates {', '.join(map(str, cands))}")
    if opts.data is None:
        return 0
    image_set, templates = opts.data.load()
    evaluation = evaluate_dataset(
        model, image_set, templates, [Variant.baseline()], tau=opts.tau, settings=opts.settings
    )
    print(f"per-layer readout top-1 accuracy on {image_set.name} ({evaluation.num_images} images):")
    for layer, acc in evaluation.per_layer_acc1.items():
        print(f"  layer {layer:>2}: {100 * acc:6.2f}%  {'#' * int(round(40 * acc))}")
    if opts.plots:
        write_plots(opts.plots, evaluation, f"{opts.model.spec} on {image_set.name}")
    return 0
