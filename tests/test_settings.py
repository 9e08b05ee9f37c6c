"""Run settings: checked once, coerced from dicts; one dtype parser, device check, cache root."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from siglip_dola import settings as settings_module
from siglip_dola.settings import (
    RunSettings,
    check_device,
    default_cache_dir,
    default_workers,
    dtype_name,
    parse_dtype,
)


def test_defaults_and_checks():
    s = RunSettings()
    assert (s.batch_size, s.workers, s.device, s.dtype, s.cache_dir, s.progress) == (
        64,
        0,
        "cpu",
        "float32",
        None,
        True,
    )
    assert RunSettings(dtype="bf16").torch_dtype is torch.bfloat16
    assert RunSettings(cache_dir="~/x").cache_dir == Path("~/x").expanduser()
    with pytest.raises(ValueError, match="batch size must be >= 1"):
        RunSettings(batch_size=0)
    with pytest.raises(ValueError, match="workers must be >= 0"):
        RunSettings(workers=-1)
    with pytest.raises(TypeError, match="batch size must be an integer"):
        RunSettings(batch_size=2.5)
    with pytest.raises(ValueError, match="not a compute dtype"):
        RunSettings(dtype="float64")
    with pytest.raises(ValueError, match="unknown dtype"):
        RunSettings(dtype="int3")
    assert (s.compile, s.transfer) == (False, "auto")
    with pytest.raises(TypeError, match="compile must be True or False"):
        RunSettings(compile="yes")
    with pytest.raises(ValueError, match="transfer must be one of"):
        RunSettings(transfer="int8")


@pytest.mark.parametrize(
    "cpus, local, expected, on_cpu",
    [
        (2, None, 1, 0),
        (1, None, 0, 0),
        (16, None, 15, 7),
        (64, None, 16, 16),
        (16, "2", 7, 3),
        (2, "2", 0, 0),
    ],
)
def test_default_workers_follow_the_cpus(monkeypatch, cpus, local, expected, on_cpu):
    monkeypatch.setattr(settings_module, "available_cpus", lambda: cpus)
    if local is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    assert default_workers() == default_workers("cuda:1") == default_workers("mps") == expected
    assert default_workers("cpu") == on_cpu  # the forward shares those CPUs


def test_run_flags_become_settings(monkeypatch):
    import argparse

    from siglip_dola.cli.options import UsageError, add_run_options, run_settings_from_args

    parser = argparse.ArgumentParser()
    add_run_options(parser)
    monkeypatch.setattr(settings_module, "available_cpus", lambda: 5)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    defaults = run_settings_from_args(parser.parse_args(["--no-cache"]))
    assert defaults.workers == 1 and defaults.compile is False  # cpu: half of 5, less one
    chosen = run_settings_from_args(parser.parse_args(["--workers", "0", "--compile"]))
    assert chosen.workers == 0 and chosen.compile is True
    with pytest.raises(UsageError, match="--workers must be >= 0"):
        run_settings_from_args(parser.parse_args(["--workers", "-2"]))


def test_coerce_and_replace():
    s = RunSettings.coerce({"batch_size": 8, "device": "cpu"})
    assert s == RunSettings(batch_size=8)
    assert RunSettings.coerce(None) == RunSettings() and RunSettings.coerce(s) is s
    assert s.replace(progress=False).progress is False and s.progress is True
    with pytest.raises(TypeError, match="unknown run settings"):
        RunSettings.coerce({"batchsize": 8})
    with pytest.raises(ValueError):
        s.replace(batch_size=-3)


def test_dtype_parser():
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype(torch.float16) is torch.float16
    assert parse_dtype(None) is None and parse_dtype("torch.float32") is torch.float32
    assert dtype_name(torch.bfloat16) == "bfloat16" and dtype_name("half") == "float16"
    with pytest.raises(ValueError, match="unknown dtype"):
        parse_dtype("int3")


def test_device_check():
    assert check_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        check_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            check_device("cuda")


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SIGLIP_DOLA_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("SIGLIP_DOLA_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "siglip_dola"
