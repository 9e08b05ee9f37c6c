"""Text banks: class names x prompt templates -> one normalised embedding per class, cached.

The class embedding is the mean of the L2-normalised template embeddings, renormalised
(the open_clip / clip_benchmark convention).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from siglip_dola.io import atomic_write_bytes
from siglip_dola.readout.base import TextEncoder

__all__ = [
    "build_text_bank",
    "encode_captions",
    "encode_texts",
    "load_templates",
    "resolve_templates",
    "text_bank_key",
    "validate_class_names",
]


# Fallback copy of the short ImageNet set, used only when open_clip is not installed.
_SIMPLE_TEMPLATES = (
    "itap of a {c}.",
    "a bad photo of the {c}.",
    "a origami {c}.",
    "a photo of the large {c}.",
    "a {c} in a video game.",
    "art of the {c}.",
    "a photo of the small {c}.",
)


def _open_clip_templates(name: str) -> tuple[str, ...] | None:
    try:
        from open_clip import zero_shot_metadata
    except ImportError:
        return None
    templates = getattr(zero_shot_metadata, name)
    return tuple(t("{c}") for t in templates)


def load_templates(spec: str) -> tuple[str, ...]:
    """Resolve a template set: ``openai`` (80 ImageNet prompts), ``simple`` (7),
    ``photo`` ("a photo of a {c}."), ``bundled`` (the demo's held-out set), or a file path
    (one template per line, each containing ``{c}``)."""
    if spec == "openai":
        templates = _open_clip_templates("OPENAI_IMAGENET_TEMPLATES")
        if templates is None:
            raise ValueError("the 'openai' template set needs open_clip_torch installed")
        return templates
    if spec == "simple":
        return _open_clip_templates("SIMPLE_IMAGENET_TEMPLATES") or _SIMPLE_TEMPLATES
    if spec == "photo":
        return ("a photo of a {c}.",)
    if spec == "bundled":
        from siglip_dola.data import BUNDLED_TEMPLATES

        return BUNDLED_TEMPLATES
    path = Path(spec)
    if not path.is_file():
        raise ValueError(
            f"unknown template set {spec!r}: expected openai, simple, photo, bundled "
            "or a file with one template per line"
        )
    from siglip_dola.data import read_template_file

    return read_template_file(path)


def resolve_templates(
    spec: str | None, own: Sequence[str] | None = None, default: str = "openai"
) -> tuple[str, ...]:
    """Templates named by ``spec`` (see :func:`load_templates`); without one, a data set's
    ``own`` templates where it has them, else the ``default`` set."""
    if spec is not None:
        return load_templates(spec)
    return tuple(own) if own else load_templates(default)


def validate_class_names(class_names: Sequence[str]) -> tuple[str, ...]:
    """Non-empty, stripped, unique class names (duplicates are named in the error)."""
    names = tuple(str(n).strip() for n in class_names)
    if not names:
        raise ValueError("no class names given: expected at least one")
    empty = [i for i, n in enumerate(names) if not n]
    if empty:
        raise ValueError(f"empty class name at position(s) {empty}")
    seen: dict[str, int] = {}
    duplicates = []
    for i, name in enumerate(names):
        if name.lower() in seen:
            duplicates.append(f"{name!r} (positions {seen[name.lower()]} and {i})")
        seen.setdefault(name.lower(), i)
    if duplicates:
        raise ValueError("duplicate class names: " + ", ".join(duplicates))
    return names


def _cache_key(encoder: TextEncoder, kind: str, **content: Sequence[str]) -> str:
    """Model identity, weights fingerprint and the exact texts."""
    payload = json.dumps(
        {
            "kind": kind,
            "model": encoder.name,
            "weights": encoder.fingerprint,
            **{k: list(v) for k, v in content.items()},
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def text_bank_key(
    encoder: TextEncoder, class_names: Sequence[str], templates: Sequence[str]
) -> str:
    """Cache key of a text bank: model, weights fingerprint, class names and templates."""
    return _cache_key(encoder, "bank", classes=class_names, templates=templates)


def _cached(path: Path | None, rows: int, compute) -> torch.Tensor:
    if path is not None and path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached.shape[0] == rows:
            return cached
    result = compute()
    if not torch.isfinite(result).all():
        raise ValueError("the text encoder produced NaN/inf embeddings")
    if path is not None:
        buffer = io.BytesIO()
        torch.save(result, buffer)
        atomic_write_bytes(path, buffer.getvalue())
    return result


@torch.no_grad()
def encode_texts(
    encoder: TextEncoder,
    texts: Sequence[str],
    batch_size: int = 256,
    progress: bool = False,
    desc: str = "texts",
) -> torch.Tensor:
    """[T, D] float32 unit-norm embeddings of ``texts``, encoded in batches."""
    rows = []
    for start in tqdm(
        range(0, len(texts), batch_size), desc=desc, unit="batch", disable=not progress, leave=False
    ):
        emb = encoder.encode_text(list(texts[start : start + batch_size])).float()
        rows.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
    return torch.cat(rows)


def encode_captions(
    encoder: TextEncoder,
    captions: Sequence[str],
    cache_dir: Path | str | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> torch.Tensor:
    """[T, D] unit-norm caption embeddings (duplicates allowed), cached like text banks."""
    if not captions:
        raise ValueError("no captions given")
    path = None
    if cache_dir is not None:
        path = (
            Path(cache_dir) / "captions" / f"{_cache_key(encoder, 'captions', texts=captions)}.pt"
        )
    return _cached(
        path,
        len(captions),
        lambda: encode_texts(encoder, captions, batch_size, progress, "captions"),
    )


def build_text_bank(
    encoder: TextEncoder,
    class_names: Sequence[str],
    templates: Sequence[str],
    cache_dir: Path | str | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> torch.Tensor:
    """[C, D] float32 class embeddings (unit norm), read from / written to the disk cache.

    Each class embedding is the renormalised mean of its unit-norm template embeddings.
    ``cache_dir=None`` disables caching.
    """
    names = validate_class_names(class_names)
    templates = tuple(templates)
    if not templates:
        raise ValueError("no templates given: expected at least one, e.g. 'a photo of a {c}.'")
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "text_banks" / f"{text_bank_key(encoder, names, templates)}.pt"

    def compute() -> torch.Tensor:
        texts = [t.replace("{c}", name) for name in names for t in templates]
        # Batches hold whole classes' template sets where possible, for any batch size.
        per_call = max(1, batch_size // len(templates)) * len(templates)
        emb = encode_texts(encoder, texts, per_call, progress, "text bank")
        emb = emb.view(len(names), len(templates), -1).mean(1)
        return torch.nn.functional.normalize(emb, dim=-1)

    return _cached(path, len(names), compute)
