"""Checkpoint files and the Janus checkpoint layout: the one module that knows them.

* Weight files: safetensors first, else ``torch.load(weights_only=True)``, so loading never
  runs pickled code; shards found through their index json; strict loading whose error names
  the missing and unexpected keys.
* Janus folders come in two formats, told apart by ``config.json``'s ``model_type``:
  DeepSeek's own (``multi_modality``; the SigLIP tower under ``vision_model.vision_tower.*``
  with timm's key names, pooling head ``attn_pool.*`` included) and transformers'
  (``janus``; the tower under ``model.vision_model.*`` with other names and no pooling
  head, which ``siglip-dola janus-convert`` keeps in ``vision_attn_pool.safetensors``).
* The SigLIP tower's shape (width, depth, heads, patch and image size) from its tensors and
  ``config.json``, and its tensor names in both formats (the converter maps one way, the
  ``janus:`` readout the other).

A low floor: torch and safetensors only (transformers and timm are never imported), nothing
from ``readout``, ``generate`` or ``models``.
"""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from siglip_dola.io import read_json

__all__ = [
    "ATTN_POOL_FILE",
    "ATTN_POOL_PREFIX",
    "DEEPSEEK_MODEL_TYPE",
    "HF_JANUS_MODEL_TYPE",
    "HF_VISION_PREFIX",
    "HF_WEIGHT_FILES",
    "INDEX_FILES",
    "JANUS_VISION_PREFIX",
    "MARKER_FILE",
    "SAFE_WEIGHT_SUFFIXES",
    "SIGLIP_HEADS",
    "SINGLE_FILES",
    "TOKENIZER_FILES",
    "TOKENIZER_FILE_PATTERN",
    "VisionTowerShape",
    "check_hf_janus_files",
    "checkpoint_shards",
    "file_tensor_shapes",
    "janus_format",
    "janus_format_of_config",
    "load_state_dict_file",
    "load_weights_strict",
    "read_config",
    "unwrap_state_dict",
    "vision_name_to_hf",
    "vision_tensors_from_hf",
    "vision_tensors_to_hf",
    "vision_tower_shape",
]

SAFE_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
# Looked for in this order: an index json (safetensors first), else a single weight file.
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
HF_WEIGHT_FILES = (*SINGLE_FILES, *INDEX_FILES)  # one of them marks a folder with weights
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
# What a conversion copies beside the weights: tokenizer and processor files.
TOKENIZER_FILE_PATTERN = re.compile(
    r"^(tokenizer.*|special_tokens_map\.json|added_tokens\.json|processor_config\.json|"
    r"preprocessor_config\.json|chat_template.*|vocab\..*|merges\.txt)$"
)

DEEPSEEK_MODEL_TYPE = "multi_modality"  # config.json model_type of DeepSeek-format folders
HF_JANUS_MODEL_TYPE = "janus"  # ... and of transformers' JanusForConditionalGeneration
JANUS_VISION_PREFIX = "vision_model.vision_tower."  # DeepSeek: the SigLIP tower, timm names
HF_VISION_PREFIX = "model.vision_model."  # transformers: the same tower, its own names
ATTN_POOL_PREFIX = "attn_pool."  # SigLIP's pooling head (MAP) inside the tower
ATTN_POOL_FILE = "vision_attn_pool.safetensors"  # the head, kept beside an HF-format copy
MARKER_FILE = "janus_conversion.json"  # written last by a finished conversion
# Attention heads of DeepSeek's named SigLIP towers (not stored in the tensors).
SIGLIP_HEADS = {
    "siglip_large_patch16_384": 16,
    "siglip_so400m_patch14_384": 16,
    "siglip_so400m_patch14_224": 16,
}
SIGLIP_HEAD_WIDTH = 64  # SigLIP towers use 64-wide attention heads


# ----------------------------------------------------------------------------- weight files


