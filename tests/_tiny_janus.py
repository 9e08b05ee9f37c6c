"""Tiny random-init Janus models for the generation tests (plain helpers, not a conftest).

``save_tiny_janus`` writes an HF-format folder (transformers' Janus classes, a BPE tokenizer
trained offline on a few sentences); ``write_deepseek_layout`` writes the same weights the
way DeepSeek's own ``MultiModalityCausalLM`` names them (fused qkv, [1, N, D] position
embedding, ``.bin`` shards + index json), spelled out here independently of the converter so
a mapping mistake there cannot cancel out. ``save_tiny_siglip`` is a SigLIP scorer.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import torch

torch.set_num_threads(1)  # two busy cores: tiny models gain nothing from more threads

SENTENCES = [
    "a photo of a cat sitting on a red chair",
    "a painting of a lighthouse at night",
    "a bowl of fruit on a wooden table",
    "two dogs running on the beach",
    "a small house in the snowy mountains",
    "an astronaut riding a horse",
]
SPECIALS = {
    "bos": "<|begin_of_sentence|>",
    "eos": "<|end_of_sentence|>",
    "pad": "<|pad|>",
    "boi": "<begin_of_image>",
    "eoi": "<end_of_image>",
    "image": "<image_placeholder>",
}
ROLE_TOKENS = ["<|User|>", "<|Assistant|>"]
# Shared read-only fixtures live as long as the test process; tests must not modify them.
_SHARED = tempfile.TemporaryDirectory(prefix="tiny_janus_")
TEXT_HIDDEN = 64
GRID = 4  # image tokens per side: 16 tokens, 64x64 images
CODEBOOK = 64


def build_tokenizer(extra_specials: tuple[str, ...] = ()):
    """A byte-level BPE tokenizer with Janus's special tokens, as a PreTrainedTokenizerFast
    (``extra_specials``: more special tokens in the vocabulary, e.g. DeepSeek's pad tag)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIALS.values()) + ROLE_TOKENS + list(extra_specials)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(SENTENCES * 4, trainer=trainer)
    bos = SPECIALS["bos"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=SPECIALS["eos"],
        pad_token=SPECIALS["pad"],
        additional_special_tokens=[SPECIALS["boi"], SPECIALS["eoi"], SPECIALS["image"]],
    )


def special_ids(tokenizer) -> dict[str, int]:
    return {name: tokenizer.convert_tokens_to_ids(text) for name, text in SPECIALS.items()}


def tiny_config(tokenizer, grid: int = GRID, text_layers: int = 2, vision_layers: int = 1):
    """A JanusConfig with a 2-layer Llama, a 1-block vision tower and a small VQ model."""
    from transformers import JanusConfig, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig

    ids = special_ids(tokenizer)
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=128,
        num_hidden_layers=text_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )
    vision = JanusVisionConfig(
        hidden_size=32,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        image_size=16 * grid,
        patch_size=16,
        projection_dim=TEXT_HIDDEN,
        depth=2,
        num_image_tokens=grid * grid,
    )
    vq = JanusVQVAEConfig(
        embed_dim=8,
        num_embeddings=CODEBOOK,
        latent_channels=32,
        base_channels=32,
        channel_multiplier=[1, 1, 2, 2, 4],
        num_res_blocks=1,
        projection_dim=TEXT_HIDDEN,
        image_token_embed_dim=TEXT_HIDDEN,
        num_hidden_layers=2,
    )
    return JanusConfig(
        text_config=text,
        vision_config=vision,
        vq_config=vq,
        image_token_id=ids["image"],
        tie_word_embeddings=False,
    )


def build_tiny_janus(
    seed: int = 0,
    grid: int = GRID,
    text_layers: int = 2,
    vision_layers: int = 1,
    extra_specials: tuple[str, ...] = (),
):
    """(model, tokenizer): a random-init JanusForConditionalGeneration in eval mode."""
    from transformers import JanusForConditionalGeneration

    tokenizer = build_tokenizer(extra_specials)
    torch.manual_seed(seed)
    config = tiny_config(tokenizer, grid, text_layers, vision_layers)
    model = JanusForConditionalGeneration(config).eval()
    spread_generation_weights(model)
    ids = special_ids(tokenizer)
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = ids["pad"], ids["bos"], ids["eos"]
    gen.generation_kwargs = {"boi_token_id": ids["boi"]}
    return model, tokenizer


def spread_generation_weights(model) -> None:
    # Default init (std 0.02) gives near-uniform image logits that hardly depend on the
    # prompt, where greedy decoding repeats one token; fan-in scaled weights give O(1) logits
    # that follow the prompt, so token-for-token comparisons mean something.
    generator = torch.Generator().manual_seed(7)
    inner = model.model
    modules = [
        inner.language_model,
        inner.generation_head,
        inner.generation_aligner,
        inner.generation_embeddings,
    ]
    with torch.no_grad():
        for module in modules:
            for param in module.parameters():
                if param.ndim == 2:
                    scale = 1.0 if module is inner.generation_embeddings else param.shape[1] ** 0.5
                    param.copy_(torch.randn(param.shape, generator=generator) / scale)


