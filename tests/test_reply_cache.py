"""The scorecard's cache of base-model replies: a re-score generates only the tuned arm, and the cache never
answers for another base, other weights, other decoding, a sampled reply or another user's workspace."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.conftest import voice_data
from voicetune import reply_cache, store
from voicetune.config import GenConfig
from voicetune.generate import ChatModel, Request

GEN = GenConfig(max_new_tokens=8)
PROMPTS = ["Where is my order?", "Can I change my address?", "Do you ship abroad?"]


def spied(chat: ChatModel) -> list[list[str | None]]:
    """Every batch the model is asked to generate, as the adapters of its rows (the real model still answers)."""
    calls: list[list[str | None]] = []
    real = chat.generate

    def generate(requests: list[Request], gen: GenConfig):
        calls.append([r.adapter for r in requests])
        return real(requests, gen)

    chat.generate = generate  # type: ignore[method-assign]
    return calls


def asks(prompts: list[str], adapter: str | None = None) -> list[Request]:
    return [Request([{"role": "user", "content": p}], adapter) for p in prompts]


def test_base_replies_come_back_from_the_cache_and_only_for_the_same_base_decoding_and_user(
        tiny_model: Path, tmp_path: Path) -> None:
    chat = ChatModel(str(tiny_model))
    calls = spied(chat)
    first = reply_cache.generate(chat, asks(PROMPTS), GEN)
    again = reply_cache.generate(chat, asks(PROMPTS[:2] + ["Something new?"]), GEN)
    assert calls == [[None] * 3, [None]]  # only the new prompt was generated
    assert [(r.text, r.prompt_tokens, r.reply_tokens) for r in again[:2]] == \
        [(r.text, r.prompt_tokens, r.reply_tokens) for r in first[:2]]

    reply_cache.generate(chat, asks(PROMPTS), GenConfig(max_new_tokens=9))  # other decoding: generated again
    reply_cache.generate(chat, asks(PROMPTS), GenConfig(max_new_tokens=8, greedy=False))  # sampled: never cached
    reply_cache.generate(chat, asks(PROMPTS), GenConfig(max_new_tokens=8, greedy=False))
    assert calls[2:] == [[None] * 3] * 3

    weights = tiny_model / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the base's weights replaced
    try:
        reply_cache.generate(chat, asks(PROMPTS), GEN)
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert calls[5:] == [[None] * 3]

    with store.user_scope("someone-else"):  # another user's workspace has its own cache
        reply_cache.generate(chat, asks(PROMPTS), GEN)
    assert calls[6:] == [[None] * 3]


def test_a_rescore_generates_only_the_tuned_arm_and_gives_the_same_card(tiny_model: Path, tmp_path: Path) -> None:
    """Half the scorecard's replies are the base model's: a second scorecard of a run (a re-score, the next run
    of a project, a DPO child) reads them, and its card is the first one's."""
    from voicetune.config import TrainConfig
    from voicetune.evaluate import scorecard
    from voicetune.train import run_sft

    data = voice_data(tmp_path / "voice.jsonl", "Arr, matey! Yer parcel be on its way.")
    run = tmp_path / "run"
    run_sft(TrainConfig(data=str(data), out=str(run), base_model=str(tiny_model), max_steps=2, val_fraction=0.25,
                        scorecard=False))
    chat = ChatModel(str(tiny_model))
    calls = spied(chat)
    first = scorecard(run, chat=chat, save=False)
    rows_first = sum(len(c) for c in calls)
    calls.clear()
    second = scorecard(run, chat=chat, save=False)
    assert calls and all(adapter is not None for call in calls for adapter in call), calls
    assert sum(len(c) for c in calls) < rows_first / 2
    assert json.dumps(second, sort_keys=True) == json.dumps(first, sort_keys=True)


def test_a_stand_in_model_without_a_base_folder_is_never_cached(scripted_chat) -> None:
    assert reply_cache.identity(scripted_chat) is None
    scripted_chat.enqueue("One.", "Two.")
    assert [r.text for r in reply_cache.generate(scripted_chat, asks(PROMPTS[:1]), GEN)] == ["One."]
    assert [r.text for r in reply_cache.generate(scripted_chat, asks(PROMPTS[:1]), GEN)] == ["Two."]


def test_the_decoding_lever_is_part_of_what_decides_a_reply(tiny_model: Path) -> None:
    """The lever (levers.py) rounds the decoding matmuls another way, so a reply kept without it is not reused
    with it: a host kind whose lever changes, or a flipped bench arm, generates afresh."""
    chat = ChatModel(str(tiny_model))
    kept = reply_cache.identity(chat)
    chat.skinny_decode = not chat.skinny_decode
    assert kept is not None and reply_cache.identity(chat) != kept
