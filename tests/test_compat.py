"""The seed-compatible rerank_with_dola_siglip over a timm / Janus-style ViT."""

from __future__ import annotations

import pytest
import torch
from _tiny_models import (
    DEPTH,
    IMAGE,
    WIDTH,
    JanusStyleViT,
    capture_outputs,
    count_calls,
    tiny_timm_vit,
)

from siglip_dola import build_probs_from_rep, dola_from_distributions, rerank_with_dola_siglip


@pytest.fixture(scope="module")
def vit():
    return tiny_timm_vit("vit_large_patch16_siglip_384")


@pytest.fixture(scope="module")
def images():
    return torch.randn(6, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(4))


@pytest.fixture(scope="module")
def bank():
    return torch.randn(7, WIDTH, generator=torch.Generator().manual_seed(5))


def _seed_reference(vit, images, bank, alpha, tau, candidates):
    """The seeds' recipe, step by step: per-layer z, build_probs_from_rep, DoLa on q's."""
    with capture_outputs(list(vit.blocks)) as hidden, torch.no_grad():
        vit(images)
        z = {
            layer: vit.forward_head(vit.norm(hidden[layer - 1]), pre_logits=True)
            for layer in (*candidates, DEPTH)
        }
    q_final = build_probs_from_rep(z[DEPTH], bank, tau)
    return dola_from_distributions(
        q_final, [build_probs_from_rep(z[c], bank, tau) for c in candidates], alpha
    )


@pytest.mark.parametrize("candidates", [(1, 2, 3), (3, 1), (2,)])
@pytest.mark.parametrize("alpha, tau", [(0.1, 1.0), (0.0, 2.0), (0.5, 0.7)])
def test_matches_the_seed_recipe(vit, images, bank, candidates, alpha, tau):
    p_hat, m_idx = rerank_with_dola_siglip(
        vit, images, bank, alpha=alpha, tau=tau, candidate_layers=candidates
    )
    want_p, want_m = _seed_reference(vit, images, bank, alpha, tau, candidates)
    torch.testing.assert_close(p_hat, want_p, atol=1e-5, rtol=0)
    assert torch.equal(m_idx, want_m)
    assert p_hat.shape == (6, 7) and m_idx.shape == (6,)
    torch.testing.assert_close(p_hat.sum(-1), torch.ones(6))


def test_m_idx_indexes_the_given_candidate_order(vit, images, bank):
    _, forward = rerank_with_dola_siglip(vit, images, bank, tau=1.0, candidate_layers=(1, 3))
    _, backward = rerank_with_dola_siglip(vit, images, bank, tau=1.0, candidate_layers=(3, 1))
    assert set(forward.tolist()) == {0, 1}  # both candidates get chosen for some image
    assert torch.equal(forward, 1 - backward)


def test_raw_dot_product_without_normalisation(vit, images, bank):
    # Scaling the bank by 2 at twice the temperature changes nothing only if no L2
    # normalisation happens; with tau fixed it must change the distribution.
    p1, _ = rerank_with_dola_siglip(vit, images, bank, tau=0.5, candidate_layers=(2,))
    p2, _ = rerank_with_dola_siglip(vit, images, 2 * bank, tau=1.0, candidate_layers=(2,))
    p3, _ = rerank_with_dola_siglip(vit, images, 2 * bank, tau=0.5, candidate_layers=(2,))
    torch.testing.assert_close(p1, p2, atol=1e-5, rtol=0)
    assert (p1 - p3).abs().max() > 1e-3


def test_default_candidates_on_a_24_layer_vit(images, bank):
    vit24 = tiny_timm_vit("vit_large_patch16_siglip_384", depth=24)
    with count_calls(list(vit24.blocks)) as counts:
        p_hat, m_idx = rerank_with_dola_siglip(vit24, images, bank)
    assert counts == [1] * 24  # one backbone pass for the three candidates and the final layer
    assert p_hat.shape == (6, 7) and set(m_idx.tolist()) <= {0, 1, 2}


def test_janus_style_vit(vit, images, bank):
    p_janus, m_janus = rerank_with_dola_siglip(
        JanusStyleViT(vit), images, bank, candidate_layers=(1, 2)
    )
    p_timm, m_timm = rerank_with_dola_siglip(vit, images, bank, candidate_layers=(1, 2))
    torch.testing.assert_close(p_janus, p_timm, atol=1e-6, rtol=0)
    assert torch.equal(m_janus, m_timm)


@pytest.mark.parametrize("bad", [(DEPTH,), (0,), (1, 1)])
def test_bad_candidates(vit, images, bank, bad):
    with pytest.raises(ValueError, match=r"1\.\.3|distinct"):
        rerank_with_dola_siglip(vit, images, bank, candidate_layers=bad)


def test_text_bank_of_the_wrong_size(vit, images):
    with pytest.raises(ValueError, match="embedding size mismatch"):
        rerank_with_dola_siglip(vit, images, torch.randn(5, WIDTH + 1), candidate_layers=(1,))


def test_bad_alpha_and_tau(vit, images, bank):
    with pytest.raises(ValueError, match="alpha"):
        rerank_with_dola_siglip(vit, images, bank, alpha=1.5, candidate_layers=(1,))
    with pytest.raises(ValueError, match="tau"):
        rerank_with_dola_siglip(vit, images, bank, tau=0.0, candidate_layers=(1,))
