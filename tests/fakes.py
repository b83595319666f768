"""A scripted chat model for UI and API tests that test the app, not the model (llm's MockModel, for voicetune).

Loading the embedded model and generating with it costs tens of seconds per test; the Compare tab's
wiring (arms, panes, blind labels, votes, teach, batch grid) is the same whatever the model says. This
stands in for `generate.ChatModel` wherever `generate.shared_model` hands one out, with replies the test
enqueues, and it records every request so a test can check which arm asked for which adapter.

    def test_compare(scripted_chat):
        scripted_chat.enqueue("Plain answer.", "Arr, matey!")  # one reply per request, in request order
        ...  # drive the app
        assert [r.adapter for r in scripted_chat.requests[-2:]] == [None, "my-run"]

Training, the loss mask, base purity, the scorecard and the browser journey keep the real model.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from voicetune import models, runs
from voicetune.config import GenConfig
from voicetune.generate import AdapterError, Reply, Request, Update
from voicetune.streaming import final_replies

SECONDS = 0.5  # every scripted reply "takes" this long, so the per-pane figures are exact


def count_tokens(messages: list[dict]) -> int:
    """The fake's token count: words, so a test can say exactly what the stats line shows."""
    return sum(len(str(m["content"]).split()) for m in messages)


class ScriptedChatModel:
    """The parts of ChatModel the UI and the API use: base_model, load_adapter, check_adapter, stream, generate."""

    def __init__(self, base_model: str | None = None):
        self.base_model = base_model or models.default_base_model()
        self.lock = threading.RLock()  # shared_model's LRU never evicts a base whose lock is held
        self.model = torch.nn.Module()  # no weights: generate.loaded_bytes counts 0 against the memory budget
        self.adapters: dict[str, str] = {}  # name -> folder, as asked for by load_adapter
        self.requests: list[Request] = []  # every request answered, in order
        self.gens: list[GenConfig] = []  # the decoding settings of every call, in order
        self._script: deque[str] = deque()
        self._made = 0

    def enqueue(self, *replies: str) -> None:
        """The next replies, one per request, in the order requests arrive (arm order within a round)."""
        self._script.extend(replies)

    def check_adapter(self, adapter_dir: str | Path) -> dict[str, Any]:
        """A real run folder is still required: a fake must not accept what the app would refuse."""
        try:
            return runs.read(adapter_dir)
        except runs.RunError as e:
            raise AdapterError(str(e)) from e

    def load_adapter(self, adapter_dir: str | Path, name: str | None = None) -> str:
        name = name or Path(adapter_dir).name
        self.check_adapter(adapter_dir)
        self.adapters[name] = str(adapter_dir)
        return name

    def _next(self) -> str:
        if self._script:
            return self._script.popleft()
        self._made += 1
        return f"Scripted reply number {self._made}."

    @staticmethod
    def _cut(text: str, limit: int) -> str:
        words = text.split()
        return " ".join(words[:limit]) if len(words) > limit else text

    def stream(self, requests: list[Request], gen: GenConfig) -> Iterator[Update]:
        """Word by word for every row at once, then the finished Replies, as ChatModel.stream yields them."""
        for r in requests:
            if r.adapter is not None and r.adapter not in self.adapters:
                raise AdapterError(f"no adapter called {r.adapter!r} is loaded")
        self.requests.extend(requests)
        self.gens.append(gen)
        # Cut at the token limit as a model is (a word a token here, as reply_tokens counts), so a reply that runs
        # to it shows as cut; a shorter one keeps its text as enqueued
        texts = [self._cut(self._next(), gen.max_new_tokens) for _ in requests]
        words = [t.split() for t in texts]
        for n in range(1, max(len(w) for w in words)):
            yield Update([" ".join(w[:n]) for w in words])
        yield Update.finished([Reply(text=t, prompt_tokens=count_tokens(r.messages), reply_tokens=len(t.split()),
                                     seconds=SECONDS) for t, r in zip(texts, requests)])

    def generate(self, requests: list[Request], gen: GenConfig) -> list[Reply]:
        return final_replies(self.stream(requests, gen))
