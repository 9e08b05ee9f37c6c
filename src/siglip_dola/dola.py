"""DoLa (Decoding by Contrasting Layers) for class distributions: pure tensor maths.

Nothing here knows about models. Every function takes per-layer *scores* or
*distributions* over a candidate set C (classes, captions) and follows SPEC.md section 2:

    q_l    = softmax_C(s_l)
    JSD    = 1/2 KL(P || Mix) + 1/2 KL(Q || Mix),   Mix = (P + Q) / 2
    M      = argmax_{j in J} JSD(q_N || q_j)        (dynamic, per image; ties -> earliest)
    V_head = {c : q_N(c) >= alpha * max_u q_N(u)}   (APC)
    p_hat  = softmax(log q_N - beta log q_M) on V_head, exactly 0 elsewhere  (beta = 1: DoLa)
    mean-logit ensemble of layers K: softmax_C(mean_{k in K} s_k)

Inputs may be torch tensors or numpy arrays; results come back as the same kind.
Half-precision inputs are computed in float32, float64 inputs in float64. Tensors stay on
their device: the only host synchronisation is the finiteness check of the inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

Array = torch.Tensor | np.ndarray

__all__ = [
    "Array",
    "DolaResult",
    "apc_only",
    "build_probs_from_rep",
    "class_scores",
    "class_softmax",
    "contrast",
    "contrast_and_mask",
    "contrast_stack",
    "contrast_stack_alphas",
    "apply_dola",
    "dola_from_distributions",
    "jensen_shannon",
    "jsd",
    "mean_logit_ensemble",
    "select_contrast_layer",
    "select_early_exit",
]


# ----------------------------------------------------------------------------- helpers


def _as_tensor(x: Any, name: str) -> tuple[torch.Tensor, bool]:
    """Return (tensor in a compute dtype, came_from_numpy)."""
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise TypeError(f"{name} must hold real numbers, got numpy dtype {x.dtype}")
        t, from_numpy = torch.from_numpy(np.ascontiguousarray(x)), True
    elif isinstance(x, torch.Tensor):
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers, got torch dtype {x.dtype}")
        t, from_numpy = x, False
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    return t.to(dtype), from_numpy


def _stack_same_shape(named: Mapping[str, Any], what: str) -> tuple[torch.Tensor, bool]:
    """Stack [B, C] arrays named by their source into [K, B, C] (float64 only if all are)."""
    parts = [_as_tensor(v, name) for name, v in named.items()]
    shapes = {tuple(t.shape) for t, _ in parts}
    if len(shapes) != 1:
        raise ValueError(f"{what} must have the same [B, C] shape, got {sorted(shapes)}")
    dtype = torch.float64 if all(t.dtype == torch.float64 for t, _ in parts) else torch.float32
    return torch.stack([t.to(dtype) for t, _ in parts]), parts[0][1]


def _as_input_kind(x: torch.Tensor, to_numpy: bool) -> Array:
    return x.cpu().numpy() if to_numpy else x


def _check_finite(x: torch.Tensor, name: str) -> None:
    # A reduction is ~20x cheaper than an elementwise isfinite; it can only overflow for
    # finite inputs near the dtype's maximum, and then the exact check decides.
    if torch.isfinite(x.sum()) or bool(torch.isfinite(x).all()):
        return
    raise ValueError(f"{name} contains NaN or inf values; expected finite numbers")


def _check_alpha(alpha: float) -> None:
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise TypeError(f"alpha must be a number in [0, 1], got {type(alpha).__name__}")
    if not (0.0 <= alpha <= 1.0):  # also rejects NaN
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


def _check_beta(beta: float) -> None:
    if not isinstance(beta, (int, float)) or isinstance(beta, bool):
        raise TypeError(f"beta must be a number >= 0, got {type(beta).__name__}")
    if not (beta >= 0.0 and math.isfinite(beta)):  # also rejects NaN
        raise ValueError(f"contrast strength beta must be a finite number >= 0, got {beta}")


def _check_tau(tau: float) -> None:
    if not isinstance(tau, (int, float)) or isinstance(tau, bool):
        raise TypeError(f"tau must be a positive number, got {type(tau).__name__}")
    if not (tau > 0.0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a finite number > 0, got {tau}")


def _check_ndim(x: torch.Tensor, ndim: int, name: str, shape_hint: str) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_hint}, got {tuple(x.shape)}")


def _log_probs(probs: torch.Tensor) -> torch.Tensor:
    # Zero probabilities are legal inputs; clamping to the smallest normal number keeps
    # log-ratios finite instead of producing inf - inf.
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


# ----------------------------------------------------------------------------- scores


# Below this many classes, softmax over the last axis spends its time on per-row overhead.
_FEW_CLASSES = 32


def class_softmax(x: torch.Tensor, log: bool = False) -> torch.Tensor:
    """(log-)softmax over the class axis (last); for few classes the kernel runs over the
    class axis moved to the front, where it vectorises across rows (the same function)."""
    fn = torch.log_softmax if log else torch.softmax
    if x.dim() < 2 or x.shape[-1] > _FEW_CLASSES:
        return fn(x, dim=-1)
    return fn(x.movedim(-1, 0), dim=0).movedim(0, -1).contiguous()


def class_scores(
    image_embeddings: Array,
    text_bank: Array,
    tau: float = 1.0,
    normalize: bool = False,
) -> Array:
    """Scores s(c) = <z, t_c> / tau for embeddings [..., B, D] and a text bank [C, D].

    With ``normalize=True`` both sides are L2-normalised first (cosine similarity), as
    SigLIP does before its logit scale.
    """
    _check_tau(tau)
    z, to_numpy = _as_tensor(image_embeddings, "image_embeddings")
    t, _ = _as_tensor(text_bank, "text_bank")
    if z.ndim < 2:
        raise ValueError(f"image_embeddings must have shape [..., B, D], got {tuple(z.shape)}")
    _check_ndim(t, 2, "text_bank", "[C, D]")
    if z.shape[-1] != t.shape[-1]:
        raise ValueError(
            f"embedding size mismatch: image embeddings have D={z.shape[-1]}, "
            f"text bank has D={t.shape[-1]}; they must come from the same SigLIP model"
        )
    if t.shape[0] == 0:
        raise ValueError("text_bank is empty: expected at least one candidate text")
    _check_finite(z, "image_embeddings")
    _check_finite(t, "text_bank")
    if normalize:
        z = torch.nn.functional.normalize(z, dim=-1)
        t = torch.nn.functional.normalize(t, dim=-1)
    t = t.to(z.dtype)
    return _as_input_kind(z @ t.T / tau, to_numpy)


def _neg_entropy(p: torch.Tensor, log_p: torch.Tensor | None = None) -> torch.Tensor:
    """sum p log p, with 0 log 0 = 0 (the clamp only touches entries whose p is ~0)."""
    if log_p is None:
        log_p = _log_probs(p)
    return (p * log_p).sum(-1)


def _jsd_from_probs(
    p: torch.Tensor,
    q: torch.Tensor,
    log_p: torch.Tensor | None = None,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    # JSD = 1/2 sum p log p + 1/2 sum q log q - sum m log m. Known log-probabilities are
    # reused, so only the mixture needs a fresh log.
    m = 0.5 * (p + q)
    value = 0.5 * (_neg_entropy(p, log_p) + _neg_entropy(q, log_q)) - _neg_entropy(m)
    return value.clamp(0.0, math.log(2.0))


def jensen_shannon(p: Array, q: Array) -> Array:
    """Jensen-Shannon divergence (natural log) between distributions along the last axis.

    Result in [0, ln 2], finite for zero entries, symmetric, computed in float32 or wider.
    Shapes must match exactly (no broadcasting).
    """
    pt, to_numpy = _as_tensor(p, "p")
    qt, _ = _as_tensor(q, "q")
    if pt.shape != qt.shape:
        raise ValueError(
            f"p and q must have the same shape, got {tuple(pt.shape)} and {tuple(qt.shape)}"
        )
    _check_finite(pt, "p")
    _check_finite(qt, "q")
    qt = qt.to(pt.dtype)
    return _as_input_kind(_jsd_from_probs(pt, qt), to_numpy)


# ----------------------------------------------------------------------------- APC + contrast


def _apc_mask_log(log_q_final: torch.Tensor, alpha: float) -> torch.Tensor:
    top = log_q_final.max(dim=-1, keepdim=True)
    threshold = top.values + (math.log(alpha) if alpha > 0 else -math.inf)
    keep = log_q_final >= threshold
    # The top class is kept by construction for alpha <= 1; scatter makes it explicit and
    # immune to rounding in the threshold.
    return keep.scatter(-1, top.indices, True)


def _masked_softmax(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return class_softmax(logits.masked_fill(~keep, -math.inf))


def contrast(
    log_q_final: Array, log_q_contrast: Array, alpha: float = 0.1, beta: float = 1.0
) -> tuple[Array, Array]:
    """p_hat = softmax(log q_N - beta log q_M) on the APC set; returns (p_hat, kept mask).

    Takes *log* distributions of identical shape [..., C]. ``beta`` is the contrast strength:
    1 is DoLa, 0 leaves q_N renormalised on the APC set (:func:`apc_only`), values in
    between contrast more mildly.
    """
    _check_alpha(alpha)
    _check_beta(beta)
    log_final, to_numpy = _as_tensor(log_q_final, "log_q_final")
    log_other, _ = _as_tensor(log_q_contrast, "log_q_contrast")
    if log_final.shape != log_other.shape:
        raise ValueError(
            f"log_q_final and log_q_contrast must have the same shape, got "
            f"{tuple(log_final.shape)} and {tuple(log_other.shape)}"
        )
    _check_finite(log_final, "log_q_final")
    _check_finite(log_other, "log_q_contrast")
    return _contrast_per_alpha(log_final, log_other, (alpha,), to_numpy, beta)[0]


def contrast_stack(
    log_q_final: Array, log_q_contrasts: Array, alpha: float = 0.1, beta: float = 1.0
) -> tuple[Array, Array]:
    """:func:`contrast` of one final layer [B, C] against S contrast distributions [S, B, C]
    at once: returns p_hat [S, B, C] and the kept mask [B, C] (it depends on q_N only)."""
    return contrast_stack_alphas(log_q_final, log_q_contrasts, (alpha,), beta)[0]


def contrast_stack_alphas(
    log_q_final: Array, log_q_contrasts: Array, alphas: Sequence[float], beta: float = 1.0
) -> list[tuple[Array, Array]]:
    """:func:`contrast_stack` for each alpha of a grid: the inputs are checked and the
    log-ratios log q_N - beta log q_M formed once, then masked per alpha."""
    for alpha in alphas:
        _check_alpha(alpha)
    _check_beta(beta)
    log_final, to_numpy = _as_tensor(log_q_final, "log_q_final")
    log_other, _ = _as_tensor(log_q_contrasts, "log_q_contrasts")
    _check_ndim(log_final, 2, "log_q_final", "[B, C]")
    _check_ndim(log_other, 3, "log_q_contrasts", "[S, B, C]")
    if log_other.shape[1:] != log_final.shape:
        raise ValueError(
            f"contrasts must have shape [S, {log_final.shape[0]}, {log_final.shape[1]}], got {tuple(log_other.shape)}"
        )
    _check_finite(log_final, "log_q_final")
    _check_finite(log_other, "log_q_contrasts")
    return _contrast_per_alpha(log_final, log_other, alphas, to_numpy, beta)


def _contrast_logits(
    log_final: torch.Tensor, log_other: torch.Tensor, beta: float = 1.0
) -> torch.Tensor:
    """F = log q_N - beta log q_M (beta = 1 takes the plain difference: no extra pass)."""
    log_other = log_other.to(log_final.dtype)
    return log_final - log_other if beta == 1.0 else log_final - beta * log_other


def _contrast_per_alpha(
    log_final: torch.Tensor,
    log_other: torch.Tensor,
    alphas: Sequence[float],
    to_numpy: bool,
    beta: float = 1.0,
) -> list[tuple[Array, Array]]:
    log_ratio = _contrast_logits(log_final, log_other, beta)
    keeps = [_apc_mask_log(log_final, alpha) for alpha in alphas]
    return [
        (_as_input_kind(_masked_softmax(log_ratio, k), to_numpy), _as_input_kind(k, to_numpy))
        for k in keeps
    ]


def apc_only(log_q_final: Array, alpha: float = 0.1) -> tuple[Array, Array]:
    """Ablation: the APC mask without contrast (q_N renormalised on V_head)."""
    _check_alpha(alpha)
    log_final, to_numpy = _as_tensor(log_q_final, "log_q_final")
    _check_finite(log_final, "log_q_final")
    keep = _apc_mask_log(log_final, alpha)
    return _as_input_kind(_masked_softmax(log_final, keep), to_numpy), _as_input_kind(
        keep, to_numpy
    )


def mean_logit_ensemble(layer_scores: Array) -> Array:
    """Mean-logit ensemble of K layers: softmax_C of the mean of their scores [K, B, C] -> [B, C].

    The mean of the log-distributions log q_k differs from the mean of the scores by a
    constant per image, so ranking by either is the same; this averages the scores.
    """
    s, to_numpy = _as_tensor(layer_scores, "layer_scores")
    _check_ndim(s, 3, "layer_scores", "[K, B, C]")
    if s.shape[0] == 0:
        raise ValueError("an ensemble needs at least one layer's scores")
    _check_finite(s, "layer_scores")
    return _as_input_kind(class_softmax(s.mean(0)), to_numpy)


def _jsd_from_log_distributions(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """JSD between normalised log-distributions log_p [B, C] and log_q [K, B, C] -> [K, B].

    The hot path of dynamic selection: memory passes over [K, B, C] are what costs, so the
    mixture is kept unhalved (2m = p + q, whose entries sum to 2) and reductions are dots.
    """
    p = log_p.exp()
    q = log_q.exp()
    two_m = q + p
    # Entries of 2m below the smallest normal number carry no mass; clamping keeps log finite.
    log_two_m = two_m.clamp_min_(torch.finfo(two_m.dtype).tiny).log()
    # sum m log m = 1/2 sum 2m log 2m - ln 2, since sum 2m = 2.
    mix = 0.5 * torch.linalg.vecdot(two_m, log_two_m) - math.log(2.0)
    value = 0.5 * (torch.linalg.vecdot(p, log_p) + torch.linalg.vecdot(q, log_q)) - mix
    return value.clamp(0.0, math.log(2.0))


def _select(
    log_q_final: torch.Tensor, log_q_candidates: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row argmax-JSD candidate: returns (index [B] into K, JSD [B, K])."""
    divergence = _jsd_from_log_distributions(log_q_final, log_q_candidates).transpose(0, 1)
    # torch.argmax returns the first maximal index: ties go to the earliest candidate.
    return divergence.argmax(dim=-1), divergence


