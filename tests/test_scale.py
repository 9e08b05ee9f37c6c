"""Large candidate sets run in bounded memory: measured as peak RSS growth of a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    which, budget = sys.argv[1], int(sys.argv[2])
    gen = torch.Generator().manual_seed(0)

    def status_mb(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024

    if which == "retrieval":
        from siglip_dola.retrieval import image_to_text, text_to_image

        def run(images, captions):
            layers = torch.randn(4, images, 32, generator=gen)
            text = torch.randn(captions, 32, generator=gen)
            kw = {"shortlist": 10, "max_block_elements": budget}
            _, lists = image_to_text(layers, (18, 20, 22, 24), text, 0.05, **kw)
            t2i = text_to_image(layers, (18, 20, 22, 24), text, 0.05, lists, **kw)
            return {"shape": list(t2i.dola_top.shape)}
        small, large = (50, 2000), (1000, 100_000)
    else:
        from siglip_dola.embeddings import LayerEmbeddingSet
        from siglip_dola.variants import default_variants
        from siglip_dola.zeroshot import evaluate_embeddings

        def run(images, classes):
            emb = LayerEmbeddingSet(
                (8, 16, 24),
                np.random.default_rng(0).normal(size=(3, images, 32)).astype(np.float32),
                np.arange(images) % classes, np.arange(images))
            bank = torch.randn(classes, 32, generator=gen)
            variants = default_variants(24, 3, (0.1,), (8, 16))
            variants = [v for v in variants if v.kind != "dynamic"] + [
                v for v in variants if v.kind == "dynamic" and set(v.layers) <= {8, 16}]
            results, _ = evaluate_embeddings(emb, bank, 0.05, variants, max_block_elements=budget)
            return {"variants": len(results)}
        small, large = (100, 2000), (2000, 20_000)

    # A small run first maps the code pages the large one needs: what is measured after it is
    # memory the computation holds, not how much of libtorch the page cache happened to hold.
    run(*small)
    start = status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    out = run(*large)
    out["growth_mb"] = status_mb("VmHWM") - start
    print(json.dumps(out))
    """
)


BLOCKED = 4_000_000  # the library's default block budget, in score elements
WHOLE = 10**10  # one block: the unblocked computation


def _probe(which: str, budget: int) -> dict:
    # A fixed mmap threshold makes glibc return every large freed block to the OS at once;
    # with its default (adaptive) threshold, freed blocks linger in the heap and the peak RSS
    # would measure the allocator's caching rather than what the code holds.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, which, str(budget)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_retrieval_over_100k_captions_stays_bounded():
    out = _probe("retrieval", BLOCKED)
    assert out["shape"] == [100_000, 10]
    print(f"retrieval peak growth {out['growth_mb']:.0f} MB")
    assert out["growth_mb"] < 200, out


def test_classification_over_20k_classes_stays_bounded():
    out = _probe("classification", BLOCKED)
    assert out["variants"] == 4  # baseline, static L8 and L16, APC-only
    print(f"classification peak growth {out['growth_mb']:.0f} MB")
    assert out["growth_mb"] < 200, out


@pytest.mark.parametrize("which", ["retrieval", "classification"])
def test_the_probe_sees_an_unblocked_run(which):
    # The bound above can fail: one block holds the whole image x caption score matrix
    # (1000 x 100,000 x 4 B = 400 MB) or the per-layer class scores (3 x 2000 x 20,000 x 4 B).
    out = _probe(which, WHOLE)
    print(f"unblocked {which} peak growth {out['growth_mb']:.0f} MB")
    assert out["growth_mb"] > 350, out
