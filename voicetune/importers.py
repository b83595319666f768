"""Bringing other people's chat data into voicetune: ShareGPT, Alpaca, CSV and pasted text in, OpenAI JSONL out.

Every importer returns an `ImportReport`: the accepted conversations, every rejected line or record as a
`Problem` naming where it is and which field, and exact duplicates named by the line they repeat. Every
conversation passes `data.check_messages`, so each format obeys the same rules as a JSONL file.

    report = import_csv(Path("faq.csv").read_bytes(), "question", "answer")
    print(report.summary())                     # "48 accepted, 2 rejected, 1 duplicate"
    Path("faq.jsonl").write_text(export_openai_jsonl(report.conversations), encoding="utf-8")
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import re
from collections import Counter, defaultdict
from itertools import groupby
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from voicetune.data import Conversation, Problem, check_messages, parse_jsonl_bytes

BOM = b"\xef\xbb\xbf"
NEAR_DUPLICATE_CAP = 5000  # the worst case compares every pair: 12.5 M of them at 5000
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "model": "assistant", "bot": "assistant", "system": "system"}
MARKER = re.compile(r"(user|assistant|system):[ \t]*(.*)", re.IGNORECASE)  # a pasted turn starts a line
JSON_KEY = re.compile(r'"(messages|conversations|instruction)"\s*:')  # the first one tells JSON formats apart
JSON_FORMATS = {"messages": "openai", "conversations": "sharegpt", "instruction": "alpaca"}
MAGIC = {b"PK\x03\x04": "a zip archive or Excel workbook", b"%PDF": "a PDF", b"\x89PNG": "a PNG image",
         b"\xd0\xcf\x11\xe0": "an old Office document", b"\xff\xfe": "UTF-16 text", b"\xfe\xff": "UTF-16 text"}

Converted = tuple[list[dict[str, Any]], list[str], list[tuple[str, str]]]  # messages, source fields, early problems


ImportProblem = Problem  # its `unit` points at a record of a JSON array ("record 3, ...") instead of a line


@dataclass
class ImportReport:
    """What an import found; nothing is dropped without being listed in problems or duplicates."""

    conversations: list[Conversation]  # accepted, in source order
    problems: list[Problem]  # why each rejected line or record (or the whole file) was turned away
    duplicates: list[Problem]  # exact repeats of an earlier accepted conversation, left out
    unit: str = "line"  # what Conversation.line counts: "line", or "record" of a JSON array
    warnings: list[Problem] = field(default_factory=list)  # accepted, but worth a look (e.g. a misspelt key)

    @property
    def accepted(self) -> int:
        return len(self.conversations)

    @property
    def rejected(self) -> int:  # lines or records with a problem; a whole-file problem counts once
        return len({p.line for p in self.problems})

    @property
    def duplicate(self) -> int:
        return len(self.duplicates)

    def summary(self) -> str:
        plural = "" if self.duplicate == 1 else "s"
        return f"{self.accepted} accepted, {self.rejected} rejected, {self.duplicate} duplicate{plural}"


# ---------------------------------------------------------------- shared steps


def _decode(raw: bytes) -> tuple[str, list[Problem]]:
    """The text (no BOM, CRLF as LF) and a problem naming each line and offset of bytes that are not UTF-8."""
    raw = raw.removeprefix(BOM)
    problems: list[Problem] = []
    for n, line in enumerate(raw.split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(Problem(n, "", f"is not valid UTF-8 text (bad byte at offset {e.start} of the line)"))
    return raw.decode("utf-8", errors="replace").replace("\r\n", "\n"), problems


def _check(messages: list[dict[str, Any]], line: int, unit: str, fields: list[str], *, suffix: str = "",
           container: str = "", lines: list[int] | None = None) -> list[Problem]:
    """data.check_messages, with `messages[i]` renamed to where that text sits in the source format."""
    found: list[Problem] = []
    for p in check_messages(messages, line):
        m = re.fullmatch(r"messages\[(\d+)\](\.content)?", p.field)
        if m:
            i = int(m[1])
            at, name = (lines[i] if lines else line), fields[i] + (suffix if m[2] else "")
        else:
            at, name = line, container if p.field == "messages" else p.field
        found.append(ImportProblem(at, name, p.message, unit))
    return found


def _turns(system: Any, user: Any, reply: Any, names: tuple[str, str, str]) -> tuple[list[dict], list[str]]:
    """An optional system prompt (empty counts as none), a user turn, its reply, and each one's source field."""
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    if system is None or (isinstance(system, str) and not system.strip()):
        return messages, list(names[1:])
    return [{"role": "system", "content": system}, *messages], list(names)


