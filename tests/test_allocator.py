"""The command line's glibc settings: applied or switched off, and they end page-fault churn."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# The bundled model's baseline and all-layer readouts on 250-image batches, as `eval` runs
# them; counts the page faults of each repetition after the first.
PROBE = """
import json, resource, numpy as np, torch
from siglip_dola.allocator import keep_freed_memory
applied = keep_freed_memory()
from siglip_dola.data import bundled_model_dir
from siglip_dola.models import load_model
vision = load_model(str(bundled_model_dir())).vision
gen = torch.Generator().manual_seed(0)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
counts = []
for _ in range(6):
    batch = {"pixel_values": torch.randn(250, 3, 28, 28, generator=gen)}
    start = faults()
    for layers in ((), tuple(range(1, vision.depth))):
        out = vision.forward_layers(batch, layers)
        np.concatenate([out.embeddings.numpy()] * 2, axis=1)
    counts.append(faults() - start)
print(json.dumps({"applied": applied, "faults_after_first": sum(counts[1:])}))
"""

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only"
)


def _probe(tuning: str) -> dict:
    env = {**os.environ, "SIGLIP_DOLA_MALLOC_TUNING": tuning}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# Five repetitions write hundreds of MB of temporaries. Measured here: 0-4,000 faults in all
# with the settings (an occasional heap growth), 23,000-173,000 with glibc's defaults.
FAULT_BOUND = 6000


def test_kept_memory_ends_page_fault_churn():
    tuned = _probe("1")
    assert tuned["applied"] is True
    assert tuned["faults_after_first"] < FAULT_BOUND


def test_switched_off_leaves_glibc_alone_and_the_probe_sees_its_churn():
    default = _probe("0")
    assert default["applied"] is False
    assert default["faults_after_first"] > FAULT_BOUND  # the tuned test's bound can fail
