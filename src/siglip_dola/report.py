"""Results as plain JSON (clip_benchmark's shape plus a ``dola`` block), tables and plots."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from siglip_dola.data import Skipped
from siglip_dola.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from siglip_dola.metrics import VariantResult

if TYPE_CHECKING:  # pragma: no cover
    from siglip_dola.zeroshot import Predictions

__all__ = [
    "LANGUAGE",
    "classification_results",
    "model_pretrained",
    "package_versions",
    "run_metadata",
    "format_table",
    "plot_layers",
    "summary_rows",
    "write_predictions",
]


LANGUAGE = "en"  # clip_benchmark's ``language`` of the prompts
VERSIONED_PACKAGES = (
    "siglip-dola",
    "torch",
    "torchvision",
    "transformers",
    "open_clip_torch",
    "timm",
    "numpy",
    "pillow",
    "webdataset",
    "datasets",
)


def model_pretrained(spec: str) -> str:
    """clip_benchmark's ``pretrained`` for a model spec: the weights it names (open_clip's
    pretrained tag, a hub id, a checkpoint path; ``bundled`` for the demo model)."""
    from siglip_dola.models import parse_spec

    if spec == "bundled":
        return spec
    try:
        parsed = parse_spec(spec)
    except ValueError:
        return spec
    if parsed.weights:
        return parsed.weights
    return "" if parsed.scheme == "open_clip" else parsed.target


def package_versions() -> dict[str, str | None]:
    """Installed versions of Python and the packages a figure depends on (None: absent)."""
    import platform
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_metadata(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """What ran, when, with which packages: ``{command, time, versions}``."""
    import sys
    from datetime import datetime, timezone

    args = list(sys.argv[1:] if argv is None else argv)
    return {
        "command": ["siglip-dola", *args],
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
    }


def classification_results(
    *,
    dataset: str,
    model: str,
    results: Sequence[VariantResult],
    per_layer_acc1: dict[int, float],
    tau: float,
    num_images: int,
    skipped: Sequence[Skipped],
    templates: Sequence[str],
    extra: dict[str, Any] | None = None,
    pretrained: str | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """clip_benchmark's keys exactly (``dataset``, ``model``, ``pretrained``, ``task``,
    ``metrics``, ``language``; ``metrics`` are the baseline's, as clip_benchmark reports
    them), the ``dola`` block (every variant, per-layer readout accuracy, skipped images),
    then ``meta`` (class names, templates, warnings, data and run metadata) at the top
    level. ``pretrained`` defaults to the weights ``model`` names."""
    baseline = next(r for r in results if r.variant.kind == "baseline")
    return {
        "dataset": dataset,
        "model": model,
        "pretrained": model_pretrained(model) if pretrained is None else pretrained,
        "task": "zeroshot_classification",
        "metrics": baseline.metrics,
        "language": LANGUAGE,
        "dola": {
            "tau": tau,
            "num_images": num_images,
            "num_templates": len(templates),
            "variants": [r.to_dict() for r in results],
            "per_layer_acc1": {str(k): v for k, v in per_layer_acc1.items()},
            "skipped": {"count": len(skipped), "items": [s.__dict__ for s in skipped]},
            **(extra or {}),
        },
        **(meta or {}),
    }


def format_table(
    results: Sequence[VariantResult], title: str | None = None, limit: int | None = None
) -> str:
    """A fixed-width comparison table, baseline first, then variants as given."""
    base = next(r for r in results if r.variant.kind == "baseline").metrics["acc1"]
    lines = []
    if title:
        lines.append(title)
    header = f"{'variant':<26} {'acc1':>7} {'acc5':>7} {'mpcr':>7} {'d acc1':>8} {'kept':>6}"
    lines += [header, "-" * len(header)]
    for r in results[: limit or len(results)]:
        m = r.metrics
        kept = f"{r.mean_kept:6.2f}" if r.mean_kept is not None else f"{'':>6}"
        delta = m["acc1"] - base
        lines.append(
            f"{r.variant.name:<26} {100 * m['acc1']:6.2f}% {100 * m['acc5']:6.2f}% "
            f"{100 * m['mean_per_class_recall']:6.2f}% {100 * delta:+7.2f}% {kept}"
        )
    return "\n".join(lines)


def summary_rows(results: Sequence[VariantResult], limit: int = 12) -> list[VariantResult]:
    """The rows a summary table shows: baseline, the per-bucket dynamic variants, APC-only,
    then the best of the others by acc1."""
    key = [r for r in results if r.variant.kind in ("baseline", "dynamic", "apc")]
    others = sorted((r for r in results if r not in key), key=lambda r: -r.metrics["acc1"])
    return key + others[: max(0, limit - len(key))]


PREDICTION_FORMATS = (".json", ".csv")


def write_predictions(path: Path | str, predictions: Predictions, model: str) -> Path:
    """Predictions as JSON (``{model, mode, predictions, skipped}``) or CSV (one row per
    image: prediction, its p, the contrast layer, the top-k as ``class:p;...``), by suffix."""
    path = Path(path)
    mode = predictions.variant.name if predictions.variant.uses_dola else "baseline (DoLa off)"
    if path.suffix.lower() == ".json":
        return atomic_write_json(
            path,
            {
                "model": model,
                "mode": mode,
                "predictions": [p.to_dict() for p in predictions.items],
                "skipped": [s.__dict__ for s in predictions.skipped],
            },
        )
    if path.suffix.lower() != ".csv":
        raise ValueError(f"predictions file must end in .json or .csv, got {path}")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "prediction", "p", "contrast_layer", "top_k"])
    for p in predictions.items:
        writer.writerow(
            [
                p.source,
                p.label,
                f"{p.top_k[0][1]:.6f}",
                "" if p.contrast_layer is None else p.contrast_layer,
                ";".join(f"{c}:{prob:.6f}" for c, prob in p.top_k),
            ]
        )
    return atomic_write_text(path, buffer.getvalue())


def plot_layers(
    out_dir: Path | str,
    per_layer_acc1: dict[int, float],
    results: Sequence[VariantResult],
    title: str = "",
) -> list[Path]:
    """Per-layer readout accuracy, chosen-layer histogram and kept-set sizes as PNGs."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written = []

    def save(fig, name: str) -> None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(atomic_write_bytes(out_dir / name, buffer.getvalue()))

    fig, ax = plt.subplots(figsize=(7, 3.6))
    layers = sorted(per_layer_acc1)
    ax.plot(layers, [100 * per_layer_acc1[k] for k in layers], marker="o", ms=3)
    base = next(r for r in results if r.variant.kind == "baseline").metrics["acc1"]
    ax.axhline(100 * base, color="gray", ls="--", lw=1, label="baseline (layer N)")
    ax.set(
        xlabel="layer l (readout head(norm(h_l)))",
        ylabel="top-1 accuracy (%)",
        title=title or "Per-layer readout accuracy",
    )
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    save(fig, "per_layer_accuracy.png")

    # The contrast layer does not depend on alpha: one histogram per bucket is enough.
    dynamic = {}
    for r in results:
        if r.variant.kind == "dynamic" and r.chosen_layers is not None:
            dynamic.setdefault(r.variant.layers, r)
    if dynamic:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for r in dynamic.values():
            chosen = r.chosen_layers.tolist()
            ax.bar(
                r.variant.layers,
                [chosen.count(layer) for layer in r.variant.layers],
                width=0.8,
                label=r.variant.name.rsplit(" a=", 1)[0],
            )
        ax.set(
            xlabel="contrast layer M chosen (argmax JSD)",
            ylabel="images",
            title="Dynamic mode: chosen-layer histogram",
        )
        ax.legend(fontsize=8)
        save(fig, "chosen_layers.png")

    # The kept set depends only on alpha (and q_N): one distribution per alpha.
    by_alpha = {}
    for r in results:
        if r.kept_sizes is not None:
            by_alpha.setdefault(r.variant.alpha, r.kept_sizes)
    if by_alpha:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        top = int(max(int(k.max()) for k in by_alpha.values()))
        bins = [x + 0.5 for x in range(top + 1)]
        for alpha, sizes in sorted(by_alpha.items()):
            ax.hist(
                sizes.tolist(),
                bins=bins,
                histtype="step",
                lw=1.5,
                label=f"alpha={alpha:g} (mean {sizes.float().mean().item():.2f})",
            )
        ax.set(
            xlabel="kept-set size |V_head| per image", ylabel="images", title="APC kept-set sizes"
        )
        ax.legend(fontsize=8)
        save(fig, "kept_set_sizes.png")
    return written
