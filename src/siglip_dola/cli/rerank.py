"""`siglip-dola rerank`: image<->text retrieval, shortlist by the baseline, re-ranked by DoLa."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from siglip_dola.cli.options import (
    DolaChoice,
    ModelOptions,
    OutputOptions,
    RetrievalDataOptions,
    UsageError,
    add_model_options,
    add_output_options,
    add_retrieval_data_options,
    add_run_options,
    add_tau_option,
    parse_tau,
    run_settings_from_args,
)
from siglip_dola.settings import RunSettings

DEFAULT_DATASET = "bundled:photos"
DEFAULT_SHORTLIST = 50


def add_rerank_options(p: argparse.ArgumentParser) -> None:
    """The re-ranking flags (``eval --task zeroshot_retrieval`` takes them too)."""
    from siglip_dola.cli.options import add_dola_choice_options

    add_dola_choice_options(p, "retrieval re-ranking")
    p.add_argument(
        "--shortlist",
        default=None,
        help="captions/images re-ranked per query: N or all (default 50)",
    )
    p.add_argument(
        "--images-root",
        type=Path,
        default=None,
        help="folder of a Karpathy-split JSON's images (COCO: its <filepath>/<filename>; "
        "default: the JSON's folder)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rerank", help="image<->text retrieval re-ranked by DoLa, recall@1/5/10")
    add_model_options(p)
    add_run_options(p)
    g = add_retrieval_data_options(p, DEFAULT_DATASET)
    add_tau_option(g)
    add_rerank_options(p)
    add_output_options(p, "retrieval.json; several data sets: a folder or {dataset}.json")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class RerankOptions:
    model: ModelOptions
    data: list[RetrievalDataOptions]
    shortlist: int | None
    dola: DolaChoice
    tau: float | None
    settings: RunSettings
    output: OutputOptions

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RerankOptions:
        from siglip_dola.report import RETRIEVAL_PLOTS

        opts = cls(
            model=ModelOptions.from_args(args),
            data=RetrievalDataOptions.many_from_args(args),
            shortlist=_shortlist(args.shortlist),
            dola=DolaChoice.from_args(args),
            tau=parse_tau(args.tau),
            settings=run_settings_from_args(args),
            output=OutputOptions.from_args(args, RETRIEVAL_PLOTS),
        )
        opts.dola.check(opts.model)
        return opts


def _shortlist(text: str | None) -> int | None:
    if text is None:
        return DEFAULT_SHORTLIST
    if str(text) == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"--shortlist must be a positive integer or 'all', got {text!r}") from None
    if value < 1:
        raise UsageError(f"--shortlist must be >= 1, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    from siglip_dola.cli.options import report_skips, results_paths
    from siglip_dola.data import Skipped
    from siglip_dola.io import atomic_write_json
    from siglip_dola.report import LANGUAGE, model_pretrained, results_metadata
    from siglip_dola.retrieval import evaluate_retrieval

    opts = RerankOptions.from_args(args)
    datasets = [data.load() for data in opts.data]  # all opened before the model loads
    pretrained = model_pretrained(opts.model.spec)
    fields = {
        "model": opts.model.spec,
        "pretrained": pretrained,
        "task": "zeroshot_retrieval",
        "language": LANGUAGE,
    }
    outputs = results_paths(
        opts.output.output, [d.name for d in datasets], fields, opts.output.overwrite
    )
    model = opts.model.load(opts.settings)
    variant = opts.dola.variant(model.vision.depth)
    if variant.kind not in ("dynamic", "static"):
        raise UsageError(
            f"profile {opts.dola.profile_path} selects {variant.name}: re-ranking needs a "
            f"dynamic or static DoLa profile (drop --profile to compare the baseline with "
            f"default DoLa)"
        )
    for data, dataset, output in zip(opts.data, datasets, outputs):
        results = evaluate_retrieval(
            model, dataset, variant, shortlist=opts.shortlist, tau=opts.tau, settings=opts.settings
        )
        results["model"] = opts.model.spec
        results["pretrained"] = pretrained
        results.update(results_metadata(data.dataset, dataset, None, getattr(args, "argv", None)))
        d = results["dola"]
        print(
            f"{dataset.name}: {d['num_images']} images, {d['num_captions']} captions; shortlist "
            f"{d['shortlist']}; DoLa {d['mode']} layers {d['candidate_layers']} alpha "
            f"{d['alpha']}"
        )
        print(f"{'metric':<32} {'baseline':>9} {'DoLa':>9}")
        for key, value in results["metrics"].items():
            print(f"{key:<32} {100 * value:8.2f}% {100 * d['metrics'][key]:8.2f}%")
        report_skips([Skipped(**s) for s in d["skipped"]["items"]])
        if output is not None:
            atomic_write_json(output, results)
            print(f"results: {output}")
        if opts.output.plots:
            from siglip_dola.report import plot_retrieval

            folder = opts.output.plots
            if len(datasets) > 1:
                folder = folder / dataset.name.replace("/", "_")
            for path in plot_retrieval(folder, results, f"{opts.model.spec} on {dataset.name}"):
                print(f"plot: {path}")
    return 0
