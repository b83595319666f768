"""The OpenAI-compatible endpoint, called with the official `openai` client over loopback: in the running app
(two signed-in users, keys made in their Use it tabs) and from `python -m voicetune serve`.

What it must answer: exactly the compare path's replies (greedy, and sampled with the same seed), the pure base
model for `base`, exact token counts. What it must refuse, with OpenAI's error body: no key, a wrong or revoked
key (401), another user's run (404, as for a run that does not exist), prompts and max_tokens over the key's
caps (400), too many requests (429, then it recovers). Keys are never logged, echoed or stored."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL_CACHE, ROOT, SIGN_OFF
from tests.running_app import RunningApp, free_port, start_app

ALICE_RUN, ALICE_RUN2, BOB_RUN = "20260101-000000-pirate-aaaaaa", "20260101-000001-pirate-cccccc", \
    "20260101-000002-parrot-bbbbbb"
QUESTION = [{"role": "user", "content": "Do you ship abroad?"}]


# --- Without the model: keys, limits, request checks, streamed text ------------------------------------------

def test_keys_are_stored_hashed_reach_only_their_workspace_and_revoke_at_once(workspace: Path):
    from voicetune import apikeys, store

    key = apikeys.make_key("laptop", owner=None)
    assert key.startswith("vt-") and len(key) == 46  # 32 random bytes, urlsafe base64 without padding
    info = apikeys.authenticate(key, signed_in=False)
    assert (info.name, info.owner, info.requests_per_minute, info.max_tokens, info.max_prompt_tokens) == \
        ("laptop", None, 60, 512, 2048)
    assert info.hash == apikeys.key_hash(key)
    for db in workspace.rglob("*.db*"):  # the database, its WAL and shm files
        assert key.encode() not in db.read_bytes(), db.name
    # with sign-in on, the shared workspace is nobody's: its keys reach nothing
    with pytest.raises(apikeys.KeyRefused, match="^This API key is not valid: it is wrong or was revoked"):
        apikeys.authenticate(key, signed_in=True)

    with store.user_scope("user:alice"):
        alice = apikeys.make_key("alice's bot", owner="user:alice", requests_per_minute=5, max_tokens=32,
                                 max_prompt_tokens=64)
        assert [k["name"] for k in apikeys.list_keys()] == ["alice's bot"]
    assert apikeys.authenticate(alice, signed_in=True).owner == "user:alice"
    with pytest.raises(apikeys.KeyRefused):
        apikeys.authenticate(alice, signed_in=False)
    assert [k["name"] for k in apikeys.list_keys()] == ["laptop"]  # each workspace lists its own keys

    for wrong in (key[:-1] + ("A" if key[-1] != "A" else "B"), "sk-" + key[3:], "vt-", key + "x"):
        with pytest.raises(apikeys.KeyRefused):
            apikeys.authenticate(wrong, signed_in=False)
    with pytest.raises(apikeys.KeyRefused, match="^No API key"):
        apikeys.authenticate(None, signed_in=False)

    assert apikeys.revoke_key(info.id) is True and apikeys.revoke_key(info.id) is False
    with pytest.raises(apikeys.KeyRefused):
        apikeys.authenticate(key, signed_in=False)
    assert apikeys.list_keys()[0]["revoked"] is not None

    with pytest.raises(ValueError, match="^The key's requests per minute must be between 1 and 10,000, not 0.$"):
        apikeys.make_key("x", owner=None, requests_per_minute=0)


def test_rate_limit_allows_a_minute_at_once_then_refills_evenly():
    from voicetune.apikeys import RateLimiter

    limiter = RateLimiter()
    assert [limiter.take("k", 3, now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("k", 3, now=100.0) == pytest.approx(20.0)  # 3 a minute: the next in 20 s
    assert limiter.take("k", 3, now=110.0) == pytest.approx(10.0)
    assert limiter.take("k", 3, now=120.0) == 0.0
    assert limiter.take("other", 3, now=120.0) == 0.0  # every key has its own bucket


def test_aliases_name_runs_and_never_shadow_base_or_another_run(workspace: Path):
    from voicetune import apikeys, store

    store.run_dir(ALICE_RUN).mkdir(parents=True)
    store.run_dir(BOB_RUN).mkdir(parents=True)
    apikeys.set_alias("pirate", ALICE_RUN)
    assert apikeys.aliases() == {"pirate": ALICE_RUN}
    with pytest.raises(ValueError, match="already names the base model"):
        apikeys.set_alias("base", ALICE_RUN)
    with pytest.raises(ValueError, match="is already the id of another run"):
        apikeys.set_alias(BOB_RUN, ALICE_RUN)
    with pytest.raises(ValueError, match="^An alias is 1 to 64 letters"):
        apikeys.set_alias("../x", ALICE_RUN)


def _key(**limits):
    from voicetune.apikeys import KeyInfo

    values = {"requests_per_minute": 60, "max_tokens": 512, "max_prompt_tokens": 2048, **limits}
    return KeyInfo(id=1, name="t", hash="h", owner=None, **values)


@pytest.mark.parametrize("body, status, param, code, message", [
    ({"model": "m", "messages": QUESTION, "logprobs": True}, 400, "logprobs", "unsupported_parameter",
     "This server does not support 'logprobs'. Supported: max_completion_tokens, max_tokens, messages, model, n, "
     "seed, stop, stream, stream_options, temperature, top_p, user."),
    ({"messages": QUESTION}, 400, "model", "missing_required_parameter",
     "'model' is required: a run id, an alias, or 'base'. GET /v1/models lists them."),
    ({"model": "m", "messages": []}, 400, "messages", "invalid_value",
     "'messages' must be a non-empty list of {\"role\", \"content\"} objects."),
    ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role", "invalid_value",
     "messages[0].role must be one of system, user, assistant, not 'tool'."),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}, 400,
     "messages[0].content", "invalid_value",
     "messages[0].content may hold text parts only ({\"type\": \"text\", \"text\": ...})."),
    ({"model": "m", "messages": [*QUESTION, {"role": "assistant", "content": "x"}]}, 400, "messages[1].role",
     "invalid_value", "The last message must be the user's: the model answers it."),
    ({"model": "m", "messages": QUESTION, "temperature": 3}, 400, "temperature", "invalid_value",
     "'temperature' must be a number from 0 to 2, not 3."),
    ({"model": "m", "messages": QUESTION, "max_tokens": 513}, 400, "max_tokens", "invalid_value",
     "'max_tokens' is 513, but this key allows at most 512 reply tokens. Ask for fewer, or make a key with a "
     "higher limit in the Use it tab."),
    ({"model": "m", "messages": QUESTION, "n": 2}, 400, "n", "unsupported_value",
     "Only n = 1 is supported: send one request per reply."),
    ({"model": "m", "messages": QUESTION, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "invalid_value",
     "'stop' must be a non-empty string or a list of at most 4 of them."),
    ([1, 2], 400, None, None, "The request body must be a JSON object."),
])
def test_every_unsupported_or_invalid_field_gets_openais_error_body(body, status, param, code, message):
    from voicetune.serve import APIError, parse_request

    with pytest.raises(APIError) as e:
        parse_request(body, _key())
    assert e.value.status == status
    assert e.value.body() == {"error": {"message": message, "type": "invalid_request_error", "param": param,
                                        "code": code}}


def test_request_settings_become_batches_that_only_share_what_they_may():
    from voicetune.serve import parse_request

    def parsed(**fields):
        return parse_request({"model": "m", "messages": QUESTION, **fields}, _key())

    greedy = parsed(temperature=0, max_tokens=20)
    assert greedy.sampling.greedy and greedy.sampling.max_tokens == 20
    assert greedy.sampling.batch_key(1) == parsed(temperature=0, max_tokens=20, seed=5).sampling.batch_key(2)
    assert greedy.sampling.batch_key(1) != parsed(temperature=0, max_tokens=21).sampling.batch_key(2)
    sampled = parsed(temperature=0.7, top_p=0.9, max_tokens=20)
    assert sampled.sampling.batch_key(1) == parsed(temperature=0.7, top_p=0.9, max_tokens=20).sampling.batch_key(2)
    seeded = parsed(temperature=0.7, top_p=0.9, max_tokens=20, seed=5).sampling
    assert seeded.batch_key(1) != seeded.batch_key(2)  # a seeded request always runs alone
    assert seeded.gen_config().seed == 5 and not seeded.gen_config().greedy
    assert parsed().sampling.max_tokens == 256 and parsed().sampling.temperature == 1.0  # OpenAI's default
    assert parse_request({"model": "m", "messages": QUESTION}, _key(max_tokens=32)).sampling.max_tokens == 32
    assert parsed(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
                  ).messages == [{"role": "user", "content": "a\nb"}]


def test_streamed_text_never_takes_a_character_back_and_stops_where_the_whole_reply_does():
    from voicetune.serve import ReplyText

    text = ReplyText(["END"])
    deltas = [text.feed(p) for p in (" Hello ", " Hello wor", " Hello world E", " Hello world EN", " Hello world ENDx")]
    assert deltas == ["Hello", " wor", "ld", "", " "] and text.stopped and text.sent == "Hello world "
    # without a stop string, trailing spaces and a half-decoded character wait for what follows
    text = ReplyText([])
    assert [text.feed(p) for p in ("Caf", "Caf\ufffd", "Café !", "Café ! ")] == ["Caf", "", "é !", ""]
    assert text.finish("Café ! ☕ ") == (" ☕", "Café ! ☕")
    # a stop string seen only in the finished reply still cuts it
    text = ReplyText(["\n"])
    assert text.feed("one") == "one" and text.finish("one\ntwo") == ("", "one") and text.stopped


def test_every_exported_model_card_says_how_to_serve_the_run(tmp_path: Path):
    from voicetune.config import EMBEDDED_MODEL
    from voicetune.export import model_card

    folder = tmp_path / "20261123-101500-cosmo-a1b2c3"
    folder.mkdir()
    record = {"base_model": EMBEDDED_MODEL, "config": {"lora": {"r": 32}}}
    card = model_card(record, folder)
    name, base = folder.name, "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert f"  vllm serve {base} --enable-lora --lora-modules {name}=./{name} --max-lora-rank 32\n" in card
    assert (f'  docker run --gpus all -p 8080:80 -v "$PWD/{name}:/data/{name}" '
            f"ghcr.io/huggingface/text-generation-inference:latest --model-id {base} "
            f"--lora-adapters {name}=/data/{name}\n") in card
    assert f"`ollama create {name} -f Modelfile && ollama run {name}`" in card
    assert f"`python -m voicetune serve --run {name}={name}`" not in card  # the folder sits at ./<name>
    assert f"`python -m voicetune serve --run {name}=./{name}`" in card
    assert "voicetune's own tests did not run them (no GPU)" in card
    # rank 16 and below is vLLM's default limit: no flag
    assert "--max-lora-rank" not in model_card({**record, "config": {"lora": {"r": 16}}}, folder)
    # a base model given as a local folder keeps only its folder's name (no server path leaves the workspace),
    # quoted for the shell
    card = model_card({**record, "base_model": "/models/my base"}, folder)
    assert "vllm serve 'my base' --enable-lora" in card and "/models" not in card


# --- The real model, in the running app ----------------------------------------------------------------------

def _user_runs(home: Path, identity: str) -> Path:
    from voicetune import store

    return home / "users" / store.user_dir_name(identity) / "runs"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, pirate_adapter: Path):
    """The app with sign-in: Alice has two copies of the pirate run, Bob one of his own."""
    home = tmp_path_factory.mktemp("serve") / "home"
    shutil.copytree(pirate_adapter, _user_runs(home, "user:alice") / ALICE_RUN)
    shutil.copytree(pirate_adapter, _user_runs(home, "user:alice") / ALICE_RUN2)
    shutil.copytree(pirate_adapter, _user_runs(home, "user:bob") / BOB_RUN)
    running = start_app(home, env={"VOICETUNE_AUTH": "alice:alice-pw,bob:bob-pw"}, wait=False)
    try:
        wait_until_listening(running)
        yield running
    finally:
        running.stop()


def wait_until_listening(app: RunningApp, timeout_s: float = 240) -> None:
    """Behind the login page /config needs a session; the /v1 routes answer 401 once the server is up."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert app.proc.poll() is None, app.output()
        try:
            if httpx.get(app.url + "/v1/models", timeout=5).status_code == 401:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the app did not start in {timeout_s} s:\n{app.output()}")


