"""Model specs -> a loaded model: a per-layer vision readout, its text tower, its logit scale.

Specs (SPEC.md section 4):

* ``hf:<hub id or dir>``: transformers ``SiglipModel`` / ``Siglip2Model`` (or their vision
  models), with the folder's image processor and tokenizer;
* ``open_clip:<name>[:<pretrained>]``: a built-in open_clip SigLIP config with a pretrained
  tag or a local weights file; ``open_clip:<dir>``: an open_clip folder
  (``open_clip_config.json`` + weights + tokenizer files, open_clip's ``local-dir:``);
  ``open_clip:<config.json>[:<weights file>]``: a local model config, registered under its
  file name (its ``text_cfg.hf_tokenizer_name`` may name a local tokenizer folder);
* ``timm:<name>`` (timm pretrained weights from the hub or its cache),
  ``timm:<name>:<weights file>``, ``timm:<dir>`` (timm's ``config.json`` + weights);
* ``janus:<dir>``: the SigLIP tower of a Janus / Janus-Pro checkpoint (DeepSeek's format or
  transformers').

A bare local directory is recognised by its files. Vision-only models (timm, Janus) take
their text tower from ``text_spec``. Nothing runs pickled code: safetensors first, else
``torch.load(weights_only=True)``; ``trust_remote_code`` is only passed on when asked.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from siglip_dola.checkpoints import (
    HF_VISION_PREFIX,
    INDEX_FILES,
    JANUS_VISION_PREFIX,
    SAFE_WEIGHT_SUFFIXES,
    file_tensor_shapes,
    janus_format,
    load_state_dict_file,
    load_weights_strict,
    read_config,
)
from siglip_dola.hub import OFFLINE_HINT, offline_unless_reachable, quiet_transformers
from siglip_dola.io import read_json
from siglip_dola.readout.base import LoadedModel, TextEncoder, VisionReadout
from siglip_dola.settings import parse_dtype

__all__ = [
    "SCHEMES",
    "ModelSpec",
    "detect_scheme",
    "load_model",
    "load_towers",
    "needs_hub",
    "parse_spec",
    "peek_depth",
]

SCHEMES = ("hf", "open_clip", "timm", "janus")
HF_SIGLIP_TYPES = ("siglip", "siglip2", "siglip_vision_model", "siglip2_vision_model")
SPEC_HELP = (
    "hf:<hub id or dir>, open_clip:<name>[:<pretrained>], open_clip:<dir or config.json>, "
    "timm:<name>[:<weights file>], timm:<dir>, janus:<dir>, or a local model directory"
)


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: ``scheme:target[:weights]``."""

    scheme: str
    target: str
    weights: str | None = None

    def __str__(self) -> str:
        return f"{self.scheme}:{self.target}" + (f":{self.weights}" if self.weights else "")


@dataclass
class Towers:
    """What one spec provides (text and logit scale may be absent)."""

    vision: VisionReadout | None
    text: TextEncoder | None
    logit_scale: float | None


# ----------------------------------------------------------------------------- specs


