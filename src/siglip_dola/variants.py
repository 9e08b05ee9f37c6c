"""Ways to score a batch: the baseline and the DoLa variants, as small frozen objects.

A :class:`Variant` names one scoring rule over per-layer scores [L, B, C]:

* ``baseline``: q_N, the final layer's own distribution;
* ``dynamic``: DoLa with the contrast layer chosen per image among ``layers`` (argmax JSD);
* ``static``: DoLa with the one fixed contrast layer ``layers[0]``;
* ``apc``: the ablation that applies only the APC mask (q_N renormalised on V_head);

and the references that judge DoLa, all from the same per-layer scores:

* ``layer``: the readout of the one layer ``layers[0]`` alone, q_l (ranked by its scores);
* ``ensemble``: the mean-logit ensemble of ``layers`` with the final layer,
  softmax(mean of s_l over ``layers`` + N);
* ``beta`` on dynamic/static: the contrast strength, F = log q_N - beta log q_M on the APC set
  (beta = 1 is DoLa and keeps DoLa's names; a milder contrast has beta < 1).

:meth:`Variant.score` is the one place that maps a variant to the DoLa maths; the
classifier, retrieval, best-of-N selection and the seed-compatible functions all go through
it (the batched evaluation in ``zeroshot`` keeps a faster form that is tested equal to it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from siglip_dola.dola import apc_only, apply_dola, class_softmax, mean_logit_ensemble
from siglip_dola.layers import (
    Bucket,
    bucket_candidates,
    default_candidates,
    parse_layers,
    split_buckets,
    validate_candidates,
)

__all__ = [
    "DEFAULT_BETAS",
    "KINDS",
    "PROFILE_FORMAT",
    "REFERENCE_KINDS",
    "Variant",
    "VariantGrid",
    "VariantKind",
    "VariantScores",
    "default_variants",
    "ranking_scores",
    "readout_layers_needed",
    "reference_variants",
]

VariantKind = Literal["baseline", "dynamic", "static", "apc", "layer", "ensemble"]
KINDS: tuple[str, ...] = ("baseline", "dynamic", "static", "apc", "layer", "ensemble")
REFERENCE_KINDS: tuple[str, ...] = ("layer", "ensemble")
PROFILE_FORMAT = "siglip-dola-profile/1"
DEFAULT_BETAS: tuple[float, ...] = (0.25, 0.5)  # milder contrasts next to DoLa's beta = 1


# ----------------------------------------------------------------------------- scores


def ranking_scores(
    p_hat: torch.Tensor, kept: torch.Tensor, q_final: torch.Tensor, *, inplace: bool = False
) -> torch.Tensor:
    """Order for top-k under DoLa: kept classes by p_hat (as 1 + p_hat), then the rest by q_N.

    p_hat is exactly 0 outside the kept set, so it alone cannot rank those classes.
    ``inplace=True`` writes the ranking into ``p_hat`` (the evaluation's hot path).
    """
    offset = torch.where(kept, 1.0, q_final)
    return p_hat.add_(offset) if inplace else p_hat + offset


@dataclass
class VariantScores:
    """What a variant makes of one batch: probabilities [B, C] (p_hat under DoLa, q_N for
    the baseline), the order used for top-k [B, C], and, where the variant has them, the
    contrast layer per image [B] and the APC kept set [B, C]."""

    probs: torch.Tensor
    ranking: torch.Tensor
    chosen_layers: torch.Tensor | None = None
    kept: torch.Tensor | None = None

    def topk(self, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        """(class indices [B, k], their probabilities [B, k]), best first."""
        k = min(k, self.ranking.shape[-1])
        idx = self.ranking.topk(k, dim=-1).indices
        return idx, self.probs.gather(-1, idx)


# ----------------------------------------------------------------------------- variant


def _check_beta(beta: Any) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"beta must be a number >= 0, got {beta!r}")
    if not (beta >= 0.0 and beta != float("inf")):  # also rejects NaN
        raise ValueError(f"contrast strength beta must be a finite number >= 0, got {beta}")
    return float(beta)


@dataclass(frozen=True)
class Variant:
    """One way to score (see the module docstring). Build it with :meth:`baseline`,
    :meth:`dynamic`, :meth:`static`, :meth:`apc`, :meth:`layer`, :meth:`ensemble`,
    :meth:`choose` or :meth:`from_profile`."""

    kind: VariantKind
    alpha: float = 0.0
    layers: tuple[int, ...] = ()  # dynamic: candidates; static: (M,); layer: (l,); ensemble
    bucket: Bucket | None = None
    beta: float = 1.0  # contrast strength of dynamic/static (1 = DoLa); 1 for the other kinds

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown variant kind {self.kind!r}: expected one of {KINDS}")
        if isinstance(self.alpha, bool) or not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "beta", _check_beta(self.beta))
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.bucket is not None:
            object.__setattr__(self, "bucket", tuple(self.bucket))
        if self.kind in ("dynamic", "static", "layer", "ensemble") and not self.layers:
            raise ValueError(f"a {self.kind} variant needs its layer(s)")
        if self.kind in ("static", "layer") and len(self.layers) != 1:
            raise ValueError(f"a {self.kind} variant has one layer, got {list(self.layers)}")
        if self.kind in ("baseline", "apc") and self.layers:
            raise ValueError(f"a {self.kind} variant has no contrast layers")
        if self.kind in REFERENCE_KINDS and self.alpha != 0.0:
            raise ValueError(f"a {self.kind} variant has no APC alpha, got {self.alpha}")
        if self.kind not in ("dynamic", "static") and self.beta != 1.0:
            raise ValueError("only dynamic and static variants have a contrast strength beta")

    # ------------------------------------------------------------------------- constructors

    @classmethod
    def baseline(cls) -> Variant:
        return cls("baseline")

    @classmethod
    def dynamic(
        cls,
        layers: Iterable[int],
        alpha: float = 0.1,
        bucket: Bucket | None = None,
        beta: float = 1.0,
    ) -> Variant:
        return cls("dynamic", alpha, tuple(layers), bucket, beta)

    @classmethod
    def static(cls, layer: int, alpha: float = 0.1, beta: float = 1.0) -> Variant:
        return cls("static", alpha, (layer,), None, beta)

    @classmethod
    def apc(cls, alpha: float = 0.1) -> Variant:
        return cls("apc", alpha)

    @classmethod
    def layer(cls, layer: int) -> Variant:
        """Reference: layer ``layer``'s own readout q_l, instead of the final layer's."""
        return cls("layer", 0.0, (layer,))

    @classmethod
    def ensemble(cls, layers: Iterable[int], bucket: Bucket | None = None) -> Variant:
        """Reference: the mean-logit ensemble of ``layers`` with the final layer N."""
        return cls("ensemble", 0.0, tuple(layers), bucket)

    @classmethod
    def choose(
        cls,
        depth: int,
        *,
        use_dola: bool = True,
        candidate_layers: Sequence[int] | None = None,
        static_layer: int | None = None,
        alpha: float = 0.1,
    ) -> Variant:
        """The one-switch choice: baseline when ``use_dola`` is off, else static with
        ``static_layer`` or dynamic over ``candidate_layers`` (default: the last bucket's
        even layers), validated against the model's ``depth``."""
        if not use_dola:
            return cls.baseline()
        if static_layer is not None:
            if candidate_layers is not None:
                raise ValueError("pass either static_layer or candidate_layers, not both")
            return cls.static(static_layer, alpha).validated(depth)
        layers = default_candidates(depth) if candidate_layers is None else candidate_layers
        return cls.dynamic(layers, alpha).validated(depth)

    @classmethod
    def from_profile(cls, profile: Mapping[str, Any], depth: int) -> Variant:
        """The variant a calibration profile selects, validated against the model's depth
        (mode ``off`` is the baseline)."""
        if profile.get("format") != PROFILE_FORMAT:
            raise ValueError(
                f"not a siglip-dola profile (format {profile.get('format')!r}, expected "
                f"{PROFILE_FORMAT})"
            )
        mode = profile.get("mode")
        if mode == "off":
            return cls.baseline()
        if mode == "apc":
            return cls.apc(float(profile["alpha"]))
        if mode in ("dynamic", "static", "layer", "ensemble"):
            layers = tuple(int(x) for x in profile["layers"])
            bucket = tuple(profile["bucket"]) if profile.get("bucket") else None
            alpha = float(profile["alpha"]) if mode in ("dynamic", "static") else 0.0
            beta = float(profile.get("beta", 1.0)) if mode in ("dynamic", "static") else 1.0
            return cls(mode, alpha, layers, bucket, beta).validated(depth)
        raise ValueError(
            f"profile mode {mode!r} unknown: expected off, dynamic, static, apc, layer or ensemble"
        )

    def validated(self, depth: int) -> Variant:
        """This variant, its layers checked to lie in 1..depth-1."""
        if self.layers:
            validate_candidates(self.layers, depth)
        return self

    # ------------------------------------------------------------------------- identity

    @property
    def uses_dola(self) -> bool:
        """Anything but the plain final layer (the references included)."""
        return self.kind != "baseline"

    @property
    def is_reference(self) -> bool:
        """A reference to judge DoLa by: a single layer, an ensemble, or a contrast of
        strength beta != 1."""
        return self.kind in REFERENCE_KINDS or self.beta != 1.0

    @property
    def contrast_layers(self) -> tuple[int, ...]:
        """The contrast layers M of a dynamic/static variant."""
        return self.layers if self.kind in ("dynamic", "static") else ()

    @property
    def readout_layers(self) -> tuple[int, ...]:
        """The layers besides N that scoring this variant needs read out."""
        return self.layers

    @property
    def name(self) -> str:
        if self.kind == "baseline":
            return "baseline"
        if self.kind == "apc":
            return f"apc-only a={self.alpha:g}"
        if self.kind == "layer":
            return f"layer L{self.layers[0]}"
        where = (
            f"[{self.bucket[0]}-{self.bucket[1]}]"
            if self.bucket
            else ",".join(map(str, self.layers))
        )
        if self.kind == "ensemble":
            return f"ensemble {where}+N"
        strength = "" if self.beta == 1.0 else f" b={self.beta:g}"
        if self.kind == "static":
            return f"static L{self.layers[0]} a={self.alpha:g}{strength}"
        return f"dynamic {where} a={self.alpha:g}{strength}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "alpha": self.alpha,
            "beta": self.beta,
            "layers": list(self.layers),
            "bucket": list(self.bucket) if self.bucket else None,
        }

    # ------------------------------------------------------------------------- scoring

    @torch.no_grad()
    def score(self, scores: torch.Tensor, layers: Sequence[int]) -> VariantScores:
        """This variant on one batch of per-layer scores [L, B, C] whose rows are
        ``layers`` (ascending, ending with the final layer N)."""
        layers = [int(x) for x in layers]
        if scores.ndim != 3 or scores.shape[0] != len(layers):
            raise ValueError(
                f"scores must have shape [L={len(layers)}, B, C] for layers {layers}, got "
                f"{tuple(scores.shape)}"
            )
        missing = [m for m in self.readout_layers if m not in layers]
        if missing:
            raise ValueError(f"{self.name} needs layers {missing}, which were not read out")
        final_row = layers.index(max(layers))
        final = scores[final_row]
        q_final = class_softmax(final.float())
        if self.kind == "baseline":
            return VariantScores(q_final, q_final)
        if self.kind == "layer":
            own = scores[layers.index(self.layers[0])]  # ranked in the scores' own dtype
            return VariantScores(class_softmax(own.float()), own)
        if self.kind == "ensemble":
            rows = torch.tensor([layers.index(m) for m in self.layers] + [final_row])
            probs = mean_logit_ensemble(scores.float().index_select(0, rows))
            return VariantScores(probs, probs)
        if self.kind == "apc":
            p_hat, kept = apc_only(class_softmax(final.float(), log=True), self.alpha)
            return VariantScores(p_hat, ranking_scores(p_hat, kept, q_final), None, kept)
        static = self.layers[0] if self.kind == "static" else None
        result = apply_dola(
            scores,
            layers=layers,
            alpha=self.alpha,
            beta=self.beta,
            static_layer=static,
            candidate_layers=None if static is not None else self.layers,
        )
        ranking = ranking_scores(result.p_hat, result.kept, q_final)
        return VariantScores(result.p_hat, ranking, result.chosen_layers, result.kept)


