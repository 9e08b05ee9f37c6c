"""How often calibration switches DoLa on when no variant can help (false-positive rate).

    python benchmarks/calibration_null.py                    # synthetic + bundled model
    python benchmarks/calibration_null.py --skip-bundled --reps 1000

Three procedures on the same validation data, repetition by repetition:

* ``old``: the best variant on all validation images, tested alone against the baseline
  (exact McNemar, p < 0.05) as if fixed in advance (the procedure before the split/Holm one);
* ``split``: chosen on half of the validation images, confirmed on the other half (default);
* ``holm``: Holm-Bonferroni over every variant's McNemar p-value.

Nulls: (1) synthetic, 500 images, baseline right with p = 0.85, each variant breaks 3% of the
right answers and fixes as many wrong ones in expectation, independently (``independent``) or
sharing most flips with one of 4 group patterns (``correlated``); (2) the bundled model on
500 of its images with labels drawn independently of the images (uniform over the 10 classes).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from siglip_dola.calibrate import CalibrationProcedure, calibrate
from siglip_dola.metrics import VariantResult, metrics_of_ranks
from siglip_dola.stats import mcnemar_from_counts
from siglip_dola.variants import Variant


def old_procedure(results: list[VariantResult]) -> bool:
    """The winner of all variants, tested alone: switched on for p < 0.05."""
    base = results[0]
    best = max(results, key=lambda r: r.metrics["acc1"])  # first maximum: baseline on ties
    if best is base or best.metrics["acc1"] <= base.metrics["acc1"]:
        return False
    gains = int((best.correct & ~base.correct).sum())
    losses = int((base.correct & ~best.correct).sum())
    return mcnemar_from_counts(gains, losses) < 0.05


def synthetic(rng, n: int, v: int, correlated: bool) -> tuple[np.ndarray, np.ndarray]:
    acc, broken, keep, groups = 0.85, 0.03, 0.7, 4
    base = rng.random(n) < acc
    fixed = broken * acc / (1 - acc)

    def flips(rows: int) -> np.ndarray:
        u = rng.random((rows, n))
        return np.where(base, u < broken, u < fixed)

    f = flips(v)
    if correlated:
        f = np.where(rng.random((v, n)) < keep, flips(groups)[np.arange(v) % groups], f)
    return base, base ^ f


def results_from_outcomes(base, variants_correct, labels, num_classes=10):
    ranks = torch.as_tensor(~np.vstack([base[None], variants_correct])).long()
    metrics = metrics_of_ranks(ranks, torch.as_tensor(labels), num_classes)
    names = [Variant.baseline()] + [
        Variant.static(1 + i % 23, round(0.01 * (1 + i // 23), 2))
        for i in range(len(variants_correct))
    ]
    return [VariantResult(x, m, r) for x, m, r in zip(names, metrics, ranks)]


def synthetic_trial(rng, n: int, v: int, correlated: bool, labels: np.ndarray):
    def trial():
        base, var = synthetic(rng, n, v, correlated)
        return results_from_outcomes(base, var, labels), labels

    return trial


def bundled_trial(rng, n: int, emb, evaluation, variants):
    """n images of the bundled set, labels drawn uniformly, independently of the images."""
    from siglip_dola.zeroshot import evaluate_embeddings

    def trial():
        part = emb.subset(np.sort(rng.choice(len(emb.labels), n, replace=False)))
        part.labels = rng.integers(0, 10, n)
        results, _ = evaluate_embeddings(
            part, evaluation.text_bank, evaluation.tau, variants, 10, bootstrap=None
        )
        return results, part.labels

    return trial


def rates(trials, reps: int) -> dict[str, float]:
    counts = {"old": 0, "split": 0, "holm": 0}
    for _ in range(reps):
        results, labels = trials()
        counts["old"] += old_procedure(results)
        for method in ("split", "holm"):
            procedure = CalibrationProcedure(method)
            counts[method] += calibrate(results, labels, procedure=procedure).switched_on
    return {k: c / reps for k, c in counts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--reps", type=int, default=1000, help="synthetic repetitions")
    ap.add_argument("--bundled-reps", type=int, default=300)
    ap.add_argument("--skip-bundled", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)  # small tensors: threads cost more than they give
    n = 500
    labels = np.arange(n) % 10
    for v in (82, 10, 1):
        for correlated in (False, True):
            trial = synthetic_trial(np.random.default_rng(1), n, v, correlated, labels)
            start = time.perf_counter()
            r = rates(trial, args.reps)
            kind = "correlated" if correlated else "independent"
            print(
                f"synthetic, {v:>2} {kind:<11} variants, {args.reps} reps: "
                + ", ".join(f"{k} {100 * x:.1f}%" for k, x in r.items())
                + f" ({time.perf_counter() - start:.1f} s)"
            )
    if args.skip_bundled:
        return
    from siglip_dola.data import bundled_model_dir, load_dataset
    from siglip_dola.models import load_model
    from siglip_dola.variants import default_variants
    from siglip_dola.zeroshot import evaluate_dataset

    model = load_model(f"hf:{bundled_model_dir()}")
    data = load_dataset("bundled:fashion-mnist")
    evaluation = evaluate_dataset(model, data, data.templates, [Variant.baseline()])
    emb = evaluation.embeddings
    depth = model.vision.depth
    for grid_name, variants in (
        (
            "82 variants (no references)",
            default_variants(depth, 3, (0.05, 0.1, 0.2), None),
        ),
        (
            "126 variants (with references)",
            default_variants(depth, 3, (0.05, 0.1, 0.2), None, references=True),
        ),
    ):
        trial = bundled_trial(np.random.default_rng(2), n, emb, evaluation, variants)
        start = time.perf_counter()
        r = rates(trial, args.bundled_reps)
        print(
            f"bundled model, random labels, {grid_name}, {args.bundled_reps} reps: "
            + ", ".join(f"{k} {100 * x:.1f}%" for k, x in r.items())
            + f" ({time.perf_counter() - start:.1f} s)"
        )


if __name__ == "__main__":
    main()
