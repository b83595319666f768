"""A project's preference pairs: one reply preferred over another to the same prompt, the data DPO trains on.

Pairs come from three places, each kept in the workspace database (store.py, migration m008):
- a decisive blind vote in Compare: the winner's reply is chosen, the loser's rejected;
- a "teach it this" edit: the edited reply is chosen, the reply it started from rejected;
- an imported TRL-style JSONL file of `prompt` / `chosen` / `rejected` records, in TRL's string or
  conversational form; every bad line is reported with its line and field, as the conversation importers do.

The prompt keeps the system prompt a tuned arm was sent (the Compare box's system prompt), so DPO trains on
exactly the context the judged reply was written in. The health check says what would weaken a DPO run before
one is started: identical replies, contradicting pairs, prompts too long for the max length, too few pairs.

    pairs = store.list_preference_pairs(conn, project_id, include_excluded=False)
    report = health(pairs, tokenizer, max_length=1024)      # report.blocked: fewer than MIN_PAIRS
    text = training_jsonl(pairs)                            # what `train --method dpo --preferences` reads
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicetune import store
from voicetune.data import MAX_FILE_BYTES, DataError, Problem, jsonl_objects

MIN_PAIRS = 10  # below this DPO is refused: a handful of pairs only teaches their own prompts
WARN_PAIRS = 30  # below this DPO runs, with a warning: DPO papers use thousands; a voice nudge needs tens
PROMPT_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Pair:
    """One pair in training form: the prompt as messages, and the two replies as text."""

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    line: int = 0  # where an imported pair came from, for later messages

    def record(self) -> dict[str, Any]:
        """TRL DPOTrainer's conversational prompt/chosen/rejected record."""
        return {"prompt": self.prompt, "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}]}


def with_system(prompt: list[dict], system: str | None) -> list[dict]:
    """The messages as an arm was sent them: the given system prompt first, in place of any other."""
    body = [m for m in prompt if m["role"] != "system"]
    return ([{"role": "system", "content": system}] if system and system.strip() else []) + body


def run_of(arm_key: str) -> str:
    return arm_key.removeprefix("run:") if arm_key.startswith("run:") else ""


# --- Where pairs come from --------------------------------------------------------------------------------------

def record_vote(conn: sqlite3.Connection, project_id: int, *, vote_id: int, prompt: list[dict], system: str | None,
                left_arm: str, right_arm: str, left_reply: str, right_reply: str, choice: str,
                base_model: str = "") -> int:
    """The pair of a decisive vote (0 for a tie, "both bad", or a vote that already made its pair)."""
    if choice not in ("left", "right") or not vote_id:
        return 0
    left_won = choice == "left"
    chosen_arm, rejected_arm = (left_arm, right_arm) if left_won else (right_arm, left_arm)
    return store.add_preference_pair(
        conn, project_id, prompt=with_system(prompt, system), source="vote", vote_id=vote_id,
        chosen=left_reply if left_won else right_reply, rejected=right_reply if left_won else left_reply,
        chosen_arm=chosen_arm, rejected_arm=rejected_arm, run_id=run_of(chosen_arm) or run_of(rejected_arm),
        base_model=base_model)


def record_edit(conn: sqlite3.Connection, project_id: int, *, prompt: list[dict], system: str | None, original: str,
                edited: str, arm: str = "", base_model: str = "") -> int:
    """The pair of a "teach it this" edit; 0 when the edit changed nothing (there is no preference to learn)."""
    if edited.strip() == original.strip():
        return 0
    return store.add_preference_pair(conn, project_id, prompt=with_system(prompt, system), chosen=edited.strip(),
                                     rejected=original, source="edit", rejected_arm=arm, run_id=run_of(arm),
                                     base_model=base_model)


def import_pairs(conn: sqlite3.Connection, project_id: int, raw: bytes, base_model: str = "") -> list[int]:
    """Add every pair of a JSONL file, or none: DataError lists every bad line with its field."""
    pairs, problems = parse_jsonl_bytes(raw)
    if problems:
        raise DataError(problems)
    return [store.add_preference_pair(conn, project_id, prompt=p.prompt, chosen=p.chosen, rejected=p.rejected,
                                      source="import", base_model=base_model) for p in pairs]


# --- Reading a prompt/chosen/rejected file ----------------------------------------------------------------------

def _messages(value: Any, line: int, name: str) -> list[Problem]:
    """Problems of a conversational field: a list of {role, content} turns with text content."""
    if not value:
        return [Problem(line, name, "is an empty list: add at least one message")]
    problems = []
    for i, m in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(m, dict):
            problems.append(Problem(line, where, "must be an object with `role` and `content`"))
            continue
        if m.get("role") not in PROMPT_ROLES:
            why = "is missing" if m.get("role") is None else f"unknown role {m.get('role')!r}"
            problems.append(Problem(line, f"{where}.role", f"{why}: use system, user or assistant"))
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            what = "is missing" if m.get("content") is None else "must be non-empty text"
            problems.append(Problem(line, f"{where}.content", what))
    return problems


def _reply(value: Any, line: int, name: str) -> tuple[str | None, list[Problem]]:
    """A reply field as text: a string, or (conversational form) a list of one assistant message."""
    if isinstance(value, str):
        return (value, []) if value.strip() else (None, [Problem(line, name, "is empty")])
    if not isinstance(value, list):
        return None, [Problem(line, name, f"must be text or a list of messages, got {type(value).__name__}")]
    problems = _messages(value, line, name)
    if problems:
        return None, problems
    if len(value) != 1 or value[0]["role"] != "assistant":
        return None, [Problem(line, name, "must hold exactly one assistant message (the reply)")]
    return value[0]["content"], []


def _prompt(value: Any, line: int) -> tuple[list[dict] | None, list[Problem]]:
    if isinstance(value, str):
        return ([{"role": "user", "content": value}], []) if value.strip() else (None, [Problem(line, "prompt", "is empty")])
    if not isinstance(value, list):
        return None, [Problem(line, "prompt", f"must be text or a list of messages, got {type(value).__name__}")]
    problems = _messages(value, line, "prompt")
    if not problems and value[-1]["role"] != "user":
        problems = [Problem(line, f"prompt[{len(value) - 1}]", "the last prompt message must be a user turn")]
    return (None, problems) if problems else ([{"role": m["role"], "content": m["content"]} for m in value], [])


def parse_record(obj: Any, line: int) -> tuple[Pair | None, list[Problem]]:
    if not isinstance(obj, dict):
        return None, [Problem(line, "", f"must be a JSON object, got {type(obj).__name__}")]
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in obj]
    if missing:
        return None, [Problem(line, k, 'is missing: each line needs "prompt", "chosen" and "rejected"') for k in missing]
    prompt, problems = _prompt(obj["prompt"], line)
    chosen, found = _reply(obj["chosen"], line, "chosen")
    problems += found
    rejected, found = _reply(obj["rejected"], line, "rejected")
    problems += found
    if not problems and isinstance(obj["prompt"], str) != isinstance(obj["chosen"], str):
        problems.append(Problem(line, "chosen", "mixes forms: write prompt, chosen and rejected all as text or all "
                                                "as lists of messages"))
    if problems:
        return None, problems
    return Pair(prompt, chosen, rejected, line), []  # type: ignore[arg-type]


