"""Every format imports to the same messages, names each bad line or record and field, and exports losslessly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voicetune.data import Conversation
from voicetune.importers import (
    ImportReport,
    check_extension,
    csv_header,
    detect_format,
    export_hf_dataset,
    export_openai_jsonl,
    import_alpaca,
    import_csv,
    import_openai_jsonl,
    import_pasted,
    import_sharegpt,
    near_duplicates,
)

HI = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
SYS_TWO_TURNS = [
    {"role": "system", "content": "You are Cosmo."},
    {"role": "user", "content": "Open late?"},
    {"role": "assistant", "content": "Till ten, café lights on."},
    {"role": "user", "content": "Oat milk?"},
    {"role": "assistant", "content": "Always.\nNo charge."},
]

OPENAI = "\n".join([
    json.dumps({"messages": HI}),
    json.dumps({"messages": SYS_TWO_TURNS[:3] + [{**SYS_TWO_TURNS[3]}, {**SYS_TWO_TURNS[4], "weight": 1}]}),
    json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "draft", "weight": 0},
                             {"role": "user", "content": "better?"}, {"role": "assistant", "content": "final"}]}),
]).encode()

SHAREGPT = json.dumps([
    {"id": "a1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
    {"conversations": [{"from": "system", "value": "You are Cosmo."}, {"from": "Human", "value": "Open late?"},
                       {"from": "model", "value": "Till ten, café lights on."}, {"from": "user", "value": "Oat milk?"},
                       {"from": "assistant", "value": "Always.\nNo charge."}]},
], ensure_ascii=False, indent=2).encode()

ALPACA = "\n".join([
    json.dumps({"instruction": "Hi", "input": "", "output": "Hello!"}),
    json.dumps({"instruction": "Summarise", "input": "Long text.", "output": "Short.", "system": "Be brief."}),
]).encode()

CSV = (
    "question,answer,persona\n"
    "Hi,Hello!,\n"
    '"Open late?","Till ten,\ncafé lights on.",You are Cosmo.\n'
    "Oat milk?,Always.,\n"
).encode()

PASTED = """User: Hi
Assistant: Hello!
---
system: You are Cosmo.
USER: Open late?
assistant: Till ten,
café lights on.

