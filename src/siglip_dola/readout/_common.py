"""Helpers shared by the adapters: layer arguments, devices, batches, fingerprints.

Weight files and checkpoint layouts live in :mod:`siglip_dola.checkpoints`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from siglip_dola.readout.base import Batch


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


def compile_blocks(blocks: Iterable[nn.Module]) -> None:
    """Each transformer block through ``torch.compile``, in place (``nn.Module.compile``).

    Blocks of one tower share their code, so one compiled graph serves all of them (dynamo
    inlines the modules and passes their weights in); a batch of a new size compiles once
    more, with a dynamic batch dimension. The compiler runs at the first call, not here.
    """
    for block in blocks:
        block.compile()


def is_compile_failure(exc: BaseException) -> bool:
    """True for the errors torch.compile raises when it cannot compile here (no C++ compiler
    or Triton, an unsupported Python, ...), as opposed to errors of the model itself."""
    module = type(exc).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor"))


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
