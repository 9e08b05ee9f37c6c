"""DeepSeek-format Janus checkpoints -> HF format: names, shapes, logits, tokens."""

from __future__ import annotations

import json

import pytest
import torch
from _tiny_janus import (
    SENTENCES,
    build_tiny_janus,
    generate_argv,
    output_files,
    read_manifest,
    save_tiny_janus,
    special_ids,
    write_deepseek_layout,
    write_prompts,
)
from safetensors.torch import load_file, save_file

from siglip_dola.cli import main
from siglip_dola.generate.convert import (
    ATTN_POOL_FILE,
    ConversionError,
    convert_checkpoint,
    convert_tensors,
    dtype_argument,
    map_key,
)
from siglip_dola.generate.sampling import (
    ImageRow,
    SamplingConfig,
    SpecialTokens,
    encode_prompt,
    generate_image_tokens,
)


@pytest.fixture(scope="module")
def original():
    return build_tiny_janus(seed=3)


@pytest.fixture(scope="module")
def deepseek_dir(original, tmp_path_factory):
    model, tokenizer = original
    return write_deepseek_layout(model, tokenizer, tmp_path_factory.mktemp("ds") / "Janus-Pro")


@pytest.fixture(scope="module")
def converted(deepseek_dir, tmp_path_factory):
    from transformers import JanusForConditionalGeneration

    out = convert_checkpoint(deepseek_dir, tmp_path_factory.mktemp("conv") / "hf")
    kwargs = {dtype_argument(): torch.float32}
    return out, JanusForConditionalGeneration.from_pretrained(out, **kwargs).eval()


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("deepseek", "hf"),
    [
        (
            "language_model.model.layers.3.self_attn.q_proj.weight",
            "model.language_model.layers.3.self_attn.q_proj.weight",
        ),
        ("language_model.lm_head.weight", "lm_head.weight"),
        (
            "vision_model.vision_tower.blocks.7.attn.proj.bias",
            "model.vision_model.encoder.layers.7.self_attn.projection_layer.bias",
        ),
        (
            "vision_model.vision_tower.blocks.0.norm2.weight",
            "model.vision_model.encoder.layers.0.layer_norm2.weight",
        ),
        ("vision_model.vision_tower.norm.bias", "model.vision_model.post_layernorm.bias"),
        ("aligner.layers.0.weight", "model.aligner.fc1.weight"),
        ("aligner.layers.2.bias", "model.aligner.hidden_layers.0.bias"),
        ("aligner.layers.4.bias", "model.aligner.hidden_layers.1.bias"),
        ("gen_aligner.layers.2.weight", "model.generation_aligner.hidden_layers.0.weight"),
        ("gen_head.output_mlp_projector.weight", "model.generation_head.proj_out.weight"),
        ("gen_embed.weight", "model.generation_embeddings.weight"),
        (
            "gen_vision_model.encoder.conv_blocks.2.res.1.norm1.weight",
            "model.vqmodel.encoder.down.2.block.1.norm1.weight",
        ),
        (
            "gen_vision_model.decoder.conv_blocks.0.attn.2.q.weight",
            "model.vqmodel.decoder.up.0.attn.2.q.weight",
        ),
        (
            "gen_vision_model.decoder.conv_blocks.3.upsample.conv.bias",
            "model.vqmodel.decoder.up.3.upsample.conv.bias",
        ),
        (
            "gen_vision_model.encoder.mid.1.proj_out.weight",
            "model.vqmodel.encoder.mid.attn_1.proj_out.weight",
        ),
        ("gen_vision_model.quantize.embedding.weight", "model.vqmodel.quantize.embedding.weight"),
        ("gen_vision_model.quantize.codebook_used", None),
        ("vision_model.vision_tower.attn_pool.latent", None),
    ],
)
def test_key_mapping(deepseek, hf):
    assert map_key(deepseek) == hf


def test_fused_qkv_is_split_and_pos_embed_squeezed():
    qkv = torch.arange(12.0).view(6, 2)
    out = convert_tensors("vision_model.vision_tower.blocks.1.attn.qkv.weight", qkv)
    prefix = "model.vision_model.encoder.layers.1.self_attn."
    assert torch.equal(out[prefix + "q_proj.weight"], qkv[:2])
    assert torch.equal(out[prefix + "k_proj.weight"], qkv[2:4])
    assert torch.equal(out[prefix + "v_proj.weight"], qkv[4:])
    pos = convert_tensors("vision_model.vision_tower.pos_embed", torch.zeros(1, 4, 3))
    assert pos["model.vision_model.embeddings.position_embedding.weight"].shape == (4, 3)


def test_unknown_key_is_an_error():
    with pytest.raises(ConversionError, match="unknown key 'mystery.weight'"):
        map_key("mystery.weight")


# ----------------------------------------------------------------------------- round trip


def test_conversion_restores_every_weight(original, converted):
    model, _ = original
    _, loaded = converted
    expected, got = model.state_dict(), loaded.state_dict()
    assert set(expected) == set(got)
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key


