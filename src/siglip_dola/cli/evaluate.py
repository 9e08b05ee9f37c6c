"""`siglip-dola eval`: baseline and every DoLa variant side by side, from one pass."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from siglip_dola.cli import rerank
from siglip_dola.cli.options import (
    DataOptions,
    DolaChoice,
    ModelOptions,
    OutputOptions,
    UsageError,
    add_data_options,
    add_grid_options,
    add_model_options,
    add_output_options,
    add_run_options,
    grid_from_args,
    parse_tau,
    report_skips,
    run_settings_from_args,
)
from siglip_dola.settings import RunSettings

TASKS = ("zeroshot_classification", "zeroshot_retrieval")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="zero-shot evaluation: baseline and every DoLa variant side by side"
    )
    p.add_argument(
        "--task",
        default=TASKS[0],
        choices=TASKS,
        help="zeroshot_classification (default) or zeroshot_retrieval (as `rerank`)",
    )
    add_model_options(p)
    add_run_options(p)
    add_data_options(p)
    add_grid_options(p)
    rerank.add_rerank_options(p)
    add_output_options(p, "results.json")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class EvalOptions:
    model: ModelOptions
    data: DataOptions
    grid: object  # VariantGrid
    dola: DolaChoice
    tau: float | None
    settings: RunSettings
    output: OutputOptions

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EvalOptions:
        from siglip_dola.models import peek_depth
        from siglip_dola.report import LAYER_PLOTS

        if args.shortlist is not None:
            raise UsageError("--shortlist applies to --task zeroshot_retrieval only")
        opts = cls(
            model=ModelOptions.from_args(args),
            data=DataOptions.from_args(args),
            grid=grid_from_args(args),
            dola=DolaChoice.from_args(args),
            tau=parse_tau(args.tau),
            settings=run_settings_from_args(args),
            output=OutputOptions.from_args(args, LAYER_PLOTS),
        )
        opts.dola.check(opts.model)
        depth = peek_depth(opts.model.resolved_spec)
        if depth is not None:
            opts.variants(depth)  # layer numbers, before the model loads
        return opts

    def variants(self, depth: int) -> list:
        """The grid; or, with ``--profile`` / ``--layers`` / ``--static-layer`` / ``--alpha``,
        exactly that one variant next to the baseline."""
        from siglip_dola.variants import Variant

        if self.dola.given:
            return [Variant.baseline(), self.dola.variant(depth)]
        return self.grid.variants(depth)


def run(args: argparse.Namespace) -> int:
    if args.task == "zeroshot_retrieval":
        if args.dataset == "bundled:fashion-mnist":
            args.dataset = rerank.DEFAULT_DATASET
        return rerank.run(args)
    from siglip_dola.distributed import process_group_from_env
    from siglip_dola.report import classification_results, format_table, summary_rows
    from siglip_dola.zeroshot import evaluate_dataset

    opts = EvalOptions.from_args(args)
    image_set, templates = opts.data.load()
    with process_group_from_env(opts.settings.device) as ctx:
        model = opts.model.load(opts.settings)
        variants = opts.variants(model.vision.depth)
        start = time.perf_counter()
        evaluation = evaluate_dataset(
            model, image_set, templates, variants, tau=opts.tau, settings=opts.settings, dist=ctx
        )
    if evaluation is None:  # a data-parallel worker: rank 0 reports
        return 0
    seconds = time.perf_counter() - start
    print(
        format_table(
            summary_rows(evaluation.results),
            title=f"{image_set.name}: {evaluation.num_images} images, "
            f"{len(image_set.class_names)} classes, {len(templates)} templates, "
            f"tau={evaluation.tau:.4g}, {ctx.world_size} process(es)",
        )
    )
    print(
        "d acc1: change against the baseline in points, 95% CI its paired bootstrap interval "
        "over the images; fixed / broken: right / wrong where the baseline is wrong / right"
    )
    report_skips(evaluation.skipped)
    results = classification_results(
        dataset=opts.data.dataset,
        model=opts.model.spec,
        results=evaluation.results,
        per_layer_acc1=evaluation.per_layer_acc1,
        tau=evaluation.tau,
        num_images=evaluation.num_images,
        skipped=evaluation.skipped,
        templates=templates,
        extra={"seconds": round(seconds, 3), "processes": ctx.world_size},
    )
    if opts.output.output:
        from siglip_dola.io import atomic_write_json

        atomic_write_json(opts.output.output, results)
        print(f"results: {opts.output.output}")
    if opts.output.plots:
        write_plots(opts.output.plots, evaluation, f"{opts.model.spec} on {image_set.name}")
    return 0


def write_plots(folder, evaluation, title: str) -> None:
    from siglip_dola.report import plot_layers

    for path in plot_layers(folder, evaluation.per_layer_acc1, evaluation.results, title=title):
        print(f"plot: {path}")