def parse_jsonl_bytes(raw: bytes) -> tuple[list[Pair], list[Problem]]:
    """Every line checked; the good pairs and every problem, each naming its line and field."""
    pairs: list[Pair] = []
    problems: list[Problem] = []
    for n, obj, problem in jsonl_objects(raw):
        if problem:
            problems.append(problem)
            continue
        pair, found = parse_record(obj, n)
        problems += found
        if pair:
            pairs.append(pair)
    if not pairs and not problems:
        problems.append(Problem(None, "", "contains no preference pairs"))
    return pairs, problems


def load_pairs(path: str | Path) -> list[Pair]:
    """Read a preference file (what DPO training reads), raising DataError with every problem."""
    path = Path(path)
    if not path.is_file():
        raise DataError([Problem(None, "", f"file not found: {path.name}")])
    if path.stat().st_size > MAX_FILE_BYTES:
        raise DataError([Problem(None, "", f"{path.name} is over the {MAX_FILE_BYTES // 2**20} MiB cap")])
    pairs, problems = parse_jsonl_bytes(path.read_bytes())
    if problems:
        raise DataError(problems)
    return pairs


# --- Out, for training ------------------------------------------------------------------------------------------

def stored_pair(row: dict[str, Any]) -> Pair:
    return Pair(row["prompt"], row["chosen"], row["rejected"], row["id"])


