"""`siglip-dola bench`: cost of every DoLa variant next to the baseline, in one run.

Three sides run the same pipeline (decode, preprocess, one backbone pass per batch, scores,
metrics, flips against the baseline) on the same model and images:

* ``baseline``: reads out only the final layer and scores q_N;
* ``dola``: reads out every layer 1..N and computes 3 buckets x 3 alphas of dynamic DoLa,
  every static layer x 3 alphas and the APC-only ablation (82 variants), no bootstrap;
* ``full``: the same grid with the reference variants (every single layer, an ensemble per
  bucket, dynamic DoLa at beta 0.25 and 0.5: 126 variants) and the paired bootstrap
  intervals of every variant (the default of ``eval``).

Repetitions alternate and medians are compared (the fastest repeat of each is reported too).
The text bank is timed separately: first build vs cache hit.
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
from siglip_dola.stats import Bootstrap
from siglip_dola.text import build_text_bank
from siglip_dola.variants import Variant, default_variants
from siglip_dola.zeroshot import BOOTSTRAP, evaluate_embeddings

__all__ = ["run_eval_benchmark"]

ALPHAS = (0.05, 0.1, 0.2)


def _one_eval(
    model: LoadedModel,
    image_set: ImageSet,
    bank,
    variants: Sequence[Variant],
    layers,
    settings: RunSettings,
    bootstrap: Bootstrap | None,
) -> float:
    start = time.perf_counter()
    emb = extract_layer_embeddings(model.vision, image_set, layers, settings)
    evaluate_embeddings(
        emb, bank, model.tau, variants, len(image_set.class_names), bootstrap=bootstrap
    )
    return time.perf_counter() - start


def run_eval_benchmark(
    model: LoadedModel,
    image_set: ImageSet,
    templates: Sequence[str],
    repeats: int = 3,
    settings: RunSettings | None = None,
) -> dict[str, float]:
    """Median seconds of the three evals, their ratios to the baseline, and the text bank's
    first build vs cache hit.

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
    dola_variants = default_variants(depth, 3, ALPHAS, None, apc=True, references=False)
    full_variants = default_variants(depth, 3, ALPHAS, None, apc=True, references=True)
    all_layers = tuple(range(1, depth))
    sides = {
        "baseline": ([Variant.baseline()], (), None),
        "dola": (dola_variants, all_layers, None),
        "full": (full_variants, all_layers, BOOTSTRAP),
    }
    times: dict[str, list[float]] = {side: [] for side in sides}
    # One untimed eval of each first, so that no side pays the cold start (the process heap
    # grows to its working size during the first passes: page faults, not work).
    for variants, layers, bootstrap in sides.values():
        _one_eval(model, image_set, bank, variants, layers, settings, bootstrap)
    for _ in range(repeats):
        for side, (variants, layers, bootstrap) in sides.items():
            times[side].append(
                _one_eval(model, image_set, bank, variants, layers, settings, bootstrap)
            )
    median = {side: statistics.median(t) for side, t in times.items()}
    fastest = {side: min(t) for side, t in times.items()}
    return dict(
        images=len(image_set),
        classes=len(image_set.class_names),
        templates=len(templates),
        depth=depth,
        variants=len(dola_variants),
        variants_with_references=len(full_variants),
        bootstrap_resamples=BOOTSTRAP.resamples,
        repeats=repeats,
        threads=torch.get_num_threads(),
        eval_baseline_s=median["baseline"],
        eval_all_variants_s=median["dola"],
        eval_ratio=median["dola"] / median["baseline"],
        eval_with_references_s=median["full"],
        eval_ratio_with_references=median["full"] / median["baseline"],
        eval_baseline_min_s=fastest["baseline"],
        eval_all_variants_min_s=fastest["dola"],
        eval_with_references_min_s=fastest["full"],
        eval_ratio_of_minima=fastest["dola"] / fastest["baseline"],
        eval_ratio_with_references_of_minima=fastest["full"] / fastest["baseline"],
        text_bank_first_s=first,
        text_bank_cache_hit_s=hit,
        text_bank_hit_fraction=hit / first,
    )
