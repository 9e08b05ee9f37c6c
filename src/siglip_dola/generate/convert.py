"""DeepSeek-format Janus / Janus-Pro checkpoints -> transformers (HF) format.

DeepSeek's folders (``config.json`` with ``model_type`` ``multi_modality``, weights in
``pytorch_model*.bin`` or ``*.safetensors`` shards with an index json) hold the weights of
their ``MultiModalityCausalLM``. transformers' ``JanusForConditionalGeneration`` holds the
same tensors under other names. The conversion reads one shard at a time and writes one
safetensors shard per input shard, so memory stays at about one shard.

Key mapping (DeepSeek -> HF), checked against DeepSeek's own classes. Abbreviations:
``VT.`` = ``vision_model.vision_tower.``, ``VM.`` = ``model.vision_model.``,
``VL.`` = ``model.vision_model.encoder.layers.i.``, ``VQ.`` = ``model.vqmodel.``::

    language_model.model.*                  -> model.language_model.*
    language_model.lm_head.*                -> lm_head.*  (not tied to the embeddings)
    VT.patch_embed.proj.*                   -> VM.embeddings.patch_embedding.*
    VT.pos_embed [1, N, D]                  -> VM.embeddings.position_embedding.weight [N, D]
    VT.blocks.i.norm1 / norm2.*             -> VL.layer_norm1 / layer_norm2.*
    VT.blocks.i.attn.qkv.* (fused)          -> VL.self_attn.q_proj / k_proj / v_proj.*
                                               (split in three along dim 0)
    VT.blocks.i.attn.proj.*                 -> VL.self_attn.projection_layer.*
    VT.blocks.i.mlp.fc1 / fc2.*             -> VL.mlp.fc1 / fc2.*
    VT.norm.*                               -> VM.post_layernorm.*
    VT.attn_pool.*                          -> dropped; kept in vision_attn_pool.safetensors
                                               (SigLIP's pooling head, for DoLa readout)
    aligner.layers.0.*                      -> model.aligner.fc1.*
    aligner.layers.{2j}.*                   -> model.aligner.hidden_layers.{j-1}.*
    gen_aligner.layers.0.*                  -> model.generation_aligner.fc1.*
    gen_aligner.layers.{2j}.*               -> model.generation_aligner.hidden_layers.{j-1}.*
    gen_head.output_mlp_projector.*         -> model.generation_head.proj_out.*
    gen_head.vision_head.*                  -> model.generation_head.vision_head.*
    gen_embed.*                             -> model.generation_embeddings.*
    gen_vision_model.encoder.conv_blocks.i  -> VQ.encoder.down.i  (res.j -> block.j;
                                               attn.j, downsample keep their names)
    gen_vision_model.decoder.conv_blocks.i  -> VQ.decoder.up.i  (res.j -> block.j;
                                               attn.j, upsample keep their names)
    gen_vision_model.*.mid.0 / 1 / 2        -> VQ.*.mid.block_1 / attn_1 / block_2
    gen_vision_model.* (conv_in, norm_out,  -> VQ.*
      conv_out, quant_conv, post_quant_conv, quantize.embedding)
    gen_vision_model.quantize.codebook_used -> dropped (a training statistic)
    *.rotary_emb.inv_freq                   -> dropped (recomputed from the config)

The vision tower's names (the ``VT.`` rows) and shape live in :mod:`siglip_dola.checkpoints`,
which the ``janus:`` readout maps back with. The HF config is read off the DeepSeek
``config.json`` and the tensor shapes (DeepSeek's VQ model and vision tower are fixed by class
name, so their sizes are only in the tensors).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from siglip_dola.checkpoints import (
    ATTN_POOL_FILE,
    ATTN_POOL_PREFIX,
    DEEPSEEK_MODEL_TYPE,
    HF_VISION_PREFIX,
    MARKER_FILE,
    TOKENIZER_FILE_PATTERN,
    checkpoint_shards,
    file_tensor_shapes,
    load_state_dict_file,
    vision_name_to_hf,
    vision_tensors_to_hf,
    vision_tower_shape,
)
from siglip_dola.checkpoints import JANUS_VISION_PREFIX as VISION
from siglip_dola.generate.sampling import IMAGE_START_TAG

__all__ = [
    "DEEPSEEK_PAD_TAG",
    "ConversionError",
    "cfg_pad_token_id",
    "convert_checkpoint",
    "convert_tensors",
    "dtype_argument",
    "hf_config_from_deepseek",
    "known_token_id",
    "map_key",
    "require_janus_transformers",
]

DEEPSEEK_PAD_TAG = "<｜▁pad▁｜>"  # what DeepSeek pads the unconditional CFG rows with
IMAGE_PLACEHOLDER_TAG = "<image_placeholder>"


class ConversionError(ValueError):
    """The source is not a convertible DeepSeek-format Janus checkpoint."""


# ----------------------------------------------------------------------------- key mapping

_RULES: list[tuple[re.Pattern[str], str | None]] = [
    (re.compile(r"^language_model\.model\.(.+)$"), r"model.language_model.\1"),
    (re.compile(r"^language_model\.lm_head\.(.+)$"), r"lm_head.\1"),
    (re.compile(r"^.*rotary_emb\.inv_freq$"), None),  # recomputed from the config
    (re.compile(rf"^{re.escape(VISION)}{re.escape(ATTN_POOL_PREFIX)}.+$"), None),
    (re.compile(r"^aligner\.layers\.0\.(.+)$"), r"model.aligner.fc1.\1"),
    (re.compile(r"^aligner\.layers\.(\d+)\.(.+)$"), r"model.aligner.hidden_layers.{half-1:\1}.\2"),
    (re.compile(r"^gen_aligner\.layers\.0\.(.+)$"), r"model.generation_aligner.fc1.\1"),
    (
        re.compile(r"^gen_aligner\.layers\.(\d+)\.(.+)$"),
        r"model.generation_aligner.hidden_layers.{half-1:\1}.\2",
    ),
    (re.compile(r"^gen_head\.output_mlp_projector\.(.+)$"), r"model.generation_head.proj_out.\1"),
    (re.compile(r"^gen_head\.vision_head\.(.+)$"), r"model.generation_head.vision_head.\1"),
    (re.compile(r"^gen_embed\.(.+)$"), r"model.generation_embeddings.\1"),
    (re.compile(r"^gen_vision_model\.quantize\.codebook_used$"), None),
    (
        re.compile(r"^gen_vision_model\.(encoder|decoder)\.conv_blocks\.(\d+)\.res\.(.+)$"),
        r"model.vqmodel.\1.{level:\1}.\2.block.\3",
    ),
    (
        re.compile(
            r"^gen_vision_model\.(encoder|decoder)\.conv_blocks\.(\d+)\."
            r"(attn|downsample|upsample)\.(.+)$"
        ),
        r"model.vqmodel.\1.{level:\1}.\2.\3.\4",
    ),
    (
        re.compile(r"^gen_vision_model\.(encoder|decoder)\.mid\.([012])\.(.+)$"),
        r"model.vqmodel.\1.mid.{mid:\2}.\3",
    ),
    (re.compile(r"^gen_vision_model\.(.+)$"), r"model.vqmodel.\1"),
]
# Words that the templates' {kind:group} placeholders stand for.
_WORDS = {
    "mid": {"0": "block_1", "1": "attn_1", "2": "block_2"},
    "level": {"encoder": "down", "decoder": "up"},
}


def map_key(key: str) -> str | None:
    """The HF name of a DeepSeek key; ``None`` for keys HF has no place for.

    The fused vision ``qkv`` maps to a name containing ``{q,k,v}_proj`` (see
    :func:`convert_tensors`). Raises :class:`ConversionError` for unknown keys.
    """
    for pattern, template in _RULES:
        match = pattern.match(key)
        if not match:
            continue
        if template is None:
            return None
        name = match.expand(template)
        name = re.sub(r"\{half-1:(\d+)\}", lambda m: _half_minus_one(key, m.group(1)), name)
        return re.sub(r"\{(mid|level):(\w+)\}", lambda m: _WORDS[m.group(1)][m.group(2)], name)
    if key.startswith(VISION):  # the SigLIP tower: names shared with the janus: readout
        name = vision_name_to_hf(key[len(VISION) :])
        if name is not None:
            return HF_VISION_PREFIX + name
    raise ConversionError(f"unknown key {key!r}: not part of a DeepSeek Janus checkpoint")


def _half_minus_one(key: str, number: str) -> str:
    # MLP projectors are Sequential(Linear, GELU, Linear, ...): linears sit at even indices.
    index = int(number)
    if index % 2:
        raise ConversionError(f"unexpected projector layer in {key!r}: linears are at even indices")
    return str(index // 2 - 1)


def convert_tensors(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """HF tensors for one DeepSeek tensor: renamed, ``qkv`` split, ``pos_embed`` squeezed."""
    name = map_key(key)
    if name is None:
        return {}
    if name.startswith(HF_VISION_PREFIX):
        try:
            converted = vision_tensors_to_hf(key[len(VISION) :], tensor)
        except ValueError as exc:
            raise ConversionError(f"{VISION}{exc}") from None
        return {HF_VISION_PREFIX + k: v for k, v in converted.items()}
    return {name: tensor}


# ----------------------------------------------------------------------------- reading


def read_deepseek_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConversionError(f"{folder} has no config.json") from None
    except ValueError as exc:
        raise ConversionError(f"{path} is not valid JSON ({exc})") from None
    if config.get("model_type") != DEEPSEEK_MODEL_TYPE:
        raise ConversionError(
            f"{path} has model_type {config.get('model_type')!r}, expected "
            f"{DEEPSEEK_MODEL_TYPE!r} (a DeepSeek-format Janus checkpoint)"
        )
    return config


# ----------------------------------------------------------------------------- config


def _params(config: dict[str, Any], name: str) -> dict[str, Any]:
    return dict((config.get(name) or {}).get("params") or {})


def _count(shapes: dict[str, tuple[int, ...]], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in shapes if (m := regex.match(k))})


def _shape(shapes: dict[str, tuple[int, ...]], key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ConversionError(f"checkpoint is missing {key!r}")
    return shapes[key]


def _text_config(config: dict[str, Any], shapes: dict[str, tuple[int, ...]]):
    from transformers import LlamaConfig

    language = dict(config.get("language_config") or {})
    language.pop("model_type", None)
    for key in ("torch_dtype", "dtype", "architectures", "_name_or_path", "transformers_version"):
        language.pop(key, None)
    # The config wins where it speaks (so a lost layer shows up as missing keys); the
    # shapes fill in what DeepSeek's config leaves to LlamaConfig's defaults.
    vocab, hidden = _shape(shapes, "language_model.model.embed_tokens.weight")
    language.setdefault("vocab_size", vocab)
    language.setdefault("hidden_size", hidden)
    language.setdefault(
        "num_hidden_layers", _count(shapes, r"^language_model\.model\.layers\.(\d+)\.")
    )
    language.setdefault(
        "intermediate_size",
        _shape(shapes, "language_model.model.layers.0.mlp.gate_proj.weight")[0],
    )
    hidden = int(language["hidden_size"])
    heads = int(language.get("num_attention_heads", LlamaConfig().num_attention_heads))
    kv_rows = _shape(shapes, "language_model.model.layers.0.self_attn.k_proj.weight")[0]
    language.setdefault("num_key_value_heads", kv_rows // (hidden // heads))
    return LlamaConfig(**language)


def _vision_config(config: dict[str, Any], shapes: dict[str, tuple[int, ...]]):
    from transformers import JanusVisionConfig

    for name in ("pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"):
        _shape(shapes, VISION + name)  # named when missing
    tower = {k[len(VISION) :]: v for k, v in shapes.items() if k.startswith(VISION)}
    try:
        shape = vision_tower_shape(tower, config)
    except ValueError as exc:
        raise ConversionError(str(exc)) from None
    if shape.heads is None:
        model_name = _params(config, "vision_config").get("model_name")
        raise ConversionError(
            f"unknown vision tower {model_name!r}: add 'heads' to vision_config.params in "
            f"config.json"
        )
    aligner_out = _shape(shapes, "aligner.layers.0.weight")[0]
    return JanusVisionConfig(
        hidden_size=shape.width,
        num_hidden_layers=shape.depth,
        num_attention_heads=shape.heads,
        image_size=shape.image_size,
        patch_size=shape.patch_size,
        mlp_ratio=shape.mlp_ratio,
        projection_dim=aligner_out,
        depth=_count(shapes, r"^aligner\.layers\.(\d+)\.weight$"),
        num_image_tokens=(shape.image_size // shape.patch_size) ** 2,
        use_qk_norm=shape.qk_norm,
    )


def _vq_config(shapes: dict[str, tuple[int, ...]]):
    from transformers import JanusVQVAEConfig

    vq = "gen_vision_model."
    codebook, embed_dim = _shape(shapes, vq + "quantize.embedding.weight")
    base = _shape(shapes, vq + "encoder.conv_in.weight")[0]
    levels = _count(shapes, r"^gen_vision_model\.encoder\.conv_blocks\.(\d+)\.")
    multiplier = [
        _shape(shapes, f"{vq}encoder.conv_blocks.{i}.res.0.conv1.weight")[0] // base
        for i in range(levels)
    ]
    projection = _shape(shapes, "gen_aligner.layers.0.weight")[0]
    head_projection, head_in = _shape(shapes, "gen_head.output_mlp_projector.weight")
    if head_projection != projection:
        raise ConversionError(
            f"gen_aligner width {projection} differs from gen_head width {head_projection}: "
            f"transformers' Janus needs them equal"
        )
    return JanusVQVAEConfig(
        embed_dim=embed_dim,
        num_embeddings=codebook,
        latent_channels=_shape(shapes, vq + "encoder.conv_out.weight")[0],
        in_channels=_shape(shapes, vq + "encoder.conv_in.weight")[1],
        out_channels=_shape(shapes, vq + "decoder.conv_out.weight")[0],
        base_channels=base,
        channel_multiplier=multiplier,
        num_res_blocks=_count(shapes, r"^gen_vision_model\.encoder\.conv_blocks\.0\.res\.(\d+)\."),
        projection_dim=projection,
        image_token_embed_dim=head_in,
        num_hidden_layers=_count(shapes, r"^gen_aligner\.layers\.(\d+)\.weight$"),
    )


def hf_config_from_deepseek(
    config: dict[str, Any], shapes: dict[str, tuple[int, ...]], image_token_id: int | None = None
):
    """A ``JanusConfig`` for the DeepSeek config + the checkpoint's tensor shapes."""
    from transformers import JanusConfig

    kwargs: dict[str, Any] = {}
    if image_token_id is not None:
        kwargs["image_token_id"] = image_token_id
    return JanusConfig(
        text_config=_text_config(config, shapes),
        vision_config=_vision_config(config, shapes),
        vq_config=_vq_config(shapes),
        tie_word_embeddings=False,
        **kwargs,
    )