def select_contrast_layer(log_q_final: Array, log_q_candidates: Array) -> tuple[Array, Array]:
    """Dynamic ("early exit") choice: per image, the candidate furthest from q_N in JSD.

    ``log_q_final`` [B, C], ``log_q_candidates`` [K, B, C]; returns (index into K [B],
    JSD of every candidate [B, K]).
    """
    log_final, to_numpy = _as_tensor(log_q_final, "log_q_final")
    log_other, _ = _as_tensor(log_q_candidates, "log_q_candidates")
    _check_ndim(log_final, 2, "log_q_final", "[B, C]")
    _check_ndim(log_other, 3, "log_q_candidates", "[K, B, C]")
    if log_other.shape[0] == 0:
        raise ValueError("empty candidate set: expected at least one candidate layer")
    if log_other.shape[1:] != log_final.shape:
        raise ValueError(
            f"candidates must have shape [K, {log_final.shape[0]}, {log_final.shape[1]}] to match the final "
            f"layer, got {tuple(log_other.shape)}"
        )
    _check_finite(log_final, "log_q_final")
    _check_finite(log_other, "log_q_candidates")
    index, divergence = _select(log_final, log_other.to(log_final.dtype))
    return _as_input_kind(index, to_numpy), _as_input_kind(divergence, to_numpy)


