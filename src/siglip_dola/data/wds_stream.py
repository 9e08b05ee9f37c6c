"""The loader side of :class:`~siglip_dola.data.wds.WebDatasetSource`: shards read by the
``webdataset`` library, decoded and transformed in the loader workers, batched."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import torch

from siglip_dola.data.images import Skipped, load_image
from siglip_dola.data.loading import LoadedBatch, load_batch
from siglip_dola.data.wds_index import IMAGE_KEYS, ShardIndex

__all__ = ["ShardBatches"]

# (position, source, the image's loader, or None with the reason it is skipped)
_Entry = tuple[int, str, "Callable[[], Any] | None", "Skipped | None"]


class ShardBatches(torch.utils.data.IterableDataset):
    """The ``LoadedBatch`` es of some shards: each shard's batches in order, its last flagged
    (a shard without usable images still gives one, empty, last batch). With several loader
    workers, worker k of n takes shards k, k+n, ... whole."""

    def __init__(
        self, shards: Sequence[ShardIndex], batch_size: int, transform: Any, max_pixels: int
    ) -> None:
        self.shards = list(shards)
        self.batch_size = batch_size
        self.transform = transform
        self.max_pixels = max_pixels

    def __iter__(self) -> Iterator[LoadedBatch]:
        info = torch.utils.data.get_worker_info()
        shards = self.shards if info is None else self.shards[info.id :: info.num_workers]
        for shard in shards:
            previous = None
            for group in self._groups(shard):
                if previous is not None:
                    yield self._loaded(shard, previous, last=False)
                previous = group
            yield self._loaded(shard, previous or [], last=True)

    def _groups(self, shard: ShardIndex) -> Iterator[list[_Entry]]:
        """Lists of up to ``batch_size`` (position, source, image loader or None, skip or None)."""
        from webdataset.tariterators import tarfile_samples

        errors: list[str] = []

        def handler(exc: Exception) -> bool:  # a member webdataset could not read: go on
            errors.append(f"{type(exc).__name__}: {str(exc.args[0]) if exc.args else exc}")
            return True

        group: list[_Entry] = []
        index = 0
        for sample in tarfile_samples([{"url": str(shard.path)}], handler=handler):
            if index >= shard.count:
                raise RuntimeError(f"{shard.path} yields more samples than its index counted")
            source = f"{shard.path}:{sample.get('__key__', index)}"
            reason = shard.skips.get(index)
            key = next((k for k in IMAGE_KEYS if k in sample), None)
            if reason is None and key is None:
                why = errors[-1] if errors else "not found"
                reason = f"image member unreadable ({why})"
            if reason is not None:
                entry = (None, Skipped(source, reason))
            else:
                entry = (partial(load_image, sample[key], self.max_pixels), None)
            group.append((shard.offset + index, source, *entry))
            index += 1
            if len(group) == self.batch_size:
                yield group
                group = []
        why = errors[-1] if errors else "the shard ended early"
        for missing in range(index, shard.count):  # indexed, but the stream stopped short
            source = f"{shard.path}#{missing}"
            group.append(
                (shard.offset + missing, source, None, Skipped(source, f"not read: {why}"))
            )
            if len(group) == self.batch_size:
                yield group
                group = []
        if group:
            yield group

    def _loaded(self, shard: ShardIndex, group: list[_Entry], last: bool) -> LoadedBatch:
        loadable = [(position, source, load) for position, source, load, _ in group if load]
        positions, batch, failed = load_batch(loadable, self.transform)
        known = [(position, skip) for position, _, _, skip in group if skip is not None]
        skips = [skip for _, skip in sorted(known + failed, key=lambda entry: entry[0])]
        labels = [int(shard.labels[p - shard.offset]) for p in positions]
        return LoadedBatch(shard.number, positions, labels, batch, skips, last)