# ----------------------------------------------------------------------------- checks


def _expected_shapes(hf_config) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the HF model, built on the meta device (no memory)."""
    from transformers import JanusForConditionalGeneration

    with torch.device("meta"):
        model = JanusForConditionalGeneration(hf_config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _converted_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for key, shape in shapes.items():
        for name, tensor in convert_tensors(key, torch.empty(shape, device="meta")).items():
            out[name] = tuple(tensor.shape)
    return out


def _names(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


# Exact prefix swaps back to DeepSeek names, for naming missing tensors in errors.
_SOURCE_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.generation_embeddings.", "gen_embed."),
)


def _source_name(hf_key: str) -> str:
    for hf_prefix, source_prefix in _SOURCE_PREFIXES:
        if hf_key.startswith(hf_prefix):
            return source_prefix + hf_key[len(hf_prefix) :]
    return f"{hf_key} (transformers name)"


def check_complete(shapes: dict[str, tuple[int, ...]], hf_config) -> None:
    """Every HF parameter is produced with the right shape, and nothing else."""
    produced = _converted_shapes(shapes)
    expected = _expected_shapes(hf_config)
    missing = sorted(_source_name(k) for k in expected if k not in produced)
    if missing:
        raise ConversionError(
            f"checkpoint is missing {len(missing)} tensor(s) the model needs: {_names(missing)}"
        )
    extra = sorted(k for k in produced if k not in expected)
    if extra:
        raise ConversionError(f"checkpoint has tensors the model has no place for: {_names(extra)}")
    wrong = [f"{k} {produced[k]} vs {expected[k]}" for k in expected if produced[k] != expected[k]]
    if wrong:
        raise ConversionError(f"tensor shapes do not match the model: {_names(wrong, 4)}")


# ----------------------------------------------------------------------------- conversion


@dataclass
class ConversionPlan:
    """What a conversion will read and write, worked out before anything is written."""

    source: Path
    shards: list[Path]
    shapes: dict[str, tuple[int, ...]]
    hf_config: Any
    special: dict[str, int | None] = field(default_factory=dict)


def plan_conversion(source: Path | str) -> ConversionPlan:
    """Read config, shapes and tokenizer ids of a DeepSeek checkpoint and check that every
    tensor the HF model needs is there (the error names missing keys)."""
    require_janus_transformers()
    source = Path(source).expanduser()
    if not source.is_dir():
        raise ConversionError(f"checkpoint folder {source} does not exist")
    config = read_deepseek_config(source)
    try:
        shards = checkpoint_shards(source)
    except ValueError as exc:
        raise ConversionError(str(exc)) from None
    shapes: dict[str, tuple[int, ...]] = {}
    for shard in shards:
        shapes.update(file_tensor_shapes(shard))
    special = _tokenizer_ids(source)
    hf_config = hf_config_from_deepseek(config, shapes, special.get("image"))
    check_complete(shapes, hf_config)
    return ConversionPlan(source, shards, shapes, hf_config, special)


JANUS_TRANSFORMERS = (4, 52)  # the first transformers with JanusForConditionalGeneration


def _transformers_version() -> tuple[int, int]:
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return major, minor


def require_janus_transformers() -> None:
    """A one-line error where the installed transformers predates its Janus classes."""
    import transformers

    if _transformers_version() < JANUS_TRANSFORMERS:
        raise ValueError(
            f"Janus generation and conversion need transformers >= "
            f"{'.'.join(map(str, JANUS_TRANSFORMERS))} (JanusForConditionalGeneration); "
            f"this is {transformers.__version__}"
        )


def dtype_argument() -> str:
    """transformers' name for a model's dtype (``from_pretrained`` argument and config
    attribute): ``dtype`` from 4.56 on, ``torch_dtype`` before."""
    return "dtype" if _transformers_version() >= (4, 56) else "torch_dtype"


def known_token_id(tokenizer, text: str) -> int | None:
    """The id of the single token ``text``; ``None`` where the tokenizer does not know it."""
    value = tokenizer.convert_tokens_to_ids(text)
    unk = getattr(tokenizer, "unk_token_id", None)
    return None if value is None or (unk is not None and value == unk) else int(value)


def cfg_pad_token_id(tokenizer, generation_config: Any = None) -> int | None:
    """The id the unconditional CFG rows are padded with: DeepSeek's ``<｜▁pad▁｜>`` where the
    vocabulary has it (DeepSeek pads with that token whatever the tokenizer's pad token is),
    else the tokenizer's pad token, else the generation config's; ``None`` if none has one."""
    for value in (
        known_token_id(tokenizer, DEEPSEEK_PAD_TAG),
        tokenizer.pad_token_id,
        getattr(generation_config, "pad_token_id", None),
    ):
        if value is not None:
            return int(value)
    return None


def _tokenizer_ids(folder: Path) -> dict[str, int | None]:
    """Special-token ids from the checkpoint's tokenizer (for the generation config)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read the tokenizer in {folder} ({exc})") from None
    return {
        "bos": tokenizer.bos_token_id,
        "eos": tokenizer.eos_token_id,
        "pad": cfg_pad_token_id(tokenizer),
        "boi": known_token_id(tokenizer, IMAGE_START_TAG),
        "image": known_token_id(tokenizer, IMAGE_PLACEHOLDER_TAG),
    }


def _generation_config(special: dict[str, int | None]):
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=special.get("bos"),
        eos_token_id=special.get("eos"),
        pad_token_id=special.get("pad"),
        generation_kwargs={"boi_token_id": special.get("boi")},
    )


