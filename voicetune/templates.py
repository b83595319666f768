"""Render conversations with the tokenizer's own chat template and mark the tokens that carry the loss.

TRL can mask assistant tokens only for templates with `{% generation %}` markers; most shipped templates,
SmolLM2's included, have none. So the mask is computed here, by hand, for any template: render the
conversation up to each assistant turn with the generation prompt, render it again with that turn, and
the characters in between are the reply (and its end-of-turn token). Offsets from the fast tokenizer map
those characters to tokens. If a template rewrites earlier turns (so the prefixes do not line up), we
refuse loudly rather than guess.

    enc = encode(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}])
    enc.input_ids, enc.labels   # labels are -100 everywhere but the assistant reply and its <|im_end|>
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from voicetune.data import Conversation, Problem

IGNORE = -100  # the label PyTorch's cross-entropy skips


class TemplateError(ValueError):
    pass


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    text: str  # the exact text the model sees, special tokens included

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def _render(tokenizer: Any, messages: list[dict], add_generation_prompt: bool) -> str:
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    return tokenizer.apply_chat_template(clean, tokenize=False, add_generation_prompt=add_generation_prompt)


def render(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The exact text a conversation becomes, using the tokenizer's own template."""
    try:
        return _render(tokenizer, messages, add_generation_prompt)
    except Exception as e:  # jinja raises TemplateError for e.g. "roles must alternate"
        raise TemplateError(f"the chat template refused this conversation: {e}") from e


def assistant_spans(tokenizer: Any, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Character spans of each trained assistant reply (weight 1) in the full rendering."""
    full = render(tokenizer, messages)
    spans: list[tuple[int, int]] = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant" or msg.get("weight", 1) == 0:
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1])
        if not (upto.startswith(before) and full.startswith(upto)):
            raise TemplateError(
                f"the chat template rewrites earlier turns (at messages[{i}]), so the assistant tokens "
                "cannot be located reliably; choose a base model with a prefix-stable template"
            )
        # Train on the reply and its end-of-turn token, not on the newline a template adds after it:
        # generation stops at the end-of-turn token, so that whitespace is never produced.
        end = len(upto.rstrip())
        if end > len(before):
            spans.append((len(before), end))
    return full, spans


def encode(tokenizer: Any, messages: list[dict]) -> Encoded:
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for tok, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        # Any overlap counts: with "assistant: " templates BPE merges the space into the reply's first token
        # (" Yes"), which starts before the span but is the first thing the model must produce.
        inside = any(start < e and end > s for s, e in spans)
        labels.append(tok if inside else IGNORE)
    return Encoded(input_ids=list(enc["input_ids"]), labels=labels, text=text)


def preview(tokenizer: Any, messages: list[dict]) -> list[tuple[str, bool]]:
    """(text, trained?) pieces: what the loss-mask preview highlights.

    Byte-level BPE splits one emoji over several tokens, each of which decodes to U+FFFD alone, so tokens
    are grouped until their bytes form whole characters.
    """
    enc = encode(tokenizer, messages)
    pieces: list[tuple[str, bool]] = []
    group: list[int] = []
    trained = False
    for i, (tok, lab) in enumerate(zip(enc.input_ids, enc.labels)):
        group.append(tok)
        trained = trained or lab != IGNORE
        text = tokenizer.decode(group)
        if text.endswith("\ufffd") and i + 1 < len(enc.input_ids) and len(group) < 8:
            continue
        pieces.append((text, trained))
        group, trained = [], False
    return pieces


def special_tokens_in(tokenizer: Any, text: str) -> list[str]:
    """Template control tokens typed into content would forge turn boundaries."""
    specials = set(tokenizer.all_special_tokens) | {str(t) for t in tokenizer.get_added_vocab()}
    return sorted(t for t in specials if t and len(t) > 2 and t in text)


def encode_all(
    tokenizer: Any, convs: list[Conversation], max_length: int
) -> tuple[list[Encoded], list[Problem]]:
    """Encode every conversation with the real template; report each that cannot be trained on as it is."""
    encoded: list[Encoded] = []
    problems: list[Problem] = []
    for conv in convs:
        bad = False
        for i, m in enumerate(conv.messages):
            found = special_tokens_in(tokenizer, m["content"])
            if found:
                problems.append(
                    Problem(conv.line, f"messages[{i}].content", f"contains the template token(s) {', '.join(found)}")
                )
                bad = True
        if bad:
            continue
        try:
            enc = encode(tokenizer, conv.messages)
        except TemplateError as e:
            problems.append(Problem(conv.line, "messages", str(e)))
            continue
        if len(enc.input_ids) > max_length:
            problems.append(
                Problem(
                    conv.line,
                    "messages",
                    f"is {len(enc.input_ids)} tokens, over the max length of {max_length}: "
                    "shorten it, split it, or raise the max length",
                )
            )
            continue
        if enc.n_trained == 0:
            problems.append(Problem(conv.line, "messages", "no assistant token survives the template"))
            continue
        encoded.append(enc)
    return encoded, problems


def template_fingerprint(tokenizer: Any) -> str:
    """A short hash of the chat template and special tokens: an adapter must meet the tokenizer it was trained with."""
    parts = [
        str(getattr(tokenizer, "chat_template", "") or ""),
        str(tokenizer.eos_token),
        str(tokenizer.bos_token),
        str(len(tokenizer)),
    ]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]