KEYS_MADE: list[str] = []  # every key this module made: none may appear in a log or a response


def ui(app: RunningApp, user: str):
    from gradio_client import Client

    return Client(app.url + "/", auth=(user, f"{user}-pw"), verbose=False)


def make_key(app: RunningApp, user: str, per_minute: int = 60, max_tokens: int = 512, max_prompt: int = 2048) -> str:
    """A key made the way a person makes one: the Use it tab's button."""
    key, message, table = ui(app, user).predict(f"{user} test", per_minute, max_tokens, max_prompt,
                                                api_name="/make_api_key")
    assert message == "Copy this key now: it is shown only once, and voicetune keeps only a hash of it."
    assert key not in json.dumps(table)
    KEYS_MADE.append(key)
    return key


def key_id(app: RunningApp, user: str, key: str) -> int:
    """A key's id, from the user's table of keys in the Use it tab (which shows only each key's last four)."""
    _, table = ui(app, user).predict(api_name="/load_use_tab")
    return next(row[0] for row in table["data"] if row[2] == f"…{key[-4:]}")


def client(url: str, key: str):
    from openai import OpenAI

    return OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def alice_key(app: RunningApp) -> str:
    return make_key(app, "alice")


@pytest.fixture(scope="module")
def reference(pirate_adapter: Path):
    """The compare path in this process: a fresh base model's greedy replies, then base + the pirate adapter."""
    from voicetune.generate import ChatModel

    chat = ChatModel()
    return chat, chat.load_adapter(pirate_adapter, name="pirate")


