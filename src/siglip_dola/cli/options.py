"""Option groups shared by the commands, declared once, and the objects they become.

Each ``add_*`` function declares a group of flags; the matching ``*.from_args`` turns the
parsed flags into one checked object before any model loads. Nothing here imports torch or
a model library at module level, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from siglip_dola.settings import COMPUTE_DTYPES, RunSettings, default_cache_dir, default_workers

if TYPE_CHECKING:  # pragma: no cover
    from siglip_dola.variants import VariantGrid

__all__ = [
    "BUNDLED_MODEL",
    "DataOptions",
    "DolaChoice",
    "ModelOptions",
    "OutputOptions",
    "UsageError",
    "RetrievalDataOptions",
    "add_data_options",
    "add_retrieval_data_options",
    "add_dola_choice_options",
    "add_grid_options",
    "add_model_options",
    "add_output_options",
    "add_run_options",
    "grid_from_args",
    "parse_alphas",
    "parse_tau",
    "report_skips",
    "report_warnings",
    "results_paths",
    "run_settings_from_args",
    "warn",
]

BUNDLED_MODEL = "bundled"
DEFAULT_ALPHAS = "0.1"


class UsageError(Exception):
    """Bad input from the user: reported as one line, no traceback."""


# ----------------------------------------------------------------------------- model


def add_model_options(p: argparse.ArgumentParser) -> None:
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
        help="text tower spec for vision-only models (timm:, janus:), "
        "e.g. hf:google/siglip-large-patch16-384",
    )
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


@dataclass(frozen=True)
class ModelOptions:
    """Which model to load: the vision spec, an optional text tower and its options."""

    spec: str = BUNDLED_MODEL
    text_spec: str | None = None
    head_from: str | None = None
    trust_remote_code: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ModelOptions:
        from siglip_dola.models import parse_spec

        spec = str(args.model).strip()
        if not spec:
            raise UsageError("--model is empty")
        opts = cls(spec, args.text_model, args.head_from, bool(args.trust_remote_code))
        parse_spec(opts.resolved_spec)  # syntax and local paths, before anything loads
        if opts.text_spec is not None:
            parse_spec(opts.text_spec)
        return opts

    @property
    def resolved_spec(self) -> str:
        """The spec to load: ``bundled`` names the demo model's folder."""
        if self.spec == BUNDLED_MODEL:
            from siglip_dola.data import bundled_model_dir

            return f"hf:{bundled_model_dir()}"
        return self.spec

    def load(self, settings: RunSettings) -> Any:
        """The loaded model (``LoadedModel``) on the settings' device and dtype."""
        from siglip_dola.models import load_model

        return load_model(
            self.resolved_spec,
            text_spec=self.text_spec,
            device=settings.device,
            dtype=settings.torch_dtype,
            trust_remote_code=self.trust_remote_code,
            head_from=self.head_from,
            progress=settings.progress,
        )


# ----------------------------------------------------------------------------- run settings


