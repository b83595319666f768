"""General replay: the base model's own answers to general questions, mixed into a voice's training data.

A small model tuned on a few dozen conversations in a persona learns to answer *everything* in that persona,
and on some voices the persona takes the answer's place ("What is 2 + 2?" → a sign-off and no number; see
docs/recipes.md). The usual remedy is replay: mix general instruction data into training so the adapter keeps
answering plainly. We cannot download a general dataset at run time, and another model's answers would pull
the base somewhere new, so the replayed answers are the base model's own: before the adapter is attached,
the loaded base answers a bundled list of general prompts (resources/replay_prompts.txt) greedily, and the
answers it finished become extra training conversations. Training on them is a cheap anchor to the base's
own behaviour on general questions, like a penalty on drifting from the base, but paid only on those prompts.

Replayed conversations are trained on and nothing else: they are never held out, scored, copied against or
shown as the user's data. The run folder keeps them (replay.jsonl) so anyone can read what was mixed in.
A run told to watch general answers too (TrainConfig.early_stopping_watch) also asks the base a few other
general questions, never trained on, and pools the loss on its answers with the validation loss.
No maintained library generates replay data from the model being tuned, so this module does it by hand with
transformers' `generate`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from voicetune import models

PROMPTS_FILE = Path(__file__).parent / "resources" / "replay_prompts.txt"
MAX_NEW_TOKENS = 96  # a plain answer fits; an answer still going at this length is dropped, never cut
BATCH = 16  # prompts per generate call: bounded memory on a GPU, few calls on a CPU


def prompts() -> list[str]:
    """The bundled general prompts, in file order ('#' lines are comments)."""
    lines = PROMPTS_FILE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def how_many(share: float, n_train: int) -> int:
    """Replayed conversations for a run: `share` of its training conversations, at most the bundled prompts."""
    if share <= 0 or n_train <= 0:
        return 0
    return min(len(prompts()), max(1, round(share * n_train)))


def choose(n: int, seed: int) -> list[str]:
    """A seeded choice of n prompts, so the same run settings replay the same questions."""
    return random.Random(seed).sample(prompts(), n) if n else []


def choose_apart(n: int, seed: int, taken: list[str]) -> list[str]:
    """A seeded choice of n prompts outside `taken`: general questions to watch the run on, never trained on."""
    skip = set(taken)
    rest = [p for p in prompts() if p not in skip]
    return random.Random(seed + 1).sample(rest, min(n, len(rest))) if n else []


def answer(model: Any, tokenizer: Any, questions: list[str]) -> list[list[dict[str, str]]]:
    """The base model's greedy answers, as user/assistant conversations; answers it did not finish are dropped."""
    import torch

    conversations: list[list[dict[str, str]]] = []
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues every row from its end
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = set(models.end_of_turn_ids(model, tokenizer))
    try:
        for start in range(0, len(questions), BATCH):
            chunk = questions[start:start + BATCH]
            texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                   add_generation_prompt=True) for q in chunk]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.no_grad():
                out = model.generate(**batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=pad,
                                     use_cache=True)
            for q, row in zip(chunk, out[:, batch["input_ids"].shape[1]:]):
                reply = _finished_reply(tokenizer, row.tolist(), stops)
                if reply:
                    conversations.append([{"role": "user", "content": q}, {"role": "assistant", "content": reply}])
    finally:
        tokenizer.padding_side = side
    return conversations


def _finished_reply(tokenizer: Any, ids: list[int], stops: set[int]) -> str | None:
    """The reply's text if the model ended it itself (an end-of-turn token inside the budget), else None."""
    end = next((i for i, t in enumerate(ids) if t in stops), None)
    if end is None:
        return None
    text = tokenizer.decode(ids[:end], skip_special_tokens=True).strip()
    return text or None
