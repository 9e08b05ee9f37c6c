"""Per-layer image embeddings of a whole image set: the input pipeline and its disk cache.

:func:`extract_layer_embeddings` reads the requested layers (plus N) out of every image with
one backbone forward per batch. Data-loader workers decode each image and run the model's
CPU-side transform (``vision.image_transform``) and stack the batch; the main process only
moves finished batches to the device (pinned, non-blocking on CUDA) and runs the model while
the workers prepare the next ones. ``workers=0`` does the same work in the main process.
On CUDA the pixels travel as uint8 where the model's transform splits exactly so (the device
looks the float32 values up; :mod:`siglip_dola.readout.pixels`), and each batch's embeddings
are read back while the next batch runs, so the GPU is not left waiting for the host.

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from siglip_dola.data import ImageSet, Skipped
from siglip_dola.data.loading import (
    LoadedBatch,
    SourceBlock,
    StreamingSource,
    load_and_transform,
    load_batch,
)
from siglip_dola.distributed import shard_positions
from siglip_dola.layers import validate_candidates
from siglip_dola.readout._common import is_compile_failure, move_batch
from siglip_dola.readout.base import (
    Batch,
    ImageTransform,
    LayerEmbeddings,
    VisionReadout,
)
from siglip_dola.settings import RunSettings

__all__ = [
    "BLOCK_IMAGES",
    "LayerEmbeddingSet",
    "LoadedBatch",
    "SourceBlock",
    "StreamingSource",
    "as_tensor",
    "concat_embedding_sets",
    "extract_layer_embeddings",
    "load_and_transform",
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


def _write_part(
    path: Path, parts: Sequence[LayerEmbeddingSet], numbers: Sequence[int] | None = None
) -> None:
    """Parts joined (in order) as ``embeddings.npy`` + ``meta.json`` in a temp folder renamed
    to ``path``; the array is filled part by part through a memory map (bounded memory).
    ``numbers``: the parts' block numbers, recorded with the rows each part holds."""
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
        if numbers is not None:
            rows = np.cumsum([0] + [len(p.indices) for p in parts]).tolist()
            meta["block_rows"] = {str(n): rows[i : i + 2] for i, n in enumerate(numbers)}
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

    def whole_block_rows(self) -> dict[int, tuple[int, int]]:
        """Rows [start, stop) of each block in the whole set."""
        meta = json.loads((self.folder / "all" / "meta.json").read_text())
        return {int(n): (lo, hi) for n, (lo, hi) in meta["block_rows"].items()}

    def block(self, number: int) -> LayerEmbeddingSet | None:
        return _read_part(self._block_path(number))

    def write_block(self, number: int, part: LayerEmbeddingSet) -> None:
        _write_part(self._block_path(number), [part])

    def write_whole(
        self, parts: Sequence[LayerEmbeddingSet], numbers: Sequence[int]
    ) -> LayerEmbeddingSet:
        """Join the blocks into one memory-mapped file and drop the blocks."""
        _write_part(self.folder / "all", parts, numbers)
        shutil.rmtree(self.folder / "blocks", ignore_errors=True)
        return self.whole()

    def _block_path(self, number: int) -> Path:
        return self.folder / "blocks" / f"block-{number:06d}"


# ----------------------------------------------------------------------------- loading


class _ImageSetBatches(torch.utils.data.Dataset):
    """Item i: batch i of the plan over an ImageSet, decoded and transformed (in a worker)."""

    def __init__(
        self,
        image_set: ImageSet,
        transform: ImageTransform,
        plan: Sequence[tuple[int, Sequence[int], bool]],
    ) -> None:
        self.image_set = image_set
        self.transform = transform
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> LoadedBatch:
        block, positions, last = self.plan[index]
        items = [
            (position, self.image_set.source(position), partial(self.image_set.image, position))
            for position in positions
        ]
        kept, batch, skipped = load_batch(items, self.transform)
        labels = self.image_set.labels[kept].tolist()
        return LoadedBatch(block, kept, labels, batch, [skip for _, skip in skipped], last)


