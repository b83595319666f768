"""One round of the compare view with three arms (base, prompt-only, tuned), answered three ways.

- batched: every arm in one mixed-adapter `generate` call, as the app does (each prompt prefilled alone first);
- in turn: each arm after the other (ChatModel's sequential fallback);
- one arm: the tuned arm alone, the yardstick for "three arms cost little more than one".
Greedy decoding, so batched and in-turn replies must be the same tokens; the figures say whether they were.

    from benchmarks.compare_round import measure
    rows = measure(model_path, adapter_dir, repeats=3)
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from voicetune import arena
from voicetune.config import GenConfig
from voicetune.generate import ChatModel, Reply

ROOT = Path(__file__).resolve().parent.parent
STYLE_GUIDE = "Warm, upbeat and brief. Sign off with 'Stay caffeinated!'"
TUNED = "tuned"


def _round_requests(chat: ChatModel, prompt: str) -> list[Any]:
    examples = [json.loads(line)["messages"] for line in
                (ROOT / "examples" / "cosmo-coffee.jsonl").read_text(encoding="utf-8").splitlines()[:3]]
    arms = [arena.base_arm(), arena.prompt_only_arm(STYLE_GUIDE, examples),
            arena.Arm(f"run:{TUNED}", "Tuned", adapter=TUNED)]
    rnd = arena.new_round(arms, blind=False, rng=random.Random(0))
    return arena.round_requests(rnd, {}, prompt, None)


def _timed(chat: ChatModel, requests: list[Any], gen: GenConfig, batched: bool) -> dict[str, Any]:
    chat.batch_arms = batched
    start = time.perf_counter()
    replies: list[Reply] = chat.generate(requests, gen)
    seconds = time.perf_counter() - start
    if batched or len(replies) == 1:
        all_first = replies[0].first_token_s or seconds
    else:  # in turn, the last pane shows its first token after every earlier arm has finished
        all_first = sum(r.seconds for r in replies[:-1]) + (replies[-1].first_token_s or 0.0)
    tokens = sum(r.reply_tokens for r in replies)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds,
            "first_token_s": all_first, "texts": [r.text for r in replies]}


def _questions() -> list[str]:
    """Customer questions, a fresh one for every round: the app reuses the start a prompt shares with the
    arm's earlier prompts (the prompt-only arm's instructions), so repeating one question would flatter it."""
    rows = [json.loads(line)["messages"] for line in
            (ROOT / "benchmarks" / "data" / "mixed-lengths.jsonl").read_text(encoding="utf-8").splitlines()]
    firsts = [next(m["content"] for m in msgs if m["role"] == "user") for msgs in rows]
    return list(dict.fromkeys(firsts))  # in order, without repeats


def _lever_flipped(model_path: str) -> ChatModel:
    """A chat model with the decoding-matmul lever (levers.CpuLevers.skinny_decode) the other way round."""
    import dataclasses

    from voicetune import levers

    chosen = levers.chosen
    levers.chosen = lambda: dataclasses.replace(chosen(), skinny_decode=not chosen().skinny_decode)
    try:
        return ChatModel(model_path)
    finally:
        levers.chosen = chosen


def measure(model_path: str, adapter_dir: str, repeats: int = 3, max_new_tokens: int = 48,
            flip_skinny_decode: bool = False) -> list[dict[str, Any]]:
    """Alternate the three ways within each repeat, so load from other processes hits all of them alike.

    Every repeat asks a new question, the same for the three ways. The one-arm way has a model of its own,
    so neither batched nor one arm ever finds the other's prefill of that question.
    """
    chat, alone = ChatModel(model_path), ChatModel(model_path)
    flipped = _lever_flipped(model_path) if flip_skinny_decode else None
    for c in (chat, alone, *([flipped] if flipped else [])):
        c.load_adapter(adapter_dir, name=TUNED)
    gen = GenConfig(max_new_tokens=max_new_tokens, greedy=True)
    questions = iter(_questions())
    warm_up = _round_requests(chat, next(questions))
    _timed(chat, warm_up, gen, batched=True)  # first calls pay for one-off allocations
    _timed(alone, warm_up[-1:], gen, batched=True)
    if flipped:
        _timed(flipped, warm_up, gen, batched=True)
    rows = []
    for i in range(repeats):
        requests = _round_requests(chat, next(questions))
        ways = [("batched", chat, requests, True), ("in turn", chat, requests, False),
                ("one arm", alone, requests[-1:], True)]
        if flipped:
            ways.append((f"batched, skinny decode {'on' if flipped.skinny_decode else 'off'}", flipped, requests, True))
        for way, model, reqs, batched in (ways if i % 2 == 0 else ways[::-1]):
            rows.append({"way": way, "repeat": i, **_timed(model, reqs, gen, batched)})
    chat.batch_arms = True
    return rows
