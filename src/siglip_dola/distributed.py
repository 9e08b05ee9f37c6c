"""Data-parallel runs under torchrun / accelerate launch (env:// rendezvous).

Each process takes one contiguous block of the data; rank 0 gathers the compact per-image
outcomes and writes the single results file. gloo on CPU, NCCL on GPUs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistContext",
    "launcher_local_rank",
    "launcher_shard",
    "process_group_from_env",
    "shard_positions",
]


def launcher_shard() -> tuple[int, int]:
    """(rank, world size) that torchrun / accelerate launch set in the environment; (0, 1)
    in a plain run."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1
    return int(os.environ.get("RANK", "0") or 0), world


def launcher_local_rank() -> int | None:
    """This process's index on its machine (``LOCAL_RANK``) when a launcher started several;
    ``None`` in a plain run. A bare ``cuda`` then means the GPU of that index."""
    if launcher_shard()[1] <= 1 or "LOCAL_RANK" not in os.environ:
        return None
    return int(os.environ["LOCAL_RANK"])


def shard_positions(n: int, shard: tuple[int, int]) -> range:
    """Contiguous block ``shard = (rank, world)`` of 0..n-1: concatenating the blocks in rank
    order gives back the single-process order. The one way work is split across processes."""
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"shard {rank} of {world} does not exist")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (in rank order); ``None`` elsewhere."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out


@contextmanager
def process_group_from_env(device: str = "cpu") -> Iterator[DistContext]:
    """Join the process group that torchrun / accelerate describe in the environment
    (``WORLD_SIZE`` > 1) for the duration of the block; a plain run gets a single-process
    context. A group joined here is left together (barrier, then destroyed) on exit: a
    process that ends with gloo's threads still running aborts."""
    rank, world = launcher_shard()
    if world <= 1:
        yield DistContext()
        return
    joined = not dist.is_initialized()
    if joined:
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(launcher_local_rank() or 0)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield DistContext(rank, world)
    finally:
        if joined:
            dist.barrier()
            dist.destroy_process_group()