def _convert_shards(
    plan: ConversionPlan,
    work: Path,
    dtype: torch.dtype | None,
    on_shard: Callable[[Path], None] | None,
) -> tuple[dict[str, str], int]:
    """Write one safetensors file per input shard; returns (weight map, total bytes)."""
    from safetensors.torch import save_file

    weight_map: dict[str, str] = {}
    aside: dict[str, torch.Tensor] = {}
    total = 0
    count = len(plan.shards)
    for number, shard in enumerate(plan.shards, start=1):
        name = f"model-{number:05d}-of-{count:05d}.safetensors"
        converted: dict[str, torch.Tensor] = {}
        for key, tensor in load_state_dict_file(shard).items():
            if key.startswith(VISION + ATTN_POOL_PREFIX):
                aside[key[len(VISION) :]] = tensor.clone(memory_format=torch.contiguous_format)
            for new, value in convert_tensors(key, tensor).items():
                cast = dtype if dtype is not None and value.is_floating_point() else value.dtype
                # One contiguous copy: no storage shared with the source (or its memory map).
                converted[new] = value.to(
                    dtype=cast, memory_format=torch.contiguous_format, copy=True
                )
        save_file(converted, str(work / name), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in converted.values())
        weight_map.update(dict.fromkeys(converted, name))
        del converted
        if on_shard is not None:
            on_shard(shard)
    if aside:  # SigLIP's pooling head: HF has no place for it, DoLa readout needs it
        save_file(aside, str(work / ATTN_POOL_FILE), metadata={"format": "pt"})
    return weight_map, total


