"""Calibration: choose a variant on a labelled validation split, with an honest error rate.

Picking the best of ~100 variants on validation and then testing only that winner against
the baseline, as if it had been fixed in advance, switches DoLa on far more often than the
test's level when no variant helps (the winner's curse: about half the time with 82
independent variants at p < 0.05). Two procedures keep that rate at most the level:

* ``split`` (default): the validation images are split (seeded, class-stratified) into a
  *selection* part, where the best variant is chosen, and a held-out *confirmation* part,
  where that one variant is compared with the baseline (exact McNemar test). The
  confirmation images played no part in the choice, so the test's level holds however many
  variants were compared and however alike they are.
* ``holm``: every variant is compared with the baseline on all validation images (exact
  McNemar each) and the p-values are adjusted for their number (Holm-Bonferroni); DoLa is
  switched on with the best variant whose adjusted p-value is below the level. Every image
  counts, but the adjustment grows with the grid.

Either way, DoLa is switched on only with a variant that is better than the baseline where it
is tested; a profile records the procedure, the split sizes, every p-value used and the
decision. When nothing passes, the profile's mode is ``off`` (DoLa stays off when loaded).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from siglip_dola.io import atomic_write_json, read_json
from siglip_dola.metrics import METRICS, VariantResult, class_labels, metrics_of_ranks
from siglip_dola.stats import holm_bonferroni, mcnemar_from_counts, stratified_split
from siglip_dola.variants import PROFILE_FORMAT, Variant

__all__ = [
    "PROCEDURES",
    "PROFILE_FORMAT",
    "Calibration",
    "CalibrationProcedure",
    "build_profile",
    "calibrate",
    "load_profile",
    "rank_variants",
    "save_profile",
]

PROCEDURES = ("split", "holm")


def rank_variants(results: Sequence[VariantResult], metric: str = "acc1") -> list[VariantResult]:
    """Best first by ``metric``; ties keep the given order (baseline and simpler variants first)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: expected one of {', '.join(METRICS)}")
    order = {id(r): i for i, r in enumerate(results)}
    return sorted(results, key=lambda r: (-r.metrics[metric], order[id(r)]))


@dataclass(frozen=True)
class CalibrationProcedure:
    """How calibration decides (see the module docstring).

    ``method``: ``split`` or ``holm``; ``significance``: the level of the test (1 switches
    DoLa on for any gain where the candidate is tested); ``confirm_fraction``: the share of
    the validation images held out for confirmation (``split``); ``seed``: of that split.
    """

    method: str = "split"
    significance: float = 0.05
    confirm_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in PROCEDURES:
            raise ValueError(
                f"unknown calibration procedure {self.method!r}: expected one of "
                f"{', '.join(PROCEDURES)}"
            )
        if not 0.0 < self.significance <= 1.0:
            raise ValueError(f"significance must be in (0, 1], got {self.significance}")
        if not 0.0 < self.confirm_fraction < 1.0:
            raise ValueError(
                f"confirmation fraction must be in (0, 1), got {self.confirm_fraction}"
            )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "significance": self.significance}
        if self.method == "split":
            out.update(confirm_fraction=self.confirm_fraction, seed=self.seed)
        return out


@dataclass
class Calibration:
    """What calibration decided. ``candidate`` is the variant put to the test (``split``:
    the best on the selection part; ``holm``: the best whose adjusted p-value passes, else
    the best overall); ``chosen`` is it when ``switched_on``, else the baseline; ``record``
    is the profile's ``validation`` block."""

    candidate: VariantResult
    chosen: Variant
    switched_on: bool
    record: dict[str, Any]


def _hits(ranks: torch.Tensor, metric: str) -> torch.Tensor:
    """Per-image success under ``metric`` (top-5 for acc5, top-1 otherwise) of ranks [..., N]."""
    return ranks < (5 if metric == "acc5" else 1)


def _flip_counts(hits: torch.Tensor, base: torch.Tensor) -> tuple[list[int], list[int]]:
    """(gains, losses) of each row of hits [V, N] against the baseline's [N]."""
    return (hits & ~base).sum(-1).tolist(), (base & ~hits).sum(-1).tolist()