def read_config(folder: Path | str) -> dict[str, Any]:
    """A folder's ``config.json`` as a dict; ``{}`` when there is none."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return {}
    config = read_json(path)
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a JSON object")
    return config


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


def file_tensor_shapes(path: Path | str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in one weight file (safetensors: header only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    return {k: tuple(v.shape) for k, v in load_state_dict_file(path).items()}


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


# ----------------------------------------------------------------------------- Janus folders


def janus_format_of_config(config: Mapping[str, Any]) -> str | None:
    """``'deepseek'`` or ``'hf'`` from a ``config.json``'s ``model_type``; ``None`` otherwise."""
    model_type = config.get("model_type")
    if model_type == DEEPSEEK_MODEL_TYPE:
        return "deepseek"
    if model_type == HF_JANUS_MODEL_TYPE:
        return "hf"
    return None


def janus_format(folder: Path | str) -> str | None:
    """The Janus format of a folder: ``'deepseek'``, ``'hf'`` or ``None`` (not Janus).

    ``config.json``'s ``model_type`` decides; without one, an index json that maps
    ``vision_model.vision_tower.*`` keys marks a DeepSeek checkpoint (a bare single weight
    file says nothing without being opened).
    """
    folder = Path(folder)
    found = janus_format_of_config(read_config(folder))
    if found is not None:
        return found
    if any((folder / name).is_file() for name in INDEX_FILES) and checkpoint_shards(
        folder, lambda key: key.startswith(JANUS_VISION_PREFIX)
    ):
        return "deepseek"
    return None


def check_hf_janus_files(folder: Path) -> None:
    """An HF-format folder needs weights and a tokenizer (named before a long load fails)."""
    if not any((folder / name).is_file() for name in HF_WEIGHT_FILES):
        raise ValueError(
            f"{folder} holds no weights (expected one of {', '.join(HF_WEIGHT_FILES)})"
        )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(f"{folder} holds no tokenizer (expected {' or '.join(TOKENIZER_FILES)})")


# ----------------------------------------------------------------------------- the SigLIP tower


@dataclass(frozen=True)
class VisionTowerShape:
    """The SigLIP tower's sizes. ``heads`` is ``None`` where neither ``config.json`` nor the
    width tells (the tensors never do)."""

    width: int
    depth: int
    heads: int | None
    patch_size: int
    image_size: int
    mlp_ratio: float | None
    qk_norm: bool


def vision_tower_shape(
    shapes: Mapping[str, Sequence[int]], config: Mapping[str, Any] | None = None
) -> VisionTowerShape:
    """The tower's shape from its tensor shapes (timm names, prefix removed) and the
    checkpoint's ``config.json`` (either format), which alone knows the head count.

    Heads: DeepSeek's ``vision_config.params.heads``, else the head count of the named
    tower (``params.model_name``, :data:`SIGLIP_HEADS`); transformers'
    ``vision_config.num_attention_heads``; else width / 64 (SigLIP's head width).
    Image size: the config's where it says, else the position-embedding grid.
    """
    try:
        patch = shapes["patch_embed.proj.weight"]
        positions = shapes["pos_embed"][-2]
    except KeyError as err:
        raise ValueError(f"the Janus vision tower lacks {err.args[0]!r}") from None
    width, patch_size = int(patch[0]), int(patch[-1])
    blocks = {int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k))}
    fc1 = shapes.get("blocks.0.mlp.fc1.weight")
    config = config or {}
    if janus_format_of_config(config) == "hf":
        vision = dict(config.get("vision_config") or {})
        heads = vision.get("num_attention_heads")
    else:
        vision = dict((config.get("vision_config") or {}).get("params") or {})
        heads = vision.get("heads") or SIGLIP_HEADS.get(str(vision.get("model_name")))
    if not heads and width % SIGLIP_HEAD_WIDTH == 0:
        heads = width // SIGLIP_HEAD_WIDTH
    prefix = 1 if "cls_token" in shapes else 0
    grid_size = math.isqrt(int(positions) - prefix) * patch_size
    return VisionTowerShape(
        width=width,
        depth=max(blocks) + 1 if blocks else 0,
        heads=int(heads) if heads else None,
        patch_size=patch_size,
        image_size=int(vision.get("image_size") or grid_size),
        mlp_ratio=int(fc1[0]) / width if fc1 is not None else None,
        qk_norm=any(".attn.q_norm." in k for k in shapes),
    )


