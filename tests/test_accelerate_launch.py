"""Data-parallel eval under ``accelerate launch`` (2 CPU processes, gloo) equals one process.

accelerate's multi-process launcher is torchrun's underneath (``--multi_gpu`` names it; with
no GPU the processes run on the CPU): it sets RANK / WORLD_SIZE / LOCAL_RANK /
LOCAL_WORLD_SIZE, which ``siglip_dola.distributed`` reads, as under torchrun
(``test_cli.test_two_process_gloo_eval_equals_single_process``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("accelerate")

COMMON = ["eval", "--quiet", "--static-layers", "12,20", "--alphas", "0.1,0.3"]


def test_accelerate_launch_two_cpu_processes_equal_one(tmp_path):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "SIGLIP_DOLA_CACHE": str(tmp_path / "cache"),
        "HF_HOME": str(tmp_path / "hf"),  # no accelerate config of this machine's user
    }
    single = subprocess.run(
        [sys.executable, "-m", "siglip_dola", *COMMON, "--no-cache"]
        + ["--output", str(tmp_path / "one.json")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    launch = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29547",
        "-m", "siglip_dola", *COMMON, "--output", str(tmp_path / "two.json"),
    ]  # fmt: skip
    multi = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert multi.returncode == 0, multi.stderr[-3000:]
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert two["dola"]["processes"] == 2
    assert two["dola"]["num_images"] == one["dola"]["num_images"] == 2000
    n = one["dola"]["num_images"]
    assert [v["name"] for v in one["dola"]["variants"]] == [
        v["name"] for v in two["dola"]["variants"]
    ]
    for a, b in zip(one["dola"]["variants"], two["dola"]["variants"]):
        for metric in ("acc1", "acc5"):
            assert round(a["metrics"][metric] * n) == round(b["metrics"][metric] * n), a["name"]
        assert a.get("chosen_layer_histogram") == b.get("chosen_layer_histogram")
    # each process cached its own contiguous blocks (2,000 images: 4 blocks of 512)
    blocks = sorted(p.name for p in (tmp_path / "cache" / "embeddings").glob("*/blocks/block-*"))
    assert blocks == [f"block-{i:06d}" for i in range(4)]
