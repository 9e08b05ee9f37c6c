"""The SigLIP image tower of a DeepSeek Janus / Janus-Pro checkpoint folder.

Janus stores its understanding encoder under ``vision_model.vision_tower.*`` with the key
names of timm's ``vit_large_patch16_siglip_384`` (Janus's ``siglip_vit.py`` is a copy of
timm's ViT), including the SigLIP pooling head ``attn_pool.*``. Only those tensors are
read, shard by shard through the index json, never the 7B language model. The tower is
rebuilt as a timm ViT and read out by :class:`TimmViTReadout`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from siglip_dola.readout._common import (
    load_state_dict_file,
    load_weights_strict,
    read_json,
)
from siglip_dola.readout.timm_vit import TimmViTReadout

__all__ = [
    "DEEPSEEK_MODEL_TYPE",
    "DEFAULT_ARCHITECTURE",
    "JANUS_VISION_PREFIX",
    "JanusImageTransform",
    "build_janus_vision_tower",
    "checkpoint_shards",
    "load_janus_vision",
    "read_janus_vision_weights",
    "read_pooling_head",
]

JANUS_VISION_PREFIX = "vision_model.vision_tower."
DEEPSEEK_MODEL_TYPE = "multi_modality"  # config.json model_type of DeepSeek-format checkpoints
DEFAULT_ARCHITECTURE = "vit_large_patch16_siglip_384"
HEAD_PREFIX = "attn_pool."
# Looked for in this order: an index json (safetensors first), else a single weight file.
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
# Prefixes under which a timm ViT with a SigLIP head sits in the checkpoints --head-from takes.
HEAD_SOURCE_PREFIXES = ("", "visual.trunk.", "trunk.", JANUS_VISION_PREFIX)
HEAD_FLAG_HINT = (
    "supply one with head_from=<checkpoint> (command line: --head-from PATH), pointing to a "
    "timm SigLIP state dict (keys attn_pool.*, e.g. vit_large_patch16_siglip_384) or an "
    "open_clip SigLIP checkpoint (keys visual.trunk.attn_pool.*) of the same width"
)


# ----------------------------------------------------------------------------- reading


def read_janus_vision_weights(folder: Path | str, prefix: str = "") -> dict[str, torch.Tensor]:
    """The ``vision_model.vision_tower.*`` tensors of a Janus checkpoint, prefix removed.

    ``prefix`` narrows them to tower keys starting with it (``"attn_pool."``: the pooling
    head only): only the shards holding such keys are opened, and only those keys are read.
    """
    weights = _read_janus_tower(folder, prefix)
    if weights:
        return weights
    if prefix:
        raise ValueError(f"{folder} holds no {JANUS_VISION_PREFIX}{prefix}* tensors")
    raise ValueError(
        f"{folder} holds no {JANUS_VISION_PREFIX}* tensors: not a DeepSeek-format Janus "
        f"checkpoint (HF-format Janus models carry no SigLIP pooling head)"
    )


def _read_janus_tower(folder: Path | str, prefix: str = "") -> dict[str, torch.Tensor]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"Janus checkpoint folder {folder} does not exist")
    full_prefix = JANUS_VISION_PREFIX + prefix

    def wanted(key: str) -> bool:
        return key.startswith(full_prefix)

    weights: dict[str, torch.Tensor] = {}
    for shard in checkpoint_shards(folder, wanted):
        weights.update(load_state_dict_file(shard, select=wanted))
    return {key[len(JANUS_VISION_PREFIX) :]: value for key, value in weights.items()}


def checkpoint_shards(
    folder: Path | str, key_filter: Callable[[str], bool] | None = None
) -> list[Path]:
    """The weight files of a checkpoint folder to read for the keys ``key_filter`` accepts.

    With an index json (``model.safetensors.index.json``, else
    ``pytorch_model.bin.index.json``): the distinct shards its ``weight_map`` names for the
    accepted keys (all keys when ``key_filter`` is None), sorted by name - possibly none; a
    listed shard missing from the folder is an error. Without an index: the single file
    ``model.safetensors``, else ``pytorch_model.bin``, whatever it holds (the caller selects
    keys while reading it). No weight files at all is an error. Raises ValueError.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"checkpoint folder {folder} does not exist")
    for index_name in INDEX_FILES:
        index = folder / index_name
        if index.is_file():
            content = read_json(index)
            weight_map = content.get("weight_map") if isinstance(content, dict) else None
            if not isinstance(weight_map, dict) or not all(
                isinstance(f, str) for f in weight_map.values()
            ):
                raise ValueError(f"{index} has no 'weight_map' object of key -> shard file name")
            names = sorted(
                {f for k, f in weight_map.items() if key_filter is None or key_filter(k)}
            )
            missing = [n for n in names if not (folder / n).is_file()]
            if missing:
                raise ValueError(f"{index} names shards that are not in {folder}: {missing}")
            return [folder / n for n in names]
    for single in SINGLE_FILES:
        if (folder / single).is_file():
            return [folder / single]
    raise ValueError(
        f"no weights in {folder}: expected one of {list(INDEX_FILES)} with its shards, or one "
        f"of {list(SINGLE_FILES)}"
    )


