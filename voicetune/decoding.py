"""Replies and likelihoods from the base model under any mix of adapters, every arm of a round in one batch.

Each request names its arm; PEFT's mixed-adapter batches (`adapter_names`, "__base__" for none) run every
arm in a single `generate` call. The base arm runs with no adapter applied at all, never "the adapter at
scale zero", so the base pane really is the base model. Each row's prompt is prefilled on its own, reusing
what the prompt cache holds (an arm with many rows, a scorecard's, prefills their shared start once and the
rest as one batch), and the rows' caches are stacked for one decode.

    decoder = Decoder(registry, tokenizer, PromptCache())
    for update in decoder.stream([Request(msgs, None), Request(msgs, "demo")], GenConfig()):
        print(update.texts)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from voicetune import models
from voicetune.adapter_registry import AdapterError, AdapterRegistry
from voicetune.config import GenConfig
from voicetune.prompt_cache import PromptCache
from voicetune.streaming import BatchStreamer, Reply, Update
from voicetune.templates import IGNORE, render

log = logging.getLogger(__name__)

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch
# How a batch is prefilled and decoded; the reply cache keys on it, since another way rounds otherwise
PREFILL = "rows alone; an arm's many rows by shared start; a large greedy batch in legs"
PREFILL_TOKENS = 8192  # new prompt tokens one prefill batch may hold (group_caches): bounds its activations
LEG_TOKENS = 16  # a large greedy batch drops its ended rows this often (Decoder._generate_in_legs)


@dataclass
class Request:
    messages: list[dict]  # the conversation so far, ending with the user turn to answer
    adapter: str | None = None  # None: the base model


def reply_only_penalty(penalty: float, prompt_width: int) -> Any:
    """A repetition penalty on the reply's own tokens. transformers' `repetition_penalty` also counts the prompt,
    so the prompt-only arm, whose prompt holds the voice's examples, would be pushed away from the very sign-off
    and phrases it was shown, and lose to the tuned arm for it. Every row of a left-padded batch starts its reply
    at the same column, so the prompt is the first `prompt_width` columns (transformers' own processor, told to
    skip them)."""
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

    return LogitsProcessorList([RepetitionPenaltyLogitsProcessor(float(penalty), prompt_ignore_length=prompt_width)])


def sharing_starts(idx: list[int], rows: list[list[int]]) -> list[list[int]]:
    """`idx` split into groups of rows that share at least half of the shorter prompt with the group's first
    (in sorted order, so rows with one start sit together): a scorecard's base and prompt-only rows run under
    one arm but start with different instructions, and padding one to the other's length would waste the
    batch. Plain code: no library groups prompts by a shared start."""
    groups: list[list[int]] = []
    for i in sorted(idx, key=lambda i: rows[i]):
        if groups:
            first = rows[groups[-1][0]]
            if 2 * len(os.path.commonprefix([first, rows[i]])) >= min(len(first), len(rows[i])):
                groups[-1].append(i)
                continue
        groups.append([i])
    return groups


@functools.cache
def _takes_logits_to_keep(model_class: type) -> bool:
    """Whether a model class's forward takes `logits_to_keep`; read once per class, not on every prefill."""
    import inspect

    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


def keep_rows(cache: Any, keep: Any) -> Any:
    """The static cache cut to the rows `keep` (indices), in place. transformers' `batch_select_indices` does
    this for a dynamic cache; a static layer has none (transformers 5.23), so its tensors are cut here."""
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[keep], layer.values[keep]
        layer.batch_size = len(keep)
    return cache


class LegStreamer:
    """One leg's tokens (Decoder._generate_in_legs) handed on as the whole batch's: the rows that ended earlier
    get padding, as generate itself gives them. The streamer protocol: `put` (first the prompt), then `end`."""

    def __init__(self, streamer: Any, rows: Any, size: int, pad: int):
        self.streamer, self.rows, self.size, self.pad = streamer, rows, size, pad
        self.seen_prompt = False

    def put(self, value: Any) -> None:
        import torch

        if not self.seen_prompt:  # this leg's prompt: the batch's streamer was handed its own prompt already
            self.seen_prompt = True
            return
        full = torch.full((self.size, 1), self.pad, dtype=value.dtype, device=value.device)
        full[self.rows] = value.reshape(len(self.rows), -1)
        self.streamer.put(full)

    def end(self) -> None:
        """A leg ended, not the batch: the batch's streamer is ended by its own thread when generation is done."""


