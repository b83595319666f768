"""What a streamed batch of replies yields, and the thread that streams it.

A batch streams one kind of event, `Update`: every row's text so far, and, in the last one only, the
finished `Reply` of each row. A caller shows `update.texts` and keeps `update.replies` once they are there;
it never has to test what kind of thing it was handed.

    for update in chat.stream(requests, gen):
        show(update.texts)
        if update.replies is not None:
            save(update.replies)
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class Reply:
    """One row's finished reply and what it cost, as the panes' stats lines and the API's usage show it."""

    text: str
    prompt_tokens: int
    reply_tokens: int
    seconds: float
    first_token_s: float | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.reply_tokens / self.seconds if self.seconds > 0 else 0.0

    def hit_limit(self, max_new_tokens: int) -> bool:
        """Whether the reply ran to the token limit instead of ending itself: the API's finish_reason "length",
        and the scorecard's "cut" (a sign-off past the limit is unheard)."""
        return self.reply_tokens >= max_new_tokens


@dataclass(frozen=True)
class Update:
    """One event of a streamed batch: every row's text so far, in request order; in the last event also the
    finished Replies, whose texts `texts` then holds."""

    texts: list[str]
    replies: list[Reply] | None = None  # None until the batch is finished

    @classmethod
    def finished(cls, replies: list[Reply]) -> Update:
        return cls([r.text for r in replies], list(replies))


def final_replies(updates: Iterable[Update]) -> list[Reply]:
    """Run a stream to its end and return its Replies: for callers that show no partial text."""
    last = None
    for last in updates:
        pass
    if last is None or last.replies is None:
        raise RuntimeError("the reply stream ended without its finished replies")
    return last.replies


class BatchStreamer:
    """Runs one batched `generate` in a worker thread and hands every row's tokens to the caller's thread.

    A thread because `generate` returns only at the end, and the caller shows text while it runs. Written here
    because transformers' TextStreamer and TextIteratorStreamer refuse batches larger than one; `put` and
    `end` are the streamer protocol `generate` calls.
    """

    def __init__(self, rows: int, eos_ids: set[int]):
        self.rows: list[list[int]] = [[] for _ in range(rows)]
        self.eos_ids = eos_ids
        self.finished_at: list[float | None] = [None] * rows
        self.queue: queue.Queue = queue.Queue()
        self.seen_prompt = False
        self.started_at = 0.0
        self.first_token_at: float | None = None
        self._result: dict[str, Any] = {}
        self._thread: threading.Thread | None = None

    def put(self, value: Any) -> None:
        if not self.seen_prompt:  # the first call carries the prompt ids
            self.seen_prompt = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        now = time.perf_counter()
        tokens = value.reshape(len(self.rows), -1).tolist()
        for i, (row, new) in enumerate(zip(self.rows, tokens)):
            row.extend(new)
            if self.finished_at[i] is None and any(t in self.eos_ids for t in new):
                self.finished_at[i] = now
        self.queue.put([list(r) for r in self.rows])

    def end(self) -> None:
        self.queue.put(None)

    def start(self, work: Callable[[], Any]) -> None:
        """Run `work` (the generate call, given this streamer) in a worker thread; its error is kept for result()."""

        def target() -> None:
            try:
                self._result["out"] = work()
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread by result()
                self._result["error"] = e
            finally:
                self.end()

        self.started_at = time.perf_counter()
        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[list[list[int]]]:
        """Every row's tokens so far, as they arrive, until generate ends."""
        while True:
            item = self.queue.get()
            if item is None:
                return
            # Skip to the newest snapshot: a slow consumer should not replay every step.
            while not self.queue.empty():
                nxt = self.queue.get()
                if nxt is None:
                    yield item
                    return
                item = nxt
            yield item

    def result(self) -> tuple[Any, list[float], float | None]:
        """Wait for the worker; its output, each row's seconds, and the first token's (its error is raised here).

        Each row's seconds count up to its own last token, not until the longest row in the batch is done.
        """
        assert self._thread is not None, "start() first"
        self._thread.join()
        if "error" in self._result:
            raise self._result["error"]
        end = time.perf_counter()
        first = self.first_token_at - self.started_at if self.first_token_at else None
        return self._result["out"], [(t or end) - self.started_at for t in self.finished_at], first