def read_pooling_head(source: Path | str) -> dict[str, torch.Tensor]:
    """``attn_pool.*`` tensors from a timm / open_clip / Janus checkpoint file or folder."""
    path = Path(source)
    if path.is_dir():
        candidates = [
            path / n
            for n in (
                "open_clip_model.safetensors",
                "model.safetensors",
                "open_clip_pytorch_model.bin",
                "pytorch_model.bin",
            )
        ]
        found = [c for c in candidates if c.is_file()]
        if not found and _has_index(path):  # another Janus checkpoint: read its head only
            return _read_janus_tower(path, prefix=HEAD_PREFIX) or _no_head(path)
        if not found:
            return _no_head(path)
        path = found[0]
    if not path.is_file():
        raise ValueError(f"pooling-head checkpoint {path} does not exist")
    state = load_state_dict_file(path, select=lambda key: HEAD_PREFIX in key)
    for prefix in HEAD_SOURCE_PREFIXES:
        head = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix + HEAD_PREFIX)}
        if head:
            return head
    return _no_head(path)


def _has_index(folder: Path) -> bool:
    return any((folder / n).is_file() for n in INDEX_FILES)


def _no_head(path: Path) -> dict[str, torch.Tensor]:
    raise ValueError(
        f"{path} holds no SigLIP pooling head: expected keys "
        f"{', '.join(p + HEAD_PREFIX + '*' for p in HEAD_SOURCE_PREFIXES if p)} or {HEAD_PREFIX}*"
    )


# ----------------------------------------------------------------------------- building


def tower_shape(weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    """timm ViT arguments implied by the tensors (depth, width, patch and image size)."""
    try:
        patch = weights["patch_embed.proj.weight"]
        positions = weights["pos_embed"].shape[1]
    except KeyError as err:
        raise ValueError(f"the Janus vision tower lacks {err.args[0]!r}") from None
    blocks = {int(m.group(1)) for k in weights if (m := re.match(r"blocks\.(\d+)\.", k))}
    width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    prefix = 1 if "cls_token" in weights else 0
    grid = math.isqrt(positions - prefix)
    shape: dict[str, Any] = {
        "embed_dim": width,
        "depth": max(blocks) + 1 if blocks else 0,
        "patch_size": patch_size,
        "img_size": grid * patch_size,
    }
    fc1 = weights.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None:
        shape["mlp_ratio"] = fc1.shape[0] / width
    return shape


def build_janus_vision_tower(
    weights: dict[str, torch.Tensor],
    architecture: str = DEFAULT_ARCHITECTURE,
    source: str = "Janus checkpoint",
    **timm_kwargs: Any,
) -> nn.Module:
    """A timm ViT of ``architecture`` shaped by the tensors, loaded strictly from them."""
    import timm

    kwargs = {**tower_shape(weights), **timm_kwargs}
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
        weights = {k: v for k, v in weights.items() if not k.startswith(HEAD_PREFIX)}
        weights.update(read_pooling_head(head_from))
    elif not any(k.startswith(HEAD_PREFIX) for k in weights):
        raise ValueError(
            f"the Janus checkpoint {folder} has no SigLIP pooling head "
            f"({JANUS_VISION_PREFIX}{HEAD_PREFIX}* is absent), and DoLa reads every layer out "
            f"through that head; {HEAD_FLAG_HINT}"
        )
    tower = build_janus_vision_tower(weights, architecture, source=str(folder), **timm_kwargs)
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
        return cls(
            image_size=config.get("image_size", default_size),
            mean=config.get("image_mean", (0.5, 0.5, 0.5)),
            std=config.get("image_std", (0.5, 0.5, 0.5)),
            min_size=config.get("min_size", 14),
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        width, height = image.size
        longest = max(width, height)
        size = [
            max(int(height / longest * self.image_size), self.min_size),
            max(int(width / longest * self.image_size), self.min_size),
        ]
        image = F.resize(image.convert("RGB"), size, InterpolationMode.BICUBIC, antialias=True)
        image = _pad_to_square(image, self.background)
        pixels = F.pil_to_tensor(image).float().div_(255.0)
        return (pixels - self.mean) / self.std


def _pad_to_square(image: Image.Image, colour: tuple[int, ...]) -> Image.Image:
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), colour)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas
