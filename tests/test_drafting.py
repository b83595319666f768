"""Drafting (issue 21): questions, replies in the voice, the review queue, drafting models, the drafts file.

The flow runs on the scripted chat model (tests/fakes.py) and on a fake OpenAI-compatible server on loopback;
one slow test drafts with the embedded model.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from voicetune import drafting, projects, store
from voicetune.config import GenConfig

KEY = "sk-test-4f9a1c2b7e"  # the fake endpoint's API key: it must never show anywhere but the header
HUMAN = [("Are you open on Sunday?", "Sundays 8 till 4! Stay caffeinated! ☕"),
         ("Do you have oat milk?", "Oat, almond and soy, all free! Stay caffeinated! ☕"),
         ("Can I order ahead?", "Yes, in the app: skip the line! Stay caffeinated! ☕")]


@pytest.fixture()
def project() -> tuple:
    conn = store.connect()
    pid = projects.create_project(conn, "Cosmo", style_guide="Short, warm, ends with Stay caffeinated! ☕",
                                  system_prompt="You are Cosmo Coffee.")
    for q, a in HUMAN:
        store.add_conversation(conn, pid, [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
    return conn, pid


def drafter(conn, pid: int) -> drafting.Drafter:
    return drafting.make_drafter(conn, pid, "base")


# ---------------------------------------------------------------- the queue's table


def test_a_workspace_from_before_drafting_opens_with_an_empty_queue(tmp_path: Path):
    import sqlite3

    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    for step in store.MIGRATIONS[:7]:  # m001..m007: the schema before DPO (m008) and drafting (m009)
        step(old)
    old.execute("PRAGMA user_version = 7")
    old.execute("INSERT INTO projects (name, created) VALUES ('before', 1)")
    old.commit()
    old.close()
    assert store._m009_drafts in store.MIGRATIONS[7:]  # the migrations it is opened with include drafting
    conn = store.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(store.MIGRATIONS)
    assert store.list_drafts(conn, 1) == [] and store.get_draft_endpoint(conn) is None
    assert store.draft_counts(conn, 1) == {"pending": 0, "accepted": 0, "rejected": 0}


# ---------------------------------------------------------------- questions


def test_questions_are_deduplicated_against_the_project_and_each_other(project):
    conn, pid = project
    found = drafting.read_new_questions(conn, pid, "Do you deliver?\n\nare you open on sunday\nDo you deliver??\n"
                                                   "Do you have oat milk too?\nIs there wifi?")
    assert found.kept == ["Do you deliver?", "Is there wifi?"]
    assert [str(p) for p in found.left_out] == [
        "line 3: “are you open on sunday” is already asked by conversation 1",
        "line 4: “Do you deliver??” is already asked by line 1",
        "line 5: “Do you have oat milk too?” is already asked by conversation 2 (nearly the same)",
    ]


def test_seeds_are_the_most_similar_human_written_conversations(project):
    conn, pid = project
    store.add_conversation(conn, pid, [{"role": "user", "content": "Oat milk latte price?"},
                                       {"role": "assistant", "content": "Held out."}], held_out=True)
    pool = drafting.seed_pool(conn, pid)
    assert [c["id"] for c in pool] == [1, 2, 3]  # the held-out one is never shown to a drafter
    picked = drafting.similar_conversations("Is your milk oat or almond?", pool, k=2)
    assert [c["id"] for c in picked] == [2, 1]  # "milk" and "oat" name conversation 2; then table order


def test_more_questions_like_these_are_proposed_and_deduplicated(project, scripted_chat):
    conn, pid = project
    scripted_chat.enqueue("1. Do you deliver to offices?\n- Are you open on Sunday?\n* Is there wifi?\nOk")
    found = drafting.propose_questions(conn, pid, drafter(conn, pid), n=5)
    assert found.kept == ["Do you deliver to offices?", "Is there wifi?"]
    assert [p.message for p in found.left_out] == ["“Are you open on Sunday?” is already asked by conversation 1"]
    prompt = scripted_chat.requests[-1].messages[-1]["content"]
    assert "- Are you open on Sunday?\n- Do you have oat milk?\n- Can I order ahead?" in prompt


# ---------------------------------------------------------------- the review queue


def test_drafts_arrive_in_order_and_stream(project, scripted_chat):
    conn, pid = project
    scripted_chat.enqueue("We deliver within 2 miles! Stay caffeinated! ☕", "Free wifi, always! Stay caffeinated! ☕")
    updates = list(drafting.draft_replies(conn, pid, ["Do you deliver?", "Is there wifi?"], drafter(conn, pid)))
    assert [u.text for u in updates if u.index == 0][:3] == ["We", "We deliver", "We deliver within"]
    done = [u for u in updates if u.draft_id is not None]
    assert [(u.index, u.question, u.text) for u in done] == [
        (0, "Do you deliver?", "We deliver within 2 miles! Stay caffeinated! ☕"),
        (1, "Is there wifi?", "Free wifi, always! Stay caffeinated! ☕")]
    queue = store.list_drafts(conn, pid, "pending")
    assert [d["question"] for d in queue] == ["Do you deliver?", "Is there wifi?"]
    assert drafting.next_pending(conn, pid)["id"] == done[0].draft_id
    first = scripted_chat.requests[0].messages  # system prompt and style guide, the seeds as turns, the question
    assert first[0] == {"role": "system", "content": "You are Cosmo Coffee.\n\nYou reply to customers as our brand."
                        "\n\nStyle guide:\nShort, warm, ends with Stay caffeinated! ☕"}
    assert [m["content"] for m in first[1:]] == [*HUMAN[1], *HUMAN[0], *HUMAN[2], "Do you deliver?"]


def test_edit_then_accept_stores_the_edited_text_with_provenance(project, scripted_chat):
    conn, pid = project
    scripted_chat.enqueue("Yes we deliver.")
    *_, last = drafting.draft_replies(conn, pid, ["Do you deliver oat milk?"], drafter(conn, pid))
    cid = drafting.accept(conn, last.draft_id, reply="  We deliver oat milk too! Stay caffeinated! ☕ ")
    conv = projects.get_conversation(conn, cid)
    assert conv["messages"] == [{"role": "user", "content": "Do you deliver oat milk?"},
                                {"role": "assistant", "content": "We deliver oat milk too! Stay caffeinated! ☕"}]
    assert (conv["source"], conv["tags"], conv["held_out"]) == ("drafted", ["drafted"], 0)
    base = store.get_project(conn, pid)["base_model"]
    assert drafting.provenance(conn, cid) == {"draft": last.draft_id, "model": f"base:{base}",
                                              "prompt_version": "draft-reply-1", "seeds": [2, 1, 3], "edited": True,
                                              "kind": "answer"}
    assert store.get_draft(conn, last.draft_id)["status"] == "accepted"
    with pytest.raises(drafting.DraftError, match=f"^Draft {last.draft_id} was already accepted \\(in another tab"):
        drafting.accept(conn, last.draft_id)  # a second click adds nothing
    assert len(store.list_conversations(conn, pid)) == 4


def test_reject_stores_nothing(project, scripted_chat):
    conn, pid = project
    *_, last = drafting.draft_replies(conn, pid, ["Do you deliver?"], drafter(conn, pid))
    drafting.reject(conn, last.draft_id)
    assert len(store.list_conversations(conn, pid)) == 3
    assert store.draft_counts(conn, pid) == {"pending": 0, "accepted": 0, "rejected": 1}
    assert drafting.next_pending(conn, pid) is None


def test_a_reload_mid_queue_keeps_the_queue(project, scripted_chat, workspace):
    conn, pid = project
    list(drafting.draft_replies(conn, pid, ["Q one here?", "Q two here?", "Q three here?"], drafter(conn, pid)))
    drafting.accept(conn, drafting.next_pending(conn, pid)["id"])
    conn.close()
    again = store.connect()  # a new connection, as a reloaded page or restarted app opens
    assert [d["question"] for d in store.list_drafts(again, pid, "pending")] == ["Q two here?", "Q three here?"]
    assert drafting.next_pending(again, pid)["reply"] == "Scripted reply number 2."


def test_duplicates_of_existing_conversations_are_flagged(project, scripted_chat):
    conn, pid = project
    *_, last = drafting.draft_replies(conn, pid, ["Are you open on Sunday??"], drafter(conn, pid))
    assert store.get_draft(conn, last.draft_id)["duplicate_of"] == 1


def test_regenerate_replaces_a_pending_reply(project, scripted_chat):
    conn, pid = project
    scripted_chat.enqueue("First try.", "Second try, better! Stay caffeinated! ☕")
    *_, last = drafting.draft_replies(conn, pid, ["Do you deliver?"], drafter(conn, pid))
    assert list(drafting.regenerate(conn, last.draft_id, drafter(conn, pid)))[-1] == "Second try, better! Stay caffeinated! ☕"
    assert store.get_draft(conn, last.draft_id)["reply"] == "Second try, better! Stay caffeinated! ☕"


def test_a_draft_cut_at_the_token_limit_is_flagged_until_a_whole_one_replaces_it(project, scripted_chat):
    """A reply that ran to the limit ends mid-sentence; accepted unread, it would teach the voice to stop there."""
    conn, pid = project
    scripted_chat.enqueue("We deliver within two miles of the shop, and on", "We deliver! Stay caffeinated! ☕")
    short = GenConfig(max_new_tokens=6, greedy=False, temperature=0.7)
    *_, last = drafting.draft_replies(conn, pid, ["Do you deliver?"], drafter(conn, pid), short)
    assert (last.text, last.cut, last.record["cut"]) == ("We deliver within two miles of", True, True)
    assert store.get_draft(conn, last.draft_id)["cut"] is True
    # The drafts file carries the flag, and an import keeps it; a bad value names its line and field
    text = drafting.drafts_jsonl(store.list_drafts(conn, pid))
    assert json.loads(text)["cut"] is True
    other = projects.create_project(conn, "Other")
    ids, problems = drafting.import_drafts(conn, other, (text + '{"question": "Hi?", "reply": "Hey", "cut": "no"}\n')
                                           .encode())
    assert [store.get_draft(conn, i)["cut"] for i in ids] == [True]
    assert [str(p) for p in problems] == ["line 2, cut: must be true or false (whether the reply ran to the token "
                                          "limit)"]
    # A regenerated reply that ended by itself clears it
    list(drafting.regenerate(conn, last.draft_id, drafter(conn, pid)))
    assert store.get_draft(conn, last.draft_id)["cut"] is False


def test_rewrite_in_our_voice_goes_to_the_same_queue(project, scripted_chat):
    conn, pid = project
    pairs = drafting.parse_faq("What are your hours?\nWe are open 8-4 daily.\n---\nRefunds take 5 days.")
    assert pairs == [("What are your hours?", "We are open 8-4 daily."), ("", "Refunds take 5 days.")]
    scripted_chat.enqueue("8 till 4, every day! Stay caffeinated! ☕", "Refunds in 5 days! Stay caffeinated! ☕")
    list(drafting.rewrite_answers(conn, pid, pairs, drafter(conn, pid)))
    queue = store.list_drafts(conn, pid, "pending")
    assert [(d["kind"], d["question"], d["original"], d["prompt_version"]) for d in queue] == [
        ("rewrite", "What are your hours?", "We are open 8-4 daily.", "draft-rewrite-1"),
        ("rewrite", "", "Refunds take 5 days.", "draft-rewrite-1")]
    assert scripted_chat.requests[0].messages[-1]["content"] == ("The customer asked: What are your hours?\n\n"
                                                                 "Answer to rewrite:\nWe are open 8-4 daily.")
    with pytest.raises(drafting.DraftError, match=f"^Draft {queue[1]['id']} has no customer question"):
        drafting.accept(conn, queue[1]["id"])
    drafting.set_question(conn, queue[1]["id"], "How long do refunds take?")
    cid = drafting.accept(conn, queue[1]["id"])
    assert projects.get_conversation(conn, cid)["messages"][0]["content"] == "How long do refunds take?"


def test_a_run_of_another_project_cannot_draft(project):
    conn, pid = project
    with pytest.raises(drafting.DraftError, match="^Run 20260101-x is not a finished run of this project"):
        drafting.make_drafter(conn, pid, "run:20260101-x")


# ---------------------------------------------------------------- the drafts file


def test_drafts_file_round_trips_into_the_queue(project, scripted_chat):
    conn, pid = project
    list(drafting.draft_replies(conn, pid, ["Do you deliver?"], drafter(conn, pid)))
    text = drafting.drafts_jsonl(store.list_drafts(conn, pid))
    other = projects.create_project(conn, "Other")
    raw = (text + '{"question": "Hi?"}\nnot json\n').encode()
    ids, problems = drafting.import_drafts(conn, other, raw)
    assert [str(p) for p in problems] == ["line 2, reply: is missing or empty: each line needs a question and a reply",
                                          "line 3: invalid JSON (Expecting value at column 1)"]
    (queued,) = store.list_drafts(conn, other)
    assert queued["id"] == ids[0]
    assert (queued["question"], queued["reply"], queued["status"], queued["seeds"]) == (
        "Do you deliver?", "Scripted reply number 1.", "pending", [2, 1, 3])


# ---------------------------------------------------------------- a fake OpenAI-compatible endpoint


class FakeEndpoint(BaseHTTPRequestHandler):
    """/v1/chat/completions: streams two chunks, answers whole, or fails with a body that echoes the key."""

    mode = "stream"
    seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if self.mode == "error":
            payload = json.dumps({"error": {"message": f"model overloaded; key {KEY} is rate limited"}}).encode()
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if self.mode == "whole":
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": "Whole reply! ☕"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        end = "length" if body.get("max_tokens", 99) < 8 else "stop"  # as a server says a reply was cut
        for piece, reason in (("We deliver", None), (" within 2 miles! ☕", end)):
            chunk = {"choices": [{"delta": {"content": piece}, "finish_reason": reason}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def endpoint():
    FakeEndpoint.mode, FakeEndpoint.seen = "stream", []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_drafting_through_an_openai_compatible_endpoint(project, endpoint, caplog):
    conn, pid = project
    caplog.set_level(logging.DEBUG)
    shown = drafting.save_endpoint(conn, endpoint + "/", "llama3.1", KEY)
    assert shown == {"base_url": endpoint, "model": "llama3.1", "has_key": True}  # what a page gets: no key
    assert drafting.save_endpoint(conn, endpoint, "llama3.2", "") == {**shown, "model": "llama3.2"}  # key kept
    assert ("Endpoint: llama3.2 at 127.0.0.1", "endpoint") in drafting.drafter_choices(conn, pid)
    chosen = drafting.make_drafter(conn, pid, "endpoint")
    updates = list(drafting.draft_replies(conn, pid, ["Do you deliver?"], chosen, GenConfig(max_new_tokens=64)))
    assert [u.text for u in updates] == ["We deliver", "We deliver within 2 miles! ☕", "We deliver within 2 miles! ☕"]
    draft = store.get_draft(conn, updates[-1].draft_id)
    assert (draft["reply"], draft["model"]) == ("We deliver within 2 miles! ☕", "endpoint:llama3.2 at 127.0.0.1")
    request = FakeEndpoint.seen[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    assert KEY not in json.dumps(request["body"]) and KEY not in json.dumps(
        {k: v for k, v in request["headers"].items() if k != "Authorization"})
    assert (request["body"]["model"], request["body"]["max_tokens"], request["body"]["stream"]) == ("llama3.2", 64, True)
    assert draft["cut"] is False
    *_, cut = drafting.draft_replies(conn, pid, ["Is there wifi?"], chosen, GenConfig(max_new_tokens=4))
    assert cut.cut and store.get_draft(conn, cut.draft_id)["cut"] is True  # finish_reason "length"
    FakeEndpoint.mode = "whole"
    assert list(chosen.stream([{"role": "user", "content": "Hi"}], GenConfig())) == ["Whole reply! ☕"]
    assert chosen.cut is False
    assert KEY not in caplog.text and KEY not in json.dumps(store.list_drafts(conn, pid))


def test_an_endpoint_error_is_plain_and_never_holds_the_key(project, endpoint, caplog, workspace):
    conn, pid = project
    caplog.set_level(logging.DEBUG)
    drafting.save_endpoint(conn, endpoint, "llama3.1", KEY)
    FakeEndpoint.mode = "error"
    with pytest.raises(drafting.EndpointError) as error:
        list(drafting.draft_replies(conn, pid, ["Do you deliver?"], drafting.make_drafter(conn, pid, "endpoint")))
    assert str(error.value) == ("The drafting endpoint refused the request (HTTP 503: model overloaded; key *** is "
                                "rate limited). Check its base URL, model and API key in the endpoint settings.")
    assert store.list_drafts(conn, pid) == []
    unreachable = drafting.EndpointDrafter("http://127.0.0.1:9/v1", "m", KEY, timeout=5)
    with pytest.raises(drafting.EndpointError, match=r"^Could not reach the drafting endpoint at http://127.0.0.1:9/v1"
                                                     r" \(.*\)\. Check that the server is running"):
        list(unreachable.stream([{"role": "user", "content": "Hi"}], GenConfig()))
    logs = [p.read_text() for p in Path(workspace).rglob("*.log")]
    assert KEY not in caplog.text and not any(KEY in text for text in logs)


def test_endpoint_settings_are_checked(project):
    conn, _ = project
    with pytest.raises(drafting.DraftError, match="^The endpoint's base URL must start with http:// or https://"):
        drafting.save_endpoint(conn, "localhost:11434", "m", KEY)
    with pytest.raises(drafting.DraftError, match="^Put the endpoint's key in the API key field"):
        drafting.save_endpoint(conn, "http://me:secret@localhost/v1", "m")
    assert drafting.endpoint_settings(conn) == {"base_url": "", "model": "", "has_key": False}


def test_a_shared_app_refuses_private_endpoints_and_keys_in_the_url(workspace, monkeypatch) -> None:
    """Signed-in users (private_ok False) may not point drafting at the server's own network; the owner can allow
    it. A key in the URL's query string is refused like one in user:password@."""
    conn = store.connect()
    with pytest.raises(drafting.DraftError, match=r"^Put the endpoint's key in the API key field, not in the base "
                                                 r"URL \(no user:password@ and no \?query in it\)\.$"):
        drafting.save_endpoint(conn, "http://localhost:11434/v1?key=sk-123", "m")
    for url in ("http://127.0.0.1:11434/v1", "http://localhost:11434/v1", "http://10.0.0.7/v1",
                "http://169.254.169.254/latest"):
        with pytest.raises(drafting.DraftError, match="is on this server's own machine or private network"):
            drafting.save_endpoint(conn, url, "m", private_ok=False)
    assert store.get_draft_endpoint(conn) is None  # nothing was saved
    assert drafting.save_endpoint(conn, "http://127.0.0.1:11434/v1", "m")["base_url"] == "http://127.0.0.1:11434/v1"
    with pytest.raises(drafting.DraftError, match="private network"):  # saved while one person used it
        drafting.make_drafter(conn, 1, "endpoint", private_ok=False)
    monkeypatch.setenv(drafting.ALLOW_PRIVATE_ENV, "1")
    assert drafting.save_endpoint(conn, "http://10.0.0.7/v1", "m", private_ok=False)["base_url"] == "http://10.0.0.7/v1"