class Decoder:
    """Runs the registry's model: streamed batches of replies, and one sequence's logits, under the model's lock.

    Every arm shares one generate call. Where a mixed-adapter batch is impossible, `batch_arms` turns False
    (the log says so) and from then on the arms are answered one after another.
    """

    def __init__(self, registry: AdapterRegistry, tokenizer: Any, prompts: PromptCache):
        self.registry, self.tokenizer, self.prompts = registry, tokenizer, prompts
        self.batch_arms = True  # False once a mixed-adapter batch has failed: then arms go one at a time

    @property
    def model(self) -> Any:
        return self.registry.model  # read each time: loading the first adapter wraps it

    def stream(self, requests: list[Request], gen: GenConfig) -> Iterator[Update]:
        """Every arm's text so far as tokens arrive, then an Update with the finished Replies."""
        if self.batch_arms:
            started = False
            try:
                for update in self._batch(requests, gen, mixed=True):
                    started = True
                    yield update
                return
            except (ValueError, TypeError, NotImplementedError, RuntimeError) as e:
                if started or not self.registry.any_loaded or isinstance(e, AdapterError):
                    raise
                log.warning("mixed-adapter batch failed (%s); answering the arms one at a time", e)
                self.batch_arms = False
        yield from self._sequential(requests, gen)

    def _sequential(self, requests: list[Request], gen: GenConfig) -> Iterator[Update]:
        """One arm at a time, each streamed as it is written (later arms' text empty until their turn): the base
        arm with every adapter disabled, the others with theirs active."""
        texts = [""] * len(requests)
        replies: list[Reply] = []
        for i, r in enumerate(requests):
            for update in self._batch([r], gen, mixed=False):
                texts[i] = update.texts[0]
                if update.replies is None:
                    yield Update(list(texts))
                else:
                    replies.extend(update.replies)
        yield Update.finished(replies)

    def _batch(self, requests: list[Request], gen: GenConfig, mixed: bool) -> Iterator[Update]:
        """One generate call for all `requests`, run in a worker thread and decoded here row by row."""
        batch, kwargs = self.inputs(requests, gen)
        streamer = BatchStreamer(len(requests), set(kwargs["eos_token_id"]))
        streamer.start(lambda: self._generate(requests, gen, batch, kwargs | {"streamer": streamer}, mixed))
        pad = self.tokenizer.pad_token_id
        for rows in streamer:
            yield Update([self.tokenizer.decode([t for t in row if t != pad], skip_special_tokens=True)
                          for row in rows])
        out, seconds, first = streamer.result()
        yield Update.finished(self._replies(batch, out, seconds, first))

    def _generate(self, requests: list[Request], gen: GenConfig, batch: Any, kwargs: dict[str, Any],
                  mixed: bool) -> Any:
        """The worker thread's generate. Adapters are resolved (loaded, reloaded or evicted) and used under one
        hold of the lock, in the thread that runs the model, so no other call can swap them in between."""
        import torch

        with self.registry.lock, torch.inference_mode():
            peft_names = self.registry.peft_names([r.adapter for r in requests])
            arms = [n or BASE for n in peft_names]
            if mixed and self.registry.any_loaded:
                kwargs["adapter_names"] = arms
            cache = self.prefill_rows(batch, arms, gen.max_new_tokens) if mixed else None
            if cache is not None:
                kwargs["past_key_values"] = cache
            with contextlib.nullcontext() if mixed else self._arm(peft_names[0]):
                torch.manual_seed(gen.seed)
                if cache is not None and gen.greedy and len(requests) > models.SMALL_BATCH_ROWS:
                    return self._generate_in_legs(batch, kwargs)
                return self.model.generate(**batch, **kwargs)

    def _generate_in_legs(self, batch: Any, kwargs: dict[str, Any]) -> Any:
        """A large greedy batch (a scorecard's) decoded LEG_TOKENS at a time, each leg only over the rows still
        going: generate keeps computing a row that has ended until every row has, and a scorecard's replies end
        anywhere from a few tokens to the limit. Between legs the cache keeps the rows still going (keep_rows).
        Returns what one generate call would: every row's prompt and reply, padded. Greedy only, since a leg with
        fewer rows would draw other random numbers; and a large batch only, since fewer rows round the matmuls
        otherwise (a round's few rows keep one call)."""
        import torch

        streamer, cache, total = kwargs.pop("streamer"), kwargs.pop("past_key_values"), kwargs.pop("max_new_tokens")
        names = kwargs.pop("adapter_names", None)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        width, pad = ids.shape[1], self.tokenizer.pad_token_id
        out = torch.cat([ids, torch.full((ids.shape[0], total), pad, dtype=ids.dtype, device=ids.device)], dim=1)
        ends = torch.tensor(kwargs["eos_token_id"], device=ids.device)
        streamer.put(ids)  # the prompt, which a streamer is handed first and skips
        rows, done = torch.arange(ids.shape[0], device=ids.device), 0
        while done < total and len(rows):
            leg = min(LEG_TOKENS, total - done)
            ones = torch.ones(len(rows), done, dtype=mask.dtype, device=mask.device)
            extra = {"adapter_names": [names[i] for i in rows.tolist()]} if names else {}
            res = self.model.generate(input_ids=out[rows, :width + done],
                                      attention_mask=torch.cat([mask[rows], ones], 1), past_key_values=cache,
                                      max_new_tokens=leg, return_dict_in_generate=True,
                                      streamer=LegStreamer(streamer, rows, ids.shape[0], pad), **kwargs, **extra)
            new = res.sequences[:, width + done:]
            out[rows, width + done:width + done + new.shape[1]] = new
            done += leg
            going = ~torch.isin(new, ends).any(dim=1)
            if new.shape[1] < leg or not going.any():
                break  # every row of the leg ended
            cache = keep_rows(res.past_key_values, going.nonzero().flatten())
            rows = rows[going]
        return out

    def _arm(self, peft_name: str | None) -> Any:
        """The model set up for one arm alone (lock held): its adapter active, or every adapter off for the base."""
        if peft_name is None:
            return self.model.disable_adapter() if self.registry.any_loaded else contextlib.nullcontext()
        self.model.set_adapter(peft_name)
        return contextlib.nullcontext()

    def _eos_ids(self) -> list[int]:
        return models.end_of_turn_ids(self.model, self.tokenizer)

    def inputs(self, requests: list[Request], gen: GenConfig) -> tuple[Any, dict[str, Any]]:
        """The left-padded batch of rendered prompts, and generate's keyword arguments for `gen`."""
        self.registry.require([r.adapter for r in requests])
        texts = [render(self.tokenizer, r.messages, add_generation_prompt=True) for r in requests]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(self.model.device)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=gen.max_new_tokens,
            do_sample=not gen.greedy,
            eos_token_id=self._eos_ids(),
            # transformers' own penalty stays off (it would count the prompt); ours, below, counts the reply. Set
            # to 1.0, not left out, so a penalty saved in the model's generation config never applies unasked.
            repetition_penalty=1.0,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if gen.repetition_penalty != 1.0:
            kwargs["logits_processor"] = reply_only_penalty(gen.repetition_penalty, batch["input_ids"].shape[1])
        if not gen.greedy:
            kwargs.update(temperature=gen.temperature, top_p=gen.top_p, top_k=None)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        # A static cache (see prefill_rows) makes transformers compile the forward on a GPU; the compiled
        # graphs are per thread and PEFT's per-call adapter_names hooks are not guarded, so a row could be
        # answered by another arm's adapter. Mixed batches must run eagerly.
        kwargs["disable_compile"] = True
        return batch, kwargs

    def _replies(self, batch: Any, out: Any, seconds: list[float], first_token_s: float | None) -> list[Reply]:
        """Each row's reply text and token counts from generate's output (prompt columns cut off)."""
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

    def prefill_rows(self, batch: Any, arms: list[str], max_new_tokens: int) -> Any:
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
        caches = self.row_caches([ids[i, mask[i]][:-1].tolist() for i in range(len(arms))], arms)
        if not all(type(layer) is DynamicLayer for c in caches for layer in c.layers):
            return None

        def stacked(tensors: list[Any]) -> Any:
            return torch.cat([torch.nn.functional.pad(t, (0, 0, width - t.shape[2], 0)) for t in tensors])

        for n, layer in enumerate(cache.layers):
            layer.update(stacked([c.layers[n].keys for c in caches]), stacked([c.layers[n].values for c in caches]))
        return cache

    def row_caches(self, rows: list[list[int]], arms: list[str]) -> list[Any]:
        """Each row's prompt cache. A few rows of an arm (a compare round has one) go one by one through
        row_cache, so a round answers exactly as its arms would alone. An arm with more rows than a decode
        step multiplies the skinny way (a scorecard's or a replay's dozens) prefills them together
        (group_caches): one by one, each row paid a full read of the weights for a handful of new tokens."""
        caches: list[Any] = [None] * len(rows)
        for arm in dict.fromkeys(arms):
            idx = [i for i, a in enumerate(arms) if a == arm]
            if len(idx) > models.SMALL_BATCH_ROWS:
                for group in sharing_starts(idx, rows):
                    for i, cache in zip(group, self.group_caches([rows[i] for i in group], arm)):
                        caches[i] = cache
            else:
                for i in idx:
                    caches[i] = self.row_cache(rows[i], arm)
        return caches

    def group_caches(self, rows: list[list[int]], arm: str) -> list[Any]:
        """Many prompts' caches under one arm: their shared start once (through row_cache, so the prompt cache
        serves and keeps it), then the rest of every prompt as right-padded batches of at most PREFILL_TOKENS.
        Causal attention keeps a row's real tokens from seeing its padding, whose cache entries are cut off.
        transformers' generate prefills a left-padded batch from scratch, with no shared start; hence this."""
        import torch
        from transformers import DynamicCache

        shared = min(len(os.path.commonprefix(rows)), min(len(r) for r in rows) - 1)
        start = self.row_cache(rows[0][:shared], arm).layers if shared > 0 else None
        width = max(len(r) for r in rows) - shared
        per_batch, pad = max(1, PREFILL_TOKENS // width), self.tokenizer.pad_token_id
        caches = []
        for b in range(0, len(rows), per_batch):
            chunk = rows[b:b + per_batch]
            past = None if start is None else DynamicCache(ddp_cache_data=[
                (layer.keys.expand(len(chunk), -1, -1, -1), layer.values.expand(len(chunk), -1, -1, -1))
                for layer in start])
            rest = torch.tensor([r[shared:] + [pad] * (width - len(r) + shared) for r in chunk],
                                device=self.model.device)
            extra = {"adapter_names": [arm] * len(chunk)} if self.registry.any_loaded else {}
            layers = self.model(input_ids=rest, past_key_values=past, use_cache=True, **self._cache_only(),
                                **extra).past_key_values.layers
            caches += [DynamicCache(ddp_cache_data=[(layer.keys[j:j + 1, :, :len(r)], layer.values[j:j + 1, :, :len(r)])
                                                    for layer in layers]) for j, r in enumerate(chunk)]
        return caches

    def _cache_only(self) -> dict[str, Any]:
        """A prefill wants only the cache: where the model takes `logits_to_keep`, its LM head (a fifth of the
        embedded model's work on a prompt) runs on the last position alone."""
        model = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return {"logits_to_keep": 1} if _takes_logits_to_keep(type(model)) else {}

    def row_cache(self, ids: list[int], arm: str) -> Any:
        """One prompt's cache under one arm, computing only what follows the start it shares with a recent
        prompt of that arm (see PromptCache), and remembering the result for the next round."""
        import torch

        shared, cache = self.prompts.longest_start(arm, ids)
        extra = {"adapter_names": [arm]} if self.registry.any_loaded else {}
        out = self.model(input_ids=torch.tensor([ids[shared:]], device=self.model.device), past_key_values=cache,
                         use_cache=True, **self._cache_only(), **extra)
        self.prompts.remember(arm, ids, out.past_key_values)
        return out.past_key_values

    def logits(self, input_ids: list[int], adapter: str | None) -> Any:
        """One sequence's logits under one arm (the scorecard's likelihoods), holding the model's lock."""
        import torch

        with self.registry.lock, torch.inference_mode():
            (peft_name,) = self.registry.peft_names([adapter])
            extra = {"adapter_names": [peft_name or BASE]} if self.registry.any_loaded else {}
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
