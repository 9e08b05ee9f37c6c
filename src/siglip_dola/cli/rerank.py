"""`siglip-dola rerank`: image<->text retrieval, shortlist by the baseline, re-ranked by DoLa."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from siglip_dola.cli.options import (
    DolaChoice,
    ModelOptions,
    OutputOptions,
    UsageError,
    add_model_options,
    add_output_options,
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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rerank", help="image<->text retrieval re-ranked by DoLa, recall@1/5/10")
    add_model_options(p)
    add_run_options(p)
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        default=DEFAULT_DATASET,
        help="bundled:photos or a CSV/JSON of (image, caption) pairs",
    )
    add_tau_option(g)
    add_rerank_options(p)
    add_output_options(p, "retrieval.json")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class RerankOptions:
    model: ModelOptions
    dataset: str
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
            dataset=args.dataset,
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
    from siglip_dola.cli.options import report_skips
    from siglip_dola.data import Skipped
    from siglip_dola.io import atomic_write_json
    from siglip_dola.retrieval import evaluate_retrieval, load_retrieval_set

    opts = RerankOptions.from_args(args)
    dataset = load_retrieval_set(opts.dataset)
    model = opts.model.load(opts.settings)
    variant = opts.dola.variant(model.vision.depth)
    if variant.kind not in ("dynamic", "static"):
        raise UsageError(
            f"profile {opts.dola.profile_path} selects {variant.name}: re-ranking needs a "
            f"dynamic or static DoLa profile (drop --profile to compare the baseline with "
            f"default DoLa)"
        )
    results = evaluate_retrieval(
        model, dataset, variant, shortlist=opts.shortlist, tau=opts.tau, settings=opts.settings
    )
    results["model"] = opts.model.spec
    d = results["dola"]
    print(
        f"{dataset.name}: {d['num_images']} images, {d['num_captions']} captions; shortlist "
        f"{d['shortlist']}; DoLa {d['mode']} layers {d['candidate_layers']} alpha {d['alpha']}"
    )
    print(f"{'metric':<32} {'baseline':>9} {'DoLa':>9}")
    for key, value in results["metrics"].items():
        print(f"{key:<32} {100 * value:8.2f}% {100 * d['metrics'][key]:8.2f}%")
    report_skips([Skipped(**s) for s in d["skipped"]["items"]])
    if opts.output.output:
        atomic_write_json(opts.output.output, results)
        print(f"results: {opts.output.output}")
    if opts.output.plots:
        from siglip_dola.report import plot_retrieval

        for path in plot_retrieval(
            opts.output.plots, results, f"{opts.model.spec} on {dataset.name}"
        ):
            print(f"plot: {path}")
    return 0
