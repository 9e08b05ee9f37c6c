"""DeepSeek's reference text-to-image loop, one prompt at a time, over the HF Janus modules.

A faithful port of the loop in DeepSeek's ``generation_inference.py``: ``parallel_size``
interleaved (conditional, unconditional) row pairs of one prompt, no padding, one random
stream for every row (``torch.multinomial``), transformers' own dynamic KV cache. It is the
yardstick (a test oracle, not shipped) for the equivalence tests and
``benchmarks/bench_generate.py``; the runner uses :mod:`siglip_dola.generate.sampling`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

__all__ = ["reference_image_tokens"]


@torch.no_grad()
def reference_image_tokens(
    model,
    input_ids: Sequence[int],
    pad_id: int,
    parallel_size: int = 16,
    cfg_weight: float = 5.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Image tokens [parallel_size, T] for one prompt; ``temperature == 0`` is greedy."""
    inner = model.model
    device = next(model.parameters()).device
    ids = torch.tensor(list(input_ids), dtype=torch.long, device=device)
    tokens = ids.repeat(parallel_size * 2, 1)
    tokens[1::2, 1:-1] = pad_id  # odd rows are unconditional: BOS + pads + <begin_of_image>
    inputs_embeds = model.get_input_embeddings()(tokens)
    height, width = inner.vqmodel.quantize.quant_state_dims
    steps = int(height) * int(width)
    generated = torch.zeros((parallel_size, steps), dtype=torch.long, device=device)
    # DeepSeek passes past_key_values, which transformers 5.x renamed to cache.
    parameters = inspect.signature(inner.language_model.forward).parameters
    cache_name = "cache" if "cache" in parameters else "past_key_values"
    past = None
    for step in range(steps):
        out = inner.language_model(
            inputs_embeds=inputs_embeds, use_cache=True, **{cache_name: past}
        )
        past = out[cache_name]
        logits = inner.generation_head(out.last_hidden_state[:, -1, :])
        cond, uncond = logits[0::2, :], logits[1::2, :]
        logits = uncond + cfg_weight * (cond - uncond)
        if temperature == 0:
            next_token = logits.argmax(dim=-1, keepdim=True)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            next_token = torch.multinomial(probs, num_samples=1, generator=generator)
        generated[:, step] = next_token.squeeze(-1)
        next_token = torch.cat([next_token, next_token], dim=1).view(-1)
        inputs_embeds = model.prepare_embeddings_for_image_generation(next_token).unsqueeze(1)
    return generated
