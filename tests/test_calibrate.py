"""Calibration: an honest error rate when no variant helps, the profile's record, round trips."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from siglip_dola.calibrate import (
    CalibrationProcedure,
    build_profile,
    calibrate,
    load_profile,
    rank_variants,
    save_profile,
)
from siglip_dola.metrics import VariantResult, metrics_of_ranks
from siglip_dola.stats import mcnemar_from_counts
from siglip_dola.variants import Variant, default_variants
from siglip_dola.zeroshot import evaluate_variants

variant_from_profile = Variant.from_profile
SPLIT = CalibrationProcedure("split")
HOLM = CalibrationProcedure("holm")


@pytest.fixture()
def one_thread():
    """Small tensors: on a shared machine, threads cost more than they give."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _results(correct: np.ndarray, labels: np.ndarray, variants: list[Variant]):
    """VariantResults from per-image top-1 outcomes [V, N] (rank 0 right, 1 wrong)."""
    ranks = torch.as_tensor(~correct).long()
    metrics = metrics_of_ranks(ranks, torch.as_tensor(labels), int(labels.max()) + 1)
    return [VariantResult(v, m, r) for v, m, r in zip(variants, metrics, ranks)]


def _grid(count: int) -> list[Variant]:
    """The baseline and ``count`` distinct variants (their kind plays no part here)."""
    return [Variant.baseline()] + [
        Variant.static(1 + i % 23, round(0.01 * (1 + i // 23), 2)) for i in range(count)
    ]


# ----------------------------------------------------------------------------- the null


def _null_outcomes(rng, n: int, v: int, correlated: bool) -> np.ndarray:
    """Baseline right with p = 0.85; each variant breaks 3% of its right answers and fixes
    as many wrong ones in expectation, so no variant is better than the baseline. Correlated:
    each image keeps the flip of one of 4 shared patterns with p = 0.7 (same marginals)."""
    acc, broken, keep, groups = 0.85, 0.03, 0.7, 4
    base = rng.random(n) < acc
    fixed = broken * acc / (1 - acc)

    def flips(rows: int) -> np.ndarray:
        u = rng.random((rows, n))
        return np.where(base, u < broken, u < fixed)

    f = flips(v)
    if correlated:
        f = np.where(rng.random((v, n)) < keep, flips(groups)[np.arange(v) % groups], f)
    return np.vstack([base[None], base ^ f])


def _old_procedure(results: list[VariantResult]) -> bool:
    """Before: the best of all variants, tested alone as if fixed in advance."""
    base = results[0]
    best = max(results, key=lambda r: r.metrics["acc1"])
    if best is base or best.metrics["acc1"] <= base.metrics["acc1"]:
        return False
    gains = int((best.correct & ~base.correct).sum())
    return mcnemar_from_counts(gains, int((base.correct & ~best.correct).sum())) < 0.05


REPS = 1000
NOMINAL = 0.05
# One-sided 99.9% binomial margin over REPS repetitions: 0.05 + 3.09 sqrt(0.05 * 0.95 / REPS)
BOUND = NOMINAL + 3.09 * math.sqrt(NOMINAL * (1 - NOMINAL) / REPS)  # = 0.0713


@pytest.mark.parametrize("correlated", [False, True], ids=["independent", "correlated"])
def test_calibration_switches_dola_on_at_most_at_the_nominal_rate_under_the_null(
    correlated, one_thread
):
    """500 validation images, 82 variants, each the baseline plus label-independent noise,
    1,000 seeded repetitions: the rate at which calibration switches DoLa on must stay within
    5% plus a one-sided 99.9% binomial margin (7.13%).

    Measured here (and by benchmarks/calibration_null.py on the same data): the old procedure
    (the winner of all variants tested alone, McNemar p < 0.05) switches DoLa on in 58.6% of
    the repetitions with independent and 41.6% with correlated variants - this test fails
    it, as asserted below; the split procedure (choose on half, confirm on the other half) in
    1.5% and 1.3%, Holm-Bonferroni over the 82 p-values in 1.6% and 0.8%.
    """
    rng = np.random.default_rng(1)
    n = 500
    labels = np.arange(n) % 10
    variants = _grid(82)
    on = {"old": 0, "split": 0, "holm": 0}
    for _ in range(REPS):
        results = _results(_null_outcomes(rng, n, 82, correlated), labels, variants)
        on["old"] += _old_procedure(results)
        on["split"] += calibrate(results, labels, procedure=SPLIT).switched_on
        on["holm"] += calibrate(results, labels, procedure=HOLM).switched_on
    rate = {k: c / REPS for k, c in on.items()}
    assert rate["split"] <= BOUND, rate
    assert rate["holm"] <= BOUND, rate
    assert rate["old"] > (0.5 if not correlated else 0.3) > BOUND, rate  # the test can fail


def test_a_real_gain_is_switched_on(one_thread):
    """Power, roughly: one variant fixes 8% of 600 images and breaks 1%, among 40 null ones."""
    rng = np.random.default_rng(3)
    n = 600
    labels = np.arange(n) % 10
    outcomes = _null_outcomes(rng, n, 40, correlated=False)
    good = outcomes[0].copy()
    wrong, right = np.flatnonzero(~good), np.flatnonzero(good)
    good[rng.choice(wrong, 48, replace=False)] = True
    good[rng.choice(right, 6, replace=False)] = False
    variants = _grid(41)
    results = _results(np.vstack([outcomes, good[None]]), labels, variants)
    for procedure in (SPLIT, HOLM):
        calibration = calibrate(results, labels, procedure=procedure)
        assert calibration.switched_on and calibration.chosen == variants[-1], procedure


# ----------------------------------------------------------------------------- the record


def _easy(n: int = 200, gain: int = 30, seed: int = 0):
    """Baseline 70% right; ``dynamic`` fixes ``gain`` wrong images; ``static`` breaks 10."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 4
    base = rng.random(n) < 0.7
    better = base.copy()
    better[rng.choice(np.flatnonzero(~base), gain, replace=False)] = True
    worse = base.copy()
    worse[rng.choice(np.flatnonzero(base), 10, replace=False)] = False
    variants = [
        Variant.baseline(),
        Variant.dynamic((18, 20, 22), 0.1, (17, 24)),
        Variant.static(20, 0.2),
        Variant.apc(0.1),
    ]
    return _results(np.vstack([base, better, worse, base]), labels, variants), labels


def test_split_record_sizes_p_values_and_decision():
    results, labels = _easy()
    calibration = calibrate(results, labels, procedure=SPLIT)
    record = calibration.record
    assert record["procedure"] == {
        "method": "split",
        "significance": 0.05,
        "confirm_fraction": 0.5,
        "seed": 0,
    }
    select, confirm = record["selection"], record["confirmation"]
    assert select["num_images"] + confirm["num_images"] == record["num_images"] == 200
    assert confirm["num_images"] == 100  # 50 per class of 4, half each
    assert select["best"]["variant"] == confirm["variant"] == "dynamic [17-24] a=0.1"
    assert confirm["fixed"] > 0 and confirm["broken"] == 0
    assert confirm["mcnemar_p_value"] == pytest.approx(
        mcnemar_from_counts(confirm["fixed"], confirm["broken"])
    )
    assert record["mcnemar_p_value"] == confirm["mcnemar_p_value"] < 0.05
    assert calibration.switched_on and record["decision"] == "on"
    assert record["best"]["variant"] == "dynamic [17-24] a=0.1"
    assert record["ranking"][0]["variant"] == "dynamic [17-24] a=0.1"
    # the same seed gives the same parts; another seed other parts
    again = calibrate(results, labels, procedure=SPLIT).record
    assert again["confirmation"] == confirm
    other = calibrate(results, labels, procedure=CalibrationProcedure(seed=1)).record
    assert other["confirmation"]["fixed"] != confirm["fixed"] or other["selection"] != select


def test_holm_record_has_every_p_value():
    results, labels = _easy()
    record = calibrate(results, labels, procedure=HOLM).record
    tests = {t["variant"]: t for t in record["tests"]}
    assert set(tests) == {"dynamic [17-24] a=0.1", "static L20 a=0.2", "apc-only a=0.1"}
    dyn = tests["dynamic [17-24] a=0.1"]
    assert (dyn["fixed"], dyn["broken"]) == (30, 0)
    assert dyn["p_value"] == pytest.approx(2 * 0.5**30)
    assert dyn["p_holm"] == pytest.approx(3 * dyn["p_value"])  # the smallest of 3
    assert tests["apc-only a=0.1"]["p_value"] == 1.0 and not tests["static L20 a=0.2"]["better"]
    assert record["decision"] == "on" and record["holm_p_value"] == dyn["p_holm"]


def test_no_gain_keeps_dola_off_under_both_procedures():
    results, labels = _easy(gain=0)
    for procedure in (SPLIT, HOLM):
        profile = build_profile(
            results,
            model="m",
            tau=1.0,
            labels=labels,
            data_fingerprint="x",
            num_images=200,
            procedure=procedure,
        )
        assert profile["mode"] == "off" and profile["validation"]["decision"] == "off"
        assert variant_from_profile(profile, 24) == Variant("baseline")
    split = build_profile(
        results, model="m", tau=1.0, labels=labels, data_fingerprint="x", num_images=200
    )
    assert split["validation"]["confirmation"]["variant"] is None  # nothing beat the baseline
    assert split["validation"]["reason"] == "no variant beats the baseline on the selection part"


def test_insignificant_gain_keeps_dola_off_and_significance_one_means_any_gain():
    results, labels = _easy(gain=4, seed=2)
    off = build_profile(
        results, model="m", tau=1.0, labels=labels, data_fingerprint="x", num_images=200
    )
    assert off["mode"] == "off"
    confirm = off["validation"]["confirmation"]
    assert confirm["variant"] == "dynamic [17-24] a=0.1" and confirm["mcnemar_p_value"] > 0.05
    any_gain = CalibrationProcedure(significance=1.0)
    on = build_profile(
        results,
        model="m",
        tau=1.0,
        labels=labels,
        data_fingerprint="x",
        num_images=200,
        procedure=any_gain,
    )
    assert on["mode"] == ("dynamic" if confirm["fixed"] > confirm["broken"] else "off")


def test_profile_round_trips_with_a_reference_variant(tmp_path):
    results, labels = _easy()
    results[1].variant = Variant.dynamic((18, 20, 22), 0.1, (17, 24), beta=0.5)
    profile = build_profile(
        results, model="hf:x", tau=0.01, labels=labels, data_fingerprint="abc", num_images=200
    )
    assert profile["mode"] == "dynamic" and profile["beta"] == 0.5
    assert profile["layers"] == [18, 20, 22] and profile["bucket"] == [17, 24]
    path = save_profile(profile, tmp_path / "p.json")
    loaded = load_profile(path)
    assert loaded == json.loads(path.read_text())
    assert variant_from_profile(loaded, 24) == results[1].variant
    results[1].variant = Variant.layer(20)
    profile = build_profile(
        results, model="hf:x", tau=0.01, labels=labels, data_fingerprint="abc", num_images=200
    )
    assert profile["mode"] == "layer" and variant_from_profile(profile, 24) == Variant.layer(20)


def test_ranking_by_other_metric_and_ties():
    a = VariantResult(
        Variant("baseline"), {"acc1": 0.5, "acc5": 1.0, "mean_per_class_recall": 0.5}, None
    )
    b = VariantResult(
        Variant("apc", 0.1), {"acc1": 0.5, "acc5": 1.0, "mean_per_class_recall": 0.5}, None
    )
    c = VariantResult(
        Variant("static", 0.1, (2,)), {"acc1": 0.4, "acc5": 1.0, "mean_per_class_recall": 0.9}, None
    )
    assert rank_variants([a, b, c])[0] is a  # tie -> earlier (baseline) first
    assert rank_variants([a, b, c], "mean_per_class_recall")[0] is c
    with pytest.raises(ValueError, match="unknown metric"):
        rank_variants([a], "f1")


def test_calibration_on_real_scores(one_thread):
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(6, 200, 5, generator=gen) * 3
    labels = torch.randint(0, 5, (200,), generator=gen).numpy()
    variants = default_variants(6, 3, (0.05, 0.5), None, references=True)
    results, _ = evaluate_variants(scores, range(1, 7), labels, variants, bootstrap=None)
    for procedure in (SPLIT, HOLM):
        profile = build_profile(
            results,
            model="m",
            tau=1.0,
            labels=labels,
            data_fingerprint="x",
            num_images=200,
            procedure=procedure,
        )
        best = max(r.metrics["acc1"] for r in results)
        assert profile["validation"]["ranking"][0]["acc1"] == best
        # the scores do not depend on the labels: nothing is switched on
        assert profile["mode"] == "off", procedure


def test_bad_input():
    results, labels = _easy()
    with pytest.raises(ValueError, match="unknown calibration procedure"):
        CalibrationProcedure("best")
    with pytest.raises(ValueError, match="significance must be in"):
        CalibrationProcedure(significance=0.0)
    with pytest.raises(ValueError, match="confirmation fraction"):
        CalibrationProcedure(confirm_fraction=1.0)
    with pytest.raises(ValueError, match="needs the baseline"):
        calibrate(results[1:], labels)
    with pytest.raises(ValueError, match="199 labels for 200 images"):
        calibrate(results, labels[:-1])
    with pytest.raises(ValueError, match="too few"):
        calibrate([r for r in _easy(n=200)[0]], np.arange(200) % 200)


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
    with pytest.raises(ValueError, match="profile mode 'early' unknown"):
        variant_from_profile({"format": "siglip-dola-profile/1", "mode": "early"}, 24)


def test_calibrate_command_records_the_procedure(tmp_path, capsys):
    from siglip_dola.cli import main

    profile = tmp_path / "holm.json"
    common = ["--quiet", "--no-cache", "--val-fraction", "0.25", "--alphas", "0.1"]
    argv = ["calibrate", *common, "--static-layers", "none", "--profile", str(profile)]
    assert main([*argv, "--procedure", "holm"]) == 0
    out = capsys.readouterr().out
    record = json.loads(profile.read_text())["validation"]
    assert record["procedure"] == {"method": "holm", "significance": 0.05}
    # baseline, 3 dynamic, APC-only, 23 layers, 3 ensembles, 6 milder contrasts
    assert len(record["tests"]) == 3 + 1 + 23 + 3 + 6 and "Holm-Bonferroni over 36 variants" in out
    # the split's settings reach the procedure (parsed only: no model loads)
    from siglip_dola.cli import build_parser
    from siglip_dola.cli.calibrate import CalibrateOptions

    args = build_parser().parse_args(
        [*argv, "--overwrite", "--confirm-fraction", "0.3", "--seed", "2", "--significance", "0.01"]
    )
    assert CalibrateOptions.from_args(args).procedure == CalibrationProcedure("split", 0.01, 0.3, 2)
    assert main([*argv, "--overwrite", "--confirm-fraction", "1.5"]) == 2
    assert "--confirm-fraction must be in (0, 1)" in capsys.readouterr().err
