"""Calibration: pick bucket / layer / alpha on a labelled validation split; profile files.

A profile is plain JSON. When no DoLa variant beats the baseline on the validation metric,
the profile records that and its mode is ``off`` (DoLa stays off when it is loaded).
"""

from __future__ import annotations

import json
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


def build_profile(
    results: Sequence[VariantResult],
    *,
    model: str,
    tau: float,
    metric: str = "acc1",
    data_fingerprint: str,
    num_images: int,
    templates: Sequence[str] | None = None,
    top: int = 10,
) -> dict[str, Any]:
    """Profile of the best variant on the validation results (``off`` if none beats baseline)."""
    ranked = rank_variants(results, metric)
    baseline = next((r for r in results if r.variant.kind == "baseline"), None)
    if baseline is None:
        raise ValueError("calibration needs the baseline among the variants")
    best = ranked[0]
    improves = best.variant.kind != "baseline" and best.metrics[metric] > baseline.metrics[metric]
    chosen = best.variant if improves else Variant("baseline")
    return {
        "format": PROFILE_FORMAT,
        "model": model,
        "mode": "off" if not improves else chosen.kind,
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
            "selected": (best if improves else baseline).metrics,
            "dola_beats_baseline": improves,
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