def readout_layers_needed(variants: Iterable[Variant]) -> set[int]:
    """Every layer the variants need read out besides N (contrast, single and ensemble layers)."""
    return {m for v in variants for m in v.readout_layers}


# ----------------------------------------------------------------------------- grids


def _bucket_candidate_sets(depth: int, num_buckets: int) -> list[tuple[Bucket, tuple[int, ...]]]:
    out = []
    for bucket in split_buckets(depth, num_buckets):
        try:
            out.append((bucket, bucket_candidates(bucket, depth)))
        except ValueError:
            continue  # a bucket holding only the final layer
    return out


def reference_variants(
    depth: int,
    num_buckets: int = 3,
    alphas: Sequence[float] = (0.1,),
    betas: Sequence[float] = DEFAULT_BETAS,
) -> list[Variant]:
    """The references DoLa is judged by: every single layer 1..N-1 alone, the mean-logit
    ensemble of each bucket's candidate layers with N, and dynamic DoLa per bucket and alpha
    at each contrast strength of ``betas`` (beta = 1, DoLa itself, is left out: it is in the
    main grid)."""
    buckets = _bucket_candidate_sets(depth, num_buckets)
    variants = [Variant.layer(m) for m in range(1, depth)]
    variants += [Variant.ensemble(cands, bucket) for bucket, cands in buckets]
    for beta in betas:
        if float(beta) == 1.0:
            continue
        for alpha in alphas:
            variants += [
                Variant.dynamic(cands, float(alpha), bucket, float(beta))
                for bucket, cands in buckets
            ]
    return variants


