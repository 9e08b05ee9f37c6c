"""The batch runner: prompts in, ``DIR/prompt_XXXX/img_YY.jpg`` out, resumable.

Layout of ``--out DIR``::

    DIR/manifest.jsonl              one JSON line per finished prompt, sorted by index
    DIR/prompt_0000/prompt.txt      the prompt
    DIR/prompt_0000/img_00.jpg ...  the kept images, best first
    DIR/prompt_0000/record.json     the prompt's manifest line; written last = finished

Every file is written to a temporary name and renamed into place, so an interrupted run
leaves only whole files, and a prompt counts as finished only once its ``record.json``
exists. A rerun skips finished prompts whose prompt text and settings match, refuses ones
that differ unless ``--overwrite``, and redoes unfinished ones. Processes sharing ``DIR``
(``--shard i/n`` or torchrun) each take one contiguous block of the prompts (shard i the
i-th of n, as :func:`siglip_dola.distributed.shard_positions` splits them) and merge their
manifest lines under a file lock. Images depend only on (seed, prompt index, settings), so
how the prompts are split changes no image.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from siglip_dola.distributed import shard_positions
from siglip_dola.generate.backend import JanusBundle, load_janus
from siglip_dola.generate.options import GenerateOptions
from siglip_dola.generate.sampling import (
    ImageRow,
    candidate_seed,
    decode_images,
    encode_prompt,
    generate_image_tokens,
    image_token_count,
)
from siglip_dola.generate.select import CandidateScore, CandidateScorer, rank_candidates
from siglip_dola.io import atomic_write_bytes, atomic_write_json, atomic_write_text

try:  # POSIX advisory locks; elsewhere a single process is assumed
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = [
    "MANIFEST",
    "RECORD",
    "Manifest",
    "RunSummary",
    "image_file_name",
    "plan_prompts",
    "prompt_dir_name",
    "run_generation",
]

MANIFEST = "manifest.jsonl"
RECORD = "record.json"
PROMPT_TEXT = "prompt.txt"
IMAGE_NAME = re.compile(r"^img_\d+\.jpg$")


# ----------------------------------------------------------------------------- layout


def prompt_dir_name(index: int, total: int) -> str:
    """``prompt_0003``; wider than 4 digits only when the file has more than 10000 prompts."""
    return f"prompt_{index:0{max(4, len(str(total - 1)))}d}"


def image_file_name(slot: int, count: int) -> str:
    return f"img_{slot:0{max(2, len(str(count - 1)))}d}.jpg"


def jpeg_bytes(image: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def read_record(folder: Path) -> dict[str, Any] | None:
    """A prompt folder's record if it is whole and all its images exist, else None."""
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, list):
        return None
    if not all((folder.parent / f).is_file() for f in files):
        return None
    return record


# ----------------------------------------------------------------------------- manifest


class Manifest:
    """``manifest.jsonl``: one line per finished prompt.

    Finished prompts are appended (one whole line per write, under a file lock, so shards
    can share the file); :meth:`rebuild` rewrites it sorted from the prompt folders'
    records (temp file + rename) at the start and end of every run, which also drops lines
    of prompts being redone and repairs a run killed mid-append.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = out / MANIFEST
        self.lock_path = out / ".manifest.lock"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as handle:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def append(self, record: dict) -> None:
        """Add one finished prompt's line."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._locked(), open(self.path, "ab") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def rebuild(self, prompts: Sequence[str], skip: Sequence[int] = ()) -> int:
        """Rewrite from the records of finished prompts (``skip``: prompts about to be
        redone); returns the number of lines."""
        skipped = set(skip)
        with self._locked():
            lines = []
            for index, prompt in enumerate(prompts):
                if index in skipped:
                    continue
                record = read_record(self.out / prompt_dir_name(index, len(prompts)))
                if record is not None and record.get("prompt") == prompt:
                    lines.append(json.dumps(record, ensure_ascii=False) + "\n")
            atomic_write_text(self.path, "".join(lines))
            return len(lines)


# ----------------------------------------------------------------------------- planning


@dataclass
class RunPlan:
    """Prompt indices of this shard: to generate, and already finished (skipped)."""

    todo: list[int]
    finished: list[int]


