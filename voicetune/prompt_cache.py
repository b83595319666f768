"""Each arm's recent prompts and their KV caches, so the next round prefills only what is new.

A compare round's prompt usually starts the same way as the last one (the same instructions and examples).
transformers reuses a cache only when the caller passes it in; this finds the one to pass. Bounded per arm
and in arms, so memory stays flat however many runs are compared.

    prompts = PromptCache()
    shared, cache = prompts.longest_start(arm, ids)   # tokens already computed, their cache cut to them
    prompts.remember(arm, ids, model(ids[shared:], past_key_values=cache).past_key_values)
"""

from __future__ import annotations

import os
import threading
from typing import Any


class PromptCache:
    """Recent prompts per arm (a PEFT adapter name, or "__base__"), most recent first; safe across threads.

    The stored caches are never changed: a reused one is cut to the shared start as new views, and the
    forward over the rest builds new tensors.
    """

    per_arm = 4  # prompts remembered per adapter (the base and prompt-only arms share "no adapter")
    arms = 4  # adapters remembered: a 1,024-token prompt's cache is ~50 MB on the embedded model

    def __init__(self) -> None:
        self._recent: dict[str, list[tuple[list[int], Any]]] = {}
        self._lock = threading.Lock()  # rows of one batch and other visitors' rounds read and write it

    def prompts(self, arm: str) -> list[list[int]]:
        """The token ids remembered for an arm, most recent first."""
        with self._lock:
            return [ids for ids, _ in self._recent.get(arm, [])]

    def longest_start(self, arm: str, ids: list[int]) -> tuple[int, Any]:
        """How many leading tokens of `ids` are already computed for this arm, and a cache of just those
        (0 and None: nothing to reuse). At least one token is always left, so the forward returns a cache."""
        from transformers import DynamicCache

        with self._lock:
            recent = list(self._recent.get(arm, []))
        shared, cache = 0, None
        for old_ids, old_cache in recent:
            n = len(os.path.commonprefix([old_ids, ids]))  # works on any lists
            if n > shared:
                shared, cache = n, old_cache
        shared = min(shared, len(ids) - 1)
        if cache is None or shared <= 0:
            return 0, None
        return shared, DynamicCache(ddp_cache_data=[(layer.keys[:, :, :shared], layer.values[:, :, :shared])
                                                    for layer in cache.layers])

    def remember(self, arm: str, ids: list[int], cache: Any) -> None:
        """Keep this prompt's full cache first in its arm's list, dropping the oldest beyond the bounds."""
        with self._lock:
            kept = [(i, c) for i, c in self._recent.pop(arm, []) if i != ids]
            self._recent[arm] = [(ids, cache), *kept][: self.per_arm]
            while len(self._recent) > self.arms:
                del self._recent[next(iter(self._recent))]  # the arm used longest ago

    def forget(self, arm: str) -> None:
        """Drop an arm's caches: its adapter was deleted, so they could never be reused and only hold memory."""
        with self._lock:
            self._recent.pop(arm, None)