def parse_spec(spec: str) -> ModelSpec:
    """Split a spec into scheme, target and optional weights; detect bare directories."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty model spec; expected {SPEC_HELP}")
    spec = spec.strip()
    scheme, sep, rest = spec.partition(":")
    if sep and scheme in SCHEMES:
        if not rest:
            raise ValueError(f"model spec {spec!r} names no model after '{scheme}:'")
        if scheme in ("open_clip", "timm") and not rest.startswith(("hf-hub:", "local-dir:")):
            target, _, weights = rest.partition(":")
            return ModelSpec(scheme, target, weights or None)
        return ModelSpec(scheme, rest)
    path = Path(spec).expanduser()
    if path.is_dir():
        return ModelSpec(detect_scheme(path), str(path))
    if sep and not _looks_like_path(spec):
        raise ValueError(f"unknown model scheme {scheme!r} in {spec!r}; expected {SPEC_HELP}")
    if _looks_like_path(spec) or "/" in spec:
        hint = f" (for a hub id write hf:{spec})" if _hub_id_like(spec) else ""
        raise ValueError(f"model folder {spec} does not exist{hint}")
    raise ValueError(f"model spec {spec!r} has no scheme; expected {SPEC_HELP}")


def _hub_id_like(text: str) -> bool:
    owner, sep, name = text.partition("/")
    return bool(sep and owner and name and "/" not in name and not text.startswith((".", "~")))


def detect_scheme(folder: Path) -> str:
    """The scheme of a local model folder, from the files it holds."""
    if (folder / "open_clip_config.json").is_file():
        return "open_clip"
    config = read_config(folder)
    if config.get("model_type") in HF_SIGLIP_TYPES:
        return "hf"
    if "architecture" in config:  # timm's save_for_hf / hub layout
        return "timm"
    if janus_format(folder) is not None:
        return "janus"  # DeepSeek's format, or transformers' JanusForConditionalGeneration
    raise ValueError(
        f"cannot tell what model {folder} holds: expected open_clip_config.json (open_clip), "
        f"config.json of a SigLIP model (hf) or with 'architecture' (timm), or a Janus "
        f"checkpoint; name the scheme explicitly ({SPEC_HELP})"
    )


def _looks_like_path(text: str) -> bool:
    """A local path rather than a hub id: absolute, relative with ./ or ../, home-relative, a
    file name, an existing path, or one whose first folder exists here (``models/x``)."""
    first = Path(text).expanduser().parts[0] if text else ""
    return (
        text.startswith(("/", "./", "../", "~", "\\"))
        or text.endswith((".json", *SAFE_WEIGHT_SUFFIXES))
        or Path(text).expanduser().exists()
        or ("/" in text and Path(first).is_dir())
    )


def _existing(path_text: str, what: str) -> Path:
    path = Path(path_text).expanduser()
    if not path.exists():
        raise ValueError(f"{what} {path} does not exist")
    return path


def peek_depth(spec: str) -> int | None:
    """The number of layers N of the image tower a spec names, read from its config or its
    checkpoint's tensor names without loading weights; ``None`` where only loading tells
    (timm and open_clip names, hub ids not in the local cache)."""
    parsed = parse_spec(spec)
    if parsed.scheme == "hf":
        folder = Path(parsed.target).expanduser()
        config_path = folder / "config.json" if folder.is_dir() else _cached_hub_file(parsed)
        if config_path is None or not Path(config_path).is_file():
            return None
        config = read_config(Path(config_path).parent)
        vision = config.get("vision_config", config) if isinstance(config, dict) else {}
        layers = vision.get("num_hidden_layers") if isinstance(vision, dict) else None
        return int(layers) if isinstance(layers, int) else None
    if parsed.scheme == "janus":
        folder = Path(parsed.target).expanduser()
        if not folder.is_dir():
            return None
        names = _checkpoint_tensor_names(folder)
        blocks = {int(m.group(1)) for n in names if (m := _JANUS_BLOCK.match(n))}
        return max(blocks) + 1 if blocks else None
    return None


_JANUS_BLOCK = re.compile(
    rf"^(?:{re.escape(JANUS_VISION_PREFIX)}blocks|{re.escape(HF_VISION_PREFIX)}encoder\.layers)\.(\d+)\."
)


def _cached_hub_file(spec: ModelSpec, name: str = "config.json") -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    found = try_to_load_from_cache(spec.target, name)
    return found if isinstance(found, str) else None


def _checkpoint_tensor_names(folder: Path) -> list[str]:
    """Tensor names of a checkpoint folder from its index json or safetensors headers."""
    for index_name in INDEX_FILES:
        if (folder / index_name).is_file():
            content = read_json(folder / index_name)
            return list((content or {}).get("weight_map") or {})
    single = folder / "model.safetensors"
    if single.is_file():
        return list(file_tensor_shapes(single))
    return []


# ----------------------------------------------------------------------------- entry point


def load_model(
    spec: str,
    text_spec: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = torch.float32,
    trust_remote_code: bool = False,
    head_from: str | Path | None = None,
    model_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Load a vision readout and a text tower from specs (see the module docstring).

    ``text_spec`` replaces (or supplies) the text tower and its logit scale.
    ``head_from``: a timm/open_clip SigLIP checkpoint whose pooling head a Janus checkpoint
    without ``attn_pool.*`` should use. ``model_kwargs`` go to timm's ``create_model`` for
    ``timm:`` and ``janus:`` (``janus:`` also takes ``architecture``). ``progress=False``
    hides the libraries' loading bars.
    """
    dtype = parse_dtype(dtype)
    vision_spec = parse_spec(spec)
    text_parsed = None if text_spec is None else parse_spec(text_spec)
    if text_parsed is not None and text_parsed.scheme not in ("hf", "open_clip"):
        raise ValueError(f"text spec {text_spec!r} has no text tower; expected hf: or open_clip:")
    towers = load_towers(
        vision_spec, trust_remote_code, head_from, model_kwargs, need_vision=True, progress=progress
    )
    text, logit_scale = towers.text, towers.logit_scale
    if text_parsed is not None:
        text_towers = load_towers(
            text_parsed, trust_remote_code, need_vision=False, progress=progress
        )
        if text_towers.text is None:
            raise ValueError(f"text spec {text_spec!r} has no text tower (a vision-only model)")
        text, logit_scale = text_towers.text, text_towers.logit_scale
    vision = towers.vision
    if text is not None and text.embed_dim != vision.embed_dim:
        raise ValueError(
            f"embedding size mismatch: the vision model {spec!r} gives D={vision.embed_dim} but "
            f"the text tower {text.name!r} gives D={text.embed_dim}; pair the image tower with "
            f"the text tower of the same SigLIP model"
        )
    vision.to(device=device, dtype=dtype)
    if text is not None:
        text.to(device=device, dtype=dtype)
    return LoadedModel(vision=vision, text=text, logit_scale=logit_scale)


