"""The real app, driven through its API with gradio_client: check data, train, and compare.

The app runs on the tiny random model (VOICETUNE_BASE_MODEL), and Compare answers with the scripted chat model
(tests/fakes.py): what is under test is the app's wiring (jobs, panes, blind labels, votes), not the embedded
model, whose replies tests/test_train_and_chat.py and tests/test_serve.py check.
"""

from __future__ import annotations

import json
import re
from dataclasses import astuple

import pytest

from tests.conftest import QUESTIONS, SIGN_OFF, in_process_app
from voicetune.ui.train_tab import Advanced


@pytest.fixture()
def client(workspace, tiny_model, monkeypatch):
    monkeypatch.setenv("VOICETUNE_BASE_MODEL", str(tiny_model))  # the same tokenizer as the embedded model
    yield from in_process_app()


def test_bundled_example_loads_and_checks(client):
    status = client.predict("cosmo-coffee", api_name="/load_example_project")
    assert "Cosmo Coffee" in status
    summary, lengths, *_ = client.predict(1024, api_name="/check_project")
    assert "**48 conversations**" in summary and "carry the loss" in summary and "Ready to train" in summary
    counts = [int(n) for n in re.findall(r"<title>\d+-\d+: (\d+)</title>", lengths)]
    assert sum(counts) == 48  # every conversation is a bar's worth in the length chart


def test_bad_data_is_reported_with_its_line(client):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    report, table, *_ = client.predict(None, f"{good}\n{{broken\n", "openai", None, None, "",
                                       api_name="/preview_import")
    assert "1 accepted, 1 rejected" in report and "line 2: invalid JSON at column 2" in report
    assert len(table["data"]) == 1
    # A misspelt key is imported, and the preview names its line and key
    typo = json.dumps({"messages": [{"role": "user", "content": "hi?", "nmae": "Ann"},
                                    {"role": "assistant", "content": "hello!"}]})
    report, table, *_ = client.predict(None, f"{typo}\n", "openai", None, None, "", api_name="/preview_import")
    assert "1 accepted, 0 rejected" in report and "**Warnings**" in report and "nmae" in report and "line 1" in report


def test_a_pane_says_when_its_reply_was_cut_at_the_token_limit() -> None:
    """A reply that ran to Max reply tokens ends mid-sentence; its pane says so instead of leaving it silent."""
    from voicetune.streaming import Reply
    from voicetune.ui.compare_tab import stats_line

    cut = stats_line(Reply(text="Two drinks: a mocha and", prompt_tokens=39, reply_tokens=96, seconds=9.6), 96)
    assert cut == ("10.0 tok/s · prompt 39 tok · reply 96 tok · cut at the 96-token limit "
                   "(Sampling › Max reply tokens)")
    ended = stats_line(Reply(text="We do!", prompt_tokens=39, reply_tokens=33, seconds=3.3), 96)
    assert "cut" not in ended


