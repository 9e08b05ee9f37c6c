"""Per-layer image embeddings of a whole image set: the input pipeline and its disk cache.

:func:`extract_layer_embeddings` reads the requested layers (plus N) out of every image with
one backbone forward per batch. Data-loader workers decode each image and run the model's
CPU-side transform (``vision.image_transform``) and stack the batch; the main process only
moves finished batches to the device (pinned, non-blocking on CUDA) and runs the model while
the workers prepare the next ones. ``workers=0`` does the same work in the main process.

The images are processed in blocks of :data:`BLOCK_IMAGES` consecutive positions. With a
cache folder every finished block is written at once (atomically: temp folder + rename), so
an interrupted run, started again with the same command, reads the finished blocks and
processes only the rest; a killed run never leaves a block that a rerun would trust. When a
single process has every block, they are joined into one memory-mapped file. Data-parallel
runs split the blocks into contiguous ranges, one per process, and share the same cache.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from siglip_dola.data import ImageError, ImageSet, Skipped
from siglip_dola.distributed import shard_positions
from siglip_dola.layers import validate_candidates
from siglip_dola.readout._common import move_batch
from siglip_dola.readout.base import Batch, ImageTransform, VisionReadout, collate_samples
from siglip_dola.settings import RunSettings

__all__ = [
    "BLOCK_IMAGES",
    "LayerEmbeddingSet",
    "as_tensor",
    "concat_embedding_sets",
    "extract_layer_embeddings",
]

BLOCK_IMAGES = 512  # images per cache block: the unit of resumption and of data parallelism
CACHE_FORMAT = 2  # part of the cache key: caches of another layout are not read


@dataclass
class LayerEmbeddingSet:
    """Per-layer image embeddings of a data set: ``embeddings[i]`` belongs to ``layers[i]``."""

    layers: tuple[int, ...]  # ascending, ends with the final layer N
    embeddings: np.ndarray  # float32 [L, N, D], possibly a read-only memory map
    labels: np.ndarray  # int64 [N]
    indices: np.ndarray  # int64 [N]: positions in the source ImageSet (skips removed)
    skipped: list[Skipped] = field(default_factory=list)

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


def concat_embedding_sets(parts: Sequence[LayerEmbeddingSet]) -> LayerEmbeddingSet:
    """Join parts (in data order) into one set."""
    if len(parts) == 1:
        return parts[0]
    return LayerEmbeddingSet(
        layers=parts[0].layers,
        embeddings=np.concatenate([np.asarray(p.embeddings) for p in parts], axis=1),
        labels=np.concatenate([p.labels for p in parts]),
        indices=np.concatenate([p.indices for p in parts]),
        skipped=[s for p in parts for s in p.skipped],
    )


def as_tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A tensor sharing ``array``'s memory, read-only memory maps included.

    torch warns that it cannot protect a read-only array from writes; nothing here writes to
    embeddings, so the warning would only be noise on every cache hit.
    """
    if isinstance(array, torch.Tensor):
        return array
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*", category=UserWarning)
        return torch.as_tensor(array)


# ----------------------------------------------------------------------------- cache


