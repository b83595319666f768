"""Conversations in, problems out: reading OpenAI chat JSONL and checking every line before training.

Every problem names its line and field, and all problems are reported at once, so a user fixes a file in
one pass instead of one error per attempt. Nothing is dropped silently: a line is either a conversation or
a problem.

    convs = load_conversations("examples/cosmo-coffee.jsonl")   # raises DataError listing every problem
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

ROLES = ("system", "user", "assistant")
DRAFTED = "drafted"  # a conversation a model drafted and a person accepted: its source, its tag, its JSONL key
MAX_FILE_BYTES = 50 * 1024 * 1024  # a voice dataset is kilobytes to a few megabytes; larger is a wrong file


@dataclass(frozen=True)
class Problem:
    line: int | None  # 1-based line in the source; None for whole-file problems
    field: str  # e.g. "messages[2].content"; "" when the whole line is wrong
    message: str
    unit: str = "line"  # what `line` counts: "line", "record" (of a JSON array), "conversation" (a project's #)

    def __str__(self) -> str:
        whole = "file" if self.unit in ("line", "record") else self.unit  # e.g. "project" for a project-wide rule
        where = f"{self.unit} {self.line}" if self.line is not None else whole
        if self.field:
            where += f", {self.field}"
        return f"{where}: {self.message}"


class DataError(ValueError):
    """Raised with every problem found, so callers can show them all."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass
class Conversation:
    messages: list[dict[str, Any]]
    line: int = 0  # where it came from, for messages about later checks (template, length)
    meta: dict[str, Any] = field(default_factory=dict)


def check_messages(messages: Any, line: int | None) -> list[Problem]:
    """Structural checks on one conversation; the chat template's own rules are checked in templates.py."""
    if not isinstance(messages, list):
        return [Problem(line, "messages", "must be a list of {role, content} objects")]
    if not messages:
        return [Problem(line, "messages", "is empty: add at least a user turn and an assistant reply")]
    problems: list[Problem] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            problems.append(Problem(line, where, "must be an object with `role` and `content`"))
            continue
        role = msg.get("role")
        if role not in ROLES:
            why = "is missing" if role is None else f"unknown role {role!r}"
            problems.append(Problem(line, f"{where}.role", f"{why}: use system, user or assistant"))
        content = msg.get("content")
        if content is None:
            problems.append(Problem(line, f"{where}.content", "is missing"))
        elif not isinstance(content, str):
            problems.append(Problem(line, f"{where}.content", f"must be text, got {type(content).__name__}"))
        elif not content.strip():
            problems.append(Problem(line, f"{where}.content", "is empty"))
        if "weight" in msg:
            if msg["weight"] not in (0, 1) or isinstance(msg["weight"], bool):
                problems.append(Problem(line, f"{where}.weight", "must be 0 or 1"))
            elif role != "assistant":
                problems.append(Problem(line, f"{where}.weight", "only assistant turns carry a weight"))
    roles = [m.get("role") for m in messages if isinstance(m, dict)]
    if "assistant" not in roles:
        problems.append(Problem(line, "messages", "has no assistant turn: there is no reply to learn from"))
    elif not any(
        isinstance(m, dict) and m.get("role") == "assistant" and m.get("weight", 1) != 0 for m in messages
    ):
        problems.append(Problem(line, "messages", "every assistant turn has weight 0: nothing would be learned"))
    elif roles and roles[-1] != "assistant":
        problems.append(Problem(line, f"messages[{len(roles) - 1}]", "the last turn must be an assistant reply"))
    return problems


MESSAGE_KEYS = ("role", "content", "weight")  # what a turn may carry; anything else is ignored by training


def unknown_keys(messages: list[Any], line: int | None) -> list[Problem]:
    """A warning for each key of a turn that nothing reads ("nmae" for "name"): not an error, the turn still
    trains, but a misspelt key is usually a field the user meant to set."""
    return [Problem(line, f"messages[{i}].{key}", "is not a key voicetune reads and is ignored: a turn has role, "
                    "content and (assistant turns) weight; check its spelling")
            for i, msg in enumerate(messages) if isinstance(msg, dict)
            for key in msg if key not in MESSAGE_KEYS]