def training_jsonl(rows: list[dict[str, Any]]) -> str:
    """The included pairs of a project as TRL conversational records, one per line."""
    return "".join(json.dumps(stored_pair(r).record(), ensure_ascii=False) + "\n" for r in rows if not r["excluded"])


def pairs_hash(pairs: list[Pair]) -> str:
    """The pairs' fingerprint for the run record: the same pairs in the same order give the same hash."""
    text = "".join(json.dumps(p.record(), ensure_ascii=False, sort_keys=True) + "\n" for p in pairs)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- The health check -------------------------------------------------------------------------------------------

@dataclass
class Health:
    pairs: int  # included pairs checked
    problems: list[str] = field(default_factory=list)  # each names its pair; they weaken training
    refused: list[str] = field(default_factory=list)  # the problems a DPO run refuses (dpo.check_pairs): fix first
    warnings: list[str] = field(default_factory=list)
    blocked: str = ""  # why DPO cannot start, else ""

    def lines(self) -> list[str]:
        head = [f"Blocked: {self.blocked}"] if self.blocked else []
        return head + self.problems + [f"Warning: {w}" for w in self.warnings]


def pair_tokens(tokenizer: Any, pair: Pair) -> int:
    """Tokens of the prompt and the longer reply through the base model's own chat template."""
    longer = max(pair.chosen, pair.rejected, key=len)
    ids = tokenizer.apply_chat_template([*pair.prompt, {"role": "assistant", "content": longer}], tokenize=True)
    return len(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)


def health(rows: list[dict[str, Any]], tokenizer: Any | None = None, max_length: int = 1024,
           ties: int = 0) -> Health:
    """What would weaken a DPO run on these pairs (excluded ones are not checked: they never train).

    `ties`: the project's tie and "both bad" votes, which make no pair; said so the user knows where they went.
    """
    live = [r for r in rows if not r["excluded"]]
    report = Health(pairs=len(live))
    seen: dict[tuple[str, str, str], int] = {}
    for r in live:
        if r["chosen"].strip() == r["rejected"].strip():
            report.refused.append(f"pair {r['id']}: the chosen and rejected replies are identical: edit one or "
                                  "exclude the pair")
            report.problems.append(report.refused[-1])
        key = json.dumps(r["prompt"], sort_keys=True)
        swapped = seen.get((key, r["rejected"], r["chosen"]))
        if swapped is not None:
            report.problems.append(f"pair {r['id']}: contradicts pair {swapped} (same replies, opposite choice): "
                                   "exclude one of them")
        seen[(key, r["chosen"], r["rejected"])] = r["id"]
        if tokenizer is not None and (n := pair_tokens(tokenizer, stored_pair(r))) > max_length:
            report.refused.append(f"pair {r['id']}: prompt and reply are {n} tokens, over the max length of "
                                  f"{max_length}: shorten it or exclude it")
            report.problems.append(report.refused[-1])
    if ties:
        report.warnings.append(f"{ties} tie or \"both bad\" vote{'s' * (ties != 1)} made no pair: only a clear winner "
                               "teaches a preference")
    if len(live) < MIN_PAIRS:
        report.blocked = (f"{len(live)} pair{'s' * (len(live) != 1)}; DPO needs at least {MIN_PAIRS}: vote in blind "
                          "Compare rounds or import pairs")
    elif len(live) < WARN_PAIRS:
        report.warnings.append(f"only {len(live)} pairs; {WARN_PAIRS} or more give a steadier result")
    return report