def plan_prompts(opts: GenerateOptions) -> RunPlan:
    """Sort this shard's prompts into finished and to-do; refuse to replace different
    earlier results without ``--overwrite`` (checked before any model loads)."""
    settings = opts.settings()
    todo, finished = [], []
    for index in shard_positions(len(opts.prompts), opts.shard):
        folder = opts.out / prompt_dir_name(index, len(opts.prompts))
        record = read_record(folder)
        if record is None:
            todo.append(index)
            continue
        difference = _difference(record, opts.prompts[index], opts.seed, settings)
        if difference is None and not opts.overwrite:
            finished.append(index)
        elif difference is not None and not opts.overwrite:
            raise FileExistsError(
                f"{folder} holds results made with a different {difference}; pass --overwrite "
                f"to replace them, or choose another --out"
            )
        else:
            todo.append(index)
    return RunPlan(todo, finished)


def _difference(record: dict, prompt: str, seed: int, settings: dict) -> str | None:
    """What differs between a record and the current job, in words; None when equal."""
    if record.get("prompt") != prompt:
        return "prompt"
    if record.get("seed") != seed:
        return f"seed ({record.get('seed')} there, {seed} now)"
    old = record.get("settings") or {}
    for key, value in settings.items():
        if old.get(key) != value:
            return f"{key} ({old.get(key)!r} there, {value!r} now)"
    return None


# ----------------------------------------------------------------------------- running


@dataclass
class RunSummary:
    generated: int  # prompts generated by this process
    skipped: int  # prompts already finished
    images: int  # images written
    seconds: float