def compare_path(reference, adapter: str | None, **gen) -> object:
    from voicetune.config import GenConfig
    from voicetune.generate import Request

    chat, _ = reference
    return chat.generate([Request(QUESTION, None), Request(QUESTION, adapter)], GenConfig(**gen))[1]


@pytest.mark.slow
def test_tuned_run_answers_exactly_as_the_compare_path_with_exact_usage(app, alice_key, reference, tokenizer):
    api = client(app.url, alice_key)
    reply = api.chat.completions.create(model=ALICE_RUN, messages=QUESTION, temperature=0, max_tokens=40)
    expected = compare_path(reference, reference[1], max_new_tokens=40)
    assert reply.choices[0].message.content == expected.text and SIGN_OFF in expected.text
    assert reply.choices[0].finish_reason == "stop" and reply.object == "chat.completion"
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert reply.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) == 35
    assert reply.usage.completion_tokens == expected.reply_tokens
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    # streamed: the same text in pieces, the same usage, then [DONE]
    chunks = list(api.chat.completions.create(model=ALICE_RUN, messages=QUESTION, temperature=0, max_tokens=40,
                                              stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected.text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # it really streamed
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.model_dump() == reply.usage.model_dump()
    with httpx.stream("POST", app.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {alice_key}"},
                      json={"model": ALICE_RUN, "messages": QUESTION, "max_tokens": 2, "stream": True},
                      timeout=300) as raw:
        lines = [line for line in raw.iter_lines() if line]
    assert raw.headers["content-type"].startswith("text/event-stream") and lines[-1] == "data: [DONE]"

    # sampled with a seed: the same reply as the compare path with that seed, every time
    sampled = dict(temperature=0.9, top_p=0.9, seed=7, max_tokens=30)
    first = api.chat.completions.create(model=ALICE_RUN, messages=QUESTION, **sampled).choices[0].message.content
    again = api.chat.completions.create(model=ALICE_RUN, messages=QUESTION, **sampled).choices[0].message.content
    from voicetune.config import GenConfig
    from voicetune.generate import Request

    chat, name = reference
    alone = chat.generate([Request(QUESTION, name)], GenConfig(greedy=False, temperature=0.9, top_p=0.9, seed=7,
                                                                 max_new_tokens=30))[0].text
    assert first == again == alone

    # a reply cut by max_tokens says so and counts exactly that many tokens
    short = api.chat.completions.create(model=ALICE_RUN, messages=QUESTION, temperature=0, max_tokens=5)
    assert (short.choices[0].finish_reason, short.usage.completion_tokens) == ("length", 5)
    # a stop string ends the reply before it
    stopped = api.chat.completions.create(model=ALICE_RUN, messages=QUESTION, temperature=0, max_tokens=40,
                                          stop=["crew"])
    assert stopped.choices[0].message.content == expected.text.split("crew")[0]
    assert stopped.choices[0].finish_reason == "stop"


@pytest.mark.slow
def test_base_is_the_pure_base_model_even_in_a_batch_with_adapters(app, alice_key, reference):
    from voicetune.config import GenConfig
    from voicetune.generate import ChatModel, Request

    fresh = ChatModel().generate([Request(QUESTION, None)], GenConfig(max_new_tokens=40))[0].text
    api = client(app.url, alice_key)
    answers: dict[str, str] = {}

    def ask(model: str) -> None:
        answers[model] = api.chat.completions.create(model=model, messages=QUESTION, temperature=0,
                                                     max_tokens=40).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(m,)) for m in ("base", ALICE_RUN, ALICE_RUN2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers["base"] == fresh and SIGN_OFF not in fresh
    assert answers[ALICE_RUN] == answers[ALICE_RUN2] == compare_path(reference, reference[1], max_new_tokens=40).text


@pytest.mark.slow
def test_concurrent_requests_for_different_runs_share_one_batch(reference, pirate_adapter: Path, tmp_path: Path):
    """In process, where the batches can be seen: three runs asked at once are answered in one generate call."""
    from voicetune.batcher import Sampling, Scheduler

    chat, _ = reference
    second = tmp_path / "second"
    shutil.copytree(pirate_adapter, second)
    scheduler = Scheduler(chat, window_s=0.5)
    done: dict[str, object] = {}
    events = threading.Event()

    def collect(name: str):
        def on_event(event):
            if event[0] in ("done", "error"):
                done[name] = event[1]
                if len(done) == 3:
                    events.set()
        return on_event

    for name, folder in (("base", None), ("first", pirate_adapter), ("second", second)):
        scheduler.submit(QUESTION, folder, Sampling(greedy=True, max_tokens=40), collect(name))
    assert events.wait(300)
    assert scheduler.batch_sizes == [3]
    expected = compare_path(reference, reference[1], max_new_tokens=40).text
    assert done["first"].text == done["second"].text == expected  # type: ignore[attr-defined]


@pytest.mark.slow
def test_each_key_sees_only_its_owners_runs(app, alice_key):
    from openai import NotFoundError

    alias_message, _ = ui(app, "alice").predict("pirate", ALICE_RUN, api_name="/set_model_alias")
    assert alias_message == f"API callers can now ask for model “pirate” to get run {ALICE_RUN}."
    bob_key = make_key(app, "bob")
    alice, bob = client(app.url, alice_key), client(app.url, bob_key)
    assert sorted(m.id for m in alice.models.list()) == sorted(["base", ALICE_RUN, ALICE_RUN2, "pirate"])
    assert sorted(m.id for m in bob.models.list()) == sorted(["base", BOB_RUN])
    assert alice.chat.completions.create(model="pirate", messages=QUESTION, temperature=0, max_tokens=3).usage

    # Bob's run for Alice is "not found", word for word what a run that exists nowhere gets
    with pytest.raises(NotFoundError) as theirs:
        alice.chat.completions.create(model=BOB_RUN, messages=QUESTION, max_tokens=3)
    with pytest.raises(NotFoundError) as nobodys:
        alice.chat.completions.create(model="20260101-000003-nobody-dddddd", messages=QUESTION, max_tokens=3)
    assert theirs.value.status_code == nobodys.value.status_code == 404
    assert theirs.value.body == {"message": f"The model '{BOB_RUN}' does not exist or you do not have access to it. "
                                            "GET /v1/models lists yours.", "type": "invalid_request_error",
                                 "param": "model", "code": "model_not_found"}
    assert nobodys.value.body["message"].replace("20260101-000003-nobody-dddddd", BOB_RUN) == theirs.value.body["message"]


@pytest.mark.slow
def test_missing_wrong_and_revoked_keys_are_refused(app):
    from openai import AuthenticationError

    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic YWxpY2U6YWxpY2UtcHc="}):
        r = httpx.post(app.url + "/v1/chat/completions", json={"model": "base", "messages": QUESTION}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] in ("missing_api_key", "invalid_api_key")
    r = httpx.get(app.url + "/v1/models")
    assert r.status_code == 401 and r.json() == {"error": {
        "message": "No API key. Send one as 'Authorization: Bearer <key>'; make one in the app's Use it tab.",
        "type": "invalid_request_error", "param": None, "code": "missing_api_key"}}

    key = make_key(app, "alice")
    for wrong in (key[:-2] + "xx", "vt-" + "A" * 43):
        with pytest.raises(AuthenticationError) as e:
            client(app.url, wrong).models.list()
        assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
        assert wrong not in str(e.value) and wrong not in json.dumps(e.value.body)
    assert client(app.url, key).models.list()
    message, _ = ui(app, "alice").predict(key_id(app, "alice", key), api_name="/revoke_api_key")
    assert message == f"Key {key_id(app, 'alice', key)} is revoked: requests with it are refused from now on."
    with pytest.raises(AuthenticationError):
        client(app.url, key).models.list()
    # Bob cannot revoke Alice's keys: the id names nothing live in his workspace
    from gradio_client.exceptions import AppError

    other = make_key(app, "alice")
    other_id = key_id(app, "alice", other)
    assert other_id not in {row[0] for row in ui(app, "bob").predict(api_name="/load_use_tab")[1]["data"]}
    with pytest.raises(AppError, match=f"There is no live key with id {other_id}"):
        ui(app, "bob").predict(other_id, api_name="/revoke_api_key")
    assert client(app.url, other).models.list()


@pytest.mark.slow
def test_oversized_prompts_and_max_tokens_are_refused_with_400(app, tokenizer):
    from openai import BadRequestError

    api = client(app.url, make_key(app, "alice", max_tokens=32, max_prompt=64))
    long = [{"role": "user", "content": "Where is my order? " * 20}]
    prompt = tokenizer.apply_chat_template(long, add_generation_prompt=True, tokenize=False)
    n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    with pytest.raises(BadRequestError) as e:
        api.chat.completions.create(model=ALICE_RUN, messages=long, max_tokens=8)
    assert e.value.status_code == 400 and e.value.body == {
        "message": f"The prompt is {n} tokens after the chat template, but this key allows 64. Shorten the "
                   "conversation, or make a key with a higher limit.",
        "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}
    with pytest.raises(BadRequestError) as e:
        api.chat.completions.create(model=ALICE_RUN, messages=QUESTION, max_tokens=33)
    assert e.value.body["param"] == "max_tokens" and e.value.body["message"].startswith(
        "'max_tokens' is 33, but this key allows at most 32 reply tokens.")
    r = httpx.post(app.url + "/v1/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {api.api_key}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    huge = json.dumps({"model": ALICE_RUN, "messages": [{"role": "user", "content": "x" * (1 << 20)}]})
    r = httpx.post(app.url + "/v1/chat/completions", content=huge, headers={"Authorization": f"Bearer {api.api_key}"})
    assert r.status_code == 413 and r.json() == {"error": {
        "message": "The request body is over 1024 KB: shorten the conversation.", "type": "invalid_request_error",
        "param": None, "code": "request_too_large"}}
    # other routes and methods under /v1 answer in OpenAI's shape too
    r = httpx.get(app.url + "/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["message"] == "/v1/chat/completions takes POST, not GET."
    r = httpx.post(app.url + "/v1/embeddings", json={})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"


@pytest.mark.slow
def test_rate_limit_trips_with_429_and_recovers(app):
    from openai import RateLimitError

    api = client(app.url, make_key(app, "alice", per_minute=6))  # one every 10 s after a burst of 6
    answered = 0
    with pytest.raises(RateLimitError) as e:
        # A slow machine may refill a token while the burst runs, so the limit may trip one or two requests
        # later; what must hold is that it trips, after at least the burst, and says when to come back.
        for answered in range(12):
            api.chat.completions.create(model="base", messages=QUESTION, max_tokens=1)
    assert answered >= 6
    assert e.value.status_code == 429 and e.value.body["code"] == "rate_limit_exceeded"
    wait = int(e.value.response.headers["retry-after"])
    assert 1 <= wait <= 10 and e.value.body["message"] == (
        f"This key allows 6 requests a minute; try again in {wait} s, or raise its limit in the Use it tab.")
    time.sleep(wait)
    assert api.chat.completions.create(model="base", messages=QUESTION, max_tokens=1).usage.completion_tokens == 1


@pytest.mark.slow
def test_the_use_it_snippet_runs_as_shown(app, alice_key):
    python, curl = ui(app, "alice").predict(ALICE_RUN, api_name="/snippets")
    assert f'base_url="{app.url}/v1"' in python and f'model="{ALICE_RUN}"' in python
    assert curl.startswith(f"curl {app.url}/v1/chat/completions \\\n") and "$VOICETUNE_API_KEY" in curl
    result = subprocess.run([sys.executable, "-c", python], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "VOICETUNE_API_KEY": alice_key})
    assert result.returncode == 0, result.stderr[-2000:]
    assert SIGN_OFF in result.stdout


@pytest.mark.slow
def test_keys_never_reach_the_log_or_a_response(app):
    """Runs last in this module: every key made above is searched for in the app's whole log."""
    assert KEYS_MADE
    log = app.log.read_text(encoding="utf-8", errors="replace")
    for key in KEYS_MADE:
        assert key not in log and key[3:] not in log
    for db in app.home.rglob("*.db*"):
        data = db.read_bytes()
        assert not any(key.encode() in data for key in KEYS_MADE), db.name


# --- Headless: python -m voicetune serve ---------------------------------------------------------------------

@pytest.mark.slow
def test_serve_cli_answers_like_the_app_without_the_page(pirate_adapter: Path, tmp_path: Path, reference):
    from openai import AuthenticationError, NotFoundError

    env = {**os.environ, "VOICETUNE_HOME": str(tmp_path / "home"), "VOICETUNE_CACHE": str(MODEL_CACHE),
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    made = subprocess.run([sys.executable, "-m", "voicetune", "serve", "--new-key", "ci"], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("vt-") and "Shown once" in made.stderr
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "voicetune", "serve", "--run", f"pirate={pirate_adapter}",
                                 "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while "serving" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.time() < deadline, log.read_text(errors="replace")
            time.sleep(0.5)
        url = f"http://127.0.0.1:{port}"
        api = client(url, key)
        assert sorted(m.id for m in api.models.list()) == ["base", "pirate"]
        expected = compare_path(reference, reference[1], max_new_tokens=40)
        reply = api.chat.completions.create(model="pirate", messages=QUESTION, temperature=0, max_tokens=40)
        assert reply.choices[0].message.content == expected.text
        assert reply.usage.completion_tokens == expected.reply_tokens
        streamed = api.chat.completions.create(model="pirate", messages=QUESTION, temperature=0, max_tokens=40,
                                               stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected.text
        with pytest.raises(AuthenticationError):
            client(url, key[:-1] + "x").models.list()
        with pytest.raises(NotFoundError):
            api.chat.completions.create(model="other", messages=QUESTION)
        revoked = subprocess.run([sys.executable, "-m", "voicetune", "serve", "--revoke-key", "1"],
                                 capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
        assert revoked.returncode == 0 and revoked.stdout.strip() == "key 1 revoked"
        with pytest.raises(AuthenticationError):
            api.models.list()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert key not in log.read_text(errors="replace")


# --- Runs of two bases: each answered by its own ---------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_two_base_runs(tiny_model: Path, tiny_qwen: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Qwen and Llama runs, trained once through the CLI for this module's two tests (each gets a copy in
    its own workspace), as test_base_models shares its Qwen run: two training processes, not four."""
    from tests.test_base_models import train_run
    from voicetune import store

    home = tmp_path_factory.mktemp("two-base-runs") / "home"
    with pytest.MonkeyPatch.context() as mp:  # store.run_dir reads the workspace the runs are written into
        mp.setenv("VOICETUNE_HOME", str(home))
        # The environment the tests' workspace fixture gives a training process (not set up yet at module scope)
        env = {"VOICETUNE_HOME": str(home), "VOICETUNE_CACHE": str(MODEL_CACHE), "HF_HUB_OFFLINE": "1",
               "VOICETUNE_BASE_MODEL": str(tiny_model)}
        train_run(home, home.parent, tiny_qwen, "qwen-run", "Qwen says hi!", env=env)
        train_run(home, home.parent, tiny_model, "llama-run", "Llama says hi!", env=env)
        return store.runs_dir()


@pytest.fixture()
def two_base_runs(trained_two_base_runs: Path, tiny_model: Path, workspace: Path,
                  monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Alice's workspace holds a run on the tiny Qwen (another tokenizer and template) and one on the tiny Llama,
    the app's default base here; Bob's holds none."""
    from voicetune import store

    monkeypatch.setenv("VOICETUNE_BASE_MODEL", str(tiny_model))
    with store.user_scope("user:alice"):
        for run_id in ("qwen-run", "llama-run"):
            shutil.copytree(trained_two_base_runs / run_id, store.run_dir(run_id))
        return {"qwen-run": store.run_dir("qwen-run"), "llama-run": store.run_dir("llama-run")}


def serve_in_thread(service) -> tuple[str, object]:
    """The /v1 routes on loopback in this process, so a test can see the service's engines."""
    import uvicorn
    from starlette.applications import Starlette

    from voicetune.serve import api_routes

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=api_routes(service)), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline, "the endpoint did not start"
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


def test_runs_of_two_bases_are_listed_and_each_answered_by_its_own_base(
        two_base_runs: dict[str, Path], tiny_model: Path, tiny_qwen: Path, monkeypatch: pytest.MonkeyPatch):
    from openai import NotFoundError

    from voicetune import apikeys, generate, models, store
    from voicetune.config import GenConfig
    from voicetune.serve import app_service
    from voicetune.ui import use_tab

    with store.user_scope("user:alice"):
        alice_key = apikeys.make_key("two bases", owner="user:alice")
        # the Use it tab lists runs of every base, each with the base that answers it; chosen by name
        choices = use_tab.model_choices()
    with store.user_scope("user:bob"):
        bob_key = apikeys.make_key("none", owner="user:bob")
    assert choices["choices"] == [("qwen-run · " + tiny_qwen.name, "qwen-run"),
                                  ("llama-run · " + tiny_model.name, "llama-run"),
                                  ("base · " + tiny_model.name, "base")]
    assert choices["value"] == "qwen-run"

    service = app_service(signed_in=True)
    url, server = serve_in_thread(service)
    try:
        alice, bob = client(url, alice_key), client(url, bob_key)
        listed = alice.models.list()
        assert [(m.id, m.owned_by, m.base_model) for m in listed] == [  # type: ignore[attr-defined]
            ("base", "voicetune", tiny_model.name), ("qwen-run", "you", tiny_qwen.name),
            ("llama-run", "you", tiny_model.name)]
        assert [m.id for m in bob.models.list()] == ["base"]  # the key owner's workspace only, as before
        with pytest.raises(NotFoundError):
            bob.chat.completions.create(model="qwen-run", messages=QUESTION, max_tokens=3)

        gen = GenConfig(max_new_tokens=8, greedy=True, repetition_penalty=1.0, seed=0)
        counted = {}
        for run, base in (("qwen-run", tiny_qwen), ("llama-run", tiny_model)):
            reply = alice.chat.completions.create(model=run, messages=QUESTION, temperature=0, max_tokens=8)
            own = generate.ChatModel(str(base))  # a fresh copy of the run's own base, with its adapter, alone
            expected = own.generate([generate.Request(QUESTION, own.load_adapter(two_base_runs[run]))], gen)[0]
            assert reply.choices[0].message.content == expected.text
            assert reply.usage.completion_tokens == expected.reply_tokens
            tok = models.load_tokenizer(str(base))  # counted with the run's own tokenizer and template
            prompt = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
            assert reply.usage.prompt_tokens == len(tok(prompt, add_special_tokens=False)["input_ids"])
            counted[run] = reply.usage.prompt_tokens
        assert counted["qwen-run"] != counted["llama-run"]  # so a count with the other base's tokenizer would fail
        assert sorted(service._engines) == sorted([str(tiny_qwen), str(tiny_model)])  # one scheduler per base
        qwen_engine = service._engines[str(tiny_qwen)]

        # When shared_model's LRU lets a base go, the endpoint closes that base's scheduler and lets go too
        monkeypatch.setattr(generate, "MAX_BASES", 1)
        assert alice.chat.completions.create(model="base", messages=QUESTION, temperature=0, max_tokens=2).usage
        assert list(service._engines) == [str(tiny_model)]
        qwen_engine.scheduler._thread.join(timeout=30)
        assert not qwen_engine.scheduler._thread.is_alive()
        again = alice.chat.completions.create(model="qwen-run", messages=QUESTION, temperature=0, max_tokens=8)
        own = generate.ChatModel(str(tiny_qwen))
        assert again.choices[0].message.content == own.generate(
            [generate.Request(QUESTION, own.load_adapter(two_base_runs["qwen-run"]))], gen)[0].text
        assert list(service._engines) == [str(tiny_qwen)]
    finally:
        server.should_exit = True


def test_headless_serve_takes_runs_of_two_bases(two_base_runs: dict[str, Path], tiny_model: Path, tiny_qwen: Path):
    from voicetune.serve import Served, headless_service

    service = headless_service({"q": two_base_runs["qwen-run"], "l": two_base_runs["llama-run"]})
    assert service._models() == {"base": Served(None, str(tiny_model)),
                                 "q": Served(two_base_runs["qwen-run"], str(tiny_qwen)),
                                 "l": Served(two_base_runs["llama-run"], str(tiny_model))}
    only = headless_service({"q": two_base_runs["qwen-run"]})
    assert only.base_model == str(tiny_qwen)  # one base among the runs: `base` is that one, as before
