"""Projects and conversations: every edit lands in the database, deletes go to a trash that can be undone."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from voicetune import projects, store
from voicetune.importers import import_openai_jsonl

ROOT = Path(__file__).resolve().parent.parent


def exchange(q: str, a: str) -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


@pytest.fixture()
def conn():
    return store.connect()


def test_projects_create_rename_and_names_stay_unique(conn):
    pid = projects.create_project(conn, "  Cosmo Coffee ")
    assert projects.current_project(conn) == pid
    with pytest.raises(projects.ProjectError, match="There is already a project called “Cosmo Coffee”"):
        projects.create_project(conn, "Cosmo Coffee")
    with pytest.raises(projects.ProjectError, match="Give the project a name"):
        projects.create_project(conn, "  ")
    projects.rename_project(conn, pid, "Cosmo")
    projects.delete_project(conn, pid)
    with pytest.raises(projects.ProjectError, match="“Cosmo” is in the trash: restore it"):
        projects.create_project(conn, "Cosmo")
    assert [p["name"] for p in projects.list_projects(conn)] == []
    projects.restore_project(conn, pid)
    assert [p["name"] for p in projects.list_projects(conn)] == ["Cosmo"]


def test_current_project_is_the_last_opened_and_survives_a_new_connection(conn):
    a = projects.create_project(conn, "A")
    b = projects.create_project(conn, "B")
    projects.open_project(conn, a)
    assert projects.current_project(store.connect()) == a
    projects.delete_project(conn, a)
    assert projects.current_project(store.connect()) == b


def test_turns_edit_reorder_delete_and_duplicate(conn):
    pid = projects.create_project(conn, "P")
    cid = store.add_conversation(conn, pid, exchange("Hi", "Hello!"))
    other = store.add_conversation(conn, pid, exchange("Bye", "See you!"))
    projects.set_turn(conn, cid, 1, content="Hello there!")
    projects.add_turn(conn, cid, "system", "You are Cosmo.", at=0)
    projects.move_turn(conn, cid, 0, +1)
    assert [m["role"] for m in projects.get_conversation(conn, cid)["messages"]] == ["user", "system", "assistant"]
    assert projects.move_turn(conn, cid, 0, -1) == 0  # already at the top
    assert projects.delete_turn(conn, cid, 1) == {"role": "system", "content": "You are Cosmo."}
    with pytest.raises(projects.ProjectError, match="Unknown role “bot”"):
        projects.set_turn(conn, cid, 0, role="bot")
    copy = projects.duplicate_conversation(conn, cid)
    table = [c["id"] for c in store.list_conversations(conn, pid)]
    assert table == [cid, copy, other]  # the copy sits right after its original
    assert projects.get_conversation(conn, copy)["messages"] == exchange("Hi", "Hello there!")


def test_record_mode_appends_exchanges(conn):
    pid = projects.create_project(conn, "P")
    cid = projects.append_exchange(conn, pid, None, " Open Sunday? ", "8 till 4!")
    projects.append_exchange(conn, pid, cid, "Oat milk?", "Always.")
    assert projects.get_conversation(conn, cid)["messages"] == exchange("Open Sunday?", "8 till 4!") + \
        exchange("Oat milk?", "Always.")
    with pytest.raises(projects.ProjectError, match="Type both"):
        projects.append_exchange(conn, pid, cid, "only a question", " ")


def test_tags_search_held_out_and_training_files(conn):
    pid = projects.create_project(conn, "P")
    a = store.add_conversation(conn, pid, exchange("Refund please", "Of course!"))
    b = store.add_conversation(conn, pid, exchange("Open today?", "Until 6!"))
    c = store.add_conversation(conn, pid, exchange("Refund again", "Sure thing!"))
    projects.set_tags(conn, a, ["Refunds", " angry ", "refunds"])
    projects.add_tag(conn, [b, c], "hours")
    assert projects.get_conversation(conn, a)["tags"] == ["refunds", "angry"]
    assert projects.all_tags(conn, pid) == ["angry", "hours", "refunds"]
    assert [x["id"] for x in projects.search(conn, pid, "REFUND")] == [a, c]
    assert [x["id"] for x in projects.search(conn, pid, "refund", "hours")] == [c]
    projects.set_held_out(conn, [b], True)
    train = [json.loads(line)["messages"] for line in projects.training_jsonl(conn, pid).splitlines()]
    held = [json.loads(line)["messages"] for line in projects.heldout_jsonl(conn, pid).splitlines()]
    assert train == [exchange("Refund please", "Of course!"), exchange("Refund again", "Sure thing!")]
    assert held == [exchange("Open today?", "Until 6!")]


def test_bulk_delete_goes_to_trash_and_restore_brings_the_batch_back(conn):
    pid = projects.create_project(conn, "P")
    ids = [store.add_conversation(conn, pid, exchange(f"q{i}", f"a{i}")) for i in range(4)]
    projects.delete_conversations(conn, [ids[0]])
    time.sleep(0.01)
    projects.delete_conversations(conn, ids[2:])
    assert [c["id"] for c in store.list_conversations(conn, pid)] == [ids[1]]
    assert projects.training_jsonl(conn, pid).count("\n") == 1  # trashed conversations are never trained on
    projects.restore_conversations(conn, ids[2:])  # the Data tab's Undo: the batch it just deleted
    assert [c["id"] for c in store.list_conversations(conn, pid)] == ids[1:]
    projects.restore_conversations(conn, [ids[0]])
    assert [c["id"] for c in store.list_conversations(conn, pid)] == ids


def test_trash_is_purged_after_30_days_and_not_before(conn):
    keep = projects.create_project(conn, "Keep")
    old = projects.create_project(conn, "Old")
    store.add_vote(conn, old, round_id="r", prompt=[], left_arm="base", right_arm="x", left_reply="",
                   right_reply="", choice="tie", blind=True)
    recent = store.add_conversation(conn, keep, exchange("q", "a"))
    stale = store.add_conversation(conn, keep, exchange("q2", "a2"))
    projects.delete_project(conn, old)
    projects.delete_conversations(conn, [recent, stale])
    now = time.time()
    conn.execute("UPDATE conversations SET deleted = ? WHERE id = ?", (now - 31 * projects.DAY, stale))
    assert projects.purge_trash(conn, now=now) == 1  # only the stale conversation
    assert projects.purge_trash(conn, now=now + 31 * projects.DAY) == 3  # the project, its vote, the other one
    assert [p["name"] for p in projects.list_projects(conn)] == ["Keep"] and projects.trashed_projects(conn) == []
    assert store.list_conversations(conn, keep, deleted=True) == []


def test_import_report_counts_what_the_project_already_holds(conn):
    pid = projects.create_project(conn, "P")
    store.add_conversation(conn, pid, exchange("Hi", "Hello!"))
    raw = "\n".join(json.dumps({"messages": m}) for m in (exchange("Hi", "Hello!"), exchange("New?", "Yes!")))
    report = projects.against_project(conn, pid, import_openai_jsonl(raw.encode()))
    assert report.summary() == "1 accepted, 0 rejected, 1 duplicate"
    assert [str(p) for p in report.duplicates] == ["line 1: is already in the project as conversation 1"]
    typo = json.dumps({"messages": [{"role": "user", "content": "Hm?", "nmae": "Ann"},
                                    {"role": "assistant", "content": "Yes!"}]})
    checked = projects.against_project(conn, pid, import_openai_jsonl(typo.encode()))
    assert checked.accepted == 1 and [p.line for p in checked.warnings] == [1]  # warnings survive the check


def test_check_project_lengths_split_duplicates_and_consented_shortening(conn, tokenizer):
    pid = projects.create_project(conn, "P")
    for i in range(11):
        store.add_conversation(conn, pid, exchange(f"Question {i} about {'shipping returns hours wifi'.split()[i % 4]}",
                                                   f"Reply number {i}, {'friend pal mate buddy'.split()[i % 4]}!"))
    long_conv = exchange("Tell me a story.", "Once upon a time. " * 3) + exchange("More!", "And then " * 60)
    long_id = store.add_conversation(conn, pid, long_conv)
    dup = store.add_conversation(conn, pid, exchange("Question 0 about shipping", "Reply number 0, friend!"))
    report = projects.check_project(conn, pid, tokenizer, max_length=96)
    assert [str(p) for p in report.problems] == [
        f"conversation {long_id}, messages: is {report_len(tokenizer, long_conv)}"
        " tokens, over the max length of 96: shorten it, split it, raise the max length, or let voicetune drop its "
        "last turns"]
    assert report.over_length == [long_id]  # what the Data tab's "Drop the last turns" button counts
    assert f"conversation {dup}: is the same as conversation 1: merge them" in [str(w) for w in report.warnings]
    assert (1, dup, 1.0) in report.duplicates
    assert (report.n_train, report.n_val, report.val_fraction) == (10, 2, 0.2)  # 12 trainable, 20% by size

    consented = projects.check_project(conn, pid, tokenizer, max_length=96, truncate=True)
    assert consented.problems == [] and consented.shortened[long_id] == long_conv[:2]
    assert consented.over_length == []
    assert projects.apply_shortening(conn, consented) == 1
    kept = [c["messages"] for c in store.list_conversations(conn, pid)]
    assert long_conv[:2] in kept and long_conv not in kept
    assert store.list_conversations(conn, pid, deleted=True)[0]["messages"] == long_conv  # the original is kept

    store.update_project(conn, pid, val_fraction=0.25)
    projects.merge_duplicate(conn, 1, dup)
    assert projects.check_project(conn, pid, tokenizer, max_length=96).n_val == 3


def report_len(tokenizer, messages: list[dict]) -> int:
    from voicetune.templates import encode

    return len(encode(tokenizer, messages).input_ids)


def test_a_reply_that_cannot_fit_is_refused_even_with_consent(conn, tokenizer):
    pid = projects.create_project(conn, "P")
    cid = store.add_conversation(conn, pid, exchange("Hi", "word " * 200))
    report = projects.check_project(conn, pid, tokenizer, max_length=64, truncate=True)
    n = report_len(tokenizer, exchange("Hi", "word " * 200))
    assert str(report.problems[0]) == (f"conversation {cid}, messages: is {n} tokens and even its first reply does "
                                       "not fit the max length of 64: shorten it by hand or split it")
    assert report.shortened == {} and report.over_length == []  # nothing the button could shorten


def test_load_example_project(conn):
    pid = projects.load_example(conn, "cosmo-coffee")
    again = projects.load_example(conn, "cosmo-coffee")
    assert store.get_project(conn, pid)["name"] == "Cosmo Coffee"
    assert store.get_project(conn, again)["name"] == "Cosmo Coffee 2"
    assert len(store.list_conversations(conn, pid)) == 48


def test_a_database_from_migration_1_opens_and_keeps_its_rows(tmp_path: Path):
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    store._m001_initial(old)
    old.execute("PRAGMA user_version = 1")
    old.execute("INSERT INTO projects (name, created) VALUES ('default', 1)")
    old.execute("INSERT INTO conversations (project_id, messages, created, updated) VALUES (1, ?, 1, 1)",
                (json.dumps(exchange("q", "a")),))
    old.commit()
    old.close()
    conn = store.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(store.MIGRATIONS)
    assert [c["messages"] for c in store.list_conversations(conn, 1)] == [exchange("q", "a")]
    assert projects.current_project(conn) == 1


def test_a_migration_that_fails_half_way_leaves_the_previous_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Issue 15: executescript committed each migration's first statements, so a failure half-way (a crash, a
    full disk) left half a schema that never opened again ("duplicate column name")."""
    import errno

    path = tmp_path / "voicetune.db"
    store.connect(path).close()
    shipped = list(store.MIGRATIONS)

    def columns() -> list[str]:
        with sqlite3.connect(path) as raw:
            return [r[1] for r in raw.execute("PRAGMA table_info(projects)")]

    def version() -> int:
        with sqlite3.connect(path) as raw:
            return raw.execute("PRAGMA user_version").fetchone()[0]

    def bad_statement(conn: sqlite3.Connection) -> None:
        conn.executescript("ALTER TABLE projects ADD COLUMN colour TEXT;  -- applied first\n"
                           "ALTER TABLE no_such_table ADD COLUMN x TEXT;\n")

    def disk_full(conn: sqlite3.Connection) -> None:
        conn.executescript("ALTER TABLE projects ADD COLUMN colour TEXT;")
        raise OSError(errno.ENOSPC, "No space left on device")

    def whole(conn: sqlite3.Connection) -> None:
        conn.executescript("ALTER TABLE projects ADD COLUMN colour TEXT;\n"
                           "CREATE INDEX projects_by_colour ON projects (colour);")

    monkeypatch.setattr(store, "MIGRATIONS", [*shipped, bad_statement])
    with pytest.raises(sqlite3.OperationalError, match="^no such table: no_such_table$"):
        store.connect(path)
    assert (version(), "colour" in columns()) == (len(shipped), False)
    monkeypatch.setattr(store, "MIGRATIONS", [*shipped, disk_full])
    with pytest.raises(OSError, match="No space left on device"):
        store.connect(path)
    assert (version(), "colour" in columns()) == (len(shipped), False)
    monkeypatch.setattr(store, "MIGRATIONS", [*shipped, whole])  # the next open migrates cleanly
    conn = store.connect(path)
    assert (version(), "colour" in columns()) == (len(shipped) + 1, True)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'projects_by_colour'").fetchone() is not None