def save_tiny_janus(folder: Path, seed: int = 0, grid: int = GRID) -> Path:
    """An HF-format Janus folder: config, safetensors weights, tokenizer, generation config."""
    model, tokenizer = build_tiny_janus(seed, grid)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- DeepSeek layout


def _deepseek_vq_name(key: str) -> str:
    """HF VQ key -> DeepSeek VQ key (``model.vqmodel.`` already removed)."""
    parts = key.split(".")
    if parts[0] in ("encoder", "decoder") and parts[1] in ("down", "up"):
        rest = parts[3:]
        if rest[0] == "block":
            rest = ["res", *rest[1:]]
        return ".".join([parts[0], "conv_blocks", parts[2], *rest])
    if parts[0] in ("encoder", "decoder") and parts[1] == "mid":
        index = {"block_1": "0", "attn_1": "1", "block_2": "2"}[parts[2]]
        return ".".join([parts[0], "mid", index, *parts[3:]])
    return key


def deepseek_state_dict(model, attn_pool: bool = True) -> dict[str, torch.Tensor]:
    """The model's weights under DeepSeek's names (adds the tensors HF drops)."""
    out: dict[str, torch.Tensor] = {}
    vt = "vision_model.vision_tower."
    for key, value in model.state_dict().items():
        value = value.detach().clone()
        if key == "lm_head.weight":
            out["language_model.lm_head.weight"] = value
        elif key.startswith("model.language_model."):
            out["language_model.model." + key[len("model.language_model.") :]] = value
        elif key.startswith("model.vision_model."):
            name = key[len("model.vision_model.") :]
            if name == "embeddings.patch_embedding.weight":
                out[vt + "patch_embed.proj.weight"] = value
            elif name == "embeddings.patch_embedding.bias":
                out[vt + "patch_embed.proj.bias"] = value
            elif name == "embeddings.position_embedding.weight":
                out[vt + "pos_embed"] = value.unsqueeze(0)
            elif name.startswith("post_layernorm."):
                out[vt + "norm." + name.split(".")[-1]] = value
            else:
                _, _, i, module, *rest = name.split(".")  # encoder.layers.i.<module>...
                leaf = rest[-1]
                block = f"{vt}blocks.{i}."
                if module in ("layer_norm1", "layer_norm2"):
                    out[block + f"norm{module[-1]}.{leaf}"] = value
                elif module == "mlp":
                    out[block + f"mlp.{rest[0]}.{leaf}"] = value
                elif rest[0] == "projection_layer":
                    out[block + f"attn.proj.{leaf}"] = value
                elif rest[0] in ("q_proj", "k_proj", "v_proj"):
                    out[block + f"attn.{rest[0]}.{leaf}"] = value  # fused below
        elif key.startswith("model.aligner."):
            name = key[len("model.aligner.") :]
            if name.startswith("fc1."):
                out["aligner.layers.0." + name[4:]] = value
            else:
                _, j, leaf = name.split(".")
                out[f"aligner.layers.{2 * (int(j) + 1)}.{leaf}"] = value
        elif key.startswith("model.generation_aligner."):
            name = key[len("model.generation_aligner.") :]
            layer = "0" if name.startswith("fc1.") else "2"
            out[f"gen_aligner.layers.{layer}.{name.split('.')[-1]}"] = value
        elif key.startswith("model.generation_head."):
            name = key[len("model.generation_head.") :]
            name = name.replace("proj_out.", "output_mlp_projector.")
            out["gen_head." + name] = value
        elif key.startswith("model.generation_embeddings."):
            out["gen_embed." + key.split(".")[-1]] = value
        elif key.startswith("model.vqmodel."):
            out["gen_vision_model." + _deepseek_vq_name(key[len("model.vqmodel.") :])] = value
        else:
            raise AssertionError(f"unmapped HF key {key}")
    _fuse_qkv(out, vt)
    if attn_pool:
        out.update({vt + k: v for k, v in siglip_pooling_head(model).items()})
    out["gen_vision_model.quantize.codebook_used"] = torch.zeros(65536)
    return out


def siglip_pooling_head(model) -> dict[str, torch.Tensor]:
    """A SigLIP MAP head (timm's ``attn_pool.*``) that fits the model's vision tower: the
    part of DeepSeek's tower that transformers' Janus has no place for."""
    import timm

    vision = model.config.vision_config
    generator = torch.Generator().manual_seed(5)
    with torch.device("meta"):
        tower = timm.create_model(
            "vit_large_patch16_siglip_384",
            pretrained=False,
            num_classes=0,
            embed_dim=vision.hidden_size,
            depth=1,
            num_heads=vision.num_attention_heads,
            img_size=vision.image_size,
            patch_size=vision.patch_size,
        )
    head = {}
    for name, value in tower.attn_pool.state_dict().items():
        fan_in = value[0].numel() if value.ndim >= 2 else 1
        scale = 1.0 if value.ndim < 2 else fan_in**0.5
        head["attn_pool." + name] = torch.randn(value.shape, generator=generator) / scale
    return head