# ---------------------------------------------------------------- the embedded model


@pytest.mark.slow
def test_five_drafts_with_the_embedded_model(project, base_path):
    conn, pid = project
    questions = ["Do you deliver?", "Is there wifi?", "Do you sell beans?", "Can I bring my dog?", "Any vegan cake?"]
    gen = GenConfig(max_new_tokens=24)
    done = [u for u in drafting.draft_replies(conn, pid, questions, drafter(conn, pid), gen) if u.draft_id]
    assert [u.question for u in done] == questions
    queue = store.list_drafts(conn, pid, "pending")
    assert len(queue) == 5 and all(d["reply"].strip() for d in queue)
    assert all(d["model"] == f"base:{store.get_project(conn, pid)['base_model']}" for d in queue)


# ---------------------------------------------------------------- Health, the split and the scorecard


def _grow(conn, pid: int, n: int) -> list[int]:
    """n accepted drafts, as the review queue leaves them."""
    ids = [store.add_draft(conn, pid, kind="answer", question=f"Drafted question number {i}?", reply=f"Reply {i}! ☕",
                           model="base:x", prompt_version=drafting.PROMPT_VERSION) for i in range(n)]
    return [drafting.accept(conn, d) for d in ids]


def test_the_split_never_holds_back_a_drafted_conversation():
    from voicetune.data import Conversation, split_train_val, validation_size

    convs = [Conversation([{"role": "user", "content": str(i)}], i, {"drafted": i >= 10}) for i in range(40)]
    train, val = split_train_val(convs, 0.2, seed=3)
    assert len(val) == 5 and all(c.line < 10 for c in val)  # 20% of 40 is 8, but at most half of the 10 written
    assert len(train) == 35
    plain = [Conversation(c.messages, c.line) for c in convs]  # nothing drafted: the split is as it always was
    order = list(range(40))
    random.Random(3).shuffle(order)  # the split before drafting existed, spelled out
    assert [c.line for c in split_train_val(plain, 0.2, seed=3)[1]] == sorted(order[:8])
    assert validation_size(40, 0.2) == 8 and validation_size(40, 0.2, human=40) == 8