def add_run_options(p: argparse.ArgumentParser, batch_size: int = 64) -> None:
    g = p.add_argument_group("run")
    g.add_argument(
        "--device", default="cpu", help="torch device (cpu, cuda, cuda:1, mps). Default: cpu"
    )
    g.add_argument(
        "--dtype", default="float32", choices=COMPUTE_DTYPES, help="compute dtype of the model"
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=batch_size,
        help=f"images per forward pass (default {batch_size})",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes that decode and preprocess images while the model runs; 0 = in this "
        "process (default: the CPUs this process may use, shared among data-parallel "
        f"processes, less one, at most 16: here {default_workers('cuda')}; on --device cpu "
        f"half of them less one: here {default_workers('cpu')})",
    )
    g.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the image tower's blocks (faster on GPUs once compiled; the first "
        "batches wait for the compiler)",
    )
    g.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="cache for text banks and per-layer embeddings (default ~/.cache/siglip_dola, "
        "or $SIGLIP_DOLA_CACHE)",
    )
    g.add_argument("--no-cache", action="store_true", help="neither read nor write caches")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def run_settings_from_args(args: argparse.Namespace) -> RunSettings:
    """The run flags as checked :class:`RunSettings` (``--no-cache``: no cache folder): the
    device exists here and the cache folder can be written, before any model loads."""
    from siglip_dola.io import check_output_folder
    from siglip_dola.settings import check_device

    cache = None if args.no_cache else (args.cache_dir or default_cache_dir())
    try:
        check_device(args.device)
        if cache is not None:
            check_output_folder(cache)
        return RunSettings(
            batch_size=args.batch_size,
            workers=default_workers(args.device) if args.workers is None else args.workers,
            device=args.device,
            dtype=args.dtype,
            cache_dir=cache,
            progress=not args.quiet,
            compile=bool(args.compile),
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(_flag_message(str(exc))) from None


def _flag_message(message: str) -> str:
    for words, flag in (("batch size", "--batch-size"), ("workers", "--workers")):
        if message.startswith(words):
            return f"{flag}{message[len(words) :]}"
    return message


# ----------------------------------------------------------------------------- data

DEFAULT_PIXEL_LIMIT_TEXT = "16384 x 16384 = 268435456"  # siglip_dola.data.MAX_PIXELS (tested)


def add_data_options(
    p: argparse.ArgumentParser, default: str | None = "bundled:fashion-mnist", several: bool = False
) -> None:
    """The labelled-data flags; ``several``: ``--dataset`` takes several values (and
    ``--dataset-root``), one results file each."""
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        default=[default] if several and default is not None else default,
        nargs="+" if several else None,
        help="an image folder (DIR/<class>/<images>; WordNet-id folders get the ImageNet "
        "names), a label file (.csv/.tsv/.json/.jsonl), wds:DIR (clip_benchmark webdataset), "
        "datasets:PATH (Hugging Face save_to_disk folder, .parquet/.arrow, hub id), or "
        f"bundled:fashion-mnist. Default: {default}",
    )
    if several:
        add_dataset_root_option(g)
    add_split_option(g)
    g.add_argument(
        "--classes",
        default=None,
        help="class names in label-index order: a comma-separated list, a file with one name "
        "per line, a WordNet-id mapping (LOC_synset_mapping.txt, JSON {wnid: name}), or "
        "'imagenet' (the ImageNet-1k names). Default: the data set's own",
    )
    g.add_argument(
        "--templates",
        default=None,
        help="prompt templates: openai (80), simple (7), photo, bundled, or a file with one "
        "template per line containing {c}. Default: the data set's own, else openai",
    )
    g.add_argument(
        "--image-column", default=None, help="image column of a label file or datasets: table"
    )
    g.add_argument(
        "--label-column", default=None, help="label column of a label file or datasets: table"
    )
    add_max_pixels_option(g)


def add_dataset_root_option(g: Any) -> None:
    g.add_argument(
        "--dataset-root",
        default=None,
        help="folder template for the --dataset names, clip_benchmark's style: {dataset} "
        "(and {dataset_cleaned}, '/' as '-') is each name, e.g. 'data/wds_{dataset_cleaned}' "
        "with --dataset wds/cifar10 wds/imagenet1k; without a placeholder, ROOT/<name>",
    )


def add_split_option(g: Any) -> None:
    g.add_argument(
        "--split",
        default=None,
        help="split to read: of a wds: folder, a datasets: table or a Karpathy JSON (default "
        "test), or a folder's <split>/ subfolder",
    )


def add_max_pixels_option(g: Any) -> None:
    g.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="largest image (width x height) decoded; larger ones are skipped (default "
        f"{DEFAULT_PIXEL_LIMIT_TEXT})",
    )


def _max_pixels(value: int | None) -> int:
    from siglip_dola.data import MAX_PIXELS

    if value is None:
        return MAX_PIXELS
    if value < 1:
        raise UsageError(f"--max-pixels must be a positive number of pixels, got {value}")
    return value


def _datasets_of(args: argparse.Namespace) -> list[str]:
    values = args.dataset if isinstance(args.dataset, list) else [args.dataset]
    if not values:
        raise UsageError("--dataset names no data set")
    return [str(v) for v in values]


