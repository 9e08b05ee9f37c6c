"""`siglip-dola calibrate`: choose a variant on a validation set, with an honest error rate
(chosen on one part, confirmed on a held-out part; or Holm-Bonferroni) -> profile JSON."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from siglip_dola.cli.options import (
    DataOptions,
    ModelOptions,
    UsageError,
    add_data_options,
    add_grid_options,
    add_model_options,
    add_run_options,
    grid_from_args,
    parse_tau,
    report_skips,
    run_settings_from_args,
)
from siglip_dola.settings import RunSettings

METRICS = ("acc1", "acc5", "mean_per_class_recall")
ALPHAS = "0.05,0.1,0.2"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="choose bucket / layer / alpha on a validation set -> profile JSON"
    )
    add_model_options(p)
    add_run_options(p)
    add_data_options(p)
    add_grid_options(p, alphas=ALPHAS)
    g = p.add_argument_group("calibration")
    g.add_argument("--profile", type=Path, required=True, help="profile JSON to write")
    g.add_argument(
        "--metric", default="acc1", choices=METRICS, help="metric to rank by (default acc1)"
    )
    g.add_argument(
        "--procedure",
        default="split",
        choices=("split", "holm"),
        help="split (default): choose the variant on one part of the validation images and "
        "confirm it against the baseline on the held-out rest; holm: test every variant on all "
        "of them and correct for their number (Holm-Bonferroni)",
    )
    g.add_argument(
        "--significance",
        type=float,
        default=0.05,
        help="turn DoLa on only if the candidate's decisions differ from the baseline's with "
        "exact McNemar p below this (Holm-adjusted under --procedure holm; default 0.05; "
        "1 = any gain)",
    )
    g.add_argument(
        "--confirm-fraction",
        type=float,
        default=0.5,
        help="share of the validation images held out to confirm the choice (split; "
        "seeded by --seed, class-stratified; default 0.5)",
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="use a seeded, class-stratified fraction of --dataset (default: all of it)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of --val-fraction's split")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --profile")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class CalibrateOptions:
    model: ModelOptions
    data: DataOptions
    grid: object  # VariantGrid
    tau: float | None
    settings: RunSettings
    profile: Path
    metric: str
    procedure: object  # CalibrationProcedure
    val_fraction: float | None
    seed: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CalibrateOptions:
        from siglip_dola.calibrate import CalibrationProcedure
        from siglip_dola.io import check_writable

        check_writable(args.profile, args.overwrite)
        if not 0.0 < args.significance <= 1.0:
            raise UsageError(f"--significance must be in (0, 1], got {args.significance}")
        if not 0.0 < args.confirm_fraction < 1.0:
            raise UsageError(f"--confirm-fraction must be in (0, 1), got {args.confirm_fraction}")
        procedure = CalibrationProcedure(
            args.procedure, args.significance, args.confirm_fraction, args.seed
        )
        if args.val_fraction is not None and not 0.0 < args.val_fraction < 1.0:
            raise UsageError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
        return cls(
            model=ModelOptions.from_args(args),
            data=DataOptions.from_args(args),
            grid=grid_from_args(args),
            tau=parse_tau(args.tau),
            settings=run_settings_from_args(args),
            profile=args.profile,
            metric=args.metric,
            procedure=procedure,
            val_fraction=args.val_fraction,
            seed=args.seed,
        )


def run(args: argparse.Namespace) -> int:
    from siglip_dola.calibrate import build_profile, rank_variants, save_profile
    from siglip_dola.report import format_table
    from siglip_dola.zeroshot import evaluate_dataset

    opts = CalibrateOptions.from_args(args)
    image_set, templates = opts.data.load()
    if opts.val_fraction is not None:
        image_set, _ = image_set.split(opts.val_fraction, seed=opts.seed)
    model = opts.model.load(opts.settings)
    variants = opts.grid.variants(model.vision.depth)
    evaluation = evaluate_dataset(
        model, image_set, templates, variants, tau=opts.tau, settings=opts.settings
    )
    profile = build_profile(
        evaluation.results,
        model=opts.model.spec,
        tau=evaluation.tau,
        labels=evaluation.labels,
        metric=opts.metric,
        data_fingerprint=image_set.fingerprint(),
        num_images=evaluation.num_images,
        procedure=opts.procedure,
        num_classes=len(image_set.class_names),
        templates=templates,
    )
    ranked = rank_variants(evaluation.results, opts.metric)
    print(
        format_table(
            ranked,
            title=f"validation ranking by {opts.metric} ({evaluation.num_images} images)",
            limit=10,
        )
    )
    report_skips(evaluation.skipped)
    save_profile(profile, opts.profile)
    print(verdict_lines(profile))
    print(f"profile: {opts.profile}")
    return 0


def verdict_lines(profile: dict) -> str:
    """What calibration decided, and on which images and p-value."""
    validation = profile["validation"]
    metric = validation["metric"]
    if validation["procedure"]["method"] == "split":
        select, confirm = validation["selection"], validation["confirmation"]
        lines = [
            f"chosen on {select['num_images']} images: {select['best']['variant']} "
            f"({100 * select['best'][metric]:.2f}% vs baseline "
            f"{100 * select['baseline'][metric]:.2f}%)"
        ]
        if confirm["variant"] is not None:
            lines.append(
                f"confirmation on the other {confirm['num_images']}: "
                f"{100 * confirm['metrics'][metric]:.2f}% vs {100 * confirm['baseline'][metric]:.2f}%, "
                f"{confirm['fixed']} fixed, {confirm['broken']} broken, McNemar p = "
                f"{confirm['mcnemar_p_value']:.3g}"
            )
    else:
        p_holm = validation.get("holm_p_value")
        lines = [
            f"Holm-Bonferroni over {len(validation['tests'])} variants: best "
            f"{validation['best']['variant']}"
            + ("" if p_holm is None else f", adjusted p = {p_holm:.3g}")
        ]
    lines.append(
        f"selected {profile['variant']}"
        if profile["mode"] != "off"
        else f"{validation['reason']}: the profile keeps DoLa off"
    )
    return "\n".join(lines)
