"""Tiny random-init models of every supported family, saved in their real formats.

Shared by the readout tests (not a conftest: plain helpers the test modules import).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

torch.set_num_threads(1)  # the CI box has two busy cores; tiny models gain nothing from more

WIDTH = 32
DEPTH = 4
HEADS = 2
IMAGE = 32
PATCH = 8
TIMM_TINY = "siglip_dola_test_vit"  # registered below for open_clip configs
SENTENCES = [
    "a photo of a cat.",
    "a photo of a dog.",
    "a blurry photo of a red car.",
    "the sandal on the floor",
    "an ankle boot and a bag",
    "a black and white photo of a coat",
]


def random_images(count: int, seed: int = 0) -> list[Image.Image]:
    """RGB images of assorted sizes and aspect ratios."""
    rng = np.random.default_rng(seed)
    sizes = [(40, 40), (64, 48), (30, 50), (37, 37), (90, 20)]
    return [
        Image.fromarray(rng.integers(0, 256, (*sizes[i % len(sizes)][::-1], 3), dtype=np.uint8))
        for i in range(count)
    ]


# ----------------------------------------------------------------------------- hooks


@contextlib.contextmanager
def count_calls(modules: Sequence[nn.Module]) -> Iterator[list[int]]:
    """Counts forward calls of each module while the context is open."""
    counts = [0] * len(modules)
    handles = []
    for i, module in enumerate(modules):

        def hook(_module, _args, _output, i=i):
            counts[i] += 1

        handles.append(module.register_forward_hook(hook))
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def capture_outputs(modules: Sequence[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """The output tensor of each module's (last) forward call."""
    outputs: list = [None] * len(modules)
    handles = []
    for i, module in enumerate(modules):

        def hook(_module, _args, output, i=i):
            outputs[i] = (output[0] if isinstance(output, tuple) else output).detach().clone()

        handles.append(module.register_forward_hook(hook))
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


# ----------------------------------------------------------------------------- tokenizer


def save_sentencepiece_tokenizer(
    folder: Path, sentences: Sequence[str] = SENTENCES, vocab_size: int = 60
) -> Path:
    """A SiglipTokenizer trained offline on a few sentences, saved in ``folder``."""
    import sentencepiece as spm
    from transformers import SiglipTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(sentences) * 8),
        model_prefix=str(folder / "spm"),
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        character_coverage=1.0,
        minloglevel=2,
    )
    tokenizer = SiglipTokenizer(vocab_file=str(folder / "spm.model"), pad_token="<pad>")
    tokenizer.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- transformers