@dataclass(frozen=True)
class DataOptions:
    """A labelled data set and how to name and prompt its classes."""

    dataset: str
    classes: Any = None  # siglip_dola.data.ClassNames: the checked --classes
    templates: str | None = None
    split: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    max_pixels: int | None = None  # None: the default limit
    root: str | None = None  # --dataset-root template

    @classmethod
    def from_args(cls, args: argparse.Namespace, dataset: str | None = None) -> DataOptions:
        """The flags as options for ``dataset`` (default: the one ``--dataset``); the class
        names are checked here, before any model loads (duplicates are named)."""
        from siglip_dola.data import read_classes
        from siglip_dola.text import validate_class_names

        classes = read_classes(args.classes)
        if classes is not None:
            names = validate_class_names(classes.names)
            classes = type(classes)(names, classes.wnids, classes.origin)
        return cls(
            dataset if dataset is not None else _datasets_of(args)[0],
            classes,
            args.templates,
            getattr(args, "split", None),
            getattr(args, "image_column", None),
            getattr(args, "label_column", None),
            _max_pixels(getattr(args, "max_pixels", None)),
            getattr(args, "dataset_root", None),
        )

    @classmethod
    def many_from_args(cls, args: argparse.Namespace) -> list[DataOptions]:
        """One options object per ``--dataset`` value."""
        first = cls.from_args(args)
        return [first] + [replace(first, dataset=d) for d in _datasets_of(args)[1:]]

    def load(self, streaming: bool = False) -> tuple[Any, tuple[str, ...]]:
        """(the ``ImageSet`` - or with ``streaming`` possibly a ``WebDatasetSource`` -, its
        templates)."""
        from siglip_dola.data import WebDatasetSource, load_dataset
        from siglip_dola.text import resolve_templates, validate_class_names

        image_set = load_dataset(
            self.dataset,
            self.classes,
            split=self.split,
            image_column=self.image_column,
            label_column=self.label_column,
            max_pixels=_max_pixels(self.max_pixels),
            root=self.root,
        )
        if isinstance(image_set, WebDatasetSource) and not streaming:
            raise UsageError(
                f"{self.dataset} is a webdataset folder, read shard by shard: this command "
                "needs random access to the images (eval and rerank stream it)"
            )
        validate_class_names(image_set.class_names)
        return image_set, resolve_templates(self.templates, image_set.templates)


def add_retrieval_data_options(p: argparse.ArgumentParser, default: str) -> Any:
    """The retrieval-data flags (``--images-root`` comes with the re-ranking options)."""
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        default=[default],
        nargs="+",
        help="bundled:photos, a CSV/JSON of (image, caption) pairs, a Karpathy-split JSON "
        "(dataset_coco.json, dataset_flickr30k.json; images under --images-root), or wds:DIR "
        f"(clip_benchmark webdataset caption set). Default: {default}",
    )
    add_dataset_root_option(g)
    add_split_option(g)
    add_max_pixels_option(g)
    return g


@dataclass(frozen=True)
class RetrievalDataOptions:
    """A retrieval data set (images with captions)."""

    dataset: str
    split: str | None = None
    images_root: Path | None = None
    max_pixels: int | None = None
    root: str | None = None

    @classmethod
    def many_from_args(cls, args: argparse.Namespace) -> list[RetrievalDataOptions]:
        images_root = getattr(args, "images_root", None)
        if images_root is not None and not Path(images_root).is_dir():
            raise UsageError(f"--images-root {images_root} is not a folder")
        max_pixels = _max_pixels(getattr(args, "max_pixels", None))
        return [
            cls(d, args.split, images_root, max_pixels, getattr(args, "dataset_root", None))
            for d in _datasets_of(args)
        ]

    def load(self) -> Any:
        """The ``RetrievalSet``."""
        from siglip_dola.data import load_retrieval_set

        return load_retrieval_set(
            self.dataset,
            split=self.split,
            images_root=self.images_root,
            max_pixels=_max_pixels(self.max_pixels),
            root=self.root,
        )


