"""Requests from many API callers, answered together in the mixed-adapter batches the compare view uses.

One worker thread owns the shared ChatModel's generation for API calls. Requests that arrive within a short
window (WINDOW_S), or while a batch is running, wait in one list; each round takes the oldest request and
every waiting request that may share its `generate` call, up to MAX_BATCH, whatever run each one asks for
(each row names its own adapter, "no adapter" for the base model: ChatModel.stream).

What is batched together, and why:
- Greedy requests with the same max_tokens: greedy replies are the same tokens batched or alone (the
  compare path's guarantee, tested there and in tests/test_serve.py), so batching changes nothing a caller
  can see. max_tokens must match because one call has one limit, and a reply cut at another limit is
  another reply.
- Sampled requests without a seed, with the same temperature, top_p and max_tokens: one call samples with
  one setting. They share a fresh random seed; nobody asked for a particular one.
- A sampled request WITH a seed runs alone: a batch draws its random numbers for all rows from one
  generator, so the same seed in another batch would give another reply. Alone, the same request with the
  same seed always gets the same reply, the one `ChatModel.generate([request], GenConfig(seed=...))` gives.

    scheduler = Scheduler(chat)
    job = scheduler.submit(messages, Path("workspace/runs/cosmo"), Sampling(greedy=True, max_tokens=64), print)
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from voicetune.config import GenConfig
from voicetune.generate import ChatModel, Request

log = logging.getLogger(__name__)

WINDOW_S = 0.025  # how long a lone request waits for company: small beside even one decoding step on a CPU
MAX_BATCH = 16  # rows per generate call: on a CPU a few rows cost about one; the KV cache grows with each row


@dataclass(frozen=True)
class Sampling:
    """The generation settings of one request, as the endpoint accepted them."""

    greedy: bool
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    def batch_key(self, job_id: int) -> tuple:
        """Requests with equal keys may share one generate call (see the module docstring)."""
        if self.greedy:
            return ("greedy", self.max_tokens)
        if self.seed is not None:
            return ("seeded", job_id)  # alone
        return ("sampled", self.temperature, self.top_p, self.max_tokens)

    def gen_config(self) -> GenConfig:
        seed = self.seed if self.seed is not None else secrets.randbelow(2**31)
        return GenConfig(max_new_tokens=self.max_tokens, greedy=self.greedy, temperature=self.temperature,
                         top_p=self.top_p, repetition_penalty=1.0, seed=seed)


# Events sent to a job's on_event: ("text", partial reply so far), ("done", Reply) or ("error", exception).
Event = tuple[str, Any]


@dataclass
class Job:
    id: int
    messages: list[dict]
    adapter_dir: Path | None  # the run's adapter folder; None: the base model
    sampling: Sampling
    on_event: Callable[[Event], None]
    queued_at: float = field(default_factory=time.monotonic)


class Scheduler:
    """Collects requests and runs them in shared batches on one worker thread; see the module docstring."""

    def __init__(self, chat: ChatModel, *, window_s: float = WINDOW_S, max_batch: int = MAX_BATCH):
        self.chat = chat
        self.window_s = window_s
        self.max_batch = max_batch
        self._pending: list[Job] = []
        self._cond = threading.Condition()
        self._next_id = 0
        self._closed = False
        self.batch_sizes: list[int] = []  # rows of every batch run so far: the tests and the benchmark read it
        self._thread = threading.Thread(target=self._work, name="voicetune-api-batches", daemon=True)
        self._thread.start()

    def submit(self, messages: list[dict], adapter_dir: Path | None, sampling: Sampling,
               on_event: Callable[[Event], None]) -> Job:
        with self._cond:
            self._next_id += 1
            job = Job(self._next_id, messages, adapter_dir, sampling, on_event)
            self._pending.append(job)
            self._cond.notify()
        return job

    def close(self) -> None:
        """End the worker once the requests already submitted are answered, so it lets go of its model (the
        endpoint closes the scheduler of a base it no longer keeps loaded)."""
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _take_batch(self) -> list[Job]:
        """Wait for work, let the window fill, then take the oldest request and all that may join it; none
        once closed and drained."""
        with self._cond:
            while not self._pending:
                if self._closed:
                    return []
                self._cond.wait()
            wait = self._pending[0].queued_at + self.window_s - time.monotonic()
            if wait > 0:
                self._cond.wait_for(lambda: len(self._pending) >= self.max_batch, timeout=wait)
            key = self._pending[0].sampling.batch_key(self._pending[0].id)
            batch = [j for j in self._pending if j.sampling.batch_key(j.id) == key][: self.max_batch]
            taken = {j.id for j in batch}
            self._pending = [j for j in self._pending if j.id not in taken]
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take_batch()
            if not batch:
                return
            try:
                self._run(batch)
            except BaseException as e:  # noqa: BLE001 - every caller of the batch hears of it; the worker goes on
                log.warning("an API batch of %d failed: %s: %s", len(batch), type(e).__name__, e)
                for job in batch:
                    job.on_event(("error", e))

    def _adapter(self, folder: Path | None) -> str | None:
        """Load a run's adapter once, named by its folder: two users' runs with the same id are two adapters.

        Loaded here, on the worker, so no adapter is added while this worker's batch runs."""
        if folder is None:
            return None
        name = "api-" + hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:16]
        return self.chat.load_adapter(folder, name=name)

    def _run(self, batch: list[Job]) -> None:
        requests, ready = [], []
        for job in batch:
            try:
                requests.append(Request(job.messages, self._adapter(job.adapter_dir)))
                ready.append(job)
            except Exception as e:  # noqa: BLE001 - a damaged adapter fails its own request, not the batch
                job.on_event(("error", e))
        if not ready:
            return
        batch = ready
        self.batch_sizes.append(len(batch))
        for update in self.chat.stream(requests, batch[0].sampling.gen_config()):
            if update.replies is not None:
                for job, reply in zip(batch, update.replies):
                    job.on_event(("done", reply))
                return
            for job, text in zip(batch, update.texts):
                job.on_event(("text", text))
