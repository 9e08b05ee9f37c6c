"""The `siglip-dola` command line: thin argument handling over the Python API.

Every command prints a short human summary and, where it has results, writes plain JSON.
Errors in the user's input end the command with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from siglip_dola.generate import command as generate_command

COMMAND_MODULES = (generate_command,)
BUNDLED_MODEL = "bundled"
DTYPES = ("float32", "bfloat16", "float16")


class UsageError(Exception):
    """Bad input from the user: reported as one line, no traceback."""


# ----------------------------------------------------------------------------- shared options


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=BUNDLED_MODEL,
        help="model spec: hf:<id|dir>, open_clip:<name>[:<pretrained>], timm:<name|file>, "
        "janus:<dir>, or 'bundled' (the demo model). Default: bundled",
    )
    g.add_argument(
        "--text-model",
        default=None,
        help="text tower spec for vision-only models (timm:, janus:), e.g. hf:google/siglip-large-patch16-384",
    )
    g.add_argument(
        "--device", default="cpu", help="torch device (cpu, cuda, cuda:1, mps). Default: cpu"
    )
    g.add_argument("--dtype", default="float32", choices=DTYPES, help="compute dtype of the model")
    g.add_argument(
        "--batch-size", type=int, default=64, help="images per forward pass (default 64)"
    )
    g.add_argument(
        "--workers", type=int, default=0, help="image decoding worker processes (default 0)"
    )
    g.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="cache for text banks and per-layer embeddings (default ~/.cache/siglip_dola, "
        "or $SIGLIP_DOLA_CACHE)",
    )
    g.add_argument("--no-cache", action="store_true", help="neither read nor write caches")
    g.add_argument(
        "--head-from",
        default=None,
        help="take the SigLIP pooling head (attn_pool) from this timm/open_clip checkpoint, for "
        "janus: checkpoints that lack one",
    )
    g.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow transformers models that ship their own code (off by default)",
    )


def _add_data_options(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        default=None if required else "bundled:fashion-mnist",
        required=required,
        help="bundled:fashion-mnist, an image folder (one subfolder per class), or a CSV/JSON "
        "label file (columns image,label)",
    )
    g.add_argument(
        "--classes",
        default=None,
        help="class names: a comma-separated list or a file with one name per line "
        "(default: the data set's own)",
    )
    g.add_argument(
        "--templates",
        default=None,
        help="prompt templates: openai (80), simple (7), photo, bundled, or a file with one "
        "template per line containing {c}. Default: the data set's own, else openai",
    )


def _add_variant_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("DoLa variants")
    g.add_argument("--buckets", type=int, default=3, help="number of layer buckets (default 3)")
    g.add_argument("--alphas", default="0.1", help="comma-separated APC alphas (default 0.1)")
    g.add_argument(
        "--static-layers",
        default="all",
        help="static contrast layers to evaluate: all, none, or e.g. 18,20,22 (default all)",
    )
    g.add_argument("--no-apc", action="store_true", help="skip the APC-only ablation")
    g.add_argument(
        "--tau",
        type=float,
        default=None,
        help="softmax temperature (default: 1/exp(logit_scale) of the model)",
    )


def _add_rerank_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("retrieval re-ranking")
    g.add_argument(
        "--shortlist",
        default="50",
        help="captions/images re-ranked per query: N or all (default 50)",
    )
    g.add_argument(
        "--layers", default=None, help="dynamic candidate layers, e.g. 18,20,22 or bucket:3"
    )
    g.add_argument(
        "--static-layer", type=int, default=None, help="static mode with this contrast layer"
    )
    g.add_argument("--alpha", type=float, default=0.1, help="APC alpha (default 0.1)")
    g.add_argument(
        "--profile", type=Path, default=None, help="calibration profile (mode, layers, alpha)"
    )


def _add_output_options(p: argparse.ArgumentParser, default_name: str) -> None:
    g = p.add_argument_group("output")
    g.add_argument(
        "--output", type=Path, default=None, help=f"results JSON file (e.g. {default_name})"
    )
    g.add_argument("--plots", type=Path, default=None, help="folder for PNG plots")
    g.add_argument("--overwrite", action="store_true", help="replace existing output files")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


# ----------------------------------------------------------------------------- option parsing


def _parse_floats(text: str, name: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"{name} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise UsageError(f"{name} is empty")
    for v in values:
        if not 0.0 <= v <= 1.0:
            raise UsageError(f"alpha must be in [0, 1], got {v}")
    return values


def _torch_dtype(name: str):
    from siglip_dola.settings import parse_dtype

    return parse_dtype(name)


def _resolve_model_spec(spec: str) -> str:
    if spec == BUNDLED_MODEL:
        from siglip_dola.data import bundled_model_dir

        return f"hf:{bundled_model_dir()}"
    return spec


def _load_model(args: argparse.Namespace):
    from siglip_dola.models import load_model

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    return load_model(
        _resolve_model_spec(args.model),
        text_spec=args.text_model,
        device=args.device,
        dtype=_torch_dtype(args.dtype),
        trust_remote_code=args.trust_remote_code,
        head_from=getattr(args, "head_from", None),
    )


def _cache_dir(args: argparse.Namespace):
    if args.no_cache:
        return None
    from siglip_dola.settings import default_cache_dir

    return args.cache_dir or default_cache_dir()


def _class_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    path = Path(text)
    if path.is_file():
        return [
            line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
    return [x.strip() for x in text.split(",")]


def _load_data(args: argparse.Namespace):
    from siglip_dola.data import load_dataset
    from siglip_dola.text import load_templates, validate_class_names

    names = _class_names(args.classes)
    image_set = load_dataset(args.dataset, class_names=names)
    if names is not None and list(image_set.class_names) != names:
        if len(names) != len(image_set.class_names):
            raise UsageError(
                f"--classes names {len(names)} classes but {args.dataset} has {len(image_set.class_names)}"
            )
        image_set.class_names = tuple(names)  # display names for folder classes, in order
    validate_class_names(image_set.class_names)
    if args.templates is not None:
        templates = load_templates(args.templates)
    else:
        templates = image_set.templates or load_templates("openai")
    return image_set, templates


def _variants(args: argparse.Namespace, depth: int):
    from siglip_dola.layers import parse_layers
    from siglip_dola.zeroshot import default_variants

    alphas = _parse_floats(args.alphas, "--alphas")
    if args.static_layers == "all":
        statics = None
    elif args.static_layers == "none":
        statics = ()
    else:
        statics = parse_layers(args.static_layers, depth)
    return default_variants(depth, args.buckets, alphas, statics, apc=not args.no_apc)


def _evaluate(args: argparse.Namespace, model, image_set, templates, variants, dist=None):
    from siglip_dola.zeroshot import evaluate_dataset

    return evaluate_dataset(
        model,
        image_set,
        templates,
        variants,
        tau=getattr(args, "tau", None),
        **_run_options(args),
        dist=dist,
    )


def _check_outputs(args: argparse.Namespace, *paths: Path | None) -> None:
    from siglip_dola.io import check_writable

    for path in paths:
        if path is not None:
            check_writable(path, args.overwrite)


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)


def _run_options(args: argparse.Namespace) -> dict:
    """The keyword arguments every evaluation takes from the shared run flags."""
    return {
        "batch_size": args.batch_size,
        "workers": args.workers,
        "device": args.device,
        "dtype": _torch_dtype(args.dtype),
        "cache_dir": _cache_dir(args),
        "progress": _progress(args),
    }


def _dola_flags(args: argparse.Namespace, depth: int) -> tuple[tuple[int, ...] | None, float]:
    """Candidate layers (``--layers``, None = the default) and alpha (``--alpha``)."""
    from siglip_dola.layers import parse_layers

    layers = parse_layers(args.layers, depth) if args.layers else None
    return layers, _parse_floats(str(args.alpha), "--alpha")[0]


def _write_plots(args: argparse.Namespace, evaluation, image_set) -> None:
    from siglip_dola.report import plot_layers

    for path in plot_layers(
        args.plots,
        evaluation.per_layer_acc1,
        evaluation.results,
        title=f"{args.model} on {image_set.name}",
    ):
        print(f"plot: {path}")


def _summary_lines(evaluation, limit: int = 12) -> list:
    """Baseline, the per-bucket dynamic variants, APC-only, then the best others."""
    results = evaluation.results
    key = [r for r in results if r.variant.kind in ("baseline", "dynamic", "apc")]
    others = sorted((r for r in results if r not in key), key=lambda r: -r.metrics["acc1"])
    return key + others[: max(0, limit - len(key))]


# ----------------------------------------------------------------------------- commands


def cmd_rerank(args: argparse.Namespace) -> int:
    from siglip_dola.calibrate import load_profile, variant_from_profile
    from siglip_dola.io import atomic_write_json
    from siglip_dola.retrieval import evaluate_retrieval, load_retrieval_set

    _check_outputs(args, args.output)
    dataset = load_retrieval_set(args.dataset)
    shortlist = (
        None if str(args.shortlist) == "all" else _positive_int(args.shortlist, "--shortlist")
    )
    model = _load_model(args)
    layers, alpha = _dola_flags(args, model.vision.depth)
    static = args.static_layer
    if args.profile:
        variant = variant_from_profile(load_profile(args.profile), model.vision.depth)
        if variant.kind not in ("dynamic", "static"):
            raise UsageError(
                f"profile {args.profile} selects {variant.name}: re-ranking needs a dynamic or "
                f"static DoLa profile (drop --profile to compare the baseline with default DoLa)"
            )
        layers = variant.layers if variant.kind == "dynamic" else None
        static = variant.layers[0] if variant.kind == "static" else None
        alpha = variant.alpha
    results = evaluate_retrieval(
        model,
        dataset,
        shortlist=shortlist,
        candidate_layers=layers,
        static_layer=static,
        alpha=alpha,
        tau=args.tau,
        **_run_options(args),
    )
    results["model"] = args.model
    d = results["dola"]
    print(
        f"{dataset.name}: {d['num_images']} images, {d['num_captions']} captions; shortlist "
        f"{d['shortlist']}; DoLa {d['mode']} layers {d['candidate_layers']} alpha {d['alpha']}"
    )
    print(f"{'metric':<32} {'baseline':>9} {'DoLa':>9}")
    for key, value in results["metrics"].items():
        print(f"{key:<32} {100 * value:8.2f}% {100 * d['metrics'][key]:8.2f}%")
    _report_skips_dicts(d["skipped"]["items"])
    if args.output:
        atomic_write_json(args.output, results)
        print(f"results: {args.output}")
    return 0


def _report_skips_dicts(items: list[dict]) -> None:
    from siglip_dola.data import Skipped

    _report_skips([Skipped(**s) for s in items])


def _positive_int(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{name} must be a positive integer or 'all', got {text!r}") from None
    if value < 1:
        raise UsageError(f"{name} must be >= 1, got {value}")
    return value


def cmd_eval(args: argparse.Namespace) -> int:
    if args.task == "zeroshot_retrieval":
        if args.dataset == "bundled:fashion-mnist":
            args.dataset = "bundled:photos"
        return cmd_rerank(args)
    from siglip_dola.distributed import process_group_from_env
    from siglip_dola.report import classification_results, format_table

    _check_outputs(args, args.output)
    image_set, templates = _load_data(args)
    with process_group_from_env(args.device) as ctx:
        model = _load_model(args)
        variants = _variants(args, model.vision.depth)
        start = time.perf_counter()
        evaluation = _evaluate(args, model, image_set, templates, variants, dist=ctx)
    if evaluation is None:  # a data-parallel worker: rank 0 reports
        return 0
    seconds = time.perf_counter() - start
    print(
        format_table(
            _summary_lines(evaluation),
            title=f"{image_set.name}: {evaluation.num_images} images, "
            f"{len(image_set.class_names)} classes, {len(templates)} templates, "
            f"tau={evaluation.tau:.4g}, {ctx.world_size} process(es)",
        )
    )
    _report_skips(evaluation.skipped)
    results = classification_results(
        dataset=args.dataset,
        model=args.model,
        results=evaluation.results,
        per_layer_acc1=evaluation.per_layer_acc1,
        tau=evaluation.tau,
        num_images=evaluation.num_images,
        skipped=evaluation.skipped,
        templates=templates,
        extra={"seconds": round(seconds, 3), "processes": ctx.world_size},
    )
    if args.output:
        from siglip_dola.io import atomic_write_json

        atomic_write_json(args.output, results)
        print(f"results: {args.output}")
    if args.plots:
        _write_plots(args, evaluation, image_set)
    return 0


def _report_skips(skipped) -> None:
    if skipped:
        print(f"skipped {len(skipped)} image(s):", file=sys.stderr)
        for s in skipped[:20]:
            print(f"  {s.source}: {s.reason}", file=sys.stderr)
        if len(skipped) > 20:
            print(
                f"  ... and {len(skipped) - 20} more (all listed in the results JSON)",
                file=sys.stderr,
            )


def cmd_calibrate(args: argparse.Namespace) -> int:
    from siglip_dola.calibrate import build_profile, rank_variants, save_profile
    from siglip_dola.report import format_table

    _check_outputs(args, args.profile)
    image_set, templates = _load_data(args)
    if args.val_fraction is not None:
        image_set, _ = image_set.split(args.val_fraction, seed=args.seed)
    model = _load_model(args)
    variants = _variants(args, model.vision.depth)
    evaluation = _evaluate(args, model, image_set, templates, variants)
    profile = build_profile(
        evaluation.results,
        model=args.model,
        tau=evaluation.tau,
        metric=args.metric,
        data_fingerprint=image_set.fingerprint(),
        num_images=evaluation.num_images,
        significance=args.significance,
        templates=templates,
    )
    ranked = rank_variants(evaluation.results, args.metric)
    print(
        format_table(
            ranked,
            title=f"validation ranking by {args.metric} ({evaluation.num_images} images)",
            limit=10,
        )
    )
    _report_skips(evaluation.skipped)
    save_profile(profile, args.profile)
    verdict = (
        f"selected {profile['variant']}"
        if profile["mode"] != "off"
        else "no DoLa variant beats the baseline: the profile keeps DoLa off"
    )
    print(f"{verdict}\nprofile: {args.profile}")
    return 0


def _collect_images(inputs: list[str]) -> list[Path]:
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


def cmd_classify(args: argparse.Namespace) -> int:
    from siglip_dola.calibrate import load_profile
    from siglip_dola.data import ImageError, Skipped, load_image
    from siglip_dola.text import load_templates
    from siglip_dola.zeroshot import ZeroShotClassifier

    _check_outputs(args, args.output)
    if args.output and args.output.suffix.lower() not in (".json", ".csv"):
        raise UsageError(f"--output must end in .json or .csv, got {args.output}")
    names = _class_names(args.classes)
    if not names:
        raise UsageError("--classes is required (comma-separated names or a file)")
    paths = _collect_images(args.images)
    profile = load_profile(args.profile) if args.profile else None
    templates = load_templates(args.templates or "photo")
    model = _load_model(args)
    layers, alpha = _dola_flags(args, model.vision.depth)
    classifier = ZeroShotClassifier(
        model,
        names,
        templates,
        use_dola=not args.no_dola,
        candidate_layers=layers,
        static_layer=args.static_layer,
        alpha=alpha,
        tau=args.tau,
        profile=profile,
        cache_dir=_cache_dir(args),
        device=args.device,
        dtype=_torch_dtype(args.dtype),
    )
    rows: list[dict[str, Any]] = []
    skipped: list[Skipped] = []
    from tqdm.auto import tqdm

    for start in tqdm(
        range(0, len(paths), args.batch_size), desc="classify", disable=not _progress(args)
    ):
        images, used = [], []
        for path in paths[start : start + args.batch_size]:
            try:
                images.append(load_image(path))
                used.append(path)
            except ImageError as exc:
                skipped.append(Skipped(str(path), str(exc)))
        if not images:
            continue
        out = classifier.predict(images)
        idx, probs = out.topk(args.top_k)
        for i, path in enumerate(used):
            row = {
                "image": str(path),
                "prediction": classifier.class_names[int(idx[i, 0])],
                "top_k": [
                    {"class": classifier.class_names[int(c)], "p": float(p)}
                    for c, p in zip(idx[i], probs[i])
                ],
            }
            if out.chosen_layers is not None:
                row["contrast_layer"] = int(out.chosen_layers[i])
            rows.append(row)
            tops = ", ".join(f"{t['class']} {t['p']:.3f}" for t in row["top_k"][:3])
            layer = f"  [M={row['contrast_layer']}]" if "contrast_layer" in row else ""
            print(f"{path}: {tops}{layer}")
    mode = classifier.variant.name if classifier.use_dola else "baseline (DoLa off)"
    print(f"{len(rows)} image(s) classified with {mode}; {len(skipped)} skipped")
    _report_skips(skipped)
    if args.output:
        from siglip_dola.io import atomic_write_json, atomic_write_text

        if args.output.suffix.lower() == ".json":
            atomic_write_json(
                args.output,
                {
                    "model": args.model,
                    "mode": mode,
                    "predictions": rows,
                    "skipped": [s.__dict__ for s in skipped],
                },
            )
        else:
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow(["image", "prediction", "p", "contrast_layer", "top_k"])
            for r in rows:
                writer.writerow(
                    [
                        r["image"],
                        r["prediction"],
                        f"{r['top_k'][0]['p']:.6f}",
                        r.get("contrast_layer", ""),
                        ";".join(f"{t['class']}:{t['p']:.6f}" for t in r["top_k"]),
                    ]
                )
            atomic_write_text(args.output, buffer.getvalue())
        print(f"predictions: {args.output}")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    from siglip_dola.layers import bucket_table
    from siglip_dola.zeroshot import Variant

    model = _load_model(args)
    depth = model.vision.depth
    print(
        f"{args.model}: {depth} layers, embedding size {model.vision.embed_dim}, tau {model.tau:.4g}"
    )
    print("buckets and default candidate layers:")
    for (lo, hi), cands in bucket_table(depth, args.buckets):
        print(f"  [{lo:>2}-{hi:>2}]  candidates {', '.join(map(str, cands))}")
    if args.dataset is None:
        return 0
    image_set, templates = _load_data(args)
    evaluation = _evaluate(args, model, image_set, templates, [Variant("baseline")])
    print(f"per-layer readout top-1 accuracy on {image_set.name} ({evaluation.num_images} images):")
    for layer, acc in evaluation.per_layer_acc1.items():
        print(f"  layer {layer:>2}: {100 * acc:6.2f}%  {'#' * int(round(40 * acc))}")
    if args.plots:
        _write_plots(args, evaluation, image_set)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from siglip_dola.calibrate import build_profile, save_profile
    from siglip_dola.data import load_dataset
    from siglip_dola.io import atomic_write_json
    from siglip_dola.report import classification_results, format_table, plot_layers
    from siglip_dola.zeroshot import (
        Variant,
        default_variants,
        evaluate_dataset,
        evaluate_embeddings,
    )

    out = args.out or Path("results") / f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"{out} already holds results; pass --overwrite or another --out")
    args.model, args.text_model, args.trust_remote_code = BUNDLED_MODEL, None, False
    model = _load_model(args)
    data = load_dataset("bundled:fashion-mnist")
    val_ids, test_ids = data.split_indices(args.val_fraction, seed=args.seed)
    templates = data.templates
    depth = model.vision.depth
    variants = default_variants(depth, 3, (0.05, 0.1, 0.2), None, apc=True)
    print(
        f"bundled demo: SigLIP ({depth} vision layers) trained on Fashion-MNIST; "
        f"{len(val_ids)} validation / {len(test_ids)} test images, {len(templates)} held-out templates"
    )
    # One readout pass over every image and layer; both splits reuse it.
    evaluation = evaluate_dataset(
        model,
        data,
        templates,
        [Variant("baseline")],
        **_run_options(args),
    )
    emb = evaluation.embeddings
    row_of = {int(i): row for row, i in enumerate(emb.indices)}

    def evaluate_split(ids: list[int]):
        part = emb.subset([row_of[i] for i in ids if i in row_of])
        return evaluate_embeddings(
            part, evaluation.text_bank, evaluation.tau, variants, len(data.class_names)
        )

    val_results, _ = evaluate_split(val_ids)
    test_results, test_per_layer = evaluate_split(test_ids)
    profile = build_profile(
        val_results,
        model=BUNDLED_MODEL,
        tau=evaluation.tau,
        data_fingerprint=data.subset(val_ids).fingerprint(),
        num_images=len(val_ids),
        templates=templates,
    )
    val_acc = {r.variant.name: r.metrics["acc1"] for r in val_results}
    test_by_name = {r.variant.name: r for r in test_results}
    shown = [
        r
        for r in test_results
        if r.variant.kind in ("baseline", "dynamic") and r.variant.alpha in (0, 0.1)
    ]
    shown.append(test_by_name["apc-only a=0.1"])
    statics = [r for r in test_results if r.variant.kind == "static" and r.variant.alpha == 0.1]
    shown.append(max(statics, key=lambda r: val_acc[r.variant.name]))
    if test_by_name[profile["validation"]["best"]["variant"]] not in shown:
        shown.append(test_by_name[profile["validation"]["best"]["variant"]])
    print()
    print(
        format_table(
            shown,
            title=f"test split ({len(test_ids)} images; the static layer shown is the best "
            "on validation)",
        )
    )
    validation = profile["validation"]
    best = validation["best"]
    p_value = validation["mcnemar_p_value"]
    if profile["mode"] != "off":
        decision = f"DoLa on: {profile['variant']}"
    elif validation["dola_beats_baseline"]:
        decision = f"not significant (McNemar p = {p_value:.2f}), DoLa stays off"
    else:
        decision = "no variant beats the baseline, DoLa stays off"
    print(
        f"calibration on validation (acc1): best {best['variant']} {100 * best['acc1']:.2f}% vs "
        f"baseline {100 * validation['baseline']['acc1']:.2f}% -> {decision}"
    )
    if best["variant"] != "baseline":
        on_test = test_by_name[best["variant"]].metrics["acc1"]
        print(
            f"the validation-best variant on the test split: {100 * on_test:.2f}% vs baseline "
            f"{100 * test_by_name['baseline'].metrics['acc1']:.2f}%"
        )
    results = classification_results(
        dataset="bundled:fashion-mnist (test split)",
        model=BUNDLED_MODEL,
        results=test_results,
        per_layer_acc1=test_per_layer,
        tau=evaluation.tau,
        num_images=len(test_ids),
        skipped=emb.skipped,
        templates=templates,
        extra={"calibrated_profile": profile},
    )
    atomic_write_json(out / "results.json", results)
    save_profile(profile, out / "profile.json")
    plots = plot_layers(
        out, test_per_layer, test_results, title="bundled demo model, Fashion-MNIST test split"
    )
    print(f"wrote {out / 'results.json'}, {out / 'profile.json'} and {len(plots)} plots to {out}/")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from siglip_dola.benchmark import run_eval_benchmark

    _check_outputs(args, args.output)
    image_set, templates = _load_data(args)
    model = _load_model(args)
    print(
        f"timing eval on {len(image_set)} images of {image_set.name}, {args.repeats} alternating repeats ..."
    )
    r = run_eval_benchmark(
        model,
        image_set,
        templates,
        repeats=args.repeats,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        dtype=_torch_dtype(args.dtype),
    )
    print(f"eval, baseline only (layer N, q_N):          {r['eval_baseline_s']:8.3f} s (median)")
    print(
        f"eval, all {r['variants']:>3} variants (layers 1..{r['depth']}): {r['eval_all_variants_s']:8.3f} s (median)"
    )
    print(f"ratio: {r['eval_ratio']:.3f}x (target <= 1.15x)")
    print(
        f"fastest repeat of each: {r['eval_baseline_min_s']:.3f} s vs "
        f"{r['eval_all_variants_min_s']:.3f} s, ratio {r['eval_ratio_of_minima']:.3f}x"
    )
    print(
        f"text bank: first build {r['text_bank_first_s']:.3f} s, cache hit {r['text_bank_cache_hit_s']:.4f} s "
        f"({100 * r['text_bank_hit_fraction']:.2f}% of the first; target < 5%)"
    )
    if args.output:
        from siglip_dola.io import atomic_write_json

        atomic_write_json(args.output, r)
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="siglip-dola",
        description="DoLa (Decoding by Contrasting Layers) for SigLIP vision transformers: zero-shot "
        "classification and retrieval re-scoring, Janus-Pro batch generation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "demo", help="bundled model + data: calibrate, evaluate, print the comparison table"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default results/demo-<time>)"
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.25, help="validation share (default 0.25)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "eval", help="zero-shot evaluation: baseline and every DoLa variant side by side"
    )
    p.add_argument(
        "--task",
        default="zeroshot_classification",
        choices=("zeroshot_classification", "zeroshot_retrieval"),
    )
    _add_model_options(p)
    _add_data_options(p)
    _add_variant_options(p)
    _add_rerank_options(p)
    _add_output_options(p, "results.json")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("rerank", help="image<->text retrieval re-ranked by DoLa, recall@1/5/10")
    _add_model_options(p)
    p.add_argument(
        "--dataset",
        default="bundled:photos",
        help="bundled:photos or a CSV/JSON of (image, caption) pairs",
    )
    p.add_argument("--tau", type=float, default=None)
    _add_rerank_options(p)
    _add_output_options(p, "retrieval.json")
    p.set_defaults(func=cmd_rerank)

    p = sub.add_parser(
        "calibrate", help="choose bucket / layer / alpha on a validation set -> profile JSON"
    )
    _add_model_options(p)
    _add_data_options(p)
    _add_variant_options(p)
    p.add_argument("--profile", type=Path, required=True, help="profile JSON to write")
    p.add_argument("--metric", default="acc1", choices=("acc1", "acc5", "mean_per_class_recall"))
    p.add_argument(
        "--significance",
        type=float,
        default=0.05,
        help="turn DoLa on only if its top-1 decisions differ from the baseline's with exact "
        "McNemar p below this (default 0.05; 1 = any gain)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="use a seeded, class-stratified fraction of --dataset (default: all of it)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_calibrate, alphas="0.05,0.1,0.2")

    p = sub.add_parser("classify", help="classify images with DoLa -> predictions JSON/CSV")
    p.add_argument("images", nargs="+", help="image files or folders")
    _add_model_options(p)
    p.add_argument(
        "--classes", required=True, help="comma-separated class names or a file, one per line"
    )
    p.add_argument(
        "--templates", default=None, help="template set or file (default 'a photo of a {c}.')"
    )
    p.add_argument(
        "--profile", type=Path, default=None, help="calibration profile (sets mode, layers, alpha)"
    )
    p.add_argument(
        "--layers", default=None, help="dynamic candidate layers, e.g. 18,20,22 or bucket:3"
    )
    p.add_argument(
        "--static-layer", type=int, default=None, help="static mode with this contrast layer"
    )
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--tau", type=float, default=None)
    p.add_argument("--no-dola", action="store_true", help="baseline only")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--output", type=Path, default=None, help="predictions file (.json or .csv)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("layers", help="layer table and per-layer readout accuracy (with --dataset)")
    _add_model_options(p)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=None, help="labelled data for per-layer accuracy")
    g.add_argument("--classes", default=None)
    g.add_argument("--templates", default=None)
    p.add_argument("--buckets", type=int, default=3)
    p.add_argument("--tau", type=float, default=None)
    p.add_argument("--plots", type=Path, default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser(
        "bench", help="time eval with baseline only vs every DoLa variant (one run, one ratio)"
    )
    _add_model_options(p)
    _add_data_options(p)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", type=Path, default=None, help="timings JSON")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_bench)

    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    from siglip_dola.allocator import keep_freed_memory

    keep_freed_memory()
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"siglip-dola {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"siglip-dola {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
