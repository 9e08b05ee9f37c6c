"""Helpers shared by the adapters: layer arguments, devices, fingerprints, safe weight files."""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from siglip_dola.readout.base import Batch

SAFE_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def resolve_layers(layers: Iterable[int], depth: int) -> tuple[int, ...]:
    """Requested layer numbers -> sorted, distinct, with the final layer N appended."""
    result = set()
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"layer numbers must be integers, got {layer!r}")
        if not 1 <= layer <= depth:
            raise ValueError(
                f"layer {layer} is outside 1..{depth}: this model has {depth} layers "
                f"(layer l is the output of transformer block l)"
            )
        result.add(layer)
    result.add(depth)
    return tuple(sorted(result))


def parameter_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(module.parameters(), None)
    if param is None:
        return torch.device("cpu"), torch.float32
    return param.device, param.dtype


def move_batch(
    batch: Mapping[str, Any],
    device: torch.device,
    dtype: torch.dtype,
    non_blocking: bool = False,
) -> Batch:
    """Tensors to ``device``; floating tensors (pixels) also to the model's ``dtype``.
    ``non_blocking`` overlaps the copy of pinned tensors with work already queued."""
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(
                device=device,
                dtype=dtype if value.is_floating_point() else None,
                non_blocking=non_blocking,
            )
        moved[key] = value
    return moved


def weights_fingerprint(*modules: nn.Module, extra: str = "") -> str:
    """A short hash that changes when the weights change (for cache keys).

    Hashes every tensor's name, shape and dtype, its sum and a strided sample of its
    values: cheap next to a forward pass, and sensitive to any retraining or re-init.
    """
    digest = hashlib.sha256(extra.encode())
    for module in modules:
        for name, tensor in module.state_dict().items():
            flat = tensor.detach().reshape(-1)
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            if flat.numel() == 0 or not (flat.is_floating_point() or flat.dtype == torch.long):
                continue
            step = max(1, flat.numel() // 16)
            sample = flat[::step][:16].double()
            stats = torch.cat([flat.double().sum().reshape(1), sample]).cpu()
            digest.update(stats.numpy().tobytes())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- weight files


def load_state_dict_file(
    path: Path | str, select: Callable[[str], bool] | None = None
) -> dict[str, torch.Tensor]:
    """Tensors of one checkpoint file, never running pickled code.

    safetensors files are read with ``safetensors``; anything else with
    ``torch.load(weights_only=True)``, memory-mapped where possible so that taking a few
    tensors out of a large shard does not read the rest. ``select(name)`` picks the tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys() if select is None or select(k)}
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            # Legacy (non-zip) serialisation cannot be memory-mapped.
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds more than tensors and would need pickled code to load, which is "
            f"refused (torch.load weights_only=True): {err}"
        ) from None
    state = unwrap_state_dict(obj, path)
    if select is None:
        return state
    # Copies detach the chosen tensors from the memory map of the whole shard.
    return {k: v.clone() for k, v in state.items() if select(k)}


def unwrap_state_dict(obj: Any, source: Path | str) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a checkpoint ({'state_dict': ...}, {'model': ...}, DDP)."""
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{source} does not hold a state dict (a mapping of names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def load_weights_strict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str
) -> None:
    """load_state_dict(strict=True) with an error that names the missing/unexpected keys."""
    expected = set(module.state_dict())
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(set(state_dict) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_preview(unexpected)}")
        raise ValueError(f"checkpoint {source} does not match the model: " + "; ".join(parts))
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(f"checkpoint {source} does not match the model: {err}") from None


def _preview(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"[{shown}{more}]"


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