def load_towers(
    spec: ModelSpec,
    trust_remote_code: bool = False,
    head_from: str | Path | None = None,
    model_kwargs: dict[str, Any] | None = None,
    need_vision: bool = True,
    progress: bool = True,
) -> Towers:
    """The towers one spec provides, on the CPU in the checkpoint's precision."""
    if head_from is not None and spec.scheme != "janus":
        raise ValueError(f"head_from only applies to janus: checkpoints, not {spec.scheme}:")
    if model_kwargs and spec.scheme not in ("timm", "janus"):
        raise ValueError(f"model_kwargs only apply to timm: and janus: specs, not {spec.scheme}:")
    if not needs_hub(spec):
        with quiet_transformers(progress):
            return _load_family(spec, trust_remote_code, head_from, model_kwargs, need_vision)
    with offline_unless_reachable() as online, quiet_transformers(progress):
        try:
            return _load_family(spec, trust_remote_code, head_from, model_kwargs, need_vision)
        except (OSError, RuntimeError, ValueError):
            if online:
                raise
            # The hub libraries say this in several paragraphs; the cause is one fact.
            raise ValueError(f"{spec}: {OFFLINE_HINT}") from None


def needs_hub(spec: ModelSpec) -> bool:
    """Whether loading ``spec`` may download from the Hugging Face hub (a hub id, a
    pretrained tag, a timm name without a weights file) rather than read local files only."""
    if spec.scheme == "janus":
        return False
    if spec.scheme == "hf":
        return not _looks_like_path(spec.target)
    if spec.target.startswith("hf-hub:"):
        return True
    if spec.target.startswith("local-dir:") or _looks_like_path(spec.target):
        return False
    return spec.scheme == "open_clip" or not spec.weights