def _finish(convs: list[Conversation], problems: list[Problem], unit: str = "line") -> ImportReport:
    """Set aside exact duplicates (each trains the same answer twice) and order problems by line."""
    first_seen: dict[str, int] = {}
    kept: list[Conversation] = []
    duplicates: list[Problem] = []
    for conv in convs:
        key = json.dumps(conv.messages, sort_keys=True, ensure_ascii=False)
        if key in first_seen:
            duplicates.append(ImportProblem(conv.line, "", f"duplicate of {unit} {first_seen[key]}", unit))
        else:
            first_seen[key] = conv.line
            kept.append(conv)
    if not convs and not problems:
        problems.append(Problem(None, "", "contains no conversations"))
    problems.sort(key=lambda p: p.line or 0)  # stable: a line's problems keep their field order
    return ImportReport(kept, problems, duplicates, unit)


def _json_records(raw: bytes) -> tuple[list[tuple[int, Any]], list[Problem], str]:
    """(number, object) for each record of a JSON array or JSONL file, the problems, and what is numbered."""
    text, problems = _decode(raw)
    if text.lstrip().startswith("["):
        if problems:
            return [], problems, "line"
        try:
            return list(enumerate(json.loads(text), start=1)), [], "record"
        except json.JSONDecodeError as e:
            return [], [Problem(e.lineno, "", f"invalid JSON at column {e.colno}: {e.msg}")], "line"
    bad = {p.line for p in problems}
    records: list[tuple[int, Any]] = []
    for n, line in enumerate(text.split("\n"), start=1):
        if n in bad or not line.strip():
            continue
        try:
            records.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            problems.append(Problem(n, "", f"invalid JSON at column {e.colno}: {e.msg}"))
    return records, problems, "line"


def _import_records(raw: bytes, convert: Callable[[dict], Converted], keys: tuple[str, ...],
                    **names: str) -> ImportReport:
    """The loop the JSON formats share; record keys other than `keys` are kept in Conversation.meta."""
    records, problems, unit = _json_records(raw)
    convs: list[Conversation] = []
    for n, obj in records:
        if not isinstance(obj, dict):
            problems.append(ImportProblem(n, "", f"must be a JSON object, got {type(obj).__name__}", unit))
            continue
        messages, fields, early = convert(obj)
        found = [ImportProblem(n, f, why, unit) for f, why in early] or _check(messages, n, unit, fields, **names)
        if found:
            problems.extend(found)
        else:
            convs.append(Conversation(messages, n, {k: v for k, v in obj.items() if k not in keys}))
    return _finish(convs, problems, unit)


# ---------------------------------------------------------------- importers


def import_openai_jsonl(raw: bytes) -> ImportReport:
    """OpenAI chat JSONL, checked by data.parse_jsonl_bytes; per-message `weight` 0/1 is kept."""
    warnings: list[Problem] = []
    report = _finish(*parse_jsonl_bytes(raw, warnings))
    report.warnings = warnings
    return report