# ---------------------------------------------------------------- autosave through the real app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(home: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "VOICETUNE_HOME": str(home), "VOICETUNE_PORT": str(port)}
    return subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def connect_client(port: int, proc: subprocess.Popen):
    from gradio_client import Client

    for _ in range(240):
        assert proc.poll() is None, "the app exited while starting"
        try:
            return Client(f"http://127.0.0.1:{port}/", verbose=False)
        except Exception:  # not listening yet
            time.sleep(0.5)
    raise AssertionError("the app did not start")


@pytest.mark.slow
def test_edits_survive_a_killed_app(workspace: Path):
    port = free_port()
    proc = start_app(workspace, port)
    try:
        client = connect_client(port, proc)
        assert "Created project “Autosave”" in client.predict("Autosave", api_name="/create_project")[1]
        client.predict("Do you deliver?", "Every day before noon!", api_name="/record")
        client.predict("And on Sundays?", "Sundays too!", api_name="/record")
        client.predict("delivery, weekend", api_name="/set_tags")
    finally:
        proc.kill()  # SIGKILL: no shutdown hook runs: only what was already written survives
        proc.wait()
    port = free_port()
    proc = start_app(workspace, port)
    try:
        client = connect_client(port, proc)
        table = client.predict("", "", api_name="/view")[0]  # what the reloaded page shows
        assert [row[1:5] for row in table["data"]] == [["Do you deliver?", "Sundays too!", 4, "delivery, weekend"]]
        conn = store.connect()
        pid = projects.current_project(conn)
        assert store.get_project(conn, pid)["name"] == "Autosave"
        assert store.list_conversations(conn, pid)[0]["messages"] == \
            exchange("Do you deliver?", "Every day before noon!") + exchange("And on Sundays?", "Sundays too!")
    finally:
        proc.kill()
        proc.wait()
