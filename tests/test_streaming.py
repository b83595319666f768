"""The one event a streamed round yields (streaming.Update), across arms on two bases (generate.stream_groups)."""

from __future__ import annotations

import pytest

from tests.fakes import ScriptedChatModel
from voicetune.config import GenConfig
from voicetune.generate import Request, Update, stream_groups
from voicetune.streaming import final_replies

MSGS = [{"role": "user", "content": "Do you deliver?"}]


def test_a_round_on_two_bases_streams_updates_in_request_order_and_ends_with_every_reply() -> None:
    first, second = ScriptedChatModel("base-a"), ScriptedChatModel("base-b")
    first.enqueue("one two three", "alpha beta")  # rows 0 and 2
    second.enqueue("x y")  # row 1
    requests = [Request(MSGS, None), Request(MSGS, None), Request(MSGS, None)]
    updates = list(stream_groups([(first, [0, 2]), (second, [1])], requests, GenConfig()))
    assert all(type(u) is Update for u in updates)
    assert [u.texts for u in updates] == [["one", "", "alpha"], ["one two", "", "alpha beta"],
                                          ["one two three", "x", "alpha beta"], ["one two three", "x y", "alpha beta"]]
    assert [u.replies is None for u in updates] == [True, True, True, False]
    assert [r.text for r in updates[-1].replies or []] == ["one two three", "x y", "alpha beta"]


def test_final_replies_refuses_a_stream_that_never_finished() -> None:
    with pytest.raises(RuntimeError, match="^the reply stream ended without its finished replies$"):
        final_replies(iter([Update(["half a rep"])]))


def test_the_repetition_penalty_counts_the_reply_not_the_prompt():
    """The prompt-only arm's prompt holds the voice's examples: a penalty that counted the prompt would push it
    away from the very sign-off it was shown. Columns 0-2 are the prompt (left-padded), 3 the reply so far."""
    import torch

    from voicetune.decoding import reply_only_penalty

    (penalty,) = reply_only_penalty(2.0, prompt_width=3)
    ids = torch.tensor([[5, 6, 7, 8], [1, 6, 7, 9]])
    scores = penalty(ids, torch.ones(2, 10))
    assert scores[0].tolist() == [1, 1, 1, 1, 1, 1, 1, 1, 0.5, 1]  # only the reply's token 8, not 5-7
    assert scores[1].tolist() == [1, 1, 1, 1, 1, 1, 1, 1, 1, 0.5]


def test_the_one_arm_at_a_time_fallback_streams_each_arm_as_it_is_written(tiny_model) -> None:
    """Where a mixed batch is impossible the arms are answered in turn; each pane still fills as it is written
    instead of every pane waiting for the last arm."""
    from voicetune.generate import ChatModel

    chat = ChatModel(str(tiny_model))
    chat.batch_arms = False
    other = [{"role": "user", "content": "Can I change my address?"}]
    updates = list(chat.stream([Request(MSGS, None), Request(other, None)], GenConfig(max_new_tokens=6)))
    partial = [u.texts for u in updates if u.replies is None]
    # At least one Update per arm while it is written (a slow reader may skip to an arm's newest text, never past
    # its last), the second arm's pane empty while the first is written
    assert len(partial) >= 2 and partial[0][1] == ""
    replies = updates[-1].replies
    assert replies is not None and [r.text for r in replies] == [t.strip() for t in partial[-1]]
