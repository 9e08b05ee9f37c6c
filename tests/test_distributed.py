"""What the launchers' environment says, and the one sharding convention."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from siglip_dola.distributed import launcher_local_rank, launcher_shard, shard_positions


def _launch(monkeypatch, **env):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_a_plain_run_is_one_shard(monkeypatch):
    _launch(monkeypatch, LOCAL_RANK="3")  # a stray LOCAL_RANK alone does not make a launch
    assert launcher_shard() == (0, 1) and launcher_local_rank() is None


def test_torchrun_environment(monkeypatch):
    _launch(monkeypatch, RANK="5", WORLD_SIZE="8", LOCAL_RANK="1")
    assert launcher_shard() == (5, 8) and launcher_local_rank() == 1
    _launch(monkeypatch, RANK="5", WORLD_SIZE="8")
    assert launcher_local_rank() is None


@given(st.integers(0, 3000), st.integers(1, 9))
def test_shards_are_contiguous_and_cover_everything_once(n, world):
    parts = [shard_positions(n, (rank, world)) for rank in range(world)]
    assert [i for part in parts for i in part] == list(range(n))
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1


def test_bad_shards_are_refused():
    with pytest.raises(ValueError):
        shard_positions(10, (2, 2))
