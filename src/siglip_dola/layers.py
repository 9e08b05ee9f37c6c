"""Layer numbering, buckets and candidate sets.

Layers are numbered 1..N: layer l is the output of transformer block l (0-based block
index l - 1); layer N is the final ("mature") layer. Contrast layers live in 1..N-1.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "Bucket",
    "bucket_candidates",
    "bucket_table",
    "default_candidates",
    "parse_layers",
    "split_buckets",
    "validate_candidates",
    "validate_depth",
]

Bucket = tuple[int, int]  # inclusive (first, last) layer numbers


def validate_depth(depth: int) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2:
        raise ValueError(f"model depth must be an integer >= 2, got {depth!r}")
    return depth


def validate_candidates(layers: Iterable[int], depth: int) -> tuple[int, ...]:
    """Check contrast layers: distinct integers in 1..N-1 (the error names the range)."""
    validate_depth(depth)
    result = tuple(layers)
    if not result:
        raise ValueError(f"empty candidate set: expected layers in 1..{depth - 1}")
    for layer in result:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"layer numbers must be integers, got {layer!r}")
        if not 1 <= layer <= depth - 1:
            hint = " (layer N is the final layer, not a contrast layer)" if layer == depth else ""
            raise ValueError(
                f"layer {layer} is outside the valid contrast range 1..{depth - 1} "
                f"for a model with {depth} layers{hint}"
            )
    if len(set(result)) != len(result):
        raise ValueError(f"candidate layers must be distinct, got {list(result)}")
    return result


def split_buckets(depth: int, num_buckets: int = 3) -> list[Bucket]:
    """Split 1..N into contiguous buckets of equal size; the last buckets take the remainder.

    N=24, k=3 -> [(1, 8), (9, 16), (17, 24)]; N=26, k=3 -> [(1, 8), (9, 17), (18, 26)].
    """
    validate_depth(depth)
    if (
        isinstance(num_buckets, bool)
        or not isinstance(num_buckets, int)
        or not 1 <= num_buckets <= depth
    ):
        raise ValueError(f"number of buckets must be an integer in 1..{depth}, got {num_buckets!r}")
    size, remainder = divmod(depth, num_buckets)
    buckets, start = [], 1
    for i in range(num_buckets):
        width = size + (1 if i >= num_buckets - remainder else 0)
        buckets.append((start, start + width - 1))
        start += width
    return buckets


def bucket_candidates(bucket: Bucket, depth: int) -> tuple[int, ...]:
    """Default candidates of a bucket: its even layers, excluding N.

    A bucket without such a layer (a one-layer bucket holding an odd layer, or only N)
    falls back to all of its layers below N.
    """
    first, last = bucket
    validate_depth(depth)
    if not 1 <= first <= last <= depth:
        raise ValueError(f"bucket {bucket} is not a range inside 1..{depth}")
    evens = tuple(layer for layer in range(first, last + 1) if layer % 2 == 0 and layer != depth)
    if evens:
        return evens
    below_final = tuple(layer for layer in range(first, last + 1) if layer != depth)
    if not below_final:
        raise ValueError(f"bucket {bucket} holds only the final layer {depth}: no contrast layer")
    return below_final


def bucket_table(depth: int, num_buckets: int = 3) -> list[tuple[Bucket, tuple[int, ...]]]:
    """[(bucket, default candidates), ...] for a model of the given depth."""
    return [(b, bucket_candidates(b, depth)) for b in split_buckets(depth, num_buckets)]


def default_candidates(depth: int) -> tuple[int, ...]:
    """The contrast candidates used when none are given: the last bucket's even layers."""
    return bucket_candidates(split_buckets(depth)[-1], depth)


def parse_layers(text: str, depth: int, num_buckets: int = 3) -> tuple[int, ...]:
    """Parse a layer argument into validated contrast layers.

    Accepted forms: ``18,20,22``; ranges ``17-23``; ``bucket:3`` (1-based bucket number,
    its default candidates); ``all`` (every layer 1..N-1). Forms can be comma-joined.
    """
    validate_depth(depth)
    layers: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        if part == "all":
            layers.extend(range(1, depth))
        elif part.startswith("bucket:"):
            buckets = split_buckets(depth, num_buckets)
            try:
                number = int(part.split(":", 1)[1])
            except ValueError:
                raise ValueError(
                    f"bad bucket {part!r}: expected bucket:1..{len(buckets)}"
                ) from None
            if not 1 <= number <= len(buckets):
                raise ValueError(
                    f"bucket {number} does not exist: valid buckets are 1..{len(buckets)}"
                )
            layers.extend(bucket_candidates(buckets[number - 1], depth))
        elif "-" in part:
            lo, _, hi = part.partition("-")
            try:
                layers.extend(range(int(lo), int(hi) + 1))
            except ValueError:
                raise ValueError(f"bad layer range {part!r}: expected e.g. 17-23") from None
        else:
            try:
                layers.append(int(part))
            except ValueError:
                raise ValueError(
                    f"bad layer {part!r}: expected numbers in 1..{depth - 1}, ranges, bucket:K or all"
                ) from None
    return validate_candidates(dict.fromkeys(layers), depth)
