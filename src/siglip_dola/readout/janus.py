"""The SigLIP image tower of a Janus / Janus-Pro checkpoint folder, in either format.

DeepSeek's own folders store the understanding encoder under ``vision_model.vision_tower.*``
with the key names of timm's ``vit_large_patch16_siglip_384`` (Janus's ``siglip_vit.py`` is a
copy of timm's ViT), including the SigLIP pooling head ``attn_pool.*``. transformers' format
(``JanusForConditionalGeneration``, e.g. what ``siglip-dola janus-convert`` writes) stores
it under ``model.vision_model.*`` with other names and no pooling head; these are mapped back
to timm's names, and the head is read from ``vision_attn_pool.safetensors`` beside them
(where the converter keeps it) or from ``head_from``. Only the tower's tensors are read,
shard by shard through the index json, never the 7B language model. The tower is rebuilt as
a timm ViT shaped by its tensors and ``config.json`` and read out by :class:`TimmViTReadout`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from siglip_dola.checkpoints import (
    ATTN_POOL_FILE,
    ATTN_POOL_PREFIX,
    HF_VISION_PREFIX,
    INDEX_FILES,
    JANUS_VISION_PREFIX,
    checkpoint_shards,
    janus_format,
    load_state_dict_file,
    load_weights_strict,
    read_config,
    vision_tensors_from_hf,
    vision_tower_shape,
)
from siglip_dola.io import read_json
from siglip_dola.readout.pixels import Uint8Pixels, ramp_image
from siglip_dola.readout.timm_vit import TimmViTReadout

__all__ = [
    "DEFAULT_ARCHITECTURE",
    "JanusImageTransform",
    "build_janus_vision_tower",
    "load_janus_vision",
    "read_janus_vision_weights",
    "read_pooling_head",
    "tower_shape",
]

DEFAULT_ARCHITECTURE = "vit_large_patch16_siglip_384"
# Prefixes under which a timm ViT with a SigLIP head sits in the checkpoints --head-from takes.
HEAD_SOURCE_PREFIXES = ("", "visual.trunk.", "trunk.", JANUS_VISION_PREFIX)
# Files of a folder --head-from may name, looked for in this order.
HEAD_SOURCE_FILES = (
    ATTN_POOL_FILE,
    "open_clip_model.safetensors",
    "model.safetensors",
    "open_clip_pytorch_model.bin",
    "pytorch_model.bin",
)
HEAD_FLAG_HINT = (
    "supply one with head_from=<checkpoint> (command line: --head-from PATH), pointing to a "
    "timm SigLIP state dict (keys attn_pool.*, e.g. vit_large_patch16_siglip_384) or an "
    "open_clip SigLIP checkpoint (keys visual.trunk.attn_pool.*) of the same width"
)


# ----------------------------------------------------------------------------- reading


def read_janus_vision_weights(folder: Path | str, prefix: str = "") -> dict[str, torch.Tensor]:
    """The SigLIP tower's tensors under timm's names (``blocks.0.attn.qkv.weight``, ...).

    DeepSeek format: the ``vision_model.vision_tower.*`` tensors, prefix removed; ``prefix``
    narrows them to tower keys starting with it (``"attn_pool."``: the pooling head only):
    only the shards holding such keys are opened, and only those keys are read.
    transformers' format (``config.json`` model_type ``janus``): the ``model.vision_model.*``
    tensors mapped back to timm's names, plus the pooling head of ``vision_attn_pool.safetensors``
    where the folder has one.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"Janus checkpoint folder {folder} does not exist")
    if janus_format(folder) == "hf":
        weights = _read_hf_tower(folder)
        return {k: v for k, v in weights.items() if k.startswith(prefix)}
    weights = _read_deepseek_tower(folder, prefix)
    if weights:
        return weights
    if prefix:
        raise ValueError(f"{folder} holds no {JANUS_VISION_PREFIX}{prefix}* tensors")
    raise ValueError(
        f"{folder} holds no {JANUS_VISION_PREFIX}* tensors: not a Janus checkpoint (expected "
        f"DeepSeek's format, or transformers' with config.json model_type 'janus')"
    )


