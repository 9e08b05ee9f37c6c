"""Calibrate on a validation split, report on the held-out rest: one readout pass for both.

This is the experiment ``siglip-dola demo`` runs on the bundled model and data, and one a
user can run on any labelled image set: split the images (seeded, class-stratified), read
every layer of every image out once, evaluate every variant (the references included) on
both splits, calibrate on validation (DoLa switched on only for a gain that survives the
calibration's error control, :mod:`siglip_dola.calibrate`) and show the test split, where
the rows chosen on validation (best static layer, best single layer, ...) are reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from siglip_dola.calibrate import CalibrationProcedure, build_profile
from siglip_dola.data import ImageSet, Skipped
from siglip_dola.metrics import VariantResult
from siglip_dola.readout.base import LoadedModel
from siglip_dola.report import classification_results
from siglip_dola.settings import RunSettings
from siglip_dola.variants import Variant
from siglip_dola.zeroshot import evaluate_dataset, evaluate_embeddings

__all__ = ["SplitExperiment", "format_p_value", "run_split_experiment"]


def format_p_value(p: float) -> str:
    """Two decimals, or two significant digits below 0.01."""
    return f"{p:.2g}" if p < 0.01 else f"{p:.2f}"


@dataclass
class SplitExperiment:
    """Every variant on both splits, and the calibration profile made on validation."""

    dataset: str
    model: str
    templates: tuple[str, ...]
    tau: float
    val_ids: list[int]
    test_ids: list[int]
    val_results: list[VariantResult]
    test_results: list[VariantResult]
    test_per_layer_acc1: dict[int, float]
    profile: dict[str, Any]
    skipped: list[Skipped]

    def test_result(self, name: str) -> VariantResult:
        for result in self.test_results:
            if result.variant.name == name:
                return result
        raise KeyError(f"no variant named {name!r}")

    def _best_on_validation(self, keep) -> VariantResult | None:
        """The test row of the variant, among those ``keep`` accepts, best on validation
        (acc1; ties: the earlier in the grid)."""
        val_acc = {r.variant.name: r.metrics["acc1"] for r in self.val_results}
        pool = [r for r in self.test_results if keep(r.variant)]
        return max(pool, key=lambda r: val_acc[r.variant.name]) if pool else None

    def shown(self, alpha: float = 0.1) -> list[VariantResult]:
        """Test rows worth a table: baseline, dynamic per bucket and APC-only at ``alpha``;
        chosen on validation: the best static layer at ``alpha``, the best single layer, the
        best ensemble and the best milder contrast (beta != 1) at ``alpha``; and the variant
        calibration put to the test."""
        rows = [
            r
            for r in self.test_results
            if r.variant.kind == "baseline"
            or (r.variant.kind == "dynamic" and r.variant.alpha == alpha and r.variant.beta == 1)
        ]
        rows += [r for r in self.test_results if r.variant == Variant.apc(alpha)]
        for keep in (
            lambda v: v.kind == "static" and v.alpha == alpha and v.beta == 1,
            lambda v: v.kind == "layer",
            lambda v: v.kind == "ensemble",
            lambda v: v.kind in ("dynamic", "static") and v.alpha == alpha and v.beta != 1,
        ):
            best = self._best_on_validation(keep)
            if best is not None:
                rows.append(best)
        candidate = self.test_result(self.profile["validation"]["best"]["variant"])
        if candidate not in rows:
            rows.append(candidate)
        return rows

    def decision(self) -> str:
        """The calibration verdict (two lines)."""
        validation = self.profile["validation"]
        metric = validation["metric"]
        best = validation["best"]
        if validation["procedure"]["method"] == "split":
            select, confirm = validation["selection"], validation["confirmation"]
            chosen = select["best"]
            gain = 100 * (chosen[metric] - select["baseline"][metric])
            first = (
                f"calibration on validation ({metric}): chosen on {select['num_images']} images: "
                f"{chosen['variant']}, {gain:+.2f} points vs baseline"
            )
            if confirm["variant"] is None:
                return f"{first}\n  nothing to confirm: DoLa stays off"
            change = 100 * (confirm["metrics"][metric] - confirm["baseline"][metric])
            verdict = (
                f"yes, {self.profile['variant']} is on"
                if self.profile["mode"] != "off"
                else "no, DoLa stays off"
            )
            return (
                f"{first}\n  confirmed on the other {confirm['num_images']}? {change:+.2f} points "
                f"({confirm['fixed']} fixed, {confirm['broken']} broken), McNemar p = "
                f"{format_p_value(confirm['mcnemar_p_value'])} -> {verdict}"
            )
        first = (
            f"calibration on validation ({metric}, Holm-Bonferroni over "
            f"{len(validation['tests'])} variants): best {best['variant']} "
            f"{100 * best[metric]:.2f}% vs baseline {100 * validation['baseline'][metric]:.2f}%"
        )
        if self.profile["mode"] != "off":
            p_holm = format_p_value(validation["holm_p_value"])
            return f"{first}\n  adjusted p = {p_holm} -> {best['variant']} is on"
        p_holm = validation.get("holm_p_value")
        shown_p = "" if p_holm is None else f"adjusted p = {format_p_value(p_holm)} "
        return f"{first}\n  {shown_p}-> DoLa stays off"

    def validation_best_on_test(self) -> str | None:
        """How the variant calibration tested does on the test split (None: the baseline)."""
        name = self.profile["validation"]["best"]["variant"]
        if name == "baseline":
            return None
        result = self.test_result(name)
        base = self.test_result("baseline").metrics["acc1"]
        text = (
            f"the candidate {name} on the test split: {100 * result.metrics['acc1']:.2f}% vs "
            f"baseline {100 * base:.2f}%"
        )
        comparison = result.vs_baseline
        if comparison is not None and comparison.acc1_change_ci is not None:
            low, high = comparison.acc1_change_ci
            text += (
                f" ({100 * comparison.acc1_change:+.2f} points, 95% CI {100 * low:+.2f} to "
                f"{100 * high:+.2f})"
            )
        return text

    def results_document(self) -> dict[str, Any]:
        """The results JSON of the test split, with the profile made on validation."""
        return classification_results(
            dataset=f"{self.dataset} (test split)",
            model=self.model,
            results=self.test_results,
            per_layer_acc1=self.test_per_layer_acc1,
            tau=self.tau,
            num_images=len(self.test_ids),
            skipped=self.skipped,
            templates=self.templates,
            extra={"calibrated_profile": self.profile},
        )


def run_split_experiment(
    model: LoadedModel,
    image_set: ImageSet,
    templates: Sequence[str],
    variants: Sequence[Variant],
    *,
    model_name: str,
    dataset_name: str,
    val_fraction: float = 0.25,
    seed: int = 0,
    settings: RunSettings | None = None,
    procedure: CalibrationProcedure | None = None,
) -> SplitExperiment:
    """Split, read out once, evaluate ``variants`` on both splits, calibrate on validation
    with ``procedure`` (default: choose and confirm on two parts of validation)."""
    val_ids, test_ids = image_set.split_indices(val_fraction, seed=seed)
    # One readout pass over every image and layer; both splits reuse it.
    evaluation = evaluate_dataset(
        model, image_set, templates, [Variant.baseline()], settings=settings
    )
    emb = evaluation.embeddings
    row_of = {int(i): row for row, i in enumerate(emb.indices)}

    num_classes = len(image_set.class_names)

    def evaluate_split(ids: list[int]):
        part = emb.subset([row_of[i] for i in ids if i in row_of])
        results, per_layer = evaluate_embeddings(
            part, evaluation.text_bank, evaluation.tau, variants, num_classes
        )
        return results, per_layer, part.labels

    val_results, _, val_labels = evaluate_split(val_ids)
    test_results, test_per_layer, _ = evaluate_split(test_ids)
    profile = build_profile(
        val_results,
        model=model_name,
        tau=evaluation.tau,
        labels=val_labels,
        data_fingerprint=image_set.subset(val_ids).fingerprint(),
        num_images=len(val_labels),
        procedure=procedure,
        num_classes=num_classes,
        templates=templates,
    )
    return SplitExperiment(
        dataset=dataset_name,
        model=model_name,
        templates=tuple(templates),
        tau=evaluation.tau,
        val_ids=val_ids,
        test_ids=test_ids,
        val_results=val_results,
        test_results=test_results,
        test_per_layer_acc1=test_per_layer,
        profile=profile,
        skipped=emb.skipped,
    )
