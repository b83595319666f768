"""Replies from one base model and any number of adapters, answered together in one batch: the face the UI,
the CLI, the API and the scorecard use, and the loaded bases they share.

`ChatModel` is composed of parts, each the one owner of its concern:
- `adapter_registry.AdapterRegistry`: the model, its lock, and which adapters it holds (check, load, evict);
- `decoding.Decoder`: mixed-adapter batches (each row prefilled on its own), logits and likelihoods;
- `prompt_cache.PromptCache`: recent prompts' caches per arm, dropped when their adapter is evicted;
- `streaming`: the one event a streamed batch yields (`Update`), the finished `Reply`, the worker thread.

    chat = ChatModel("workspace/cache/smollm2-135m-instruct")
    name = chat.load_adapter("workspace/runs/demo")
    chat.generate([Request(msgs, None), Request(msgs, name)], GenConfig())
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

from voicetune import levers, memory, models
from voicetune.adapter_registry import AdapterError, AdapterMismatch, AdapterRegistry
from voicetune.config import GenConfig
from voicetune.decoding import BASE, Decoder, Request
from voicetune.prompt_cache import PromptCache
from voicetune.streaming import Reply, Update, final_replies
from voicetune.templates import render, template_fingerprint

__all__ = ["AdapterError", "AdapterMismatch", "BASE", "ChatModel", "MAX_BASES", "Reply", "Request", "Update",
           "base_memory_budget", "chat_precision", "compare", "loaded_bytes", "shared_model", "still_shared",
           "stream_groups", "with_system"]

log = logging.getLogger(__name__)


def chat_precision(device: str, path: str, four_bit: bool | None = None) -> models.Precision:
    """16-bit weights on a GPU where they fit beside a KV cache, else 4-bit NF4 (None: decided by memory.py).

    16-bit first because unmerged adapters on 4-bit weights generate several times slower; but a 7-8B base in
    16-bit (~16 GB) does not fit a 16 GB GPU, and PEFT serves mixed-adapter batches on bitsandbytes' 4-bit
    layers as well. On a CPU the weights stay fp32 unless 4-bit is asked for.
    """
    if four_bit is None:
        shape = memory.shape_of(path) if device == "cuda" else None
        four_bit = shape is not None and not memory.chat_fits_16bit(shape, memory.free_bytes(device))
    return models.precision_for(device, qlora=four_bit)


class ChatModel:
    """One loaded base model and its adapters; the UI, CLI, API and scorecard ask it for replies.

    A facade over `registry` (the model, its lock, its adapters) and `decoder` (replies and likelihoods, with
    the prompt cache), so callers keep one object per base and never reach into either part.
    """

    def __init__(self, base_model: str | None = None, four_bit: bool | None = None):
        self.base_model = base_model or models.default_base_model()
        self.path = models.resolve_base_model(self.base_model)
        self.tokenizer = models.load_tokenizer(self.path)
        self.tokenizer.padding_side = "left"  # decoder-only batches must end where generation starts
        self.precision = chat_precision(models.detect_device(), self.path, four_bit)
        model = models.load_model(self.path, self.precision, for_training=False)
        self.skinny_decode = levers.chosen().skinny_decode  # a compare round decodes one row per arm
        if self.skinny_decode:
            models.speed_up_small_batches(model)
        prompts = PromptCache()
        self.registry = AdapterRegistry(model, base_model=self.base_model,
                                        base_hash=models.base_model_fingerprint(self.path),
                                        template_hash=template_fingerprint(self.tokenizer),
                                        skinny_decode=self.skinny_decode, on_evict=prompts.forget)
        self.decoder = Decoder(self.registry, self.tokenizer, prompts)

    @property
    def model(self) -> Any:
        """The base model, wrapped in a PeftModel once an adapter has loaded."""
        return self.registry.model

    @property
    def lock(self) -> threading.RLock:
        """Held by every call that runs the model or changes its adapters (see AdapterRegistry)."""
        return self.registry.lock

    @property
    def adapters(self) -> dict[str, str]:
        """Adapter name -> folder, as asked for by load_adapter."""
        return self.registry.adapters

    @property
    def batch_arms(self) -> bool:
        """Whether arms share one mixed batch; False after one failed (then arms go one at a time)."""
        return self.decoder.batch_arms

    @batch_arms.setter
    def batch_arms(self, value: bool) -> None:
        self.decoder.batch_arms = value

    @property
    def context_length(self) -> int:
        """The longest prompt plus reply the base model takes, in tokens (0: its config does not say)."""
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 0)

    def check_adapter(self, adapter_dir: str | Path) -> dict[str, Any]:
        """Refuse an adapter trained on another base model or template, before loading any weight."""
        return self.registry.check(adapter_dir)

    def load_adapter(self, adapter_dir: str | Path, name: str | None = None) -> str:
        """Make the adapter in `adapter_dir` answer to `name` (default: the folder's name); returns the name."""
        return self.registry.load(adapter_dir, name)

    def stream(self, requests: list[Request], gen: GenConfig) -> Iterator[Update]:
        """Every arm's text so far as tokens arrive, then an Update with the finished Replies.

        Every arm shares one generate call (PEFT mixed-adapter batch). Where that is impossible, the arms
        are answered one after another instead, and the log says so.
        """
        return self.decoder.stream(requests, gen)

    def generate(self, requests: list[Request], gen: GenConfig) -> list[Reply]:
        """All requests in one batched generate call, each with its own arm; on a GPU, in as few calls as the
        free memory holds the batch's KV cache in (memory.batch_rows), in order."""
        rows = self.rows_per_call(requests, gen)
        if rows is None or len(requests) <= rows:
            return final_replies(self.stream(requests, gen))
        log.info("%d requests in batches of %d: a KV cache for all of them would not fit", len(requests), rows)
        return [reply for i in range(0, len(requests), rows)
                for reply in final_replies(self.stream(requests[i:i + rows], gen))]

    def rows_per_call(self, requests: list[Request], gen: GenConfig) -> int | None:
        """How many of `requests` one generate call may hold (None: no bound, on a CPU)."""
        available = memory.free_bytes(self.precision.device)
        if available is None or not requests:
            return None
        config = self.model.config.to_dict()
        config.update(config.get("text_config") or {})
        longest = max(len(self.tokenizer(render(self.tokenizer, r.messages, add_generation_prompt=True),
                                         add_special_tokens=False).input_ids) for r in requests)
        return memory.batch_rows(memory.ModelShape.from_config(config), longest + gen.max_new_tokens, available)

    def logits(self, input_ids: list[int], adapter: str | None) -> Any:
        """One sequence's logits under one arm (the scorecard's likelihoods), holding the model's lock."""
        return self.decoder.logits(input_ids, adapter)

    def nll(self, input_ids: list[int], labels: list[int], adapter: str | None) -> tuple[float, int]:
        """Summed negative log-likelihood of the labelled tokens, and their count, under one arm (None: base)."""
        return self.decoder.nll(input_ids, labels, adapter)


_shared: OrderedDict[str, ChatModel] = OrderedDict()  # least recently used first
_shared_lock = threading.Lock()
MAX_BASES = 3  # base models kept loaded at once: a compare of two bases, plus the one the scorecard needs


def base_memory_budget() -> int | None:
    """Bytes the loaded bases' weights may take together: VOICETUNE_CHAT_MEMORY_MB, else half this machine's RAM
    (or half the GPU), so switching bases never grows memory without end; None when the machine cannot say."""
    if os.environ.get("VOICETUNE_CHAT_MEMORY_MB"):
        return int(float(os.environ["VOICETUNE_CHAT_MEMORY_MB"]) * (1 << 20))
    from voicetune.fit import this_machine

    total = this_machine().memory
    return total // 2 if total else None


def loaded_bytes(chat: ChatModel) -> int:
    """The weights one loaded base holds (its adapters included), as torch counts them."""
    return sum(t.numel() * t.element_size() for t in [*chat.model.parameters(), *chat.model.buffers()])


def _evict_bases(keep: str) -> None:
    """Drop least recently used bases beyond MAX_BASES or the memory budget; never `keep`, never one answering
    right now (its lock is held: it goes on the next call). Called with _shared_lock held."""
    budget = base_memory_budget()
    for key in list(_shared):
        over_count = len(_shared) > MAX_BASES
        over_bytes = budget is not None and sum(loaded_bytes(c) for c in _shared.values()) > budget
        if not (over_count or over_bytes) or len(_shared) == 1:
            return
        chat = _shared[key]
        if key == keep or not chat.lock.acquire(blocking=False):
            continue
        try:
            del _shared[key]
            log.info("unloaded base model %s to stay within %s bases / the chat memory budget", key, MAX_BASES)
        finally:
            chat.lock.release()
    _release_memory()


def _release_memory() -> None:
    import gc

    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def shared_model(base_model: str | None = None) -> ChatModel:
    """The one loaded copy of a base model in this process, which every arm and the scorecard share.

    Kept in a small LRU (MAX_BASES, base_memory_budget): a compare of runs on two bases loads both, and a
    third base pushes out the one used longest ago.
    """
    key = base_model or models.default_base_model()
    with _shared_lock:  # two first visitors at once must not load two copies
        if key not in _shared:
            _shared[key] = ChatModel(key)
        _shared.move_to_end(key)
        _evict_bases(keep=key)
        return _shared[key]


def still_shared(chat: ChatModel) -> bool:
    """Whether shared_model still keeps this model loaded: its LRU may have let it go for another base, and a
    holder (the endpoint's per-base scheduler) should then let it go too, so its memory can be freed."""
    with _shared_lock:
        return any(chat is kept for kept in _shared.values())


def stream_groups(groups: list[tuple[ChatModel, list[int]]], requests: list[Request],
                  gen: GenConfig) -> Iterator[Update]:
    """A round whose arms sit on different bases: each base answers its own arms (`rows` of `requests`) in one
    mixed batch, one base after the other; Updates carry every arm's text so far, the last all Replies in order.
    With one group this is that model's own stream, unchanged."""
    if len(groups) == 1:
        yield from groups[0][0].stream(requests, gen)
        return
    partial = [""] * len(requests)
    replies: dict[int, Reply] = {}  # request index -> its finished Reply
    for chat, rows in groups:
        for update in chat.stream([requests[i] for i in rows], gen):
            for i, text in zip(rows, update.texts):
                partial[i] = text
            for i, reply in zip(rows, update.replies or []):
                replies[i] = reply
            if update.replies is None:
                yield Update(list(partial))
    yield Update.finished([replies[i] for i in range(len(requests))])


def generate_groups(groups: list[tuple[ChatModel, list[int]]], requests: list[Request], gen: GenConfig) -> list[Reply]:
    """stream_groups without the streaming, for many rows at once (the Compare tab's batch mode): each base
    answers all of its rows through its own `generate`, so they share batches as far as its memory holds."""
    replies: dict[int, Reply] = {}
    for chat, rows in groups:
        replies.update(zip(rows, chat.generate([requests[i] for i in rows], gen)))
    return [replies[i] for i in range(len(requests))]


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    """Prepend a system prompt when one is given and the conversation has none."""
    if system and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system}, *messages]
    return list(messages)


def compare(chat: ChatModel, adapter: str, prompts: list[str], gen: GenConfig, system: str | None = None) -> list[dict]:
    """Base and tuned replies for each prompt, and whether each ran to the token limit (cut, not ended);
    both arms of a prompt share one batch."""
    rows = []
    for prompt in prompts:
        msgs = with_system([{"role": "user", "content": prompt}], system)
        base, tuned = chat.generate([Request(msgs, None), Request(msgs, adapter)], gen)
        rows.append({"prompt": prompt, "base": base.text, "tuned": tuned.text,
                     "base_cut": base.hit_limit(gen.max_new_tokens), "tuned_cut": tuned.hit_limit(gen.max_new_tokens)})
    return rows
