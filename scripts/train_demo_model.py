"""Train the bundled demo model: a 24-layer SigLIP (transformers SiglipModel) on Fashion-MNIST.

One-off script; its outputs are committed under src/siglip_dola/assets/. It needs the Debian
package `dataset-fashion-mnist` (MIT licence) for the raw IDX files.

Recipe (why): Fashion-MNIST has only 10 classes, so a batch of 256 images holds ~25 captions
per class; the plain SigLIP loss would push those near-identical captions apart as negatives.
We use the sigmoid loss with *class* positives (label +1 for every same-class pair). To keep a
24-layer tower cheap on a CPU we use 7x7-pixel patches (16 tokens). The text side encodes the
unique captions of a step (10 classes x a few training templates), padded to SigLIP's 64 tokens
exactly as at inference. Evaluation uses templates that were never seen in training.

    python scripts/train_demo_model.py --minutes 45
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
import torch.nn.functional as F
from transformers import (
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipProcessor,
    SiglipTokenizer,
)

from siglip_dola.data import BUNDLED_CLASS_NAMES, BUNDLED_TEMPLATES

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "src" / "siglip_dola" / "assets"
RAW = Path("/usr/share/datasets/fashion-mnist")

CLASS_NAMES = list(BUNDLED_CLASS_NAMES)
TRAIN_TEMPLATES = [
    "a photo of a {c}.",
    "a picture of a {c}.",
    "an image of the {c}.",
    "a grayscale photo of a {c}.",
    "a low resolution photo of a {c}.",
    "a {c}.",
    "this is a {c}.",
    "a close-up photo of the {c}.",
    "a product photo of a {c}.",
    "a blurry photo of the {c}.",
    "the {c} in a catalogue.",
    "a small image of a {c}.",
    "a centered photo of one {c}.",
    "a dark photo of the {c}.",
]
# Never used in training: the bundled demo's evaluation templates.
HELD_OUT_TEMPLATES = list(BUNDLED_TEMPLATES)


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def train_tokenizer(out_dir: Path) -> SiglipTokenizer:
    sentences = [t.format(c=c) for t in TRAIN_TEMPLATES + HELD_OUT_TEMPLATES for c in CLASS_NAMES]
    with tempfile.TemporaryDirectory() as tmp:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences * 4),
            model_prefix=f"{tmp}/spm",
            vocab_size=160,
            model_type="unigram",
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            hard_vocab_limit=False,
            normalization_rule_name="nmt_nfkc_cf",
            character_coverage=1.0,
        )
        tokenizer = SiglipTokenizer(vocab_file=f"{tmp}/spm.model", pad_token="<pad>")
        tokenizer.save_pretrained(out_dir)
    return SiglipTokenizer.from_pretrained(out_dir)


def build_model(tokenizer: SiglipTokenizer, layers: int, width: int) -> SiglipModel:
    config = SiglipConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=64,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
            projection_size=width,
        ),
        vision_config=dict(
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=layers,
            num_attention_heads=4,
            image_size=28,
            patch_size=7,
            num_channels=3,
        ),
    )
    return SiglipModel(config)


def normalise_images(raw: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(raw)).float().div_(255.0).sub_(0.5).div_(0.5)
    return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def encode_texts(model: SiglipModel, tokenizer: SiglipTokenizer, texts: list[str]) -> torch.Tensor:
    ids = tokenizer(
        texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt"
    ).input_ids
    out = model.get_text_features(input_ids=ids)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def image_features(model: SiglipModel, pixels: torch.Tensor) -> torch.Tensor:
    out = model.get_image_features(pixel_values=pixels)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def evaluate(model, tokenizer, images, labels, templates, batch=500) -> float:
    model.eval()
    bank = []
    for c in CLASS_NAMES:
        e = F.normalize(encode_texts(model, tokenizer, [t.format(c=c) for t in templates]), dim=-1)
        bank.append(F.normalize(e.mean(0), dim=-1))
    bank = torch.stack(bank)
    correct = 0
    for i in range(0, len(images), batch):
        z = F.normalize(image_features(model, normalise_images(images[i : i + batch])), dim=-1)
        correct += int(
            ((z @ bank.T).argmax(-1) == torch.from_numpy(labels[i : i + batch]).long()).sum()
        )
    model.train()
    return correct / len(images)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=45.0, help="wall-clock training budget")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--templates-per-class", type=int, default=3)
    ap.add_argument("--test-size", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ASSETS)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(args.threads)
    train_x = read_idx(RAW / "train-images-idx3-ubyte.gz")
    train_y = read_idx(RAW / "train-labels-idx1-ubyte.gz").astype(np.int64)
    test_x = read_idx(RAW / "t10k-images-idx3-ubyte.gz")
    test_y = read_idx(RAW / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    rng = np.random.default_rng(args.seed)
    test_pick = np.sort(rng.permutation(len(test_x))[: args.test_size])
    test_x, test_y = test_x[test_pick], test_y[test_pick]

    model_dir = args.out / "demo_model"
    staging = Path(tempfile.mkdtemp(prefix="demo_model_"))
    tokenizer = train_tokenizer(staging)
    model = build_model(tokenizer, args.layers, args.width)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"model: {args.layers} vision layers, width {args.width}, {params / 1e6:.2f} M parameters"
    )

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    steps_per_epoch = len(train_x) // args.batch_size
    budget = args.minutes * 60
    warmup = 200
    start = time.time()
    step = 0
    done = False
    epoch = 0
    while not done:
        epoch += 1
        order = rng.permutation(len(train_x))
        for b in range(steps_per_epoch):
            elapsed = time.time() - start
            if elapsed > budget:
                done = True
                break
            # cosine schedule over the time budget
            frac = min(elapsed / budget, 1.0)
            lr = args.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * frac))
            for g in opt.param_groups:
                g["lr"] = lr
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            raw = train_x[idx]
            # light augmentation: random horizontal flip and +-2 pixel shift
            raw = np.where(rng.random((len(raw), 1, 1)) < 0.5, raw[:, :, ::-1], raw)
            dx, dy = rng.integers(-2, 3, size=2)
            raw = np.roll(raw, (int(dy), int(dx)), axis=(1, 2))
            pixels = normalise_images(np.ascontiguousarray(raw))
            labels = torch.from_numpy(train_y[idx])
            captions, caption_class = [], []
            for c, name in enumerate(CLASS_NAMES):
                for t in random.sample(TRAIN_TEMPLATES, args.templates_per_class):
                    captions.append(t.format(c=name))
                    caption_class.append(c)
            text = F.normalize(encode_texts(model, tokenizer, captions), dim=-1)
            img = F.normalize(image_features(model, pixels), dim=-1)
            logits = img @ text.T * model.logit_scale.exp() + model.logit_bias
            target = (labels[:, None] == torch.tensor(caption_class)[None, :]).float() * 2 - 1
            loss = -F.logsigmoid(target * logits).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            if step % 50 == 0:
                print(
                    f"step {step} epoch {epoch} {elapsed / 60:.1f} min loss {loss.item():.4f} lr {lr:.2e}",
                    flush=True,
                )
            if step % 500 == 0:
                acc = evaluate(model, tokenizer, test_x[:500], test_y[:500], HELD_OUT_TEMPLATES)
                print(f"  held-out templates, 500 test images: acc1 {acc:.3f}", flush=True)

    train_acc = evaluate(model, tokenizer, train_x[:2000], train_y[:2000], TRAIN_TEMPLATES)
    test_acc = evaluate(model, tokenizer, test_x, test_y, HELD_OUT_TEMPLATES)
    seen_acc = evaluate(model, tokenizer, test_x, test_y, TRAIN_TEMPLATES)
    minutes = (time.time() - start) / 60
    print(f"trained {step} steps ({step / steps_per_epoch:.1f} epochs) in {minutes:.1f} min")
    print(f"acc1 train subset (training templates): {train_acc:.4f}")
    print(f"acc1 held-out test subset, held-out templates: {test_acc:.4f}")
    print(f"acc1 held-out test subset, training templates: {seen_acc:.4f}")

    model.save_pretrained(staging, safe_serialization=True)
    processor = SiglipProcessor(
        image_processor=SiglipImageProcessor(
            size={"height": 28, "width": 28}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        ),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(staging)
    (staging / "training.json").write_text(
        json.dumps(
            {
                "script": "scripts/train_demo_model.py",
                "steps": step,
                "minutes": round(minutes, 1),
                "batch_size": args.batch_size,
                "lr": args.lr,
                "seed": args.seed,
                "train_templates": TRAIN_TEMPLATES,
                "held_out_templates": HELD_OUT_TEMPLATES,
                "class_names": CLASS_NAMES,
                "acc1_test_held_out_templates": test_acc,
                "acc1_test_training_templates": seen_acc,
                "acc1_train_subset": train_acc,
            },
            indent=2,
        )
    )
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), model_dir)

    data_path = args.out / "fashion_mnist_test.npz"
    np.savez_compressed(
        data_path, images=test_x, labels=test_y.astype(np.uint8), source_index=test_pick
    )
    print(f"wrote {model_dir} and {data_path}")


if __name__ == "__main__":
    main()
