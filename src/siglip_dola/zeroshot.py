"""Zero-shot classification with DoLa: one backbone pass per batch, every variant from it.

The pipeline is split so that each step can be cached or reused:

1. :func:`extract_layer_embeddings` - images -> per-layer embeddings [L, N, D] (one forward
   per batch; optionally memory-mapped on disk);
2. :func:`layer_scores` - embeddings x text bank -> per-layer scores [L, N, C];
3. :func:`evaluate_variants` - baseline, dynamic, static and APC-only variants over an alpha
   grid, all from the same scores, with their metrics.

:class:`ZeroShotClassifier` wraps the three for new images (``use_dola=True`` is the switch).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from siglip_dola.data import ImageError, ImageSet, Skipped
from siglip_dola.distributed import DistContext, shard_positions
from siglip_dola.dola import (
    apc_only,
    apply_dola,
    class_softmax,
    contrast_stack_alphas,
    select_contrast_layer,
)
from siglip_dola.layers import (
    bucket_candidates,
    default_candidates,
    split_buckets,
    validate_candidates,
)
from siglip_dola.readout._common import move_batch
from siglip_dola.readout.base import LoadedModel, VisionReadout
from siglip_dola.text import build_text_bank, validate_class_names

__all__ = [
    "ClassifierOutput",
    "LayerEmbeddingSet",
    "Variant",
    "VariantResult",
    "ZeroShotClassifier",
    "classification_metrics",
    "default_variants",
    "evaluate_variants",
    "extract_layer_embeddings",
    "label_ranks",
    "layer_scores",
    "ranking_scores",
]


# Scores held at once when evaluating variants: [layers, images, classes] blocks of 64 MB.
SCORE_BLOCK_ELEMENTS = 16_000_000
NORM_EPS = 1e-12  # torch.nn.functional.normalize's default


# ----------------------------------------------------------------------------- embeddings


@dataclass
class LayerEmbeddingSet:
    """Per-layer image embeddings of a data set: ``embeddings[i]`` belongs to ``layers[i]``."""

    layers: tuple[int, ...]  # ascending, ends with the final layer N
    embeddings: np.ndarray  # float32 [L, N, D], possibly a read-only memory map
    labels: np.ndarray  # int64 [N]
    indices: np.ndarray  # int64 [N]: positions in the source ImageSet (skips removed)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def final_layer(self) -> int:
        return self.layers[-1]

    def subset(self, rows: Sequence[int]) -> LayerEmbeddingSet:
        """The images at ``rows`` (positions in this set, not in the source ImageSet)."""
        rows = np.asarray(rows, dtype=np.int64)
        return LayerEmbeddingSet(
            self.layers,
            np.asarray(self.embeddings[:, rows]),
            self.labels[rows],
            self.indices[rows],
            list(self.skipped),
        )


class _ImageDataset(torch.utils.data.Dataset):
    def __init__(self, image_set: ImageSet) -> None:
        self.image_set = image_set

    def __len__(self) -> int:
        return len(self.image_set)

    def __getitem__(self, index: int) -> tuple[int, Image.Image | str]:
        try:
            return index, self.image_set.image(index)
        except ImageError as exc:
            return index, str(exc)


def _collate(items: list[tuple[int, Image.Image | str]]) -> list[tuple[int, Image.Image | str]]:
    return items


def _cache_key(
    vision: VisionReadout, image_set: ImageSet, layers: Sequence[int], dtype: torch.dtype
) -> str:
    payload = json.dumps(
        {
            "model": vision.name,
            "weights": vision.fingerprint,
            "data": image_set.fingerprint(),
            "layers": list(layers),
            "dtype": str(dtype),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _shard_name(shard: tuple[int, int]) -> str:
    return f"shard-{shard[0]:05d}-of-{shard[1]:05d}"


def _load_shard(path: Path) -> LayerEmbeddingSet | None:
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        return None
    meta = json.loads(meta_file.read_text())
    return LayerEmbeddingSet(
        layers=tuple(meta["layers"]),
        embeddings=np.load(path / "embeddings.npy", mmap_mode="r"),
        labels=np.asarray(meta["labels"], dtype=np.int64),
        indices=np.asarray(meta["indices"], dtype=np.int64),
        skipped=[Skipped(**s) for s in meta["skipped"]],
    )


def concat_embedding_sets(parts: Sequence[LayerEmbeddingSet]) -> LayerEmbeddingSet:
    """Join shards (in shard order) into one set."""
    if len(parts) == 1:
        return parts[0]
    return LayerEmbeddingSet(
        layers=parts[0].layers,
        embeddings=np.concatenate([np.asarray(p.embeddings) for p in parts], axis=1),
        labels=np.concatenate([p.labels for p in parts]),
        indices=np.concatenate([p.indices for p in parts]),
        skipped=[s for p in parts for s in p.skipped],
    )


def _load_cached(path: Path, shard: tuple[int, int]) -> LayerEmbeddingSet | None:
    """This shard if cached; for a whole-set request also any complete set of shards that a
    data-parallel run wrote."""
    own = _load_shard(path / _shard_name(shard))
    if own is not None or shard != (0, 1) or not path.is_dir():
        return own
    for world in sorted({int(p.name.rsplit("-", 1)[1]) for p in path.glob("shard-*-of-*")}):
        parts = [_load_shard(path / _shard_name((r, world))) for r in range(world)]
        if all(p is not None for p in parts):
            return concat_embedding_sets(parts)
    return None


def _save_cached(path: Path, result: LayerEmbeddingSet) -> None:
    # Written into a sibling temp folder and renamed: a crash never leaves a partial cache.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        np.save(tmp / "embeddings.npy", np.ascontiguousarray(result.embeddings))
        meta = {
            "layers": list(result.layers),
            "labels": result.labels.tolist(),
            "indices": result.indices.tolist(),
            "skipped": [s.__dict__ for s in result.skipped],
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@torch.no_grad()
def extract_layer_embeddings(
    vision: VisionReadout,
    image_set: ImageSet,
    layers: Iterable[int],
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: Path | str | None = None,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> LayerEmbeddingSet:
    """Read ``layers`` (plus N) out for every image: one backbone forward per batch.

    Unusable images are skipped and listed. With ``cache_dir`` the result is stored as a
    memory-mapped ``.npy`` keyed by model, weights, data and layers, and reused. ``shard =
    (rank, world)`` processes one contiguous block of the images (data-parallel runs); each
    shard is cached on its own and a later whole-set run reads a complete set of shards.
    """
    requested = tuple(layers)
    contrast_layers = set(validate_candidates(requested, vision.depth)) if requested else set()
    wanted = tuple(sorted(contrast_layers | {vision.depth}))
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / "embeddings" / _cache_key(vision, image_set, wanted, dtype)
        cached = _load_cached(cache_path, shard)
        if cached is not None:
            return cached
    block = shard_positions(len(image_set), shard)
    full_set = image_set
    image_set = image_set.subset(block)
    device = torch.device(device)
    loader = torch.utils.data.DataLoader(
        _ImageDataset(image_set),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
    )
    chunks: list[np.ndarray] = []
    kept: list[int] = []
    skipped = list(full_set.skipped) if shard[0] == 0 else []  # listing problems: report once
    bar = tqdm(total=len(image_set), desc="images", unit="img", disable=not progress)
    for items in loader:
        images, positions = [], []
        for index, item in items:
            if isinstance(item, str):
                skipped.append(Skipped(full_set.source(block.start + index), item))
            else:
                images.append(item)
                positions.append(index)
        if images:
            batch = move_batch(vision.preprocess(images), device, dtype)
            out = vision.forward_layers(batch, wanted)
            chunks.append(out.embeddings.float().cpu().numpy())
            kept.extend(positions)
        bar.update(len(items))
        bar.set_postfix(skipped=len(skipped))
    bar.close()
    if not kept and shard == (0, 1):
        raise ValueError(
            f"no usable image in {image_set.name}: all {len(image_set)} were skipped "
            f"(first reason: {skipped[0].reason if skipped else 'empty data set'})"
        )
    local = np.asarray(kept, dtype=np.int64)
    dim = vision.embed_dim
    result = LayerEmbeddingSet(
        layers=wanted,
        embeddings=np.concatenate(chunks, axis=1)
        if chunks
        else np.zeros((len(wanted), 0, dim), np.float32),
        labels=image_set.labels[local],
        indices=local + block.start,
        skipped=skipped,
    )
    if not np.isfinite(result.embeddings).all():
        raise ValueError(f"model {vision.name} produced NaN/inf image embeddings")
    if cache_path is not None:
        _save_cached(cache_path / _shard_name(shard), result)
    return result


def layer_scores(
    embeddings: np.ndarray | torch.Tensor, text_bank: torch.Tensor, tau: float, block: int = 4096
) -> torch.Tensor:
    """Scores [L, N, C] = <normalised z_l, normalised t_c> / tau, computed in image blocks."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    emb = (
        torch.as_tensor(np.asarray(embeddings))
        if isinstance(embeddings, np.ndarray)
        else embeddings
    )
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