def _read_tensors(folder: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Tensors whose names start with ``prefix`` (removed), from the shards holding them."""

    def wanted(key: str) -> bool:
        return key.startswith(prefix)

    weights: dict[str, torch.Tensor] = {}
    for shard in checkpoint_shards(folder, wanted):
        weights.update(load_state_dict_file(shard, select=wanted))
    return {key[len(prefix) :]: value for key, value in weights.items()}


def _read_deepseek_tower(folder: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    weights = _read_tensors(folder, JANUS_VISION_PREFIX + prefix)
    return {prefix + key: value for key, value in weights.items()}


def _read_hf_tower(folder: Path) -> dict[str, torch.Tensor]:
    hf_weights = _read_tensors(folder, HF_VISION_PREFIX)
    if not hf_weights:
        raise ValueError(f"the HF-format Janus checkpoint {folder} holds no {HF_VISION_PREFIX}*")
    try:
        weights = vision_tensors_from_hf(hf_weights)
    except ValueError as err:
        raise ValueError(f"{folder}: {err}") from None
    head_file = folder / ATTN_POOL_FILE
    if head_file.is_file():
        weights.update(
            load_state_dict_file(head_file, select=lambda key: key.startswith(ATTN_POOL_PREFIX))
        )
    return weights


def read_pooling_head(source: Path | str) -> dict[str, torch.Tensor]:
    """``attn_pool.*`` tensors from a timm / open_clip / Janus checkpoint file or folder
    (a converted Janus folder: its ``vision_attn_pool.safetensors``)."""
    path = Path(source)
    if path.is_dir():
        found = [path / n for n in HEAD_SOURCE_FILES if (path / n).is_file()]
        if not found and any((path / n).is_file() for n in INDEX_FILES):
            # another DeepSeek-format Janus checkpoint: read its head only
            return _read_deepseek_tower(path, prefix=ATTN_POOL_PREFIX) or _no_head(path)
        if not found:
            return _no_head(path)
        path = found[0]
    if not path.is_file():
        raise ValueError(f"pooling-head checkpoint {path} does not exist")
    state = load_state_dict_file(path, select=lambda key: ATTN_POOL_PREFIX in key)
    for prefix in HEAD_SOURCE_PREFIXES:
        head = {
            k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix + ATTN_POOL_PREFIX)
        }
        if head:
            return head
    return _no_head(path)


def _no_head(path: Path) -> dict[str, torch.Tensor]:
    raise ValueError(
        f"{path} holds no SigLIP pooling head: expected keys "
        f"{', '.join(p + ATTN_POOL_PREFIX + '*' for p in HEAD_SOURCE_PREFIXES if p)} or "
        f"{ATTN_POOL_PREFIX}*"
    )


# ----------------------------------------------------------------------------- building


def tower_shape(
    weights: dict[str, torch.Tensor], config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """timm ViT arguments for the tower: depth, width, patch and image size from the tensors,
    heads (and image size) from the checkpoint's ``config.json`` where it says."""
    shape = vision_tower_shape({k: tuple(v.shape) for k, v in weights.items()}, config)
    kwargs: dict[str, Any] = {
        "embed_dim": shape.width,
        "depth": shape.depth,
        "patch_size": shape.patch_size,
        "img_size": shape.image_size,
    }
    if shape.heads is not None:
        kwargs["num_heads"] = shape.heads
    if shape.mlp_ratio is not None:
        kwargs["mlp_ratio"] = shape.mlp_ratio
    if shape.qk_norm:
        kwargs["qk_norm"] = True
    return kwargs


def build_janus_vision_tower(
    weights: dict[str, torch.Tensor],
    architecture: str = DEFAULT_ARCHITECTURE,
    source: str = "Janus checkpoint",
    config: dict[str, Any] | None = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """A timm ViT of ``architecture`` shaped by the tensors and ``config`` (the checkpoint's
    ``config.json``), loaded strictly from the tensors; ``timm_kwargs`` override the shape."""
    import timm

    kwargs = {**tower_shape(weights, config), **timm_kwargs}
    if "num_heads" not in kwargs:
        raise ValueError(
            f"{source}: cannot tell the attention heads of its vision tower (width "
            f"{kwargs['embed_dim']}): config.json names neither vision_config.params.heads nor "
            f"a known model_name; pass model_kwargs={{'num_heads': N}}"
        )
    model = timm.create_model(architecture, pretrained=False, num_classes=0, **kwargs)
    load_weights_strict(model, weights, source)
    return model.eval()


def load_janus_vision(
    folder: Path | str,
    head_from: Path | str | None = None,
    architecture: str = DEFAULT_ARCHITECTURE,
    name: str | None = None,
    **timm_kwargs: Any,
) -> TimmViTReadout:
    """Readout of a Janus checkpoint's SigLIP tower (with its own or a supplied head)."""
    folder = Path(folder)
    weights = read_janus_vision_weights(folder)
    if head_from is not None:
        weights = {k: v for k, v in weights.items() if not k.startswith(ATTN_POOL_PREFIX)}
        weights.update(read_pooling_head(head_from))
    elif not any(k.startswith(ATTN_POOL_PREFIX) for k in weights):
        if janus_format(folder) == "hf":
            where = (
                f"transformers' Janus has no place for it, and {ATTN_POOL_FILE}, where "
                f"`siglip-dola janus-convert` keeps it, is absent"
            )
        else:
            where = f"{JANUS_VISION_PREFIX}{ATTN_POOL_PREFIX}* is absent"
        raise ValueError(
            f"the Janus checkpoint {folder} has no SigLIP pooling head ({where}), and DoLa "
            f"reads every layer out through that head; {HEAD_FLAG_HINT}"
        )
    tower = build_janus_vision_tower(
        weights, architecture, source=str(folder), config=read_config(folder), **timm_kwargs
    )
    transform = JanusImageTransform.from_folder(folder, default_size=tower.patch_embed.img_size[0])
    return TimmViTReadout(tower, name=name or f"janus:{folder}", transform=transform)


# ----------------------------------------------------------------------------- preprocessing


class JanusImageTransform:
    """Janus's image processor: longest side to ``image_size`` (bicubic), pad to a square
    with the mean colour, scale to [0, 1], normalise (Janus: mean = std = 0.5)."""

    def __init__(
        self,
        image_size: int = 384,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        min_size: int = 14,
    ) -> None:
        self.image_size = int(image_size)
        self.min_size = int(min_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.background = tuple(int(m * 255) for m in mean)

    @classmethod
    def from_folder(cls, folder: Path, default_size: int = 384) -> JanusImageTransform:
        """Settings from the checkpoint's ``preprocessor_config.json`` where present."""
        config_path = folder / "preprocessor_config.json"
        config = read_json(config_path) if config_path.is_file() else {}
        size = config.get("size") if isinstance(config.get("size"), dict) else {}
        return cls(  # DeepSeek's processor says image_size, transformers' size.height
            image_size=config.get("image_size") or size.get("height") or default_size,
            mean=config.get("image_mean", (0.5, 0.5, 0.5)),
            std=config.get("image_std", (0.5, 0.5, 0.5)),
            min_size=config.get("min_size", 14),
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self._normalise(self.resize_and_pad(image))

    def resize_and_pad(self, image: Image.Image) -> torch.Tensor:
        """The 8-bit half: resized, padded to a square, uint8 [3, S, S]."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        width, height = image.size
        longest = max(width, height)
        size = [
            max(int(height / longest * self.image_size), self.min_size),
            max(int(width / longest * self.image_size), self.min_size),
        ]
        image = F.resize(image.convert("RGB"), size, InterpolationMode.BICUBIC, antialias=True)
        return F.pil_to_tensor(_pad_to_square(image, self.background))

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels.float().div_(255.0) - self.mean) / self.std

    def uint8_split(self) -> Uint8Pixels | None:
        """:meth:`resize_and_pad` in the workers, the normalisation as a device lookup table."""
        from torchvision.transforms import functional as F

        ramp = self._normalise(F.pil_to_tensor(ramp_image()))
        return Uint8Pixels.verified(self.resize_and_pad, ramp, self)


def _pad_to_square(image: Image.Image, colour: tuple[int, ...]) -> Image.Image:
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), colour)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas
