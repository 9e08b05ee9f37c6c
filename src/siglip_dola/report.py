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
    "figure_png",
    "model_pretrained",
    "package_versions",
    "results_metadata",
    "run_metadata",
    "format_table",
    "plot_layers",
    "plot_retrieval",
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


def results_metadata(
    spec: str,
    source: Any,
    templates: Sequence[str] | None,
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A results file's metadata: class names and templates (clip_benchmark's ``classnames``
    / ``templates``), the data set's warnings, where its data came from (``spec`` and the
    source's ``metadata``), and what ran (:func:`run_metadata`)."""
    meta: dict[str, Any] = {}
    if getattr(source, "class_names", ()):
        meta["classnames"] = list(source.class_names)
    if templates:
        meta["templates"] = list(templates)
    meta["warnings"] = list(getattr(source, "warnings", []))
    meta["data"] = {"spec": spec, **getattr(source, "metadata", {})}
    meta["run"] = run_metadata(argv)
    return meta


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


def _interval(r: VariantResult) -> str:
    comparison = r.vs_baseline
    if comparison is None or comparison.acc1_change_ci is None:
        return ""
    low, high = comparison.acc1_change_ci
    return f"[{100 * low:+.2f}, {100 * high:+.2f}]"


def format_table(
    results: Sequence[VariantResult], title: str | None = None, limit: int | None = None
) -> str:
    """A fixed-width comparison table, baseline first, then variants as given.

    ``d acc1`` is the change of top-1 accuracy against the baseline in points, ``95% CI``
    its paired bootstrap interval, ``fixed`` / ``broken`` the images the variant gets right /
    wrong that the baseline gets wrong / right, ``kept`` the mean APC kept-set size."""
    base = next(r for r in results if r.variant.kind == "baseline").metrics["acc1"]
    rows = list(results[: limit or len(results)])
    width = max([26, *(len(r.variant.name) for r in rows)])
    lines = []
    if title:
        lines.append(title)
    header = (
        f"{'variant':<{width}} {'acc1':>7} {'acc5':>7} {'mpcr':>7} {'d acc1':>8} "
        f"{'95% CI':>16} {'fixed':>6} {'broken':>6} {'kept':>6}"
    )
    lines += [header, "-" * len(header)]
    for r in rows:
        m = r.metrics
        kept = f"{r.mean_kept:6.2f}" if r.mean_kept is not None else ""
        delta = m["acc1"] - base
        flips = r.vs_baseline
        if r.variant.kind == "baseline" or flips is None:
            fixed = broken = ""
        else:
            fixed, broken = str(flips.fixed), str(flips.broken)
        ci = "" if r.variant.kind == "baseline" else _interval(r)
        line = (
            f"{r.variant.name:<{width}} {100 * m['acc1']:6.2f}% {100 * m['acc5']:6.2f}% "
            f"{100 * m['mean_per_class_recall']:6.2f}% {100 * delta:+7.2f}% {ci:>16} "
            f"{fixed:>6} {broken:>6} {kept:>6}"
        )
        lines.append(line.rstrip())
    return "\n".join(lines)


def summary_rows(results: Sequence[VariantResult], limit: int = 12) -> list[VariantResult]:
    """The rows a summary table shows: baseline, the per-bucket dynamic DoLa variants,
    APC-only, then the best of the others (static, references) by acc1."""
    key = [
        r
        for r in results
        if r.variant.kind in ("baseline", "apc")
        or (r.variant.kind == "dynamic" and r.variant.beta == 1.0)
    ]
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


LAYER_PLOTS = (
    "per_layer_accuracy.png",
    "chosen_layers.png",
    "kept_set_sizes.png",
    "flips_per_static_layer.png",
)  # what plot_layers may write, checked for earlier copies before a run starts


