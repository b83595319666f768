"""A Compare round on a CPU with the chat model's weights in fp32 (what chat uses) against bf16 weights.

levers.py keeps chat in fp32 on every CPU: on AMX, bf16 weights made the 3-arm round slower. This measures the
same question on the host it runs on, with the chat's own path: three arms (base, prompt-only, a tuned
adapter) of six customer questions, batched and in turn, 48 greedy tokens at the Compare tab's repetition
penalty; the round's seconds, and whether batched and in-turn replies are the same tokens (the invariant the
bench and tests/test_train_and_chat.py hold chat to). Each precision runs in its own process.

    .venv/bin/python -m benchmarks.chat_precision RUN_FOLDER      # a run of the embedded model
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUESTIONS = ["Where is my order? It has been a week.", "Can I get a refund for a broken kettle?",
             "Do you ship to Canada?", "My coffee tasted burnt, what happened?", "How do I reset my password?",
             "Is the shop open on Sunday?"]
STYLE = {"role": "system", "content": "You are a friendly shop helper. Sign off with 'Have a great day!'"}


def measure(adapter: str, bf16_weights: bool) -> dict[str, Any]:
    """One precision in this process: median seconds per round batched and in turn, and rounds that agree."""
    from voicetune import models
    from voicetune.config import GenConfig
    from voicetune.generate import ChatModel, Request

    if bf16_weights:  # the training loader's choice (bf16 weights where bf16 computes), in eval mode
        real = models.load_model

        def bf16_loader(path: str, precision: Any, for_training: bool = True, attn_implementation: Any = None) -> Any:
            return real(path, precision, precision.bf16 or for_training, attn_implementation).eval()

        models.load_model = bf16_loader  # type: ignore[assignment]
    chat = ChatModel()
    name = chat.load_adapter(adapter)
    gen = GenConfig(max_new_tokens=48, repetition_penalty=1.1)

    def one_round(question: str, batched: bool) -> tuple[float, list[str]]:
        msgs = [{"role": "user", "content": question}]
        chat.batch_arms = batched
        start = time.perf_counter()
        replies = chat.generate([Request(msgs, None), Request([STYLE, *msgs], None), Request(msgs, name)], gen)
        return time.perf_counter() - start, [r.text for r in replies]

    one_round("Hello", True)  # warm-up
    rounds = [(one_round(q, True), one_round(q, False)) for q in QUESTIONS]
    return {"weights": str(next(chat.model.parameters()).dtype), "precision": chat.precision.label,
            "batched_s": round(statistics.median(b[0] for b, _ in rounds), 2),
            "in_turn_s": round(statistics.median(t[0] for _, t in rounds), 2),
            "rounds_same_tokens": sum(b[1] == t[1] for b, t in rounds), "rounds": len(rounds)}


def main(argv: list[str]) -> None:
    if argv[:1] == ["--one"]:
        print(json.dumps(measure(argv[2], argv[1] == "bf16")))
        return
    from voicetune import models

    rows = []
    for weights in ("fp32", "bf16"):
        out = subprocess.run([sys.executable, "-m", "benchmarks.chat_precision", "--one", weights, argv[0]],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"host kind {models.cpu_kind()}")
    for r in rows:
        print(r)


if __name__ == "__main__":
    main(sys.argv[1:])