---
"""


def strs(problems) -> list[str]:
    return [str(p) for p in problems]


def messages(report: ImportReport) -> list[list[dict]]:
    return [c.messages for c in report.conversations]


# ---------------------------------------------------------------- good samples


def test_openai_jsonl_keeps_weights():
    report = import_openai_jsonl(OPENAI)
    assert report.problems == [] and report.duplicates == []
    assert messages(report)[1][4] == {"role": "assistant", "content": "Always.\nNo charge.", "weight": 1}
    assert messages(report)[2][1] == {"role": "assistant", "content": "draft", "weight": 0}
    assert [c.line for c in report.conversations] == [1, 2, 3]
    assert report.summary() == "3 accepted, 0 rejected, 0 duplicates"


def test_sharegpt_array_maps_speakers_and_keeps_other_keys():
    report = import_sharegpt(SHAREGPT)
    assert report.problems == []
    assert messages(report) == [HI, SYS_TWO_TURNS]
    assert [c.line for c in report.conversations] == [1, 2]
    assert report.conversations[0].meta == {"id": "a1"}


def test_sharegpt_jsonl():
    raw = "\n\n".join(json.dumps(r) for r in json.loads(SHAREGPT)).encode()
    report = import_sharegpt(raw)
    assert messages(report) == [HI, SYS_TWO_TURNS]
    assert [c.line for c in report.conversations] == [1, 3]


def test_alpaca_joins_input_and_adds_system():
    report = import_alpaca(ALPACA)
    assert report.problems == []
    assert messages(report) == [HI, [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Summarise\n\nLong text."},
        {"role": "assistant", "content": "Short."},
    ]]


def test_alpaca_array_numbers_records():
    raw = json.dumps([json.loads(line) for line in ALPACA.splitlines()], indent=2).encode()
    report = import_alpaca(raw)
    assert [c.line for c in report.conversations] == [1, 2]
    assert messages(report) == messages(import_alpaca(ALPACA))


def test_csv_named_columns_multiline_cell_and_optional_system():
    report = import_csv(CSV, "question", "answer", system_column="persona")
    assert report.problems == []
    assert messages(report) == [
        HI,
        [{"role": "system", "content": "You are Cosmo."}, {"role": "user", "content": "Open late?"},
         {"role": "assistant", "content": "Till ten,\ncafé lights on."}],
        [{"role": "user", "content": "Oat milk?"}, {"role": "assistant", "content": "Always."}],
    ]
    assert [c.line for c in report.conversations] == [2, 3, 5]


def test_csv_tab_separated():
    report = import_csv(b"prompt\treply\nHi\tHello!\n", "prompt", "reply")
    assert messages(report) == [HI]


def test_pasted_markers_any_case_and_continuation_lines():
    report = import_pasted(PASTED)
    assert report.problems == []
    reply = {"role": "assistant", "content": "Till ten,\ncafé lights on."}
    assert messages(report) == [HI, [*SYS_TWO_TURNS[:2], reply]]
    assert [c.line for c in report.conversations] == [1, 4]


# ---------------------------------------------------------------- bad input: exact problems


def test_openai_bad_lines():
    raw = "\n".join([json.dumps({"messages": HI}), "{oops", json.dumps({"messages": [HI[0]]})]).encode()
    report = import_openai_jsonl(raw)
    assert strs(report.problems) == [
        "line 2: invalid JSON at column 2: Expecting property name enclosed in double quotes",
        "line 3, messages: has no assistant turn: there is no reply to learn from",
    ]
    assert report.summary() == "1 accepted, 2 rejected, 0 duplicates"


def test_sharegpt_array_problems_name_record_and_field():
    records = [
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "narrator", "value": "..."}]},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "  "}]},
        {"conversations": [{"from": "gpt", "value": "Hello!"}, {"from": "human", "value": "Bye"}]},
        {"dialog": []},
        {"conversations": []},
        {"conversations": [{"value": "Hi"}, "Hello!"]},
        ["human", "Hi"],
    ]
    report = import_sharegpt(json.dumps(records).encode())
    assert strs(report.problems) == [
        "record 2, conversations[1].from: unknown speaker 'narrator': use human, gpt or system",
        "record 3, conversations[1].value: is empty",
        "record 4, conversations[1]: the last turn must be an assistant reply",
        'record 5, conversations: is missing: each record needs {"conversations": [...]}',
        "record 6, conversations: is empty: add at least a user turn and an assistant reply",
        "record 7, conversations[0].from: missing: use human, gpt or system",
        "record 7, conversations[1]: must be an object with `from` and `value`",
        "record 8: must be a JSON object, got list",
    ]
    assert report.summary() == "1 accepted, 7 rejected, 0 duplicates"


def test_sharegpt_jsonl_problems_name_file_line():
    good = json.dumps({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]})
    bad = json.dumps({"conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "Hey"}]})
    assert strs(import_sharegpt(f"{good}\n\n{bad}\n".encode()).problems) == [
        "line 3, conversations[1].from: unknown speaker 'robot': use human, gpt or system",
    ]


def test_broken_json_array_names_file_line_and_column():
    assert strs(import_sharegpt(b'[\n  {"conversations": []},\n  {"conversations": [}\n]').problems) == [
        "line 3: invalid JSON at column 22: Expecting value",
    ]


def test_alpaca_problems():
    raw = "\n".join([
        json.dumps({"instruction": "Hi", "output": ""}),
        json.dumps({"instruction": "Hi"}),
        json.dumps({"instruction": 3, "output": "x", "system": "  "}),
        json.dumps({"instruction": "Hi", "input": ["a"], "output": "x"}),
    ]).encode()
    assert strs(import_alpaca(raw).problems) == [
        "line 1, output: is empty",
        "line 2, output: is missing",
        "line 3, instruction: must be text, got int",
        "line 4, input: must be text, got list",
    ]
    record = json.dumps([{"instruction": "Hi", "output": "Hello!", "system": 7}]).encode()
    assert strs(import_alpaca(record).problems) == ["record 1, system: must be text, got int"]


def test_csv_missing_column_is_one_file_problem():
    report = import_csv(CSV, "prompt", "answer", system_column="tone")
    assert strs(report.problems) == [
        "file: has no columns 'prompt', 'tone' (columns found: 'question', 'answer', 'persona')"
    ]
    assert report.summary() == "0 accepted, 1 rejected, 0 duplicates"


def test_csv_bad_rows_named_by_the_line_they_start_on():
    raw = (
        "question,answer\n"
        '"Multi\nline question",\n'
        "Hi,Hello!\n"
        "Only a question\n"
        '"Bad "quote",x\n'
        "Fine,Thanks\n"
        '"Unclosed,oops\n'
        "never,seen\n"
    ).encode()
    report = import_csv(raw, "question", "answer")
    assert strs(report.problems) == [
        "line 2, answer: is empty",
        "line 5, answer: is missing",
        "line 6: is not valid CSV: ',' expected after '\"' (a stray or unclosed quote?)",
        "line 8: is not valid CSV: unexpected end of data (a stray or unclosed quote?)",
    ]
    assert [c.line for c in report.conversations] == [4, 7]


def test_pasted_problems():
    text = ("Hello there\nUser: Hi\nAssistant: Hello!\n---\n"
            "User: Hi\nAssistant:\n---\n"
            "User: one\nAssistant: two\nuser: three\n")
    assert strs(import_pasted(text).problems) == [
        "line 1: text before the first User:, Assistant: or System: marker",
        "line 6, assistant turn: is empty",
        "line 10, user turn: the last turn must be an assistant reply",
    ]
    assert strs(import_pasted("\n---\n\n").problems) == ["file: contains no conversations"]


def test_undecodable_bytes_named_by_line_and_offset_in_every_format():
    expected = ["line 3: is not valid UTF-8 text (bad byte at offset 9 of the line)"]
    csv_report = import_csv(b"q,a\nHi,Hello!\nCaf\xc3\xa9,caf\xe9\nOat?,Yes\n", "q", "a")
    assert strs(csv_report.problems) == expected and [c.line for c in csv_report.conversations] == [2, 4]
    pasted = import_pasted(b"User: Hi\nAssistant: Hello!\nUser: caf\xe9\nAssistant: x\n---\nUser: a\nAssistant: b\n")
    assert strs(pasted.problems) == expected and [c.line for c in pasted.conversations] == [6]
    expected = ["line 3: is not valid UTF-8 text (bad byte at offset 7 of the line)"]
    sharegpt_line = json.dumps({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]})
    report = import_sharegpt(f"{sharegpt_line}\n{sharegpt_line}x\n".encode() + b'{"a": "\xe9"}\n')
    assert strs(report.problems) == ["line 2: invalid JSON at column 86: Extra data", *expected]
    assert report.accepted == 1
    assert strs(import_alpaca(b'{"instruction": "Hi", "output": "x"}\n\n{"a": "\xe9"}').problems) == expected
    assert strs(import_openai_jsonl(b'\n\n{"a": "\xe9"}').problems) == expected
    assert strs(import_sharegpt(b'[\n{"conversations": []},\n{"a": "\xe9"}]').problems) == expected


# ---------------------------------------------------------------- duplicates


def test_exact_duplicates_named_by_line_and_left_out():
    one, two = json.dumps({"messages": HI}), json.dumps({"messages": SYS_TWO_TURNS})
    report = import_openai_jsonl("\n".join([one, two, one, "", one, two]).encode())
    assert strs(report.duplicates) == ["line 3: duplicate of line 1", "line 5: duplicate of line 1",
                                       "line 6: duplicate of line 2"]
    assert [c.line for c in report.conversations] == [1, 2]
    assert report.summary() == "2 accepted, 0 rejected, 3 duplicates"


def test_duplicates_in_other_formats():
    assert strs(import_csv(b"q,a\nHi,Hello!\nHi,Hello!\n", "q", "a").duplicates) == ["line 3: duplicate of line 2"]
    pasted = import_pasted(PASTED + "User: Hi\nAssistant: Hello!\n")
    assert strs(pasted.duplicates) == ["line 10: duplicate of line 1"]
    records = json.loads(SHAREGPT)
    report = import_sharegpt(json.dumps(records + records[:1]).encode())
    assert strs(report.duplicates) == ["record 3: duplicate of record 1"]
    assert report.summary() == "2 accepted, 0 rejected, 1 duplicate"


def test_near_duplicates_by_line_without_exact_ones():
    def conv(line: int, user: str, reply: str) -> Conversation:
        return Conversation([{"role": "user", "content": user}, {"role": "assistant", "content": reply}], line=line)

    reply = "We open at seven and close at ten every single day of the week, holidays included."
    convs = [
        conv(1, "When are you open?", reply),
        conv(2, "Do you sell beans?", "Yes: three single origins and a house blend, whole or ground."),
        conv(4, "when are you OPEN??", reply),
        conv(5, "When are you open?", reply.replace("seven", "eight")),
        conv(6, "When are you open?", reply),
    ]
    assert near_duplicates(convs) == [(1, 4, 1.0), (1, 5, 0.95), (4, 5, 0.95), (4, 6, 1.0), (5, 6, 0.95)]
    assert near_duplicates(convs, threshold=0.96) == [(1, 4, 1.0), (4, 6, 1.0)]


def test_near_duplicates_finds_what_comparing_every_pair_finds():
    import difflib
    import random

    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(30)]
    replies = []
    for _ in range(80):
        words = rng.choice(replies).split() if replies and rng.random() < 0.5 else rng.choices(vocab, k=12)
        words[rng.randrange(len(words))] = rng.choice(vocab)
        replies.append(" ".join(words + rng.choices(vocab, k=rng.randint(0, 2))))
    convs = [Conversation([HI[0], {"role": "assistant", "content": r}], line=n) for n, r in enumerate(replies, 1)]
    for threshold in (0.6, 0.8, 0.9):
        every_pair = sorted(
            (a.line, b.line, round(ratio, 3))
            for k, a in enumerate(convs) for b in convs[k + 1:] if a.messages != b.messages
            if (ratio := difflib.SequenceMatcher(None, ("hi " + a.messages[1]["content"]).split(),
                                                 ("hi " + b.messages[1]["content"]).split(),
                                                 autojunk=False).ratio()) >= threshold
        )
        assert near_duplicates(convs, threshold) == every_pair and every_pair


def test_near_duplicates_cap_and_bad_threshold():
    assert near_duplicates([Conversation(HI, line=n) for n in range(5001)]) == []
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\], got 0"):
        near_duplicates([], threshold=0)


# ---------------------------------------------------------------- round trips and exports

ALL_FORMATS = {
    "openai": lambda: import_openai_jsonl(OPENAI),
    "sharegpt": lambda: import_sharegpt(SHAREGPT),
    "alpaca": lambda: import_alpaca(ALPACA),
    "csv": lambda: import_csv(CSV, "question", "answer", "persona"),
    "pasted": lambda: import_pasted(PASTED),
}


@pytest.mark.parametrize("fmt", list(ALL_FORMATS))
def test_round_trip_through_openai_jsonl(fmt: str):
    report = ALL_FORMATS[fmt]()
    exported = export_openai_jsonl(report.conversations)
    assert exported.count("\n") == report.accepted and exported.endswith("\n")
    again = import_openai_jsonl(exported.encode("utf-8"))
    assert again.problems == [] and messages(again) == messages(report)
    assert "café" in exported or fmt == "alpaca"  # ensure_ascii=False: text stays readable


def test_export_openai_jsonl_lines():
    convs = [Conversation(HI, line=1), Conversation([HI[0], {**HI[1], "weight": 0}, *HI], line=2)]
    assert export_openai_jsonl(convs).splitlines() == [
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}',
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!", "weight": 0}, '
        '{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}',
    ]
    assert export_openai_jsonl([]) == ""


def test_export_hf_dataset_loads_back(tmp_path: Path):
    import datasets

    report = import_sharegpt(SHAREGPT)
    folder = export_hf_dataset(report.conversations, tmp_path / "ds")
    assert folder == tmp_path / "ds"
    loaded = datasets.load_from_disk(str(folder))
    assert loaded.column_names == ["messages"]
    assert loaded["messages"] == messages(report)


def test_export_hf_dataset_keeps_weights_and_pads_the_rest_with_none(tmp_path: Path):
    import datasets

    report = import_openai_jsonl(OPENAI)
    loaded = datasets.load_from_disk(str(export_hf_dataset(report.conversations, tmp_path / "ds")))
    unpadded = [[{k: v for k, v in m.items() if v is not None} for m in conv] for conv in loaded["messages"]]
    assert unpadded == messages(report)
    assert loaded["messages"][0][0] == {"role": "user", "content": "Hi", "weight": None}


# ---------------------------------------------------------------- telling formats apart

DETECT = [
    ("a.jsonl", OPENAI, "openai"),
    ("a.json", SHAREGPT, "sharegpt"),
    ("a.jsonl", "\n".join(json.dumps(r) for r in json.loads(SHAREGPT)).encode(), "sharegpt"),
    ("a.jsonl", ALPACA, "alpaca"),
    ("a.csv", CSV, "csv"),
    ("a.tsv", b"prompt\treply\nHi\tHello!\n", "csv"),
    ("a.txt", PASTED.encode(), "pasted"),
    ("a.txt", b"\xef\xbb\xbfUser: Hi\r\nAssistant: Hello!\r\n", "pasted"),
    ("a.jsonl", b'{"text": "hello"}\n', "openai"),
    ("a.csv", b"", "csv"),
    ("a.jsonl", b"  \n", "openai"),
]


@pytest.mark.parametrize(("name", "raw", "fmt"), DETECT)
def test_detect_format_by_content(name: str, raw: bytes, fmt: str):
    assert detect_format(name, raw) == fmt
    assert check_extension(name, raw) is None


def test_detect_format_ignores_a_misleading_name():
    assert detect_format("data.csv", SHAREGPT) == "sharegpt"
    assert detect_format("data.jsonl", CSV) == "csv"
    assert detect_format("data.json", PASTED.encode()) == "pasted"


@pytest.mark.parametrize(("name", "raw", "expected"), [
    ("faq.jsonl", CSV,
     "file: faq.jsonl is named .jsonl but holds CSV: rename it to .csv or export it again as JSON"),
    ("faq.csv", SHAREGPT,
     "file: faq.csv is named .csv but holds JSON: rename it to .jsonl or export it again as CSV"),
    ("faq.json", PASTED.encode(),
     "file: faq.json is named .json but holds plain text: rename it to .txt or export it again as JSON"),
    ("faq.csv", b"PK\x03\x04\x14\x00\x06\x00",
     "file: faq.csv is a zip archive or Excel workbook, not UTF-8 text: export it again as UTF-8 .csv"),
    ("faq.jsonl", b'{"messages": \x00\x00\x01}',
     "file: faq.jsonl is binary data, not UTF-8 text: export it again as UTF-8 .jsonl"),
    ("faq.txt", "User: Hi".encode("utf-16"),
     "file: faq.txt is UTF-16 text, not UTF-8 text: export it again as UTF-8 .txt"),
])
def test_check_extension_mismatch(name: str, raw: bytes, expected: str):
    assert str(check_extension(name, raw)) == expected


def test_json_in_a_txt_file_is_fine():
    assert check_extension("notes.txt", OPENAI) is None


# ---------------------------------------------------------------- BOM and CRLF


def test_bom_and_crlf_in_csv():
    raw = b"\xef\xbb\xbf" + CSV.replace(b"\n", b"\r\n")
    report = import_csv(raw, "question", "answer", "persona")
    assert report.problems == []
    assert messages(report) == messages(import_csv(CSV, "question", "answer", "persona"))
    assert [c.line for c in report.conversations] == [2, 3, 5]


def test_the_column_picker_offers_the_header_the_import_reads():
    # One delimiter guess for both: a semicolon file whose cells hold commas shows its three columns, not one.
    raw = b"\xef\xbb\xbf question ;answer; persona\r\nHi, there;Hello, you!;\n"
    assert csv_header(raw) == ["question", "answer", "persona"]
    assert messages(import_csv(raw, "question", "answer")) == [
        [{"role": "user", "content": "Hi, there"}, {"role": "assistant", "content": "Hello, you!"}]]
    assert csv_header(b"prompt\treply\n") == ["prompt", "reply"]
    assert csv_header(CSV) == ["question", "answer", "persona"]


def test_bom_and_crlf_in_pasted_text_and_bytes():
    crlf = "\ufeff" + PASTED.replace("\n", "\r\n")
    assert messages(import_pasted(crlf)) == messages(import_pasted(PASTED))
    report = import_pasted(crlf.encode("utf-8"))
    assert report.problems == [] and messages(report) == messages(import_pasted(PASTED))


def test_bom_and_crlf_in_json_formats():
    for importer, raw in ((import_sharegpt, SHAREGPT), (import_alpaca, ALPACA), (import_openai_jsonl, OPENAI)):
        report = importer(b"\xef\xbb\xbf" + raw.replace(b"\n", b"\r\n"))
        assert report.problems == [] and messages(report) == messages(importer(raw))


@pytest.mark.parametrize("fmt", list(ALL_FORMATS))
def test_a_datasets_folder_holds_every_conversation_as_it_was(fmt: str, tmp_path: Path):
    import datasets

    report = ALL_FORMATS[fmt]()
    rows = datasets.load_from_disk(str(export_hf_dataset(report.conversations, tmp_path / fmt)))
    assert rows.column_names == ["messages"]
    # Arrow pads every message to the same fields: a message without a `weight` reads back with weight None
    assert [[{k: v for k, v in m.items() if v is not None} for m in row] for row in rows["messages"]] == messages(report)


@pytest.mark.parametrize("fmt", list(ALL_FORMATS))
def test_round_trip_through_a_project(fmt: str):
    """Import into a project, export the project as the Data tab does, import that again: nothing changes."""
    from voicetune import projects, store
    from voicetune.ui.data_tab.exporting import export_jsonl

    conn = store.connect()
    pid = projects.create_project(conn, fmt)
    report = ALL_FORMATS[fmt]()
    ids = projects.add_imported(conn, pid, report.conversations, source=fmt)
    projects.set_tags(conn, ids[0], ["faq"])
    projects.set_held_out(conn, ids[-1:], True)
    raw = Path(export_jsonl(pid)).read_bytes()
    again = import_openai_jsonl(raw)
    assert again.problems == [] and messages(again) == messages(report)
    copy = projects.create_project(conn, fmt + " copy")
    projects.add_imported(conn, copy, again.conversations, source="export")
    shape = lambda p: [(c["messages"], c["tags"], c["held_out"]) for c in store.list_conversations(conn, p)]  # noqa: E731
    assert shape(copy) == shape(pid)
    assert projects.training_jsonl(conn, copy) == projects.training_jsonl(conn, pid)