# ----------------------------------------------------------------------------- entry point


@dataclass(frozen=True)
class DolaResult:
    """What one DoLa pass over a batch produces.

    p_hat: [B, C] contrasted distribution (rows sum to 1, 0 outside ``kept``).
    chosen_layers: [B] layer number M used as contrast for each image.
    jsd: [B, K] JSD(q_N || q_j) for every candidate j (static mode: only the fixed layer).
    kept: [B, C] APC mask V_head.
    candidate_layers: the K candidate layer numbers, in the order of ``jsd``'s columns.
    final_layer: the mature layer N.
    """

    p_hat: Array
    chosen_layers: Array
    jsd: Array
    kept: Array
    candidate_layers: tuple[int, ...]
    final_layer: int


def _stack_layer_scores(
    layer_scores: Array | Mapping[int, Array], layers: Sequence[int] | None
) -> tuple[torch.Tensor, list[int], bool]:
    if isinstance(layer_scores, Mapping):
        if layers is not None:
            raise TypeError(
                "pass `layers` only with an [L, B, C] array; a mapping names its layers"
            )
        if not layer_scores:
            raise ValueError("layer_scores is empty: expected the final layer and >= 1 candidate")
        numbers = [int(k) for k in layer_scores]
        stacked, to_numpy = _stack_same_shape(
            {f"layer_scores[{k}]": v for k, v in layer_scores.items()}, "every layer's scores"
        )
    else:
        stacked, to_numpy = _as_tensor(layer_scores, "layer_scores")
        if layers is None:
            raise TypeError("an [L, B, C] array needs `layers`: the layer number of each row")
        numbers = [int(x) for x in layers]
        if stacked.ndim == 3 and len(numbers) != stacked.shape[0]:
            raise ValueError(
                f"`layers` names {len(numbers)} layers but layer_scores has {stacked.shape[0]} rows"
            )
    _check_ndim(stacked, 3, "layer_scores", "[L, B, C]")
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"layer numbers must be distinct, got {numbers}")
    if stacked.shape[-1] == 0 or stacked.shape[1] == 0:
        raise ValueError(
            f"layer_scores must have B >= 1 and C >= 1, got shape {tuple(stacked.shape)}"
        )
    _check_finite(stacked, "layer_scores")
    return stacked, numbers, to_numpy


