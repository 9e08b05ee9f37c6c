"""The figures the command line writes on the bundled model and data do not move.

``expected/bundled_outputs.json`` was written from the outputs of ``demo``, ``eval``,
``calibrate``, ``rerank`` and ``eval --task zeroshot_retrieval`` before the code was
reorganised into its present modules (`stable_figures` below picks the figures; timings,
dates and paths are left out). A change that moves one of them must say why and update
the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from siglip_dola.cli import main

EXPECTED = Path(__file__).parent / "expected" / "bundled_outputs.json"


def _variants(block: dict[str, Any]) -> dict[str, Any]:
    keep = ("metrics", "mean_kept", "chosen_layer_histogram", "layers", "alpha", "kind")
    return {v["name"]: {k: v[k] for k in keep if k in v} for v in block["variants"]}


def _classification(results: dict[str, Any]) -> dict[str, Any]:
    dola = results["dola"]
    return {
        "metrics": results["metrics"],
        "tau": dola["tau"],
        "num_images": dola["num_images"],
        "variants": _variants(dola),
        "per_layer_acc1": dola["per_layer_acc1"],
    }


def _retrieval(results: dict[str, Any]) -> dict[str, Any]:
    dola = results["dola"]
    keep = ("metrics", "mode", "candidate_layers", "alpha", "tau", "num_images", "num_captions")
    return {
        "metrics": results["metrics"],
        "dola": {k: dola[k] for k in keep},
        "chosen_layer_histogram": dola["chosen_layer_histogram"],
    }


def _profile_ranking(profile: dict[str, Any]) -> dict[str, Any]:
    ranking = profile["validation"]["ranking"]
    return {r["variant"]: {k: v for k, v in r.items() if k != "variant"} for r in ranking}


def stable_figures(folder: Path) -> dict[str, Any]:
    """The figures that must not move, from the output files in ``folder``."""

    def read(name: str) -> dict[str, Any]:
        return json.loads((folder / name).read_text())

    return {
        "demo": _classification(read("demo/results.json")),
        "eval": _classification(read("eval.json")),
        "calibrate": _profile_ranking(read("calib.json")),
        "rerank": _retrieval(read("rerank.json")),
        "eval_retrieval": _retrieval(read("evalret.json")),
    }


def run_commands(folder: Path) -> None:
    """The five commands, on the bundled model and data, no cache."""
    common = ["--no-cache", "--quiet"]
    for argv in (
        ["demo", "--out", str(folder / "demo"), *common],
        ["eval", "--output", str(folder / "eval.json"), *common],
        ["calibrate", "--profile", str(folder / "calib.json"), *common],
        ["rerank", "--output", str(folder / "rerank.json"), *common],
        ["eval", "--task", "zeroshot_retrieval", "--output", str(folder / "evalret.json"), *common],
    ):
        assert main(argv) == 0, argv


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("outputs")
    run_commands(folder)
    return stable_figures(folder)


@pytest.mark.parametrize("command", ["demo", "eval", "calibrate", "rerank", "eval_retrieval"])
def test_figures_equal_the_stored_ones(outputs, command):
    expected = json.loads(EXPECTED.read_text())[command]
    got = outputs[command]
    if command in ("demo", "eval"):
        # New variants may join; every stored one keeps its figures.
        assert set(expected["variants"]) <= set(got["variants"])
        got = {**got, "variants": {k: got["variants"][k] for k in expected["variants"]}}
    assert got == expected
