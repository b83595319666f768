"""Spaces and sign-in: the app starting as a Space does, per-user workspaces, and who may see what.

Two signed-in users are driven through gradio_client with the username/password login, which gives real
server-side identities; Hugging Face sign-in is checked through the same identity function with a session
as gradio's OAuth routes write it.
"""

from __future__ import annotations

import contextvars
import inspect
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import MODEL_CACHE, ROOT

SPACE_ENV = {"SPACE_ID": "acme/voicetune", "SYSTEM": "spaces", "SPACE_AUTHOR_NAME": "acme",
             "SPACE_REPO_NAME": "voicetune", "SPACE_HOST": "acme-voicetune.hf.space"}
WARNING = "Your work on this Space is not saved permanently."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read().decode()


def test_app_starts_as_a_space_and_warns_about_storage(workspace: Path, tmp_path: Path):
    """`python app.py` unchanged, with the variables a Space sets and no /data: the page serves and warns."""
    port = free_port()
    env = {**os.environ, **SPACE_ENV, "SPACES_ZERO_GPU": "true", "VOICETUNE_HOST": "127.0.0.1",
           "VOICETUNE_PORT": str(port), "VOICETUNE_HOME": str(workspace), "VOICETUNE_CACHE": str(MODEL_CACHE)}
    log = open(tmp_path / "app.log", "w")
    app = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(240):  # start-up converts nothing (shared model cache); it still imports torch and gradio
            if app.poll() is not None:
                break
            try:
                status, page = get(f"http://127.0.0.1:{port}/")
                break
            except OSError:
                time.sleep(0.5)
        assert app.poll() is None, (tmp_path / "app.log").read_text()[-3000:]
        assert status == 200 and page.lstrip().lower().startswith("<!doctype html>")
        _, config = get(f"http://127.0.0.1:{port}/config")
        assert json.loads(config)["title"] == "voicetune"
        texts = [c.get("props", {}).get("value") for c in json.loads(config)["components"]]
        assert any(isinstance(t, str) and t.startswith(f"**{WARNING}**") for t in texts)
        assert any(isinstance(t, str) and t.startswith("**This Space runs on ZeroGPU**") for t in texts)
        assert "5 · Export" in config
    finally:
        app.terminate()
        app.wait(timeout=30)
        log.close()


def test_notices_follow_the_environment(monkeypatch: pytest.MonkeyPatch):
    from voicetune import spaces

    assert spaces.storage_warning() is None and spaces.hardware_notice() is None  # not a Space
    for k, v in SPACE_ENV.items():
        monkeypatch.setenv(k, v)
    assert spaces.storage_warning().startswith(f"**{WARNING}**")  # the workspace is not under /data
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert "enough to chat with and compare models, not to train" in spaces.hardware_notice()


def test_password_logins_come_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    from voicetune.ui import session

    assert session.mode() == "shared" and session.password_logins() is None
    monkeypatch.setenv("VOICETUNE_AUTH", "alice:pw1, bob:p:w2")
    assert session.mode() == "password"
    assert session.password_logins() == [("alice", "pw1"), ("bob", "p:w2")]
    monkeypatch.setenv("VOICETUNE_AUTH", "alice:pw1,bob-without-password")
    with pytest.raises(ValueError) as e:
        session.password_logins()
    assert str(e.value) == "VOICETUNE_AUTH entry 2 is not user:password (entries are separated by commas)"


def test_user_folders_stay_inside_the_users_folder(workspace: Path):
    from voicetune import store

    names = {store.user_dir_name(i) for i in ("user:../../etc", "user:Al/ice", "user:al-ice", "hf:12345")}
    assert len(names) == 4 and all("/" not in n and not n.startswith(".") for n in names)
    with store.user_scope("user:../../etc"):
        assert store.home().parent == store.root() / "users"
        assert store.runs_dir().is_relative_to(store.root() / "users")
    assert store.home() == store.root()  # outside a scope: the shared workspace


def gradio_request(username: str | None = None, session: dict | None = None):
    """A gr.Request as gradio builds one for a call: around a real Starlette request carrying the session."""
    import gradio as gr
    from starlette.requests import Request

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}
    if session is not None:
        scope["session"] = session
    return gr.Request(Request(scope), username=username)