def _entry(result: VariantResult, metrics: dict[str, float]) -> dict[str, Any]:
    return {"variant": result.variant.name, **metrics}


def calibrate(
    results: Sequence[VariantResult],
    labels: Any,
    *,
    metric: str = "acc1",
    procedure: CalibrationProcedure | None = None,
    num_classes: int | None = None,
    top: int = 10,
) -> Calibration:
    """Decide on the validation results of every variant (their label ranks on the images
    whose ``labels`` are given, in the same order) whether a variant replaces the baseline."""
    procedure = procedure or CalibrationProcedure()
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: expected one of {', '.join(METRICS)}")
    results = list(results)
    base_index = next((i for i, r in enumerate(results) if r.variant.kind == "baseline"), None)
    if base_index is None:
        raise ValueError("calibration needs the baseline among the variants")
    ranks = torch.stack([r.label_ranks for r in results])  # [V, N]
    n = ranks.shape[1]
    num_classes = num_classes or int(np.max(np.asarray(labels), initial=0)) + 1
    labels_t = class_labels(labels, num_classes)
    if len(labels_t) != n:
        raise ValueError(f"{len(labels_t)} labels for {n} images")
    baseline = results[base_index]
    ranked = rank_variants(results, metric)
    record: dict[str, Any] = {
        "metric": metric,
        "num_images": n,
        "significance": procedure.significance,
        "procedure": procedure.to_dict(),
        "baseline": baseline.metrics,
    }
    if procedure.method == "split":
        candidate, on, details = _split(
            results, ranks, labels_t, num_classes, base_index, metric, procedure, top
        )
    else:
        candidate, on, details = _holm(results, ranks, base_index, metric, procedure)
    chosen = candidate.variant if on else Variant.baseline()
    record.update(details)
    record.update(
        best=_entry(candidate, candidate.metrics),
        selected=(candidate if on else baseline).metrics,
        decision="on" if on else "off",
        ranking=[_entry(r, r.metrics) for r in ranked[:top]],
    )
    return Calibration(candidate, chosen, on, record)


def _passes(p_value: float, significance: float) -> bool:
    return significance >= 1.0 or p_value < significance


def _split(
    results: list[VariantResult],
    ranks: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    base_index: int,
    metric: str,
    procedure: CalibrationProcedure,
    top: int,
) -> tuple[VariantResult, bool, dict[str, Any]]:
    confirm_ids, select_ids = stratified_split(labels, procedure.confirm_fraction, procedure.seed)
    if len(select_ids) == 0 or len(confirm_ids) == 0:
        raise ValueError(
            f"{len(labels)} validation images are too few to split into selection and "
            f"confirmation parts (confirmation fraction {procedure.confirm_fraction})"
        )
    select = torch.as_tensor(select_ids)
    confirm = torch.as_tensor(confirm_ids)
    on_select = metrics_of_ranks(ranks[:, select], labels[select], num_classes)
    order = sorted(range(len(results)), key=lambda i: (-on_select[i][metric], i))
    best = order[0]
    candidate = results[best]
    beats = best != base_index and on_select[best][metric] > on_select[base_index][metric]
    details: dict[str, Any] = {
        "selection": {
            "num_images": len(select_ids),
            "baseline": on_select[base_index],
            "best": _entry(candidate, on_select[best]),
            "ranking": [_entry(results[i], on_select[i]) for i in order[:top]],
        },
        "dola_beats_baseline": beats,
        "mcnemar_p_value": None,
    }
    confirmation: dict[str, Any] = {"num_images": len(confirm_ids), "variant": None}
    on = False
    if beats:
        pair = torch.tensor([best, base_index])
        on_confirm = metrics_of_ranks(ranks[pair][:, confirm], labels[confirm], num_classes)
        hits = _hits(ranks[pair][:, confirm], metric)
        gains, losses = _flip_counts(hits[:1], hits[1])
        p_value = mcnemar_from_counts(gains[0], losses[0])
        better = on_confirm[0][metric] > on_confirm[1][metric]
        on = better and _passes(p_value, procedure.significance)
        confirmation.update(
            variant=candidate.variant.name,
            metrics=on_confirm[0],
            baseline=on_confirm[1],
            fixed=gains[0],
            broken=losses[0],
            mcnemar_p_value=p_value,
            confirmed=on,
        )
        details["mcnemar_p_value"] = p_value
    details["confirmation"] = confirmation
    details["reason"] = (
        "confirmed on the held-out part"
        if on
        else "not confirmed on the held-out part"
        if beats
        else "no variant beats the baseline on the selection part"
    )
    return candidate, on, details


