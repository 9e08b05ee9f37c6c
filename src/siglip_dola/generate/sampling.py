"""Janus-Pro image-token sampling: DeepSeek's recipe, batched across prompts.

DeepSeek's reference loop (``generation_inference.py`` in their repository) decodes one prompt
at a time: the prompt ``<|User|>: {p}\\n\\n<|Assistant|>:<begin_of_image>`` is repeated as
conditional / unconditional pairs (the unconditional row keeps BOS and ``<begin_of_image>``
and pads the rest), each step mixes ``uncond + w * (cond - uncond)``, divides by the
temperature and draws from the full softmax. This module does the same over the HF Janus
modules (``model.model.language_model``, ``generation_head``, ``generation_embeddings`` +
``generation_aligner``) for many prompts at once: rows are left-padded to one length with an
attention mask and explicit positions, and one KV cache serves the whole batch.

Every image (row) draws its random numbers from its own seeded stream, so an image depends
only on its seed, its prompt and the settings, never on what else shares the batch.
Sampling uses the inverse CDF of the same distribution ``torch.multinomial`` draws from.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "ImageRow",
    "SamplingConfig",
    "SpecialTokens",
    "candidate_seed",
    "decode_images",
    "encode_prompt",
    "format_prompt",
    "generate_image_tokens",
    "image_token_count",
    "left_pad",
    "pick_tokens",
    "to_uint8",
    "unconditional_ids",
]

USER_TAG, ASSISTANT_TAG, IMAGE_START_TAG = "<|User|>", "<|Assistant|>", "<begin_of_image>"


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids the CFG rows need."""

    bos: int
    pad: int
    boi: int