def apply_dola(
    layer_scores: Array | Mapping[int, Array],
    *,
    layers: Sequence[int] | None = None,
    final_layer: int | None = None,
    candidate_layers: Sequence[int] | None = None,
    static_layer: int | None = None,
    alpha: float = 0.1,
    beta: float = 1.0,
) -> DolaResult:
    """DoLa over the per-layer scores of one batch.

    ``layer_scores`` is an [L, B, C] array whose rows are the layers named in ``layers``, or
    a mapping {layer number: [B, C]}. ``final_layer`` defaults to the highest layer given.
    Dynamic mode (default) picks, per image, the candidate with the largest JSD from the final
    layer; candidates default to every other layer given. ``static_layer`` switches to static
    mode with that one contrast layer. ``beta`` is the contrast strength (1 = DoLa).
    """
    _check_alpha(alpha)
    _check_beta(beta)
    stacked, numbers, to_numpy = _stack_layer_scores(layer_scores, layers)
    final = max(numbers) if final_layer is None else int(final_layer)
    if final not in numbers:
        raise ValueError(f"final layer {final} is not among the given layers {numbers}")
    if static_layer is not None:
        if candidate_layers is not None:
            raise TypeError("pass either `static_layer` or `candidate_layers`, not both")
        candidates = [int(static_layer)]
    elif candidate_layers is None:
        candidates = [n for n in numbers if n != final]
    else:
        candidates = [int(c) for c in candidate_layers]
    if not candidates:
        raise ValueError("empty candidate set: expected at least one layer to contrast with")
    if final in candidates:
        raise ValueError(
            f"candidate layer {final} is the final layer; candidates must be earlier layers"
        )
    missing = [c for c in candidates if c not in numbers]
    if missing:
        raise ValueError(f"candidate layers {missing} have no scores; given layers are {numbers}")
    if len(set(candidates)) != len(candidates):
        raise ValueError(f"candidate layers must be distinct, got {candidates}")

    log_q = class_softmax(stacked, log=True)
    log_final = log_q[numbers.index(final)]
    rows = [numbers.index(c) for c in candidates]
    if rows == list(range(rows[0], rows[0] + len(rows))):
        log_cand = log_q[rows[0] : rows[0] + len(rows)]  # a view: no copy of [K, B, C]
    else:
        log_cand = log_q.index_select(0, torch.tensor(rows, device=log_q.device))
    candidate_numbers = torch.tensor(candidates, device=log_q.device)
    index, divergence = _select(log_final, log_cand)
    log_contrast = log_cand[index, torch.arange(log_final.shape[0], device=log_q.device)]
    keep = _apc_mask_log(log_final, alpha)
    p_hat = _masked_softmax(_contrast_logits(log_final, log_contrast, beta), keep)
    return DolaResult(
        p_hat=_as_input_kind(p_hat, to_numpy),
        chosen_layers=_as_input_kind(candidate_numbers[index], to_numpy),
        jsd=_as_input_kind(divergence, to_numpy),
        kept=_as_input_kind(keep, to_numpy),
        candidate_layers=tuple(candidates),
        final_layer=final,
    )