def figure_png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes (every plot of the package alike); closes it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _png_writer(out_dir: Path) -> tuple[Any, Any, list[Path]]:
    """pyplot on the file-only backend, ``save(fig, name)`` that writes a figure atomically
    into ``out_dir`` and closes it, and the list of what it wrote."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        written.append(atomic_write_bytes(out_dir / name, figure_png(fig)))

    return plt, save, written


def plot_layers(
    out_dir: Path | str,
    per_layer_acc1: dict[int, float],
    results: Sequence[VariantResult],
    title: str = "",
) -> list[Path]:
    """PNGs: per-layer readout accuracy (with the mean JSD of each layer to the final one on a
    second axis, where the single-layer variants carry it), the chosen-layer histogram of
    dynamic mode, kept-set sizes, and the fixed / broken counts per static contrast layer."""
    plt, save, written = _png_writer(Path(out_dir))

    fig, ax = plt.subplots(figsize=(7, 3.6))
    layers = sorted(per_layer_acc1)
    ax.plot(
        layers,
        [100 * per_layer_acc1[k] for k in layers],
        marker="o",
        ms=3,
        label="readout accuracy",
    )
    base = next(r for r in results if r.variant.kind == "baseline").metrics["acc1"]
    ax.axhline(100 * base, color="gray", ls="--", lw=1, label="baseline (layer N)")
    ax.set(
        xlabel="layer l (readout head(norm(h_l)))",
        ylabel="top-1 accuracy (%)",
        title=title or "Per-layer readout accuracy",
    )
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()[0]
    jsd = {
        r.variant.layers[0]: r.mean_jsd
        for r in results
        if r.variant.kind == "layer" and r.mean_jsd is not None
    }
    if jsd:
        twin = ax.twinx()
        jsd_layers = sorted(jsd)
        twin.plot(
            jsd_layers,
            [jsd[k] for k in jsd_layers],
            color="tab:red",
            marker="s",
            ms=3,
            lw=1,
            label="mean JSD(q_N || q_l)",
        )
        twin.set_ylabel("mean JSD to the final layer (nats)", color="tab:red")
        twin.tick_params(axis="y", colors="tab:red")
        twin.set_ylim(bottom=0)
        handles += twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="center right", fontsize=8)
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

    # Fixed / broken per static contrast layer (DoLa's beta = 1), one pair of lines per alpha.
    statics: dict[float, list[VariantResult]] = {}
    for r in results:
        if r.variant.kind == "static" and r.variant.beta == 1.0 and r.vs_baseline is not None:
            statics.setdefault(r.variant.alpha, []).append(r)
    if statics:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for k, (alpha, group) in enumerate(sorted(statics.items())):
            group = sorted(group, key=lambda r: r.variant.layers[0])
            xs = [r.variant.layers[0] for r in group]
            color = f"C{k}"
            ax.plot(
                xs,
                [r.vs_baseline.fixed for r in group],
                color=color,
                marker="^",
                ms=3,
                label=f"fixed, alpha={alpha:g}",
            )
            ax.plot(
                xs,
                [r.vs_baseline.broken for r in group],
                color=color,
                marker="v",
                ms=3,
                ls="--",
                label=f"broken, alpha={alpha:g}",
            )
        n = next(iter(statics.values()))[0].vs_baseline.num_images
        ax.set(
            xlabel="static contrast layer M",
            ylabel=f"images (of {n})",
            title="Static DoLa vs baseline: fixed (baseline wrong, DoLa right) and broken",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        save(fig, "flips_per_static_layer.png")
    return written


RETRIEVAL_PLOTS = ("retrieval_recall.png", "retrieval_chosen_layers.png")


def plot_retrieval(out_dir: Path | str, results: dict[str, Any], title: str = "") -> list[Path]:
    """PNGs of a retrieval result (:func:`siglip_dola.retrieval.evaluate_retrieval`): recall@k
    of the baseline and of DoLa in both directions, and the contrast layers DoLa chose (image
    -> text; dynamic mode only)."""
    plt, save, written = _png_writer(Path(out_dir))

    keys = list(results["metrics"])
    baseline = [100 * results["metrics"][k] for k in keys]
    dola = [100 * results["dola"]["metrics"][k] for k in keys]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    positions = range(len(keys))
    ax.bar([x - 0.2 for x in positions], baseline, width=0.4, label="baseline")
    ax.bar([x + 0.2 for x in positions], dola, width=0.4, label=f"DoLa ({results['dola']['mode']})")
    ax.set_xticks(list(positions))
    ax.set_xticklabels([k.replace("_retrieval_recall@", " R@") for k in keys], fontsize=8)
    ax.set(ylabel="recall (%)", title=title or "Retrieval recall@k")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    save(fig, RETRIEVAL_PLOTS[0])
    histogram = results["dola"].get("chosen_layer_histogram") or {}
    if results["dola"]["mode"] == "dynamic" and histogram:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        ax.bar([int(k) for k in histogram], list(histogram.values()), width=0.8)
        ax.set(
            xlabel="contrast layer M chosen (argmax JSD)",
            ylabel="images",
            title="Retrieval, image -> text: chosen-layer histogram",
        )
        save(fig, RETRIEVAL_PLOTS[1])
    return written
