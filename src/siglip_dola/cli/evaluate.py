"""`siglip-dola eval`: baseline and every DoLa variant side by side, from one pass, on one or
several data sets (one results file each)."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    report_warnings,
    results_paths,
    run_settings_from_args,
)
from siglip_dola.settings import RunSettings

TASKS = ("zeroshot_classification", "zeroshot_retrieval")
DEFAULT_DATASET = "bundled:fashion-mnist"


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
    add_data_options(p, default=DEFAULT_DATASET, several=True)
    add_grid_options(p)
    rerank.add_rerank_options(p)
    add_output_options(
        p, "results.json; with several data sets a folder or e.g. results/{dataset}.json"
    )
    p.set_defaults(func=run)


@dataclass(frozen=True)
class EvalOptions:
    model: ModelOptions
    data: list[DataOptions]
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
            data=DataOptions.many_from_args(args),
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
        if args.dataset == [DEFAULT_DATASET]:
            args.dataset = [rerank.DEFAULT_DATASET]
        return rerank.run(args)
    from siglip_dola.distributed import process_group_from_env
    from siglip_dola.report import LANGUAGE, model_pretrained
    from siglip_dola.zeroshot import evaluate_dataset

    opts = EvalOptions.from_args(args)
    # every data set opened and every output checked before the model loads
    loaded = [data.load(streaming=True) for data in opts.data]
    fields = {
        "model": opts.model.spec,
        "pretrained": model_pretrained(opts.model.spec),
        "task": "zeroshot_classification",
        "language": LANGUAGE,
    }
    outputs = results_paths(
        opts.output.output, [s.name for s, _ in loaded], fields, opts.output.overwrite
    )
    with process_group_from_env(opts.settings.device) as ctx:
        model = opts.model.load(opts.settings)
        variants = opts.variants(model.vision.depth)
        for data, (image_set, templates), output in zip(opts.data, loaded, outputs):
            start = time.perf_counter()
            evaluation = evaluate_dataset(
                model,
                image_set,
                templates,
                variants,
                tau=opts.tau,
                settings=opts.settings,
                dist=ctx,
            )
            if evaluation is None:  # a data-parallel worker: rank 0 reports
                continue
            seconds = time.perf_counter() - start
            _report(args, opts, data, image_set, templates, evaluation, seconds, ctx, output)
            if opts.output.plots:
                folder = opts.output.plots
                if len(loaded) > 1:
                    folder = folder / image_set.name.replace("/", "_")
                write_plots(folder, evaluation, f"{opts.model.spec} on {image_set.name}")
    return 0


def _report(
    args: argparse.Namespace,
    opts: EvalOptions,
    data: DataOptions,
    image_set: Any,
    templates: tuple[str, ...],
    evaluation: Any,
    seconds: float,
    ctx: Any,
    output: Path | None,
) -> None:
    """Print the table, skips and warnings; write the results file."""
    from siglip_dola.report import (
        classification_results,
        format_table,
        results_metadata,
        summary_rows,
    )

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
    report_warnings(image_set.warnings, image_set.name)
    results = classification_results(
        dataset=image_set.name,
        model=opts.model.spec,
        results=evaluation.results,
        per_layer_acc1=evaluation.per_layer_acc1,
        tau=evaluation.tau,
        num_images=evaluation.num_images,
        skipped=evaluation.skipped,
        templates=templates,
        extra={"seconds": round(seconds, 3), "processes": ctx.world_size},
        meta=results_metadata(data.dataset, image_set, templates, getattr(args, "argv", None)),
    )
    if output is not None:
        from siglip_dola.io import atomic_write_json

        atomic_write_json(output, results)
        print(f"results: {output}")


def write_plots(folder, evaluation, title: str) -> None:
    from siglip_dola.report import plot_layers

    for path in plot_layers(folder, evaluation.per_layer_acc1, evaluation.results, title=title):
        print(f"plot: {path}")
