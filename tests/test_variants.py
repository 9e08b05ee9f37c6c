"""Variants: constructors, profiles, grids, and Variant.score equal to the batched evaluation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from siglip_dola.dola import apc_only, apply_dola
from siglip_dola.metrics import label_ranks
from siglip_dola.variants import PROFILE_FORMAT, Variant, VariantGrid, default_variants
from siglip_dola.zeroshot import evaluate_variants

LAYERS = tuple(range(1, 9))


def _scores(seed: int, n: int = 40, classes: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(len(LAYERS), n, classes, generator=gen) * 3
    labels = torch.randint(0, classes, (n,), generator=gen)
    return scores, labels


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), classes=st.integers(2, 40))
def test_score_equals_the_batched_evaluation_for_every_kind(seed, classes):
    scores, labels = _scores(seed, classes=classes)
    variants = default_variants(8, 3, (0.0, 0.1, 0.6), None, apc=True)
    assert {v.kind for v in variants} == {"baseline", "dynamic", "static", "apc"}
    results, _ = evaluate_variants(scores, LAYERS, labels, variants)
    for variant, result in zip(variants, results):
        online = variant.score(scores, LAYERS)
        assert torch.equal(label_ranks(online.ranking, labels), result.label_ranks), variant.name
        if variant.kind in ("dynamic", "static"):
            assert torch.equal(online.chosen_layers, result.chosen_layers), variant.name
        else:
            assert online.chosen_layers is None and result.chosen_layers is None
        if variant.kind == "baseline":
            assert online.kept is None and result.kept_sizes is None
        else:
            assert torch.equal(online.kept.sum(-1), result.kept_sizes), variant.name


def test_score_is_the_dola_core():
    scores, _ = _scores(3)
    q_final = torch.softmax(scores[-1], -1)
    base = Variant.baseline().score(scores, LAYERS)
    assert torch.allclose(base.probs, q_final) and base.chosen_layers is None
    core = apply_dola(scores, layers=LAYERS, candidate_layers=(2, 4), alpha=0.2)
    dyn = Variant.dynamic((2, 4), 0.2).score(scores, LAYERS)
    assert torch.equal(dyn.probs, core.p_hat) and torch.equal(dyn.chosen_layers, core.chosen_layers)
    static = Variant.static(5, 0.2).score(scores, LAYERS)
    assert (static.chosen_layers == 5).all()
    p_hat, kept = apc_only(torch.log_softmax(scores[-1], -1), 0.2)
    apc = Variant.apc(0.2).score(scores, LAYERS)
    assert torch.allclose(apc.probs, p_hat) and torch.equal(apc.kept, kept)
    # kept classes rank first, the rest by q_N
    idx, probs = dyn.topk(3)
    assert idx.shape == (scores.shape[1], 3) and torch.equal(probs, dyn.probs.gather(-1, idx))


def test_score_checks_its_inputs():
    scores, _ = _scores(0)
    with pytest.raises(ValueError, match="not read out"):
        Variant.static(3).score(scores[-2:], (7, 8))
    with pytest.raises(ValueError, match=r"shape \[L=2"):
        Variant.baseline().score(scores, (7, 8))


def test_constructors_and_validation():
    assert Variant.dynamic((18, 20, 22), 0.1, (17, 24)).name == "dynamic [17-24] a=0.1"
    assert Variant.static(20, 0.2).name == "static L20 a=0.2"
    assert Variant.apc(0.05).name == "apc-only a=0.05"
    assert Variant.static(20).contrast_layers == (20,) and Variant.apc().contrast_layers == ()
    with pytest.raises(ValueError, match="alpha must be in"):
        Variant.apc(1.5)
    with pytest.raises(ValueError, match="one contrast layer"):
        Variant("static", 0.1, (1, 2))
    with pytest.raises(ValueError, match="needs its contrast"):
        Variant.dynamic(())
    with pytest.raises(ValueError, match="unknown variant kind"):
        Variant("early")
    with pytest.raises(ValueError, match=r"1\.\.23"):
        Variant.static(24).validated(24)


def test_choose_is_the_one_switch():
    assert Variant.choose(24) == Variant.dynamic((18, 20, 22), 0.1)
    assert Variant.choose(24, use_dola=False) == Variant.baseline()
    assert Variant.choose(24, static_layer=12, alpha=0.3) == Variant.static(12, 0.3)
    assert Variant.choose(12, candidate_layers=(2, 4)) == Variant.dynamic((2, 4))
    with pytest.raises(ValueError, match="not both"):
        Variant.choose(24, static_layer=3, candidate_layers=(2,))


@pytest.mark.parametrize(
    "variant",
    [
        Variant.baseline(),
        Variant.dynamic((18, 20, 22), 0.1, (17, 24)),
        Variant.static(20, 0.2),
        Variant.apc(0.05),
    ],
)
def test_from_profile_round_trips(variant):
    mode = "off" if variant.kind == "baseline" else variant.kind
    profile = {"format": PROFILE_FORMAT, "mode": mode, **variant.to_dict()}
    assert Variant.from_profile(profile, 24) == variant


def test_grid_builds_the_default_variants():
    grid = VariantGrid(3, (0.05, 0.1), "all", apc=True)
    assert grid.variants(24) == default_variants(24, 3, (0.05, 0.1), None, apc=True)
    assert [v.kind for v in VariantGrid(3, (0.1,), "none", apc=False).variants(24)] == [
        "baseline",
        "dynamic",
        "dynamic",
        "dynamic",
    ]
    statics = [v for v in VariantGrid(static_layers="20,22").variants(24) if v.kind == "static"]
    assert [v.layers for v in statics] == [(20,), (22,)]
    with pytest.raises(ValueError, match="alpha must be in"):
        VariantGrid(alphas=(0.1, 1.5))
    with pytest.raises(ValueError, match="buckets must be >= 1"):
        VariantGrid(num_buckets=0)
    with pytest.raises(ValueError, match=r"valid contrast range 1\.\.23"):
        VariantGrid(static_layers="24").variants(24)