def auto_batch_prompts(bundle: JanusBundle, rows_per_prompt: int, prompt_tokens: int) -> int:
    """Prompts per batch: what the KV cache of free GPU memory allows (CPU: 4)."""
    device = next(bundle.model.parameters()).device
    if device.type != "cuda":
        return 4
    text = bundle.model.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    tokens = prompt_tokens + image_token_count(bundle.model)
    itemsize = torch.finfo(next(bundle.model.parameters()).dtype).bits // 8
    kv_per_row = 2 * text.num_hidden_layers * kv_heads * head_dim * tokens * itemsize
    logits_per_row = bundle.model.config.vq_config.num_embeddings * 4 * 6  # float32/64 copies
    per_prompt = rows_per_prompt * (1.15 * kv_per_row + logits_per_row)  # +15%: cache growth
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(64, int(0.8 * free // per_prompt)))


def _load_scorer(opts: GenerateOptions) -> CandidateScorer | None:
    if opts.select == "first":
        return None
    from siglip_dola.hub import quiet_transformers
    from siglip_dola.models import load_model

    with quiet_transformers(progress=not opts.quiet):
        model = load_model(
            opts.scorer, text_spec=opts.scorer_text, device=opts.device, dtype=opts.torch_dtype
        )
    texts = list(opts.prompts) + list(opts.negatives or [])
    return CandidateScorer(model, texts, layers=opts.dola_layers, alpha=opts.alpha)


def _negatives_for(opts: GenerateOptions, index: int) -> list[str]:
    if opts.negatives is not None:
        return list(opts.negatives)
    return [p for i, p in enumerate(opts.prompts) if i != index]


def _write_prompt(
    opts: GenerateOptions,
    index: int,
    images: np.ndarray,
    seeds: Sequence[int],
    scores: Sequence[CandidateScore | None],
) -> dict[str, Any]:
    """Write one prompt's kept images, its text and (last) its record; returns the record."""
    total = len(opts.prompts)
    dir_name = prompt_dir_name(index, total)
    folder = opts.out / dir_name
    keep = rank_candidates(scores, opts.select)[: opts.per_prompt]
    saved: dict[int, str] = {}
    for slot, candidate in enumerate(keep):
        name = image_file_name(slot, opts.per_prompt)
        atomic_write_bytes(folder / name, jpeg_bytes(images[candidate], opts.jpeg_quality))
        saved[candidate] = f"{dir_name}/{name}"
    atomic_write_text(folder / PROMPT_TEXT, opts.prompts[index] + "\n")
    for stale in folder.iterdir():  # images of an earlier run with a larger --per-prompt
        if IMAGE_NAME.match(stale.name) and f"{dir_name}/{stale.name}" not in saved.values():
            stale.unlink()
    record = {
        "index": index,
        "prompt": opts.prompts[index],
        "dir": dir_name,
        "files": [saved[c] for c in keep],
        "seed": opts.seed,
        "settings": opts.settings(),
        "candidates": [
            {
                "candidate": c,
                "seed": seeds[c],
                "file": saved.get(c),
                "scores": None if scores[c] is None else scores[c].as_dict(),
            }
            for c in range(len(seeds))
        ],
    }
    atomic_write_json(folder / RECORD, record)
    return record


def _batches(items: Sequence[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def _forget(opts: GenerateOptions, indices: Sequence[int]) -> None:
    """Unmark prompts about to be redone, so an interruption cannot leave an old record
    vouching for new, partly written images."""
    for index in indices:
        (opts.out / prompt_dir_name(index, len(opts.prompts)) / RECORD).unlink(missing_ok=True)


def run_generation(opts: GenerateOptions, log=print) -> RunSummary:
    """Generate every unfinished prompt of this shard (see the module docstring)."""
    start = time.perf_counter()
    plan = plan_prompts(opts)
    manifest = Manifest(opts.out)
    shard = f" (shard {opts.shard[0]}/{opts.shard[1]})" if opts.shard[1] > 1 else ""
    log(f"{len(plan.todo)} prompt(s) to generate, {len(plan.finished)} already finished{shard}")
    if not plan.todo:
        if opts.out.is_dir():
            manifest.rebuild(opts.prompts)
        return RunSummary(0, len(plan.finished), 0, time.perf_counter() - start)
    opts.out.mkdir(parents=True, exist_ok=True)
    manifest.rebuild(opts.prompts, skip=plan.todo)
    _forget(opts, plan.todo)
    if opts.select == "first" and opts.parallel_size > opts.per_prompt:
        log(
            f"--select first: generating {opts.per_prompt} image(s) per prompt (the first "
            f"candidates; --select siglip|dola chooses among all {opts.parallel_size})"
        )
    try:
        images = _generate(opts, plan.todo, manifest, shard, log)
    finally:  # also on Ctrl-C: leave a sorted manifest of what is finished
        manifest.rebuild(opts.prompts)
    seconds = time.perf_counter() - start
    return RunSummary(len(plan.todo), len(plan.finished), images, seconds)


def _generate(opts: GenerateOptions, todo: list[int], manifest: Manifest, shard: str, log) -> int:
    """Load the models and generate ``todo``; returns the number of images written."""
    scorer = _load_scorer(opts)  # small, and its layer checks should fail before the 7B load
    log(f"loading {opts.source.location} ({opts.dtype}, {opts.device})")
    bundle = load_janus(
        opts.source,
        opts.device,
        opts.torch_dtype,
        converted_dir=opts.converted_dir,
        log=log,
        progress=not opts.quiet,
        plan=opts.conversion,
    )
    ids = {i: encode_prompt(bundle.tokenizer, opts.prompts[i], bundle.special) for i in todo}
    rows_per_prompt = opts.candidates * (2 if opts.sampling.guidance else 1)
    batch_size = opts.batch_prompts or auto_batch_prompts(
        bundle, rows_per_prompt, max(len(v) for v in ids.values())
    )
    images_written = 0
    with tqdm(total=len(todo), unit="prompt", desc=f"generate{shard}", disable=opts.quiet) as bar:
        for batch in _batches(todo, batch_size):
            seeds = {
                i: [candidate_seed(opts.seed, i, c) for c in range(opts.candidates)] for i in batch
            }
            rows = [ImageRow(ids[i], s) for i in batch for s in seeds[i]]
            tokens = generate_image_tokens(bundle.model, rows, opts.sampling, bundle.special)
            for position, index in enumerate(batch):
                part = tokens[position * opts.candidates : (position + 1) * opts.candidates]
                images = decode_images(bundle.model, part)
                scores: list[CandidateScore | None] = [None] * len(images)
                if scorer is not None:
                    scores = list(
                        scorer.score(images, opts.prompts[index], _negatives_for(opts, index))
                    )
                record = _write_prompt(opts, index, images, seeds[index], scores)
                manifest.append(record)
                images_written += len(record["files"])
                bar.update(1)
    return images_written