# ----------------------------------------------------------------------------- seed names
# The user's original patch (shared/seeds) named these functions; they keep the seeds'
# signatures and semantics and are thin wrappers over the functions above.


def build_probs_from_rep(z: Array, text_bank: Array, tau: float = 1.0) -> Array:
    """Seed-compatible: q(c) = softmax_c(<z, t_c> / tau) with the raw (unnormalised) dot product."""
    scores = class_scores(z, text_bank, tau=tau, normalize=False)
    s, to_numpy = _as_tensor(scores, "scores")
    return _as_input_kind(class_softmax(s), to_numpy)


def jsd(p: Array, q: Array) -> Array:
    """Seed-compatible: Jensen-Shannon divergence per row (see :func:`jensen_shannon`)."""
    return jensen_shannon(p, q)


def _stack_distributions(
    q_list: Sequence[Array] | Mapping[Any, Array],
) -> tuple[torch.Tensor, bool]:
    values = list(q_list.values()) if isinstance(q_list, Mapping) else list(q_list)
    if not values:
        raise ValueError("empty candidate set: expected at least one candidate distribution")
    return _stack_same_shape(
        {f"q_list[{i}]": v for i, v in enumerate(values)}, "candidate distributions"
    )


def select_early_exit(qN: Array, q_list: Sequence[Array] | Mapping[Any, Array]) -> Array:  # noqa: N803
    """Seed-compatible: per-sample index (into ``q_list``) of the argmax-JSD distribution."""
    qn, to_numpy = _as_tensor(qN, "qN")
    qs, _ = _stack_distributions(q_list)
    index, _ = select_contrast_layer(_log_probs(qn), _log_probs(qs.to(qn.dtype)))
    return _as_input_kind(index, to_numpy)