def results_paths(
    output: Path | None, names: Sequence[str], fields: dict[str, str], overwrite: bool
) -> list[Path | None]:
    """One results file per data set, checked before any work: ``output`` may hold
    clip_benchmark's placeholders ({dataset}, {model}, {pretrained}, {task}, {language};
    '/' in a name becomes '_'); with several data sets it must hold {dataset} or name a
    folder (then FOLDER/<dataset>.json)."""
    from siglip_dola.io import check_writable

    if output is None:
        return [None] * len(names)
    text = str(output)
    slugs = [name.replace("/", "_") for name in names]
    if "{" in text:
        values = {k: str(v).replace("/", "_") for k, v in fields.items()}
        try:
            paths = [Path(text.format(**values, dataset=slug)) for slug in slugs]
        except (KeyError, IndexError, ValueError) as exc:
            raise UsageError(
                f"--output {text!r}: placeholders are {{dataset}}, {{model}}, {{pretrained}}, "
                f"{{task}}, {{language}} ({type(exc).__name__}: {exc})"
            ) from None
    elif len(names) > 1:
        if not (output.is_dir() or text.endswith(("/", "\\"))):
            raise UsageError(
                "with several data sets, --output must hold {dataset} (e.g. "
                "results/{dataset}.json) or name a folder"
            )
        paths = [output / f"{slug}.json" for slug in slugs]
    else:
        paths = [output]
    seen: dict[Path, str] = {}
    for path, name in zip(paths, names):
        if path in seen:
            raise UsageError(f"data sets {seen[path]} and {name} would write the same {path}")
        seen[path] = name
        try:
            check_writable(path, overwrite)
        except FileExistsError as exc:
            raise UsageError(str(exc)) from None
    return paths


def report_warnings(warnings: Sequence[str], name: str) -> None:
    """A data set's warnings on stderr, one line each."""
    for warning in warnings:
        warn(f"{name}: {warning}")


# ----------------------------------------------------------------------------- variants


def add_grid_options(p: argparse.ArgumentParser, alphas: str = DEFAULT_ALPHAS) -> None:
    g = p.add_argument_group("DoLa variants")
    g.add_argument("--buckets", type=int, default=3, help="number of layer buckets (default 3)")
    g.add_argument(
        "--alphas", default=alphas, help=f"comma-separated APC alphas (default {alphas})"
    )
    g.add_argument(
        "--static-layers",
        default="all",
        help="static contrast layers to evaluate: all, none, or e.g. 18,20,22 (default all)",
    )
    g.add_argument("--no-apc", action="store_true", help="skip the APC-only ablation")
    add_tau_option(g)


def add_tau_option(g: Any) -> None:
    g.add_argument(
        "--tau",
        type=float,
        default=None,
        help="softmax temperature (default: 1/exp(logit_scale) of the model)",
    )


