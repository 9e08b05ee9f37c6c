"""Layer numbering, buckets and candidate tables."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from siglip_dola.layers import (
    bucket_candidates,
    bucket_table,
    parse_layers,
    split_buckets,
    validate_candidates,
)


def test_vit_large_24_layers():
    assert bucket_table(24) == [
        ((1, 8), (2, 4, 6, 8)),
        ((9, 16), (10, 12, 14, 16)),
        ((17, 24), (18, 20, 22)),
    ]


def test_vit_base_12_layers():
    assert bucket_table(12) == [((1, 4), (2, 4)), ((5, 8), (6, 8)), ((9, 12), (10,))]


def test_27_layers_so400m():
    assert bucket_table(27) == [
        ((1, 9), (2, 4, 6, 8)),
        ((10, 18), (10, 12, 14, 16, 18)),
        ((19, 27), (20, 22, 24, 26)),
    ]


def test_remainder_goes_to_last_buckets():
    assert split_buckets(26, 3) == [(1, 8), (9, 17), (18, 26)]
    assert split_buckets(24, 2) == [(1, 12), (13, 24)]


@given(st.integers(2, 64), st.data())
def test_buckets_partition_all_layers(depth, data):
    k = data.draw(st.integers(1, depth))
    buckets = split_buckets(depth, k)
    covered = [layer for lo, hi in buckets for layer in range(lo, hi + 1)]
    assert covered == list(range(1, depth + 1))
    sizes = [hi - lo + 1 for lo, hi in buckets]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes)
    for bucket in buckets:
        if bucket != (depth, depth):
            cands = bucket_candidates(bucket, depth)
            assert cands and depth not in cands


def test_odd_single_layer_bucket_falls_back():
    assert bucket_candidates((3, 3), 24) == (3,)


def test_parse_layers_forms():
    assert parse_layers("18,20,22", 24) == (18, 20, 22)
    assert parse_layers("17-19", 24) == (17, 18, 19)
    assert parse_layers("bucket:3", 24) == (18, 20, 22)
    assert parse_layers("all", 4) == (1, 2, 3)
    assert parse_layers("2, 2, 4", 24) == (2, 4)


@pytest.mark.parametrize("text", ["0", "24", "25", "1-24"])
def test_out_of_range_names_valid_range(text):
    with pytest.raises(ValueError, match=r"valid contrast range 1\.\.23"):
        parse_layers(text, 24)


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match=r"valid buckets are 1\.\.3"):
        parse_layers("bucket:4", 24)
    with pytest.raises(ValueError, match="bad layer 'x'"):
        parse_layers("x", 24)
    with pytest.raises(ValueError, match="empty candidate set"):
        validate_candidates([], 24)
    with pytest.raises(ValueError, match="final layer"):
        validate_candidates([24], 24)
    with pytest.raises(TypeError):
        validate_candidates([1.5], 24)
