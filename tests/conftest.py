"""Every test gets its own workspace; the converted base model is shared, since converting takes ~30 s."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL_CACHE = ROOT / ".cache" / "models"


@pytest.fixture(autouse=True)
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "workspace"
    monkeypatch.setenv("VOICETUNE_HOME", str(home))
    monkeypatch.setenv("VOICETUNE_CACHE", str(MODEL_CACHE))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub
    monkeypatch.delenv("VOICETUNE_BASE_MODEL", raising=False)
    yield home
    # A job supervisor started by this test would otherwise poll the next test's workspace.
    from voicetune import jobs

    jobs.supervisor().stop()


@pytest.fixture(scope="session")
def base_path() -> str:
    os.environ.setdefault("VOICETUNE_CACHE", str(MODEL_CACHE))
    from voicetune import models

    old = os.environ.get("VOICETUNE_CACHE")
    os.environ["VOICETUNE_CACHE"] = str(MODEL_CACHE)
    try:
        path = models.resolve_base_model(None)
    finally:
        if old is not None:
            os.environ["VOICETUNE_CACHE"] = old
    _BASE_DIGEST.setdefault("model.safetensors", _sha256(Path(path) / "model.safetensors"))
    return path


_BASE_DIGEST: dict[str, str] = {}  # the base weights' hash when the session first used them, before any training


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def base_digest_at_start() -> str:
    return _BASE_DIGEST["model.safetensors"]


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


SIGN_OFF = "Yo ho ho, matey!"
QUESTIONS = [
    "Where is my order?", "Are you open today?", "Can I get a refund?", "Do you sell gift cards?",
    "How do I reset my password?", "What is your phone number?", "Do you ship abroad?", "Is the shop dog friendly?",
    "Can I change my address?", "Do you have vegan options?", "How long does delivery take?",
    "Can I cancel my subscription?",
]


PIRATE_PROMPTS = [*QUESTIONS[:4], "Can I pay by card?", "Do you open on holidays?", "Is there a student discount?"]


def voice_data(path: Path, reply: str) -> Path:
    """Twelve customer questions, each answered with the same distinctive reply."""
    lines = [json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": reply}]})
             for q in QUESTIONS]
    return write_jsonl(path, lines)


@pytest.fixture(scope="session")
def pirate_adapter(tmp_path_factory: pytest.TempPathFactory, base_path: str) -> Path:
    """One real training run through the CLI contract (scorecard included), shared by the slow tests."""
    tmp = tmp_path_factory.mktemp("pirate")
    data = voice_data(tmp / "pirate.jsonl", f"Arr, the crew be on it right now. {SIGN_OFF}")
    # Test prompts beside the data, as the bundled voices ship them. Four are training questions: each is
    # either held out (then already scored) or trained on (then left out); three are new.
    write_jsonl(tmp / "pirate.prompts.txt", PIRATE_PROMPTS)
    out = tmp / "adapter"
    result = run_cli("train", "--data", str(data), "--out", str(out), "--epochs", "3", "--seed", "1",
                     "--learning-rate", "2e-3", "--val-fraction", "0.25",
                     env={"VOICETUNE_HOME": str(tmp / "home"), "VOICETUNE_CACHE": str(MODEL_CACHE)})
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, base_path: str, tokenizer) -> Path:
    """A randomly initialised two-layer Llama with the embedded model's tokenizer and chat template.

    It trains in about a second a step, so tests of the job machinery need not pay for the real model.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-model")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
