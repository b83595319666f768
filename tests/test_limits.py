"""Limits and order of checks: settings that would hold the machine are refused by name, and the command line
checks its files before any base model is converted or loaded (an empty model cache stays empty)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from voicetune.config import TrainConfig

COSMO = ROOT / "examples" / "cosmo-coffee.jsonl"


@pytest.fixture()
def empty_cache(tmp_path: Path) -> Path:
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    return cache


@pytest.mark.parametrize(("settings", "message"), [
    ({"max_steps": 10_000_000}, "`max_steps` must be at most 100,000, got 10,000,000"),
    ({"grad_accum": 4096}, "`grad_accum` must be at most 256, got 4,096"),
    ({"max_length": 1_000_000}, "`max_length` must be at most 32,768, got 1,000,000"),
    ({"batch_size": 512}, "`batch_size` must be at most 64, got 512"),
    ({"epochs": 1e6}, "`epochs` must be at most 100, got 1,000,000.0"),
    ({"early_stopping_patience": 10_000}, "`early_stopping_patience` must be at most 100, got 10,000"),
    ({"lora": {"r": 1024}}, "`lora.r` must be at most 256, got 1,024"),
])
def test_settings_that_size_memory_or_time_have_a_maximum(settings: dict, message: str) -> None:
    with pytest.raises(ValueError) as e:
        TrainConfig(**settings)
    assert str(e.value) == message


def test_the_command_line_refuses_a_setting_over_its_cap_before_anything_loads(tmp_path: Path,
                                                                              empty_cache: Path) -> None:
    env = {"VOICETUNE_CACHE": str(empty_cache)}
    out = tmp_path / "out"
    result = run_cli("train", "--data", str(COSMO), "--out", str(out), "--max-steps", "10000000", env=env)
    assert (result.returncode, result.stderr) == (64, "error: `max_steps` must be at most 100,000, got 10,000,000\n")
    config = tmp_path / "run.yaml"
    config.write_text("grad_accum: 100000\nmax_length: 2048\n")
    result = run_cli("train", "--data", str(COSMO), "--out", str(out), "--config", str(config), env=env)
    assert (result.returncode, result.stderr) == (
        64, f"error: config {config}: `grad_accum` must be at most 256, got 100,000\n")
    assert list(empty_cache.iterdir()) == [] and not out.exists()


def test_train_checks_the_held_out_file_before_it_converts_the_base_model(tmp_path: Path, empty_cache: Path) -> None:
    """Issue 15, cheap before expensive: the held-out file used to be read only after the base model was
    converted and its tokenizer loaded."""
    config = tmp_path / "run.yaml"
    config.write_text(f"heldout_data: {tmp_path / 'gone.jsonl'}\n")
    result = run_cli("train", "--data", str(COSMO), "--out", str(tmp_path / "out"), "--config", str(config),
                     env={"VOICETUNE_CACHE": str(empty_cache)})
    assert (result.returncode, result.stderr) == (2, (
        "file: (held-out file) file not found: gone.jsonl\n"  # the progress event, as a job's log shows it
        f"error: {COSMO} has problems:\n  file: (held-out file) file not found: {tmp_path / 'gone.jsonl'}\n"))
    assert list(empty_cache.iterdir()) == []