def test_generator_handlers_keep_each_users_workspace_across_threads(monkeypatch: pytest.MonkeyPatch):
    """Gradio runs each step of a generator on a worker thread, setting the request before each: two users'
    generators interleaved step by step each see only their own workspace."""
    import gradio as gr
    from gradio.context import LocalContext

    from voicetune import store
    from voicetune.ui import session

    monkeypatch.setenv("VOICETUNE_AUTH", "alice:a,bob:b")

    def stream(n: int, request: gr.Request, progress=gr.Progress()):  # noqa: ANN001, B008
        for _ in range(n):
            yield str(store.home())

    wrapped = session.scoped(stream)
    assert inspect.signature(wrapped) == inspect.signature(stream) and inspect.isgeneratorfunction(wrapped)
    from gradio.utils import get_type_hints

    # gradio injects gr.Request by type hint; the hints of a wrapped module-level handler still resolve
    assert get_type_hints(session.scoped(session.whoami))["request"] is gr.Request

    def step(gen, user: str) -> str:  # noqa: ANN001
        out: list[str] = []

        def run() -> None:
            LocalContext.request.set(gradio_request(username=user))
            out.append(next(gen))

        t = threading.Thread(target=contextvars.copy_context().run, args=(run,))
        t.start()
        t.join()
        return out[0]

    alice, bob = wrapped(3, None), wrapped(3, None)
    seen = [(step(alice, "alice"), step(bob, "bob")) for _ in range(3)]
    users = store.root() / "users"
    assert seen == [(str(users / store.user_dir_name("user:alice")), str(users / store.user_dir_name("user:bob")))] * 3
    assert store.home() == store.root()

    # Signed out, a click is refused in plain words; a page load or timer changes nothing
    click, load = session.scoped(lambda: "x"), session.scoped(lambda: ("x", "y"), outputs=2, quiet=True)
    with pytest.raises(gr.Error) as e:
        click()
    assert e.value.message == session.SIGN_IN and e.value.message.startswith("Sign in again: ")
    assert [type(u).__name__ for u in load()] == ["dict", "dict"]  # two gr.skip() updates


def test_hugging_face_sign_in_and_the_allowed_organisation(monkeypatch: pytest.MonkeyPatch):
    import gradio as gr

    from voicetune.ui import session

    monkeypatch.setenv("SPACE_ID", "acme/voicetune")
    monkeypatch.setenv("OAUTH_CLIENT_ID", "client-id")
    assert session.mode() == "huggingface"
    userinfo = {"sub": "6501", "preferred_username": "alice", "name": "Alice",
                "orgs": [{"sub": "77", "preferred_username": "acme-marketing"}]}
    signed_in = gradio_request(session={"oauth_info": {"userinfo": userinfo, "expires_at": time.time() + 3600}})
    assert session.identity(signed_in) == "hf:6501"
    assert session.display_name(signed_in) == "alice"
    expired = gradio_request(session={"oauth_info": {"userinfo": userinfo, "expires_at": time.time() - 1}})
    assert session.identity(expired) is None and session.identity(gradio_request(session={})) is None
    # a username sent along without a signed session is no identity in this mode
    assert session.identity(gradio_request(username="alice", session={})) is None

    monkeypatch.setenv("VOICETUNE_ALLOWED_ORG", "Acme-Marketing")
    assert session.identity(signed_in) == "hf:6501"
    monkeypatch.setenv("VOICETUNE_ALLOWED_ORG", "acme-legal")
    with pytest.raises(gr.Error) as e:
        session.identity(signed_in)
    assert e.value.message.startswith("This voicetune is for members of acme-legal on Hugging Face.")


@pytest.fixture()
def two_users(workspace: Path, monkeypatch: pytest.MonkeyPatch):
    """The app behind the username/password login, and one gradio_client per user."""
    from gradio_client import Client

    from voicetune.ui import session
    from voicetune.ui.app import build_app

    monkeypatch.setenv("VOICETUNE_AUTH", "alice:alice-pw,bob:bob-pw")
    demo = build_app()
    demo.queue(default_concurrency_limit=1)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                auth=session.password_logins())
    url = f"http://127.0.0.1:{port}/"
    try:
        yield url, Client(url, auth=("alice", "alice-pw"), verbose=False), Client(url, auth=("bob", "bob-pw"), verbose=False)
    finally:
        demo.close()


