"""Results files, tables and plots: every variant's flips and bootstrap interval reported."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from siglip_dola.metrics import compare_with_baseline
from siglip_dola.report import classification_results, format_table, plot_layers, summary_rows
from siglip_dola.stats import Bootstrap
from siglip_dola.variants import Variant, default_variants
from siglip_dola.zeroshot import BOOTSTRAP, evaluate_variants

LAYERS = tuple(range(1, 9))


@pytest.fixture(scope="module")
def evaluated():
    gen = torch.Generator().manual_seed(4)
    n, classes = 300, 6
    labels = torch.randint(0, classes, (n,), generator=gen)
    # layers grow more informative with depth, so variants differ from the baseline both ways
    signal = torch.nn.functional.one_hot(labels, classes).float()
    scores = torch.stack(
        [0.4 * k * signal + torch.randn(n, classes, generator=gen) for k in range(1, 9)]
    )
    variants = default_variants(8, 3, (0.1, 0.3), None, references=True) + [
        Variant.static(3, 0.1, 0.5)
    ]
    results, per_layer = evaluate_variants(scores, LAYERS, labels, variants)
    return results, per_layer, labels


def test_flip_counts_add_up_to_the_accuracy_change_for_every_variant(evaluated):
    results, _, labels = evaluated
    n = len(labels)
    base = next(r for r in results if r.variant.kind == "baseline")
    base_right = round(base.metrics["acc1"] * n)
    assert {r.variant.kind for r in results} >= {"dynamic", "static", "apc", "layer", "ensemble"}
    for r in results:
        flips = r.vs_baseline
        assert flips.num_images == n
        # exactly: the same count over the same N
        assert r.metrics["acc1"] == (base_right + flips.fixed - flips.broken) / n, r.variant.name
        assert flips.acc1_change == (flips.fixed - flips.broken) / n
        assert flips.fixed == int((r.correct & ~base.correct).sum())
        assert flips.broken == int((base.correct & ~r.correct).sum())
    assert any(r.vs_baseline.fixed > 0 for r in results)
    assert any(r.vs_baseline.broken > 0 for r in results)
    assert (base.vs_baseline.fixed, base.vs_baseline.broken) == (0, 0)
    assert base.vs_baseline.acc1_change_ci == (0.0, 0.0)


def test_intervals_are_seeded(evaluated):
    results, _, _ = evaluated

    def intervals(bootstrap):
        copies = compare_with_baseline([copy.copy(r) for r in results], bootstrap)
        return [
            None if c.vs_baseline.acc1_change_ci is None else c.vs_baseline.acc1_change_ci
            for c in copies
        ]

    assert intervals(BOOTSTRAP) == [r.vs_baseline.acc1_change_ci for r in results]
    assert intervals(Bootstrap(seed=1)) != intervals(BOOTSTRAP)
    assert all(low <= high for low, high in intervals(BOOTSTRAP))
    assert intervals(None) == [None] * len(results)


def test_results_entries_carry_interval_and_flips(evaluated):
    results, per_layer, labels = evaluated
    doc = classification_results(
        dataset="d",
        model="m",
        results=results,
        per_layer_acc1=per_layer,
        tau=0.1,
        num_images=len(labels),
        skipped=[],
        templates=["a {c}."],
    )
    # clip_benchmark's keys exactly, then the dola block
    assert list(doc) == ["dataset", "model", "pretrained", "task", "metrics", "language", "dola"]
    for entry, r in zip(doc["dola"]["variants"], results):
        flips = entry["vs_baseline"]
        assert flips["fixed"] == r.vs_baseline.fixed and flips["broken"] == r.vs_baseline.broken
        assert flips["acc1_change_ci95"] == list(r.vs_baseline.acc1_change_ci)
        assert flips["bootstrap"] == {
            "method": "paired percentile bootstrap, images resampled with replacement",
            "resamples": 2000,
            "level": 0.95,
            "seed": 0,
        }
        assert entry["beta"] == r.variant.beta
        if r.variant.kind == "layer":
            assert entry["mean_jsd_to_final"] == pytest.approx(r.mean_jsd)


def test_table_shows_interval_and_flips(evaluated):
    results, _, _ = evaluated
    rows = summary_rows(results)
    lines = format_table(rows, title="t").splitlines()
    assert lines[0] == "t"
    assert lines[1].split() == [
        "variant",
        "acc1",
        "acc5",
        "mpcr",
        "d",
        "acc1",
        "95%",
        "CI",
        "fixed",
        "broken",
        "kept",
    ]
    body = dict(zip([r.variant.name for r in rows], lines[3:]))
    assert len(body) == len(rows) == len(lines) - 3
    assert body["baseline"].split()[1:] == [
        f"{100 * rows[0].metrics[k]:.2f}%" for k in ("acc1", "acc5", "mean_per_class_recall")
    ] + ["+0.00%"]  # no interval, flips or kept set for the baseline itself
    for r in rows[1:]:
        low, high = r.vs_baseline.acc1_change_ci
        line = body[r.variant.name]
        assert f"[{100 * low:+.2f}, {100 * high:+.2f}]" in line
        assert f" {r.vs_baseline.fixed} " in line and f" {r.vs_baseline.broken}" in line


def test_summary_rows_keep_dola_and_add_the_best_others(evaluated):
    results, _, _ = evaluated
    rows = summary_rows(results, limit=12)
    plain_dynamic = [r for r in results if r.variant.kind == "dynamic" and r.variant.beta == 1.0]
    assert all(r in rows for r in plain_dynamic)
    others = [
        r for r in rows if r.variant.kind not in ("baseline", "apc") and r not in plain_dynamic
    ]
    accs = [r.metrics["acc1"] for r in others]
    assert accs == sorted(accs, reverse=True) and len(rows) == 12


def test_plots_include_jsd_axis_and_flips(evaluated, tmp_path):
    results, per_layer, _ = evaluated
    written = plot_layers(tmp_path, per_layer, results, title="t")
    assert {p.name for p in written} == {
        "per_layer_accuracy.png",
        "chosen_layers.png",
        "kept_set_sizes.png",
        "flips_per_static_layer.png",
    }
    assert all(p.stat().st_size > 1000 for p in written)
    # without references or static variants: the two plots that need them are left out
    plain = [r for r in results if r.variant.kind in ("baseline", "dynamic", "apc")]
    names = {p.name for p in plot_layers(tmp_path / "plain", per_layer, plain)}
    assert names == {"per_layer_accuracy.png", "chosen_layers.png", "kept_set_sizes.png"}
    assert np.isfinite([r.mean_jsd for r in results if r.variant.kind == "layer"]).all()