def jsonl_objects(raw: bytes) -> Iterator[tuple[int, Any, Problem | None]]:
    """Each non-blank line of JSONL bytes, numbered from 1 and parsed: (line, value, None), or (line, None, its
    Problem) for a line that is not UTF-8 text or not JSON. A UTF-8 BOM, as Excel and Notepad write it, is
    skipped. Every JSONL reader here (conversations, preference pairs) reads lines this way, so a bad line gets
    the same words whichever file it is in."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    for n, raw_line in enumerate(raw.split(b"\n"), start=1):
        raw_line = raw_line.rstrip(b"\r")
        if not raw_line.strip():
            continue
        try:
            text = raw_line.decode("utf-8")
        except UnicodeDecodeError as e:
            yield n, None, Problem(n, "", f"is not valid UTF-8 text (bad byte at offset {e.start} of the line)")
            continue
        try:
            yield n, json.loads(text), None
        except json.JSONDecodeError as e:
            yield n, None, Problem(n, "", f"invalid JSON at column {e.colno}: {e.msg}")


def parse_jsonl_bytes(raw: bytes, warnings: list[Problem] | None = None) -> tuple[list[Conversation], list[Problem]]:
    """Parse and check every line; return the good conversations and every problem found.

    Warnings (unknown keys in a turn) are appended to `warnings` when given: they never reject a line.
    """
    convs: list[Conversation] = []
    problems: list[Problem] = []
    for n, obj, problem in jsonl_objects(raw):
        if problem:
            problems.append(problem)
            continue
        if not isinstance(obj, dict):
            problems.append(Problem(n, "", f"must be a JSON object, got {type(obj).__name__}"))
            continue
        if "messages" not in obj:
            problems.append(Problem(n, "messages", 'is missing: each line needs {"messages": [...]}'))
            continue
        found = check_messages(obj["messages"], n)
        if found:
            problems.extend(found)
            continue
        meta = {k: v for k, v in obj.items() if k != "messages"}
        convs.append(Conversation(messages=obj["messages"], line=n, meta=meta))
        if warnings is not None:
            warnings.extend(unknown_keys(obj["messages"], n))
    if not convs and not problems:
        problems.append(Problem(None, "", "contains no conversations"))
    return convs, problems


def load_conversations(path: str | Path, warnings: list[Problem] | None = None) -> list[Conversation]:
    """Read a JSONL file, raising DataError with every problem when any line is bad; warnings go to `warnings`."""
    path = Path(path)
    if not path.exists():
        raise DataError([Problem(None, "", f"file not found: {path}")])
    if path.is_dir():
        raise DataError([Problem(None, "", f"{path} is a folder, expected a .jsonl file")])
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataError([Problem(None, "", f"{path} is {size // 2**20} MiB, over the {MAX_FILE_BYTES // 2**20} MiB cap")])
    convs, problems = parse_jsonl_bytes(path.read_bytes(), warnings)
    if problems:
        raise DataError(problems)
    return convs


def is_drafted(conv: Conversation) -> bool:
    """Drafted by a model and accepted by a person (projects.training_jsonl writes `"drafted": true`)."""
    return bool(conv.meta.get(DRAFTED))


def validation_size(n: int, val_fraction: float, human: int | None = None) -> int:
    """How many of n conversations are held back for validation loss: at least one when asked, never all of
    them, none below four. The Train tab's check (projects.check_project) and training use this one rule.

    With `human` (how many of the n a person wrote, when some were drafted) they come only from those, and at
    most half of them: the scorecard scores against replies a person wrote, and training keeps the rest."""
    size = 0 if val_fraction <= 0 or n < 4 else max(1, round(n * val_fraction))
    return size if human is None or human == n else min(size, human // 2)


def split_train_val(
    convs: list[Conversation], val_fraction: float, seed: int
) -> tuple[list[Conversation], list[Conversation]]:
    """Hold back a seeded share (validation_size) for validation loss, never a drafted conversation."""
    order = [i for i, c in enumerate(convs) if not is_drafted(c)]
    n_val = validation_size(len(convs), val_fraction, human=len(order))
    if n_val == 0:
        return list(convs), []
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [c for i, c in enumerate(convs) if i not in val_idx]
    val = [c for i, c in enumerate(convs) if i in val_idx]
    return train, val


def examples_dir() -> Path:
    """The bundled example voices shipped beside the package."""
    return Path(__file__).resolve().parent.parent / "examples"


def list_examples() -> dict[str, Path]:
    """Bundled datasets by display name, e.g. {"cosmo-coffee": Path(...)}."""
    folder = examples_dir()
    return {p.stem: p for p in sorted(folder.glob("*.jsonl"))} if folder.is_dir() else {}
