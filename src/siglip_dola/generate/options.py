"""Checked settings of a generation run, built from the command line before any model loads.

Everything a user can get wrong in the arguments (prompt file, counts, dtype, device, model
folder format, shard, scorer spec, negatives) is checked here, so a mistake costs seconds
rather than the minutes a 7B load takes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from siglip_dola.checkpoints import MARKER_FILE
from siglip_dola.distributed import launcher_local_rank, launcher_shard
from siglip_dola.generate.backend import (
    ModelSource,
    check_deepseek,
    default_conversion_dir,
    resolve_model,
)
from siglip_dola.generate.convert import ConversionPlan, require_janus_transformers
from siglip_dola.generate.prompts import load_negatives, load_prompts
from siglip_dola.generate.sampling import SamplingConfig
from siglip_dola.generate.select import SELECT_MODES
from siglip_dola.io import check_output_folder
from siglip_dola.settings import canonical_dtype, check_device, dtype_name
from siglip_dola.settings import parse_dtype as torch_dtype_of

__all__ = [
    "PROMPT_FORMAT",
    "SUPPORTED_DTYPES",
    "GenerateOptions",
    "parse_batch_prompts",
    "parse_dtype",
    "parse_shard",
]

SUPPORTED_DTYPES = ("bfloat16", "float16", "float32")  # what generation runs in
# Names the prompt template + CFG recipe in the manifest. /2: messages stripped and the CFG
# rows padded with DeepSeek's pad token, as DeepSeek's code does; results of the first form
# are another job (a resume refuses to mix them).
PROMPT_FORMAT = "deepseek-t2i/2"
LAYER_ARG = re.compile(r"^\s*(all|bucket:\d+|\d+(-\d+)?)(\s*,\s*(all|bucket:\d+|\d+(-\d+)?))*\s*$")


@dataclass(frozen=True)
class GenerateOptions:
    """A validated generation run (see ``siglip-dola generate --help``)."""

    prompts: list[str]
    out: Path
    source: ModelSource
    parallel_size: int = 16
    per_prompt: int = 1
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int = 0
    dtype: str = "bfloat16"
    device: str = "cpu"
    batch_prompts: int | None = None  # None: from the memory budget
    shard: tuple[int, int] = (0, 1)
    overwrite: bool = False
    select: str = "first"
    scorer: str | None = None
    scorer_text: str | None = None
    negatives: list[str] | None = None
    dola_layers: str | None = None
    alpha: float = 0.1
    jpeg_quality: int = 95
    converted_dir: Path | None = None
    quiet: bool = False
    # The checked conversion of a DeepSeek folder not yet converted (reused by the loader).
    conversion: ConversionPlan | None = field(default=None, repr=False, compare=False)

    @property
    def candidates(self) -> int:
        """Images generated per prompt. ``first`` keeps the first ``per_prompt`` candidates,
        which do not depend on how many others are drawn (one seed each), so only those are
        generated."""
        return self.per_prompt if self.select == "first" else self.parallel_size

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch_dtype_of(self.dtype)

    def settings(self) -> dict[str, Any]:
        """What an image depends on besides (seed, prompt index): a rerun with other values
        is a different job. Device, batching and sharding are not in it by design."""
        negatives = None
        if self.negatives is not None:
            negatives = hashlib.sha1("\n".join(self.negatives).encode()).hexdigest()[:16]
        scoring = self.select != "first"
        return {
            "model": self.source.location,
            "prompt_format": PROMPT_FORMAT,
            "candidates": self.candidates,
            "per_prompt": self.per_prompt,
            "cfg_weight": self.sampling.cfg_weight,
            "temperature": self.sampling.temperature,
            "top_k": self.sampling.top_k,
            "dtype": self.dtype,
            "select": self.select,
            "scorer": self.scorer if scoring else None,
            "scorer_text": self.scorer_text if scoring else None,
            "negatives_sha1": negatives if scoring else None,
            "dola_layers": self.dola_layers if scoring else None,
            "alpha": self.alpha if scoring else None,
            "jpeg_quality": self.jpeg_quality,
        }

    @classmethod
    def from_args(cls, args: Any) -> GenerateOptions:
        """Validate parsed ``generate`` arguments; raises ``ValueError`` with one clear line."""
        require_janus_transformers()
        prompts = load_prompts(args.json)
        _check_counts(args)
        sampling = SamplingConfig(
            cfg_weight=float(args.cfg_weight),
            temperature=float(args.temperature),
            top_k=int(args.top_k),
        )
        dtype = dtype_name(parse_dtype(args.dtype))
        shard = parse_shard(args.shard)
        device = check_device(
            _auto_device(args.device), local_rank=_launcher_local_rank(args.shard)
        )
        out = check_output_folder(Path(args.out).expanduser())
        source = resolve_model(args.model)
        scoring = _check_selection(args)
        negatives = load_negatives(args.negatives) if args.negatives else None
        converted = Path(args.converted_dir).expanduser() if args.converted_dir else None
        if converted is not None:
            check_output_folder(converted)
        conversion = None
        if source.kind == "deepseek":
            target = converted or default_conversion_dir(source)
            if not (target / MARKER_FILE).is_file():
                # key names and shapes, before any minutes-long load
                conversion = check_deepseek(source)
        return cls(
            prompts=prompts,
            out=out,
            source=source,
            parallel_size=int(args.parallel_size),
            per_prompt=int(args.per_prompt),
            sampling=sampling,
            seed=int(args.seed),
            dtype=dtype,
            device=device,
            batch_prompts=parse_batch_prompts(args.batch_prompts),
            shard=shard,
            overwrite=bool(args.overwrite),
            select=args.select,
            scorer=args.scorer if scoring else None,
            scorer_text=args.scorer_text if scoring else None,
            negatives=negatives,
            dola_layers=args.dola_layers,
            alpha=float(args.alpha),
            jpeg_quality=int(args.jpeg_quality),
            converted_dir=converted,
            quiet=bool(args.quiet),
            conversion=conversion,
        )


def _auto_device(text: str) -> str:
    """``auto``: CUDA where there is a GPU, else the CPU."""
    if str(text).strip().lower() != "auto":
        return text
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_counts(args: Any) -> None:
    if args.parallel_size < 1:
        raise ValueError(f"--parallel-size must be >= 1, got {args.parallel_size}")
    if args.per_prompt < 1:
        raise ValueError(f"--per-prompt must be >= 1, got {args.per_prompt}")
    if args.per_prompt > args.parallel_size:
        raise ValueError(
            f"--per-prompt {args.per_prompt} is greater than --parallel-size "
            f"{args.parallel_size}: cannot keep more images than are generated"
        )
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if not 1 <= args.jpeg_quality <= 100:
        raise ValueError(f"--jpeg-quality must be in 1..100, got {args.jpeg_quality}")


def _check_selection(args: Any) -> bool:
    """Whether a scorer is used; checks the scorer options without loading anything."""
    if args.select not in SELECT_MODES:
        raise ValueError(f"--select must be one of {', '.join(SELECT_MODES)}, got {args.select!r}")
    scoring = args.select != "first"
    if not scoring:
        for flag, value in (
            ("--scorer", args.scorer),
            ("--negatives", args.negatives),
            ("--scorer-text", args.scorer_text),
        ):
            if value:
                raise ValueError(f"{flag} only applies with --select siglip or --select dola")
        return False
    if not args.scorer:
        raise ValueError(f"--select {args.select} needs --scorer SPEC (a SigLIP model)")
    _check_model_spec(args.scorer, "--scorer")
    if args.scorer_text:
        _check_model_spec(args.scorer_text, "--scorer-text")
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.dola_layers is not None and not LAYER_ARG.match(args.dola_layers):
        raise ValueError(
            f"--dola-layers {args.dola_layers!r} is not a layer list like 18,20,22, 17-23, "
            f"bucket:3 or all"
        )
    return True


def _check_model_spec(spec: str, flag: str) -> None:
    """Syntax of a SigLIP spec, and existence of the local path it names (hub ids pass)."""
    from siglip_dola.models import parse_spec

    parsed = parse_spec(spec)
    for part in (parsed.target, parsed.weights):
        if part and part.startswith(("/", "./", "../", "~")):
            if not Path(part).expanduser().exists():
                raise ValueError(f"{flag} {spec}: {part} does not exist")


def parse_dtype(text: str) -> torch.dtype:
    """``--dtype``: bfloat16, float16 or float32 (or an alias such as bf16)."""
    try:
        name = canonical_dtype(text)
    except ValueError:
        name = None
    if name not in SUPPORTED_DTYPES:
        raise ValueError(f"unknown dtype {text!r}; expected one of {', '.join(SUPPORTED_DTYPES)}")
    return torch_dtype_of(name)


def _launcher_local_rank(shard_flag: str | None) -> int | None:
    """The launcher's local rank, unless ``--shard`` names the shard itself."""
    return None if shard_flag is not None else launcher_local_rank()


def parse_shard(text: str | None) -> tuple[int, int]:
    """``i/n`` (0-based) from ``--shard``, else RANK/WORLD_SIZE from torchrun / accelerate,
    else 0/1. Shard i takes the i-th of n contiguous blocks of prompts."""
    launcher = launcher_shard()
    if text is None:
        return launcher
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise ValueError(f"--shard {text!r} is not of the form i/n (for example 0/4)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    if launcher[1] > 1 and (index, count) != launcher:
        raise ValueError("--shard conflicts with torchrun's RANK/WORLD_SIZE; use one of them")
    return index, count


def parse_batch_prompts(text: str | int | None) -> int | None:
    """``auto`` -> None (decided from memory after loading); else an integer >= 1."""
    if text is None or str(text).strip().lower() == "auto":
        return None
    try:
        value = int(str(text))
    except ValueError:
        raise ValueError(f"--batch-prompts must be 'auto' or an integer, got {text!r}") from None
    if value < 1:
        raise ValueError(f"--batch-prompts must be >= 1, got {value}")
    return value
