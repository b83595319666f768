"""Bad input gets a message naming the line and field; good input is never dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli, write_jsonl
from voicetune.data import DataError, load_conversations, parse_jsonl_bytes, split_train_val, validation_size

GOOD = json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]})


def problems_of(raw: bytes) -> list[str]:
    _, problems = parse_jsonl_bytes(raw)
    return [str(p) for p in problems]


def test_invalid_json_names_line_and_column():
    assert problems_of(f"{GOOD}\n{GOOD}\n{{\"messages\": [}}\n".encode()) == [
        "line 3: invalid JSON at column 15: Expecting value"
    ]


def test_every_problem_is_reported_not_only_the_first():
    raw = "\n".join([
        GOOD,
        "[1, 2]",
        json.dumps({"text": "hello"}),
        json.dumps({"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}),
        json.dumps({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": 5}]}),
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 2}]}),
    ]).encode()
    assert problems_of(raw) == [
        "line 2: must be a JSON object, got list",
        'line 3, messages: is missing: each line needs {"messages": [...]}',
        "line 4, messages[0].role: unknown role 'bot': use system, user or assistant",
        "line 5, messages[0].content: is empty",
        "line 5, messages[1].content: must be text, got int",
        "line 6, messages: has no assistant turn: there is no reply to learn from",
        "line 7, messages[1].weight: must be 0 or 1",
    ]


def test_all_weights_zero_and_trailing_user_turn():
    zero = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}
    trailing = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                             {"role": "user", "content": "and?"}]}
    assert problems_of(f"{json.dumps(zero)}\n{json.dumps(trailing)}".encode()) == [
        "line 1, messages: every assistant turn has weight 0: nothing would be learned",
        "line 2, messages[2]: the last turn must be an assistant reply",
    ]


def test_bom_crlf_and_blank_lines_are_accepted():
    raw = b"\xef\xbb\xbf" + f"{GOOD}\r\n\r\n{GOOD}\r\n".encode()
    convs, problems = parse_jsonl_bytes(raw)
    assert problems == []
    assert [c.line for c in convs] == [1, 3]


def test_undecodable_bytes_name_line_and_offset():
    assert problems_of(GOOD.encode() + b"\n" + b'{"messages": "caf\xe9"}\n') == [
        "line 2: is not valid UTF-8 text (bad byte at offset 17 of the line)"
    ]


def test_missing_file_and_empty_file(tmp_path: Path):
    with pytest.raises(DataError, match="file not found"):
        load_conversations(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="contains no conversations"):
        load_conversations(tmp_path / "empty.jsonl")


def test_split_is_seeded_and_disjoint():
    convs, _ = parse_jsonl_bytes("\n".join([GOOD] * 20).encode())
    train, val = split_train_val(convs, 0.1, seed=7)
    assert len(val) == 2 and len(train) == 18
    assert {c.line for c in train}.isdisjoint({c.line for c in val})
    assert [c.line for c in split_train_val(convs, 0.1, seed=7)[1]] == [c.line for c in val]


@pytest.mark.parametrize("verb", ["train", "validate"])
def test_cli_bad_data_exits_nonzero_without_traceback(tmp_path: Path, verb: str):
    data = write_jsonl(tmp_path / "bad.jsonl", [GOOD, GOOD, "{oops"])
    args = ["--data", str(data)] + (["--out", str(tmp_path / "out")] if verb == "train" else [])
    result = run_cli(verb, *args)
    assert result.returncode == 2
    assert "line 3: invalid JSON at column 2" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "out").exists()


def test_cli_missing_file_and_no_assistant(tmp_path: Path):
    result = run_cli("train", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "file not found" in result.stderr and "Traceback" not in result.stderr
    data = write_jsonl(tmp_path / "q.jsonl", [json.dumps({"messages": [{"role": "user", "content": "hi"}]})])
    result = run_cli("train", "--data", str(data), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "line 1, messages: has no assistant turn" in result.stderr
    assert "Traceback" not in result.stderr


def test_bundled_examples_are_valid():
    from voicetune.data import list_examples

    examples = list_examples()
    assert len(examples) >= 2
    for path in examples.values():
        assert len(load_conversations(path)) >= 40


# ---------------------------------------------------------------- the bad-input corpus: every check, exact messages

BAD = Path(__file__).parent / "bad_inputs"
EXPECTED = {k: v for k, v in json.loads((BAD / "expected.json").read_text(encoding="utf-8")).items()
            if not k.startswith("_")}


def test_corpus_covers_every_file():
    assert set(EXPECTED) == {p.name for p in BAD.iterdir() if p.suffix in (".jsonl", ".csv")}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_input_corpus(name: str, tokenizer):
    import copy

    from voicetune import projects, store
    from voicetune.importers import check_extension, import_openai_jsonl, near_duplicates
    from voicetune.templates import encode_all

    spec, raw = EXPECTED[name], (BAD / name).read_bytes()
    if spec["check"] == "extension":
        assert [str(check_extension(name, raw))] == spec["problems"]
        return
    warnings: list = []
    convs, problems = parse_jsonl_bytes(raw, warnings)
    if spec["check"] == "parse":
        assert [str(p) for p in problems] == spec["problems"]
        assert len(convs) == spec["accepted"]
        assert [str(w) for w in warnings] == spec.get("warnings", [])  # warnings never reject a line
        assert [str(w) for w in import_openai_jsonl(raw).warnings] == spec.get("warnings", [])
    elif spec["check"] == "template":
        assert problems == []
        tok = tokenizer
        if "template" in spec:  # a template that enforces turn order, as Llama 2 and Mistral templates do
            tok = copy.deepcopy(tokenizer)
            tok.chat_template = (BAD / spec["template"]).read_text(encoding="utf-8")
        encoded, found = encode_all(tok, convs, spec.get("max_length", 1024))
        assert [str(p) for p in found] == spec["problems"]
        assert len(encoded) == len(convs) - len(found)  # the good line is kept, not dropped with the bad one
    elif spec["check"] == "duplicates":
        report = import_openai_jsonl(raw)
        assert [str(p) for p in report.duplicates] == spec["problems"]
        assert [list(t) for t in near_duplicates(report.conversations)] == spec["near"]
    else:  # "project": the rules on how many conversations a run needs
        conn = store.connect()
        project = projects.create_project(conn, name)
        projects.add_imported(conn, project, convs, source=name)
        report = projects.check_project(conn, project, tokenizer, max_length=1024)
        assert [str(p) for p in report.problems] == spec["problems"]
        assert [str(p) for p in report.warnings] == spec["warnings"]


def test_files_over_the_size_cap_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from voicetune import data

    monkeypatch.setattr(data, "MAX_FILE_BYTES", 2 * 2**20)
    path = tmp_path / "huge.jsonl"
    path.write_bytes((GOOD + "\n").encode() * (3 * 2**20 // len(GOOD)))
    with pytest.raises(DataError) as e:
        load_conversations(path)
    assert [str(p) for p in e.value.problems] == [f"file: {path} is 3 MiB, over the 2 MiB cap"]


def test_validate_warns_about_unknown_keys_with_their_line_and_passes():
    """Issue 15: {"role", "content", "nmae"} was accepted without a word; a misspelt key now gets a warning."""
    from tests.conftest import run_cli

    result = run_cli("validate", "--data", str(BAD / "unknown_key.jsonl"))
    assert result.returncode == 0
    assert result.stdout == f"{BAD / 'unknown_key.jsonl'}: 2 conversations, no problems, 2 warnings\n"
    assert result.stderr == "".join(f"warning: {w}\n" for w in EXPECTED["unknown_key.jsonl"]["warnings"])


def test_the_train_tabs_split_sizes_are_the_ones_training_makes(workspace):
    """One rule (data.validation_size) for the check before a run and the split training makes."""
    from voicetune import projects, store

    conn = store.connect()
    for n, fraction in ((3, 0.5), (4, 0.1), (12, 0.25), (48, 0.1), (48, 0.0)):
        pid = projects.create_project(conn, f"p{n}-{fraction}", val_fraction=fraction)
        convs = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(n)]
        for messages in convs:
            store.add_conversation(conn, pid, messages)
        report = projects.ProjectCheck(trainable=n, held_out=0)
        projects._choose_split(report, fraction)
        train, val = split_train_val(parse_jsonl_bytes(projects.training_jsonl(conn, pid).encode())[0], fraction, 1)
        assert (report.n_train, report.n_val) == (len(train), len(val)) == (n - validation_size(n, fraction),
                                                                             validation_size(n, fraction))
    assert [validation_size(n, 0.1) for n in (3, 4, 10, 15, 16)] == [0, 1, 1, 2, 2]
