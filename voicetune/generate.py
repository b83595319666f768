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

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicetune import models
from voicetune.config import GenConfig
from voicetune.templates import render, template_fingerprint
from voicetune.train import read_run

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class AdapterMismatch(ValueError):
    pass


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

    @property
    def tokens_per_second(self) -> float:
        return self.reply_tokens / self.seconds if self.seconds > 0 else 0.0


class ChatModel:
    """Owns the loaded base model and its adapters; the UI and CLI ask it for replies."""

    def __init__(self, base_model: str | None = None):
        self.base_model = base_model or models.default_base_model()
        self.path = models.resolve_base_model(self.base_model)
        self.tokenizer = models.load_tokenizer(self.path)
        self.tokenizer.padding_side = "left"  # decoder-only batches must end where generation starts
        device = models.detect_device()
        # Chat uses 16-bit weights on GPU (unmerged 4-bit adapters generate several times slower).
        self.precision = models.precision_for(device, qlora=False)
        self.model: Any = models.load_model(self.path, self.precision, for_training=False)
        self.adapters: dict[str, str] = {}  # name -> folder
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
        from peft import PeftModel

        self.check_adapter(adapter_dir)
        name = name or Path(adapter_dir).name
        if name in self.adapters:
            return name
        if not self.adapters:
            self.model = PeftModel.from_pretrained(self.model, str(adapter_dir), adapter_name=name)
        else:
            self.model.load_adapter(str(adapter_dir), adapter_name=name)
        self.model.eval()
        self.adapters[name] = str(adapter_dir)
        return name

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    def generate(self, requests: list[Request], gen: GenConfig) -> list[Reply]:
        """All requests in one batched generate call, each with its own arm."""
        import torch

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
            kwargs.update(temperature=gen.temperature, top_p=gen.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if self.adapters:
            kwargs["adapter_names"] = [r.adapter or BASE for r in requests]
        torch.manual_seed(gen.seed)
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**batch, **kwargs)
        seconds = time.perf_counter() - start
        width = batch["input_ids"].shape[1]
        replies = []
        for i in range(len(requests)):
            new = out[i, width:]
            # Finished rows are padded with pad_token_id (often the end-of-turn token): count the rest.
            n_new = int((new != self.tokenizer.pad_token_id).sum())
            replies.append(
                Reply(
                    text=self.tokenizer.decode(new, skip_special_tokens=True).strip(),
                    prompt_tokens=int(batch["attention_mask"][i].sum()),
                    reply_tokens=n_new,
                    seconds=seconds,
                )
            )
        return replies


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
