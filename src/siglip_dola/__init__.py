"""siglip-dola: DoLa (Decoding by Contrasting Layers) for SigLIP vision transformers.

The names below load on first use, so that ``import siglip_dola`` (and the command line's
``--help``) do not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "DolaResult": "siglip_dola.dola",
    "apply_dola": "siglip_dola.dola",
    "build_probs_from_rep": "siglip_dola.dola",
    "contrast_and_mask": "siglip_dola.dola",
    "dola_from_distributions": "siglip_dola.dola",
    "jsd": "siglip_dola.dola",
    "select_early_exit": "siglip_dola.dola",
    "rerank_with_dola_siglip": "siglip_dola.compat",
    "Variant": "siglip_dola.variants",
    "RunSettings": "siglip_dola.settings",
    "ZeroShotClassifier": "siglip_dola.zeroshot",
    "load_model": "siglip_dola.models",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'siglip_dola' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
