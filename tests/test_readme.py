"""The README's Python API block runs as printed, and the public names it relies on exist."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_api_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README's Python API section has no python block"
    return match.group(1)


def test_python_api_block_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # it saves one PNG to classify
    namespace: dict = {}
    exec(compile(_python_api_block(), "README.md#python-api", "exec"), namespace)
    printed = capsys.readouterr().out
    assert namespace["ev"].num_images == 2000
    assert namespace["out"].probs.shape == (2, 10)
    assert "calibration on validation" in printed
    assert (tmp_path / "shirt.png").is_file()


@pytest.mark.parametrize(
    "module",
    [
        "siglip_dola",
        "siglip_dola.dola",
        "siglip_dola.variants",
        "siglip_dola.settings",
        "siglip_dola.zeroshot",
        "siglip_dola.embeddings",
        "siglip_dola.metrics",
        "siglip_dola.stats",
        "siglip_dola.calibrate",
        "siglip_dola.experiment",
        "siglip_dola.data",
    ],
)
def test_all_names_exist(module):
    mod = importlib.import_module(module)
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert not missing, f"{module}.__all__ names what it lacks: {missing}"
