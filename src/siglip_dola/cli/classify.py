"""`siglip-dola classify`: classify image files with DoLa -> predictions JSON/CSV."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from siglip_dola.cli.options import (
    DolaChoice,
    ModelOptions,
    UsageError,
    add_dola_choice_options,
    add_model_options,
    add_run_options,
    parse_tau,
    report_skips,
    run_settings_from_args,
)
from siglip_dola.settings import RunSettings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classify images with DoLa -> predictions JSON/CSV")
    p.add_argument("images", nargs="+", help="image files or folders")
    add_model_options(p)
    add_run_options(p)
    g = p.add_argument_group("classes")
    g.add_argument(
        "--classes", required=True, help="comma-separated class names or a file, one per line"
    )
    g.add_argument(
        "--templates",
        default=None,
        help="template set or file (default: the profile's templates, else 'a photo of a {c}.')",
    )
    add_dola_choice_options(p)
    p.add_argument("--tau", type=float, default=None, help="softmax temperature")
    p.add_argument("--no-dola", action="store_true", help="baseline only")
    p.add_argument("--top-k", type=int, default=5, help="classes listed per image (default 5)")
    p.add_argument("--output", type=Path, default=None, help="predictions file (.json or .csv)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class ClassifyOptions:
    model: ModelOptions
    paths: tuple[Path, ...]
    class_names: tuple[str, ...]
    templates: tuple[str, ...]
    dola: DolaChoice
    use_dola: bool
    tau: float | None
    top_k: int
    output: Path | None
    settings: RunSettings

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ClassifyOptions:
        from siglip_dola.data import read_class_names
        from siglip_dola.io import check_writable
        from siglip_dola.report import PREDICTION_FORMATS
        from siglip_dola.text import validate_class_names

        if args.output is not None:
            check_writable(args.output, args.overwrite)
            if args.output.suffix.lower() not in PREDICTION_FORMATS:
                raise UsageError(f"--output must end in .json or .csv, got {args.output}")
        names = read_class_names(args.classes)
        if not names:
            raise UsageError("--classes is required (comma-separated names or a file)")
        if args.top_k < 1:
            raise UsageError(f"--top-k must be >= 1, got {args.top_k}")
        model = ModelOptions.from_args(args)
        dola = DolaChoice.from_args(args)
        if args.no_dola and dola.profile is not None:
            raise UsageError("--no-dola and --profile contradict each other; drop one")
        dola.check(model)
        return cls(
            model=model,
            paths=tuple(collect_images(args.images)),
            class_names=validate_class_names(names),
            templates=_templates(args.templates, dola.profile),
            dola=dola,
            use_dola=not args.no_dola,
            tau=parse_tau(args.tau),
            top_k=args.top_k,
            output=args.output,
            settings=run_settings_from_args(args),
        )


def _templates(spec: str | None, profile: dict | None) -> tuple[str, ...]:
    """``--templates``, else the templates the profile was calibrated with, else one photo
    template."""
    from siglip_dola.text import load_templates

    if spec is not None:
        return load_templates(spec)
    if profile is not None and profile.get("templates"):
        return tuple(profile["templates"])
    return load_templates("photo")


def collect_images(inputs: list[str]) -> list[Path]:
    """Image files named directly or found below named folders."""
    from siglip_dola.data import image_files

    paths: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            paths.extend(image_files(path))
        elif path.exists():
            paths.append(path)
        else:
            raise UsageError(f"{path} does not exist")
    if not paths:
        raise UsageError("no images found in the given paths")
    return paths


def run(args: argparse.Namespace) -> int:
    from siglip_dola.report import write_predictions
    from siglip_dola.zeroshot import ZeroShotClassifier, classify_files

    opts = ClassifyOptions.from_args(args)
    model = opts.model.load(opts.settings)
    classifier = ZeroShotClassifier(
        model,
        opts.class_names,
        opts.templates,
        variant=opts.dola.variant(model.vision.depth, use_dola=opts.use_dola),
        tau=opts.tau,
        settings=opts.settings,
    )

    def show(prediction) -> None:
        tops = ", ".join(f"{c} {p:.3f}" for c, p in prediction.top_k[:3])
        layer = "" if prediction.contrast_layer is None else f"  [M={prediction.contrast_layer}]"
        print(f"{prediction.source}: {tops}{layer}")

    predictions = classify_files(classifier, list(opts.paths), opts.top_k, on_prediction=show)
    variant = classifier.variant
    mode = variant.name if variant.uses_dola else "baseline (DoLa off)"
    print(
        f"{len(predictions.items)} image(s) classified with {mode}; "
        f"{len(predictions.skipped)} skipped"
    )
    report_skips(predictions.skipped)
    if opts.output:
        write_predictions(opts.output, predictions, opts.model.spec)
        print(f"predictions: {opts.output}")
    return 0
