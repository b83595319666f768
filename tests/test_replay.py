"""General replay: the base model's own answers to general questions, mixed into training (voicetune/replay.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from voicetune import evaluate, replay, runs
from voicetune.config import TrainConfig

from .conftest import voice_data


def test_replay_never_asks_the_forgetting_probe_or_gives_its_answers_away():
    """The probe measures what replay protects, so replay must not teach it: no probe question, and no probe's
    expected answer inside a replay question."""
    asked = [q.lower() for q in replay.prompts()]
    assert len(asked) == len(set(asked)) >= 40
    for probe in evaluate.load_probes():
        assert probe["prompt"].lower() not in asked
        for word in [*probe.get("expect", []), *probe.get("expect_case", [])]:
            pattern = rf"(?<![a-z0-9]){re.escape(word.lower())}(?![a-z0-9])"
            assert not [q for q in asked if re.search(pattern, q)], (probe["id"], word)


def test_how_many_follows_the_share_and_the_bundled_prompts():
    assert replay.how_many(0.0, 40) == 0
    assert replay.how_many(0.25, 0) == 0
    assert replay.how_many(0.25, 43) == 11
    assert replay.how_many(0.25, 2) == 1  # a share of tiny data still replays one
    assert replay.how_many(1.0, 10_000) == len(replay.prompts())
    assert replay.choose(5, seed=3) == replay.choose(5, seed=3) != replay.choose(5, seed=4)
    with pytest.raises(ValueError, match="replay"):
        TrainConfig(replay=1.5)


def test_the_general_answers_watched_are_never_the_ones_trained_on():
    trained = replay.choose(20, seed=3)
    watched = replay.choose_apart(6, 3, trained)
    assert len(watched) == len(set(watched)) == 6 and not set(watched) & set(trained)
    assert watched == replay.choose_apart(6, 3, trained) and replay.choose_apart(0, 3, trained) == []
    assert len(replay.choose_apart(100, 3, trained)) == len(replay.prompts()) - 20  # no more than there are
    with pytest.raises(ValueError, match="early_stopping_watch"):
        TrainConfig(early_stopping_watch="probe")


def test_an_answer_the_model_did_not_finish_is_dropped_not_cut(tokenizer):
    stops = {tokenizer.eos_token_id}
    ids = tokenizer("Paris is the capital.", add_special_tokens=False)["input_ids"]
    assert replay._finished_reply(tokenizer, [*ids, tokenizer.eos_token_id, 5, 6], stops) == "Paris is the capital."
    assert replay._finished_reply(tokenizer, ids, stops) is None
    assert replay._finished_reply(tokenizer, [tokenizer.eos_token_id], stops) is None


@pytest.mark.slow
def test_a_run_trains_on_the_bases_own_general_answers_and_keeps_them_out_of_the_users_data(tmp_path: Path, base_path):
    """A real run on the embedded model: the replayed conversations are the base's greedy answers to bundled
    prompts, trained on (more planned steps), kept beside the adapter, and never in the held-out split; a run
    watching general answers too is also given as many other answers as it holds out."""
    from voicetune.train import run_sft

    data = voice_data(tmp_path / "voice.jsonl", "Arr, the crew be on it. Yo ho ho!")
    common = dict(data=str(data), epochs=1.0, batch_size=4, val_fraction=0.25, scorecard=False, seed=3,
                  early_stopping=False)
    events: list[dict] = []
    record = run_sft(TrainConfig(out=str(tmp_path / "with"), replay=1.0, early_stopping_watch="voice+general",
                                 **common), events.append)
    plain = run_sft(TrainConfig(out=str(tmp_path / "without"), replay=0.0, **common))

    folder = tmp_path / "with"
    replayed = [json.loads(x)["messages"] for x in (folder / runs.REPLAY_FILE).read_text().splitlines()]
    assert 1 <= len(replayed) == record["data"]["replay"] <= replay.how_many(1.0, record["data"]["train"])
    # The log says how many of the base's answers were kept, so a replay that kept few is never silent
    (said,) = [e for e in events if "replay_kept" in e]
    asked = replay.how_many(1.0, record["data"]["train"])
    assert (said["replay_kept"], said["replay_asked"]) == (len(replayed), asked)
    assert said["phase"] == "loading"
    assert f"{len(replayed)} of the base's {asked} general answers kept" in said["message"]
    # Watching general answers too: up to as many others as conversations held out (unfinished ones dropped)
    assert 1 <= record["data"]["general_val"] <= record["data"]["val"] and plain["data"]["general_val"] == 0
    assert plain["data"]["replay"] == 0 and not (tmp_path / "without" / runs.REPLAY_FILE).exists()
    assert record["metrics"]["planned_steps"] > plain["metrics"]["planned_steps"]
    users = {json.loads(x)["messages"][0]["content"] for x in data.read_text().splitlines()}
    heldout = (folder / runs.HELDOUT_FILE).read_text()
    for user, assistant in replayed:
        assert user["content"] in replay.prompts() and user["content"] not in users
        assert assistant["role"] == "assistant" and assistant["content"].strip()
        assert user["content"] not in heldout
