"""Every test gets its own workspace; the converted base model is shared, since converting takes ~30 s."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL_CACHE = ROOT / ".cache" / "models"


# The longest test files, from a full run's durations (each 1.5-5 minutes on 2 cores): started first, so that
# with two workers (`make test TEST_WORKERS=2`, files whole, in collection order) neither finishes a long file
# alone at the end.
LONGEST_FIRST = ("test_sweep.py", "test_dpo.py", "test_export.py", "test_serve.py", "test_e2e.py", "test_load.py",
                 "test_bench.py", "test_training_engine.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest files first (only the order changes); tests marked gpu skip, with the reason, where there is
    no CUDA: `make test` runs every CPU tier anywhere."""
    if os.environ.get("PYTEST_XDIST_WORKER"):  # one process runs the files in their usual order
        first = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: first.get(item.path.name, len(first)))  # stable: the others keep their order
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        for item in gpu:
            item.add_marker(pytest.mark.skip(reason="needs CUDA (run it with `make test-gpu` on a GPU machine)"))


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
        return models.resolve_base_model(None)
    finally:
        if old is not None:
            os.environ["VOICETUNE_CACHE"] = old


@pytest.fixture()
def scripted_chat(monkeypatch: pytest.MonkeyPatch):
    """Every model `generate.shared_model` hands out in this process is one ScriptedChatModel (tests/fakes.py).

    For UI and API tests that test the app, not the model: no weights load and replies are what the test
    enqueues. Its base model is the one it was asked for, so a run's record still has to match it.
    """
    from collections import OrderedDict

    from tests.fakes import ScriptedChatModel
    from voicetune import generate

    fake = ScriptedChatModel()

    def make(base_model: str | None = None, four_bit: bool | None = None) -> ScriptedChatModel:
        fake.base_model = base_model or fake.base_model
        return fake

    monkeypatch.setattr(generate, "ChatModel", make)
    monkeypatch.setattr(generate, "_shared", OrderedDict())  # shared_model's LRU of loaded bases
    return fake


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


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A session artifact built once per test run, even when pytest-xdist runs the tests in several processes:
    the first worker builds it in the run's shared temporary folder under a file lock, the others wait and
    reuse it (xdist's documented recipe; each worker otherwise has its own session and would build it again)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def pirate_adapter(tmp_path_factory: pytest.TempPathFactory, base_path: str) -> Path:
    """One real training run through the CLI contract (scorecard included), shared by the slow tests."""

    def build(tmp: Path) -> None:
        data = voice_data(tmp / "pirate.jsonl", f"Arr, the crew be on it right now. {SIGN_OFF}")
        # Test prompts beside the data, as the bundled voices ship them. Four are training questions: each is
        # either held out (then already scored) or trained on (then left out); three are new.
        write_jsonl(tmp / "pirate.prompts.txt", PIRATE_PROMPTS)
        # No replay: this is the deliberately over-trained voice the scorecard tests read, not the defaults.
        result = run_cli("train", "--data", str(data), "--out", str(tmp / "adapter"), "--epochs", "3", "--seed", "1",
                         "--replay", "0",
                         "--learning-rate", "2e-3", "--val-fraction", "0.25",
                         env={"VOICETUNE_HOME": str(tmp / "home"), "VOICETUNE_CACHE": str(MODEL_CACHE)})
        assert result.returncode == 0, result.stderr[-3000:]

    return built_once(tmp_path_factory, "pirate", build) / "adapter"


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


# Qwen2.5's chat template without its tool branches: a second template family beside SmolLM2's (another default
# system prompt), so an adapter of one base can never pass for the other's.
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message['role'] != 'system' %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _small_bpe_tokenizer():
    """A byte-level BPE of 600 tokens trained on the bundled examples: another vocabulary than SmolLM2's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = [line for f in sorted((ROOT / "examples").glob("*.jsonl")) for line in f.read_text().splitlines()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(text + QUESTIONS, trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = QWEN_TEMPLATE
    return fast


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised two-layer Qwen2 with its own small tokenizer and a Qwen (ChatML) template.

    The second base of the multi-base tests: another architecture, vocabulary and template than the embedded
    model, so a run of one answered by the other would fail its checks, not pass by accident.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = tmp_path_factory.mktemp("tiny-qwen")
    tok = _small_bpe_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def until(predicate, timeout_s: float = 180, what: str = "condition"):
    """Poll `predicate` (waking the job supervisor each time) until it returns something true, and return that."""
    import time

    from voicetune import jobs

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        jobs.supervisor().wake()
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def in_process_app() -> Iterator:
    """The whole app served in this process on a free port; yields a gradio_client Client to it (for a fixture)."""
    from gradio_client import Client

    from tests.running_app import free_port
    from voicetune.ui.app import build_app

    demo = build_app()
    demo.queue(default_concurrency_limit=1)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()
