"""Seed-compatible entry point over a Janus/timm-style ``VisionTransformer``.

The user's original patch to Janus named this function; it keeps that signature and the
seeds' semantics: raw dot products ``<z, t_c> / tau`` (no L2 normalisation, as
``build_probs_from_rep``), dynamic contrast-layer choice per image, APC with ``alpha``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from siglip_dola.dola import class_scores
from siglip_dola.readout._common import parameter_device_dtype
from siglip_dola.readout.timm_vit import TimmViTReadout
from siglip_dola.variants import Variant

__all__ = ["rerank_with_dola_siglip"]


def rerank_with_dola_siglip(
    vit: nn.Module,
    images: torch.Tensor,
    text_bank: torch.Tensor | np.ndarray,
    alpha: float = 0.1,
    tau: float = 1.0,
    candidate_layers: Sequence[int] = (18, 20, 22),
) -> tuple[torch.Tensor, torch.Tensor]:
    """DoLa re-scoring of ``images`` [B, 3, H, W] (preprocessed) against ``text_bank`` [C, D].

    ``vit`` needs ``get_intermediate_layers(x, n, norm=...)`` and ``forward_head(x,
    pre_logits=True)`` (timm or Janus ``VisionTransformer``); its backbone runs once.
    Returns ``(p_hat [B, C], m_idx [B])`` with ``m_idx`` an index into ``candidate_layers``.
    """
    readout = TimmViTReadout(vit, name=type(vit).__name__)
    variant = Variant.dynamic(tuple(candidate_layers), alpha).validated(readout.depth)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"images must be a [B, 3, H, W] tensor, got {shape}")
    device, _ = parameter_device_dtype(vit)
    embeddings = readout.forward_layers({"pixel_values": images}, variant.contrast_layers)
    bank = torch.as_tensor(text_bank).to(device)
    scores = class_scores(embeddings.embeddings, bank, tau=tau, normalize=False)
    result = variant.score(scores, embeddings.layers)
    # chosen_layers holds layer numbers; the seeds return positions in candidate_layers.
    numbers = torch.tensor(variant.layers, device=result.chosen_layers.device)
    m_idx = (result.chosen_layers.unsqueeze(-1) == numbers).int().argmax(-1)
    return result.probs, m_idx