def _fuse_qkv(out: dict[str, torch.Tensor], vt: str) -> None:
    for key in [k for k in out if ".attn.q_proj." in k]:
        prefix, leaf = key.split(".attn.q_proj.")
        parts = [out.pop(f"{prefix}.attn.{p}_proj.{leaf}") for p in "qkv"]
        out[f"{prefix}.attn.qkv.{leaf}"] = torch.cat(parts, dim=0)


def deepseek_config(model, vision_params: dict | None = None) -> dict:
    """DeepSeek's ``config.json`` (model_type multi_modality) for the model."""
    cfg = model.config
    text, vq = cfg.text_config, cfg.vq_config
    language = {
        k: getattr(text, k)
        for k in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
            "rms_norm_eps",
        )
    }
    language["model_type"] = "llama"
    params = {
        "image_size": cfg.vision_config.image_size,
        "model_name": "siglip_tiny_test",
        "select_feature": "same",
        "select_layer": -1,
        "heads": cfg.vision_config.num_attention_heads,
    }
    params.update(vision_params or {})
    return {
        "model_type": "multi_modality",
        "architectures": ["MultiModalityCausalLM"],
        "vision_config": {"cls": "CLIPVisionTower", "model_type": "vision", "params": params},
        "aligner_config": {
            "cls": "MlpProjector",
            "model_type": "aligner",
            "params": {
                "depth": cfg.vision_config.depth,
                "input_dim": cfg.vision_config.hidden_size,
                "n_embed": cfg.vision_config.projection_dim,
                "projector_type": "mlp_gelu",
            },
        },
        "gen_vision_config": {
            "cls": "VQ-16",
            "model_type": "gen_vision",
            "params": {"image_token_size": vq.num_embeddings, "n_embed": vq.embed_dim},
        },
        "gen_aligner_config": {
            "cls": "MlpProjector",
            "model_type": "gen_aligner",
            "params": {
                "depth": vq.num_hidden_layers,
                "input_dim": vq.embed_dim,
                "n_embed": vq.projection_dim,
                "projector_type": "mlp_gelu",
            },
        },
        "gen_head_config": {
            "cls": "vision_head",
            "model_type": "gen_head",
            "params": {
                "image_token_embed": vq.projection_dim,
                "image_token_size": vq.num_embeddings,
                "n_embed": vq.image_token_embed_dim,
            },
        },
        "language_config": language,
        "torch_dtype": "float32",
    }


def write_deepseek_layout(
    model,
    tokenizer,
    folder: Path,
    shards: int = 3,
    attn_pool: bool = True,
    drop: tuple[str, ...] = (),
) -> Path:
    """Write ``model`` as a DeepSeek-format checkpoint: ``pytorch_model-0000i-of-0000n.bin``
    shards, ``pytorch_model.bin.index.json``, ``config.json`` and the tokenizer files.
    ``drop`` removes keys (to test the missing-key error)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = deepseek_state_dict(model, attn_pool=attn_pool)
    for key in drop:
        del state[key]
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k] for k in keys[i::shards]}
        torch.save(part, folder / name)
        weight_map.update({k: name for k in part})
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    (folder / "config.json").write_text(json.dumps(deepseek_config(model), indent=2))
    tokenizer.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- SigLIP scorer


def save_tiny_siglip(folder: Path, seed: int = 0) -> Path:
    """A tiny transformers SiglipModel + offline sentencepiece SiglipTokenizer + processor."""
    from _tiny_models import save_sentencepiece_tokenizer
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipTokenizer

    save_sentencepiece_tokenizer(folder, SENTENCES, vocab_size=80)
    tokenizer = SiglipTokenizer.from_pretrained(folder)
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        projection_size=32,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=2,
        patch_size=16,
        num_channels=3,
        image_size=32,
    )
    torch.manual_seed(seed)
    model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
    model.save_pretrained(folder)
    SiglipImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- shared folders


@functools.cache
def tiny_janus_dir() -> Path:
    """A shared HF-format tiny Janus folder (read-only for tests)."""
    return save_tiny_janus(Path(_SHARED.name) / "janus-hf")


@functools.cache
def tiny_siglip_dir() -> Path:
    """A shared tiny SigLIP scorer folder (read-only for tests)."""
    return save_tiny_siglip(Path(_SHARED.name) / "siglip")


def write_prompts(path: Path, prompts: list) -> Path:
    path.write_text(json.dumps({"prompts": prompts}), encoding="utf-8")
    return path


def generate_argv(prompts: Path, out: Path, model: Path | None = None, *extra: str) -> list[str]:
    """``siglip-dola generate`` arguments for a quiet float32 CPU run on the tiny model."""
    return [
        "generate",
        "--json",
        str(prompts),
        "--out",
        str(out),
        "--model",
        str(model or tiny_janus_dir()),
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--quiet",
        *extra,
    ]


def read_manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def output_files(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` (relative path -> bytes), lock file excluded."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != ".manifest.lock"
    }