def hf_config(version: int, vocab_size: int, text_length: int = 16):
    from transformers import Siglip2Config, SiglipConfig

    text = dict(
        vocab_size=vocab_size,
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        max_position_embeddings=text_length,
        projection_size=WIDTH,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    vision = dict(
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=DEPTH,
        num_attention_heads=HEADS,
        patch_size=PATCH,
        num_channels=3,
    )
    if version == 1:
        return SiglipConfig(text_config=text, vision_config=dict(vision, image_size=IMAGE))
    return Siglip2Config(text_config=text, vision_config=dict(vision, num_patches=16))


def save_hf_siglip(folder: Path, version: int = 1, seed: int = 0) -> Path:
    """SiglipModel (version 1) or Siglip2Model (NaFlex, version 2) + processor files."""
    from transformers import (
        Siglip2ImageProcessor,
        Siglip2Model,
        SiglipImageProcessor,
        SiglipModel,
        SiglipTokenizer,
    )

    save_sentencepiece_tokenizer(folder)
    tokenizer = SiglipTokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    config = hf_config(version, vocab_size=len(tokenizer))
    model = (SiglipModel if version == 1 else Siglip2Model)(config).eval()
    perturb_norms(model)
    model.save_pretrained(folder, safe_serialization=True)
    if version == 1:
        processor = SiglipImageProcessor(
            size={"height": IMAGE, "width": IMAGE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        )
    else:
        processor = Siglip2ImageProcessor(patch_size=PATCH, max_num_patches=16)
    processor.save_pretrained(folder)
    return folder


def perturb_norms(model: nn.Module) -> None:
    # Random init leaves LayerNorms at identity; moving them away makes a missing or
    # misplaced norm visible in the tests.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.add_(0.3 * torch.randn(module.weight.shape, generator=generator))
                module.bias.add_(0.3 * torch.randn(module.bias.shape, generator=generator))


# ----------------------------------------------------------------------------- timm


def tiny_timm_kwargs() -> dict:
    return dict(embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, img_size=IMAGE, patch_size=PATCH)


def tiny_timm_vit(
    arch: str = "vit_base_patch16_siglip_224", seed: int = 0, **overrides
) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    kwargs = {"num_classes": 0, **tiny_timm_kwargs(), **overrides}
    model = timm.create_model(arch, pretrained=False, **kwargs)
    spread_weights(model)
    perturb_norms(model)
    return model.eval()


def spread_weights(model: nn.Module) -> None:
    # timm's init (std 0.02) makes tiny outputs of ~1e-2 where a 1e-5 tolerance says little;
    # fan-in scaled weights give O(1) embeddings.
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)


def _register_tiny_timm() -> None:
    # open_clip builds its image tower by timm model name only; a registered tiny name lets
    # a local open_clip config use a ViT small enough for the tests.
    from timm.models import VisionTransformer, is_model, register_model

    if is_model(TIMM_TINY):
        return

    def siglip_dola_test_vit(pretrained: bool = False, **kwargs) -> VisionTransformer:
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        args = dict(tiny_timm_kwargs(), class_token=False, global_pool="map")
        model = VisionTransformer(**{**args, **kwargs})
        model.pretrained_cfg = model.default_cfg = {
            "input_size": (3, IMAGE, IMAGE),
            "mean": (0.5,) * 3,
            "std": (0.5,) * 3,
        }
        return model

    register_model(siglip_dola_test_vit)


# ----------------------------------------------------------------------------- open_clip


def save_open_clip_config(folder: Path, tokenizer_dir: Path, proj: str = "none") -> Path:
    """A local open_clip SigLIP config whose tokenizer is a local HF tokenizer folder."""
    _register_tiny_timm()
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    config = {
        "embed_dim": WIDTH if proj == "none" else 24,
        "init_logit_bias": -10,
        "custom_text": True,
        "vision_cfg": {
            "image_size": IMAGE,
            "timm_model_name": TIMM_TINY,
            "timm_model_pretrained": False,
            "timm_pool": "map",
            "timm_proj": proj,
        },
        "text_cfg": {
            "context_length": 16,
            "vocab_size": vocab,
            "hf_tokenizer_name": str(tokenizer_dir),
            "tokenizer_kwargs": {"clean": "canonicalize"},
            "width": WIDTH,
            "heads": HEADS,
            "layers": 2,
            "no_causal_mask": True,
            "proj_bias": True,
            "pool_type": "last",
            "norm_kwargs": {"eps": 1e-6},
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    name = f"siglip-dola-test-{proj}"
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    return path


# ----------------------------------------------------------------------------- Janus


def save_janus_checkpoint(
    folder: Path,
    tower: nn.Module,
    fmt: str = "safetensors",
    drop: Sequence[str] = (),
) -> Path:
    """A DeepSeek-format Janus folder: vision tower keys plus unrelated language-model and
    generation keys, split over two shards with an index json. ``drop`` removes tower keys
    that start with any of its prefixes."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    vision = {
        f"vision_model.vision_tower.{k}": v.clone()
        for k, v in tower.state_dict().items()
        if not any(k.startswith(p) for p in drop)
    }
    generator = torch.Generator().manual_seed(2)
    others = {
        "language_model.model.embed_tokens.weight": torch.randn(50, 16, generator=generator),
        "language_model.lm_head.weight": torch.randn(50, 16, generator=generator),
        "aligner.layers.0.weight": torch.randn(16, WIDTH, generator=generator),
        "gen_head.vision_head.weight": torch.randn(8, 16, generator=generator),
    }
    keys = sorted(vision)
    shards = [
        dict(
            {k: vision[k] for k in keys[: len(keys) // 2]},
            **{k: others[k] for k in list(others)[:2]},
        ),
        dict(
            {k: vision[k] for k in keys[len(keys) // 2 :]},
            **{k: others[k] for k in list(others)[2:]},
        ),
    ]
    suffix = "safetensors" if fmt == "safetensors" else "bin"
    prefix = "model" if fmt == "safetensors" else "pytorch_model"
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        filename = f"{prefix}-0000{i}-of-00002.{suffix}"
        if fmt == "safetensors":
            save_file(shard, str(folder / filename))
        else:
            torch.save(shard, folder / filename)
        weight_map.update({k: filename for k in shard})
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / f"{prefix}.{suffix}.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps({"model_type": "multi_modality"}))
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_size": IMAGE, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    )
    return folder


class JanusStyleViT(nn.Module):
    """The method pair of DeepSeek Janus's ``siglip_vit.VisionTransformer`` (a timm 0.9 copy)
    over a timm ViT's modules: ``get_intermediate_layers`` keeps only indices found while
    iterating over the blocks (negative ones are silently dropped) and returns a tuple."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit
        self.blocks = vit.blocks
        self.norm = vit.norm
        self.num_prefix_tokens = vit.num_prefix_tokens
        self.embed_dim = vit.embed_dim

    def _intermediate_layers(self, x: torch.Tensor, n) -> list[torch.Tensor]:
        take = set(range(len(self.blocks) - n, len(self.blocks))) if isinstance(n, int) else n
        x = self.vit.norm_pre(self.vit.patch_drop(self.vit._pos_embed(self.vit.patch_embed(x))))
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in take:
                outputs.append(x)
        return outputs

    def get_intermediate_layers(
        self, x, n=1, reshape=False, return_prefix_tokens=False, norm=False
    ):
        outputs = self._intermediate_layers(x, n)
        if norm:
            outputs = [self.norm(out) for out in outputs]
        prefix = [out[:, : self.num_prefix_tokens] for out in outputs]
        outputs = [out[:, self.num_prefix_tokens :] for out in outputs]
        if return_prefix_tokens:
            return tuple(zip(outputs, prefix))
        return tuple(outputs)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.vit.forward_head(x, pre_logits=pre_logits)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
