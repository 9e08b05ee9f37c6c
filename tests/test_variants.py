"""Variants: constructors, profiles, grids, and Variant.score equal to the batched evaluation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from siglip_dola.dola import apc_only, apply_dola, jensen_shannon
from siglip_dola.metrics import label_ranks
from siglip_dola.variants import (
    KINDS,
    PROFILE_FORMAT,
    Variant,
    VariantGrid,
    default_variants,
    reference_variants,
)
from siglip_dola.zeroshot import evaluate_variants

LAYERS = tuple(range(1, 9))


def _scores(seed: int, n: int = 40, classes: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(len(LAYERS), n, classes, generator=gen) * 3
    labels = torch.randint(0, classes, (n,), generator=gen)
    return scores, labels


def _every_kind() -> list[Variant]:
    """The default grid with its references, plus static contrasts of strength beta != 1
    (not in the default grid) and a beta above 1."""
    variants = default_variants(
        8, 3, (0.0, 0.1, 0.6), None, apc=True, references=True, betas=(0.0, 0.5)
    )
    variants += [Variant.static(3, 0.1, 0.5), Variant.static(6, 0.6, 2.0)]
    variants += [Variant.dynamic((2, 4), 0.2, beta=1.5), Variant.ensemble((7,))]
    return variants


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), classes=st.integers(2, 40))
def test_score_equals_the_batched_evaluation_for_every_kind(seed, classes):
    scores, labels = _scores(seed, classes=classes)
    variants = _every_kind()
    assert {v.kind for v in variants} == set(KINDS)
    assert {v.beta for v in variants if v.kind == "static"} == {0.5, 1.0, 2.0}
    results, _ = evaluate_variants(scores, LAYERS, labels, variants, bootstrap=None)
    for variant, result in zip(variants, results):
        online = variant.score(scores, LAYERS)
        assert torch.equal(label_ranks(online.ranking, labels), result.label_ranks), variant.name
        if variant.kind in ("dynamic", "static"):
            assert torch.equal(online.chosen_layers, result.chosen_layers), variant.name
        else:
            assert online.chosen_layers is None and result.chosen_layers is None
        if variant.kind in ("baseline", "layer", "ensemble"):
            assert online.kept is None and result.kept_sizes is None
        else:
            assert torch.equal(online.kept.sum(-1), result.kept_sizes), variant.name


def test_reference_variants_equal_a_direct_computation():
    """Each reference from the per-layer scores by hand: q_l alone, softmax of the mean
    logits of the bucket's layers and N, and log q_N - beta log q_M on the APC set."""
    scores, labels = _scores(11, n=60, classes=9)
    refs = reference_variants(8, 3, (0.1,), (0.5,))
    assert [v.name for v in refs[:7]] == [f"layer L{m}" for m in range(1, 8)]
    assert [v.name for v in refs[7:10]] == [
        "ensemble [1-2]+N",
        "ensemble [3-5]+N",
        "ensemble [6-8]+N",
    ]
    assert [v.layers for v in refs[7:10]] == [(2,), (4,), (6,)]
    assert [v.name for v in refs[10:]] == [
        "dynamic [1-2] a=0.1 b=0.5",
        "dynamic [3-5] a=0.1 b=0.5",
        "dynamic [6-8] a=0.1 b=0.5",
    ]
    results, per_layer = evaluate_variants(scores, LAYERS, labels, refs + [Variant.baseline()])
    by_name = {r.variant.name: r for r in results}
    s64 = scores.double()
    q = torch.softmax(s64, -1)
    for m in range(1, 8):
        r = by_name[f"layer L{m}"]
        expected_correct = s64[m - 1].argmax(-1) == labels
        assert torch.equal(r.correct, expected_correct)
        assert r.metrics["acc1"] == pytest.approx(per_layer[m])
        expected_jsd = jensen_shannon(q[-1], q[m - 1]).mean().item()
        assert r.mean_jsd == pytest.approx(expected_jsd, rel=1e-5)
    for bucket_layers, name in zip([(2,), (4,), (6,)], ["[1-2]", "[3-5]", "[6-8]"]):
        rows = [m - 1 for m in bucket_layers] + [7]
        mean_logits = s64[rows].mean(0)
        r = by_name[f"ensemble {name}+N"]
        assert torch.equal(r.correct, mean_logits.argmax(-1) == labels)
    # beta: per image the candidate with the largest JSD, then log q_N - 0.5 log q_M on V_head
    alpha, beta = 0.1, 0.5
    for cands, name in zip([(1, 2), (3, 4, 5), (6, 7)], ["[1-2]", "[3-5]", "[6-8]"]):
        cands = tuple(m for m in cands if m % 2 == 0) or cands
        r = by_name[f"dynamic {name} a=0.1 b=0.5"]
        divergence = torch.stack([jensen_shannon(q[-1], q[m - 1]) for m in cands], -1)
        chosen = torch.tensor(cands)[divergence.argmax(-1)]
        assert torch.equal(r.chosen_layers, chosen)
        log_m = torch.log(q[chosen - 1, torch.arange(60)])
        logits = torch.log(q[-1]) - beta * log_m
        keep = q[-1] >= alpha * q[-1].max(-1, keepdim=True).values
        p_hat = torch.softmax(logits.masked_fill(~keep, -torch.inf), -1)
        ranking = torch.where(keep, 1 + p_hat, q[-1])
        assert torch.equal(r.correct, ranking.argmax(-1) == labels), name


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
    with pytest.raises(ValueError, match="has one layer"):
        Variant("static", 0.1, (1, 2))
    with pytest.raises(ValueError, match="needs its layer"):
        Variant.dynamic(())
    with pytest.raises(ValueError, match="unknown variant kind"):
        Variant("early")
    with pytest.raises(ValueError, match=r"1\.\.23"):
        Variant.static(24).validated(24)