def _from_sharegpt(obj: dict) -> Converted:
    turns = obj.get("conversations")
    if not isinstance(turns, list):
        why = 'is missing: each record needs {"conversations": [...]}' if turns is None else \
            "must be a list of {from, value} objects"
        return [], [], [("conversations", why)]
    messages: list[dict[str, Any]] = []
    early: list[tuple[str, str]] = []
    for i, turn in enumerate(turns):
        speaker = turn.get("from") if isinstance(turn, dict) else None
        role = SHAREGPT_ROLES.get(speaker.lower()) if isinstance(speaker, str) else None
        if not isinstance(turn, dict):
            early.append((f"conversations[{i}]", "must be an object with `from` and `value`"))
        elif role is None:
            shown = "missing" if speaker is None else f"unknown speaker {speaker!r}"
            early.append((f"conversations[{i}].from", f"{shown}: use human, gpt or system"))
        else:
            messages.append({"role": role, "content": turn.get("value")})
    return messages, [f"conversations[{i}]" for i in range(len(messages))], early


def import_sharegpt(raw: bytes) -> ImportReport:
    """ShareGPT records {"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}, array or JSONL.

    human/user become user, gpt/assistant/model/bot become assistant; a record's other keys go to meta.
    """
    return _import_records(raw, _from_sharegpt, ("conversations",), suffix=".value", container="conversations")


def _from_alpaca(obj: dict) -> Converted:
    extra = "" if obj.get("input") is None else obj["input"]
    if not isinstance(extra, str):
        return [], [], [("input", f"must be text, got {type(extra).__name__}")]
    user = obj.get("instruction")
    if isinstance(user, str) and extra.strip():
        user = f"{user}\n\n{extra}"
    return *_turns(obj.get("system"), user, obj.get("output"), ("system", "instruction", "output")), []


def import_alpaca(raw: bytes) -> ImportReport:
    """Alpaca records {"instruction", "input"?, "output", "system"?}, array or JSONL; input joins the instruction."""
    return _import_records(raw, _from_alpaca, ("instruction", "input", "output", "system"))


def csv_delimiter(header_line: str) -> str:
    """Whichever of comma, tab or semicolon the header line uses most: one guess, shared by the import and the
    column picker the app offers before it, so the picker never shows columns the import would not find."""
    return max(",\t;", key=header_line.count)


def csv_header(raw: bytes) -> list[str]:
    """The CSV's column names as import_csv reads them (trimmed), from its first line only: the app offers them
    as soon as a file is uploaded. Read leniently: a header with a stray quote still shows its columns here, and
    the import itself then names the problem."""
    first = raw.removeprefix(BOM).partition(b"\n")[0].decode("utf-8", errors="replace").rstrip("\r")
    return [cell.strip() for cell in next(csv.reader([first], delimiter=csv_delimiter(first)), [])]


def import_csv(raw: bytes, prompt_column: str, response_column: str,
               system_column: str | None = None) -> ImportReport:
    """A spreadsheet export with a header row; each row is one user turn and its reply.

    Lines are file lines (the header is line 1); a quoted multi-line cell is reported at the line where
    its row starts. The delimiter is whichever of comma, tab or semicolon the header uses most.
    """
    text, problems = _decode(raw)
    bad = {p.line for p in problems}
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=csv_delimiter(text.partition("\n")[0]),
                        strict=True)  # strict: a stray quote is reported, not glued onto the next rows
    try:
        header = [cell.strip() for cell in next(reader, [])]
    except csv.Error as e:
        return _finish([], problems + [Problem(1, "", f"is not a valid CSV header row: {e}")])
    missing = [c for c in (prompt_column, response_column, system_column) if c and c not in header]
    if missing:
        word = "column" if len(missing) == 1 else "columns"
        why = f"has no {word} {', '.join(map(repr, missing))} (columns found: {', '.join(map(repr, header)) or 'none'})"
        return _finish([], problems + [Problem(None, "", why)])
    convs: list[Conversation] = []
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            problems.append(Problem(start, "", f"is not valid CSV: {e} (a stray or unclosed quote?)"))
            start = reader.line_num + 1
            continue
        line, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in row) or bad.intersection(range(line, start)):
            continue  # blank rows carry nothing; undecodable rows are already reported
        cells = dict(zip(header, row))  # a short row lacks its last columns: reported as missing
        messages, fields = _turns(cells.get(system_column) if system_column else None, cells.get(prompt_column),
                                  cells.get(response_column), (system_column or "", prompt_column, response_column))
        found = _check(messages, line, "line", fields)
        if found:
            problems.extend(found)
        else:
            convs.append(Conversation(messages, line))
    return _finish(convs, problems)