def _holm(
    results: list[VariantResult],
    ranks: torch.Tensor,
    base_index: int,
    metric: str,
    procedure: CalibrationProcedure,
) -> tuple[VariantResult, bool, dict[str, Any]]:
    hits = _hits(ranks, metric)
    gains, losses = _flip_counts(hits, hits[base_index])
    tested = [i for i in range(len(results)) if i != base_index]
    raw = [mcnemar_from_counts(gains[i], losses[i]) for i in tested]
    adjusted = holm_bonferroni(raw)
    base_value = results[base_index].metrics[metric]
    tests, passing = [], []
    for i, p_value, p_holm in zip(tested, raw, adjusted):
        better = results[i].metrics[metric] > base_value
        tests.append(
            {
                "variant": results[i].variant.name,
                "fixed": gains[i],
                "broken": losses[i],
                "p_value": p_value,
                "p_holm": p_holm,
                "better": better,
            }
        )
        if better and _passes(p_holm, procedure.significance):
            passing.append(i)
    by_metric = sorted(range(len(results)), key=lambda i: (-results[i].metrics[metric], i))
    pool = passing or by_metric
    best = min(pool, key=by_metric.index)
    candidate = results[best]
    on = bool(passing)
    beats = best != base_index and candidate.metrics[metric] > base_value
    test = tests[tested.index(best)] if best != base_index else None
    details = {
        "dola_beats_baseline": beats,
        "mcnemar_p_value": None if test is None else test["p_value"],
        "holm_p_value": None if test is None else test["p_holm"],
        "tests": tests,
        "reason": (
            "significant after Holm-Bonferroni over every variant"
            if on
            else f"no variant better than the baseline passes Holm-Bonferroni over {len(tested)}"
        ),
    }
    return candidate, on, details


def build_profile(
    results: Sequence[VariantResult],
    *,
    model: str,
    tau: float,
    labels: Any,
    metric: str = "acc1",
    data_fingerprint: str,
    num_images: int,
    significance: float = 0.05,
    procedure: CalibrationProcedure | None = None,
    num_classes: int | None = None,
    templates: Sequence[str] | None = None,
    top: int = 10,
) -> dict[str, Any]:
    """Profile of the variant :func:`calibrate` chooses on the validation results (``labels``
    of their images in order). ``significance`` is the level unless ``procedure`` is given.
    """
    if procedure is None:
        procedure = CalibrationProcedure(significance=significance)
    calibration = calibrate(
        results, labels, metric=metric, procedure=procedure, num_classes=num_classes, top=top
    )
    chosen = calibration.chosen
    record = calibration.record
    if record["num_images"] != num_images:
        raise ValueError(f"{num_images} validation images stated, {record['num_images']} scored")
    return {
        "format": PROFILE_FORMAT,
        "model": model,
        "mode": chosen.kind if calibration.switched_on else "off",
        "variant": chosen.name,
        "bucket": list(chosen.bucket) if chosen.bucket else None,
        "layers": list(chosen.layers),
        "alpha": chosen.alpha,
        "beta": chosen.beta,
        "tau": tau,
        "templates": list(templates) if templates is not None else None,
        "validation": record,
        "data_fingerprint": data_fingerprint,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def save_profile(profile: dict[str, Any], path: Path | str) -> Path:
    return atomic_write_json(path, profile)


def load_profile(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"profile {path} does not exist")
    profile = read_json(path, what="profile ")
    if not isinstance(profile, dict):
        raise ValueError(f"profile {path} is not a JSON object")
    Variant.from_profile(
        profile, depth=max([2, *[int(x) + 1 for x in profile.get("layers") or []]])
    )
    return profile
