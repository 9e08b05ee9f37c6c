"""Finding and loading a Janus-Pro checkpoint for generation.

Two formats: HF-format folders or hub ids (transformers ``JanusForConditionalGeneration``,
``model_type`` ``janus``) load directly; DeepSeek-format folders (``multi_modality``) are
converted once to HF format (into a cache folder, or where ``converted_dir`` says) and then
load the same way. :func:`resolve_model` only reads ``config.json``, so a bad ``--model``
fails before anything heavy happens.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from siglip_dola.checkpoints import (
    DEEPSEEK_MODEL_TYPE,
    HF_JANUS_MODEL_TYPE,
    MARKER_FILE,
    check_hf_janus_files,
    janus_format_of_config,
    read_config,
)
from siglip_dola.generate.convert import (
    ConversionPlan,
    cfg_pad_token_id,
    convert_checkpoint,
    dtype_argument,
    known_token_id,
    plan_conversion,
)
from siglip_dola.generate.sampling import IMAGE_START_TAG, SpecialTokens
from siglip_dola.hub import quiet_transformers
from siglip_dola.settings import default_cache_dir

__all__ = [
    "check_deepseek",
    "JanusBundle",
    "ModelSource",
    "default_conversion_dir",
    "load_janus",
    "resolve_model",
    "special_tokens",
]

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """Where the weights are: ``kind`` is ``hf`` (folder), ``hub`` (id) or ``deepseek``;
    ``location`` is the absolute folder path or the hub id (a stable name for manifests)."""

    kind: str
    location: str


@dataclass
class JanusBundle:
    """A loaded Janus model with its tokenizer and the special-token ids sampling needs."""

    model: Any  # transformers JanusForConditionalGeneration
    tokenizer: Any
    special: SpecialTokens
    source: ModelSource


# ----------------------------------------------------------------------------- resolving


def resolve_model(spec: str) -> ModelSource:
    """Classify ``--model`` without loading weights (reads ``config.json`` only)."""
    text = str(spec).strip()
    if not text:
        raise ValueError("--model is empty: expected a Janus-Pro folder or hub id")
    path = Path(text).expanduser()
    if path.is_dir():
        return ModelSource(_folder_kind(path), str(path.resolve()))
    if path.exists():
        raise ValueError(f"model {path} is a file; expected a checkpoint folder or a hub id")
    if HUB_ID.match(text) and not text.startswith((".", "~")):
        return ModelSource("hub", text)
    raise ValueError(f"model folder {path} does not exist (and {text!r} is not a hub id)")


def _folder_kind(folder: Path) -> str:
    """``hf`` or ``deepseek`` from ``config.json`` (an HF folder's files are checked too)."""
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"{folder} is neither an HF-format Janus folder nor a DeepSeek-format one: "
            f"it has no config.json"
        )
    config = read_config(folder)
    kind = janus_format_of_config(config)
    if kind == "hf":
        check_hf_janus_files(folder)
    if kind is None:
        raise ValueError(
            f"{folder} is neither an HF-format Janus folder (model_type "
            f"{HF_JANUS_MODEL_TYPE!r}) nor a DeepSeek-format one (model_type "
            f"{DEEPSEEK_MODEL_TYPE!r}): config.json says {config.get('model_type')!r}"
        )
    return kind


def default_conversion_dir(source: ModelSource) -> Path:
    """Cache folder for the HF-format copy of a DeepSeek checkpoint."""
    root = default_cache_dir()
    digest = hashlib.sha1(source.location.encode()).hexdigest()[:10]
    return root / "janus-hf" / f"{Path(source.location).name}-{digest}"


# ----------------------------------------------------------------------------- loading


def _hf_folder(
    source: ModelSource, converted_dir: Path | None, log, plan: ConversionPlan | None = None
) -> str:
    """The HF-format location to load: converts a DeepSeek folder once (``plan``: its
    :func:`check_deepseek` result, so that the checks are not redone)."""
    if source.kind != "deepseek":
        return source.location
    target = converted_dir or default_conversion_dir(source)
    if (target / MARKER_FILE).is_file():
        log(f"using the HF-format copy of {source.location} in {target}")
        return str(target)
    if target.exists():
        raise FileExistsError(f"{target} exists but holds no finished conversion; remove it")
    log(
        f"converting the DeepSeek-format checkpoint {source.location} to HF format in {target} "
        f"(once; `siglip-dola janus-convert` does this ahead of time)"
    )
    with quiet_transformers():
        convert_checkpoint(source.location, target, plan=plan)
    return str(target)


def special_tokens(tokenizer, generation_config: Any = None) -> SpecialTokens:
    """BOS, pad and ``<begin_of_image>`` ids from the tokenizer (generation config as backup);
    the pad id is DeepSeek's (:func:`cfg_pad_token_id`)."""
    gen = generation_config
    extra = dict(getattr(gen, "generation_kwargs", None) or {})
    bos = (
        tokenizer.bos_token_id
        if tokenizer.bos_token_id is not None
        else getattr(gen, "bos_token_id", None)
    )
    pad = cfg_pad_token_id(tokenizer, gen)
    boi = known_token_id(tokenizer, IMAGE_START_TAG) or extra.get("boi_token_id")
    missing = [n for n, v in (("BOS", bos), ("pad", pad), (IMAGE_START_TAG, boi)) if v is None]
    if missing:
        raise ValueError(f"the tokenizer defines no {', '.join(missing)} token")
    return SpecialTokens(bos=int(bos), pad=int(pad), boi=int(boi))


def load_janus(
    source: ModelSource,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    converted_dir: Path | None = None,
    log=print,
    progress: bool = True,
    plan: ConversionPlan | None = None,
) -> JanusBundle:
    """Load model + tokenizer in eval mode on ``device``; converts DeepSeek folders first
    (``plan``: the folder's :func:`check_deepseek` result, where there is one)."""
    from transformers import AutoTokenizer, JanusForConditionalGeneration

    location = _hf_folder(source, converted_dir, log, plan)
    local = source.kind != "hub"
    try:
        with quiet_transformers(progress):
            tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local)
            model = JanusForConditionalGeneration.from_pretrained(
                location, local_files_only=local, **{dtype_argument(): dtype}
            )
    except OSError as exc:  # missing files, no network for a hub id, unreadable weights
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot load {location}: {first_line}") from None
    model = model.to(device).eval()
    return JanusBundle(model, tokenizer, special_tokens(tokenizer, model.generation_config), source)


def check_deepseek(source: ModelSource) -> ConversionPlan | None:
    """Validate a DeepSeek folder (config, shards, keys) without loading tensor data; the
    plan it returns saves :func:`load_janus` working it out again."""
    if source.kind != "deepseek":
        return None
    with quiet_transformers():
        return plan_conversion(source.location)
