"""Every test gets its own workspace; the converted base model is shared, since converting takes ~30 s."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL_CACHE = ROOT / ".cache" / "models"


@pytest.fixture(autouse=True)
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "workspace"
    monkeypatch.setenv("VOICETUNE_HOME", str(home))
    monkeypatch.setenv("VOICETUNE_CACHE", str(MODEL_CACHE))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub
    monkeypatch.delenv("VOICETUNE_BASE_MODEL", raising=False)
    return home


@pytest.fixture(scope="session")
def base_path() -> str:
    os.environ.setdefault("VOICETUNE_CACHE", str(MODEL_CACHE))
    from voicetune import models

    old = os.environ.get("VOICETUNE_CACHE")
    os.environ["VOICETUNE_CACHE"] = str(MODEL_CACHE)
    try:
        return models.resolve_base_model(None)
    finally:
        if old is not None:
            os.environ["VOICETUNE_CACHE"] = old


@pytest.fixture(scope="session")
def tokenizer(base_path: str):
    from voicetune import models

    return models.load_tokenizer(base_path)


def run_cli(*args: str, env: dict | None = None, timeout: int = 600):
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "voicetune", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=timeout, env={**os.environ, **(env or {})},
    )


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