@pytest.mark.slow  # a training job in a child process, with its scorecard
def test_train_then_compare_in_the_app(client, scripted_chat, tiny_model):
    from voicetune import projects, store

    conn = store.connect()
    project = projects.current_project(conn)  # the project this client's session has open
    store.update_project(conn, project, base_model=str(tiny_model))  # a job trains on the project's model
    for q in QUESTIONS:
        store.add_conversation(conn, project, [{"role": "user", "content": q},
                                               {"role": "assistant", "content": f"Arr, the crew be on it right now. {SIGN_OFF}"}])
    settings = Advanced(rank=16, alpha=32, dropout=0.05, learning_rate=2e-3, lr_scheduler="cosine", epochs=3,
                        max_steps=-1, batch_size=4, grad_accum=1, max_length=1024, seed=42, early_stopping="Off",
                        padding_free=False)
    run_id, queued = client.predict("Custom", *astuple(settings), api_name="/train")
    assert "queued" in queued
    job = client.submit(run_id, api_name="/watch")
    bar, plot, status, log, queue = job.result(timeout=900)
    assert "finished" in status, status + log[-2000:]
    assert "100%" in bar
    updates = job.outputs()
    assert len(updates) >= 3  # progress was streamed, not only reported at the end
    assert plot.count("<circle") >= 3 and "<polyline" in plot  # loss points, drawn
    assert queue["data"][0][:2] == [run_id, "succeeded"]
    assert (store.run_dir(run_id) / "README.md").exists()  # the model card beside the adapter

    # Compare the run just trained with the base: the scripted model answers in request order (base, then run).
    scripted_chat.enqueue("We ship to most countries.", f"Arr, the crew be on it right now. {SIGN_OFF}")
    out = client.predict([BASE, run_id], False, "Do you ship abroad?", "", "", True, 0.7, 0.9, 48, 1.0, 0,
                         api_name="/send")
    message, base, tuned = out[0], out[1], out[2]
    assert message == ""
    assert (base["label"], tuned["label"]) == ("Base model", f"Tuned: {run_id}")
    assert base["value"][0]["role"] == "user" and tuned["value"][-1]["role"] == "assistant"
    assert text_of(base["value"][-1]) == "We ship to most countries."
    assert text_of(tuned["value"][-1]) == f"Arr, the crew be on it right now. {SIGN_OFF}"
    assert [r.adapter for r in scripted_chat.requests] == [None, run_id]  # each pane asked for its own arm
    assert scripted_chat.adapters == {run_id: str(store.run_dir(run_id))}
    assert out[5]["value"] == "10.0 tok/s · prompt 4 tok · reply 5 tok"  # per-pane figures in open mode
    assert out[3]["visible"] is False and out[4]["visible"] is False  # two arms, two panes

    # Blind mode: what the browser receives before the vote names no arm.
    raw = raw_event(client, "send", [[BASE, PROMPT_ONLY, run_id], True, "Are you open today?", "", "", None,
                                     True, 0.7, 0.9, 24, 1.0, 0])
    assert "process_completed" in raw
    for secret in (run_id, "Base model", "Prompt-only", "prompt-only", "Tuned", "run:", "tok/s"):
        assert secret not in raw, secret
    assert "Reply A" in raw and "Reply B" in raw

    # A blind round through the client's own session, then the vote reveals and is stored once.
    out = client.predict([BASE, run_id], True, "Can I get a refund?", "", "", True, 0.7, 0.9, 24, 1.0, 0,
                         api_name="/send")
    assert {out[1]["label"], out[2]["label"]} == {"Reply A", "Reply B"}
    assert out[5]["value"] == "" and out[6]["value"] == ""  # no figures before the vote
    reveal = client.predict(api_name="/vote_left")[0]
    assert "Left** was" in reveal and ("Base model" in reveal and f"Tuned: {run_id}" in reveal)
    client.predict(api_name="/vote_left")  # a double click
    votes = store.list_votes(conn, project)
    assert len(votes) == 1 and votes[0]["blind"] == 1 and votes[0]["choice"] == "left"
    assert {votes[0]["left_arm"], votes[0]["right_arm"]} == {"base", f"run:{run_id}"}
    assert votes[0]["prompt"] == [{"role": "user", "content": "Can I get a refund?"}]

    # Teach it this: the edited reply becomes a training conversation of the open project.
    saved_msg = client.predict("Reply A", "Refunds are easy, matey! " + SIGN_OFF, api_name="/teach")
    assert "Saved as conversation" in saved_msg
    taught = json.loads(projects.training_jsonl(conn, project).splitlines()[-1])
    assert taught["messages"][-1]["content"].startswith("Refunds are easy")

    # Batch mode: a prompt x arm grid, exported as CSV and voted on row by row.
    grid, csv_path = client.predict([BASE, run_id], "Where is my order?\nDo you sell gift cards?", "", "", 24,
                                    api_name="/batch")
    assert grid["headers"] == ["prompt", "Base model", f"Tuned: {run_id}"] and len(grid["data"]) == 2
    assert open(csv_path).read().splitlines()[0] == f"prompt,base,run:{run_id}"
    assert client.predict(2, api_name="/batch_vote_right") == "Row 2: vote saved."
    assert len(store.list_votes(conn, project)) == 2


BASE, PROMPT_ONLY = "Base model", "Prompt-only (style guide + examples)"


def text_of(message: dict) -> str:
    content = message["content"]
    return content[0]["text"] if isinstance(content, list) else content


def raw_event(client, api_name: str, data: list) -> str:
    """Run one event over Gradio's queue protocol and return every byte the browser would receive."""
    import uuid

    import httpx

    config = httpx.get(client.src.rstrip("/") + "/config").json()
    fn_index = next(i for i, d in enumerate(config["dependencies"]) if d.get("api_name") == api_name)
    fn_index = config["dependencies"][fn_index].get("id", fn_index)
    session = uuid.uuid4().hex
    base = client.src.rstrip("/") + "/gradio_api"
    r = httpx.post(f"{base}/queue/join", json={"data": data + [None], "fn_index": fn_index,
                                                "session_hash": session, "event_data": None, "trigger_id": None})
    r.raise_for_status()
    chunks = []
    with httpx.stream("GET", f"{base}/queue/data", params={"session_hash": session}, timeout=600) as resp:
        for line in resp.iter_lines():
            chunks.append(line)
            if "process_completed" in line:
                break
    return "\n".join(chunks)
