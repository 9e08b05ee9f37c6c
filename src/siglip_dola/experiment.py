"""Calibrate on a validation split, report on the held-out rest: one readout pass for both.

This is the experiment ``siglip-dola demo`` runs on the bundled model and data, and one a
user can run on any labelled image set: split the images (seeded, class-stratified), read
every layer of every image out once, evaluate every variant on both splits, calibrate on
validation (DoLa switched on only for a significant gain) and show the test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from siglip_dola.calibrate import build_profile
from siglip_dola.data import ImageSet, Skipped
from siglip_dola.metrics import VariantResult
from siglip_dola.readout.base import LoadedModel
from siglip_dola.report import classification_results
from siglip_dola.settings import RunSettings
from siglip_dola.variants import Variant
from siglip_dola.zeroshot import evaluate_dataset, evaluate_embeddings

__all__ = ["SplitExperiment", "run_split_experiment"]


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

    def shown(self, alpha: float = 0.1) -> list[VariantResult]:
        """Test rows worth a table: baseline, dynamic per bucket and APC-only at ``alpha``,
        the static layer best on validation, and the validation-best variant."""
        rows = [
            r
            for r in self.test_results
            if r.variant.kind == "baseline"
            or (r.variant.kind == "dynamic" and r.variant.alpha == alpha)
        ]
        rows += [r for r in self.test_results if r.variant == Variant.apc(alpha)]
        val_acc = {r.variant.name: r.metrics["acc1"] for r in self.val_results}
        statics = [
            r for r in self.test_results if r.variant.kind == "static" and r.variant.alpha == alpha
        ]
        if statics:
            rows.append(max(statics, key=lambda r: val_acc[r.variant.name]))
        best = self.test_result(self.profile["validation"]["best"]["variant"])
        if best not in rows:
            rows.append(best)
        return rows

    def decision(self) -> str:
        """The calibration verdict in one line."""
        validation = self.profile["validation"]
        best = validation["best"]
        if self.profile["mode"] != "off":
            verdict = f"DoLa on: {self.profile['variant']}"
        elif validation["dola_beats_baseline"]:
            verdict = (
                f"not significant (McNemar p = {validation['mcnemar_p_value']:.2f}), DoLa stays off"
            )
        else:
            verdict = "no variant beats the baseline, DoLa stays off"
        return (
            f"calibration on validation (acc1): best {best['variant']} {100 * best['acc1']:.2f}% "
            f"vs baseline {100 * validation['baseline']['acc1']:.2f}% -> {verdict}"
        )

    def validation_best_on_test(self) -> str | None:
        """How the validation-best variant does on the test split (None: it is the baseline)."""
        name = self.profile["validation"]["best"]["variant"]
        if name == "baseline":
            return None
        on_test = self.test_result(name).metrics["acc1"]
        base = self.test_result("baseline").metrics["acc1"]
        return (
            f"the validation-best variant on the test split: {100 * on_test:.2f}% vs baseline "
            f"{100 * base:.2f}%"
        )

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
) -> SplitExperiment:
    """Split, read out once, evaluate ``variants`` on both splits, calibrate on validation."""
    val_ids, test_ids = image_set.split_indices(val_fraction, seed=seed)
    # One readout pass over every image and layer; both splits reuse it.
    evaluation = evaluate_dataset(
        model, image_set, templates, [Variant.baseline()], settings=settings
    )
    emb = evaluation.embeddings
    row_of = {int(i): row for row, i in enumerate(emb.indices)}

    def evaluate_split(ids: list[int]) -> tuple[list[VariantResult], dict[int, float]]:
        part = emb.subset([row_of[i] for i in ids if i in row_of])
        return evaluate_embeddings(
            part, evaluation.text_bank, evaluation.tau, variants, len(image_set.class_names)
        )

    val_results, _ = evaluate_split(val_ids)
    test_results, test_per_layer = evaluate_split(test_ids)
    profile = build_profile(
        val_results,
        model=model_name,
        tau=evaluation.tau,
        data_fingerprint=image_set.subset(val_ids).fingerprint(),
        num_images=len(val_ids),
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
