"""The compare arena: arms, rounds, blind pairs, votes, win rates and the preference export.

An arm is one way of answering: the base model, the base model with the project's style guide and a few
example replies in its system prompt ("prompt-only", the cheaper alternative that fine-tuning has to
beat), or a finished run's adapter. A round sends one conversation to every arm. In blind mode a round
shows two arms in a random order, and which is which is kept on the server until the vote is in.

    arms = [base_arm(), prompt_only_arm(style_guide, examples), run_arm("20261123-cosmo")]
    rnd = new_round(arms, blind=True, rng=random.Random())
"""

from __future__ import annotations

import csv
import io
import json
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from voicetune.adherence import wilson  # one Wilson interval, for votes and adherence alike

CHOICES: tuple[str, ...] = ("left", "right", "tie", "both_bad")
FEW_SHOT = 3  # example exchanges in the prompt-only arm's system prompt: enough to show the voice, cheap enough


@dataclass(frozen=True)
class Arm:
    key: str  # "base", "prompt-only" or "run:<run id>": what is stored with a vote
    label: str  # what the user sees once the arm may be revealed
    adapter: str | None = None  # the run id whose adapter answers; None for the base model
    system: str | None = None  # a system prompt this arm adds (prompt-only)


def base_arm() -> Arm:
    return Arm("base", "Base model")


def run_arm(run_id: str) -> Arm:
    return Arm(f"run:{run_id}", f"Tuned: {run_id}", adapter=run_id)


def prompt_only_system(style_guide: str, examples: list[list[dict]], k: int = FEW_SHOT) -> str:
    """The style guide plus the first k exchanges, as one system prompt."""
    parts = ["You write as our brand. Follow this style guide closely."]
    if style_guide.strip():
        parts.append("Style guide:\n" + style_guide.strip())
    shots = []
    for messages in examples:
        user = next((m["content"] for m in messages if m["role"] == "user"), None)
        reply = next((m["content"] for m in messages if m["role"] == "assistant"), None)
        if user and reply:
            shots.append(f"Customer: {user}\nYou: {reply}")
        if len(shots) >= k:
            break
    if shots:
        parts.append("Example replies in our voice:\n\n" + "\n\n".join(shots))
    return "\n\n".join(parts)


def prompt_only_arm(style_guide: str, examples: list[list[dict]]) -> Arm:
    return Arm("prompt-only", "Prompt-only (style guide + examples)", system=prompt_only_system(style_guide, examples))


def arm_messages(arm: Arm, history: list[dict], default_system: str | None = None) -> list[dict]:
    """What one arm is sent: its own history, with the arm's system prompt (or the project's default) first."""
    body = [m for m in history if m["role"] != "system"]
    system = arm.system or default_system
    return ([{"role": "system", "content": system}] if system else []) + body


@dataclass
class Round:
    id: str
    arms: list[Arm]  # in display order (left to right)
    blind: bool
    replies: list[str] = field(default_factory=list)
    voted: bool = False

    def public_labels(self) -> list[str]:
        """Pane titles the browser may see: neutral letters until a blind round is voted on."""
        if self.blind and not self.voted:
            return [f"Reply {chr(65 + i)}" for i in range(len(self.arms))]
        return [a.label for a in self.arms]


def new_round(arms: list[Arm], blind: bool, rng: random.Random) -> Round:
    """A blind round shows a random pair in random order; an open round shows every arm as chosen."""
    if blind:
        if len(arms) < 2:
            raise ValueError("blind mode needs at least two arms to compare")
        shown = rng.sample(arms, 2)
    else:
        shown = list(arms)
    return Round(id=uuid.uuid4().hex, arms=shown, blind=blind)



def win_rates(votes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per pair of arms: wins each way, ties, both bad, and A's win rate over decisive votes."""
    table: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: {"a": 0, "b": 0, "tie": 0, "both_bad": 0})
    for v in votes:
        a, b = sorted((v["left_arm"], v["right_arm"]))
        row = table[(a, b)]
        if v["choice"] in ("tie", "both_bad"):
            row[v["choice"]] += 1
        else:
            winner = v["left_arm"] if v["choice"] == "left" else v["right_arm"]
            row["a" if winner == a else "b"] += 1
    out = []
    for (a, b), r in sorted(table.items()):
        decisive = r["a"] + r["b"]
        low, high = wilson(r["a"], decisive)
        out.append({
            "arm_a": a, "arm_b": b, "a_wins": r["a"], "b_wins": r["b"], "ties": r["tie"], "both_bad": r["both_bad"],
            "votes": decisive + r["tie"] + r["both_bad"],
            "a_win_rate": r["a"] / decisive if decisive else None, "ci95_low": low, "ci95_high": high,
        })
    return out


def preference_pairs(votes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Decisive votes as TRL DPOTrainer's conversational prompt/chosen/rejected records."""
    pairs = []
    for v in votes:
        if v["choice"] not in ("left", "right"):
            continue
        chosen, rejected = (v["left_reply"], v["right_reply"]) if v["choice"] == "left" else \
            (v["right_reply"], v["left_reply"])
        prompt = [m for m in v["prompt"] if m["role"] != "system"]
        pairs.append({
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        })
    return pairs


def preference_jsonl(votes: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in preference_pairs(votes))


def grid_csv(prompts: list[str], arms: list[Arm], replies: list[list[str]]) -> str:
    """The batch mode's prompt x arm grid as CSV, one row per prompt."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["prompt", *[a.key for a in arms]])
    for prompt, row in zip(prompts, replies):
        writer.writerow([prompt, *row])
    return buf.getvalue()


def round_requests(rnd: Round, histories: dict[str, list[dict]], user_text: str,
                   default_system: str | None = None) -> list[Any]:
    """One request per shown arm: each arm continues its own history, with its own system prompt."""
    from voicetune.generate import Request

    user = {"role": "user", "content": user_text}
    return [
        Request(arm_messages(arm, [*histories.get(arm.key, []), user], default_system), adapter=arm.adapter)
        for arm in rnd.arms
    ]
