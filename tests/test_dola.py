"""DoLa maths: properties (hypothesis), an independent float64 reference, seed names, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from siglip_dola import dola as D

LN2 = math.log(2.0)


# ----------------------------------------------------------------------------- strategies


@st.composite
def layer_scores(draw, max_layers=5, max_batch=4, max_classes=12, magnitude=30.0):
    n_layers = draw(st.integers(2, max_layers))
    batch = draw(st.integers(1, max_batch))
    classes = draw(st.integers(1, max_classes))
    values = st.floats(-magnitude, magnitude, allow_nan=False, allow_infinity=False, width=64)
    return draw(arrays(np.float64, (n_layers, batch, classes), elements=values))


@st.composite
def distribution_pairs(draw, max_classes=10):
    classes = draw(st.integers(1, max_classes))
    elements = st.one_of(st.just(0.0), st.floats(1e-9, 1.0, width=64))
    p = draw(arrays(np.float64, (3, classes), elements=elements))
    q = draw(arrays(np.float64, (3, classes), elements=elements))
    p[:, 0] += 1e-3  # keep every row normalisable; zeros elsewhere stay zeros
    q[:, -1] += 1e-3
    return p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)


alphas = st.floats(0.0, 1.0, allow_nan=False)


# ----------------------------------------------------------------------------- reference


def ref_softmax(row):
    m = max(row)
    e = [math.exp(x - m) for x in row]
    s = sum(e)
    return [x / s for x in e]


def ref_jsd(p, q):
    total = 0.0
    for a, b in zip(p, q):
        m = (a + b) / 2
        if a > 0:
            total += 0.5 * a * math.log(a / m)
        if b > 0:
            total += 0.5 * b * math.log(b / m)
    return total


def ref_dola(scores, layers, final, candidates, alpha):
    """Straightforward loops in float64: per image, choose M, mask, contrast."""
    n_layers, batch, classes = scores.shape
    out_p, out_layer, out_keep = [], [], []
    for b in range(batch):
        q = {layers[i]: ref_softmax(list(scores[i, b])) for i in range(n_layers)}
        qn = q[final]
        best, best_j = -1.0, None
        for j in candidates:
            d = ref_jsd(qn, q[j])
            if d > best + 1e-12:  # strictly larger: ties stay with the earliest
                best, best_j = d, j
        qm = q[best_j]
        top = max(qn)
        keep = [qn[c] >= alpha * top for c in range(classes)]
        f = [math.log(qn[c]) - math.log(qm[c]) if keep[c] else -math.inf for c in range(classes)]
        fmax = max(f)
        e = [math.exp(x - fmax) if x != -math.inf else 0.0 for x in f]
        s = sum(e)
        out_p.append([x / s for x in e])
        out_layer.append(best_j)
        out_keep.append(keep)
    return np.array(out_p), np.array(out_layer), np.array(out_keep)


# ----------------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(layer_scores(), alphas)
def test_p_hat_rows_sum_to_one_and_vanish_outside_kept_set(scores, alpha):
    layers = list(range(1, scores.shape[0] + 1))
    result = D.apply_dola(scores, layers=layers, alpha=alpha)
    assert np.allclose(result.p_hat.sum(-1), 1.0, atol=1e-6)
    assert np.all(result.p_hat[~result.kept] == 0.0)
    assert result.p_hat.shape == scores.shape[1:]
    assert result.jsd.shape == (scores.shape[1], scores.shape[0] - 1)


@settings(max_examples=150, deadline=None)
@given(layer_scores(), alphas)
def test_argmax_of_final_layer_always_kept(scores, alpha):
    layers = list(range(1, scores.shape[0] + 1))
    result = D.apply_dola(scores, layers=layers, alpha=alpha)
    top = scores[-1].argmax(-1)
    assert result.kept[np.arange(len(top)), top].all()


@settings(max_examples=100, deadline=None)
@given(layer_scores())
def test_alpha_zero_keeps_every_class(scores):
    result = D.apply_dola(scores, layers=list(range(1, scores.shape[0] + 1)), alpha=0.0)
    assert result.kept.all()


@settings(max_examples=150, deadline=None)
@given(distribution_pairs())
def test_jsd_symmetric_bounded_and_zero_on_identity(pair):
    p, q = pair
    pq, qp = D.jsd(p, q), D.jsd(q, p)
    assert np.array_equal(pq, qp)
    assert np.all(pq >= 0) and np.all(pq <= LN2 + 1e-12)
    assert np.all(np.isfinite(pq))
    assert np.all(D.jsd(p, p) == 0.0)


@settings(max_examples=150, deadline=None)
@given(distribution_pairs())
def test_jsd_matches_reference_including_zero_entries(pair):
    p, q = pair
    expected = [ref_jsd(list(a), list(b)) for a, b in zip(p, q)]
    assert np.allclose(D.jsd(p, q), expected, atol=1e-12)


def test_jsd_disjoint_supports_is_ln2():
    p = torch.tensor([[1.0, 0.0, 0.0]])
    q = torch.tensor([[0.0, 0.5, 0.5]])
    assert torch.allclose(D.jsd(p, q), torch.tensor([LN2]), atol=1e-6)


def test_jsd_in_float16_is_computed_in_float32():
    p = torch.tensor([[0.7, 0.3, 0.0]], dtype=torch.float16)
    q = torch.tensor([[0.1, 0.1, 0.8]], dtype=torch.float16)
    out = D.jsd(p, q)
    assert out.dtype == torch.float32
    assert abs(float(out) - ref_jsd([0.7, 0.3, 0.0], [0.1, 0.1, 0.8])) < 1e-3


@settings(max_examples=100, deadline=None)
@given(layer_scores(), alphas, st.floats(-1e3, 1e3), st.data())
def test_constant_shift_of_one_layer_changes_nothing(scores, alpha, shift, data):
    layers = list(range(1, scores.shape[0] + 1))
    which = data.draw(st.integers(0, scores.shape[0] - 1))
    shifted = scores.copy()
    shifted[which] += shift
    a = D.apply_dola(scores, layers=layers, alpha=alpha)
    b = D.apply_dola(shifted, layers=layers, alpha=alpha)
    # Shifts move the scores by up to 1e3; log-softmax absorbs them up to float64 rounding.
    assert np.allclose(a.p_hat, b.p_hat, atol=1e-7)
    assert np.allclose(a.jsd, b.jsd, atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(layer_scores(magnitude=1e4), alphas)
def test_huge_scores_give_finite_results(scores, alpha):
    layers = list(range(1, scores.shape[0] + 1))
    for dtype in (np.float64, np.float32):
        result = D.apply_dola(scores.astype(dtype), layers=layers, alpha=alpha)
        assert np.all(np.isfinite(result.p_hat))
        assert np.all(np.isfinite(result.jsd))
        assert np.allclose(result.p_hat.sum(-1), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------- reference agreement


@pytest.mark.parametrize("seed", range(8))
def test_dynamic_mode_matches_float64_loop_reference(seed):
    rng = np.random.default_rng(seed)
    layers = [2, 4, 6, 8, 12]
    scores = rng.normal(scale=3.0, size=(len(layers), 16, 25))
    alpha = float(rng.uniform(0, 0.5))
    result = D.apply_dola(scores, layers=layers, alpha=alpha)
    p_ref, layer_ref, keep_ref = ref_dola(scores, layers, 12, [2, 4, 6, 8], alpha)
    assert np.array_equal(result.chosen_layers, layer_ref)
    assert np.array_equal(result.kept, keep_ref)
    assert np.allclose(result.p_hat, p_ref, atol=1e-10)
    assert result.final_layer == 12 and result.candidate_layers == (2, 4, 6, 8)


@pytest.mark.parametrize("seed", range(4))
def test_static_mode_matches_float64_loop_reference(seed):
    rng = np.random.default_rng(100 + seed)
    layers = [6, 9, 12]
    scores = rng.normal(scale=3.0, size=(3, 10, 7))
    result = D.apply_dola(scores, layers=layers, static_layer=9, alpha=0.1)
    p_ref, layer_ref, keep_ref = ref_dola(scores, layers, 12, [9], 0.1)
    assert np.all(result.chosen_layers == 9)
    assert np.allclose(result.p_hat, p_ref, atol=1e-10)
    assert np.array_equal(result.kept, keep_ref)
    assert result.jsd.shape == (10, 1)


def test_mapping_input_equals_array_input():
    rng = np.random.default_rng(3)
    scores = torch.from_numpy(rng.normal(size=(3, 5, 6)))
    by_array = D.apply_dola(scores, layers=[18, 20, 24])
    by_mapping = D.apply_dola({24: scores[2], 18: scores[0], 20: scores[1]})
    assert torch.allclose(by_array.p_hat, by_mapping.p_hat)
    assert torch.equal(by_array.chosen_layers, by_mapping.chosen_layers)


def test_per_image_selection_not_batch_average():
    # image 0 differs most at layer 2, image 1 at layer 4
    final = torch.tensor([[5.0, 0.0], [5.0, 0.0]])
    layer2 = torch.tensor([[0.0, 5.0], [5.0, 0.0]])
    layer4 = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    result = D.apply_dola({2: layer2, 4: layer4, 6: final})
    assert result.chosen_layers.tolist() == [2, 4]


def test_ties_go_to_earliest_candidate():
    s = torch.tensor([[1.0, 0.0, 0.0]])
    result = D.apply_dola({3: s * 0, 5: s * 0, 7: s * 0, 9: s})
    assert result.chosen_layers.tolist() == [3]


def test_torch_in_torch_out_numpy_in_numpy_out_and_half_precision():
    s = np.random.default_rng(0).normal(size=(3, 2, 4)).astype(np.float32)
    out_np = D.apply_dola(s, layers=[1, 2, 3])
    assert isinstance(out_np.p_hat, np.ndarray) and out_np.p_hat.dtype == np.float32
    out_t = D.apply_dola(torch.from_numpy(s).to(torch.bfloat16), layers=[1, 2, 3])
    assert isinstance(out_t.p_hat, torch.Tensor) and out_t.p_hat.dtype == torch.float32
    assert out_t.chosen_layers.dtype == torch.int64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_stay_on_device():
    s = torch.randn(3, 4, 5, device="cuda")
    out = D.apply_dola(s, layers=[1, 2, 3])
    assert out.p_hat.is_cuda and out.chosen_layers.is_cuda and out.kept.is_cuda


# ----------------------------------------------------------------------------- seed names


def test_seed_functions_agree_with_new_api():
    rng = np.random.default_rng(7)
    z_layers = torch.from_numpy(rng.normal(size=(4, 6, 16)))
    bank = torch.from_numpy(rng.normal(size=(9, 16)))
    tau = 0.5
    q = [D.build_probs_from_rep(z, bank, tau) for z in z_layers]
    assert torch.allclose(q[0], torch.softmax(z_layers[0] @ bank.T / tau, -1))
    scores = torch.stack([z @ bank.T / tau for z in z_layers])
    new = D.apply_dola(scores, layers=[18, 20, 22, 24], alpha=0.1)
    p_hat, m_idx = D.dola_from_distributions(q[3], q[:3], alpha=0.1)
    assert torch.allclose(p_hat, new.p_hat, atol=1e-10)
    assert torch.equal(torch.tensor([18, 20, 22])[m_idx], new.chosen_layers)
    assert torch.equal(D.select_early_exit(q[3], q[:3]), m_idx)
    chosen = torch.stack(q[:3])[m_idx, torch.arange(6)]
    assert torch.allclose(D.contrast_and_mask(q[3], chosen, alpha=0.1), new.p_hat, atol=1e-10)
    assert torch.allclose(D.jsd(q[3], q[0]), new.jsd[:, 0], atol=1e-12)


def test_seed_contrast_handles_zero_probabilities():
    qn = torch.tensor([[0.6, 0.4, 0.0]])
    qm = torch.tensor([[0.0, 1.0, 0.0]])
    p_hat = D.contrast_and_mask(qn, qm, alpha=0.1)
    assert torch.isfinite(p_hat).all() and torch.allclose(p_hat.sum(), torch.tensor(1.0))
    assert p_hat[0, 2] == 0 and p_hat[0, 0] > 0.99


def test_class_scores_normalised_cosine_over_tau():
    z = torch.tensor([[3.0, 4.0]])
    bank = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    out = D.class_scores(z, bank, tau=0.1, normalize=True)
    assert torch.allclose(out, torch.tensor([[6.0, 8.0]]))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan")])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        D.apply_dola(np.zeros((2, 1, 3)), layers=[1, 2], alpha=alpha)


@pytest.mark.parametrize("tau", [0.0, -1.0, float("inf")])
def test_bad_tau(tau):
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        D.build_probs_from_rep(np.zeros((1, 4)), np.zeros((3, 4)), tau)


def test_text_bank_dimension_mismatch():
    with pytest.raises(ValueError, match="embedding size mismatch.*D=4.*D=5"):
        D.class_scores(np.zeros((2, 4)), np.zeros((3, 5)))


def test_no_silent_broadcast():
    with pytest.raises(ValueError, match="same \\[B, C\\] shape"):
        D.apply_dola({1: np.zeros((2, 3)), 2: np.zeros((1, 3))})
    with pytest.raises(ValueError, match="same shape"):
        D.jsd(np.ones((2, 3)) / 3, np.ones((1, 3)) / 3)
    with pytest.raises(ValueError, match="names 3 layers but layer_scores has 2 rows"):
        D.apply_dola(np.zeros((2, 1, 3)), layers=[1, 2, 3])
    with pytest.raises(ValueError, match=r"\[K, 2, 3\]"):
        D.select_contrast_layer(np.zeros((2, 3)), np.zeros((1, 1, 3)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores(bad):
    s = np.zeros((2, 1, 3))
    s[0, 0, 1] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        D.apply_dola(s, layers=[1, 2])
    with pytest.raises(ValueError, match="NaN or inf"):
        D.class_scores(np.array([[bad, 0.0]]), np.zeros((3, 2)))


def test_empty_candidates_and_final_layer_as_candidate():
    with pytest.raises(ValueError, match="empty candidate set"):
        D.apply_dola({24: np.zeros((1, 3))})
    with pytest.raises(ValueError, match="candidate layer 24 is the final layer"):
        D.apply_dola({20: np.zeros((1, 3)), 24: np.zeros((1, 3))}, candidate_layers=[20, 24])
    with pytest.raises(ValueError, match="empty candidate set"):
        D.dola_from_distributions(np.ones((1, 3)) / 3, [])
    with pytest.raises(ValueError, match=r"have no scores"):
        D.apply_dola({20: np.zeros((1, 3)), 24: np.zeros((1, 3))}, candidate_layers=[18])


def test_wrong_types():
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray"):
        D.jsd([0.5, 0.5], [0.5, 0.5])
    with pytest.raises(TypeError, match="needs `layers`"):
        D.apply_dola(np.zeros((2, 1, 3)))


def test_contrast_stack_equals_contrast_per_layer():
    gen = torch.Generator().manual_seed(5)
    log_final = torch.log_softmax(torch.randn(6, 9, generator=gen) * 3, -1)
    stack = torch.log_softmax(torch.randn(4, 6, 9, generator=gen) * 3, -1)
    p_hat, kept = D.contrast_stack(log_final, stack, 0.2)
    for s in range(4):
        one, one_kept = D.contrast(log_final, stack[s], 0.2)
        assert torch.allclose(p_hat[s], one) and torch.equal(kept, one_kept)
    with pytest.raises(ValueError, match=r"\[S, 6, 9\]"):
        D.contrast_stack(log_final, stack[:, :3], 0.2)


def test_contrast_stack_alphas_equals_one_alpha_at_a_time():
    gen = torch.Generator().manual_seed(6)
    log_final = torch.log_softmax(torch.randn(5, 8, generator=gen) * 3, -1)
    stack = torch.log_softmax(torch.randn(3, 5, 8, generator=gen) * 3, -1)
    alphas = (0.0, 0.05, 0.3, 1.0)
    for alpha, (p_hat, kept) in zip(alphas, D.contrast_stack_alphas(log_final, stack, alphas)):
        one, one_kept = D.contrast_stack(log_final, stack, alpha)
        assert torch.equal(p_hat, one) and torch.equal(kept, one_kept)
    with pytest.raises(ValueError, match="alpha"):
        D.contrast_stack_alphas(log_final, stack, (0.1, 1.5))


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 70)),
    seed=st.integers(0, 2**16),
    log=st.booleans(),
)
def test_class_softmax_is_softmax_over_the_last_axis(shape, seed, log):
    # Few classes take the moved-axis kernel, many the plain one: both are the same function,
    # masked (-inf) entries included.
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 20
    x[..., 1:][torch.rand(x[..., 1:].shape, generator=gen) < 0.3] = -math.inf
    expected = torch.log_softmax(x, dim=-1) if log else torch.softmax(x, dim=-1)
    got = D.class_softmax(x, log=log)
    assert got.shape == x.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- contrast strength


def ref_dola_beta(scores, layers, final, candidates, alpha, beta):
    """:func:`ref_dola` with F = log q_N - beta log q_M (loops, float64)."""
    n_layers, batch, classes = scores.shape
    out = []
    for b in range(batch):
        q = {layers[i]: ref_softmax(list(scores[i, b])) for i in range(n_layers)}
        qn = q[final]
        divergences = [ref_jsd(qn, q[j]) for j in candidates]
        best = max(divergences)
        qm = q[candidates[next(i for i, d in enumerate(divergences) if d >= best - 1e-12)]]
        keep = [qn[c] >= alpha * max(qn) for c in range(classes)]
        f = [
            math.log(qn[c]) - beta * math.log(qm[c]) if keep[c] else -math.inf
            for c in range(classes)
        ]
        e = [math.exp(x - max(f)) if x != -math.inf else 0.0 for x in f]
        out.append([x / sum(e) for x in e])
    return np.array(out)


betas = st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 3.0, allow_nan=False))


@settings(max_examples=150, deadline=None)
@given(layer_scores(magnitude=8.0), alphas, betas)
def test_beta_contrast_matches_float64_reference(scores, alpha, beta):
    layers = list(range(1, scores.shape[0] + 1))
    result = D.apply_dola(scores, layers=layers, alpha=alpha, beta=beta)
    expected = ref_dola_beta(scores, layers, layers[-1], layers[:-1], alpha, beta)
    assert np.allclose(result.p_hat, expected, atol=1e-9)
    assert np.allclose(result.p_hat.sum(-1), 1.0, atol=1e-9)
    assert np.all(result.p_hat[~result.kept] == 0.0)


@settings(max_examples=100, deadline=None)
@given(layer_scores(), alphas)
def test_beta_one_is_dola_bit_for_bit(scores, alpha):
    layers = list(range(1, scores.shape[0] + 1))
    plain = D.apply_dola(scores.astype(np.float32), layers=layers, alpha=alpha)
    one = D.apply_dola(scores.astype(np.float32), layers=layers, alpha=alpha, beta=1.0)
    assert np.array_equal(plain.p_hat, one.p_hat)
    log_q = torch.log_softmax(torch.as_tensor(scores, dtype=torch.float32), -1)
    stack = D.contrast_stack_alphas(log_q[-1], log_q[:-1], (alpha, 0.5))
    stack_one = D.contrast_stack_alphas(log_q[-1], log_q[:-1], (alpha, 0.5), beta=1)
    for (p, k), (p1, k1) in zip(stack, stack_one):
        assert torch.equal(p, p1) and torch.equal(k, k1)


@settings(max_examples=100, deadline=None)
@given(layer_scores(), alphas)
def test_beta_zero_is_the_apc_mask_alone(scores, alpha):
    log_q = torch.log_softmax(torch.as_tensor(scores), -1)
    p_hat, kept = D.contrast(log_q[-1], log_q[0], alpha, beta=0.0)
    apc, apc_kept = D.apc_only(log_q[-1], alpha)
    assert torch.equal(kept, apc_kept) and torch.allclose(p_hat, apc, atol=1e-12)


@pytest.mark.parametrize("beta", [-0.5, float("nan"), float("inf")])
def test_bad_beta(beta):
    log_q = torch.log_softmax(torch.randn(3, 2, 4), -1)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        D.contrast(log_q[-1], log_q[0], 0.1, beta)
    with pytest.raises(ValueError, match="beta"):
        D.apply_dola(log_q, layers=[1, 2, 3], beta=beta)
    with pytest.raises(TypeError, match="beta must be a number"):
        D.contrast_stack(log_q[-1], log_q[:2], 0.1, beta="1")


@settings(max_examples=100, deadline=None)
@given(layer_scores())
def test_mean_logit_ensemble_is_softmax_of_mean_scores(scores):
    probs = D.mean_logit_ensemble(scores)
    expected = np.array([ref_softmax(list(scores[:, b].mean(0))) for b in range(scores.shape[1])])
    assert isinstance(probs, np.ndarray) and np.allclose(probs, expected, atol=1e-12)
    # averaging the log-distributions instead gives the same distribution
    log_q = torch.log_softmax(torch.as_tensor(scores), -1)
    assert np.allclose(D.mean_logit_ensemble(log_q).numpy(), expected, atol=1e-9)
    with pytest.raises(ValueError, match=r"\[K, B, C\]"):
        D.mean_logit_ensemble(scores[0])
