"""Significance tests on paired per-image outcomes (baseline vs a variant, same images)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["mcnemar_p_value"]


def mcnemar_p_value(variant_correct: Sequence[bool], baseline_correct: Sequence[bool]) -> float:
    """Two-sided exact McNemar test: is the variant's per-image correctness different from the
    baseline's on the same images? (binomial test on the discordant pairs)."""
    gains = sum(1 for v, b in zip(variant_correct, baseline_correct) if v and not b)
    losses = sum(1 for v, b in zip(variant_correct, baseline_correct) if b and not v)
    n = gains + losses
    if n == 0:
        return 1.0
    k = min(gains, losses)
    log_half_n = n * math.log(0.5)
    tail = sum(
        math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n)
        for i in range(k + 1)
    )
    return min(1.0, 2.0 * tail)
