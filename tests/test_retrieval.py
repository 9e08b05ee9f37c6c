"""Retrieval: recall@k against brute force, K = all equals full DoLa, blocking changes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from siglip_dola.dola import apply_dola
from siglip_dola.retrieval import (
    image_to_text,
    load_retrieval_set,
    recall_at_k,
    retrieval_metrics,
    text_to_image,
)
from siglip_dola.variants import Variant, ranking_scores

LAYERS = (2, 4, 6)


def _problem(seed=0, n_images=30, caps_per_image=(1, 3), dim=12):
    gen = torch.Generator().manual_seed(seed)
    owners = []
    for i in range(n_images):
        owners += [i] * int(
            torch.randint(caps_per_image[0], caps_per_image[1] + 1, (1,), generator=gen)
        )
    owners = torch.tensor(owners)
    base = torch.randn(n_images, dim, generator=gen)
    layers = torch.stack(
        [base + torch.randn(n_images, dim, generator=gen) * s for s in (2.0, 1.0, 0.0)]
    )
    text = base[owners] + torch.randn(len(owners), dim, generator=gen) * 1.5
    return layers, text, owners


def _brute_recall(scores: torch.Tensor, positives, k):
    hits = 0
    for q in range(scores.shape[0]):
        order = sorted(range(scores.shape[1]), key=lambda c: -float(scores[q, c]))[:k]
        hits += any(c in positives[q] for c in order)
    return hits / scores.shape[0]


def test_recall_against_brute_force_with_several_captions():
    layers, text, owners = _problem()
    zn = torch.nn.functional.normalize(layers[-1], dim=-1)
    tn = torch.nn.functional.normalize(text, dim=-1)
    i2t, lists = image_to_text(layers, LAYERS, text, 0.1, shortlist=10)
    t2i = text_to_image(layers, LAYERS, text, 0.1, lists, shortlist=10)
    caps = [set(torch.nonzero(owners == i).flatten().tolist()) for i in range(layers.shape[1])]
    imgs = [{int(o)} for o in owners]
    for k in (1, 5, 10):
        assert recall_at_k(i2t.baseline_top, [list(c) for c in caps])[k] == pytest.approx(
            _brute_recall(zn @ tn.T, caps, k)
        )
        assert recall_at_k(t2i.baseline_top, [list(c) for c in imgs])[k] == pytest.approx(
            _brute_recall(tn @ zn.T, imgs, k)
        )


def test_recall_by_hand():
    top = torch.tensor([[3, 1, 2], [0, 2, 1]])
    assert recall_at_k(top, [[1, 9], [1]], ks=(1, 2, 3)) == {1: 0.0, 2: 0.5, 3: 1.0}


@pytest.mark.parametrize("static", [None, 4])
def test_k_all_equals_dola_over_full_candidate_set(static):
    layers, text, _ = _problem(seed=1, n_images=12)
    tau = 0.05
    variant = Variant.static(static) if static else Variant.dynamic(LAYERS[:-1])
    i2t, lists = image_to_text(
        layers, LAYERS, text, tau, shortlist=None, variant=variant, k_max=1000
    )
    zn = torch.nn.functional.normalize(layers, dim=-1)
    tn = torch.nn.functional.normalize(text, dim=-1)
    full = zn @ tn.T / tau  # [L, I, T]
    core = apply_dola(
        full, layers=LAYERS, static_layer=static, candidate_layers=None if static else LAYERS[:-1]
    )
    rank = ranking_scores(core.p_hat, core.kept, full[-1].softmax(-1))
    assert torch.equal(i2t.dola_top, rank.argsort(dim=-1, descending=True, stable=True))
    assert torch.equal(i2t.chosen_layers, core.chosen_layers)
    t2i = text_to_image(
        layers, LAYERS, text, tau, lists, shortlist=None, variant=variant, k_max=1000
    )
    expected = rank.T.argsort(
        dim=-1, descending=True, stable=True
    )  # caption t: images by p_hat_i(t)
    assert torch.equal(t2i.dola_top, expected)


def test_blocked_equals_unblocked():
    layers, text, _ = _problem(seed=2, n_images=40)
    one = image_to_text(layers, LAYERS, text, 0.1, shortlist=7)
    many = image_to_text(layers, LAYERS, text, 0.1, shortlist=7, max_block_elements=1)
    assert torch.equal(one[0].dola_top, many[0].dola_top) and torch.equal(
        one[0].baseline_top, many[0].baseline_top
    )
    t_one = text_to_image(layers, LAYERS, text, 0.1, one[1], shortlist=6)
    t_many = text_to_image(layers, LAYERS, text, 0.1, one[1], shortlist=6, max_block_elements=1)
    assert torch.equal(t_one.dola_top, t_many.dola_top)
    assert torch.equal(t_one.baseline_top, t_many.baseline_top)


def test_dola_changes_only_order_within_shortlist():
    layers, text, _ = _problem(seed=3, n_images=25)
    i2t, _ = image_to_text(layers, LAYERS, text, 0.1, shortlist=5, k_max=10)
    assert torch.equal(i2t.dola_top[:, 5:], i2t.baseline_top[:, 5:])
    assert torch.equal(i2t.dola_top[:, :5].sort(-1).values, i2t.baseline_top[:, :5].sort(-1).values)


def test_label_files_and_bundled_photos(tmp_path):
    from PIL import Image

    for name in ("a", "b"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{name}.png")
    (tmp_path / "pairs.csv").write_text(
        "image,caption\na.png,a red cat\na.png,a cat\nb.png,a dog\n"
    )
    ds = load_retrieval_set(str(tmp_path / "pairs.csv"))
    assert len(ds.images) == 2 and ds.caption_image.tolist() == [0, 0, 1]
    assert ds.image_captions() == [[0, 1], [2]]
    (tmp_path / "pairs.json").write_text(json.dumps([{"image": "b.png", "captions": ["x", "y"]}]))
    assert load_retrieval_set(str(tmp_path / "pairs.json")).captions == ["x", "y"]
    (tmp_path / "bad.csv").write_text("image,caption\na.png,\n")
    with pytest.raises(ValueError, match="line 2: empty caption"):
        load_retrieval_set(str(tmp_path / "bad.csv"))
    photos = load_retrieval_set("bundled:photos")
    assert len(photos.images) >= 10
    assert "Chelsea the cat." in photos.captions
    assert photos.images.image(0).mode == "RGB"


def test_metrics_shape():
    layers, text, owners = _problem(seed=4)
    i2t, lists = image_to_text(layers, LAYERS, text, 0.1)
    t2i = text_to_image(layers, LAYERS, text, 0.1, lists)

    class _Set:
        caption_image = owners.numpy()

        def image_captions(self):
            return [
                np.flatnonzero(self.caption_image == i).tolist() for i in range(layers.shape[1])
            ]

    m = retrieval_metrics(i2t, t2i, _Set())
    assert set(m) == {"baseline", "dola"}
    assert set(m["dola"]) == {
        f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)
    }