def contrast_and_mask(qN: Array, qM: Array, alpha: float = 0.1) -> Array:  # noqa: N803
    """Seed-compatible: p_hat from distributions q_N and q_M (APC mask + log-ratio softmax)."""
    qn, to_numpy = _as_tensor(qN, "qN")
    qm, _ = _as_tensor(qM, "qM")
    p_hat, _ = contrast(_log_probs(qn), _log_probs(qm.to(qn.dtype)), alpha)
    return _as_input_kind(p_hat, to_numpy)


def dola_from_distributions(
    qN: Array,  # noqa: N803
    q_list: Sequence[Array] | Mapping[Any, Array],
    alpha: float = 0.1,
) -> tuple[Array, Array]:
    """Seed-compatible: (p_hat, m_idx) with m_idx an index into ``q_list`` per sample."""
    _check_alpha(alpha)
    qn, to_numpy = _as_tensor(qN, "qN")
    qs, _ = _stack_distributions(q_list)
    log_final, log_cand = _log_probs(qn), _log_probs(qs.to(qn.dtype))
    index, _ = select_contrast_layer(log_final, log_cand)
    log_contrast = log_cand[index, torch.arange(log_final.shape[0], device=log_final.device)]
    p_hat, _ = contrast(log_final, log_contrast, alpha)
    return _as_input_kind(p_hat, to_numpy), _as_input_kind(index, to_numpy)