# ----------------------------------------------------------------------------- variants


VariantKind = Literal["baseline", "dynamic", "static", "apc"]


@dataclass(frozen=True)
class Variant:
    """One way to score: the baseline q_N, DoLa dynamic/static, or the APC-only ablation."""

    kind: VariantKind
    alpha: float = 0.0
    layers: tuple[int, ...] = ()  # dynamic: candidates; static: (M,)
    bucket: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        if self.kind == "baseline":
            return "baseline"
        if self.kind == "apc":
            return f"apc-only a={self.alpha:g}"
        if self.kind == "static":
            return f"static L{self.layers[0]} a={self.alpha:g}"
        where = (
            f"[{self.bucket[0]}-{self.bucket[1]}]"
            if self.bucket
            else ",".join(map(str, self.layers))
        )
        return f"dynamic {where} a={self.alpha:g}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "alpha": self.alpha,
            "layers": list(self.layers),
            "bucket": list(self.bucket) if self.bucket else None,
        }


def default_variants(
    depth: int,
    num_buckets: int = 3,
    alphas: Sequence[float] = (0.1,),
    static_layers: Sequence[int] | None = (),
    apc: bool = True,
) -> list[Variant]:
    """Baseline, dynamic per bucket, static per layer (``None``: every layer 1..N-1) and
    APC-only, each over ``alphas``."""
    variants = [Variant("baseline")]
    if static_layers is None:
        statics: Sequence[int] = range(1, depth)
    else:
        statics = validate_candidates(static_layers, depth) if static_layers else ()
    for alpha in alphas:
        for bucket in split_buckets(depth, num_buckets):
            try:
                cands = bucket_candidates(bucket, depth)
            except ValueError:
                continue  # a bucket holding only the final layer
            variants.append(Variant("dynamic", float(alpha), cands, bucket))
        variants.extend(Variant("static", float(alpha), (m,)) for m in statics)
        if apc:
            variants.append(Variant("apc", float(alpha)))
    return variants


