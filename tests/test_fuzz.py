"""Fuzzing the data importers with hypothesis: no input crashes them, and every rejection names its line.

Inputs are random bytes and, more usefully, near-valid files: records of the right shape with wrong types,
unknown roles, empty or non-text content, broken JSON, stray quotes and markers, BOMs, CRLF and bad UTF-8.
Bounded (max_examples, no deadline) so the whole file costs seconds.
"""

from __future__ import annotations

import json
import os
import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from voicetune import importers
from voicetune.importers import ImportReport

FUZZ = settings(max_examples=int(os.environ.get("VOICETUNE_FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
WHOLE_FILE = ("contains no conversations", "has no column")  # the only problems that are about no single line

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["", "   ", "\n", "hi", "Hello there!"]))
roles = st.sampled_from(["user", "assistant", "system", "tool", "User", "", "gpt", "human", "bot"])
message = st.one_of(st.fixed_dictionaries({"role": roles, "content": scalars}),
                    st.dictionaries(st.sampled_from(["role", "content", "weight", "name"]), scalars, max_size=4),
                    scalars)
openai_record = st.one_of(st.fixed_dictionaries({"messages": st.lists(message, max_size=5)}),
                          st.dictionaries(st.sampled_from(["messages", "tags", "x"]),
                                          st.one_of(scalars, st.lists(message, max_size=3)), max_size=3), scalars)
sharegpt_record = st.one_of(
    st.fixed_dictionaries({"conversations": st.lists(
        st.one_of(st.fixed_dictionaries({"from": roles, "value": scalars}), scalars), max_size=5)}),
    st.dictionaries(st.sampled_from(["conversations", "id"]), scalars, max_size=2))
alpaca_record = st.one_of(
    st.fixed_dictionaries({"instruction": scalars, "output": scalars},
                          optional={"input": scalars, "system": scalars}),
    st.dictionaries(st.sampled_from(["instruction", "input", "output", "system"]), scalars, max_size=4), scalars)
noise = st.sampled_from(["", "   ", "{broken", "[", "]", "null", "\"text\"", "\x00", "{\"messages\": [}", "\ufeff"])


def jsonl(records: st.SearchStrategy) -> st.SearchStrategy[bytes]:
    """JSONL lines from records and noise, or the same records as one JSON array; sometimes CRLF, a BOM or bad
    UTF-8 bytes spliced in."""
    line = st.one_of(records.map(lambda r: json.dumps(r, allow_nan=True)), noise)
    as_lines = st.lists(line, max_size=8).map(lambda ls: "\n".join(ls).encode("utf-8"))
    as_array = st.lists(records, max_size=6).map(lambda rs: json.dumps(rs, indent=1, allow_nan=True).encode())
    return st.tuples(st.one_of(as_lines, as_array), st.sampled_from(["plain", "crlf", "bom", "badbyte"]),
                     st.integers(0, 10_000)).map(_mangle)


def _mangle(args: tuple[bytes, str, int]) -> bytes:
    raw, how, at = args
    if how == "crlf":
        return raw.replace(b"\n", b"\r\n")
    if how == "bom":
        return importers.BOM + raw
    if how == "badbyte" and raw:
        i = at % len(raw)
        return raw[:i] + b"\xff\xfe" + raw[i:]
    return raw


def lines_in(raw: bytes) -> int:
    """Lines as an editor counts them (a lone CR ends a line too, as the csv module reads it)."""
    text = raw.removeprefix(importers.BOM).decode("utf-8", errors="replace")
    return len(re.split(r"\r\n|\r|\n", text))


def assert_every_rejection_names_a_line(report: ImportReport, raw: bytes) -> None:
    assert isinstance(report, ImportReport)
    limit = lines_in(raw) if report.unit == "line" else max(len(report.conversations) + len(report.problems), 1)
    if report.unit == "record":
        limit = max(limit, len(json.loads(raw.removeprefix(importers.BOM).decode("utf-8"))))
    for p in report.problems + report.duplicates:
        assert p.message and str(p)
        if p.line is None:
            assert p.message.startswith(WHOLE_FILE), str(p)
            assert report.accepted == 0, str(p)  # a whole-file problem is never beside accepted lines
        else:
            assert 1 <= p.line <= limit, (str(p), limit)
            assert str(p).startswith(f"{p.unit} {p.line}")
    for conv in report.conversations:
        assert 1 <= conv.line <= limit
        assert conv.messages and all(isinstance(m["content"], str) and m["content"].strip() for m in conv.messages)


def assert_nothing_dropped_silently(report: ImportReport, raw: bytes) -> None:
    """In JSONL, each non-blank line is accepted, rejected or a named duplicate."""
    text = raw.removeprefix(importers.BOM).decode("utf-8", errors="replace").replace("\r\n", "\n")
    if report.unit != "line" or text.lstrip().startswith("["):
        return
    named = {c.line for c in report.conversations} | {p.line for p in report.problems + report.duplicates}
    if None in named:
        return
    for n, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            assert n in named, (n, line)


@FUZZ
@given(st.binary(max_size=400))
@example(b"\x00\r\x00")  # once crashed detect_format: the csv module refuses a lone CR inside a line
def test_random_bytes_crash_no_importer(raw: bytes) -> None:
    for report in (importers.import_openai_jsonl(raw), importers.import_sharegpt(raw), importers.import_alpaca(raw),
                   importers.import_pasted(raw), importers.import_csv(raw, "prompt", "response")):
        assert_every_rejection_names_a_line(report, raw) if report.unit == "line" else None
    importers.detect_format("x.jsonl", raw)
    importers.check_extension("x.csv", raw)


@FUZZ
@given(jsonl(openai_record))
def test_openai_jsonl(raw: bytes) -> None:
    report = importers.import_openai_jsonl(raw)
    assert_every_rejection_names_a_line(report, raw)
    assert_nothing_dropped_silently(report, raw)


@FUZZ
@given(jsonl(sharegpt_record))
def test_sharegpt(raw: bytes) -> None:
    report = importers.import_sharegpt(raw)
    assert_every_rejection_names_a_line(report, raw)
    assert_nothing_dropped_silently(report, raw)


@FUZZ
@given(jsonl(alpaca_record))
def test_alpaca(raw: bytes) -> None:
    report = importers.import_alpaca(raw)
    assert_every_rejection_names_a_line(report, raw)
    assert_nothing_dropped_silently(report, raw)


cell = st.one_of(st.text(max_size=10), st.sampled_from(['"', '""', '"a,b"', '"line\nbreak"', "a;b", "\t", " ", ""]))
csv_text = st.tuples(st.lists(st.sampled_from(["prompt", "response", "system", "x", '"prompt"']), max_size=4),
                     st.lists(st.lists(cell, max_size=4), max_size=6), st.sampled_from([",", ";", "\t"]),
                     st.sampled_from(["\n", "\r\n", "\r"])).map(
    lambda t: t[3].join([t[2].join(t[0])] + [t[2].join(row) for row in t[1]]).encode("utf-8"))


@FUZZ
@given(csv_text, st.sampled_from([None, "system", "missing"]))
def test_csv(raw: bytes, system: str | None) -> None:
    report = importers.import_csv(raw, "prompt", "response", system)
    assert_every_rejection_names_a_line(report, raw)


pasted_line = st.one_of(st.sampled_from(["User: hi", "Assistant: hello", "System: be brief", "user:", "ASSISTANT:  ",
                                         "---", " --- ", "", "stray text", "Tool: x", "User:Assistant: y"]),
                        st.text(max_size=15))


@FUZZ
@given(st.lists(pasted_line, max_size=12), st.booleans())
def test_pasted(lines: list[str], as_bytes: bool) -> None:
    text = "\n".join(lines)
    raw = text.encode("utf-8")
    report = importers.import_pasted(raw if as_bytes else text)
    assert_every_rejection_names_a_line(report, raw)