def grid_from_args(args: argparse.Namespace) -> VariantGrid:
    from siglip_dola.variants import VariantGrid

    try:
        return VariantGrid(
            num_buckets=args.buckets,
            alphas=parse_alphas(args.alphas, "--alphas"),
            static_layers=args.static_layers,
            apc=not args.no_apc,
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def parse_alphas(text: str, name: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise UsageError(f"{name} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise UsageError(f"{name} is empty")
    for v in values:
        if not 0.0 <= v <= 1.0:
            raise UsageError(f"alpha must be in [0, 1], got {v}")
    return values


def parse_tau(value: float | None) -> float | None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise UsageError(f"--tau must be a finite number > 0, got {value}")
    return value


def add_dola_choice_options(p: argparse.ArgumentParser, title: str = "DoLa") -> None:
    g = p.add_argument_group(title)
    g.add_argument(
        "--layers", default=None, help="dynamic candidate layers, e.g. 18,20,22 or bucket:3"
    )
    g.add_argument(
        "--static-layer", type=int, default=None, help="static mode with this contrast layer"
    )
    g.add_argument("--alpha", type=float, default=None, help="APC alpha (default 0.1)")
    g.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="calibration profile: sets mode, layers, alpha (and, for classify, the templates); "
        "cannot be combined with --layers, --static-layer or --alpha",
    )


@dataclass(frozen=True)
class DolaChoice:
    """One DoLa variant as the flags describe it: explicit flags or a calibration profile,
    never both. Layer lists are checked once the model's depth is known (:meth:`variant`)."""

    layers: str | None = None
    static_layer: int | None = None
    alpha: float = 0.1
    profile: dict[str, Any] | None = None
    profile_path: Path | None = None
    given: bool = False  # any of the flags (or a profile) was given

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DolaChoice:
        from siglip_dola.calibrate import load_profile

        given = [
            flag
            for flag, value in (
                ("--layers", args.layers),
                ("--static-layer", args.static_layer),
                ("--alpha", args.alpha),
            )
            if value is not None
        ]
        if args.profile and given:
            raise UsageError(
                f"--profile sets the DoLa variant; it cannot be combined with {', '.join(given)}"
            )
        if args.layers is not None and args.static_layer is not None:
            raise UsageError("pass either --layers (dynamic) or --static-layer (static), not both")
        alpha = 0.1 if args.alpha is None else parse_alphas(str(args.alpha), "--alpha")[0]
        profile = load_profile(args.profile) if args.profile else None
        given = bool(given or profile is not None)
        return cls(args.layers, args.static_layer, alpha, profile, args.profile, given)

    def variant(self, depth: int, use_dola: bool = True) -> Any:
        """The :class:`~siglip_dola.variants.Variant` for a model of ``depth`` layers."""
        from siglip_dola.layers import parse_layers
        from siglip_dola.variants import Variant

        if not use_dola:
            return Variant.baseline()
        if self.profile is not None:
            return Variant.from_profile(self.profile, depth)
        layers = parse_layers(self.layers, depth) if self.layers else None
        return Variant.choose(
            depth,
            use_dola=use_dola,
            candidate_layers=layers,
            static_layer=self.static_layer,
            alpha=self.alpha,
        )

    def check(self, model: ModelOptions) -> None:
        """Before the model loads: layer numbers against its depth where its config tells,
        and a warning when the profile was made for another model."""
        from siglip_dola.models import peek_depth

        depth = peek_depth(model.resolved_spec)
        if depth is not None:
            self.variant(depth)
        made_for = (self.profile or {}).get("model")
        if made_for and made_for not in (model.spec, model.resolved_spec):
            warn(
                f"profile {self.profile_path} was calibrated for {made_for}, not {model.spec}; "
                "its layers and alpha may not suit this model"
            )


def warn(message: str) -> None:
    """A warning line on stderr (the run goes on)."""
    print(f"siglip-dola: warning: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------- outputs


def add_output_options(p: argparse.ArgumentParser, default_name: str) -> None:
    g = p.add_argument_group("output")
    g.add_argument(
        "--output", type=Path, default=None, help=f"results JSON file (e.g. {default_name})"
    )
    g.add_argument("--plots", type=Path, default=None, help="folder for PNG plots")
    g.add_argument("--overwrite", action="store_true", help="replace existing output files")


@dataclass(frozen=True)
class OutputOptions:
    """Where results go, checked before any work: nothing is replaced without ``overwrite``."""

    output: Path | None = None
    plots: Path | None = None
    overwrite: bool = False

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, plot_files: Sequence[str] | None = None
    ) -> OutputOptions:
        """``plot_files``: the names ``--plots`` would receive (checked for earlier copies);
        ``None`` where the command makes no plots, which makes ``--plots`` an error."""
        from siglip_dola.io import check_output_folder, check_writable

        opts = cls(getattr(args, "output", None), getattr(args, "plots", None), args.overwrite)
        if opts.output is not None:
            check_writable(opts.output, opts.overwrite)
        if opts.plots is not None:
            if plot_files is None:
                raise UsageError("--plots: this command makes no plots")
            check_output_folder(opts.plots, plot_files, opts.overwrite)
        return opts


def report_skips(skipped: Sequence[Any]) -> None:
    """Skipped images on stderr: a count and the first 20 reasons."""
    if skipped:
        print(f"skipped {len(skipped)} image(s):", file=sys.stderr)
        for s in skipped[:20]:
            print(f"  {s.source}: {s.reason}", file=sys.stderr)
        if len(skipped) > 20:
            print(
                f"  ... and {len(skipped) - 20} more (all listed in the results JSON)",
                file=sys.stderr,
            )
