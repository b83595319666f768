"""Where a chat step's time goes on a GPU, against transformers' plain generate on the same loaded model.

A random model of SmolLM2-1.7B's shape in bf16 (the 16-bit chat that a model which fits gets), two adapters
trained two steps each, 32 greedy tokens per reply. It times, per decode step: plain generate in the main thread
and in a worker thread feeding voicetune's BatchStreamer; the chat's one-arm-at-a-time path and its mixed-batch
path with one and three rows; and profiles one call of the first and of plain generate (the GPU's own busy time
is the profile's CUDA total). `--cpu` runs the same on a 24-layer tiny model on a CPU, which has no kernel
launches to pay for: a check that the script runs, not a stand-in for the GPU's figures.

    python -m benchmarks.chat_steps out.json          # on a GPU, with make gpu-check's setup
    .venv/bin/python -m benchmarks.chat_steps --cpu /tmp/steps.json
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import gpu_check  # noqa: E402
from benchmarks.gpu import random_model  # noqa: E402
from voicetune import models  # noqa: E402
from voicetune.config import GenConfig  # noqa: E402
from voicetune.generate import ChatModel, Request  # noqa: E402
from voicetune.streaming import BatchStreamer  # noqa: E402
from voicetune.templates import render  # noqa: E402

TOKENS = 32
MESSAGES = [{"role": "user", "content": "Where is my order? It has been a week."}]


class StepClock:
    """A streamer for generate that only notes when each decode step's tokens arrive."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # the first call carries the prompt
            self.prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def ms_per_step(times: list[float]) -> float | None:
    gaps = [b - a for a, b in zip(times, times[1:])]
    return round(statistics.median(gaps) * 1000, 2) if gaps else None


def build(cpu: bool, work: Path) -> tuple[ChatModel, list[str]]:
    """The random base in 16-bit chat with two freshly trained adapters loaded."""
    config = (dict(gpu_check.TINY_CONFIG, num_hidden_layers=24) if cpu
              else json.loads((ROOT / "benchmarks/configs/smollm2-1.7b.json").read_text()))
    base, _ = random_model(config, models.resolve_base_model(None), work / "base", device="cpu" if cpu else "cuda")
    data = gpu_check.subset(16, work / "data.jsonl")
    adapters = []
    for i in range(2):
        gpu_check.check_training("adapter", base, data, work / f"a{i}", 2, fp16=False, seed=7 + i)
        adapters.append(work / f"a{i}")
    chat = ChatModel(str(base), four_bit=False)
    return chat, [chat.load_adapter(a, name=f"arm{i}") for i, a in enumerate(adapters)]


def plain_generate(chat: ChatModel, streamer: Any) -> None:
    """transformers' own greedy generate, every adapter off (a model with none loaded too), exactly TOKENS new
    tokens."""
    import contextlib

    import torch

    tok = chat.tokenizer
    ids = tok(render(tok, MESSAGES, add_generation_prompt=True), return_tensors="pt", add_special_tokens=False)
    off = chat.model.disable_adapter() if hasattr(chat.model, "disable_adapter") else contextlib.nullcontext()
    with chat.lock, torch.inference_mode(), off:
        chat.model.generate(**ids.to(chat.model.device), max_new_tokens=TOKENS, min_new_tokens=TOKENS,
                            do_sample=False, pad_token_id=tok.pad_token_id, streamer=streamer)


def time_plain(chat: ChatModel, sync: Any, results: dict[str, Any]) -> None:
    for rep in range(2):  # the first is cold
        clock = StepClock()
        sync()
        start = time.perf_counter()
        plain_generate(chat, clock)
        sync()
        results[f"plain_ms_per_step_{rep}"] = ms_per_step(clock.times)
        results[f"plain_total_s_{rep}"] = round(time.perf_counter() - start, 3)
    streamer = BatchStreamer(1, set())
    start = time.perf_counter()
    streamer.start(lambda: plain_generate(chat, streamer))
    stamps = [time.perf_counter() for _ in streamer]
    streamer.result()
    results["plain_threaded_batchstreamer_total_s"] = round(time.perf_counter() - start, 3)
    results["plain_threaded_batchstreamer_ms_per_step"] = ms_per_step(stamps)


def time_chat(chat: ChatModel, requests: list[Request], batch_arms: bool, sync: Any) -> dict[str, Any]:
    """One warmed-up streamed call: total time, time between Updates, and each Reply's own figures."""
    chat.batch_arms = batch_arms
    chat.generate(requests, GenConfig(max_new_tokens=2))
    stamps, update = [], None
    sync()
    start = time.perf_counter()
    for update in chat.stream(requests, GenConfig(max_new_tokens=TOKENS)):
        stamps.append(time.perf_counter())
    sync()
    replies = update.replies
    return {"total_s": round(time.perf_counter() - start, 3), "ms_per_update": ms_per_step(stamps),
            "updates": len(stamps), "tokens": [r.reply_tokens for r in replies],
            "first_token_s": replies[0].first_token_s, "tps": [round(r.tokens_per_second, 1) for r in replies]}


def profiles(chat: ChatModel, cpu: bool, results: dict[str, Any]) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([] if cpu else [ProfilerActivity.CUDA])
    chat.batch_arms = False
    with profile(activities=activities) as prof:
        chat.generate([Request(MESSAGES, None)], GenConfig(max_new_tokens=TOKENS))
    results["profile_sequential_base"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    with profile(activities=activities) as prof:
        plain_generate(chat, StepClock())
    results["profile_plain"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)


def main(argv: list[str]) -> None:
    import torch

    cpu = "--cpu" in argv
    work = Path("/tmp/chat-steps")
    work.mkdir(exist_ok=True)
    chat, (one, two) = build(cpu, work)

    def sync() -> None:
        if not cpu:
            torch.cuda.synchronize()

    results: dict[str, Any] = {}
    time_plain(chat, sync, results)
    base, arm = Request(MESSAGES, None), Request(MESSAGES, one)
    results["alone_base_sequential"] = time_chat(chat, [base], False, sync)
    results["alone_arm_sequential"] = time_chat(chat, [arm], False, sync)
    results["one_base_row_mixed_path"] = time_chat(chat, [base], True, sync)
    results["one_arm_row_mixed_path"] = time_chat(chat, [arm], True, sync)
    results["three_rows_mixed"] = time_chat(chat, [base, arm, Request(MESSAGES, two)], True, sync)
    profiles(chat, cpu, results)
    out = Path(argv[-1]) if argv and argv[-1].endswith(".json") else work / "results.json"
    out.write_text(json.dumps(results, indent=1))
    for key, value in results.items():
        if not key.startswith("profile"):
            print(key, value)


if __name__ == "__main__":
    main(sys.argv[1:])
