"""`siglip-dola bench`: cost of every DoLa variant next to the baseline, in one run.

Both sides run the same pipeline (decode, preprocess, one backbone pass per batch, scores,
metrics) on the same model and images; the baseline reads out only the final layer and
scores q_N, the DoLa side reads out every layer 1..N and computes 3 buckets x 3 alphas of
dynamic DoLa, every static layer x 3 alphas and the APC-only ablation. Repetitions alternate
and medians are compared (the fastest repeat of each is reported too). The text bank is
timed separately: first build vs cache hit.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence

from siglip_dola.data import ImageSet
from siglip_dola.embeddings import extract_layer_embeddings
from siglip_dola.readout.base import LoadedModel
from siglip_dola.settings import RunSettings
from siglip_dola.text import build_text_bank
from siglip_dola.variants import Variant, default_variants
from siglip_dola.zeroshot import evaluate_embeddings

__all__ = ["run_eval_benchmark"]

ALPHAS = (0.05, 0.1, 0.2)


def _one_eval(
    model: LoadedModel,
    image_set: ImageSet,
    bank,
    variants: Sequence[Variant],
    layers,
    settings: RunSettings,
) -> float:
    start = time.perf_counter()
    emb = extract_layer_embeddings(model.vision, image_set, layers, settings)
    evaluate_embeddings(emb, bank, model.tau, variants, len(image_set.class_names))
    return time.perf_counter() - start


def run_eval_benchmark(
    model: LoadedModel,
    image_set: ImageSet,
    templates: Sequence[str],
    repeats: int = 3,
    settings: RunSettings | None = None,
) -> dict[str, float]:
    """Median seconds of both evals, their ratio, and the text bank's first build vs cache hit.

    Both sides read images with ``settings`` minus caches and progress bars."""
    import torch

    settings = RunSettings.coerce(settings).replace(cache_dir=None, progress=False)
    depth = model.vision.depth
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        bank = build_text_bank(
            model.text, image_set.class_names, templates, cache_dir=cache, progress=False
        )
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_text_bank(
            model.text, image_set.class_names, templates, cache_dir=cache, progress=False
        )
        hit = time.perf_counter() - t0
    dola_variants = default_variants(depth, 3, ALPHAS, None, apc=True)
    all_layers = tuple(range(1, depth))
    baseline_variants = [Variant.baseline()]
    times: dict[str, list[float]] = {"baseline": [], "dola": []}
    # One untimed eval of each first, so that neither side pays the cold start (the process
    # heap grows to its working size during the first passes: page faults, not work).
    for variants, layers in ((baseline_variants, ()), (dola_variants, all_layers)):
        _one_eval(model, image_set, bank, variants, layers, settings)
    for _ in range(repeats):
        times["baseline"].append(_one_eval(model, image_set, bank, baseline_variants, (), settings))
        times["dola"].append(_one_eval(model, image_set, bank, dola_variants, all_layers, settings))
    base, dola = statistics.median(times["baseline"]), statistics.median(times["dola"])
    base_min, dola_min = min(times["baseline"]), min(times["dola"])
    return dict(
        images=len(image_set),
        classes=len(image_set.class_names),
        templates=len(templates),
        depth=depth,
        variants=len(dola_variants),
        repeats=repeats,
        threads=torch.get_num_threads(),
        eval_baseline_s=base,
        eval_all_variants_s=dola,
        eval_ratio=dola / base,
        eval_baseline_min_s=base_min,
        eval_all_variants_min_s=dola_min,
        eval_ratio_of_minima=dola_min / base_min,
        text_bank_first_s=first,
        text_bank_cache_hit_s=hit,
        text_bank_hit_fraction=hit / first,
    )
