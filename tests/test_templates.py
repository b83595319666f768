"""The loss mask: exactly the assistant replies and their end-of-turn token, for any template."""

from __future__ import annotations

import copy

import pytest

from voicetune.data import Conversation
from voicetune.templates import IGNORE, TemplateError, encode, encode_all, preview

MULTI = [
    {"role": "system", "content": "You are Cosmo Coffee."},
    {"role": "user", "content": "Are you open?"},
    {"role": "assistant", "content": "Yes, until six!"},
    {"role": "user", "content": "Oat milk?"},
    {"role": "assistant", "content": "Always. Stay caffeinated!"},
]

# A Llama-3-style template: no newline after the end-of-turn token, a different header shape.
LLAMA3_STYLE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant: {% endif %}"
)


def trained_text(tok, messages) -> list[str]:
    """The trained tokens, decoded run by run."""
    enc = encode(tok, messages)
    runs, cur = [], []
    for tid, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE:
            assert lab == tid
            cur.append(tid)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


@pytest.mark.slow
def test_multi_turn_mask_is_exactly_the_replies(tokenizer):
    assert trained_text(tokenizer, MULTI) == ["Yes, until six!<|im_end|>", "Always. Stay caffeinated!<|im_end|>"]
    enc = encode(tokenizer, MULTI)
    assert enc.text == tokenizer.apply_chat_template(MULTI, tokenize=False)
    assert enc.input_ids == tokenizer(enc.text, add_special_tokens=False)["input_ids"]


@pytest.mark.slow
def test_weight_zero_turn_is_not_trained(tokenizer):
    msgs = copy.deepcopy(MULTI)
    msgs[2]["weight"] = 0
    assert trained_text(tokenizer, msgs) == ["Always. Stay caffeinated!<|im_end|>"]


@pytest.mark.slow
def test_mask_works_for_another_template_without_generation_markers(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = LLAMA3_STYLE
    # The space after "assistant:" merges into the reply's first token, which must still be trained.
    assert trained_text(tok, MULTI[1:]) == [" Yes, until six!<|endoftext|>", " Always. Stay caffeinated!<|endoftext|>"]


@pytest.mark.slow
def test_template_that_rewrites_history_is_refused(tokenizer):
    tok = copy.deepcopy(tokenizer)
    # Drops earlier assistant turns once a later one exists, as some reasoning templates do.
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(TemplateError, match="rewrites earlier turns"):
        encode(tok, MULTI)


@pytest.mark.slow
def test_encode_all_names_line_and_field(tokenizer):
    convs = [
        Conversation(MULTI, line=1),
        Conversation([{"role": "user", "content": "hi <|im_end|> there"}, {"role": "assistant", "content": "ok"}], line=2),
        Conversation([{"role": "user", "content": "long " * 300}, {"role": "assistant", "content": "ok"}], line=3),
    ]
    encoded, problems = encode_all(tokenizer, convs, max_length=128)
    assert len(encoded) == 1
    assert [str(p).split(" tokens")[0] for p in problems] == [
        "line 2, messages[0].content: contains the template token(s) <|im_end|>",
        "line 3, messages: is 3" + str(problems[1]).split("is 3")[1].split(" tokens")[0],
    ]
    assert "over the max length of 128" in str(problems[1])


@pytest.mark.slow
def test_preview_marks_trained_tokens(tokenizer):
    pairs = preview(tokenizer, MULTI[1:3])
    assert "".join(p for p, _ in pairs) == tokenizer.apply_chat_template(MULTI[1:3], tokenize=False)
    assert "".join(p for p, on in pairs if on) == "Yes, until six!<|im_end|>"


@pytest.mark.slow
def test_preview_keeps_emoji_whole(tokenizer):
    msgs = [{"role": "user", "content": "Coffee?"}, {"role": "assistant", "content": "Always! Stay caffeinated! ☕"}]
    pairs = preview(tokenizer, msgs)
    assert "".join(p for p, _ in pairs) == tokenizer.apply_chat_template(msgs, tokenize=False)
    assert not any("\ufffd" in p for p, _ in pairs)
    assert "".join(p for p, on in pairs if on) == "Always! Stay caffeinated! ☕<|im_end|>"
