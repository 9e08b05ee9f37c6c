"""Zero-shot classification with DoLa: every variant from one backbone pass, and a classifier.

1. :func:`layer_scores` - per-layer embeddings [L, N, D] x text bank -> scores [L, N, C];
2. :func:`evaluate_variants` / :func:`evaluate_embeddings` - baseline, dynamic, static and
   APC-only variants over an alpha grid and the references (single layers, ensembles,
   contrast strengths), all from the same scores, with their metrics, flips against the
   baseline and bootstrap intervals (a batched form of :meth:`Variant.score`, tested equal
   to it);
3. :func:`evaluate_dataset` - text bank, one readout pass over an image set
   (:func:`siglip_dola.embeddings.extract_layer_embeddings`), every variant; data-parallel
   under torchrun.

:class:`ZeroShotClassifier` scores new images with one variant (``use_dola=True`` is the
switch); :func:`classify_files` runs it over image files with counted skips.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from siglip_dola.data import ImageSet, Skipped
from siglip_dola.distributed import DistContext
from siglip_dola.dola import (
    apc_only,
    class_softmax,
    contrast_stack_alphas,
    mean_logit_ensemble,
    select_contrast_layer,
)
from siglip_dola.embeddings import LayerEmbeddingSet, as_tensor, extract_layer_embeddings
from siglip_dola.metrics import (
    VariantResult,
    class_labels,
    compare_with_baseline,
    metrics_of_ranks,
    ranks_of_checked_labels,
)
from siglip_dola.readout._common import move_batch
from siglip_dola.readout.base import LoadedModel
from siglip_dola.settings import RunSettings
from siglip_dola.stats import DEFAULT_BOOTSTRAP, Bootstrap
from siglip_dola.text import build_text_bank, validate_class_names
from siglip_dola.variants import (
    Variant,
    VariantScores,
    default_variants,
    ranking_scores,
    readout_layers_needed,
)

__all__ = [
    "BOOTSTRAP",
    "ClassifierOutput",
    "Evaluation",
    "Prediction",
    "Predictions",
    "ZeroShotClassifier",
    "classify_files",
    "default_variants",
    "evaluate_dataset",
    "evaluate_embeddings",
    "evaluate_variants",
    "layer_scores",
]

# Scores held at once when evaluating variants: [layers, images, classes] blocks of 64 MB.
SCORE_BLOCK_ELEMENTS = 16_000_000
NORM_EPS = 1e-12  # torch.nn.functional.normalize's default
BOOTSTRAP = DEFAULT_BOOTSTRAP  # intervals of every evaluation: 2,000 resamples, 95%, seed 0

ClassifierOutput = VariantScores  # what ZeroShotClassifier.predict returns


def layer_scores(
    embeddings: np.ndarray | torch.Tensor, text_bank: torch.Tensor, tau: float, block: int = 4096
) -> torch.Tensor:
    """Scores [L, N, C] = <normalised z_l, normalised t_c> / tau, computed in image blocks."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    emb = as_tensor(embeddings)
    if emb.shape[-1] != text_bank.shape[-1]:
        raise ValueError(
            f"embedding size mismatch: image embeddings have D={emb.shape[-1]}, text bank has "
            f"D={text_bank.shape[-1]}; the text bank must come from the paired text tower"
        )
    bank = torch.nn.functional.normalize(text_bank.float(), dim=-1)
    out = []
    for start in range(0, emb.shape[1], block):
        z = emb[:, start : start + block].float()
        # Dividing the [.., C] products by the norms equals normalising z first (up to
        # rounding) and does not write a normalised copy of the embeddings.
        scale = torch.linalg.vector_norm(z, dim=-1, keepdim=True).clamp_min_(NORM_EPS).mul_(tau)
        out.append((z @ bank.T).div_(scale))
    return out[0] if len(out) == 1 else torch.cat(out, dim=1)


# ----------------------------------------------------------------------------- batched engine


@dataclass
class _BlockOutcome:
    ranks: list[torch.Tensor]  # per variant [b]: position of the true label
    chosen: list[torch.Tensor | None]  # per variant [b]
    kept: list[torch.Tensor | None]  # per variant [b] kept-set sizes
    layer_correct: torch.Tensor  # [L, b] each layer's own readout right at top-1
    jsd_sums: dict[int, float]  # layer l of a layer variant -> sum over b of JSD(q_N || q_l)


