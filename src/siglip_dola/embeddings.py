"""Per-layer image embeddings of a whole image set, and their disk cache.

:func:`extract_layer_embeddings` reads the requested layers (plus N) out of every image with
one backbone forward per batch; unusable images are skipped and listed. With a cache folder
the result is stored as a memory-mapped ``.npy`` keyed by model, weights, data, layers and
dtype, and reused by later runs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from siglip_dola.data import ImageError, ImageSet, Skipped
from siglip_dola.distributed import shard_positions
from siglip_dola.layers import validate_candidates
from siglip_dola.readout._common import move_batch
from siglip_dola.readout.base import VisionReadout
from siglip_dola.settings import RunSettings

__all__ = ["LayerEmbeddingSet", "concat_embedding_sets", "extract_layer_embeddings"]


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
    """Join shards (in shard order) into one set."""
    if len(parts) == 1:
        return parts[0]
    return LayerEmbeddingSet(
        layers=parts[0].layers,
        embeddings=np.concatenate([np.asarray(p.embeddings) for p in parts], axis=1),
        labels=np.concatenate([p.labels for p in parts]),
        indices=np.concatenate([p.indices for p in parts]),
        skipped=[s for p in parts for s in p.skipped],
    )


# ----------------------------------------------------------------------------- cache


def _cache_key(
    vision: VisionReadout, image_set: ImageSet, layers: Sequence[int], dtype: torch.dtype
) -> str:
    payload = json.dumps(
        {
            "model": vision.name,
            "weights": vision.fingerprint,
            "data": image_set.fingerprint(),
            "layers": list(layers),
            "dtype": str(dtype),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _shard_name(shard: tuple[int, int]) -> str:
    return f"shard-{shard[0]:05d}-of-{shard[1]:05d}"


def _load_shard(path: Path) -> LayerEmbeddingSet | None:
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


def _load_cached(path: Path, shard: tuple[int, int]) -> LayerEmbeddingSet | None:
    """This shard if cached; for a whole-set request also any complete set of shards that a
    data-parallel run wrote."""
    own = _load_shard(path / _shard_name(shard))
    if own is not None or shard != (0, 1) or not path.is_dir():
        return own
    for world in sorted({int(p.name.rsplit("-", 1)[1]) for p in path.glob("shard-*-of-*")}):
        parts = [_load_shard(path / _shard_name((r, world))) for r in range(world)]
        if all(p is not None for p in parts):
            return concat_embedding_sets(parts)
    return None


def _save_cached(path: Path, result: LayerEmbeddingSet) -> None:
    # Written into a sibling temp folder and renamed: a crash never leaves a partial cache.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        np.save(tmp / "embeddings.npy", np.ascontiguousarray(result.embeddings))
        meta = {
            "layers": list(result.layers),
            "labels": result.labels.tolist(),
            "indices": result.indices.tolist(),
            "skipped": [s.__dict__ for s in result.skipped],
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------- extraction


class _ImageDataset(torch.utils.data.Dataset):
    def __init__(self, image_set: ImageSet) -> None:
        self.image_set = image_set

    def __len__(self) -> int:
        return len(self.image_set)

    def __getitem__(self, index: int) -> tuple[int, Image.Image | str]:
        try:
            return index, self.image_set.image(index)
        except ImageError as exc:
            return index, str(exc)


def _collate(items: list[tuple[int, Image.Image | str]]) -> list[tuple[int, Image.Image | str]]:
    return items


@torch.no_grad()
def extract_layer_embeddings(
    vision: VisionReadout,
    image_set: ImageSet,
    layers: Iterable[int],
    settings: RunSettings | None = None,
    shard: tuple[int, int] = (0, 1),
) -> LayerEmbeddingSet:
    """Read ``layers`` (plus N) out for every image: one backbone forward per batch.

    Unusable images are skipped and listed. With ``settings.cache_dir`` the result is cached
    (see the module docstring). ``shard = (rank, world)`` processes one contiguous block of
    the images (data-parallel runs); each shard is cached on its own and a later whole-set run
    reads a complete set of shards.
    """
    settings = RunSettings.coerce(settings)
    requested = tuple(layers)
    contrast_layers = set(validate_candidates(requested, vision.depth)) if requested else set()
    wanted = tuple(sorted(contrast_layers | {vision.depth}))
    dtype = settings.torch_dtype
    cache_path = None
    if settings.cache_dir is not None:
        key = _cache_key(vision, image_set, wanted, dtype)
        cache_path = settings.cache_dir / "embeddings" / key
        cached = _load_cached(cache_path, shard)
        if cached is not None:
            return cached
    block = shard_positions(len(image_set), shard)
    full_set = image_set
    image_set = image_set.subset(block)
    device = torch.device(settings.device)
    loader = torch.utils.data.DataLoader(
        _ImageDataset(image_set),
        batch_size=settings.batch_size,
        num_workers=settings.workers,
        collate_fn=_collate,
    )
    chunks: list[np.ndarray] = []
    kept: list[int] = []
    skipped = list(full_set.skipped) if shard[0] == 0 else []  # listing problems: report once
    bar = tqdm(total=len(image_set), desc="images", unit="img", disable=not settings.progress)
    for items in loader:
        images, positions = [], []
        for index, item in items:
            if isinstance(item, str):
                skipped.append(Skipped(full_set.source(block.start + index), item))
            else:
                images.append(item)
                positions.append(index)
        if images:
            batch = move_batch(vision.preprocess(images), device, dtype)
            out = vision.forward_layers(batch, wanted)
            chunks.append(out.embeddings.float().cpu().numpy())
            kept.extend(positions)
        bar.update(len(items))
        bar.set_postfix(skipped=len(skipped))
    bar.close()
    if not kept and shard == (0, 1):
        raise ValueError(
            f"no usable image in {image_set.name}: all {len(image_set)} were skipped "
            f"(first reason: {skipped[0].reason if skipped else 'empty data set'})"
        )
    local = np.asarray(kept, dtype=np.int64)
    result = LayerEmbeddingSet(
        layers=wanted,
        embeddings=np.concatenate(chunks, axis=1)
        if chunks
        else np.zeros((len(wanted), 0, vision.embed_dim), np.float32),
        labels=image_set.labels[local],
        indices=local + block.start,
        skipped=skipped,
    )
    if not np.isfinite(result.embeddings).all():
        raise ValueError(f"model {vision.name} produced NaN/inf image embeddings")
    if cache_path is not None:
        _save_cached(cache_path / _shard_name(shard), result)
    return result
