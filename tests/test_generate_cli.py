"""`siglip-dola generate` end to end on a tiny Janus: layout, manifest, resume, overwrite,
sharding, batching, interruption."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _tiny_janus import (
    SENTENCES,
    generate_argv,
    output_files,
    read_manifest,
    tiny_janus_dir,
    write_prompts,
)
from PIL import Image

from siglip_dola.cli import main
from siglip_dola.generate import runner
from siglip_dola.generate.sampling import candidate_seed

# Five prompts, one repeated: the repeat still gets its own seeds (seeds follow the index).
PROMPTS = [*SENTENCES[:4], SENTENCES[0]]
SETTINGS = ("--parallel-size", "3", "--per-prompt", "2")


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    return write_prompts(tmp_path_factory.mktemp("prompts") / "prompts.json", PROMPTS)


@pytest.fixture(scope="module")
def reference(prompts_file, tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """One uninterrupted single-process run, all prompts in one batch."""
    out = tmp_path_factory.mktemp("ref") / "out"
    assert main(generate_argv(prompts_file, out, None, *SETTINGS, "--batch-prompts", "5")) == 0
    return out, output_files(out)


def no_temp_files(out: Path) -> bool:
    return not [p for p in out.rglob("*") if p.name.endswith(".tmp") or ".partial" in p.name]


def test_layout_and_manifest(reference):
    out, files = reference
    expected_dirs = [f"prompt_{i:04d}" for i in range(len(PROMPTS))]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == expected_dirs
    lines = read_manifest(out)
    assert [r["index"] for r in lines] == list(range(len(PROMPTS)))
    for index, record in enumerate(lines):
        folder = out / expected_dirs[index]
        assert record["prompt"] == PROMPTS[index]
        assert (folder / "prompt.txt").read_text(encoding="utf-8") == PROMPTS[index] + "\n"
        assert record["files"] == [
            f"{expected_dirs[index]}/img_00.jpg",
            f"{expected_dirs[index]}/img_01.jpg",
        ]
        assert json.loads((folder / "record.json").read_text()) == record
        assert record["seed"] == 0
        assert [c["seed"] for c in record["candidates"]] == [
            candidate_seed(0, index, j) for j in range(2)
        ]
        settings = record["settings"]
        assert settings["cfg_weight"] == 5.0 and settings["temperature"] == 1.0
        assert settings["per_prompt"] == 2 and settings["select"] == "first"
        for name in record["files"]:
            with Image.open(out / name) as image:
                assert image.format == "JPEG" and image.mode == "RGB"
                assert image.size == (64, 64)
    # the repeated prompt got other seeds, hence other images
    assert files["prompt_0000/img_00.jpg"] != files["prompt_0004/img_00.jpg"]
    assert no_temp_files(out)


def test_rerun_skips_finished_prompts_without_loading_the_model(
    reference, prompts_file, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)

    def no_load(*args, **kwargs):
        raise AssertionError("a finished run must not load the model")

    monkeypatch.setattr(runner, "load_janus", no_load)
    assert main(generate_argv(prompts_file, out, None, *SETTINGS)) == 0
    assert output_files(out) == reference[1]


@pytest.mark.parametrize("batch", ["1", "2"])
def test_images_do_not_depend_on_batch_prompts(reference, prompts_file, tmp_path, batch):
    out = tmp_path / "out"
    assert main(generate_argv(prompts_file, out, None, *SETTINGS, "--batch-prompts", batch)) == 0
    assert output_files(out) == reference[1]


def test_shards_union_equals_single_run(reference, prompts_file, tmp_path, monkeypatch):
    # Each shard takes one contiguous block of the five prompts.
    out = tmp_path / "out"
    done: list[int] = []
    for shard, block in (("1/2", [3, 4]), ("0/2", [0, 1, 2])):
        assert main(generate_argv(prompts_file, out, None, *SETTINGS, "--shard", shard)) == 0
        done = sorted(done + block)
        assert [r["index"] for r in read_manifest(out)] == done
    assert output_files(out) == reference[1]
    # torchrun's environment variables split the same way
    out = tmp_path / "torchrun"
    monkeypatch.setenv("WORLD_SIZE", "3")
    done = []
    for rank, block in ((2, [4]), (0, [0, 1]), (1, [2, 3])):
        monkeypatch.setenv("RANK", str(rank))
        assert main(generate_argv(prompts_file, out, None, *SETTINGS)) == 0
        done = sorted(done + block)
        assert [r["index"] for r in read_manifest(out)] == done
    assert output_files(out) == reference[1]


def test_changed_settings_need_overwrite(reference, prompts_file, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    capsys.readouterr()
    argv = generate_argv(
        prompts_file, out, None, "--parallel-size", "3", "--per-prompt", "1", "--cfg-weight", "3"
    )
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and "prompt_0000" in err[0]
    assert output_files(out) == reference[1]  # nothing touched

    assert main([*argv, "--overwrite"]) == 0
    lines = read_manifest(out)
    assert len(lines) == len(PROMPTS)
    assert all(r["settings"]["cfg_weight"] == 3.0 and len(r["files"]) == 1 for r in lines)
    assert not list(out.rglob("img_01.jpg"))  # images of the earlier, larger --per-prompt
    assert output_files(out)["prompt_0000/img_00.jpg"] != reference[1]["prompt_0000/img_00.jpg"]


def test_results_of_the_earlier_prompt_format_are_another_job(
    reference, prompts_file, tmp_path, capsys
):
    # Records written before prompts were stripped and padded as DeepSeek does carry the
    # first prompt format: a resume must not mix their images with the present ones.
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    record_path = out / "prompt_0000" / "record.json"
    record = json.loads(record_path.read_text())
    record["settings"]["prompt_format"] = "deepseek-t2i"
    record_path.write_text(json.dumps(record))
    capsys.readouterr()
    assert main(generate_argv(prompts_file, out, None, *SETTINGS)) == 2
    err = capsys.readouterr().err.strip()
    assert "prompt_format" in err and "prompt_0000" in err and "--overwrite" in err


def test_changed_prompt_file_needs_overwrite(reference, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    changed = write_prompts(tmp_path / "p.json", [PROMPTS[0], "something else entirely"])
    assert main(generate_argv(changed, out, None, *SETTINGS)) == 2
    assert "prompt_0001" in capsys.readouterr().err


def test_interrupted_run_leaves_only_whole_files_and_resumes(
    reference, prompts_file, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    real_replace = os.replace

    def replace(src, dst):
        # Ctrl-C while the second image of prompt 2 is being put in place
        if str(dst).endswith(os.path.join("prompt_0002", "img_01.jpg")):
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert main(generate_argv(prompts_file, out, None, *SETTINGS, "--batch-prompts", "2")) == 130
    monkeypatch.setattr(os, "replace", real_replace)

    assert no_temp_files(out)
    assert [r["index"] for r in read_manifest(out)] == [0, 1]
    assert (out / "prompt_0002" / "img_00.jpg").is_file()  # written whole, not yet vouched for
    assert not (out / "prompt_0002" / "record.json").exists()
    assert not (out / "prompt_0002" / "img_01.jpg").exists()
    for name, data in output_files(out).items():
        if name.endswith(".jpg"):
            assert data == reference[1][name]

    assert main(generate_argv(prompts_file, out, None, *SETTINGS)) == 0
    assert output_files(out) == reference[1]


def test_prompt_whitespace_is_stripped_for_the_model_but_kept_in_the_manifest(reference, tmp_path):
    # DeepSeek strips each message: "  <p> \n" makes the same images as "<p>".
    padded = [f"  {PROMPTS[0]} \n", f"\t{PROMPTS[1]}"]
    prompts = write_prompts(tmp_path / "p.json", padded)
    out = tmp_path / "out"
    assert main(generate_argv(prompts, out, None, *SETTINGS)) == 0
    files = output_files(out)
    for name in ("prompt_0000/img_00.jpg", "prompt_0000/img_01.jpg", "prompt_0001/img_00.jpg"):
        assert files[name] == reference[1][name]
    assert [r["prompt"] for r in read_manifest(out)] == padded
    assert (out / "prompt_0000" / "prompt.txt").read_text(encoding="utf-8") == padded[0] + "\n"


def _run_cli(argv: list[str]) -> subprocess.CompletedProcess:
    src = str(Path(__file__).resolve().parent.parent / "src")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=src)
    return subprocess.run(
        [sys.executable, "-m", "siglip_dola", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_clean_run_prints_only_our_own_lines(tmp_path):
    prompts = write_prompts(tmp_path / "p.json", SENTENCES[:2])
    argv = generate_argv(prompts, tmp_path / "out", tiny_janus_dir(), "--parallel-size", "1")
    argv.remove("--quiet")
    done = _run_cli(argv)
    assert done.returncode == 0, done.stderr
    for noise in ("Warning", "warning", "deprecated", "[transformers]", "Traceback"):
        assert noise not in done.stderr and noise not in done.stdout, done.stderr
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]
    bars = ("Loading weights", "Loading checkpoint shards")  # transformers 5.x, 4.x
    ours = ("2 prompt(s) to generate", "loading ", "generate", *bars)
    assert all(line.startswith(ours) for line in lines), lines
    assert done.stdout.startswith("2 prompt(s) generated")


def test_ctrl_c_on_a_real_process(tmp_path):
    """SIGINT to a running `python -m siglip_dola generate`: exit 130, whole files only."""
    prompts = write_prompts(tmp_path / "p.json", [f"{SENTENCES[0]} number {i}" for i in range(60)])
    out = tmp_path / "out"
    argv = generate_argv(
        prompts, out, tiny_janus_dir(), "--parallel-size", "1", "--batch-prompts", "1"
    )
    src = str(Path(__file__).resolve().parent.parent / "src")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=src)
    proc = subprocess.Popen(
        [sys.executable, "-m", "siglip_dola", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not (out / "prompt_0002" / "record.json").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "generation did not start in time"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert no_temp_files(out)
    lines = read_manifest(out)
    assert 3 <= len(lines) < 60
    for record in lines:
        for name in record["files"]:
            with Image.open(out / name) as image:
                image.load()  # a truncated JPEG would fail here
    folders_with_record = {p.parent.name for p in out.glob("prompt_*/record.json")}
    assert folders_with_record == {r["dir"] for r in lines}
