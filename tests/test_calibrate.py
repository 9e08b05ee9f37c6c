"""Calibration picks the best validation variant; profiles round-trip."""

from __future__ import annotations

import json

import pytest
import torch

from siglip_dola.calibrate import (
    build_profile,
    load_profile,
    rank_variants,
    save_profile,
)
from siglip_dola.metrics import VariantResult
from siglip_dola.variants import Variant, default_variants
from siglip_dola.zeroshot import evaluate_variants

variant_from_profile = Variant.from_profile


def _result(variant: Variant, acc1: float) -> VariantResult:
    """100 images: the first acc1 * 100 right (label rank 0), the rest second (rank 1)."""
    ranks = (torch.arange(100) >= round(acc1 * 100)).long()
    return VariantResult(variant, {"acc1": acc1, "acc5": 1.0, "mean_per_class_recall": acc1}, ranks)


def test_picks_best_variant_and_round_trips(tmp_path):
    results = [
        _result(Variant("baseline"), 0.70),
        _result(Variant("dynamic", 0.1, (18, 20, 22), (17, 24)), 0.74),
        _result(Variant("static", 0.2, (20,)), 0.72),
        _result(Variant("apc", 0.1), 0.70),
    ]
    profile = build_profile(
        results, model="hf:x", tau=0.01, data_fingerprint="abc", num_images=100, significance=1.0
    )
    assert profile["mode"] == "dynamic" and profile["layers"] == [18, 20, 22]
    assert profile["bucket"] == [17, 24] and profile["alpha"] == 0.1
    assert profile["validation"]["dola_beats_baseline"] is True
    path = save_profile(profile, tmp_path / "p.json")
    loaded = load_profile(path)
    assert loaded == json.loads(path.read_text())
    assert variant_from_profile(loaded, 24) == results[1].variant


def test_no_gain_keeps_dola_off():
    results = [
        _result(Variant("baseline"), 0.8),
        _result(Variant("static", 0.1, (3,)), 0.8),
        _result(Variant("apc", 0.1), 0.79),
    ]
    profile = build_profile(results, model="m", tau=1.0, data_fingerprint="x", num_images=5)
    assert profile["mode"] == "off"
    assert variant_from_profile(profile, 24) == Variant("baseline")


def test_ranking_by_other_metric_and_ties():
    a = _result(Variant("baseline"), 0.5)
    b = _result(Variant("apc", 0.1), 0.5)
    c = VariantResult(
        Variant("static", 0.1, (2,)),
        {"acc1": 0.4, "acc5": 1.0, "mean_per_class_recall": 0.9},
        torch.zeros(1, dtype=torch.long),
    )
    assert rank_variants([a, b, c])[0] is a  # tie -> earlier (baseline) first
    assert rank_variants([a, b, c], "mean_per_class_recall")[0] is c
    with pytest.raises(ValueError, match="unknown metric"):
        rank_variants([a], "f1")


def test_calibration_on_real_scores_selects_argmax():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(6, 200, 5, generator=gen) * 3
    labels = torch.randint(0, 5, (200,), generator=gen).numpy()
    variants = default_variants(6, 3, (0.05, 0.5), None)
    results, _ = evaluate_variants(scores, range(1, 7), labels, variants)
    profile = build_profile(results, model="m", tau=1.0, data_fingerprint="x", num_images=200)
    best = max(r.metrics["acc1"] for r in results)
    assert profile["validation"]["selected"]["acc1"] == best
    if profile["mode"] != "off":
        chosen = next(r for r in results if r.variant.name == profile["variant"])
        assert chosen.metrics["acc1"] == best


def test_bad_profiles(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON at line 1"):
        load_profile(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_profile(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="not a siglip-dola profile"):
        variant_from_profile({"mode": "dynamic"}, 24)
    profile = {"format": "siglip-dola-profile/1", "mode": "static", "layers": [30], "alpha": 0.1}
    with pytest.raises(ValueError, match=r"valid contrast range 1\.\.23"):
        variant_from_profile(profile, 24)


def test_mcnemar_exact_values():
    from siglip_dola.stats import mcnemar_p_value

    variant = [True] * 10 + [False] * 2 + [True] * 50
    baseline = [False] * 10 + [True] * 2 + [True] * 50
    assert mcnemar_p_value(variant, baseline) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar_p_value([True, False], [True, False]) == 1.0
    assert mcnemar_p_value([True] * 3, [False] * 3) == pytest.approx(0.25)


def test_insignificant_gain_keeps_dola_off():
    base_rank = torch.zeros(100, dtype=torch.long)
    base_rank[:20] = 1  # baseline: 80 correct
    var_rank = base_rank.clone()
    var_rank[:2] = 0  # variant fixes two images: 82 correct, 2 discordant pairs
    results = [
        VariantResult(
            Variant("baseline"),
            {"acc1": 0.80, "acc5": 1.0, "mean_per_class_recall": 0.8},
            base_rank,
        ),
        VariantResult(
            Variant("static", 0.1, (5,)),
            {"acc1": 0.82, "acc5": 1.0, "mean_per_class_recall": 0.82},
            var_rank,
        ),
    ]
    off = build_profile(results, model="m", tau=1.0, data_fingerprint="x", num_images=100)
    assert off["mode"] == "off" and off["validation"]["mcnemar_p_value"] == pytest.approx(0.5)
    assert off["validation"]["best"]["variant"] == "static L5 a=0.1"
    on = build_profile(
        results,
        model="m",
        tau=1.0,
        data_fingerprint="x",
        num_images=100,
        significance=1.0,
    )
    assert on["mode"] == "static"
    var_rank[2:20] = 0  # now 20 gains, 0 losses: p = 2 / 2**20
    sig = build_profile(results, model="m", tau=1.0, data_fingerprint="x", num_images=100)
    assert sig["mode"] == "static" and sig["validation"]["mcnemar_p_value"] < 1e-5
