"""Bad input to `siglip-dola generate` / `janus-convert`: one clear line, exit 2, no model
loaded, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _tiny_janus import tiny_janus_dir, write_prompts

from siglip_dola.cli import main
from siglip_dola.generate import backend, runner


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    """Every case here must fail before a model would load."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(runner, "load_janus", refuse)
    monkeypatch.setattr(backend, "load_janus", refuse)
    monkeypatch.setattr("siglip_dola.models.load_model", refuse)


@pytest.fixture
def good(tmp_path) -> dict[str, str]:
    return {
        "--json": str(write_prompts(tmp_path / "p.json", ["a cat", "a dog"])),
        "--out": str(tmp_path / "out"),
        "--model": str(tiny_janus_dir()),
        "--device": "cpu",
    }


def run(capsys, options: dict[str, str], *flags: str) -> str:
    argv = ["generate"]
    for key, value in options.items():
        argv += [key, value]
    capsys.readouterr()
    assert main([*argv, *flags, "--quiet"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    assert lines[0].startswith("siglip-dola generate: error: ")
    return lines[0]


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_missing_prompt_file(capsys, good, tmp_path):
    line = run(capsys, {**good, "--json": str(tmp_path / "nope.json")})
    assert "nope.json does not exist" in line


def test_invalid_json_names_line_and_column(capsys, good, tmp_path):
    bad = write(tmp_path / "bad.json", '{"prompts": [\n  "a cat",\n  "a dog"\n  "a bird"\n]}')
    line = run(capsys, {**good, "--json": bad})
    assert "invalid JSON at line 4, column 3" in line


def test_missing_prompts_key(capsys, good, tmp_path):
    line = run(capsys, {**good, "--json": write(tmp_path / "k.json", '{"prompt": ["a"]}')})
    assert "missing the 'prompts' key" in line and "'prompt'" in line


def test_top_level_list(capsys, good, tmp_path):
    line = run(capsys, {**good, "--json": write(tmp_path / "l.json", '["a cat"]')})
    assert "expected a JSON object" in line


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        (["a cat", 3, "a dog"], "prompts[1] is a number, expected a string"),
        (["a cat", "a dog", None], "prompts[2] is null, expected a string"),
        (["a cat", "   "], "prompts[1] is empty"),
        ([], "'prompts' is empty"),
        ("a cat", "'prompts' must be a list"),
    ],
)
def test_bad_prompts_name_the_index(capsys, good, tmp_path, prompts, expected):
    path = write(tmp_path / "p2.json", json.dumps({"prompts": prompts}))
    assert expected in run(capsys, {**good, "--json": path})


def test_per_prompt_greater_than_parallel_size(capsys, good):
    line = run(capsys, good, "--parallel-size", "2", "--per-prompt", "3")
    assert "--per-prompt 3 is greater than --parallel-size 2" in line


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("--dtype", "float8"), "unknown dtype 'float8'"),
        (("--parallel-size", "0"), "--parallel-size must be >= 1"),
        (("--temperature", "-1"), "temperature must be >= 0"),
        (("--top-k", "-1"), "top-k must be >= 0"),
        (("--batch-prompts", "many"), "--batch-prompts must be 'auto' or an integer"),
        (("--shard", "2/2"), "need 0 <= i < n"),
        (("--shard", "half"), "not of the form i/n"),
        (("--select", "best"), "--select must be one of first, siglip, dola"),
        (("--select", "dola"), "--select dola needs --scorer"),
        (("--negatives", "n.txt"), "--negatives only applies with --select siglip"),
        (("--select", "siglip", "--scorer", "hf:/no/such/siglip"), "does not exist"),
        (("--select", "dola", "--scorer", "hf:x/y", "--alpha", "1.5"), "--alpha must be in [0, 1]"),
        (("--select", "dola", "--scorer", "hf:x/y", "--dola-layers", "late"), "not a layer list"),
    ],
)
def test_bad_options(capsys, good, flags, expected):
    assert expected in run(capsys, good, *flags)


def test_unknown_device(capsys, good):
    assert "unknown device 'gpu0'" in run(capsys, {**good, "--device": "gpu0"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda(capsys, good):
    assert "CUDA is not available" in run(capsys, {**good, "--device": "cuda"})


def test_model_folder_of_neither_format(capsys, good, tmp_path):
    folder = tmp_path / "clip"
    folder.mkdir()
    write(folder / "config.json", '{"model_type": "clip"}')
    line = run(capsys, {**good, "--model": str(folder)})
    assert "neither an HF-format Janus folder" in line and "'clip'" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has no config.json" in run(capsys, {**good, "--model": str(empty)})


def test_hf_folder_without_weights(capsys, good, tmp_path):
    folder = tmp_path / "janus"
    folder.mkdir()
    write(folder / "config.json", '{"model_type": "janus"}')
    assert "holds no weights" in run(capsys, {**good, "--model": str(folder)})


def test_missing_model_folder(capsys, good, tmp_path):
    line = run(capsys, {**good, "--model": str(tmp_path / "Janus-Pro-7B")})
    assert "does not exist" in line


def test_out_is_a_file(capsys, good, tmp_path):
    assert "is a file" in run(capsys, {**good, "--out": write(tmp_path / "f", "x")})


def test_deepseek_folder_with_missing_weights(capsys, good, tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    write(folder / "config.json", '{"model_type": "multi_modality"}')
    line = run(capsys, {**good, "--model": str(folder)})
    assert "no weights in" in line


def test_transformers_without_janus(capsys, good, tmp_path, monkeypatch):
    import transformers

    monkeypatch.setattr(transformers, "__version__", "4.51.3")
    assert "need transformers >= 4.52" in run(capsys, good)
    capsys.readouterr()
    assert main(["janus-convert", str(tmp_path), str(tmp_path / "x"), "--quiet"]) == 2
    assert "need transformers >= 4.52" in capsys.readouterr().err


def test_janus_convert_of_a_non_deepseek_folder(capsys, tmp_path):
    capsys.readouterr()
    assert main(["janus-convert", str(tiny_janus_dir()), str(tmp_path / "x"), "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "expected 'multi_modality'" in lines[0]
