"""Zero-shot evaluation maths: every one-pass variant equals the DoLa core on its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from siglip_dola.dola import apc_only, apply_dola
from siglip_dola.embeddings import LayerEmbeddingSet
from siglip_dola.metrics import classification_metrics, label_ranks
from siglip_dola.variants import Variant, default_variants, ranking_scores
from siglip_dola.zeroshot import evaluate_embeddings, evaluate_variants, layer_scores


def reference_metrics(ranking: torch.Tensor, labels, num_classes: int) -> dict[str, float]:
    """acc1/acc5/mean per-class recall by a loop over a stable descending sort."""
    order = torch.sort(ranking, dim=-1, descending=True, stable=True).indices.tolist()
    labels = [int(x) for x in labels]
    pos = [row.index(label) for row, label in zip(order, labels)]
    recalls = []
    for c in range(num_classes):
        members = [p for p, label in zip(pos, labels) if label == c]
        if members:
            recalls.append(sum(p == 0 for p in members) / len(members))
    return {
        "acc1": sum(p == 0 for p in pos) / len(pos),
        "acc5": sum(p < 5 for p in pos) / len(pos),
        "mean_per_class_recall": float(np.mean(recalls)),
    }


@pytest.fixture()
def problem():
    gen = torch.Generator().manual_seed(0)
    depth, n, c, d = 8, 64, 7, 16
    layers = tuple(range(1, depth + 1))
    emb = torch.randn(depth, n, d, generator=gen)
    bank = torch.randn(c, d, generator=gen)
    labels = (emb[-1] @ bank.T).argmax(-1)
    labels[::4] = torch.randint(0, c, (len(labels[::4]),), generator=gen)  # not all correct
    return layers, emb, bank, labels.numpy()


def test_every_variant_equals_dola_core(problem):
    layers, emb, bank, labels = problem
    tau = 0.05
    scores = layer_scores(emb, bank, tau)
    variants = default_variants(8, 3, (0.0, 0.1, 0.5), None, apc=True, references=True)
    results, per_layer = evaluate_variants(scores, layers, labels, variants)
    assert len(results) == len(variants)
    q_final = torch.softmax(scores[-1], -1)
    for r in results:
        v = r.variant
        if v.kind == "baseline":
            expected = q_final
        elif v.kind == "layer":
            expected = scores[layers.index(v.layers[0])]
        elif v.kind == "ensemble":
            rows = [layers.index(m) for m in v.layers] + [len(layers) - 1]
            expected = torch.softmax(scores[rows].mean(0), -1)
        elif v.kind == "apc":
            p_hat, kept = apc_only(torch.log_softmax(scores[-1], -1), v.alpha)
            expected = ranking_scores(p_hat, kept, q_final)
        else:
            static = v.layers[0] if v.kind == "static" else None
            core = apply_dola(
                scores,
                layers=layers,
                alpha=v.alpha,
                beta=v.beta,
                static_layer=static,
                candidate_layers=None if static else v.layers,
            )
            expected = ranking_scores(core.p_hat, core.kept, q_final)
            assert torch.equal(r.chosen_layers, core.chosen_layers), v.name
            assert r.mean_kept == pytest.approx(core.kept.float().sum(-1).mean().item())
        order = torch.sort(expected, dim=-1, descending=True, stable=True).indices.tolist()
        positions = [row.index(label) for row, label in zip(order, labels.tolist())]
        assert r.label_ranks.tolist() == positions, v.name
        assert torch.equal(r.correct, torch.as_tensor(expected.argmax(-1).numpy() == labels))
        expected_metrics = reference_metrics(expected, labels, 7)
        assert r.metrics == pytest.approx(expected_metrics, rel=1e-12), v.name
    for i, layer in enumerate(layers):
        expected_acc = (scores[i].argmax(-1).numpy() == labels).mean()
        assert per_layer[layer] == pytest.approx(expected_acc)


def test_layer_scores_are_cosine_over_tau(problem):
    layers, emb, bank, _ = problem
    s = layer_scores(emb, bank, 0.5, block=10)
    zn = torch.nn.functional.normalize(emb, dim=-1)
    tn = torch.nn.functional.normalize(bank, dim=-1)
    assert torch.allclose(s, zn @ tn.T / 0.5, atol=1e-5)
    with pytest.raises(ValueError, match="embedding size mismatch"):
        layer_scores(emb, bank[:, :5], 1.0)


def test_metrics_by_hand():
    ranking = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.2, 0.7]])
    labels = torch.tensor([0, 1, 1, 0])
    m = classification_metrics(ranking, labels, 3)
    assert m["acc1"] == pytest.approx(0.5)
    assert m["acc5"] == pytest.approx(1.0)  # C = 3 < 5: every class is in the top 5
    # class 0: 1 of 2 right; class 1: 1 of 2 right
    assert m["mean_per_class_recall"] == pytest.approx(0.5)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 12).flatmap(
        lambda c: st.tuples(
            st.lists(st.lists(st.integers(0, 3), min_size=c, max_size=c), min_size=1, max_size=20),
            st.lists(st.integers(0, c - 1), min_size=20, max_size=20),
        )
    )
)
def test_label_ranks_are_positions_in_a_stable_sort(case):
    """Coarse integer scores make ties common: they go to the lower class index first."""
    rows, all_labels = case
    ranking = torch.tensor(rows, dtype=torch.float32)
    labels = torch.tensor(all_labels[: len(rows)])
    ranks = label_ranks(ranking, labels)
    order = torch.sort(ranking, dim=-1, descending=True, stable=True).indices
    expected = [row.index(label) for row, label in zip(order.tolist(), labels.tolist())]
    assert ranks.tolist() == expected
    assert ((ranks == 0) == (ranking.argmax(-1) == labels)).all()
    stacked = label_ranks(torch.stack([ranking, -ranking]), labels)  # [S, N, C] rankings
    assert stacked[0].tolist() == expected
    assert stacked[1].tolist() == label_ranks(-ranking, labels).tolist()
    assert classification_metrics(ranking, labels, ranking.shape[-1]) == pytest.approx(
        reference_metrics(ranking, labels, ranking.shape[-1]), rel=1e-12
    )


def test_label_outside_the_classes_is_an_error():
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        label_ranks(torch.rand(2, 3), torch.tensor([0, 3]))
    assert classification_metrics(torch.eye(3), np.array([0, 1, 2]))["acc1"] == 1.0


def test_ranking_puts_kept_classes_first():
    p_hat = torch.tensor([[0.0, 1.0, 0.0]])
    kept = torch.tensor([[False, True, False]])
    q = torch.tensor([[0.3, 0.6, 0.1]])
    assert ranking_scores(p_hat, kept, q).argsort(descending=True).tolist() == [[1, 0, 2]]


def test_default_variants_names_and_counts():
    v = default_variants(24, 3, (0.05, 0.1, 0.2), None, references=True)
    kinds = [x.kind for x in v]
    assert kinds.count("static") == 69 and kinds.count("apc") == 3
    # 9 DoLa (beta = 1) and 18 milder contrasts (beta 0.25, 0.5); 23 layers, 3 ensembles
    assert kinds.count("dynamic") == 9 + 18 and len([x for x in v if x.beta == 1.0]) == 82 + 26
    assert kinds.count("layer") == 23 and kinds.count("ensemble") == 3 and len(v) == 126
    assert v[:82] == default_variants(24, 3, (0.05, 0.1, 0.2), None)  # no references
    assert v[0] == Variant("baseline")
    names = {x.name for x in v}
    assert "dynamic [17-24] a=0.1" in names and "static L20 a=0.2" in names
    assert len(names) == len(v)


def test_missing_layer_is_an_error(problem):
    layers, emb, bank, labels = problem
    scores = layer_scores(emb[-2:], bank, 1.0)
    with pytest.raises(ValueError, match="not read out"):
        evaluate_variants(scores, (7, 8), labels, [Variant("static", 0.1, (3,))])


def test_numpy_embeddings_accepted(problem):
    layers, emb, bank, labels = problem
    a = layer_scores(emb.numpy(), bank, 1.0)
    b = layer_scores(emb, bank, 1.0)
    assert torch.allclose(a, b)
    assert np.isfinite(a.numpy()).all()


def test_blocked_evaluation_equals_one_block(problem):
    layers, emb, bank, labels = problem
    variants = default_variants(8, 3, (0.1, 0.3), None, references=True) + [
        Variant.static(3, 0.1, 0.5)
    ]
    assert {v.kind for v in variants} >= {"layer", "ensemble"}
    whole, per_layer = evaluate_variants(layer_scores(emb, bank, 0.1), layers, labels, variants)
    emb_set = LayerEmbeddingSet(layers, emb.numpy(), labels, np.arange(len(labels)))
    # 8 layers x 7 classes x 3 images per block: 22 blocks of uneven fill
    blocked, per_layer_b = evaluate_embeddings(
        emb_set, bank, 0.1, variants, max_block_elements=8 * 7 * 3
    )
    assert per_layer == per_layer_b
    for a, b in zip(whole, blocked):
        assert a.metrics == b.metrics and torch.equal(a.label_ranks, b.label_ranks)
        assert a.vs_baseline == b.vs_baseline, a.variant.name  # flips and bootstrap interval
        # the scores of a block differ from the whole product in float32 rounding only
        assert (a.mean_jsd is None) == (b.mean_jsd is None) == (a.variant.kind != "layer")
        if a.mean_jsd is not None:
            assert a.mean_jsd == pytest.approx(b.mean_jsd, rel=1e-5)
        assert (a.chosen_layers is None) == (b.chosen_layers is None)
        if a.chosen_layers is not None:
            assert torch.equal(a.chosen_layers, b.chosen_layers)
        assert (
            a.mean_kept == pytest.approx(b.mean_kept)
            if a.mean_kept is not None
            else b.mean_kept is None
        )


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 40),
    classes=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_metrics_equal_a_loop_by_hand(n, classes, seed):
    gen = torch.Generator().manual_seed(seed)
    ranking = torch.rand(n, classes, generator=gen)
    labels = torch.randint(0, classes, (n,), generator=gen)  # some classes may be absent
    top = ranking.topk(min(5, classes), dim=-1).indices  # continuous scores: no ties
    m = classification_metrics(ranking, labels, classes)
    hit1 = [int(top[i, 0]) == int(labels[i]) for i in range(n)]
    hit5 = [int(labels[i]) in top[i, :5].tolist() for i in range(n)]
    recalls = []
    for c in range(classes):
        members = [i for i in range(n) if int(labels[i]) == c]
        if members:
            recalls.append(sum(hit1[i] for i in members) / len(members))
    assert m["acc1"] == pytest.approx(sum(hit1) / n)
    assert m["acc5"] == pytest.approx(sum(hit5) / n)
    assert m["mean_per_class_recall"] == pytest.approx(sum(recalls) / len(recalls))