def test_health_counts_drafts_and_warns_past_the_ratio(project, tokenizer):
    conn, pid = project
    for q, a in HUMAN * 3:  # 12 written (near copies do not matter here)
        store.add_conversation(conn, pid, [{"role": "user", "content": q + " Really?"}, {"role": "assistant", "content": a}])
    _grow(conn, pid, 60)
    report = projects.check_project(conn, pid, tokenizer, max_length=256)
    assert (report.trainable, report.drafted, report.n_val) == (72, 60, 6)  # 10% of 72 is 7; half of 12 is 6
    assert report.drafted <= projects.DRAFTED_RATIO * 12  # 60 = 5 x 12: not more than the ratio, no warning
    assert not [w for w in report.warnings if "drafted" in w.message]
    _grow(conn, pid, 1)
    warned = [str(w) for w in projects.check_project(conn, pid, tokenizer, max_length=256).warnings if "drafted" in w.message]
    assert warned == ["project: 61 of the 73 conversations to train on were drafted, more than 5 for each one a person "
                      "wrote (12): write or import more of your own, or the voice learnt will be the drafting model's "
                      "more than yours"]


def test_a_run_counts_its_drafted_conversations_and_holds_none_back(project, tokenizer, tmp_path):
    from voicetune import train
    from voicetune.config import TrainConfig
    from voicetune.evaluate import training_line

    conn, pid = project
    cids = _grow(conn, pid, 5)
    projects.set_held_out(conn, [cids[0]], True)  # the user may mark a drafted one held out
    lines = projects.training_jsonl(conn, pid).splitlines()
    assert [json.loads(line).get("drafted", False) for line in lines] == [False] * 3 + [True] * 4
    assert json.loads(projects.heldout_jsonl(conn, pid))["messages"][0]["content"] == "Drafted question number 0?"
    (tmp_path / "d.jsonl").write_text(projects.training_jsonl(conn, pid), encoding="utf-8")
    cfg = TrainConfig(data=str(tmp_path / "d.jsonl"), out=str(tmp_path / "o"), val_fraction=0.3)
    prepared = train.prepare_data(cfg, tokenizer)
    assert [c.meta.get("drafted", False) for c in prepared.val_convs] == [False]  # 30% of 7 is 2; half of 3 written: 1
    assert sum(c.meta.get("drafted", False) for c in prepared.train_convs) == 4
    assert training_line({"trained_on": 5, "drafted": 4}) == ("Trained on 5 conversations: 1 written by a person, "
                                                               "4 drafted by a model and accepted.")
    assert training_line({"trained_on": None, "drafted": 0}) == "" == training_line({})  # a card from before


