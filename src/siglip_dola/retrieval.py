"""Retrieval re-ranking with DoLa, and recall@k, in bounded memory.

Image -> text: for each image the top-K captions by the baseline score form its shortlist;
DoLa, with the shortlist as the candidate set, re-ranks it.

Text -> image: for each caption the top-K images by the baseline score form its shortlist.
Each (image, caption) pair is re-scored by the image's DoLa distribution over the caption's
competitors: the image's own caption shortlist, with the caption put in its last slot when it
is not already there. Images are then re-ranked by that probability (images whose APC set
excludes the caption come after, by their baseline probability).

With K = all both directions are DoLa over the full candidate set. Score matrices exist only
in blocks of queries; top-k is taken per block.

The retrieval data sets (:class:`RetrievalSet`, :func:`load_retrieval_set`) live in
:mod:`siglip_dola.data` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from siglip_dola.data import RetrievalSet, load_retrieval_set
from siglip_dola.embeddings import as_tensor, extract_layer_embeddings
from siglip_dola.layers import default_candidates
from siglip_dola.settings import RunSettings
from siglip_dola.text import encode_captions
from siglip_dola.variants import Variant

__all__ = [
    "RetrievalResult",
    "RetrievalSet",
    "evaluate_retrieval",
    "image_to_text",
    "load_retrieval_set",
    "recall_at_k",
    "retrieval_metrics",
    "text_to_image",
]

RECALL_KS = (1, 5, 10)


# ----------------------------------------------------------------------------- metrics


def recall_at_k(
    top: torch.Tensor, positives: Sequence[Sequence[int]], ks: Sequence[int] = RECALL_KS
) -> dict[int, float]:
    """Share of queries with any positive among their first k results (``top`` [Q, >=k])."""
    hits = torch.zeros(top.shape[0], top.shape[1], dtype=torch.bool)
    for q, pos in enumerate(positives):
        if pos:
            hits[q] = torch.isin(top[q], torch.as_tensor(list(pos)))
    return {k: hits[:, :k].any(-1).float().mean().item() for k in ks}


# ----------------------------------------------------------------------------- re-ranking


@dataclass
class RetrievalResult:
    """Top results per query (indices, best first) for the baseline and for DoLa."""

    baseline_top: torch.Tensor  # [Q, k_max]
    dola_top: torch.Tensor  # [Q, k_max]
    chosen_layers: torch.Tensor | None = None  # [Q] (image -> text only)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def _inverse_norms(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x.float(), dim=-1).clamp_min(1e-12).reciprocal()


def _variant_or_default(variant: Variant | None, layers: Sequence[int]) -> Variant:
    """``variant``, or dynamic DoLa over every given layer below the final one."""
    return Variant.dynamic(tuple(layers)[:-1]) if variant is None else variant


@dataclass
class _ImageShortlists:
    captions: torch.Tensor  # [I, K] caption indices, by baseline score
    scores: torch.Tensor  # [L, I, K] per-layer scores over the shortlist


@torch.no_grad()
def image_to_text(
    image_layers: np.ndarray | torch.Tensor,
    layers: Sequence[int],
    text: torch.Tensor,
    tau: float,
    shortlist: int | None = 50,
    variant: Variant | None = None,
    k_max: int = 10,
    max_block_elements: int = 4_000_000,
    progress: bool = False,
) -> tuple[RetrievalResult, _ImageShortlists]:
    """Rank captions for every image; ``image_layers`` [L, I, D] ends with the final layer.

    ``shortlist=None`` means all captions; ``variant`` re-ranks the shortlist (default:
    dynamic DoLa over every given layer below the final one). Returns the ranking and the
    shortlists with their per-layer scores (reused by :func:`text_to_image`).
    """
    image_layers = as_tensor(image_layers)
    n_layers, n_images, _ = image_layers.shape
    n_text = text.shape[0]
    k_short = n_text if shortlist is None else min(shortlist, n_text)
    k_out = min(k_max, n_text)
    # Scale by inverse text norms instead of normalising a copy of a possibly huge caption bank.
    text_scale = _inverse_norms(text) / tau
    per_image = max(n_text, n_layers * k_short * 4, k_short * text.shape[1])
    block = max(1, min(n_images, max_block_elements // per_image))
    base_tops, dola_tops, chosen_all, short_idx, short_scores = [], [], [], [], []
    variant = _variant_or_default(variant, layers)
    for start in tqdm(
        range(0, n_images, block),
        desc="image->text",
        unit="block",
        disable=not progress,
        leave=False,
    ):
        z = _normalise(image_layers[:, start : start + block])  # [L, b, D]
        baseline = (z[-1] @ text.T).mul_(text_scale)  # [b, T]
        top = baseline.topk(max(k_short, k_out), dim=-1).indices
        cand = top[:, :k_short]
        per_layer = torch.einsum("lbd,bkd->lbk", z, text[cand]).mul_(text_scale[cand])  # [L, b, K]
        result = variant.score(per_layer, layers)
        order = result.ranking.argsort(dim=-1, descending=True, stable=True)
        reranked = torch.cat(
            [cand.gather(1, order), top[:, k_short:]], dim=1
        )  # rest keeps baseline order
        base_tops.append(top[:, :k_out])
        dola_tops.append(reranked[:, :k_out])
        chosen_all.append(result.chosen_layers)
        short_idx.append(cand)
        short_scores.append(per_layer)
    chosen = torch.cat(chosen_all) if chosen_all and chosen_all[0] is not None else None
    result = RetrievalResult(torch.cat(base_tops), torch.cat(dola_tops), chosen)
    return result, _ImageShortlists(torch.cat(short_idx), torch.cat(short_scores, dim=1))


def _pair_scores(
    image_layers: torch.Tensor,
    image_scale: torch.Tensor,
    text: torch.Tensor,
    text_scale: torch.Tensor,
    images: torch.Tensor,
    captions: torch.Tensor,
    max_block_elements: int,
) -> torch.Tensor:
    """Per-layer scores of (image, caption) pairs [L, m], gathering at most a block at a time."""
    n_layers, _, dim = image_layers.shape
    chunk = max(1, max_block_elements // (n_layers * dim))
    out = []
    for start in range(0, images.numel(), chunk):
        img, cap = images[start : start + chunk], captions[start : start + chunk]
        dots = torch.einsum("lmd,md->lm", image_layers[:, img].float(), text[cap].float())
        out.append(dots.mul_(image_scale[:, img]).mul_(text_scale[cap]))
    return torch.cat(out, dim=1)


@torch.no_grad()
def text_to_image(
    image_layers: np.ndarray | torch.Tensor,
    layers: Sequence[int],
    text: torch.Tensor,
    tau: float,
    shortlists: _ImageShortlists,
    shortlist: int | None = 50,
    variant: Variant | None = None,
    k_max: int = 10,
    max_block_elements: int = 4_000_000,
    progress: bool = False,
) -> RetrievalResult:
    """Rank images for every caption (see the module docstring for the DoLa score)."""
    image_layers = as_tensor(image_layers)
    n_layers, n_images, _ = image_layers.shape
    n_text = text.shape[0]
    k_img = n_images if shortlist is None else min(shortlist, n_images)
    k_out = min(k_max, n_images)
    k_cap = shortlists.captions.shape[1]
    text_scale = _inverse_norms(text) / tau
    final = _normalise(image_layers[-1])  # [I, D]
    image_scale = _inverse_norms(image_layers)  # [L, I]
    per_pair = max(n_images, k_img * n_layers * k_cap * 4)
    block = max(1, min(n_text, max_block_elements // per_pair))
    base_tops, dola_tops = [], []
    variant = _variant_or_default(variant, layers)
    for start in tqdm(
        range(0, n_text, block), desc="text->image", unit="block", disable=not progress, leave=False
    ):
        t_idx = torch.arange(start, min(start + block, n_text))
        baseline = (text[t_idx] @ final.T).mul_(text_scale[t_idx, None])  # [b, I]
        top = baseline.topk(max(k_img, k_out), dim=-1).indices
        imgs = top[:, :k_img]  # [b, Ki]
        b, ki = imgs.shape
        cand = shortlists.captions[imgs]  # [b, Ki, K]
        scores = shortlists.scores[:, imgs.reshape(-1)]  # [L, b*Ki, K], a copy
        hit = cand == t_idx[:, None, None]
        present = hit.any(-1)
        slot = torch.where(
            present, hit.float().argmax(-1), torch.full_like(present, k_cap - 1, dtype=torch.long)
        )
        missing = (~present).nonzero(as_tuple=True)
        if missing[0].numel():
            # The caption is not in this image's shortlist: put it in the last slot.
            scores[:, missing[0] * ki + missing[1], k_cap - 1] = _pair_scores(
                image_layers,
                image_scale,
                text,
                text_scale,
                imgs[missing],
                t_idx[missing[0]],
                max_block_elements,
            )
        rank = variant.score(scores, layers).ranking
        pair_score = rank.gather(1, slot.reshape(-1, 1)).reshape(b, ki)
        order = pair_score.argsort(dim=-1, descending=True, stable=True)
        reranked = torch.cat([imgs.gather(1, order), top[:, k_img:]], dim=1)
        base_tops.append(top[:, :k_out])
        dola_tops.append(reranked[:, :k_out])
    return RetrievalResult(torch.cat(base_tops), torch.cat(dola_tops))


def retrieval_metrics(
    i2t: RetrievalResult, t2i: RetrievalResult, dataset: RetrievalSet
) -> dict[str, dict[str, float]]:
    """clip_benchmark's metric names for the baseline and DoLa."""
    captions_of = dataset.image_captions()
    image_of = [[int(i)] for i in dataset.caption_image]
    out: dict[str, dict[str, float]] = {}
    for which in ("baseline", "dola"):
        text_r = recall_at_k(getattr(i2t, f"{which}_top"), captions_of)
        image_r = recall_at_k(getattr(t2i, f"{which}_top"), image_of)
        out[which] = {
            **{f"image_retrieval_recall@{k}": v for k, v in image_r.items()},
            **{f"text_retrieval_recall@{k}": v for k, v in text_r.items()},
        }
    return out


