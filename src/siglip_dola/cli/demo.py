"""`siglip-dola demo`: the bundled model and data, calibrated on validation, shown on test."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from siglip_dola.cli.options import (
    BUNDLED_MODEL,
    UsageError,
    add_run_options,
    run_settings_from_args,
)
from siglip_dola.settings import RunSettings

ALPHAS = (0.05, 0.1, 0.2)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="bundled model + data: calibrate, evaluate, print the comparison table"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default results/demo-<time>)"
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.25, help="validation share (default 0.25)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
    add_run_options(p, batch_size=250)
    p.set_defaults(func=run)


@dataclass(frozen=True)
class DemoOptions:
    out: Path
    val_fraction: float
    seed: int
    settings: RunSettings

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoOptions:
        from siglip_dola.io import check_output_folder

        out = args.out or Path("results") / f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        if out.exists() and out.is_dir() and any(out.iterdir()) and not args.overwrite:
            raise UsageError(f"{out} already holds results; pass --overwrite or another --out")
        check_output_folder(out)
        if not 0.0 < args.val_fraction < 1.0:
            raise UsageError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
        return cls(out, args.val_fraction, args.seed, run_settings_from_args(args))


def run(args: argparse.Namespace) -> int:
    from siglip_dola.calibrate import save_profile
    from siglip_dola.cli.options import ModelOptions
    from siglip_dola.data import load_dataset
    from siglip_dola.experiment import run_split_experiment
    from siglip_dola.io import atomic_write_json
    from siglip_dola.report import format_table, plot_layers
    from siglip_dola.variants import default_variants
    from siglip_dola.zeroshot import BOOTSTRAP

    opts = DemoOptions.from_args(args)
    model = ModelOptions(BUNDLED_MODEL).load(opts.settings)
    data = load_dataset("bundled:fashion-mnist")
    depth = model.vision.depth
    variants = default_variants(depth, 3, ALPHAS, None, apc=True, references=True)
    val_ids, test_ids = data.split_indices(opts.val_fraction, seed=opts.seed)
    print(
        f"bundled demo: SigLIP ({depth} vision layers) trained on Fashion-MNIST; "
        f"{len(val_ids)} validation / {len(test_ids)} test images, "
        f"{len(data.templates)} held-out templates"
    )
    experiment = run_split_experiment(
        model,
        data,
        data.templates,
        variants,
        model_name=BUNDLED_MODEL,
        dataset_name="bundled:fashion-mnist",
        val_fraction=opts.val_fraction,
        seed=opts.seed,
        settings=opts.settings,
    )
    print()
    print(
        format_table(
            experiment.shown(),
            title=f"test split ({len(test_ids)} images; the static, single-layer, ensemble and "
            "b= rows shown are the best on validation)",
        )
    )
    print(
        f"d acc1 and its 95% CI: change against the baseline in points (paired bootstrap over "
        f"the test images, {BOOTSTRAP.resamples} resamples, seed {BOOTSTRAP.seed});\n"
        "fixed / broken: images the variant gets right / wrong that the baseline gets wrong / "
        "right"
    )
    print(experiment.decision())
    on_test = experiment.validation_best_on_test()
    if on_test:
        print(on_test)
    out = opts.out
    atomic_write_json(out / "results.json", experiment.results_document())
    save_profile(experiment.profile, out / "profile.json")
    plots = plot_layers(
        out,
        experiment.test_per_layer_acc1,
        experiment.test_results,
        title="bundled demo model, Fashion-MNIST test split",
    )
    print(f"wrote {out / 'results.json'}, {out / 'profile.json'} and {len(plots)} plots to {out}/")
    return 0
