"""Our Janus decode loop against transformers' generate and DeepSeek's reference loop."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _deepseek_reference import reference_image_tokens
from _tiny_janus import SENTENCES, build_tiny_janus, build_tokenizer, special_ids

from siglip_dola.generate.backend import special_tokens
from siglip_dola.generate.convert import DEEPSEEK_PAD_TAG, cfg_pad_token_id
from siglip_dola.generate.sampling import (
    ImageRow,
    SamplingConfig,
    SpecialTokens,
    _kv_cache,
    candidate_seed,
    decode_images,
    encode_prompt,
    format_prompt,
    generate_image_tokens,
    left_pad,
    pick_tokens,
    to_uint8,
    unconditional_ids,
)

GREEDY = SamplingConfig(cfg_weight=5.0, temperature=0.0)


@pytest.fixture(scope="module")
def janus():
    model, tokenizer = build_tiny_janus()
    ids = special_ids(tokenizer)
    special = SpecialTokens(bos=ids["bos"], pad=ids["pad"], boi=ids["boi"])
    prompts = [encode_prompt(tokenizer, p, special) for p in SENTENCES[:4]]
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    return model, special, prompts


def hf_generate(model, ids: torch.Tensor, mask: torch.Tensor, cfg: float = 5.0) -> torch.Tensor:
    # top_k=0 switches off transformers' global default of 50 (SPEC section 9).
    return model.generate(
        ids,
        attention_mask=mask,
        generation_mode="image",
        do_sample=False,
        guidance_scale=cfg,
        top_k=0,
    )


# ----------------------------------------------------------------------------- prompts


def test_prompt_format_is_deepseeks():
    assert format_prompt("a cat") == "<|User|>: a cat\n\n<|Assistant|>:<begin_of_image>"


def test_prompt_is_stripped_as_deepseek_does(janus):
    # DeepSeek's apply_sft_template_for_multi_turn_prompts strips each message.
    assert format_prompt("  A dog. \n") == format_prompt("A dog.")
    assert format_prompt("\tA dog.\u3000") == "<|User|>: A dog.\n\n<|Assistant|>:<begin_of_image>"
    assert format_prompt("a\n\nb") == "<|User|>: a\n\nb\n\n<|Assistant|>:<begin_of_image>"
    model, special, _ = janus
    tokenizer = build_tokenizer()
    assert encode_prompt(tokenizer, f"  {SENTENCES[0]} \n", special) == encode_prompt(
        tokenizer, SENTENCES[0], special
    )


def test_encoded_prompt_starts_with_bos_and_ends_with_image_start(janus):
    _, special, prompts = janus
    for ids in prompts:
        assert ids[0] == special.bos and ids[-1] == special.boi
        assert special.boi not in ids[:-1]


def test_cfg_pad_token_is_deepseeks_where_the_vocabulary_has_it():
    plain = build_tokenizer()
    tagged = build_tokenizer((DEEPSEEK_PAD_TAG,))
    tag = tagged.convert_tokens_to_ids(DEEPSEEK_PAD_TAG)
    assert tag != tagged.pad_token_id
    assert cfg_pad_token_id(tagged) == tag  # DeepSeek pads with its tag, whatever pad_token says
    assert cfg_pad_token_id(plain) == plain.pad_token_id
    plain.pad_token = None
    assert cfg_pad_token_id(plain) is None

    class Generation:
        pad_token_id = 7

    assert cfg_pad_token_id(plain, Generation()) == 7


def test_cfg_rows_padded_with_deepseeks_pad_token_equal_deepseeks_loop():
    model, tokenizer = build_tiny_janus(seed=4, extra_specials=(DEEPSEEK_PAD_TAG,))
    special = special_tokens(tokenizer, model.generation_config)
    tag = tokenizer.convert_tokens_to_ids(DEEPSEEK_PAD_TAG)
    assert special.pad == tag
    ids = encode_prompt(tokenizer, SENTENCES[2], special)
    ours = generate_image_tokens(model, [ImageRow(ids, 0)], GREEDY, special)
    deepseek = reference_image_tokens(model, ids, tag, parallel_size=1, temperature=0)
    assert torch.equal(ours, deepseek)
    other_pad = reference_image_tokens(
        model, ids, tokenizer.pad_token_id, parallel_size=1, temperature=0
    )
    assert not torch.equal(ours, other_pad)  # the pad token of the CFG rows matters


def test_unconditional_row_keeps_only_bos_and_image_start():
    assert unconditional_ids((0, 9, 8, 7, 3), pad=2) == (0, 2, 2, 2, 3)


def test_left_pad_masks_padding():
    ids, mask = left_pad([(5, 6, 7), (8,)], pad=2)
    assert ids.tolist() == [[5, 6, 7], [2, 2, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_candidate_seeds_are_stable_and_distinct():
    seeds = {candidate_seed(0, i, j) for i in range(20) for j in range(20)}
    assert len(seeds) == 400
    assert candidate_seed(3, 1, 2) == candidate_seed(3, 1, 2)
    assert candidate_seed(3, 1, 2) != candidate_seed(4, 1, 2)
    assert all(0 <= s < 2**63 for s in seeds)


# ----------------------------------------------------------------------------- token choice


def test_pick_tokens_inverse_cdf_on_a_known_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]])).repeat(4, 1)
    u = torch.tensor([0.0, 0.49, 0.6, 0.99], dtype=torch.float64)
    assert pick_tokens(logits, u, SamplingConfig()).tolist() == [0, 0, 1, 2]


def test_pick_tokens_frequencies_follow_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    n = 20000
    u = torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for temperature in (1.0, 0.5):
        tokens = pick_tokens(logits.expand(n, -1), u, SamplingConfig(temperature=temperature))
        freq = torch.bincount(tokens, minlength=4).double() / n
        expected = torch.softmax(logits[0].double() / temperature, dim=-1)
        assert torch.allclose(freq, expected, atol=0.015)


def test_top_k_and_greedy():
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0]]).repeat(200, 1)
    u = torch.rand(200, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    top2 = pick_tokens(logits, u, SamplingConfig(top_k=2))
    assert set(top2.tolist()) == {1, 2}
    assert set(pick_tokens(logits, u, SamplingConfig(top_k=1)).tolist()) == {1}
    assert set(pick_tokens(logits, u, SamplingConfig(temperature=0)).tolist()) == {1}


@pytest.mark.parametrize(
    "bad", [dict(temperature=-1.0), dict(top_k=-2), dict(cfg_weight=float("nan"))]
)
def test_sampling_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        SamplingConfig(**bad)


# ----------------------------------------------------------------------------- equivalences


def test_decode_loop_equals_transformers_generate_greedy(janus):
    model, special, prompts = janus
    for ids in prompts:
        x = torch.tensor([ids])
        expected = hf_generate(model, x, torch.ones_like(x))
        ours = generate_image_tokens(model, [ImageRow(ids, 0)], GREEDY, special)
        assert torch.equal(ours, expected)
    # transformers on the left-padded batch, ours on the same prompts
    x, mask = left_pad(prompts, special.pad)
    expected = hf_generate(model, x, mask)
    ours = generate_image_tokens(model, [ImageRow(p, 0) for p in prompts], GREEDY, special)
    assert torch.equal(ours, expected)
    assert len({tuple(r) for r in ours.tolist()}) == len(prompts)  # prompts matter


def test_decode_loop_uses_the_supported_cache_api(janus):
    """No deprecated argument (transformers 5.x: past_key_values -> cache)."""
    model, special, prompts = janus
    rows = [ImageRow(prompts[0], 1), ImageRow(prompts[1], 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        tokens = generate_image_tokens(model, rows, SamplingConfig(), special)
    assert tokens.shape == (2, 16)
    import transformers.cache_utils

    if hasattr(transformers.cache_utils, "DynamicLayer"):  # the layered cache API (4.56+)
        assert _kv_cache(model, 8) is not None  # our preallocated cache, not a fallback


def test_decode_loop_equals_deepseek_reference_loop_greedy(janus):
    model, special, prompts = janus
    for ids in prompts[:2]:
        expected = reference_image_tokens(
            model, ids, special.pad, parallel_size=2, cfg_weight=5.0, temperature=0
        )
        ours = generate_image_tokens(model, [ImageRow(ids, 0), ImageRow(ids, 1)], GREEDY, special)
        assert torch.equal(ours, expected)


@pytest.mark.parametrize(
    "config", [GREEDY, SamplingConfig(cfg_weight=3.0, top_k=1)], ids=["temperature0", "top_k1"]
)
def test_batched_greedy_equals_one_prompt_at_a_time(janus, config):
    model, special, prompts = janus
    rows = [ImageRow(p, 11 * i) for i, p in enumerate(prompts)]
    batched = generate_image_tokens(model, rows, config, special)
    single = torch.cat([generate_image_tokens(model, [r], config, special) for r in rows])
    assert torch.equal(batched, single)


def test_sampled_images_do_not_depend_on_the_batch(janus):
    model, special, prompts = janus
    config = SamplingConfig(cfg_weight=5.0, temperature=1.0)
    rows = [ImageRow(p, candidate_seed(0, i, j)) for i, p in enumerate(prompts) for j in range(2)]
    together = generate_image_tokens(model, rows, config, special)
    reordered = generate_image_tokens(model, rows[::-1], config, special).flip(0)
    alone = torch.cat([generate_image_tokens(model, [r], config, special) for r in rows])
    assert torch.equal(together, alone) and torch.equal(together, reordered)
    # different seeds give different images of the same prompt
    assert not torch.equal(together[0], together[1])


def test_cfg_weight_one_equals_conditional_only_sampling(janus):
    model, special, prompts = janus
    rows = [ImageRow(p, candidate_seed(5, i, 0)) for i, p in enumerate(prompts)]
    weight_one = generate_image_tokens(model, rows, SamplingConfig(cfg_weight=1.0), special)
    conditional = generate_image_tokens(model, rows, SamplingConfig(guidance=False), special)
    assert torch.equal(weight_one, conditional)
    guided = generate_image_tokens(model, rows, SamplingConfig(cfg_weight=5.0), special)
    assert not torch.equal(guided, conditional)  # guidance does change the images


# ----------------------------------------------------------------------------- pixels


def test_to_uint8_maps_minus_one_to_one_onto_0_to_255():
    pixels = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    out = to_uint8(pixels)
    assert out.dtype == np.uint8 and out.shape == (1, 1, 6, 3)
    assert out[0, 0, :, 0].tolist() == [0, 0, 127, 254, 255, 255]


def test_decode_images_gives_rgb_uint8(janus):
    model, special, prompts = janus
    tokens = generate_image_tokens(model, [ImageRow(prompts[0], 1)], SamplingConfig(), special)
    images = decode_images(model, torch.cat([tokens, tokens]), chunk=1)
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
    assert np.array_equal(images[0], images[1])
    assert images.std() > 0