def _load_family(
    spec: ModelSpec,
    trust_remote_code: bool,
    head_from: str | Path | None,
    model_kwargs: dict[str, Any] | None,
    need_vision: bool,
) -> Towers:
    if spec.scheme == "hf":
        return _load_hf(spec, trust_remote_code, need_vision)
    if spec.scheme == "open_clip":
        return _load_open_clip(spec, need_vision)
    if spec.scheme == "timm":
        return Towers(_load_timm(spec, model_kwargs or {}), None, None)
    if spec.scheme == "janus":
        return Towers(_load_janus(spec, head_from, model_kwargs or {}), None, None)
    raise ValueError(f"unknown model scheme {spec.scheme!r}; expected {SPEC_HELP}")


# ----------------------------------------------------------------------------- families


def _load_hf(spec: ModelSpec, trust_remote_code: bool, need_vision: bool) -> Towers:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from siglip_dola.readout.hf import HFSiglipReadout, HFSiglipText

    target = spec.target
    if _looks_like_path(target):
        target = str(_existing(target, "hf: model folder"))
    try:
        config = AutoConfig.from_pretrained(target, trust_remote_code=trust_remote_code)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"hf:{spec.target} is neither a local model folder nor available from the Hugging "
            f"Face hub (or its cache): {first}"
        ) from None
    if config.model_type not in HF_SIGLIP_TYPES:
        raise ValueError(
            f"hf:{spec.target} is a {config.model_type!r} model; expected a SigLIP model "
            f"(model_type one of {list(HF_SIGLIP_TYPES)})"
        )
    model, info = AutoModel.from_pretrained(
        target, trust_remote_code=trust_remote_code, output_loading_info=True
    )
    _check_loading_info(f"hf:{spec.target}", info)
    model = model.float().eval()
    name = str(spec)
    text = logit_scale = None
    if hasattr(model, "get_text_features"):
        try:
            tokenizer = AutoTokenizer.from_pretrained(target, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as err:
            raise ValueError(
                f"{name}: the model has a text tower but no tokenizer: {err}"
            ) from None
        text = HFSiglipText(model, tokenizer, name=name)
        logit_scale = float(model.logit_scale.detach().reshape(-1)[0])
    if not need_vision:
        # Only the text tower is wanted: free the image tower's memory.
        model.vision_model = None
        return Towers(None, text, logit_scale)
    processor = _hf_image_processor(target, config, trust_remote_code)
    return Towers(HFSiglipReadout(model, processor, name=name), text, logit_scale)


def _check_loading_info(name: str, info: dict[str, Any]) -> None:
    """transformers only warns about weights the checkpoint lacks (and initialises them at
    random): a readout of such a model would be silently wrong, so it is an error here."""
    problems = []
    for key, what in (("missing_keys", "missing"), ("mismatched_keys", "of the wrong shape")):
        names = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get(key) or ())
        if names:
            shown = ", ".join(names[:8]) + (
                f", ... ({len(names) - 8} more)" if len(names) > 8 else ""
            )
            problems.append(f"{what}: {shown}")
    if problems:
        raise ValueError(
            f"{name}: the checkpoint does not match the model; weights " + "; ".join(problems)
        )