def test_reference_constructors_and_names():
    assert Variant.layer(20).name == "layer L20" and Variant.layer(20).readout_layers == (20,)
    assert Variant.layer(20).contrast_layers == () and Variant.layer(20).is_reference
    ens = Variant.ensemble((18, 20, 22), (17, 24))
    assert ens.name == "ensemble [17-24]+N" and ens.readout_layers == (18, 20, 22)
    assert Variant.ensemble((2, 4)).name == "ensemble 2,4+N"
    # beta = 1 is DoLa and keeps its name and identity
    assert Variant.dynamic((18, 20, 22), 0.1, (17, 24), beta=1.0) == Variant(
        "dynamic", 0.1, (18, 20, 22), (17, 24)
    )
    assert Variant.dynamic((18, 20, 22), 0.1, (17, 24), 0.5).name == "dynamic [17-24] a=0.1 b=0.5"
    assert Variant.static(20, 0.2, 0.25).name == "static L20 a=0.2 b=0.25"
    assert not Variant.static(20, 0.2).is_reference and Variant.static(20, 0.2, 0.5).is_reference
    assert Variant.static(20, 0.2, 0.5).to_dict()["beta"] == 0.5
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        Variant.static(20, 0.1, -1.0)
    with pytest.raises(ValueError, match="only dynamic and static"):
        Variant("layer", 0.0, (3,), None, 0.5)
    with pytest.raises(ValueError, match="has one layer"):
        Variant("layer", 0.0, (3, 4))
    with pytest.raises(ValueError, match="no APC alpha"):
        Variant("ensemble", 0.1, (3,))
    with pytest.raises(ValueError, match=r"1\.\.23"):
        Variant.layer(24).validated(24)


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
        Variant.layer(20),
        Variant.ensemble((18, 20, 22), (17, 24)),
        Variant.dynamic((18, 20, 22), 0.1, (17, 24), 0.5),
    ],
)
def test_from_profile_round_trips(variant):
    mode = "off" if variant.kind == "baseline" else variant.kind
    profile = {"format": PROFILE_FORMAT, "mode": mode, **variant.to_dict()}
    assert Variant.from_profile(profile, 24) == variant


def test_grid_builds_the_default_variants():
    grid = VariantGrid(3, (0.05, 0.1), "all", apc=True)
    assert grid.variants(24) == default_variants(24, 3, (0.05, 0.1), None, references=True)
    with_refs = grid.variants(24)
    plain = VariantGrid(3, (0.05, 0.1), "all", apc=True, references=False).variants(24)
    assert with_refs[: len(plain)] == plain  # the references come after, in their own order
    kinds = [v.kind for v in with_refs[len(plain) :]]
    assert kinds.count("layer") == 23 and kinds.count("ensemble") == 3
    assert kinds.count("dynamic") == 3 * 2 * 2  # buckets x alphas x betas (0.25, 0.5)
    assert len({v.name for v in with_refs}) == len(with_refs)
    assert VariantGrid(betas=(1.0,)).variants(24) == [
        v for v in VariantGrid().variants(24) if v.beta == 1.0
    ]
    with pytest.raises(ValueError, match="beta"):
        VariantGrid(betas=(-0.5,))
    assert [
        v.kind for v in VariantGrid(3, (0.1,), "none", apc=False, references=False).variants(24)
    ] == [
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
