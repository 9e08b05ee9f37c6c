"""The split experiment: rows chosen on validation, reported on test; the verdict lines."""

from __future__ import annotations

import pytest
import torch

from siglip_dola.calibrate import CalibrationProcedure, build_profile
from siglip_dola.experiment import SplitExperiment, format_p_value
from siglip_dola.variants import default_variants
from siglip_dola.zeroshot import evaluate_variants

LAYERS = tuple(range(1, 9))


def _split(seed: int, n: int):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (n,), generator=gen)
    signal = torch.nn.functional.one_hot(labels, 5).float()
    scores = torch.stack(
        [0.25 * k * signal + torch.randn(n, 5, generator=gen) for k in range(1, 9)]
    )
    return scores, labels


def _experiment(procedure: CalibrationProcedure) -> SplitExperiment:
    variants = default_variants(8, 3, (0.1, 0.2), None, references=True)
    val_scores, val_labels = _split(0, 240)
    test_scores, test_labels = _split(1, 400)
    val, _ = evaluate_variants(val_scores, LAYERS, val_labels, variants)
    test, per_layer = evaluate_variants(test_scores, LAYERS, test_labels, variants)
    profile = build_profile(
        val,
        model="m",
        tau=1.0,
        labels=val_labels,
        data_fingerprint="x",
        num_images=240,
        procedure=procedure,
    )
    return SplitExperiment(
        "d",
        "m",
        ("{c}",),
        1.0,
        list(range(240)),
        list(range(400)),
        val,
        test,
        per_layer,
        profile,
        [],
    )


@pytest.mark.parametrize("method", ["split", "holm"])
def test_shown_rows_are_chosen_on_validation(method):
    exp = _experiment(CalibrationProcedure(method))
    rows = exp.shown(alpha=0.1)
    names = [r.variant.name for r in rows]
    assert names[:5] == [
        "baseline",
        "dynamic [1-2] a=0.1",
        "dynamic [3-5] a=0.1",
        "dynamic [6-8] a=0.1",
        "apc-only a=0.1",
    ]
    val_acc = {r.variant.name: r.metrics["acc1"] for r in exp.val_results}
    kinds = {
        "static": lambda v: v.kind == "static" and v.alpha == 0.1 and v.beta == 1,
        "layer": lambda v: v.kind == "layer",
        "ensemble": lambda v: v.kind == "ensemble",
        "beta": lambda v: v.kind == "dynamic" and v.alpha == 0.1 and v.beta != 1,
    }
    for k, (kind, keep) in enumerate(kinds.items()):
        pool = [r for r in exp.val_results if keep(r.variant)]
        best = max(pool, key=lambda r: val_acc[r.variant.name])  # first maximum
        assert names[5 + k] == best.variant.name, kind
        assert rows[5 + k] is exp.test_result(best.variant.name)  # reported on test
    assert exp.profile["validation"]["best"]["variant"] in names
    assert all(r in exp.test_results for r in rows)


def test_verdict_lines_name_sizes_flips_and_p_value():
    exp = _experiment(CalibrationProcedure("split"))
    text = exp.decision()
    select = exp.profile["validation"]["selection"]
    confirm = exp.profile["validation"]["confirmation"]
    assert f"chosen on {select['num_images']} images" in text
    assert select["num_images"] + confirm["num_images"] == 240
    assert confirm["variant"] == select["best"]["variant"] == "ensemble [6-8]+N"
    assert f"confirmed on the other {confirm['num_images']}?" in text
    assert f"({confirm['fixed']} fixed, {confirm['broken']} broken)" in text
    assert f"McNemar p = {format_p_value(confirm['mcnemar_p_value'])} -> yes" in text
    assert format_p_value(0.734) == "0.73" and format_p_value(0.00123) == "0.0012"
    holm = _experiment(CalibrationProcedure("holm")).decision()
    tested = (
        len(default_variants(8, 3, (0.1, 0.2), None, references=True)) - 1
    )  # every variant but the baseline
    assert f"Holm-Bonferroni over {tested} variants" in holm
    on_test = exp.validation_best_on_test()
    assert on_test.startswith("the candidate ensemble [6-8]+N on the test split: ")
    assert "95% CI" in on_test
