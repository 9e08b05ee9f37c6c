"""How a run reads images: batch size, workers, device, dtype, compile, cache, progress.

One frozen object, checked once when it is made (the pattern of ``generate.sampling``'s
``SamplingConfig``) and passed whole to every function that reads images. The dtype parser,
the device check and the cache root live here, once for the whole package. Nothing here
imports torch at module level: the command line builds these settings before torch loads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "CACHE_ENV",
    "DTYPE_ALIASES",
    "RunSettings",
    "check_device",
    "default_cache_dir",
    "default_workers",
    "dtype_name",
    "parse_dtype",
]

CACHE_ENV = "SIGLIP_DOLA_CACHE"
# Accepted spellings -> canonical torch attribute names.
DTYPE_ALIASES = {
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp64": "float64",
    "float64": "float64",
}
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")  # what a model may run in
PIXEL_TRANSFERS = ("auto", "float32", "uint8")
MAX_DEFAULT_WORKERS = 16  # enough to feed a fast GPU; more only adds memory in flight


def default_cache_dir() -> Path:
    """``$SIGLIP_DOLA_CACHE``, else ``~/.cache/siglip_dola`` (read at call time)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "siglip_dola").expanduser()


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_workers(device: str = "cuda") -> int:
    """Loader worker processes for one process: the CPUs it may use, shared with the other
    data-parallel processes on this machine (``LOCAL_WORLD_SIZE``, set by torchrun and
    accelerate launch), less one for the process itself, at most :data:`MAX_DEFAULT_WORKERS`.

    Each worker decodes and preprocesses whole batches (a transformers image processor takes
    about 10 ms per photo), so the main process only moves batches and runs the model. On a
    ``cpu`` device the model's forward runs on those same CPUs (torch's threads take them
    all), so the workers get half of them, less one: none on a 2-CPU machine, where one
    worker made ``eval`` of the bundled model 1.4x slower (1.74 s vs 1.23 s per 2,000 images).
    """
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    except ValueError:
        local = 1
    cpus = available_cpus() // local
    if str(device).split(":")[0] == "cpu":
        cpus //= 2
    return max(0, min(MAX_DEFAULT_WORKERS, cpus - 1))


def canonical_dtype(name: Any) -> str:
    """``'bfloat16'`` for any accepted spelling (``bf16``, ``torch.bfloat16``, a dtype)."""
    text = str(name).lower().removeprefix("torch.")
    if text not in DTYPE_ALIASES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(COMPUTE_DTYPES)}")
    return DTYPE_ALIASES[text]


def parse_dtype(dtype: Any) -> torch.dtype | None:
    """torch.dtype from a dtype or a name ('float32', 'bf16', 'torch.float16', ...)."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    return getattr(torch, canonical_dtype(dtype))


def dtype_name(dtype: Any) -> str:
    """The canonical name (``bfloat16``) of a dtype or of any accepted spelling."""
    return canonical_dtype(dtype)


def check_device(text: str, local_rank: int | None = None) -> str:
    """A usable torch device string, or a one-line ``ValueError`` (no GPU, unknown name).

    Under a data-parallel launcher a bare ``cuda`` becomes ``cuda:<local_rank>``.
    """
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {text!r}; expected cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {text!r} requested but CUDA is not available here")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {text!r}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {text!r} requested but MPS is not available here")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {text!r}; expected cpu, cuda, cuda:N or mps")
    return str(device)


@dataclass(frozen=True)
class RunSettings:
    """How images are read: checked when made, passed whole.

    ``cache_dir=None`` turns the embedding and text-bank caches off. ``dtype`` is a name
    (``float32``, ``bfloat16``, ``float16``); :attr:`torch_dtype` is the torch object.
    ``workers=0`` preprocesses in the calling process (the command line's default is
    :func:`default_workers`). ``compile`` runs the image tower's blocks through
    ``torch.compile`` (the first batches wait for the compiler). ``transfer``: how pixels go
    from the loader to the device: ``float32`` as the model's transform makes them, ``uint8``
    resized 8-bit pixels that the device maps to the very same float32 values (where the
    transform splits so exactly; see :mod:`siglip_dola.readout.pixels`), ``auto`` = uint8 on
    CUDA (a quarter of the bytes to pin and copy), float32 elsewhere.
    """

    batch_size: int = 64
    workers: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    cache_dir: Path | None = None
    progress: bool = True
    compile: bool = False
    transfer: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise TypeError(f"batch size must be an integer, got {self.batch_size!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int):
            raise TypeError(f"workers must be an integer, got {self.workers!r}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if not isinstance(self.compile, bool):
            raise TypeError(f"compile must be True or False, got {self.compile!r}")
        if self.transfer not in PIXEL_TRANSFERS:
            raise ValueError(f"transfer must be one of {PIXEL_TRANSFERS}, got {self.transfer!r}")
        dtype = canonical_dtype(self.dtype)
        if dtype not in COMPUTE_DTYPES:
            raise ValueError(f"dtype {dtype} is not a compute dtype: use one of {COMPUTE_DTYPES}")
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "device", str(self.device))
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", Path(self.cache_dir).expanduser())

    @classmethod
    def coerce(cls, value: RunSettings | Mapping[str, Any] | None) -> RunSettings:
        """The settings themselves, their plain-dict form, or the defaults for ``None``."""
        if value is None:
            return cls()
        if isinstance(value, RunSettings):
            return value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise TypeError(f"unknown run settings {unknown}; known: {sorted(known)}")
        return cls(**value)

    @property
    def torch_dtype(self) -> torch.dtype:
        return parse_dtype(self.dtype)

    def replace(self, **changes: Any) -> RunSettings:
        """A copy with ``changes`` applied (and checked)."""
        return replace(self, **changes)