def _kept_first_offset(kept: torch.Tensor, q_final: torch.Tensor) -> torch.Tensor:
    return torch.where(kept, 1.0, q_final)


def ranking_scores(p_hat: torch.Tensor, kept: torch.Tensor, q_final: torch.Tensor) -> torch.Tensor:
    """Order for top-k under DoLa: kept classes by p_hat (as 1 + p_hat), then the rest by q_N.

    p_hat is exactly 0 outside the kept set, so it alone cannot rank those classes.
    """
    return p_hat + _kept_first_offset(kept, q_final)


def _class_labels(labels: Any, classes: int, device: Any = None) -> torch.Tensor:
    """``labels`` as a long tensor on ``device``, checked to be class indices."""
    if isinstance(labels, torch.Tensor):
        out = labels.to(device=device, dtype=torch.long)
    else:
        out = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=device)
    if out.numel() and not 0 <= int(out.min()) <= int(out.max()) < classes:
        raise ValueError(
            f"labels must be class indices in [0, {classes}), got values from "
            f"{int(out.min())} to {int(out.max())}"
        )
    return out


def _ranks(ranking: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    label_score = ranking.gather(-1, labels[:, None].expand(ranking.shape[:-1] + (1,)))
    earlier = torch.arange(ranking.shape[-1], device=ranking.device) < labels[:, None]  # [N, C]
    ahead = (ranking > label_score) | ((ranking == label_score) & earlier)
    return ahead.sum(-1, dtype=torch.int32).long()  # an int32 count is half the memory traffic


def label_ranks(ranking: torch.Tensor, labels: Any) -> torch.Tensor:
    """Position of each true label in a ranking [..., N, C] (0 = top-1) -> [..., N].

    The position counts the classes ranked above the label; equal scores go to the lower
    class index first, as ``argmax`` does, so position 0 means ``argmax == label``.
    """
    return _ranks(ranking, _class_labels(labels, ranking.shape[-1], ranking.device))


def classification_metrics(
    ranking: torch.Tensor, labels: Any, num_classes: int | None = None
) -> dict[str, float]:
    """acc1, acc5 and mean per-class recall of a ranking [N, C] (higher = better)."""
    labels = _class_labels(labels, ranking.shape[-1], ranking.device)
    ranks = _ranks(ranking, labels)
    return _metrics_of_ranks(ranks[None], labels, num_classes or ranking.shape[-1])[0]


@dataclass
class VariantResult:
    variant: Variant
    metrics: dict[str, float]
    label_ranks: torch.Tensor  # [N] position of the true class in each ranking (0 = top-1)
    chosen_layers: torch.Tensor | None = None  # [N] (dynamic/static)
    kept_sizes: torch.Tensor | None = None  # [N] |V_head| per image (all but the baseline)

    @property
    def correct(self) -> torch.Tensor:
        """[N] bool: top-1 right."""
        return self.label_ranks == 0

    @property
    def mean_kept(self) -> float | None:
        return None if self.kept_sizes is None else self.kept_sizes.float().mean().item()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.variant.to_dict(), "metrics": self.metrics}
        if self.mean_kept is not None:
            out["mean_kept"] = self.mean_kept
        if self.chosen_layers is not None and self.variant.kind == "dynamic":
            hist = Counter(self.chosen_layers.tolist())
            out["chosen_layer_histogram"] = {str(k): hist[k] for k in sorted(hist)}
        return out