# ----------------------------------------------------------------------------- whole data set


def evaluate_retrieval(
    model,
    dataset: RetrievalSet,
    variant: Variant | None = None,
    *,
    shortlist: int | None = 50,
    tau: float | None = None,
    settings: RunSettings | None = None,
) -> dict[str, Any]:
    """Both directions, baseline and ``variant`` (default: dynamic DoLa over the last bucket's
    even layers), as clip_benchmark's results (``dataset``, ``model``, ``pretrained``,
    ``task``, ``metrics``, ``language``) plus a ``dola`` block. ``dataset.images`` may be a
    streaming source (a webdataset caption set)."""
    if model.text is None:
        raise ValueError(f"model {model.vision.name} has no text tower: pass a text model spec")
    settings = RunSettings.coerce(settings)
    depth = model.vision.depth
    variant = Variant.dynamic(default_candidates(depth)) if variant is None else variant
    variant = variant.validated(depth)
    if shortlist is not None and shortlist < 1:
        raise ValueError(f"shortlist must be >= 1 or all, got {shortlist}")
    text = encode_captions(
        model.text, dataset.captions, cache_dir=settings.cache_dir, progress=settings.progress
    )
    emb = extract_layer_embeddings(model.vision, dataset.images, variant.contrast_layers, settings)
    tau = model.tau if tau is None else float(tau)
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    # Captions of skipped images have no image left to retrieve: drop them, and say so.
    kept_images = {int(i): row for row, i in enumerate(emb.indices)}
    caption_rows = [t for t, i in enumerate(dataset.caption_image.tolist()) if i in kept_images]
    sub = RetrievalSet(
        dataset.name,
        dataset.images,
        [dataset.captions[t] for t in caption_rows],
        np.asarray(
            [kept_images[int(dataset.caption_image[t])] for t in caption_rows], dtype=np.int64
        ),
        image_count=len(emb.indices),
    )
    text = text[caption_rows]
    options = {"variant": variant, "shortlist": shortlist, "progress": settings.progress}
    i2t, lists = image_to_text(emb.embeddings, emb.layers, text, tau, **options)
    t2i = text_to_image(emb.embeddings, emb.layers, text, tau, lists, **options)
    metrics = retrieval_metrics(i2t, t2i, sub)
    chosen = [] if i2t.chosen_layers is None else i2t.chosen_layers.tolist()
    return {  # clip_benchmark's keys first (the command line names the model spec)
        "dataset": dataset.name,
        "model": model.vision.name,
        "pretrained": "",
        "task": "zeroshot_retrieval",
        "metrics": metrics["baseline"],
        "language": "en",
        "dola": {
            "metrics": metrics["dola"],
            "mode": variant.kind,
            "variant": variant.name,
            "candidate_layers": list(variant.contrast_layers),
            "alpha": variant.alpha,
            "tau": tau,
            "shortlist": "all" if shortlist is None else shortlist,
            "num_images": sub.num_images,
            "num_captions": len(sub.captions),
            "chosen_layer_histogram": {str(m): chosen.count(m) for m in variant.contrast_layers},
            "skipped": {"count": len(emb.skipped), "items": [s.__dict__ for s in emb.skipped]},
        },
    }
