"""Arms, blind rounds, votes, win rates and the preference export: exact numbers, no model needed."""

from __future__ import annotations

import json
import random

import pytest

from voicetune import projects, store
from voicetune.arena import (
    Arm, arm_messages, base_arm, grid_csv, new_round, preference_jsonl, prompt_only_arm, prompt_only_system,
    run_arm, win_rates, wilson,
)

EXAMPLES = [
    [{"role": "user", "content": "Open Sunday?"}, {"role": "assistant", "content": "Yes, 8 till 4! Stay caffeinated!"}],
    [{"role": "system", "content": "x"}, {"role": "user", "content": "Oat milk?"},
     {"role": "assistant", "content": "Always. Stay caffeinated!"}],
]


def vote(left: str, right: str, choice: str, n: int = 1) -> list[dict]:
    return [{"left_arm": left, "right_arm": right, "choice": choice, "left_reply": f"L{i}", "right_reply": f"R{i}",
             "prompt": [{"role": "user", "content": f"q{i}"}]} for i in range(n)]


def test_wilson_interval_known_values():
    low, high = wilson(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson(0, 0) == (0.0, 1.0)


def test_win_rates_count_each_pair_in_either_order():
    votes = vote("base", "run:a", "right", 3) + vote("run:a", "base", "left", 2) + vote("base", "run:a", "left", 1) \
        + vote("run:a", "base", "tie") + vote("base", "run:a", "both_bad") + vote("prompt-only", "run:a", "right", 2)
    rows = {(r["arm_a"], r["arm_b"]): r for r in win_rates(votes)}
    r = rows[("base", "run:a")]
    assert (r["a_wins"], r["b_wins"], r["ties"], r["both_bad"], r["votes"]) == (1, 5, 1, 1, 8)
    assert r["a_win_rate"] == pytest.approx(1 / 6)
    assert rows[("prompt-only", "run:a")]["b_wins"] == 2


def test_preference_export_is_dpo_conversational_and_skips_ties():
    votes = vote("base", "run:a", "right") + vote("base", "run:a", "tie") + vote("base", "run:a", "left")
    lines = [json.loads(x) for x in preference_jsonl(votes).splitlines()]
    assert lines == [
        {"prompt": [{"role": "user", "content": "q0"}], "chosen": [{"role": "assistant", "content": "R0"}],
         "rejected": [{"role": "assistant", "content": "L0"}]},
        {"prompt": [{"role": "user", "content": "q0"}], "chosen": [{"role": "assistant", "content": "L0"}],
         "rejected": [{"role": "assistant", "content": "R0"}]},
    ]


def test_blind_round_hides_arms_until_voted_and_shuffles():
    arms = [base_arm(), prompt_only_arm("", EXAMPLES), run_arm("r1")]
    rng = random.Random(3)
    seen = set()
    for _ in range(30):
        rnd = new_round(arms, blind=True, rng=rng)
        assert len(rnd.arms) == 2 and rnd.public_labels() == ["Reply A", "Reply B"]
        seen.add(tuple(a.key for a in rnd.arms))
        rnd.voted = True
        assert rnd.public_labels() == [a.label for a in rnd.arms]
    assert len(seen) == 6  # every ordered pair of three arms comes up
    with pytest.raises(ValueError, match="at least two arms"):
        new_round(arms[:1], blind=True, rng=rng)


def test_prompt_only_arm_carries_style_guide_and_examples():
    system = prompt_only_system("Warm, short, one emoji.", EXAMPLES, k=2)
    assert "Style guide:\nWarm, short, one emoji." in system
    assert "Customer: Open Sunday?\nYou: Yes, 8 till 4! Stay caffeinated!" in system
    assert "Customer: Oat milk?" in system
    msgs = arm_messages(Arm("prompt-only", "P", system=system), [{"role": "user", "content": "hi"}], "default")
    assert msgs[0] == {"role": "system", "content": system} and msgs[1]["content"] == "hi"
    assert arm_messages(base_arm(), [{"role": "user", "content": "hi"}], "default")[0]["content"] == "default"


def test_votes_are_stored_once_per_round(workspace):
    conn = store.connect()
    pid = projects.create_project(conn, "cosmo")
    kw = dict(round_id="r1", prompt=[{"role": "user", "content": "q"}], left_arm="base", right_arm="run:a",
              left_reply="l", right_reply="r", choice="right", blind=True)
    assert store.add_vote(conn, pid, **kw) > 0
    assert store.add_vote(conn, pid, **kw) == 0  # a double click does not count twice
    votes = store.list_votes(conn, pid)
    assert len(votes) == 1 and votes[0]["prompt"] == [{"role": "user", "content": "q"}]
    other = projects.create_project(conn, "ledger")
    store.add_vote(conn, other, **{**kw, "round_id": "r2"})
    assert len(store.list_votes(conn, pid)) == 1 and len(store.list_votes(conn, other)) == 1
    assert [v["round_id"] for v in store.list_votes(conn, None)] == ["r1", "r2"]  # every project's, in order
    assert store.connect().execute("PRAGMA user_version").fetchone()[0] == len(store.MIGRATIONS)


def test_grid_csv():
    text = grid_csv(["q1", "q2"], [base_arm(), run_arm("r")], [["a", "b"], ["c", "d, e"]])
    assert text.splitlines() == ["prompt,base,run:r", "q1,a,b", 'q2,c,"d, e"']