@dataclass(frozen=True)
class SamplingConfig:
    """How each next image token is chosen.

    ``temperature == 0`` is greedy decoding. ``top_k == 0`` keeps the full softmax
    (DeepSeek's default). ``guidance=False`` drops the unconditional rows and samples from
    the conditional logits alone (``cfg_weight`` is then unused).
    """

    cfg_weight: float = 5.0
    temperature: float = 1.0
    top_k: int = 0
    guidance: bool = True

    def __post_init__(self) -> None:
        if not np.isfinite(self.cfg_weight):
            raise ValueError(f"cfg weight must be a finite number, got {self.cfg_weight}")
        if not (np.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top-k must be >= 0 (0 = off), got {self.top_k}")


@dataclass(frozen=True)
class ImageRow:
    """One image to sample: its prompt's token ids and its own random seed."""

    input_ids: tuple[int, ...]
    seed: int


# ----------------------------------------------------------------------------- prompts


def format_prompt(prompt: str) -> str:
    """DeepSeek's text-to-image prompt (SFT format, empty system prompt) + image start tag.

    DeepSeek's template strips each message (``apply_sft_template_for_multi_turn_prompts``),
    so ``"  A dog. \\n"`` gives the same prompt, hence the same image, as ``"A dog."``.
    """
    return f"{USER_TAG}: {prompt.strip()}\n\n{ASSISTANT_TAG}:{IMAGE_START_TAG}"


def encode_prompt(tokenizer, prompt: str, special: SpecialTokens) -> tuple[int, ...]:
    """Token ids of :func:`format_prompt`, starting with BOS and ending with the image start."""
    ids = list(tokenizer(format_prompt(prompt), add_special_tokens=True)["input_ids"])
    if not ids or ids[0] != special.bos:
        ids.insert(0, special.bos)  # some tokenizer configs do not add BOS themselves
    if ids[-1] != special.boi:
        raise ValueError(
            f"the tokenizer does not encode {IMAGE_START_TAG} as the single token {special.boi}"
        )
    return tuple(ids)


def unconditional_ids(ids: Sequence[int], pad: int) -> tuple[int, ...]:
    """The CFG row: BOS and ``<begin_of_image>`` kept, everything between padded."""
    return (ids[0], *([pad] * (len(ids) - 2)), ids[-1])


def candidate_seed(seed: int, prompt_index: int, candidate: int) -> int:
    """A 63-bit seed for one image, from (run seed, prompt index, candidate number) only."""
    digest = hashlib.blake2b(f"{seed}:{prompt_index}:{candidate}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1


def left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids [R, L] and the attention mask (0 on padding)."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, length - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, length - len(row) :] = 1
    return ids, mask


# ----------------------------------------------------------------------------- sampling


def _uniforms(seeds: Sequence[int], steps: int, device: torch.device) -> torch.Tensor:
    """[R, steps] float64 uniforms, row r from its own generator seeded with ``seeds[r]``."""
    rows = [
        torch.rand(steps, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
        for s in seeds
    ]
    return torch.stack(rows).to(device)


def pick_tokens(
    logits: torch.Tensor, uniforms: torch.Tensor, config: SamplingConfig
) -> torch.Tensor:
    """Next tokens [R] from mixed logits [R, V] and one uniform per row [R].

    Inverse-CDF sampling: the smallest token whose cumulative probability exceeds u, i.e. a
    draw from softmax(logits / temperature), as ``torch.multinomial`` would make.
    """
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / config.temperature
    if config.top_k:
        kth = torch.topk(logits, min(config.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    cdf = torch.softmax(logits, dim=-1).double().cumsum(dim=-1)
    targets = (uniforms * cdf[:, -1]).unsqueeze(-1)
    tokens = torch.searchsorted(cdf, targets, right=True).squeeze(-1)
    return tokens.clamp_(max=logits.shape[-1] - 1)


def image_token_count(model) -> int:
    """Image tokens per image: the VQ model's latent grid (24 x 24 = 576 for Janus-Pro)."""
    height, width = model.model.vqmodel.quantize.quant_state_dims
    return int(height) * int(width)


def _mix(logits: torch.Tensor, rows: int, config: SamplingConfig) -> torch.Tensor:
    """CFG: uncond + w (cond - uncond), conditional rows first."""
    if not config.guidance:
        return logits
    cond, uncond = logits[:rows], logits[rows:]
    return uncond + config.cfg_weight * (cond - uncond)


def _kv_cache(model, capacity: int):
    """A KV cache that preallocates ``capacity`` positions and hands attention only the filled
    part: no per-step concatenation (DynamicCache) and no attention over empty slots
    (StaticCache). ``None`` (transformers' own dynamic cache) where the cache API differs."""
    try:
        from transformers.cache_utils import Cache, DynamicLayer
    except ImportError:  # pragma: no cover - transformers without the layered cache API
        return None

    class PreallocatedLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:  # lazy_initialization's signature varies by version
                self.dtype, self.device = key_states.dtype, key_states.device
                self.is_initialized = True
                shape = (*key_states.shape[:2], capacity, key_states.shape[-1])
                self._key_buffer = key_states.new_empty(shape)
                self._value_buffer = value_states.new_empty((*shape[:3], value_states.shape[-1]))
                self._filled = 0
            start, self._filled = self._filled, self._filled + key_states.shape[-2]
            self._key_buffer[:, :, start : self._filled] = key_states
            self._value_buffer[:, :, start : self._filled] = value_states
            self.keys = self._key_buffer[:, :, : self._filled]
            self.values = self._value_buffer[:, :, : self._filled]
            return self.keys, self.values

    layers = model.config.text_config.num_hidden_layers
    try:
        return Cache(layers=[PreallocatedLayer() for _ in range(layers)])
    except TypeError:  # pragma: no cover - an older Cache signature
        return None


class _DecoderCall:
    """One language-model step over a KV cache, in the argument names of the transformers at
    hand: the cache goes in as ``cache`` (5.x) or ``past_key_values`` (4.x, deprecated in 5.x),
    ``cache_position`` only where the model still takes it."""

    def __init__(self, lm, cache, capacity: int, device: torch.device) -> None:
        parameters = inspect.signature(lm.forward).parameters
        self.lm = lm
        self.cache = cache
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.positions = (
            torch.arange(capacity, device=device) if "cache_position" in parameters else None
        )

    def __call__(
        self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, start: int
    ) -> torch.Tensor:
        """Last hidden state [R, D] after feeding ``embeds`` [R, L, D] at cache slot ``start``."""
        extra = {self.cache_argument: self.cache}
        if self.positions is not None:
            extra["cache_position"] = self.positions[start : start + embeds.shape[1]]
        out = self.lm(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **extra,
        )
        if self.cache is None:  # transformers made its own cache: keep it for the next step
            self.cache = out[self.cache_argument]
        return out.last_hidden_state[:, -1, :]


@torch.no_grad()
def generate_image_tokens(
    model,
    rows: Sequence[ImageRow],
    config: SamplingConfig,
    special: SpecialTokens,
) -> torch.Tensor:
    """Image tokens [R, T] for each row, decoded together with one KV cache.

    ``model`` is a transformers ``JanusForConditionalGeneration``. Rows may come from
    different prompts (any lengths); each row's tokens depend only on its ids, its seed and
    ``config``.
    """
    if not rows:
        raise ValueError("no rows to generate")
    inner = model.model
    lm = inner.language_model
    device = next(model.parameters()).device
    steps = image_token_count(model)
    batch = len(rows)

    prompts = [list(r.input_ids) for r in rows]
    if config.guidance:
        prompts += [list(unconditional_ids(p, special.pad)) for p in prompts]
    ids, prompt_mask = left_pad(prompts, special.pad)
    length = ids.shape[1]
    ids = ids.to(device)
    # The whole run's attention mask, allocated once: the prompt's, then ones for the image
    # tokens; each step passes the filled part.
    mask = torch.ones((ids.shape[0], length + steps), dtype=torch.long, device=device)
    mask[:, :length] = prompt_mask
    positions = (mask[:, :length].cumsum(-1) - 1).clamp_(min=0)
    uniforms = _uniforms([r.seed for r in rows], steps, device)
    tokens = torch.zeros((batch, steps), dtype=torch.long, device=device)

    embeds = model.get_input_embeddings()(ids)
    call = _DecoderCall(lm, _kv_cache(model, length + steps), length + steps, device)
    hidden = call(embeds, mask[:, :length], positions, 0)
    for step in range(steps):
        logits = _mix(inner.generation_head(hidden).float(), batch, config)
        next_tokens = pick_tokens(logits, uniforms[:, step], config)
        tokens[:, step] = next_tokens
        if step == steps - 1:
            break
        if config.guidance:
            next_tokens = torch.cat([next_tokens, next_tokens])
        embeds = inner.generation_aligner(inner.generation_embeddings(next_tokens)).unsqueeze(1)
        positions = positions[:, -1:] + 1
        hidden = call(embeds, mask[:, : length + step + 1], positions, length + step)
    return tokens


# ----------------------------------------------------------------------------- pixels


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """VQ decoder output [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3], as DeepSeek does
    (scale, clip, truncate)."""
    array = pixels.detach().float().permute(0, 2, 3, 1).cpu().numpy()
    return np.clip((array + 1) / 2 * 255, 0, 255).astype(np.uint8)


@torch.no_grad()
def decode_images(model, tokens: torch.Tensor, chunk: int = 8) -> np.ndarray:
    """uint8 images [N, H, W, 3] from image tokens [N, T], ``chunk`` images per VQ call."""
    vq = model.model.vqmodel
    device = next(vq.parameters()).device
    parts = [
        to_uint8(vq.decode(tokens[i : i + chunk].to(device)))
        for i in range(0, tokens.shape[0], chunk)
    ]
    return np.concatenate(parts)
