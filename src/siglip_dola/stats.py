"""Statistics on paired per-image outcomes (a variant vs the baseline, on the same images).

* :func:`mcnemar_p_value` / :func:`mcnemar_from_counts` - two-sided exact McNemar test: a
  binomial test of the discordant pairs (images one side gets right and the other wrong);
* :func:`holm_bonferroni` - Holm's step-down adjustment of m p-values, which keeps the chance
  of any false rejection among the m at most the significance level, whatever their
  dependence;
* :func:`paired_bootstrap_interval` - percentile confidence interval of the accuracy change
  against the baseline, the images resampled with replacement (the same resamples for every
  variant), vectorised: one resample-count matrix [R, N] times the per-image differences [N, V];
* :func:`stratified_split` - a seeded, class-stratified split of image positions.

No scipy: each is a few lines, tested against independent implementations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "DEFAULT_BOOTSTRAP",
    "Bootstrap",
    "holm_bonferroni",
    "mcnemar_from_counts",
    "mcnemar_p_value",
    "paired_bootstrap_interval",
    "stratified_split",
]


# ----------------------------------------------------------------------------- McNemar


def mcnemar_from_counts(gains: int, losses: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: ``gains`` images right
    only under the variant, ``losses`` right only under the baseline.

    p = min(1, 2 P(X <= min(gains, losses))), X ~ Binomial(gains + losses, 1/2).
    """
    gains, losses = int(gains), int(losses)
    if gains < 0 or losses < 0:
        raise ValueError(f"discordant counts must be >= 0, got {gains} and {losses}")
    n = gains + losses
    if n == 0:
        return 1.0
    k = min(gains, losses)
    log_half_n = n * math.log(0.5)
    log_n_factorial = math.lgamma(n + 1)
    tail = sum(
        math.exp(log_n_factorial - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n)
        for i in range(k + 1)
    )
    return min(1.0, 2.0 * tail)


def mcnemar_p_value(variant_correct: Sequence[bool], baseline_correct: Sequence[bool]) -> float:
    """Two-sided exact McNemar test: is the variant's per-image correctness different from the
    baseline's on the same images? (binomial test on the discordant pairs)."""
    v = np.asarray(variant_correct, dtype=bool)
    b = np.asarray(baseline_correct, dtype=bool)
    if v.shape != b.shape:
        raise ValueError(f"paired outcomes differ in length: {v.shape} and {b.shape}")
    return mcnemar_from_counts(int((v & ~b).sum()), int((b & ~v).sum()))


# ----------------------------------------------------------------------------- Holm


def holm_bonferroni(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given: reject hypothesis i at level a when its
    adjusted p-value is below a.

    Sorted ascending, p_(j) becomes max_{i <= j} min(1, (m - i + 1) p_(i)) (1-based i), the
    step-down procedure written as adjusted values; ties keep their given order.
    """
    p = [float(x) for x in p_values]
    for x in p:
        if not 0.0 <= x <= 1.0:  # also rejects NaN
            raise ValueError(f"p-values must be in [0, 1], got {x}")
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


# ----------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class Bootstrap:
    """Settings of the paired bootstrap: ``resamples`` resamples of the images (with
    replacement), a ``level`` percentile interval, drawn from ``seed``."""

    resamples: int = 2000
    level: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.resamples, bool) or not isinstance(self.resamples, int):
            raise TypeError(f"bootstrap resamples must be an integer, got {self.resamples!r}")
        if self.resamples < 1:
            raise ValueError(f"bootstrap resamples must be >= 1, got {self.resamples}")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"confidence level must be in (0, 1), got {self.level}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "paired percentile bootstrap, images resampled with replacement",
            "resamples": self.resamples,
            "level": self.level,
            "seed": self.seed,
        }


DEFAULT_BOOTSTRAP = Bootstrap()

# Resample counts held at once: [rows, N] float32 blocks of 16 MB.
_BOOTSTRAP_BLOCK_ELEMENTS = 4_000_000


def paired_bootstrap_interval(
    correct: torch.Tensor,
    baseline_correct: torch.Tensor,
    bootstrap: Bootstrap = DEFAULT_BOOTSTRAP,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile interval of each variant's accuracy change against the baseline.

    ``correct`` [V, N] and ``baseline_correct`` [N] are per-image outcomes (bool) on the same
    N images. Resample r draws N image positions uniformly with replacement, row r of
    ``numpy.random.default_rng(seed).integers(0, N, (R, N))`` (drawn in blocks of rows, which
    gives the same stream), and every variant is measured on the same resamples: the change
    is sum_i count[r, i] (correct[v, i] - baseline[i]) / N, for all variants at once as one
    count matrix [R, N] times the differences [N, V]. Returns (low [V], high [V]) in float64:
    the (1 - level) / 2 and (1 + level) / 2 quantiles of the R changes (linear
    interpolation, as ``numpy.percentile``).
    """
    correct = torch.as_tensor(correct)
    baseline_correct = torch.as_tensor(baseline_correct)
    if correct.ndim != 2 or baseline_correct.ndim != 1:
        raise ValueError(
            f"expected outcomes [V, N] and a baseline [N], got {tuple(correct.shape)} and "
            f"{tuple(baseline_correct.shape)}"
        )
    n = correct.shape[1]
    if baseline_correct.shape[0] != n:
        raise ValueError(f"{n} images per variant but {baseline_correct.shape[0]} for the baseline")
    if n == 0:
        raise ValueError("a bootstrap needs at least one image")
    # Differences in {-1, 0, 1}; float32 sums of integer counts are exact below 2**24.
    diff = correct.cpu().to(torch.float32) - baseline_correct.cpu().to(torch.float32)[None]
    # Only images some variant disagrees on move a difference.
    columns = torch.nonzero(diff.ne(0).any(0)).flatten()
    diff_t = diff.index_select(1, columns).T.contiguous()  # [n', V]
    rng = np.random.default_rng(int(bootstrap.seed))
    rows_per_block = max(1, _BOOTSTRAP_BLOCK_ELEMENTS // n)
    sums = []
    ones = None
    for start in range(0, bootstrap.resamples, rows_per_block):
        rows = min(rows_per_block, bootstrap.resamples - start)
        picks = torch.from_numpy(rng.integers(0, n, (rows, n)))
        if ones is None or ones.shape[0] != rows:
            ones = torch.ones(rows, n)
        counts = torch.zeros(rows, n).scatter_add_(1, picks, ones)
        sums.append(counts.index_select(1, columns) @ diff_t)  # [rows, V]
    changes = torch.cat(sums).double().div_(n)  # [R, V]
    tail = (1.0 - bootstrap.level) / 2.0
    q = torch.tensor([tail, 1.0 - tail], dtype=torch.float64)
    low, high = torch.quantile(changes, q, dim=0, interpolation="linear")
    return low, high


# ----------------------------------------------------------------------------- splits


def stratified_split(
    labels: Sequence[int] | np.ndarray | torch.Tensor, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, class-stratified (first part, rest) positions, both sorted: each class gives
    round(fraction x its size) of its images, chosen by a ``numpy.random.default_rng(seed)``
    shuffle (classes in ascending order)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
    if isinstance(labels, torch.Tensor):
        labels = labels.cpu().numpy()
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    first: list[int] = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rng.shuffle(members)
        first.extend(members[: int(round(len(members) * fraction))].tolist())
    mask = np.zeros(len(labels), dtype=bool)
    mask[first] = True
    return np.flatnonzero(mask), np.flatnonzero(~mask)
