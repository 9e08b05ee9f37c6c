"""Classification metrics from label ranks, and a variant's outcome on labelled images.

Everything is computed from the *rank* of the true class in each ranking (0 = top-1), which
is exact for any number of classes and cheaper than a top-k: acc1 counts rank 0, acc5 ranks
below 5, mean per-class recall averages acc1 over the classes present. Equal scores go to the
lower class index first, as ``argmax`` does.

:func:`compare_with_baseline` adds to each variant's result how it differs from the baseline
on the same images: the flips (fixed: baseline wrong, variant right; broken: the reverse) and
a paired bootstrap interval of the acc1 change.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from siglip_dola.stats import DEFAULT_BOOTSTRAP, Bootstrap, paired_bootstrap_interval
from siglip_dola.variants import Variant

__all__ = [
    "METRICS",
    "BaselineComparison",
    "VariantResult",
    "class_labels",
    "classification_metrics",
    "compare_with_baseline",
    "label_ranks",
    "metrics_of_ranks",
]

METRICS = ("acc1", "acc5", "mean_per_class_recall")


def class_labels(labels: Any, classes: int, device: Any = None) -> torch.Tensor:
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


def ranks_of_checked_labels(ranking: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """:func:`label_ranks` for labels already checked by :func:`class_labels` (hot path)."""
    label_score = ranking.gather(-1, labels[:, None].expand(ranking.shape[:-1] + (1,)))
    earlier = torch.arange(ranking.shape[-1], device=ranking.device) < labels[:, None]  # [N, C]
    ahead = (ranking > label_score) | ((ranking == label_score) & earlier)
    return ahead.sum(-1, dtype=torch.int32).long()  # an int32 count is half the memory traffic


def label_ranks(ranking: torch.Tensor, labels: Any) -> torch.Tensor:
    """Position of each true label in a ranking [..., N, C] (0 = top-1) -> [..., N].

    The position counts the classes ranked above the label; equal scores go to the lower
    class index first, as ``argmax`` does, so position 0 means ``argmax == label``.
    """
    return ranks_of_checked_labels(ranking, class_labels(labels, ranking.shape[-1], ranking.device))


def metrics_of_ranks(
    ranks: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> list[dict[str, float]]:
    """acc1, acc5 and mean per-class recall of each row of label ranks [V, N]."""
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


def classification_metrics(
    ranking: torch.Tensor, labels: Any, num_classes: int | None = None
) -> dict[str, float]:
    """acc1, acc5 and mean per-class recall of a ranking [N, C] (higher = better)."""
    labels = class_labels(labels, ranking.shape[-1], ranking.device)
    ranks = ranks_of_checked_labels(ranking, labels)
    return metrics_of_ranks(ranks[None], labels, num_classes or ranking.shape[-1])[0]


@dataclass(frozen=True)
class BaselineComparison:
    """A variant against the baseline on the same N images (top-1).

    ``fixed``: images the baseline gets wrong and the variant right; ``broken``: the reverse;
    so acc1(variant) = acc1(baseline) + (fixed - broken) / N. ``acc1_change_ci`` is the
    paired bootstrap interval of that change (None when the bootstrap is off).
    """

    num_images: int
    fixed: int
    broken: int
    acc1_change_ci: tuple[float, float] | None = None
    bootstrap: Bootstrap | None = None

    @property
    def acc1_change(self) -> float:
        return (self.fixed - self.broken) / self.num_images if self.num_images else 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "fixed": self.fixed,
            "broken": self.broken,
            "acc1_change": self.acc1_change,
        }
        if self.acc1_change_ci is not None and self.bootstrap is not None:
            key = f"acc1_change_ci{round(100 * self.bootstrap.level):d}"
            out[key] = list(self.acc1_change_ci)
            out["bootstrap"] = self.bootstrap.to_dict()
        return out


@dataclass
class VariantResult:
    """One variant on a labelled image set: its metrics and per-image outcomes."""

    variant: Variant
    metrics: dict[str, float]
    label_ranks: torch.Tensor  # [N] position of the true class in each ranking (0 = top-1)
    chosen_layers: torch.Tensor | None = None  # [N] (dynamic/static)
    kept_sizes: torch.Tensor | None = None  # [N] |V_head| per image (APC and contrasts)
    vs_baseline: BaselineComparison | None = None  # see compare_with_baseline
    mean_jsd: float | None = None  # layer variants: mean JSD(q_N || q_l) over the images

    @property
    def correct(self) -> torch.Tensor:
        """[N] bool: top-1 right."""
        return self.label_ranks == 0

    @property
    def mean_kept(self) -> float | None:
        return None if self.kept_sizes is None else self.kept_sizes.float().mean().item()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {**self.variant.to_dict(), "metrics": self.metrics}
        if self.vs_baseline is not None:
            out["vs_baseline"] = self.vs_baseline.to_dict()
        if self.mean_kept is not None:
            out["mean_kept"] = self.mean_kept
        if self.mean_jsd is not None:
            out["mean_jsd_to_final"] = self.mean_jsd
        if self.chosen_layers is not None and self.variant.kind == "dynamic":
            hist = Counter(self.chosen_layers.tolist())
            out["chosen_layer_histogram"] = {str(k): hist[k] for k in sorted(hist)}
        return out


def compare_with_baseline(
    results: list[VariantResult], bootstrap: Bootstrap | None = DEFAULT_BOOTSTRAP
) -> list[VariantResult]:
    """Set ``vs_baseline`` on every result (the baseline's own is all zeros): flip counts, and
    with ``bootstrap`` the paired interval of the acc1 change, every variant measured on the
    same resamples of the images. Returns ``results``; without a baseline among them, nothing
    is set."""
    baseline = next((r for r in results if r.variant.kind == "baseline"), None)
    if baseline is None or not results:
        return results
    correct = torch.stack([r.correct for r in results])  # [V, N]
    base = baseline.correct
    n = int(base.shape[0])
    fixed = (correct & ~base).sum(-1).tolist()
    broken = (base & ~correct).sum(-1).tolist()
    intervals = None
    if bootstrap is not None and n > 0:
        low, high = paired_bootstrap_interval(correct, base, bootstrap)
        intervals = list(zip(low.tolist(), high.tolist()))
    for i, r in enumerate(results):
        r.vs_baseline = BaselineComparison(
            n,
            int(fixed[i]),
            int(broken[i]),
            None if intervals is None else intervals[i],
            bootstrap if intervals is not None else None,
        )
    return results