def _image_set_blocks(image_set: ImageSet) -> list[SourceBlock]:
    count = len(image_set)
    return [
        SourceBlock(number, min(BLOCK_IMAGES, count - start))
        for number, start in enumerate(range(0, count, BLOCK_IMAGES))
    ]


def _batches(
    source: ImageSet | StreamingSource,
    blocks: Sequence[int],
    batch_size: int,
    transform: ImageTransform,
) -> torch.utils.data.Dataset:
    """The loader's dataset over ``blocks``: the source's own for a streaming source, else
    batches of positions that never straddle a block."""
    if isinstance(source, StreamingSource):
        return source.block_batches(blocks, batch_size, transform)
    count = len(source)
    plan = []
    for number in blocks:
        positions = range(number * BLOCK_IMAGES, min((number + 1) * BLOCK_IMAGES, count))
        starts = range(0, len(positions), batch_size)
        for start in starts:
            plan.append((number, positions[start : start + batch_size], start == starts[-1]))
    return _ImageSetBatches(source, transform, plan)


def _unbatched(item: LoadedBatch) -> LoadedBatch:
    return item


BATCHES_IN_FLIGHT = 4  # prepared batches the loader keeps ahead of the model (at least)


def _loader(
    dataset: torch.utils.data.Dataset, settings: RunSettings
) -> torch.utils.data.DataLoader:
    """Batches prepared by ``settings.workers`` processes (in this one for 0), pinned for CUDA.

    Each worker holds ``prefetch_factor`` batches: at least :data:`BATCHES_IN_FLIGHT` in all,
    one per worker beyond that (each is a whole batch of pixels in shared memory)."""
    workers = settings.workers
    options: dict[str, Any] = {}
    if workers:
        options["prefetch_factor"] = max(1, -(-BATCHES_IN_FLIGHT // workers))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        collate_fn=_unbatched,
        pin_memory=torch.device(settings.device).type == "cuda",
        **options,
    )


def _pixel_transfer(
    vision: VisionReadout, settings: RunSettings
) -> tuple[ImageTransform, Callable[[Batch], Batch] | None]:
    """The transform the loader runs and what the device does after the move: the model's own
    transform (nothing after), or its uint8 split (the lookup after) as ``settings.transfer``
    asks and the transform allows."""
    transform = vision.image_transform
    wanted = settings.transfer
    if wanted == "auto":
        wanted = "uint8" if torch.device(settings.device).type == "cuda" else "float32"
    if wanted == "float32":
        return transform, None
    split_of = getattr(transform, "uint8_split", None)
    split = split_of() if split_of is not None else None
    if split is None:
        return transform, None  # float32: this transform has no exact 8-bit split
    return split, split.finish


# ----------------------------------------------------------------------------- extraction


@dataclass
class _BlockParts:
    """What the batches of one block produced so far."""

    embeddings: list[np.ndarray] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def join(self, layers: tuple[int, ...], dim: int) -> LayerEmbeddingSet:
        embeddings = (
            np.concatenate(self.embeddings, axis=1)
            if self.embeddings
            else np.zeros((len(layers), 0, dim), np.float32)
        )
        return LayerEmbeddingSet(
            layers,
            embeddings,
            np.asarray(self.labels, dtype=np.int64),
            np.asarray(self.positions, dtype=np.int64),
            self.skipped,
        )


class _Readback:
    """Embeddings of the batch before this one, copied to the host while this one runs.

    ``hold`` starts the copy of a batch's embeddings (non-blocking from CUDA) and returns the
    batch held before it, whose copy is then complete; on a CPU it is a plain copy."""

    def __init__(self) -> None:
        self._held: tuple[LoadedBatch, torch.Tensor | None, Any] | None = None

    def hold(
        self, loaded: LoadedBatch, embeddings: torch.Tensor | None
    ) -> tuple[LoadedBatch, np.ndarray | None] | None:
        event = None
        if embeddings is not None:
            embeddings = embeddings.float()
            if embeddings.device.type == "cuda":
                embeddings = embeddings.to("cpu", non_blocking=True)
                event = torch.cuda.Event()
                event.record()
            else:
                embeddings = embeddings.cpu()
        previous, self._held = self.release(), (loaded, embeddings, event)
        return previous

    def release(self) -> tuple[LoadedBatch, np.ndarray | None] | None:
        """The batch held (its copy waited for), or None; nothing is held afterwards."""
        if self._held is None:
            return None
        loaded, embeddings, event = self._held
        self._held = None
        if event is not None:
            event.synchronize()
        return loaded, None if embeddings is None else embeddings.numpy()


def _prepare(vision: VisionReadout, settings: RunSettings) -> None:
    """``settings.compile``: the image tower's blocks through torch.compile."""
    if not settings.compile:
        return
    compile_tower = getattr(vision, "compile", None)
    if compile_tower is None:
        raise ValueError(f"{vision.name}: its readout ({type(vision).__name__}) cannot compile")
    compile_tower()


def _forward(
    vision: VisionReadout, batch: Batch, layers: tuple[int, ...], settings: RunSettings
) -> LayerEmbeddings:
    try:
        return vision.forward_layers(batch, layers)
    except Exception as exc:
        if settings.compile and is_compile_failure(exc):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ValueError(
                f"--compile: torch.compile cannot compile {vision.name} here "
                f"({type(exc).__name__}: {first[:200]}); run without --compile"
            ) from exc
        raise


@torch.no_grad()
def extract_layer_embeddings(
    vision: VisionReadout,
    image_set: ImageSet | StreamingSource,
    layers: Iterable[int],
    settings: RunSettings | None = None,
    shard: tuple[int, int] = (0, 1),
) -> LayerEmbeddingSet:
    """Read ``layers`` (plus N) out for every image: one backbone forward per batch.

    ``image_set`` is an :class:`~siglip_dola.data.ImageSet` (random access) or a
    :class:`StreamingSource`. Unusable images are skipped and listed. With
    ``settings.cache_dir`` finished blocks are cached and reused (see the module docstring).
    ``shard = (rank, world)`` processes one contiguous range of blocks (data-parallel runs);
    the parts of all ranks, in rank order, are the whole set in data order.
    """
    settings = RunSettings.coerce(settings)
    requested = tuple(layers)
    contrast_layers = set(validate_candidates(requested, vision.depth)) if requested else set()
    wanted = tuple(sorted(contrast_layers | {vision.depth}))
    dtype = settings.torch_dtype
    if isinstance(image_set, StreamingSource):
        all_blocks = image_set.cache_blocks()
    else:
        all_blocks = _image_set_blocks(image_set)
    mine = [all_blocks[i] for i in shard_positions(len(all_blocks), shard)]
    listing = list(image_set.skipped) if shard[0] == 0 else []  # listing problems: report once
    sizes = [block.size for block in mine]
    total = None if None in sizes else sum(sizes)
    store = None
    if settings.cache_dir is not None:
        key = _cache_key(vision, image_set, wanted, dtype)
        store = _Store(settings.cache_dir / "embeddings" / key)
        whole = store.whole()
        if whole is not None:
            part = _rows_of_blocks(whole, store.whole_block_rows(), mine, shard, listing)
            _cached_bar(settings, total, total if total is not None else len(part.indices))
            return part
    parts: dict[int, LayerEmbeddingSet] = {}
    if store is not None:
        for block in mine:
            cached = store.block(block.number)
            if cached is not None:
                parts[block.number] = cached
    todo = [block.number for block in mine if block.number not in parts]
    from_cache = sum(len(p.indices) + len(p.skipped) for p in parts.values())
    bar = tqdm(total=total, desc="images", unit="img", disable=not settings.progress)
    bar.update(from_cache)
    postfix = {"cached": from_cache} if from_cache else {}
    if postfix:
        bar.set_postfix(**postfix)
    skipped_count = sum(len(p.skipped) for p in parts.values())
    if todo:
        _prepare(vision, settings)
        device = torch.device(settings.device)
        transform, finish = _pixel_transfer(vision, settings)
        dataset = _batches(image_set, todo, settings.batch_size, transform)
        pending: dict[int, _BlockParts] = {}
        readback = _Readback()

        def collect(done: tuple[LoadedBatch, np.ndarray | None] | None) -> None:
            nonlocal skipped_count
            if done is None:
                return
            loaded, embeddings = done
            block = pending.setdefault(loaded.block, _BlockParts())
            block.skipped.extend(loaded.skipped)
            if embeddings is not None:
                block.embeddings.append(embeddings)
                block.positions.extend(loaded.positions)
                block.labels.extend(loaded.labels)
            if loaded.last:
                part = pending.pop(loaded.block).join(wanted, vision.embed_dim)
                if store is not None:
                    store.write_block(loaded.block, part)
                parts[loaded.block] = part
            skipped_count += len(loaded.skipped)
            bar.update(len(loaded.positions) + len(loaded.skipped))
            bar.set_postfix(**postfix, skipped=skipped_count)

        try:
            for loaded in _loader(dataset, settings):
                out = None
                if loaded.batch is not None:
                    batch = move_batch(loaded.batch, device, dtype, non_blocking=True)
                    if finish is not None:
                        batch = move_batch(finish(batch), device, dtype)
                    out = _forward(vision, batch, wanted, settings).embeddings
                collect(readback.hold(loaded, out))
        except KeyboardInterrupt:
            collect(readback.release())  # a finished batch may complete a block: keep it
            raise
        collect(readback.release())
        if pending:
            raise RuntimeError(f"the loader ended inside cache block(s) {sorted(pending)}")
    bar.close()
    ordered = [parts[block.number] for block in mine] or [
        _BlockParts().join(wanted, vision.embed_dim)
    ]
    if store is not None and shard == (0, 1) and len(ordered) == len(all_blocks):
        result = store.write_whole(ordered, [block.number for block in mine])
    else:
        result = concat_embedding_sets(ordered)
    result = LayerEmbeddingSet(
        result.layers, result.embeddings, result.labels, result.indices, listing + result.skipped
    )
    if not len(result.labels) and shard == (0, 1):
        raise ValueError(
            f"no usable image in {image_set.name}: all {total if total is not None else ''} "
            f"were skipped (first reason: "
            f"{result.skipped[0].reason if result.skipped else 'empty data set'})"
        )
    if not np.isfinite(np.asarray(result.embeddings)).all():
        raise ValueError(f"model {vision.name} produced NaN/inf image embeddings")
    return result


def _cached_bar(settings: RunSettings, total: int | None, count: int) -> None:
    """The progress line of a set read whole from the cache: every image, all cached."""
    bar = tqdm(total=total, desc="images", unit="img", disable=not settings.progress)
    bar.update(count)
    bar.set_postfix(cached=count)
    bar.close()


def _rows_of_blocks(
    whole: LayerEmbeddingSet,
    block_rows: dict[int, tuple[int, int]],
    blocks: Sequence[SourceBlock],
    shard: tuple[int, int],
    listing: list[Skipped],
) -> LayerEmbeddingSet:
    """This shard's share of a cached whole set (all of it for a single process); the first
    rank reports every skipped image."""
    part = whole
    if shard != (0, 1):
        spans = [block_rows[b.number] for b in blocks]
        rows = np.concatenate([np.arange(lo, hi) for lo, hi in spans]) if spans else []
        part = whole.subset(np.asarray(rows, dtype=np.int64))
    skipped = listing + (whole.skipped if shard[0] == 0 else [])
    return LayerEmbeddingSet(part.layers, part.embeddings, part.labels, part.indices, skipped)