def import_pasted(text: str | bytes) -> ImportReport:
    """The plain form typed into the app: `User:`/`Assistant:`/`System:` turns, conversations split by `---`.

    A marker (any case) must start its line; the lines after it continue that turn until the next marker.
    Bytes are decoded as UTF-8 (a BOM is fine), so a .txt upload reports undecodable lines like any file.
    """
    problems: list[Problem] = []
    if isinstance(text, bytes):
        text, problems = _decode(text)
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    bad = {p.line for p in problems}
    numbered = enumerate(text.split("\n"), start=1)
    convs: list[Conversation] = []
    for is_separator, group in groupby(numbered, key=lambda nl: nl[1].strip() == "---"):
        block = [] if is_separator else list(group)
        turns: list[tuple[int, str, list[str]]] = []  # (line, role, text lines)
        stray = None
        for n, line in block:
            if m := MARKER.match(line):
                turns.append((n, m[1].lower(), [m[2]]))
            elif turns:
                turns[-1][2].append(line)
            elif line.strip() and stray is None:
                stray = n
        if stray is not None:
            problems.append(Problem(stray, "", "text before the first User:, Assistant: or System: marker"))
        if stray is not None or not turns or bad.intersection(n for n, _ in block):
            continue
        messages = [{"role": role, "content": "\n".join(lines).strip()} for _, role, lines in turns]
        found = _check(messages, turns[0][0], "line", [f"{role} turn" for _, role, _ in turns],
                       lines=[n for n, _, _ in turns])
        if found:
            problems.extend(found)
        else:
            convs.append(Conversation(messages, turns[0][0]))
    return _finish(convs, problems)


# ---------------------------------------------------------------- telling formats apart


def detect_format(filename: str, raw: bytes) -> str:
    """"openai" | "sharegpt" | "alpaca" | "csv" | "pasted", judged by content; the name only decides empty files.

    JSON formats are told apart by the first of their keys to appear, so a broken file still reaches the
    importer that can name its problems.
    """
    text = raw.removeprefix(BOM)[:65536].decode("utf-8", errors="replace").strip()
    if not text:
        return {".csv": "csv", ".tsv": "csv", ".txt": "pasted"}.get(Path(filename).suffix.lower(), "openai")
    if text.startswith(("[", "{")):
        m = JSON_KEY.search(text)
        return JSON_FORMATS[m[1]] if m else "openai"  # its importer says which key is missing
    first = next(line for line in re.split(r"\r\n|\r|\n", text) if line.strip())  # a lone CR ends a line too (csv)
    if MARKER.match(first):
        return "pasted"
    return "csv" if any(len(next(csv.reader([first], delimiter=d))) > 1 for d in ",\t;") else "pasted"