def test_two_users_never_see_each_others_projects_or_runs(two_users, tmp_path: Path):
    from gradio_client import Client

    from tests.test_hub import fake_adapter
    from gradio_client.exceptions import AppError

    from voicetune import projects, store

    url, alice, bob = two_users
    with pytest.raises(Exception):  # noqa: B017 - without a login the app does not even describe itself
        Client(url, verbose=False)

    # The same project name twice: it would clash in one shared database
    assert alice.predict("Launch plan", api_name="/create_project")[-1] == "Created project “Launch plan”."
    assert bob.predict("Launch plan", api_name="/create_project")[-1] == "Created project “Launch plan”."
    users = store.root() / "users"
    alice_home, bob_home = users / store.user_dir_name("user:alice"), users / store.user_dir_name("user:bob")
    names = lambda home: [p["name"] for p in projects.list_projects(store.connect(home / store.DB_NAME))]  # noqa: E731
    assert "Launch plan" in names(alice_home) and "Launch plan" in names(bob_home)
    assert "Launch plan" not in names(store.root())  # the shared workspace saw nothing

    # Alice's run exports for Alice; for Bob the same id names nothing, in every tab that takes a run
    run_id = "20260101-000000-pirate-abc123"
    with store.user_scope("user:alice"):  # the files of a finished run: a zip export never loads its weights
        shutil.copytree(fake_adapter(tmp_path / "adapter"), store.run_dir(run_id))
    path, message = alice.predict(run_id, api_name="/export_zip")
    assert Path(path).name == f"{run_id}-adapter.zip" and message.startswith("Adapter zip ready")
    assert (alice_home / "exports" / run_id / f"{run_id}-adapter.zip").is_file()
    with pytest.raises(AppError, match=f"There is no finished run called {run_id} in your workspace"):
        bob.predict(run_id, api_name="/export_zip")
    with pytest.raises(AppError):
        bob.predict(run_id, api_name="/scorecard")
    assert not (bob_home / "exports" / run_id).exists()
    with pytest.raises(AppError):  # ids that climb out of the runs folder are refused outright
        bob.predict(f"../../{alice_home.name}/runs/{run_id}", api_name="/export_zip")


def test_a_save_after_the_sign_in_expired_says_to_sign_in_again(monkeypatch: pytest.MonkeyPatch):
    """Every handler of the built app that a person's own action fires (a blur that saves, a typed change, a click)
    refuses in plain words when the Hugging Face sign-in has expired; only page loads, timers and chained steps
    stay quiet. Nothing is written to any workspace."""
    import gradio as gr
    from gradio.context import LocalContext

    from voicetune import store
    from voicetune.ui import session
    from voicetune.ui.app import build_app

    monkeypatch.setenv("VOICETUNE_AUTH", "alice:a")
    demo = build_app()  # (Hugging Face sign-in's button needs gradio's OAuth extras to build; the rule is the same)
    monkeypatch.delenv("VOICETUNE_AUTH")
    monkeypatch.setenv("SPACE_ID", "acme/voicetune")
    monkeypatch.setenv("OAUTH_CLIENT_ID", "client-id")
    assert session.mode() == "huggingface"
    userinfo = {"sub": "6501", "preferred_username": "alice"}
    LocalContext.request.set(gradio_request(session={"oauth_info": {"userinfo": userinfo, "expires_at": time.time() - 1}}))
    saves = [f for f in demo.fns.values() if f.fn is not None and any(t == "blur" for _, t in f.targets)]
    # project name, style guide, system prompt, validation share, tags, the search box and Compare's style guide
    assert len(saves) == 7
    for block_fn in saves:
        assert not session.is_quiet(block_fn)
        with pytest.raises(gr.Error) as e:
            block_fn.fn(*[None] * len(block_fn.inputs))
        assert e.value.message == session.SIGN_IN
    loads = [f for f in demo.fns.values() if f.fn is not None and f.targets and all(t == "load" for _, t in f.targets)]
    assert loads and all(session.is_quiet(f) for f in loads)
    assert not (store.root() / "users").exists() and not (store.root() / store.DB_NAME).exists()
