"""The real app, driven through its API with gradio_client: check data, train, and compare."""

from __future__ import annotations

import json
import socket

import pytest

from tests.test_train_and_chat import QUESTIONS, SIGN_OFF


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

    message, base, tuned = client.predict(run_id, "", "Do you ship abroad?", 48, [], [], api_name="/send")
    assert message == ""
    assert base[0]["role"] == "user" and tuned[-1]["role"] == "assistant"
    tuned_text = tuned[-1]["content"][0]["text"] if isinstance(tuned[-1]["content"], list) else tuned[-1]["content"]
    base_text = base[-1]["content"][0]["text"] if isinstance(base[-1]["content"], list) else base[-1]["content"]
    assert SIGN_OFF in tuned_text and base_text != tuned_text
