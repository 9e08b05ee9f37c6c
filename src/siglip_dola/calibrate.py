"""Calibration: pick bucket / layer / alpha on a labelled validation split; profile files.

A profile is plain JSON. When no DoLa variant beats the baseline on the validation metric,
the profile records that and its mode is ``off`` (DoLa stays off when it is loaded).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from siglip_dola.io import atomic_write_json
from siglip_dola.layers import validate_candidates
from siglip_dola.zeroshot import Variant, VariantResult

__all__ = [
    "PROFILE_FORMAT",
    "build_profile",
    "load_profile",
    "rank_variants",
    "save_profile",
    "variant_from_profile",
]

PROFILE_FORMAT = "siglip-dola-profile/1"
METRICS = ("acc1", "acc5", "mean_per_class_recall")


def rank_variants(results: Sequence[VariantResult], metric: str = "acc1") -> list[VariantResult]:
    """Best first by ``metric``; ties keep the given order (baseline and simpler variants first)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: expected one of {', '.join(METRICS)}")
    order = {id(r): i for i, r in enumerate(results)}
    return sorted(results, key=lambda r: (-r.metrics[metric], order[id(r)]))


def mcnemar_p_value(variant_correct: Sequence[bool], baseline_correct: Sequence[bool]) -> float:
    """Two-sided exact McNemar test: is the variant's per-image correctness different from the
    baseline's on the same images? (binomial test on the discordant pairs)."""
    gains = sum(1 for v, b in zip(variant_correct, baseline_correct) if v and not b)
    losses = sum(1 for v, b in zip(variant_correct, baseline_correct) if b and not v)
    n = gains + losses
    if n == 0:
        return 1.0
    k = min(gains, losses)
    log_half_n = n * math.log(0.5)
    tail = sum(
        math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n)
        for i in range(k + 1)
    )
    return min(1.0, 2.0 * tail)


def build_profile(
    results: Sequence[VariantResult],
    *,
    model: str,
    tau: float,
    metric: str = "acc1",
    data_fingerprint: str,
    num_images: int,
    significance: float = 0.05,
    templates: Sequence[str] | None = None,
    top: int = 10,
) -> dict[str, Any]:
    """Profile of the best variant on the validation results.

    DoLa is switched on only when the best variant beats the baseline on ``metric`` and, given
    its top-1 decisions differ from the baseline's significantly (exact McNemar test on the
    images, p < ``significance``; 1.0 disables the test). Otherwise the mode is ``off``.
    """
    if not 0.0 < significance <= 1.0:
        raise ValueError(f"significance must be in (0, 1], got {significance}")
    ranked = rank_variants(results, metric)
    baseline = next((r for r in results if r.variant.kind == "baseline"), None)
    if baseline is None:
        raise ValueError("calibration needs the baseline among the variants")
    best = ranked[0]
    beats = best.variant.kind != "baseline" and best.metrics[metric] > baseline.metrics[metric]
    p_value = None
    if beats:
        p_value = mcnemar_p_value(best.correct.tolist(), baseline.correct.tolist())
    significant = beats and (significance >= 1.0 or p_value < significance)
    chosen = best.variant if significant else Variant("baseline")
    return {
        "format": PROFILE_FORMAT,
        "model": model,
        "mode": chosen.kind if significant else "off",
        "variant": chosen.name,
        "bucket": list(chosen.bucket) if chosen.bucket else None,
        "layers": list(chosen.layers),
        "alpha": chosen.alpha,
        "tau": tau,
        "templates": list(templates) if templates is not None else None,
        "validation": {
            "metric": metric,
            "num_images": num_images,
            "baseline": baseline.metrics,
            "best": {"variant": best.variant.name, **best.metrics},
            "selected": (best if significant else baseline).metrics,
            "dola_beats_baseline": beats,
            "mcnemar_p_value": p_value,
            "significance": significance,
            "ranking": [{"variant": r.variant.name, **r.metrics} for r in ranked[:top]],
        },
        "data_fingerprint": data_fingerprint,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def variant_from_profile(profile: dict[str, Any], depth: int) -> Variant:
    """The variant a profile selects, validated against the model's depth."""
    if profile.get("format") != PROFILE_FORMAT:
        raise ValueError(
            f"not a siglip-dola profile (format {profile.get('format')!r}, expected {PROFILE_FORMAT})"
        )
    mode = profile.get("mode")
    if mode == "off":
        return Variant("baseline")
    if mode == "apc":
        return Variant("apc", float(profile["alpha"]))
    if mode in ("dynamic", "static"):
        layers = validate_candidates(tuple(int(x) for x in profile["layers"]), depth)
        bucket = tuple(profile["bucket"]) if profile.get("bucket") else None
        return Variant(mode, float(profile["alpha"]), layers, bucket)
    raise ValueError(f"profile mode {mode!r} unknown: expected off, dynamic, static or apc")


def save_profile(profile: dict[str, Any], path: Path | str) -> Path:
    return atomic_write_json(path, profile)


def load_profile(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    try:
        profile = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"profile {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"profile {path}: invalid JSON at line {exc.lineno}, column {exc.colno}"
        ) from None
    variant_from_profile(
        profile, depth=max([2, *[int(x) + 1 for x in profile.get("layers") or []]])
    )
    return profile