def _block_outcome(
    scores: torch.Tensor, labels: torch.Tensor, layers: list[int], variants: Sequence[Variant]
) -> _BlockOutcome:
    """Every variant on one block of per-layer scores [L, b, C] with labels [b].

    Log-distributions are computed once, the JSD only for layers that a dynamic variant
    chooses among (and, apart, for the layers of single-layer variants, whose mean JSD is
    reported); the contrast layer of a dynamic variant depends on its candidates only, and
    all contrasts of an alpha grid at one strength beta go through the DoLa core as one stack
    (built once when every alpha has the same contrasts, as a grid of alphas does). Every
    layer's own label ranks are computed once: the single-layer variants take theirs.
    """
    scores_f = scores.float()
    log_q = class_softmax(scores_f, log=True)
    log_final = log_q[-1]
    q_final = log_final.exp()
    row = {m: i for i, m in enumerate(layers)}
    dynamic_layers = sorted({m for v in variants if v.kind == "dynamic" for m in v.layers})
    column = {m: i for i, m in enumerate(dynamic_layers)}
    chosen: dict[tuple[int, ...], torch.Tensor] = {}  # dynamic candidates -> contrast rows [b]
    jsd_sums: dict[int, float] = {}
    single_layers = sorted({v.layers[0] for v in variants if v.kind == "layer"})
    if dynamic_layers:
        rows = torch.tensor([row[m] for m in dynamic_layers])
        _, divergence = select_contrast_layer(log_final, log_q.index_select(0, rows))  # [b, K]
        for variant in variants:
            if variant.kind == "dynamic" and variant.layers not in chosen:
                cols = torch.tensor([column[m] for m in variant.layers])
                pick = divergence.index_select(1, cols).argmax(-1)  # first max: earliest
                chosen[variant.layers] = torch.tensor(variant.layers)[pick]
        for m in single_layers:
            if m in column:
                jsd_sums[m] = divergence[:, column[m]].double().sum().item()
    others = [m for m in single_layers if m not in jsd_sums]
    if others:
        rows = torch.tensor([row[m] for m in others])
        _, divergence = select_contrast_layer(log_final, log_q.index_select(0, rows))
        for k, total in enumerate(divergence.double().sum(0).tolist()):
            jsd_sums[others[k]] = total
    n = len(variants)
    layer_ranks = ranks_of_checked_labels(scores, labels)  # [L, b], in the scores' own dtype
    out = _BlockOutcome([None] * n, [None] * n, [None] * n, layer_ranks == 0, jsd_sums)

    def rank(group: list[int], ranking: torch.Tensor) -> None:  # ranking [len(group), b, C]
        ranks = ranks_of_checked_labels(ranking, labels)
        for k, i in enumerate(group):
            out.ranks[i] = ranks[k]

    for i, variant in enumerate(variants):
        if variant.kind == "baseline":
            rank([i], q_final[None])
        elif variant.kind == "layer":
            out.ranks[i] = layer_ranks[row[variant.layers[0]]]
        elif variant.kind == "ensemble":
            rows = torch.tensor([row[m] for m in variant.layers] + [len(layers) - 1])
            rank([i], mean_logit_ensemble(scores_f.index_select(0, rows))[None])
        elif variant.kind == "apc":
            p_hat, kept = apc_only(log_final, variant.alpha)
            rank([i], ranking_scores(p_hat, kept, q_final, inplace=True)[None])
            out.kept[i] = kept.sum(-1)
        elif variant.kind == "dynamic":
            out.chosen[i] = chosen[variant.layers]
        else:
            out.chosen[i] = torch.full_like(q_final[:, 0], variant.layers[0], dtype=torch.long)
    # (alpha, beta) -> its contrast variants; then one stack per beta and list of contrasts
    by_alpha: dict[tuple[float, float], list[int]] = {}
    for i, v in enumerate(variants):
        if v.kind in ("dynamic", "static"):
            by_alpha.setdefault((v.alpha, v.beta), []).append(i)
    by_contrasts: dict[tuple, list[tuple[float, list[int]]]] = {}
    for (alpha, beta), group in by_alpha.items():
        key = (beta, tuple((variants[i].kind, variants[i].layers) for i in group))
        by_contrasts.setdefault(key, []).append((alpha, group))
    for (beta, _), members in by_contrasts.items():
        first_group = [variants[i] for i in members[0][1]]
        stack = _contrast_stack_rows(log_q, row, first_group, chosen)
        per_alpha = contrast_stack_alphas(log_final, stack, [alpha for alpha, _ in members], beta)
        for (_, group), (p_hat, kept) in zip(members, per_alpha):
            rank(
                group, ranking_scores(p_hat, kept, q_final, inplace=True)
            )  # ranking_scores [S, b, C]
            sizes = kept.sum(-1)
            for i in group:
                out.kept[i] = sizes
    return out