def convert_checkpoint(
    source: Path | str,
    destination: Path | str,
    overwrite: bool = False,
    dtype: torch.dtype | None = None,
    on_shard: Callable[[Path], None] | None = None,
    plan: ConversionPlan | None = None,
) -> Path:
    """Convert a DeepSeek-format folder to an HF-format folder at ``destination``.

    ``plan``: :func:`plan_conversion` of ``source`` where the caller has it already (it is
    worked out here otherwise). Writes into a temporary sibling folder and renames it into
    place at the end, so an interrupted conversion never leaves a folder that looks complete.
    """
    destination = Path(destination).expanduser()
    if destination.exists() and not overwrite:
        raise FileExistsError(f"{destination} already exists; pass --overwrite to replace it")
    if plan is None or plan.source != Path(source).expanduser():
        plan = plan_conversion(source)
    destination.parent.mkdir(parents=True, exist_ok=True)
    work = destination.parent / f".{destination.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        weight_map, total = _convert_shards(plan, work, dtype, on_shard)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (work / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        if dtype is not None:
            setattr(plan.hf_config, dtype_argument(), dtype)
        plan.hf_config.save_pretrained(work)
        _generation_config(plan.special).save_pretrained(work)
        for path in _tokenizer_files(plan.source):
            shutil.copy2(path, work / path.name)
        marker = {
            "source": str(plan.source.resolve()),
            "source_format": DEEPSEEK_MODEL_TYPE,
            "shards": [p.name for p in plan.shards],
            "special_tokens": plan.special,
        }
        (work / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        _replace_folder(work, destination)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return destination


def _tokenizer_files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.iterdir()):
        if path.is_file() and TOKENIZER_FILE_PATTERN.match(path.name):
            yield path


def _replace_folder(work: Path, destination: Path) -> None:
    if not destination.exists():
        os.replace(work, destination)
        return
    backup = destination.parent / f".{destination.name}.old-{os.getpid()}"
    os.replace(destination, backup)
    os.replace(work, destination)
    shutil.rmtree(backup, ignore_errors=True)