# The tower's tensor names: timm's (DeepSeek, under vision_model.vision_tower.) and
# transformers' (under model.vision_model.). {i}: block, {n}: 1 or 2, {qk}: q or k,
# {leaf}: weight or bias; {part}: q, k or v of timm's fused qkv (three HF tensors).
_VISION_NAMES = (
    ("patch_embed.proj.{leaf}", "embeddings.patch_embedding.{leaf}"),
    ("pos_embed", "embeddings.position_embedding.weight"),  # [1, N, D] <-> [N, D]
    ("blocks.{i}.norm{n}.{leaf}", "encoder.layers.{i}.layer_norm{n}.{leaf}"),
    ("blocks.{i}.attn.qkv.{leaf}", "encoder.layers.{i}.self_attn.{part}_proj.{leaf}"),
    ("blocks.{i}.attn.proj.{leaf}", "encoder.layers.{i}.self_attn.projection_layer.{leaf}"),
    ("blocks.{i}.attn.{qk}_norm.{leaf}", "encoder.layers.{i}.self_attn.{qk}_norm.{leaf}"),
    ("blocks.{i}.mlp.fc{n}.{leaf}", "encoder.layers.{i}.mlp.fc{n}.{leaf}"),
    ("norm.{leaf}", "post_layernorm.{leaf}"),
)
_FIELDS = {"i": r"\d+", "n": "[12]", "qk": "[qk]", "part": "[qkv]", "leaf": r"[^.]+"}
QKV_PARTS = "qkv"


def _name_pattern(template: str) -> re.Pattern[str]:
    pieces = re.split(r"\{(\w+)\}", template)  # literal, field, literal, field, ...
    regex = "".join(
        re.escape(piece) if i % 2 == 0 else f"(?P<{piece}>{_FIELDS[piece]})"
        for i, piece in enumerate(pieces)
    )
    return re.compile(regex)


_TO_HF = [(_name_pattern(timm), hf) for timm, hf in _VISION_NAMES]
_FROM_HF = [(_name_pattern(hf), timm) for timm, hf in _VISION_NAMES]


def vision_name_to_hf(name: str) -> str | None:
    """transformers' name (under ``model.vision_model.``) of a timm-named tower tensor;
    the fused ``attn.qkv`` gives a name with ``{q,k,v}_proj``. ``None``: not a tower name."""
    for pattern, template in _TO_HF:
        match = pattern.fullmatch(name)
        if match:
            return template.format(part="{q,k,v}", **match.groupdict())
    return None


def vision_tensors_to_hf(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """transformers' tensors for one timm-named tower tensor: renamed, the fused ``qkv``
    split in three along dim 0, ``pos_embed`` [1, N, D] squeezed to [N, D]."""
    target = vision_name_to_hf(name)
    if target is None:
        raise ValueError(f"{name!r} is not a tensor of the SigLIP vision tower")
    if "{q,k,v}" in target:
        if tensor.shape[0] % 3:
            raise ValueError(f"{name} has {tensor.shape[0]} rows, not a multiple of 3")
        parts = tensor.chunk(3, dim=0)
        return {target.replace("{q,k,v}", p): t for p, t in zip(QKV_PARTS, parts, strict=True)}
    if name == "pos_embed":
        if tensor.ndim != 3 or tensor.shape[0] != 1:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected [1, N, D]")
        return {target: tensor[0]}
    return {target: tensor}


def vision_tensors_from_hf(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`vision_tensors_to_hf` for a whole tower: transformers' tensors
    (names under ``model.vision_model.``, prefix removed) -> timm's, ``q/k/v_proj`` fused
    into ``qkv`` and the position embedding given back its batch axis."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for name, tensor in weights.items():
        for pattern, template in _FROM_HF:
            match = pattern.fullmatch(name)
            if match:
                fields = match.groupdict()
                part = fields.pop("part", None)
                target = template.format(**fields)
                if part is not None:
                    fused.setdefault(target, {})[part] = tensor
                elif target == "pos_embed":
                    out[target] = tensor.unsqueeze(0)
                else:
                    out[target] = tensor
                break
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(
            f"tensors {_preview(sorted(unknown))} are not part of transformers' Janus vision tower"
        )
    for target, parts in fused.items():
        missing = [p for p in QKV_PARTS if p not in parts]
        if missing:
            raise ValueError(f"the vision tower lacks the {'/'.join(missing)} part of {target}")
        out[target] = torch.cat([parts[p] for p in QKV_PARTS], dim=0)
    return out