def default_variants(
    depth: int,
    num_buckets: int = 3,
    alphas: Sequence[float] = (0.1,),
    static_layers: Sequence[int] | None = (),
    apc: bool = True,
    references: bool = False,
    betas: Sequence[float] = DEFAULT_BETAS,
) -> list[Variant]:
    """Baseline, dynamic per bucket, static per layer (``None``: every layer 1..N-1) and
    APC-only, each over ``alphas``; then, with ``references``, :func:`reference_variants`
    (:class:`VariantGrid`, the command line's grid, includes them by default)."""
    variants = [Variant.baseline()]
    if static_layers is None:
        statics: Sequence[int] = range(1, depth)
    else:
        statics = validate_candidates(static_layers, depth) if static_layers else ()
    buckets = _bucket_candidate_sets(depth, num_buckets)
    for alpha in alphas:
        variants += [Variant.dynamic(cands, float(alpha), bucket) for bucket, cands in buckets]
        variants.extend(Variant.static(m, float(alpha)) for m in statics)
        if apc:
            variants.append(Variant.apc(float(alpha)))
    if references:
        variants += reference_variants(depth, num_buckets, alphas, betas)
    return variants


@dataclass(frozen=True)
class VariantGrid:
    """Which variants an evaluation compares, checked before the model is known.

    ``static_layers`` is ``"all"`` (every layer 1..N-1), ``"none"``, or a layer list in the
    syntax of :func:`siglip_dola.layers.parse_layers` (``18,20,22``, ``17-23``, ``bucket:3``),
    checked against the depth in :meth:`variants`. ``references`` adds the reference variants
    (:func:`reference_variants`, contrast strengths ``betas``).
    """

    num_buckets: int = 3
    alphas: tuple[float, ...] = (0.1,)
    static_layers: str = "all"
    apc: bool = True
    references: bool = True
    betas: tuple[float, ...] = DEFAULT_BETAS

    def __post_init__(self) -> None:
        if isinstance(self.num_buckets, bool) or not isinstance(self.num_buckets, int):
            raise TypeError(f"number of buckets must be an integer, got {self.num_buckets!r}")
        if self.num_buckets < 1:
            raise ValueError(f"number of buckets must be >= 1, got {self.num_buckets}")
        alphas = tuple(float(a) for a in self.alphas)
        if not alphas:
            raise ValueError("the alpha grid is empty")
        for alpha in alphas:
            if not 0.0 <= alpha <= 1.0:  # also rejects NaN
                raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        object.__setattr__(self, "alphas", alphas)
        object.__setattr__(self, "betas", tuple(_check_beta(b) for b in self.betas))
        object.__setattr__(self, "static_layers", str(self.static_layers).strip())

    def variants(self, depth: int) -> list[Variant]:
        """The grid for a model of ``depth`` layers (layer lists checked against it)."""
        if self.num_buckets > depth:
            raise ValueError(
                f"{self.num_buckets} buckets for a model with {depth} layers: at most {depth}"
            )
        if self.static_layers == "all":
            statics: Sequence[int] | None = None
        elif self.static_layers == "none":
            statics = ()
        else:
            statics = parse_layers(self.static_layers, depth, self.num_buckets)
        return default_variants(
            depth,
            self.num_buckets,
            self.alphas,
            statics,
            apc=self.apc,
            references=self.references,
            betas=self.betas,
        )
