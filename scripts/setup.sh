#!/usr/bin/env bash
# Create .venv and install siglip-dola with its dev extra (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# torch/torchvision first, pinned to the pair whose wheels this machine keeps on disk;
# pip's index is consulted only for what is missing.
.venv/bin/python -m pip install --disable-pip-version-check -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --disable-pip-version-check -q -e ".[dev]"