def _cache_key(
    vision: VisionReadout, image_set: ImageSet, layers: Sequence[int], dtype: torch.dtype
) -> str:
    payload = json.dumps(
        {
            "format": CACHE_FORMAT,
            "block": BLOCK_IMAGES,
            "model": vision.name,
            "weights": vision.fingerprint,
            "data": image_set.fingerprint(),
            "layers": list(layers),
            "dtype": str(dtype),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _write_part(path: Path, parts: Sequence[LayerEmbeddingSet]) -> None:
    """Parts joined (in order) as ``embeddings.npy`` + ``meta.json`` in a temp folder renamed
    to ``path``; the array is filled part by part through a memory map (bounded memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        first = parts[0].embeddings
        total = sum(p.embeddings.shape[1] for p in parts)
        shape = (first.shape[0], total, first.shape[2])
        out = np.lib.format.open_memmap(tmp / "embeddings.npy", "w+", np.float32, shape)
        start = 0
        for part in parts:
            count = part.embeddings.shape[1]
            out[:, start : start + count] = part.embeddings
            start += count
        out.flush()
        del out
        meta = {
            "layers": list(parts[0].layers),
            "labels": [int(x) for p in parts for x in p.labels],
            "indices": [int(x) for p in parts for x in p.indices],
            "skipped": [s.__dict__ for p in parts for s in p.skipped],
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_part(path: Path) -> LayerEmbeddingSet | None:
    """A part written by :func:`_write_part` (memory-mapped), or None if there is none."""
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


class _Store:
    """The cache folder of one (model, data, layers, dtype): finished blocks, and the whole
    set once one process had every block."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def whole(self) -> LayerEmbeddingSet | None:
        return _read_part(self.folder / "all")

    def block(self, number: int) -> LayerEmbeddingSet | None:
        return _read_part(self._block_path(number))

    def write_block(self, number: int, part: LayerEmbeddingSet) -> None:
        _write_part(self._block_path(number), [part])

    def write_whole(self, parts: Sequence[LayerEmbeddingSet]) -> LayerEmbeddingSet:
        """Join the blocks into one memory-mapped file and drop the blocks."""
        _write_part(self.folder / "all", parts)
        shutil.rmtree(self.folder / "blocks", ignore_errors=True)
        return self.whole()

    def _block_path(self, number: int) -> Path:
        return self.folder / "blocks" / f"block-{number:06d}"


# ----------------------------------------------------------------------------- loading


@dataclass
class _Loaded:
    """One batch prepared by a loader worker: the model inputs of the images that could be
    used, their positions, and the reasons for the others."""

    block: int
    positions: list[int]
    batch: Batch | None
    errors: list[tuple[int, str]]

    def pin_memory(self) -> _Loaded:
        if self.batch is not None:
            self.batch = {k: v.pin_memory() for k, v in self.batch.items()}
        return self


class _Batches(torch.utils.data.Dataset):
    """Item i: batch i of the plan, decoded and transformed (in a worker process)."""

    def __init__(
        self,
        image_set: ImageSet,
        transform: ImageTransform,
        plan: Sequence[tuple[int, Sequence[int]]],
    ) -> None:
        self.image_set = image_set
        self.transform = transform
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> _Loaded:
        block, positions = self.plan[index]
        samples, kept, errors = [], [], []
        for position in positions:
            try:
                samples.append(self.transform(self.image_set.image(position)))
            except ImageError as exc:
                errors.append((position, str(exc)))
                continue
            except Exception as exc:  # the model's processor refused this image
                errors.append((position, f"preprocessing failed ({type(exc).__name__}: {exc})"))
                continue
            kept.append(position)
        return _Loaded(block, kept, collate_samples(samples) if samples else None, errors)


def _unbatched(item: _Loaded) -> _Loaded:
    return item


def _batch_plan(
    blocks: Sequence[tuple[int, range]], batch_size: int
) -> list[tuple[int, Sequence[int]]]:
    """Batches of positions that never straddle a block: (block number, positions)."""
    plan = []
    for number, positions in blocks:
        for start in range(0, len(positions), batch_size):
            plan.append((number, positions[start : start + batch_size]))
    return plan


def _loader(
    image_set: ImageSet,
    transform: ImageTransform,
    plan: Sequence[tuple[int, Sequence[int]]],
    settings: RunSettings,
) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        _Batches(image_set, transform, plan),
        batch_size=None,
        num_workers=settings.workers,
        collate_fn=_unbatched,
        pin_memory=torch.device(settings.device).type == "cuda",
    )


# ----------------------------------------------------------------------------- extraction


@torch.no_grad()
def extract_layer_embeddings(
    vision: VisionReadout,
    image_set: ImageSet,
    layers: Iterable[int],
    settings: RunSettings | None = None,
    shard: tuple[int, int] = (0, 1),
) -> LayerEmbeddingSet:
    """Read ``layers`` (plus N) out for every image: one backbone forward per batch.

    Unusable images are skipped and listed. With ``settings.cache_dir`` finished blocks are
    cached and reused (see the module docstring). ``shard = (rank, world)`` processes one
    contiguous range of blocks (data-parallel runs); the parts of all ranks, in rank order,
    are the whole set in data order.
    """
    settings = RunSettings.coerce(settings)
    requested = tuple(layers)
    contrast_layers = set(validate_candidates(requested, vision.depth)) if requested else set()
    wanted = tuple(sorted(contrast_layers | {vision.depth}))
    dtype = settings.torch_dtype
    count = len(image_set)
    all_blocks = [
        (number, range(start, min(start + BLOCK_IMAGES, count)))
        for number, start in enumerate(range(0, count, BLOCK_IMAGES))
    ]
    mine = [all_blocks[i] for i in shard_positions(len(all_blocks), shard)]
    listing = list(image_set.skipped) if shard[0] == 0 else []  # listing problems: report once
    store = None
    if settings.cache_dir is not None:
        key = _cache_key(vision, image_set, wanted, dtype)
        store = _Store(settings.cache_dir / "embeddings" / key)
        whole = store.whole()
        if whole is not None:
            return _rows_of_blocks(whole, mine, shard, listing)
    parts: dict[int, LayerEmbeddingSet] = {}
    if store is not None:
        for number, _ in mine:
            cached = store.block(number)
            if cached is not None:
                parts[number] = cached
    todo = [(number, positions) for number, positions in mine if number not in parts]
    total = sum(len(p) for _, p in mine)
    from_cache = total - sum(len(p) for _, p in todo)
    bar = tqdm(total=total, desc="images", unit="img", disable=not settings.progress)
    bar.update(from_cache)
    postfix = {"cached": from_cache} if from_cache else {}
    if postfix:
        bar.set_postfix(**postfix)
    skipped_count = sum(len(p.skipped) for p in parts.values())
    if todo:
        device = torch.device(settings.device)
        plan = _batch_plan(todo, settings.batch_size)
        last_batch = {number: i for i, (number, _) in enumerate(plan)}
        pending: list[tuple[np.ndarray, list[int]]] = []
        pending_skips: list[Skipped] = []
        for i, loaded in enumerate(_loader(image_set, vision.image_transform, plan, settings)):
            for position, reason in loaded.errors:
                pending_skips.append(Skipped(image_set.source(position), reason))
            if loaded.batch is not None:
                batch = move_batch(loaded.batch, device, dtype, non_blocking=True)
                out = vision.forward_layers(batch, wanted)
                pending.append((out.embeddings.float().cpu().numpy(), loaded.positions))
            if last_batch[loaded.block] == i:
                part = _block_part(wanted, vision.embed_dim, image_set, pending, pending_skips)
                if store is not None:
                    store.write_block(loaded.block, part)
                parts[loaded.block] = part
                pending, pending_skips = [], []
            skipped_count += len(loaded.errors)
            bar.update(len(loaded.positions) + len(loaded.errors))
            bar.set_postfix(**postfix, skipped=skipped_count)
    bar.close()
    ordered = [parts[number] for number, _ in mine] or [
        _block_part(wanted, vision.embed_dim, image_set, [], [])
    ]
    if store is not None and shard == (0, 1) and ordered and len(ordered) == len(all_blocks):
        result = store.write_whole(ordered)
    else:
        result = concat_embedding_sets(ordered)
    result = LayerEmbeddingSet(
        result.layers, result.embeddings, result.labels, result.indices, listing + result.skipped
    )
    if not len(result.labels) and shard == (0, 1):
        raise ValueError(
            f"no usable image in {image_set.name}: all {count} were skipped "
            f"(first reason: {result.skipped[0].reason if result.skipped else 'empty data set'})"
        )
    if not np.isfinite(np.asarray(result.embeddings)).all():
        raise ValueError(f"model {vision.name} produced NaN/inf image embeddings")
    return result


def _block_part(
    layers: tuple[int, ...],
    dim: int,
    image_set: ImageSet,
    pending: Sequence[tuple[np.ndarray, list[int]]],
    skipped: list[Skipped],
) -> LayerEmbeddingSet:
    positions = np.asarray([p for _, ps in pending for p in ps], dtype=np.int64)
    embeddings = (
        np.concatenate([e for e, _ in pending], axis=1)
        if pending
        else np.zeros((len(layers), 0, dim), np.float32)
    )
    return LayerEmbeddingSet(layers, embeddings, image_set.labels[positions], positions, skipped)


def _rows_of_blocks(
    whole: LayerEmbeddingSet,
    blocks: Sequence[tuple[int, range]],
    shard: tuple[int, int],
    listing: list[Skipped],
) -> LayerEmbeddingSet:
    """This shard's share of a cached whole set (all of it for a single process); the first
    rank reports every skipped image."""
    if shard == (0, 1):
        rows = np.arange(len(whole.indices))
        part = whole
    else:
        lo = blocks[0][1].start if blocks else 0
        hi = blocks[-1][1].stop if blocks else 0
        rows = np.flatnonzero((whole.indices >= lo) & (whole.indices < hi))
        part = whole.subset(rows)
    skipped = listing + (whole.skipped if shard[0] == 0 else [])
    return LayerEmbeddingSet(part.layers, part.embeddings, part.labels, part.indices, skipped)
