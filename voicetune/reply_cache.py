"""The base model's scorecard replies, kept so that the next scorecard on the same base and prompts reads them.

Half a scorecard's generation does not depend on the run at all: the base arm, the prompt-only arm (the base
with instructions and examples), the base's answers to training messages and its probe answers. A project's
next run, a re-score and a DPO child's card ask for the same replies again. Only greedy replies are kept: on
one machine they are the same every time.

A reply's key hashes everything that decides it: the base's weight files (path, size and modification time), its
chat template's rendering of the prompt, the precision and device (a bf16 CPU rounds otherwise than an AVX2 one)
with the decoding lever, how a batch is prefilled and decoded (decoding.PREFILL), the torch, transformers and
PEFT versions, and the decoding settings. The rows live in
the workspace's own database, so one user's prompts are never another's hits. A kept reply came from one batch:
a batch of another shape may round a near-tie the other way, so a fresh reply can differ from it by a token
there; both are replies this base gave to this prompt on this machine.

    replies = reply_cache.generate(chat, requests, REPLY_GEN)   # base rows from the cache where it has them
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from voicetune import models, store
from voicetune.config import GenConfig
from voicetune.decoding import PREFILL
from voicetune.generate import ChatModel, Reply, Request
from voicetune.templates import render

WEIGHT_FILES = ("*.safetensors", "*.bin")


def identity(chat: Any) -> str | None:
    """What makes this loaded base answer as it does, or None for a model without a base folder (a stand-in)."""
    path, precision = getattr(chat, "path", None), getattr(chat, "precision", None)
    if path is None or precision is None:
        return None
    import peft
    import torch
    import transformers

    folder = Path(path)
    files = sorted(f for pattern in WEIGHT_FILES for f in folder.glob(pattern)) if folder.is_dir() else []
    weights = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    device = torch.cuda.get_device_name(0) if precision.device == "cuda" else f"cpu:{models.cpu_kind()}"
    # The decoding lever changes how the matmuls round (levers.py), so a reply made without it is another reply
    skinny = bool(getattr(chat, "skinny_decode", False))
    return json.dumps([str(folder.resolve()) if folder.is_dir() else path, weights, repr(precision), device,
                       torch.__version__, transformers.__version__, peft.__version__, skinny, PREFILL])


def key(base: str, prompt: str, gen: GenConfig) -> str:
    material = json.dumps([base, prompt, gen.max_new_tokens, gen.repetition_penalty])
    return hashlib.sha256(material.encode()).hexdigest()


def generate(chat: ChatModel, requests: list[Request], gen: GenConfig) -> list[Reply]:
    """Replies to `requests` in order, in one batch: base rows (adapter None) the cache holds are read from it,
    the rest are generated together and the new base replies kept."""
    base = identity(chat) if gen.greedy else None
    if base is None:
        return chat.generate(requests, gen)
    keys = [key(base, render(chat.tokenizer, r.messages, add_generation_prompt=True), gen)
            if r.adapter is None else None for r in requests]
    conn = store.connect()
    try:
        found = store.cached_replies(conn, [k for k in keys if k is not None])
        missing = [i for i, k in enumerate(keys) if k not in found]
        fresh = dict(zip(missing, chat.generate([requests[i] for i in missing], gen) if missing else []))
        store.cache_replies(conn, [(keys[i], r.text, r.prompt_tokens, r.reply_tokens)
                                   for i, r in fresh.items() if keys[i] is not None])
    finally:
        conn.close()
    return [fresh[i] if i in fresh else Reply(seconds=0.0, **found[k]) for i, k in enumerate(keys)]