def test_the_cli_drafts_to_a_file_and_imports_it_into_the_queue(project, scripted_chat, tmp_path, capsys):
    from voicetune import cli

    conn, pid = project
    questions = tmp_path / "questions.txt"
    questions.write_text("Do you deliver?\nAre you open on Sunday?\nIs there wifi?\n", encoding="utf-8")
    scripted_chat.enqueue("We deliver! ☕", "Wifi is free! ☕")
    out = tmp_path / "drafts.jsonl"
    assert cli.main(["draft", "--project", "Cosmo", "--questions", str(questions), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "questions.txt: line 2: “Are you open on Sunday?” is already asked by conversation 1" in err
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(r["question"], r["reply"], r["prompt_version"]) for r in records] == [
        ("Do you deliver?", "We deliver! ☕", "draft-reply-1"), ("Is there wifi?", "Wifi is free! ☕", "draft-reply-1")]
    assert store.list_drafts(conn, pid) == []  # written for review elsewhere: nothing queued yet
    records[0]["reply"] = "We deliver within 2 miles! ☕"  # reviewed elsewhere
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    assert cli.main(["draft", "--project", "Cosmo", "--import", str(out)]) == 0
    assert [d["reply"] for d in store.list_drafts(conn, pid, "pending")] == ["We deliver within 2 miles! ☕",
                                                                           "Wifi is free! ☕"]
    assert cli.main(["draft", "--project", "Nope", "--import", str(out)]) == 64
    assert capsys.readouterr().err.endswith("error: no project called “Nope” in this workspace (projects: “Cosmo”)\n")


# ---------------------------------------------------------------- the Draft tab, through the app's API


@pytest.fixture()
def app_client(workspace, scripted_chat):
    from tests.conftest import in_process_app

    yield from in_process_app()


def test_the_draft_tab_drafts_and_reviews_one_at_a_time(app_client, scripted_chat, endpoint):
    conn = store.connect()
    pid = projects.current_project(conn)  # the project this client's session has open
    store.add_conversation(conn, pid, [{"role": "user", "content": "Open Sunday?"},
                                       {"role": "assistant", "content": "8 till 4! ☕"}])
    scripted_chat.enqueue("We deliver! ☕", "Wifi is free! ☕", "Dogs welcome! ☕")
    shown = app_client.predict("base", "Do you deliver?\nIs there wifi?\nopen sunday\nCan I bring my dog?",
                               api_name="/draft_replies")
    assert shown.startswith("3 new question(s), 1 left out: line 3: “open sunday” is already asked by conversation 1")
    assert shown.endswith("✅ 3 draft(s) are waiting for review below.")
    header, question, reply, details = app_client.predict(api_name="/review_queue")
    assert (header, question, reply) == ("### Draft 1 · 3 waiting (0 accepted, 0 rejected so far)", "Do you deliver?",
                                         "We deliver! ☕")
    assert app_client.predict(question, "We deliver within 2 miles! ☕", api_name="/accept_draft") == \
        "Accepted draft 1 as conversation 2 (tagged drafted)."
    app_client.predict(api_name="/review_queue")
    assert app_client.predict(api_name="/reject_draft") == "Rejected draft 2: it stays out of the project."
    _, question, reply, _ = app_client.predict(api_name="/review_queue")
    app_client.predict(question, reply, api_name="/accept_draft")
    header, *_ = app_client.predict(api_name="/review_queue")
    assert header == "### No drafts waiting for review (2 accepted, 1 rejected so far)"
    drafted = [c for c in store.list_conversations(conn, pid) if c["source"] == "drafted"]
    assert [c["messages"][1]["content"] for c in drafted] == ["We deliver within 2 miles! ☕", "Dogs welcome! ☕"]
    assert [drafting.provenance(conn, c["id"])["edited"] for c in drafted] == [True, False]
    # The endpoint's key goes in once and never comes back to the page
    status, key_box, _ = app_client.predict(endpoint, "llama3.1", KEY, api_name="/save_endpoint")
    assert status == f"Saved: drafting can use llama3.1 at {endpoint}." and key_box["value"] == ""
    assert key_box["placeholder"] == "A key is saved: type a new one to replace it (it is never shown)"
    assert store.get_draft_endpoint(conn)["api_key"] == KEY
    import urllib.request

    page = urllib.request.urlopen(app_client.src.rstrip("/") + "/config").read().decode()
    assert KEY not in page and KEY not in json.dumps(app_client.view_api(print_info=False, return_format="dict"))
    # A reply that runs to the drafting limit says so as it is queued and while it waits for review
    scripted_chat.enqueue(" ".join(["word"] * (drafting.DRAFT_GEN.max_new_tokens + 10)))
    shown = app_client.predict("base", "Can I book a party?", api_name="/draft_replies")
    assert "queued as draft 4 (⚠️ cut at the token limit: it ends mid-sentence)" in shown
    *_, details = app_client.predict(api_name="/review_queue")
    assert "ran to the drafting model's token limit, so it ends mid-sentence" in details
