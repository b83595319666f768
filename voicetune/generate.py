"""Replies from one base model and any number of adapters, answered together in one batch.

One copy of the base model stays in memory. Adapters load by name with PEFT, and each request in a batch
names its arm; PEFT's mixed-adapter batches (`adapter_names`, "__base__" for none) run every arm of a
round in a single `generate` call. The base arm runs with no adapter applied at all, never "the adapter
at scale zero", so the base pane really is the base model.

    chat = ChatModel("workspace/cache/smollm2-135m-instruct")
    name = chat.load_adapter("workspace/runs/demo")
    chat.generate([Request(msgs, None), Request(msgs, name)], GenConfig())
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from voicetune import levers, memory, models
from voicetune.config import GenConfig
from voicetune.templates import IGNORE, render, template_fingerprint
from voicetune.runs import ADAPTER_WEIGHTS, RunError
from voicetune.runs import read as read_run

log = logging.getLogger(__name__)

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class AdapterError(ValueError):
    """An adapter that cannot be used: missing, truncated, or not a voicetune adapter."""


class AdapterMismatch(AdapterError):
    """An adapter trained on another base model or chat template."""


@dataclass
class Request:
    messages: list[dict]  # the conversation so far, ending with the user turn to answer
    adapter: str | None = None  # None: the base model


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    reply_tokens: int
    seconds: float
    first_token_s: float | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.reply_tokens / self.seconds if self.seconds > 0 else 0.0


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


def _weights_key(folder: str | Path) -> tuple[str, int, int]:
    """What identifies an adapter's weights: its folder, and the modification time and size of its weights.

    A run folder republished by a new training or an import gets a new key, so it is loaded again instead of
    answering with the weights that were in memory.
    """
    path = Path(folder).resolve()
    stat = (path / ADAPTER_WEIGHTS).stat()
    return str(path), stat.st_mtime_ns, stat.st_size


class ChatModel:
    """Owns the loaded base model and its adapters; the UI and CLI ask it for replies.

    Adapters are asked for by name (a run id); PEFT holds them under internal names, one per version of the
    weights on disk, at most MAX_ADAPTERS at a time (least recently used evicted). Every call that runs the
    model or changes its adapters holds `lock`, so a scorecard loading its adapter never lands in the middle of
    another visitor's compare round on the same model object.
    """

    MAX_ADAPTERS = 8  # adapters kept in memory; a compare round uses at most 4 and the scorecard 1

    def __init__(self, base_model: str | None = None, four_bit: bool | None = None):
        self.base_model = base_model or models.default_base_model()
        self.path = models.resolve_base_model(self.base_model)
        self.tokenizer = models.load_tokenizer(self.path)
        self.tokenizer.padding_side = "left"  # decoder-only batches must end where generation starts
        self.precision = chat_precision(models.detect_device(), self.path, four_bit)
        self.model: Any = models.load_model(self.path, self.precision, for_training=False)
        self.skinny_decode = levers.chosen().skinny_decode  # a compare round decodes one row per arm
        if self.skinny_decode:
            models.speed_up_small_batches(self.model)
        # One per model object (see the class docstring). generate() takes it in its worker thread, so never
        # call generate() while holding it yourself: that thread would wait for you forever.
        self.lock = threading.RLock()
        self.adapters: dict[str, str] = {}  # name -> folder, as asked for by load_adapter
        self._loaded: OrderedDict[tuple[str, int, int], str] = OrderedDict()  # weights key -> PEFT name, LRU order
        self._serial = 0  # numbers the PEFT names, which must never be reused for other weights
        self.batch_arms = True  # False once a mixed-adapter batch has failed: then arms go one at a time
        # Each arm's recent prompts and their caches: the next round's prompt usually starts the same way
        # (the same instructions and examples), so only what is new is prefilled. See _row_cache.
        self._recent: dict[str, list[tuple[list[int], Any]]] = {}
        self._recent_lock = threading.Lock()
        self.base_hash = models.base_model_fingerprint(self.path)
        self.template_hash = template_fingerprint(self.tokenizer)

    def check_adapter(self, adapter_dir: str | Path) -> dict[str, Any]:
        """Refuse an adapter trained on another base model or template, before loading any weight."""
        record = read_run(adapter_dir)
        if record.get("base_model_hash") != self.base_hash:
            raise AdapterMismatch(
                f"adapter {Path(adapter_dir).name} was trained on {record.get('base_model')!r}, "
                f"not on the loaded base model {self.base_model!r}"
            )
        if record.get("template_hash") != self.template_hash:
            raise AdapterMismatch(f"adapter {Path(adapter_dir).name} was trained with a different chat template")
        return record

    def load_adapter(self, adapter_dir: str | Path, name: str | None = None) -> str:
        """Make the adapter in `adapter_dir` answer to `name` (default: the folder's name); returns the name."""
        name = name or Path(adapter_dir).name
        try:
            self.check_adapter(adapter_dir)  # refuse early, with the record's own message, before any lock
        except RunError as e:
            raise AdapterError(str(e)) from e
        with self.lock:
            self.adapters[name] = str(adapter_dir)
            try:
                self._peft_names([name])
            except AdapterError:
                del self.adapters[name]
                raise
        return name

    def _peft_names(self, names: list[str | None]) -> list[str | None]:
        """The PEFT adapter name serving each asked name (None: the base), loading what is missing or stale.

        Called with `lock` held, just before the model runs, so what it returns stays loaded until then.
        """
        out: list[str | None] = []
        for name in names:
            if name is None:
                out.append(None)
                continue
            if name not in self.adapters:
                raise KeyError(f"adapter {name!r} is not loaded")
            folder = self.adapters[name]
            try:
                key = _weights_key(folder)
            except OSError as e:
                raise AdapterError(f"adapter {Path(folder).name} is gone: {e.strerror}") from e
            if key not in self._loaded:
                self._loaded[key] = self._load_weights(folder)
            self._loaded.move_to_end(key)
            out.append(self._loaded[key])
        self._evict(keep={n for n in out if n is not None})
        return out

    def _load_weights(self, folder: str) -> str:
        from peft import PeftModel

        try:
            self.check_adapter(folder)
        except RunError as e:
            raise AdapterError(str(e)) from e
        self._serial += 1
        peft_name = f"adapter{self._serial}"  # never a folder name: PEFT refuses names with dots
        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(folder, adapter_name=peft_name)
            else:
                self.model = PeftModel.from_pretrained(self.model, folder, adapter_name=peft_name)
        except Exception as e:  # noqa: BLE001 - a damaged file surfaces as many different library errors
            raise AdapterError(f"adapter {Path(folder).name} could not be loaded (damaged or incomplete "
                               f"files?): {type(e).__name__}: {str(e)[:200]}") from e
        self.model.eval()
        if self.skinny_decode:
            models.speed_up_small_batches(self.model)  # the adapter's own layers
        return peft_name

    def _evict(self, keep: set[str]) -> None:
        """Delete weights no longer on disk under their folder (a republished run's old version), then the least
        recently used beyond MAX_ADAPTERS; never one in `keep`, the request about to run."""
        wanted = set()
        for folder in set(self.adapters.values()):
            with contextlib.suppress(OSError):
                wanted.add(_weights_key(folder))
        for key in [k for k in self._loaded if k not in wanted] + list(self._loaded):
            if key not in self._loaded or self._loaded[key] in keep:
                continue
            if key in wanted and len(self._loaded) <= self.MAX_ADAPTERS:
                continue
            peft_name = self._loaded.pop(key)
            self.model.delete_adapter(peft_name)
            with self._recent_lock:
                self._recent.pop(peft_name, None)

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def _inputs(self, requests: list[Request], gen: GenConfig, mixed: bool = True) -> tuple[Any, dict[str, Any]]:
        for r in requests:
            if r.adapter is not None and r.adapter not in self.adapters:
                raise KeyError(f"adapter {r.adapter!r} is not loaded")
        texts = [render(self.tokenizer, r.messages, add_generation_prompt=True) for r in requests]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(self.model.device)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=gen.max_new_tokens,
            do_sample=not gen.greedy,
            repetition_penalty=gen.repetition_penalty,
            eos_token_id=self._eos_ids(),
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if not gen.greedy:
            kwargs.update(temperature=gen.temperature, top_p=gen.top_p, top_k=None)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        # A static cache (see _prefill_rows) makes transformers compile the forward on a GPU; the compiled
        # graphs are per thread and PEFT's per-call adapter_names hooks are not guarded, so a row could be
        # answered by another arm's adapter. Mixed batches must run eagerly.
        kwargs["disable_compile"] = True
        return batch, kwargs

    def _replies(self, batch: Any, out: Any, seconds: list[float], first_token_s: float | None) -> list[Reply]:
        width = batch["input_ids"].shape[1]
        replies = []
        for i in range(out.shape[0]):
            new = out[i, width:]
            # Finished rows are padded with pad_token_id (often the end-of-turn token): count the rest.
            n_new = int((new != self.tokenizer.pad_token_id).sum())
            replies.append(Reply(
                text=self.tokenizer.decode(new, skip_special_tokens=True).strip(),
                prompt_tokens=int(batch["attention_mask"][i].sum()),
                reply_tokens=n_new,
                seconds=seconds[i],
                first_token_s=first_token_s,
            ))
        return replies

    def generate(self, requests: list[Request], gen: GenConfig) -> list[Reply]:
        """All requests in one batched generate call, each with its own arm."""
        replies: list[Reply] = []
        for update in self.stream(requests, gen):
            if update and isinstance(update[0], Reply):
                replies = update
        return replies

    def stream(self, requests: list[Request], gen: GenConfig) -> Iterator[list[str] | list[Reply]]:
        """Yield the partial texts of every arm as tokens arrive, then the finished Replies.

        Every arm shares one generate call (PEFT mixed-adapter batch). Where that is impossible, the arms
        are answered one after another instead, and the log says so.
        """
        if self.batch_arms:
            started = False
            try:
                for update in self._stream(requests, gen, mixed=True):
                    started = True
                    yield update
                return
            except (ValueError, TypeError, NotImplementedError, RuntimeError) as e:
                if started or not self._loaded or isinstance(e, AdapterError):
                    raise
                log.warning("mixed-adapter batch failed (%s); answering the arms one at a time", e)
                self.batch_arms = False
        yield self._sequential(requests, gen)

    def _sequential(self, requests: list[Request], gen: GenConfig) -> list[Reply]:
        """One arm at a time: the base arm with every adapter disabled, the others with theirs active."""
        replies: list[Reply] = []
        for r in requests:
            *_, final = self._stream([r], gen, mixed=False)
            replies.extend(final)
        return replies

    def _arm(self, peft_name: str | None) -> Any:
        """The model set up for one arm alone (lock held): its adapter active, or every adapter off for the base."""
        if peft_name is None:
            return self.model.disable_adapter() if self._loaded else contextlib.nullcontext()
        self.model.set_adapter(peft_name)
        return contextlib.nullcontext()

    def logits(self, input_ids: list[int], adapter: str | None) -> Any:
        """One sequence's logits under one arm (the scorecard's likelihoods), holding the model's lock."""
        import torch

        with self.lock, torch.inference_mode():
            (peft_name,) = self._peft_names([adapter])
            extra = {"adapter_names": [peft_name or BASE]} if self._loaded else {}
            ids = torch.tensor([input_ids], device=self.model.device)
            return self.model(input_ids=ids, **extra).logits[0]

    def nll(self, input_ids: list[int], labels: list[int], adapter: str | None) -> tuple[float, int]:
        """Summed negative log-likelihood of the labelled tokens (IGNORE elsewhere), and their count, under one
        arm (None: the base). The scorecard's likelihood and forgetting measures ask for this, so they need
        neither the model's weights nor its adapter names, and a stand-in model can answer them."""
        import torch

        logits = self.logits(input_ids, adapter)[:-1].float()
        target = torch.tensor(labels[1:], device=logits.device)
        losses = torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum")
        return float(losses), int((target != IGNORE).sum())

    @property
    def context_length(self) -> int:
        """The longest prompt plus reply the base model takes, in tokens (0: its config does not say)."""
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 0)

    def _prefill_rows(self, batch: Any, arms: list[str], max_new_tokens: int) -> Any:
        """Each arm's prompt through the model on its own, the caches stacked left-padded for one decode.

        A batch pads every prompt to the longest, and the prompt-only arm's instructions and examples make
        its prompt several times the others': padded, a 3-arm round prefilled about twice the tokens it
        needed. transformers' generate has no per-row prefill, so it is done here: each row's prompt but its
        last token runs with the row's own adapter, and generate continues from the stacked cache (the pad
        positions are masked). Returns None for a one-token prompt or a cache that is not the plain kind.
        """
        import torch
        from transformers import StaticCache
        from transformers.cache_utils import DynamicLayer, StaticLayer

        ids, mask = batch["input_ids"], batch["attention_mask"].bool()
        if int(mask.sum(dim=1).min()) < 2:
            return None
        width = ids.shape[1] - 1  # generate feeds the last prompt token itself
        # A static cache: decoding writes each step in place instead of copying the whole cache every step.
        # Checked before any prefill, so a model it does not suit costs nothing here.
        cache = StaticCache(config=self.model.config, max_cache_len=width + 1 + max_new_tokens)
        if not all(type(layer) is StaticLayer for layer in cache.layers):
            return None  # sliding-window or other special layers: leave the batch to generate
        caches = [self._row_cache(ids[i, mask[i]][:-1].tolist(), arm) for i, arm in enumerate(arms)]
        if not all(type(layer) is DynamicLayer for c in caches for layer in c.layers):
            return None

        def stacked(tensors: list[Any]) -> Any:
            return torch.cat([torch.nn.functional.pad(t, (0, 0, width - t.shape[2], 0)) for t in tensors])

        for n, layer in enumerate(cache.layers):
            layer.update(stacked([c.layers[n].keys for c in caches]), stacked([c.layers[n].values for c in caches]))
        return cache

    RECENT_PER_ARM = 4  # prompts remembered per adapter (the base and prompt-only arms share "no adapter")
    RECENT_ARMS = 4  # adapters remembered: a 1,024-token prompt's cache is ~50 MB on the embedded model

    def _row_cache(self, ids: list[int], arm: str) -> Any:
        """One prompt's cache, reusing the longest start it shares with a recent prompt of the same arm.

        Written here because transformers reuses a cache only when the caller passes it in; this finds it.
        The stored caches are never changed: a reused one is cut to the shared start as new views, and the
        forward over the rest builds new tensors.
        """
        import torch
        from transformers import DynamicCache

        with self._recent_lock:
            recent = list(self._recent.get(arm, []))
        shared, cache = 0, None
        for old_ids, old_cache in recent:
            n = len(os.path.commonprefix([old_ids, ids]))  # works on any lists
            if n > shared:
                shared, cache = n, old_cache
        shared = min(shared, len(ids) - 1)  # at least one token runs, so the forward returns the cache
        if cache is not None and shared > 0:
            cache = DynamicCache(ddp_cache_data=[(layer.keys[:, :, :shared], layer.values[:, :, :shared])
                                                 for layer in cache.layers])
        else:
            shared, cache = 0, None
        extra = {"adapter_names": [arm]} if self._loaded else {}
        out = self.model(input_ids=torch.tensor([ids[shared:]], device=self.model.device), past_key_values=cache,
                         use_cache=True, **extra)
        with self._recent_lock:
            kept = [(i, c) for i, c in self._recent.pop(arm, []) if i != ids]
            self._recent[arm] = [(ids, out.past_key_values), *kept][: self.RECENT_PER_ARM]
            while len(self._recent) > self.RECENT_ARMS:  # memory stays bounded however many runs are compared
                del self._recent[next(iter(self._recent))]  # the arm used longest ago
        return out.past_key_values

    def _stream(self, requests: list[Request], gen: GenConfig, mixed: bool) -> Iterator[list[str] | list[Reply]]:
        """The streamed batch: transformers' own text streamers take one row only, so rows are decoded here."""
        import torch

        batch, kwargs = self._inputs(requests, gen, mixed)
        streamer = _BatchStreamer(len(requests), set(kwargs["eos_token_id"]))
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                # Adapters are resolved (loaded, reloaded or evicted) and used under one hold of the lock, in
                # the thread that runs the model, so no other call can swap them in between.
                with self.lock, torch.inference_mode():
                    peft_names = self._peft_names([r.adapter for r in requests])
                    arms = [n or BASE for n in peft_names]
                    if mixed and self._loaded:
                        kwargs["adapter_names"] = arms
                    cache = self._prefill_rows(batch, arms, gen.max_new_tokens) if mixed else None
                    if cache is not None:
                        kwargs["past_key_values"] = cache
                    with contextlib.nullcontext() if mixed else self._arm(peft_names[0]):
                        torch.manual_seed(gen.seed)
                        result["out"] = self.model.generate(**batch, **kwargs, streamer=streamer)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                result["error"] = e
            finally:
                streamer.end()

        start = time.perf_counter()
        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        pad = self.tokenizer.pad_token_id
        for rows in streamer:
            yield [self.tokenizer.decode([t for t in row if t != pad], skip_special_tokens=True) for row in rows]
        thread.join()
        if "error" in result:
            raise result["error"]
        end = time.perf_counter()
        first = streamer.first_token_at - start if streamer.first_token_at else None
        # Each arm's speed counts up to its own last token, not until the longest arm in the batch is done.
        seconds = [(t or end) - start for t in streamer.finished_at]
        yield self._replies(batch, result["out"], seconds, first)


