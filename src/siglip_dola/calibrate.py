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
from siglip_dola.metrics import METRICS, VariantResult
from siglip_dola.stats import mcnemar_p_value
from siglip_dola.variants import PROFILE_FORMAT, Variant

__all__ = [
    "PROFILE_FORMAT",
    "build_profile",
    "load_profile",
    "rank_variants",
    "save_profile",
]


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
    chosen = best.variant if significant else Variant.baseline()
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
    if not isinstance(profile, dict):
        raise ValueError(f"profile {path} is not a JSON object")
    Variant.from_profile(
        profile, depth=max([2, *[int(x) + 1 for x in profile.get("layers") or []]])
    )
    return profile
