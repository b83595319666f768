"""The real app, driven through its API with gradio_client: check data, train, and compare."""

from __future__ import annotations

import json
import socket

import pytest

from tests.conftest import QUESTIONS, SIGN_OFF


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def client(workspace, base_path):
    from gradio_client import Client

    from voicetune.ui.app import build_app

    demo = build_app()
    demo.queue(default_concurrency_limit=1)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    finally:
        demo.close()


@pytest.mark.slow
def test_bundled_example_loads_and_checks(client):
    text = client.predict("cosmo-coffee", api_name="/load_example")
    assert len(text.strip().splitlines()) >= 40
    summary, mask = client.predict(text, 1, api_name="/check_data")
    assert "conversations" in summary and "assistant tokens carry the loss" in summary
    trained = "".join(item["token"] for item in mask if item["class_or_confidence"] == "trained")
    first_reply = json.loads(text.splitlines()[0])["messages"][-1]["content"]
    assert trained.startswith(first_reply[:20])


@pytest.mark.slow
def test_bad_data_is_reported_with_its_line(client):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    summary, mask = client.predict(f"{good}\n{{broken\n", 1, api_name="/check_data")
    assert "line 2: invalid JSON at column 2" in summary
    assert mask == [] or mask is None


@pytest.mark.slow
def test_train_then_compare_in_the_app(client):
    text = "\n".join(
        json.dumps({"messages": [{"role": "user", "content": q},
                                 {"role": "assistant", "content": f"Arr, the crew be on it right now. {SIGN_OFF}"}]})
        for q in QUESTIONS
    )
    job = client.submit(text, 3, 2e-3, api_name="/train")
    run_id, bar, plot, status, log = job.result(timeout=900)
    assert "finished" in status, status + log[-2000:]
    assert "100%" in bar
    updates = job.outputs()
    assert len(updates) >= 3  # progress was streamed, not only reported at the end
    assert len(plot["data"]) >= 3  # loss points for the plot

    out = client.predict([BASE, run_id], False, "Do you ship abroad?", "", "", "", True, 0.7, 0.9, 48, 1.0, 0,
                         api_name="/send")
    message, base, tuned = out[0], out[1], out[2]
    assert message == ""
    assert (base["label"], tuned["label"]) == ("Base model", f"Tuned: {run_id}")
    assert base["value"][0]["role"] == "user" and tuned["value"][-1]["role"] == "assistant"
    assert SIGN_OFF in text_of(tuned["value"][-1]) and text_of(base["value"][-1]) != text_of(tuned["value"][-1])
    assert "tok/s" in out[5]["value"] and "prompt 35 tok" in out[5]["value"]  # per-pane figures in open mode
    assert out[3]["visible"] is False and out[4]["visible"] is False  # two arms, two panes

    # Blind mode: what the browser receives before the vote names no arm.
    raw = raw_event(client, "send", [[BASE, PROMPT_ONLY, run_id], True, "Are you open today?", "", "", text,
                                     True, 0.7, 0.9, 24, 1.0, 0])
    assert "process_completed" in raw
    for secret in (run_id, "Base model", "Prompt-only", "prompt-only", "Tuned", "run:", "tok/s"):
        assert secret not in raw, secret
    assert "Reply A" in raw and "Reply B" in raw

    # A blind round through the client's own session, then the vote reveals and is stored once.
    out = client.predict([BASE, run_id], True, "Can I get a refund?", "", "", "", True, 0.7, 0.9, 24, 1.0, 0,
                         api_name="/send")
    assert {out[1]["label"], out[2]["label"]} == {"Reply A", "Reply B"}
    assert out[5]["value"] == "" and out[6]["value"] == ""  # no figures before the vote
    reveal = client.predict(api_name="/vote_left")[0]
    assert "Left** was" in reveal and ("Base model" in reveal and f"Tuned: {run_id}" in reveal)
    client.predict(api_name="/vote_left")  # a double click
    from voicetune import store

    conn = store.connect()
    votes = store.list_votes(conn, store.ensure_project(conn))
    assert len(votes) == 1 and votes[0]["blind"] == 1 and votes[0]["choice"] == "left"
    assert {votes[0]["left_arm"], votes[0]["right_arm"]} == {"base", f"run:{run_id}"}
    assert votes[0]["prompt"] == [{"role": "user", "content": "Can I get a refund?"}]

    # Teach it this: the edited reply becomes a training conversation the Data tab can pull in.
    saved_msg = client.predict("Reply A", "Refunds are easy, matey! " + SIGN_OFF, api_name="/teach")
    assert "Saved as conversation" in saved_msg
    pulled = client.predict("", api_name="/add_saved")
    assert json.loads(pulled.splitlines()[0])["messages"][-1]["content"].startswith("Refunds are easy")

    # Batch mode: a prompt x arm grid, exported as CSV and voted on row by row.
    grid, csv_path = client.predict([BASE, run_id], "Where is my order?\nDo you sell gift cards?", "", "", "", 24,
                                    api_name="/batch")
    assert grid["headers"] == ["prompt", "Base model", f"Tuned: {run_id}"] and len(grid["data"]) == 2
    assert open(csv_path).read().splitlines()[0] == f"prompt,base,run:{run_id}"
    assert client.predict(2, api_name="/batch_vote_right") == "Row 2: vote saved."
    assert len(store.list_votes(conn, store.ensure_project(conn))) == 2


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
