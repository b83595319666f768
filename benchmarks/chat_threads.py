"""Why a decode step costs twice as much in the chat's worker thread as in the main thread, on a GPU.

benchmarks/chat_steps.py found, on an H100 with the 16-bit 1.7B shape, 29 ms a step for transformers' generate
in the main thread and 61 ms for the same generate in a worker thread feeding BatchStreamer, whose consumer
wakes on every step. This times one plain greedy generate (every adapter off, exactly TOKENS new tokens) four
ways, stamping each step in the generating thread:

- main: in the main thread;
- worker-join: in a worker thread while the main thread only waits for it to end (no consumer);
- worker-every-step: in a worker thread feeding BatchStreamer, the consumer woken on every step (the chat now);
- worker-polled: the same, but the consumer looks at the newest snapshot every POLL_S instead.

If worker-join is as fast as main and worker-every-step is not, the cost is the consumer's wake-ups contending
for the GIL with the generating thread; if worker-join is slow too, it is the thread itself. Then the chat's
own streamed batch (1 and 3 base rows; no adapter is needed for the question) is timed with each consumer.
`--cpu` runs it on a tiny 24-layer model: a check that the script runs, not a stand-in for the GPU's figures.
Not yet run on a GPU: this session's lease went to make gpu-check, and the next call was refused.

On a CPU a worker thread has a cost of its own that is not the GIL: torch's OpenMP runtime keeps a team of
threads for each thread that ran a parallel kernel, and with more team threads than cores it stops spinning
between kernels. On the tiny model (2 cores, AVX512-BF16) worker-join took 5.8 ms a step against 3.7 in the
main thread, and one OpenMP thread (OMP_NUM_THREADS=1) removed the gap. On the embedded 135M model's real chat
path, one long-lived thread for loading and every generate measured the same as a new thread per call (39.7
against 39.5 ms a token), so the chat keeps its thread per call.

    python -m benchmarks.chat_threads out.json        # on a GPU, with make gpu-check's setup
    .venv/bin/python -m benchmarks.chat_threads --cpu /tmp/threads.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import chat_steps, gpu_check  # noqa: E402
from benchmarks.gpu import random_model  # noqa: E402
from voicetune import models  # noqa: E402
from voicetune.config import GenConfig  # noqa: E402
from voicetune.generate import ChatModel, Request  # noqa: E402
from voicetune.streaming import BatchStreamer  # noqa: E402

POLL_S = 0.05  # a pane redrawn 20 times a second looks live; a step on a GPU is 10-60 ms
REPEATS = 3


class StampedStreamer(BatchStreamer):
    """BatchStreamer that also notes when each step's tokens arrive, in the generating thread."""

    def __init__(self, rows: int):
        super().__init__(rows, set())
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        if self.seen_prompt:
            self.times.append(time.perf_counter())
        super().put(value)


EVERY_STEP = BatchStreamer.__iter__  # the chat's own consumer, kept before chat_round swaps it


def every_step(streamer: BatchStreamer) -> Iterator[Any]:
    return EVERY_STEP(streamer)


def polled(streamer: BatchStreamer) -> Iterator[Any]:
    """The newest snapshot every POLL_S: the consumer sleeps instead of waking on each step."""
    import queue

    while True:
        time.sleep(POLL_S)
        item, done = None, False
        while True:
            try:
                nxt = streamer.queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                done = True
                break
            item = nxt
        if item is not None:
            yield item
        if done:
            return


def one_variant(chat: ChatModel, name: str) -> float | None:
    """Median ms per decode step over REPEATS calls of one way of running plain generate."""
    medians = []
    for _ in range(REPEATS):
        if name == "main":
            clock = chat_steps.StepClock()
            chat_steps.plain_generate(chat, clock)
            times = clock.times
        else:
            streamer = StampedStreamer(1)
            streamer.start(lambda s=streamer: chat_steps.plain_generate(chat, s))
            if name == "worker-every-step":
                for _ in every_step(streamer):
                    pass
            elif name == "worker-polled":
                for _ in polled(streamer):
                    pass
            streamer.result()
            times = streamer.times
        medians.append(chat_steps.ms_per_step(times))
    values = [m for m in medians if m is not None]
    return round(statistics.median(values), 2) if values else None


def chat_round(chat: ChatModel, requests: list[Request], consume: Callable[[BatchStreamer], Iterator[Any]],
               ) -> dict[str, Any]:
    """The chat's own streamed batch with `consume` as the streamer's consumer."""
    BatchStreamer.__iter__ = lambda self: consume(self)  # type: ignore[method-assign]
    try:
        chat.generate(requests, GenConfig(max_new_tokens=2))
        totals = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            replies = chat.generate(requests, GenConfig(max_new_tokens=chat_steps.TOKENS))
            totals.append(time.perf_counter() - start)
    finally:
        BatchStreamer.__iter__ = EVERY_STEP  # type: ignore[method-assign]
    total = statistics.median(totals)
    return {"total_s": round(total, 3), "ms_per_step": round(1000 * total / max(r.reply_tokens for r in replies), 2),
            "tokens": [r.reply_tokens for r in replies]}


def main(argv: list[str]) -> None:
    cpu = "--cpu" in argv
    work = Path("/tmp/chat-threads")
    work.mkdir(exist_ok=True)
    config = (dict(gpu_check.TINY_CONFIG, num_hidden_layers=24) if cpu
              else json.loads((ROOT / "benchmarks/configs/smollm2-1.7b.json").read_text()))
    base, _ = random_model(config, models.resolve_base_model(None), work / "base", device="cpu" if cpu else "cuda")
    chat = ChatModel(str(base), four_bit=False)  # no adapter: the question is the thread, not the arms
    chat_steps.plain_generate(chat, chat_steps.StepClock())  # warm-up
    results: dict[str, Any] = {"poll_s": POLL_S, "switch_interval_s": sys.getswitchinterval(),
                               "tokens": chat_steps.TOKENS, "repeats": REPEATS}
    for name in ("main", "worker-join", "worker-every-step", "worker-polled"):
        results[f"plain_ms_per_step_{name}"] = one_variant(chat, name)
        print(name, results[f"plain_ms_per_step_{name}"], flush=True)
    for rows in (1, 3):
        requests = [Request(chat_steps.MESSAGES, None)] * rows
        results[f"chat_{rows}_rows_every_step"] = chat_round(chat, requests, every_step)
        results[f"chat_{rows}_rows_polled"] = chat_round(chat, requests, polled)
    print({k: v for k, v in results.items() if k.startswith("chat")}, flush=True)
    out = Path(argv[-1]) if argv and argv[-1].endswith(".json") else work / "results.json"
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