class _BatchStreamer:
    """Collects each step's tokens for every row; iterating yields snapshots of all rows so far.

    Written here because transformers' TextStreamer and TextIteratorStreamer refuse batches larger than one.
    """

    def __init__(self, rows: int, eos_ids: set[int]):
        self.rows: list[list[int]] = [[] for _ in range(rows)]
        self.eos_ids = eos_ids
        self.finished_at: list[float | None] = [None] * rows
        self.queue: queue.Queue = queue.Queue()
        self.seen_prompt = False
        self.first_token_at: float | None = None

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

    def __iter__(self) -> Iterator[list[list[int]]]:
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
                  gen: GenConfig) -> Iterator[list[str] | list[Reply]]:
    """A round whose arms sit on different bases: each base answers its own arms (`rows` of `requests`) in one
    mixed batch, one base after the other; partial texts of every arm are yielded, then all Replies in order.
    With one group this is that model's own stream, unchanged."""
    if len(groups) == 1:
        yield from groups[0][0].stream(requests, gen)
        return
    partial = [""] * len(requests)
    replies: list[Reply | None] = [None] * len(requests)
    for chat, rows in groups:
        for update in chat.stream([requests[i] for i in rows], gen):
            done = bool(update) and isinstance(update[0], Reply)
            for i, item in zip(rows, update):
                if done:
                    replies[i] = item
                partial[i] = item.text if done else item
            if not done:
                yield list(partial)
    yield replies  # type: ignore[misc]


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    """Prepend a system prompt when one is given and the conversation has none."""
    if system and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system}, *messages]
    return list(messages)


def compare(chat: ChatModel, adapter: str, prompts: list[str], gen: GenConfig, system: str | None = None) -> list[dict]:
    """Base and tuned replies for each prompt; both arms of a prompt share one batch."""
    rows = []
    for prompt in prompts:
        msgs = with_system([{"role": "user", "content": prompt}], system)
        base, tuned = chat.generate([Request(msgs, None), Request(msgs, adapter)], gen)
        rows.append({"prompt": prompt, "base": base.text, "tuned": tuned.text})
    return rows