def _contrast_layers_needed(variants: Sequence[Variant]) -> set[int]:
    return {m for v in variants if v.kind in ("dynamic", "static") for m in v.layers}


@dataclass
class _BlockOutcome:
    ranks: list[torch.Tensor]  # per variant [b]: position of the true label
    chosen: list[torch.Tensor | None]  # per variant [b]
    kept: list[torch.Tensor | None]  # per variant [b] kept-set sizes
    layer_correct: torch.Tensor  # [L, b] each layer's own readout right at top-1


def _block_outcome(
    scores: torch.Tensor, labels: torch.Tensor, layers: list[int], variants: Sequence[Variant]
) -> _BlockOutcome:
    """Every variant on one block of per-layer scores [L, b, C] with labels [b].

    Log-distributions are computed once, the JSD only for layers that a dynamic variant
    chooses among; the contrast layer of a dynamic variant depends on its candidates only,
    and all contrasts of an alpha grid go through the DoLa core as one stack (built once
    when every alpha has the same contrasts, as a grid of alphas does).
    """
    log_q = class_softmax(scores.float(), log=True)
    log_final = log_q[-1]
    q_final = log_final.exp()
    row = {m: i for i, m in enumerate(layers)}
    dynamic_layers = sorted({m for v in variants if v.kind == "dynamic" for m in v.layers})
    column = {m: i for i, m in enumerate(dynamic_layers)}
    chosen: dict[tuple[int, ...], torch.Tensor] = {}  # dynamic candidates -> contrast rows [b]
    if dynamic_layers:
        rows = torch.tensor([row[m] for m in dynamic_layers])
        _, divergence = select_contrast_layer(log_final, log_q.index_select(0, rows))  # [b, K]
        for variant in variants:
            if variant.kind == "dynamic" and variant.layers not in chosen:
                cols = torch.tensor([column[m] for m in variant.layers])
                pick = divergence.index_select(1, cols).argmax(-1)  # first max: earliest
                chosen[variant.layers] = torch.tensor(variant.layers)[pick]
    n = len(variants)
    out = _BlockOutcome([None] * n, [None] * n, [None] * n, _ranks(scores, labels) == 0)

    def rank(group: list[int], ranking: torch.Tensor) -> None:  # ranking [len(group), b, C]
        ranks = _ranks(ranking, labels)
        for k, i in enumerate(group):
            out.ranks[i] = ranks[k]

    for i, variant in enumerate(variants):
        if variant.kind == "baseline":
            rank([i], q_final[None])
        elif variant.kind == "apc":
            p_hat, kept = apc_only(log_final, variant.alpha)
            rank([i], p_hat.add_(_kept_first_offset(kept, q_final))[None])
            out.kept[i] = kept.sum(-1)
        elif variant.kind == "dynamic":
            out.chosen[i] = chosen[variant.layers]
        else:
            out.chosen[i] = torch.full_like(q_final[:, 0], variant.layers[0], dtype=torch.long)
    # alpha -> its contrast variants; then one stack per distinct list of contrasts
    by_alpha: dict[float, list[int]] = {}
    for i, v in enumerate(variants):
        if v.kind in ("dynamic", "static"):
            by_alpha.setdefault(v.alpha, []).append(i)
    by_contrasts: dict[tuple, list[tuple[float, list[int]]]] = {}
    for alpha, group in by_alpha.items():
        key = tuple((variants[i].kind, variants[i].layers) for i in group)
        by_contrasts.setdefault(key, []).append((alpha, group))
    for members in by_contrasts.values():
        first_group = [variants[i] for i in members[0][1]]
        stack = _contrast_stack_rows(log_q, row, first_group, chosen)
        per_alpha = contrast_stack_alphas(log_final, stack, [alpha for alpha, _ in members])
        for (_, group), (p_hat, kept) in zip(members, per_alpha):
            rank(group, p_hat.add_(_kept_first_offset(kept, q_final)))  # ranking_scores [S, b, C]
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
    missing = sorted(m for m in _contrast_layers_needed(variants) if m not in layers)
    if missing:
        raise ValueError(f"variants need layers {missing} that were not read out (have {layers})")