def _contrast_stack_rows(
    log_q: torch.Tensor,
    row: dict[int, int],
    group: Sequence[Variant],
    chosen: dict[tuple[int, ...], torch.Tensor],
) -> torch.Tensor:
    """The contrast log-distributions [S, b, C] of a group of dynamic/static variants."""
    arange = torch.arange(log_q.shape[1])
    row_of_layer = torch.zeros(max(row) + 1, dtype=torch.long)
    row_of_layer[torch.tensor(list(row))] = torch.tensor(list(row.values()))
    parts = []
    for variant in group:
        if variant.kind == "static":
            parts.append(log_q[row[variant.layers[0]]])
        else:
            parts.append(log_q[row_of_layer[chosen[variant.layers]], arange])
    return torch.stack(parts)


def _check_layers(layers: list[int], variants: Sequence[Variant]) -> None:
    missing = sorted(m for m in readout_layers_needed(variants) if m not in layers)
    if missing:
        raise ValueError(f"variants need layers {missing} that were not read out (have {layers})")


def _summarise(
    outcomes: list[_BlockOutcome],
    layers: list[int],
    labels: torch.Tensor,
    variants: Sequence[Variant],
    num_classes: int,
    bootstrap: Bootstrap | None = BOOTSTRAP,
) -> tuple[list[VariantResult], dict[int, float]]:
    def joined(parts: list[torch.Tensor]) -> torch.Tensor:
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    layer_correct = torch.cat([o.layer_correct for o in outcomes], dim=1)
    per_layer = dict(zip(layers, layer_correct.float().mean(-1).tolist()))
    ranks = torch.stack([joined([o.ranks[v] for o in outcomes]) for v in range(len(variants))])
    metrics = metrics_of_ranks(ranks, labels, num_classes)
    n = max(1, len(labels))
    mean_jsd = {m: sum(o.jsd_sums[m] for o in outcomes) / n for m in outcomes[0].jsd_sums}
    results = []
    for v, variant in enumerate(variants):
        chosen = None if outcomes[0].chosen[v] is None else joined([o.chosen[v] for o in outcomes])
        kept = None if outcomes[0].kept[v] is None else joined([o.kept[v] for o in outcomes])
        jsd = mean_jsd[variant.layers[0]] if variant.kind == "layer" else None
        results.append(
            VariantResult(
                variant, metrics[v], ranks[v], chosen_layers=chosen, kept_sizes=kept, mean_jsd=jsd
            )
        )
    return compare_with_baseline(results, bootstrap), per_layer


@torch.no_grad()
def evaluate_variants(
    scores: torch.Tensor,
    layers: Sequence[int],
    labels: np.ndarray | torch.Tensor,
    variants: Sequence[Variant],
    num_classes: int | None = None,
    bootstrap: Bootstrap | None = BOOTSTRAP,
) -> tuple[list[VariantResult], dict[int, float]]:
    """Every variant from one set of per-layer scores [L, N, C].

    Returns the variant results (in order, each with its flips against the baseline and,
    unless ``bootstrap`` is None, the interval of its acc1 change) and the top-1 accuracy of
    each layer's own readout.
    """
    layers = list(layers)
    _check_layers(layers, variants)
    labels_t = class_labels(labels, scores.shape[-1], scores.device)
    outcome = _block_outcome(scores, labels_t, layers, variants)
    return _summarise(
        [outcome], layers, labels_t, variants, num_classes or scores.shape[-1], bootstrap
    )