def check_extension(filename: str, raw: bytes) -> Problem | None:
    """A file that is not what its extension says (a workbook saved as .csv, CSV named .jsonl), or None."""
    name, ext = Path(filename).name, Path(filename).suffix.lower()
    kind = next((what for magic, what in MAGIC.items() if raw.startswith(magic)), None)
    if kind is None and b"\x00" in raw[:8192]:
        kind = "binary data"
    if kind:
        return Problem(None, "", f"{name} is {kind}, not UTF-8 text: export it again as UTF-8 {ext or 'text'}")
    wants = {".jsonl": "JSON", ".json": "JSON", ".csv": "CSV", ".tsv": "CSV"}.get(ext)
    fmt = detect_format(filename, raw)
    holds = "CSV" if fmt == "csv" else "plain text" if fmt == "pasted" else "JSON"
    if wants is None or holds == wants:
        return None
    rename = {"CSV": ".csv", "plain text": ".txt", "JSON": ".jsonl"}[holds]
    return Problem(None, "", f"{name} is named {ext} but holds {holds}: rename it to {rename} "
                             f"or export it again as {wants}")


# ---------------------------------------------------------------- near duplicates


def near_duplicates(convs: list[Conversation], threshold: float = 0.9) -> list[tuple[int, int, float]]:
    """(line, later line, similarity) of conversations whose user+assistant words are nearly the same.

    Near copies teach one answer several times over. Similarity is difflib's ratio over lower-cased words
    (earlier line first), rounded to 3 places; exact duplicates are left to the importer's report. The
    worst case compares every pair, O(n²), so above NEAR_DUPLICATE_CAP (5000) conversations this returns
    [] rather than stall the app. Typical data costs far less (5000 in ~2 s): a pair at the threshold
    shares so many words that it shares one of each side's rarest few, so only such pairs are compared.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if len(convs) > NEAR_DUPLICATE_CAP:
        return []
    texts = (" ".join(str(m.get("content")) for m in c.messages if m.get("role") != "system") for c in convs)
    words = [re.findall(r"\w+", text.lower()) for text in texts]
    tokens = [[(w, k) for w, n in Counter(ws).items() for k in range(n)] for ws in words]  # a repeat is a new token
    df = Counter(t for ts in tokens for t in ts)
    for ts in tokens:
        ts.sort(key=lambda t: (df[t], t))  # rarest first, one order for all
    bags = [frozenset(ts) for ts in tokens]
    index: dict[tuple[str, int], list[int]] = defaultdict(list)
    pairs: list[tuple[int, int, float]] = []
    for j in sorted(range(len(convs)), key=lambda k: len(tokens[k])):  # every indexed i is no longer than j
        lj = len(tokens[j])
        probe = lj - math.ceil(threshold * lj / (2 - threshold) - 1e-9) + 1  # -1e-9: 0.9 * 10 is 9.000000000000002
        for i in sorted({i for t in tokens[j][:probe] for i in index[t]}):
            li = len(tokens[i])
            if 2 * len(bags[i] & bags[j]) < threshold * (li + lj) or convs[i].messages == convs[j].messages:
                continue  # shared words bound difflib's ratio from above
            a, b = sorted((i, j), key=lambda k: convs[k].line)  # difflib's ratio depends on the order
            ratio = difflib.SequenceMatcher(None, words[a], words[b], autojunk=False).ratio()
            if ratio >= threshold:
                pairs.append((convs[a].line, convs[b].line, round(ratio, 3)))
        for t in tokens[j][: lj - math.ceil(threshold * lj - 1e-9) + 1]:
            index[t].append(j)
    return sorted(pairs)


# ---------------------------------------------------------------- exporters


def export_openai_jsonl(convs: list[Conversation]) -> str:
    """One {"messages": [...]} line per conversation, messages as they are (weight kept), UTF-8 unescaped."""
    return "".join(json.dumps({"messages": c.messages}, ensure_ascii=False) + "\n" for c in convs)


def export_hf_dataset(convs: list[Conversation], folder: Path) -> Path:
    """A `datasets` folder with one `messages` column, for datasets.load_from_disk or push_to_hub.

    Arrow gives every message the same fields: once any message has a `weight`, the rest read back with
    weight None.
    """
    import datasets  # lazily: it takes seconds to import and only this export needs it

    folder = Path(folder)
    datasets.Dataset.from_list([{"messages": c.messages} for c in convs]).save_to_disk(str(folder))
    return folder