def _summarise(
    outcomes: list[_BlockOutcome],
    layers: list[int],
    labels: torch.Tensor,
    variants: Sequence[Variant],
    num_classes: int,
) -> tuple[list[VariantResult], dict[int, float]]:
    def joined(parts: list[torch.Tensor]) -> torch.Tensor:
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    layer_correct = torch.cat([o.layer_correct for o in outcomes], dim=1)
    per_layer = dict(zip(layers, layer_correct.float().mean(-1).tolist()))
    ranks = torch.stack([joined([o.ranks[v] for o in outcomes]) for v in range(len(variants))])
    metrics = _metrics_of_ranks(ranks, labels, num_classes)
    results = []
    for v, variant in enumerate(variants):
        chosen = None if outcomes[0].chosen[v] is None else joined([o.chosen[v] for o in outcomes])
        kept = None if outcomes[0].kept[v] is None else joined([o.kept[v] for o in outcomes])
        results.append(
            VariantResult(variant, metrics[v], ranks[v], chosen_layers=chosen, kept_sizes=kept)
        )
    return results, per_layer


def _metrics_of_ranks(
    ranks: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> list[dict[str, float]]:
    """acc1, acc5 and mean per-class recall of each variant from its label ranks [V, N]."""
    n = len(labels)
    correct1 = ranks == 0
    support = torch.bincount(labels, minlength=num_classes)
    present = support > 0
    owner = torch.arange(len(ranks))[:, None] * num_classes + labels  # [V, N]
    hits = torch.bincount(owner[correct1], minlength=len(ranks) * num_classes)
    recall = hits.view(len(ranks), num_classes)[:, present].double() / support[present].double()
    mean_recall = recall.mean(-1).tolist()  # nan without labelled images
    acc1, acc5 = correct1.sum(-1).tolist(), (ranks < 5).sum(-1).tolist()
    # Python division of counts: the accuracies are exact ratios, not float32 means.
    return [
        {"acc1": a1 / n, "acc5": a5 / n, "mean_per_class_recall": r}
        for a1, a5, r in zip(acc1, acc5, mean_recall)
    ]


@torch.no_grad()
def evaluate_variants(
    scores: torch.Tensor,
    layers: Sequence[int],
    labels: np.ndarray | torch.Tensor,
    variants: Sequence[Variant],
    num_classes: int | None = None,
) -> tuple[list[VariantResult], dict[int, float]]:
    """Every variant from one set of per-layer scores [L, N, C].

    Returns the variant results (in order) and the top-1 accuracy of each layer's own readout.
    """
    layers = list(layers)
    _check_layers(layers, variants)
    labels_t = _class_labels(labels, scores.shape[-1], scores.device)
    outcome = _block_outcome(scores, labels_t, layers, variants)
    return _summarise([outcome], layers, labels_t, variants, num_classes or scores.shape[-1])


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
    labels = _class_labels(embeddings.labels, text_bank.shape[0])
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
    return _summarise(outcomes, layers, labels, variants, num_classes or text_bank.shape[0])


# ----------------------------------------------------------------------------- classifier


@dataclass
class ClassifierOutput:
    """Predictions for a batch: probabilities [B, C] (p_hat under DoLa, else q_N)."""

    probs: torch.Tensor
    ranking: torch.Tensor  # [B, C] order used for top-k
    chosen_layers: torch.Tensor | None  # [B] contrast layer per image (DoLa only)
    kept: torch.Tensor | None  # [B, C] APC set (DoLa only)

    def topk(self, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        k = min(k, self.ranking.shape[-1])
        idx = self.ranking.topk(k, dim=-1).indices
        return idx, self.probs.gather(-1, idx)


class ZeroShotClassifier:
    """Zero-shot classifier over a SigLIP readout, with DoLa behind one switch.

    ``use_dola=True`` contrasts the final layer with ``candidate_layers`` (dynamic, default:
    the last bucket's even layers) or ``static_layer``; a calibration ``profile`` sets mode,
    layers and alpha (and turns DoLa off when calibration found no gain).
    """

    def __init__(
        self,
        model: LoadedModel,
        class_names: Sequence[str],
        templates: Sequence[str] = ("a photo of a {c}.",),
        use_dola: bool = True,
        candidate_layers: Sequence[int] | None = None,
        static_layer: int | None = None,
        alpha: float = 0.1,
        tau: float | None = None,
        profile: dict[str, Any] | None = None,
        cache_dir: Path | str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if model.text is None:
            raise ValueError("this model has no text tower: load it with a text model spec")
        self.model = model
        self.class_names = validate_class_names(class_names)
        self.device, self.dtype = torch.device(device), dtype
        depth = model.vision.depth
        self.variant = Variant("baseline")
        if profile is not None:
            from siglip_dola.calibrate import variant_from_profile

            self.variant = variant_from_profile(profile, depth)
            alpha = self.variant.alpha
            tau = profile.get("tau", tau)
        elif use_dola:
            if static_layer is not None:
                self.variant = Variant("static", alpha, validate_candidates([static_layer], depth))
            else:
                layers = default_candidates(depth) if candidate_layers is None else candidate_layers
                self.variant = Variant("dynamic", alpha, validate_candidates(layers, depth))
        if not use_dola:
            self.variant = Variant("baseline")
        self.tau = model.tau if tau is None else float(tau)
        self.text_bank = build_text_bank(
            model.text, self.class_names, templates, cache_dir=cache_dir, progress=False
        )

    @property
    def use_dola(self) -> bool:
        return self.variant.kind != "baseline"

    @torch.no_grad()
    def predict(self, images: Sequence[Image.Image]) -> ClassifierOutput:
        vision = self.model.vision
        batch = move_batch(vision.preprocess(list(images)), self.device, self.dtype)
        out = vision.forward_layers(batch, self.variant.layers)
        scores = layer_scores(out.embeddings.float().cpu(), self.text_bank, self.tau)
        q_final = class_softmax(scores[-1])
        if self.variant.kind == "baseline":
            return ClassifierOutput(q_final, q_final, None, None)
        if self.variant.kind == "apc":
            p_hat, kept = apc_only(class_softmax(scores[-1], log=True), self.variant.alpha)
            return ClassifierOutput(p_hat, ranking_scores(p_hat, kept, q_final), None, kept)
        static = self.variant.layers[0] if self.variant.kind == "static" else None
        result = apply_dola(
            scores,
            layers=out.layers,
            alpha=self.variant.alpha,
            static_layer=static,
            candidate_layers=None if static is not None else self.variant.layers,
        )
        ranking = ranking_scores(result.p_hat, result.kept, q_final)
        return ClassifierOutput(result.p_hat, ranking, result.chosen_layers, result.kept)


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

    def variant(self, name: str) -> VariantResult:
        for r in self.results:
            if r.variant.name == name:
                return r
        raise KeyError(f"no variant named {name!r}")


def evaluate_dataset(
    model: LoadedModel,
    image_set: ImageSet,
    templates: Sequence[str],
    variants: Sequence[Variant],
    *,
    readout_layers: Iterable[int] | None = None,
    tau: float | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: Path | str | None = None,
    progress: bool = True,
    dist: DistContext | None = None,
) -> Evaluation | None:
    """Text bank, one readout pass over the images, then every variant from its scores.

    ``readout_layers`` defaults to every layer 1..N-1 (for the per-layer accuracy curve);
    the layers the variants need are always added. In a data-parallel run (``dist``) each
    process reads its block of images; rank 0 gathers the per-image outcomes and returns the
    evaluation, the other ranks return ``None``.
    """
    if model.text is None:
        raise ValueError(f"model {model.vision.name} has no text tower: pass a text model spec")
    ctx = dist or DistContext()
    depth = model.vision.depth
    layers = set(range(1, depth) if readout_layers is None else readout_layers)
    layers |= _contrast_layers_needed(variants)
    bank = build_text_bank(
        model.text, image_set.class_names, templates, cache_dir=cache_dir, progress=progress
    )
    embeddings = extract_layer_embeddings(
        model.vision,
        image_set,
        sorted(layers),
        batch_size=batch_size,
        workers=workers,
        device=device,
        dtype=dtype,
        cache_dir=cache_dir,
        progress=progress and ctx.is_main,
        shard=ctx.shard,
    )
    tau = model.tau if tau is None else float(tau)
    emb_layers = list(embeddings.layers)
    _check_layers(emb_layers, variants)
    outcomes, _ = _embedding_outcomes(
        embeddings, bank, tau, variants, SCORE_BLOCK_ELEMENTS, progress
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
        all_outcomes, emb_layers, torch.as_tensor(labels), variants, len(image_set.class_names)
    )
    return Evaluation(results, per_layer, embeddings, bank, tau, labels, skipped)