def _embedding_outcomes(
    embeddings: LayerEmbeddingSet,
    text_bank: torch.Tensor,
    tau: float,
    variants: Sequence[Variant],
    max_block_elements: int,
    progress: bool,
) -> tuple[list[_BlockOutcome], torch.Tensor]:
    """Block outcomes of every variant, and the labels as checked class indices."""
    layers = list(embeddings.layers)
    labels = class_labels(embeddings.labels, text_bank.shape[0])
    n = len(labels)
    block = max(1, min(max(n, 1), max_block_elements // (len(layers) * text_bank.shape[0])))
    outcomes = []
    for start in tqdm(
        range(0, n, block), desc="scoring", unit="block", disable=not progress, leave=False
    ):
        scores = layer_scores(embeddings.embeddings[:, start : start + block], text_bank, tau)
        block_labels = labels[start : start + block]
        outcomes.append(_block_outcome(scores, block_labels, layers, variants))
    return outcomes, labels


@torch.no_grad()
def evaluate_embeddings(
    embeddings: LayerEmbeddingSet,
    text_bank: torch.Tensor,
    tau: float,
    variants: Sequence[Variant],
    num_classes: int | None = None,
    max_block_elements: int = SCORE_BLOCK_ELEMENTS,
    progress: bool = False,
    bootstrap: Bootstrap | None = BOOTSTRAP,
) -> tuple[list[VariantResult], dict[int, float]]:
    """:func:`evaluate_variants` over image blocks, so that [L, N, C] never exists whole.

    A block holds at most ``max_block_elements`` scores: memory stays bounded for any number
    of images and classes (20,000+ classes included).
    """
    layers = list(embeddings.layers)
    _check_layers(layers, variants)
    outcomes, labels = _embedding_outcomes(
        embeddings, text_bank, tau, variants, max_block_elements, progress
    )
    return _summarise(
        outcomes, layers, labels, variants, num_classes or text_bank.shape[0], bootstrap
    )


# ----------------------------------------------------------------------------- classifier


class ZeroShotClassifier:
    """Zero-shot classifier over a SigLIP readout, with DoLa behind one switch.

    ``variant`` says how to score; without it, ``use_dola=True`` contrasts the final layer
    with ``candidate_layers`` (dynamic, default: the last bucket's even layers) or
    ``static_layer`` (:meth:`Variant.choose`), and a calibration ``profile`` selects the
    variant it recorded (DoLa off when calibration found no gain). ``tau`` defaults to the
    model's own; ``settings`` give the device, dtype and text-bank cache.
    """

    def __init__(
        self,
        model: LoadedModel,
        class_names: Sequence[str],
        templates: Sequence[str] = ("a photo of a {c}.",),
        use_dola: bool = True,
        *,
        variant: Variant | None = None,
        candidate_layers: Sequence[int] | None = None,
        static_layer: int | None = None,
        alpha: float = 0.1,
        tau: float | None = None,
        profile: dict[str, Any] | None = None,
        settings: RunSettings | None = None,
    ) -> None:
        if model.text is None:
            raise ValueError("this model has no text tower: load it with a text model spec")
        self.model = model
        self.class_names = validate_class_names(class_names)
        self.settings = RunSettings.coerce(settings)
        depth = model.vision.depth
        if variant is not None:
            self.variant = variant.validated(depth)
        elif profile is not None:
            self.variant = Variant.from_profile(profile, depth)
        else:
            self.variant = Variant.choose(
                depth,
                use_dola=use_dola,
                candidate_layers=candidate_layers,
                static_layer=static_layer,
                alpha=alpha,
            )
        if not use_dola:
            self.variant = Variant.baseline()
        self.tau = model.tau if tau is None else float(tau)
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        self.text_bank = build_text_bank(
            model.text,
            self.class_names,
            templates,
            cache_dir=self.settings.cache_dir,
            progress=False,
        )

    @property
    def use_dola(self) -> bool:
        return self.variant.uses_dola

    @torch.no_grad()
    def predict(self, images: Sequence[Image.Image]) -> ClassifierOutput:
        """Scores of RGB images under the classifier's variant: one backbone pass."""
        vision = self.model.vision
        batch = move_batch(
            vision.preprocess(list(images)),
            torch.device(self.settings.device),
            self.settings.torch_dtype,
        )
        out = vision.forward_layers(batch, self.variant.readout_layers)
        scores = layer_scores(out.embeddings.float().cpu(), self.text_bank, self.tau)
        return self.variant.score(scores, out.layers)


@dataclass
class Prediction:
    """One classified image: its top-k classes with probabilities, best first."""

    source: str
    top_k: list[tuple[str, float]]
    contrast_layer: int | None = None  # DoLa's contrast layer M (dynamic/static)

    @property
    def label(self) -> str:
        return self.top_k[0][0]

    def to_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "image": self.source,
            "prediction": self.label,
            "top_k": [{"class": c, "p": p} for c, p in self.top_k],
        }
        if self.contrast_layer is not None:
            row["contrast_layer"] = self.contrast_layer
        return row


@dataclass
class Predictions:
    """What :func:`classify_files` produced: a prediction per usable image, the skips."""

    variant: Variant
    items: list[Prediction] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def classify_files(
    classifier: ZeroShotClassifier,
    paths: Sequence[Path | str],
    top_k: int = 5,
    on_prediction: Any = None,
) -> Predictions:
    """Classify image files through the input pipeline (:mod:`siglip_dola.embeddings`: loader
    workers, batches of ``classifier.settings.batch_size``, the embedding cache); unreadable
    files are skipped and listed. ``on_prediction(prediction)`` is called for each image."""
    if top_k < 1:
        raise ValueError(f"top-k must be >= 1, got {top_k}")
    files = ImageSet(
        "images", classifier.class_names, [Path(p) for p in paths], np.zeros(len(paths), np.int64)
    )
    embeddings = extract_layer_embeddings(
        classifier.model.vision,
        files,
        classifier.variant.contrast_layers,
        classifier.settings,
    )
    result = Predictions(classifier.variant, skipped=list(embeddings.skipped))
    names = classifier.class_names
    for start in range(0, len(embeddings.indices), classifier.settings.batch_size):
        rows = slice(start, start + classifier.settings.batch_size)
        scores = layer_scores(embeddings.embeddings[:, rows], classifier.text_bank, classifier.tau)
        out = classifier.variant.score(scores, embeddings.layers)
        idx, probs = out.topk(top_k)
        for i, position in enumerate(embeddings.indices[rows].tolist()):
            prediction = Prediction(
                files.source(position),
                [(names[int(c)], float(p)) for c, p in zip(idx[i], probs[i])],
                None if out.chosen_layers is None else int(out.chosen_layers[i]),
            )
            result.items.append(prediction)
            if on_prediction is not None:
                on_prediction(prediction)
    return result


# ----------------------------------------------------------------------------- whole data set


@dataclass
class Evaluation:
    """What one evaluation produced. ``embeddings`` is this process's shard in a
    data-parallel run (the whole set otherwise) and can be reused for more variants."""

    results: list[VariantResult]
    per_layer_acc1: dict[int, float]
    embeddings: LayerEmbeddingSet
    text_bank: torch.Tensor
    tau: float
    labels: np.ndarray  # [N] of the evaluated images, in data-set order
    skipped: list[Skipped]

    @property
    def num_images(self) -> int:
        return len(self.labels)


def evaluate_dataset(
    model: LoadedModel,
    image_set: ImageSet,
    templates: Sequence[str],
    variants: Sequence[Variant],
    *,
    readout_layers: Iterable[int] | None = None,
    tau: float | None = None,
    settings: RunSettings | None = None,
    dist: DistContext | None = None,
    bootstrap: Bootstrap | None = BOOTSTRAP,
) -> Evaluation | None:
    """Text bank, one readout pass over the images, then every variant from its scores.

    ``readout_layers`` defaults to every layer 1..N-1 (for the per-layer accuracy curve);
    the layers the variants need are always added. In a data-parallel run (``dist``) each
    process reads its block of images; rank 0 gathers the per-image outcomes and returns the
    evaluation, the other ranks return ``None``.
    """
    if model.text is None:
        raise ValueError(f"model {model.vision.name} has no text tower: pass a text model spec")
    settings = RunSettings.coerce(settings)
    ctx = dist or DistContext()
    depth = model.vision.depth
    layers = set(range(1, depth) if readout_layers is None else readout_layers)
    layers |= readout_layers_needed(variants)
    bank = build_text_bank(
        model.text,
        image_set.class_names,
        templates,
        cache_dir=settings.cache_dir,
        progress=settings.progress,
    )
    embeddings = extract_layer_embeddings(
        model.vision,
        image_set,
        sorted(layers),
        settings.replace(progress=settings.progress and ctx.is_main),
        shard=ctx.shard,
    )
    tau = model.tau if tau is None else float(tau)
    emb_layers = list(embeddings.layers)
    _check_layers(emb_layers, variants)
    outcomes, _ = _embedding_outcomes(
        embeddings, bank, tau, variants, SCORE_BLOCK_ELEMENTS, settings.progress
    )
    gathered = ctx.gather((outcomes, embeddings.labels, embeddings.skipped))
    if gathered is None:
        return None
    all_outcomes = [o for part in gathered for o in part[0]]
    labels = np.concatenate([part[1] for part in gathered])
    skipped = [s for part in gathered for s in part[2]]
    if len(labels) == 0:
        raise ValueError(f"no usable image in {image_set.name}: all {len(image_set)} were skipped")
    results, per_layer = _summarise(
        all_outcomes,
        emb_layers,
        torch.as_tensor(labels),
        variants,
        len(image_set.class_names),
        bootstrap,
    )
    return Evaluation(results, per_layer, embeddings, bank, tau, labels, skipped)