def _hf_image_processor(target: str, config: Any, trust_remote_code: bool) -> Any:
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(target, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        pass
    # No preprocessor_config.json: SigLIP's defaults (mean = std = 0.5) at the model's size.
    vision_config = getattr(config, "vision_config", config)
    warnings.warn(f"hf:{target} has no image processor config; using SigLIP defaults", stacklevel=3)
    if "siglip2" in config.model_type:
        from transformers import Siglip2ImageProcessor

        return Siglip2ImageProcessor(
            patch_size=vision_config.patch_size, max_num_patches=vision_config.num_patches
        )
    from transformers import SiglipImageProcessor

    size = vision_config.image_size
    return SiglipImageProcessor(size={"height": size, "width": size})


def _load_open_clip(spec: ModelSpec, need_vision: bool) -> Towers:
    import open_clip

    from siglip_dola.readout.open_clip import OpenClipReadout, OpenClipText

    name, pretrained = spec.target, spec.weights
    if not name.startswith(("hf-hub:", "local-dir:")) and _looks_like_path(name):
        path = _existing(name, "open_clip model")
        if path.is_dir():
            if pretrained:
                raise ValueError(
                    f"{spec}: an open_clip folder carries its weights; drop ':{pretrained}'"
                )
            name = f"local-dir:{path}"
        elif path.suffix == ".json":
            # A local model config: open_clip registers it under its file name.
            open_clip.add_model_config(path)
            name = path.stem
        else:
            raise ValueError(f"{spec}: expected an open_clip model name, folder or config .json")
    if pretrained and _looks_like_path(pretrained):
        pretrained = str(_existing(pretrained, "open_clip weights file"))
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained)
    except RuntimeError as err:
        raise ValueError(f"open_clip could not build {spec}: {err}") from None
    model = model.float().eval()
    if need_vision:
        vision = OpenClipReadout(model, preprocess, name=str(spec))
    else:
        vision, model.visual = None, None  # only the text tower is wanted: free the image tower
    text = OpenClipText(model, open_clip.get_tokenizer(name), name=str(spec))
    return Towers(vision, text, float(model.logit_scale.detach().reshape(-1)[0]))


def _load_timm(spec: ModelSpec, model_kwargs: dict[str, Any]) -> VisionReadout:
    import timm

    from siglip_dola.readout.timm_vit import TimmViTReadout

    target = spec.target
    if _looks_like_path(target):
        path = _existing(target, "timm model")
        if path.is_dir():
            model = timm.create_model(f"local-dir:{path}", pretrained=True, **model_kwargs)
        else:
            model = _timm_from_file(path, model_kwargs)
    elif spec.weights:
        weights = _existing(spec.weights, "timm weights file")
        model = _timm_model(target, model_kwargs)
        load_weights_strict(model, load_state_dict_file(weights), str(weights))
    else:
        model = timm.create_model(target, pretrained=True, **model_kwargs)
    return TimmViTReadout(model.float().eval(), name=str(spec))


def _timm_model(architecture: str, model_kwargs: dict[str, Any]) -> nn.Module:
    import timm

    try:
        return timm.create_model(architecture, pretrained=False, **model_kwargs)
    except RuntimeError as err:  # timm: "Unknown model (...)"
        raise ValueError(f"timm cannot build {architecture!r}: {err}") from None


def _timm_from_file(path: Path, model_kwargs: dict[str, Any]) -> nn.Module:
    # A bare weights file says nothing about the architecture: timm's config.json beside it
    # (save_for_hf layout) must.
    config_path = path.parent / "config.json"
    config = read_json(config_path) if config_path.is_file() else {}
    if "architecture" not in config:
        raise ValueError(
            f"timm:{path} is a weights file without a timm config.json beside it; name the "
            f"architecture as timm:<name>:{path}"
        )
    kwargs = {**config.get("model_args", {}), **model_kwargs}
    if "num_classes" in config:
        kwargs.setdefault("num_classes", config["num_classes"])
    model = _timm_model(config["architecture"], kwargs)
    load_weights_strict(model, load_state_dict_file(path), str(path))
    return model


def _load_janus(
    spec: ModelSpec, head_from: str | Path | None, model_kwargs: dict[str, Any]
) -> VisionReadout:
    from siglip_dola.readout.janus import DEFAULT_ARCHITECTURE, load_janus_vision

    folder = _existing(spec.target, "Janus checkpoint folder")
    kwargs = dict(model_kwargs)
    architecture = kwargs.pop("architecture", DEFAULT_ARCHITECTURE)
    return load_janus_vision(
        folder, head_from=head_from, architecture=architecture, name=str(spec), **kwargs
    )