def test_converted_model_gives_the_same_logits_and_tokens(original, converted):
    model, tokenizer = original
    _, loaded = converted
    ids = special_ids(tokenizer)
    special = SpecialTokens(bos=ids["bos"], pad=ids["pad"], boi=ids["boi"])
    prompt = encode_prompt(tokenizer, SENTENCES[1], special)
    x = torch.tensor([prompt])
    with torch.no_grad():
        ref, got = model(input_ids=x), loaded(input_ids=x)
        assert torch.equal(ref.logits, got.logits)  # text head
        hidden = model.model(input_ids=x).last_hidden_state
        assert torch.equal(
            model.model.generation_head(hidden), loaded.model.generation_head(hidden)
        )
    rows = [ImageRow(prompt, 4), ImageRow(prompt, 5)]
    for config in (SamplingConfig(temperature=0), SamplingConfig()):
        assert torch.equal(
            generate_image_tokens(model, rows, config, special),
            generate_image_tokens(loaded, rows, config, special),
        )


def test_conversion_writes_safetensors_shards_index_and_pooling_head(
    original, converted, deepseek_dir
):
    out, _ = converted
    ids = special_ids(original[1])
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == 3 and all(s.endswith(".safetensors") for s in shards)
    assert (out / "tokenizer.json").is_file()
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["generation_kwargs"]["boi_token_id"] == ids["boi"]
    assert (gen["pad_token_id"], gen["bos_token_id"]) == (ids["pad"], ids["bos"])
    pool = load_file(str(out / ATTN_POOL_FILE))
    source = torch.load(deepseek_dir / "pytorch_model-00001-of-00003.bin", weights_only=True)
    source.update(torch.load(deepseek_dir / "pytorch_model-00002-of-00003.bin", weights_only=True))
    source.update(torch.load(deepseek_dir / "pytorch_model-00003-of-00003.bin", weights_only=True))
    vt = "vision_model.vision_tower."
    head = {k[len(vt) :]: v for k, v in source.items() if k.startswith(vt + "attn_pool.")}
    assert "attn_pool.latent" in head and "attn_pool.kv.weight" in head
    assert sorted(pool) == sorted(head)
    assert all(torch.equal(pool[k], head[k]) for k in head)


def test_single_safetensors_source(original, tmp_path):
    model, tokenizer = original
    folder = write_deepseek_layout(model, tokenizer, tmp_path / "ds", shards=1)
    state = torch.load(folder / "pytorch_model-00001-of-00001.bin", weights_only=True)
    for path in folder.glob("pytorch_model*"):
        path.unlink()
    save_file(state, str(folder / "model.safetensors"))
    out = convert_checkpoint(folder, tmp_path / "hf")
    weights = {}
    for shard in out.glob("model-*.safetensors"):
        weights.update(load_file(str(shard)))
    assert torch.equal(weights["lm_head.weight"], model.lm_head.weight)


def test_missing_keys_are_named(original, tmp_path):
    model, tokenizer = original
    drop = ("language_model.model.layers.1.mlp.up_proj.weight", "gen_embed.weight")
    folder = write_deepseek_layout(model, tokenizer, tmp_path / "ds", drop=drop)
    with pytest.raises(ConversionError) as info:
        convert_checkpoint(folder, tmp_path / "hf")
    message = str(info.value)
    assert "missing 2 tensor(s)" in message
    assert all(key in message for key in drop)
    assert not (tmp_path / "hf").exists()


# ----------------------------------------------------------------------------- command line


def test_janus_convert_command(deepseek_dir, tmp_path, capsys):
    dst = tmp_path / "hf"
    assert main(["janus-convert", str(deepseek_dir), str(dst), "--quiet"]) == 0
    assert (dst / "model.safetensors.index.json").is_file()
    assert main(["janus-convert", str(deepseek_dir), str(dst), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0] and "--overwrite" in err[0]
    assert (
        main(
            [
                "janus-convert",
                str(deepseek_dir),
                str(dst),
                "--overwrite",
                "--quiet",
                "--dtype",
                "bfloat16",
            ]
        )
        == 0
    )
    weights = load_file(str(next(dst.glob("model-*.safetensors"))))
    assert all(t.dtype == torch.bfloat16 for t in weights.values() if t.is_floating_point())
    assert not list(tmp_path.glob(".hf.*"))  # no temporary folders left behind


def test_generate_from_a_deepseek_folder_equals_the_hf_folder(tmp_path):
    # The same weights once as an HF folder and once in DeepSeek's layout.
    model, tokenizer = build_tiny_janus(seed=0)
    hf_dir = save_tiny_janus(tmp_path / "hf", seed=0)
    ds_dir = write_deepseek_layout(model, tokenizer, tmp_path / "ds")
    prompts = write_prompts(tmp_path / "p.json", SENTENCES[:2])
    args = ("--parallel-size", "2", "--per-prompt", "2")
    assert main(generate_argv(prompts, tmp_path / "a", hf_dir, *args)) == 0
    assert (
        main(
            generate_argv(
                prompts, tmp_path / "b", ds_dir, *args, "--converted-dir", str(tmp_path / "conv")
            )
        )
        == 0
    )
    assert (tmp_path / "conv" / "janus_conversion.json").is_file()
    a, b = output_files(tmp_path / "a"), output_files(tmp_path / "b")
    images = [k for k in a if k.endswith(".jpg")]
    assert len(images) == 4 and all(a[k] == b[k] for k in images)
    models = [r["settings"]["model"] for r in read_manifest(tmp_path / "b")]
    assert models == [str(ds_dir.resolve())] * 2
