"""open_clip SigLIP / SigLIP2 models: ``model.visual`` is a ``TimmModel``.

``visual(x) = visual.head(trunk(x))`` where ``trunk`` is a timm ViT and ``visual.head`` an
(often empty) projection. The readout is therefore the timm readout of the trunk with the
trunk's full head (``pre_logits=False``: the trunk classifier is the projection when the
config asks for one) followed by ``visual.head``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn

from siglip_dola.readout._common import parameter_device_dtype, weights_fingerprint
from siglip_dola.readout.base import Batch
from siglip_dola.readout.timm_vit import TimmViTReadout

__all__ = ["OpenClipReadout", "OpenClipText"]


class OpenClipReadout(TimmViTReadout):
    """Per-layer readout of an open_clip model whose image tower wraps a timm ViT."""

    def __init__(
        self,
        clip_model: nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor] | None = None,
        name: str = "open_clip",
    ) -> None:
        visual = getattr(clip_model, "visual", None)
        trunk = getattr(visual, "trunk", None)
        if trunk is None:
            raise ValueError(
                f"{name}: the image tower ({type(visual).__name__}) is not a timm trunk; only "
                f"open_clip SigLIP/SigLIP2 models (vision_cfg.timm_model_name) are supported"
            )
        super().__init__(
            trunk, name=name, transform=preprocess, pre_logits=False, projection=visual.head
        )
        self.clip = clip_model.eval()

    @torch.no_grad()
    def image_embedding(self, batch: Batch) -> torch.Tensor:
        """open_clip's own ``encode_image`` (unnormalised)."""
        return self.clip.encode_image(self._pixels(batch))

    def to(self, device: Any = None, dtype: Any = None) -> OpenClipReadout:
        self.clip.visual.to(device=device, dtype=dtype)
        self._fingerprint = None
        return self


class OpenClipText:
    """The text tower of an open_clip model with open_clip's own tokenizer for it."""

    def __init__(
        self, clip_model: nn.Module, tokenizer: Callable[..., torch.Tensor], name: str
    ) -> None:
        self.clip = clip_model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.embed_dim = _text_output_dim(clip_model)
        self._fingerprint: str | None = None

    @property
    def text_module(self) -> nn.Module:
        text = getattr(self.clip, "text", None)
        return self.clip if text is None else text

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.text_module, extra=self.name)
        return self._fingerprint

    def to(self, device: Any = None, dtype: Any = None) -> OpenClipText:
        """Move/cast the text tower; returns self (the fingerprint hashes the dtype)."""
        self.text_module.to(device=device, dtype=dtype)
        self._fingerprint = None
        return self

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings [C, D] (unnormalised); the tokenizer applies the config's cleaning
        (SigLIP: canonicalise = lower case, no punctuation) and context length."""
        if isinstance(texts, str) or not len(texts):
            raise ValueError("encode_text expects a non-empty list of strings")
        device, _ = parameter_device_dtype(self.text_module)
        tokens = self.tokenizer(list(texts)).to(device)
        return self.clip.encode_text(tokens)


def _text_output_dim(clip_model: nn.Module) -> int:
    text = getattr(clip_model, "text", None)
    source = text if text is not None else clip_model
    projection = getattr(source, "text_projection", None)
    if isinstance(projection, nn.Linear):
        return projection.out_features
    if isinstance(projection, torch.Tensor):
        return int(projection.shape[-1])
    # Without a projection the pooled token keeps the transformer's width.
    width = getattr(source, "width", None)
    if isinstance(width, int):
        return width
    raise ValueError(f"cannot tell the text embedding size of {type(clip_model).__name__}")
