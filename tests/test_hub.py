"""Hub push against a local fake Hub: private repositories, the right files, and the token nowhere but the header.

huggingface_hub talks to the fake through `endpoint=`; nothing reaches the network. The fake answers
"regular" to every preupload, so file contents arrive inline in the commit and can be compared byte for byte.
It knows one account ("tester", for whoami) and the repositories it is told already exist, with their visibility.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import run_cli

FAKE_SHA = "b" * 40  # the one commit every model in the fake Hub is at
TOKEN = "hf_TestOnlyTokenAbCdEfGhIjKlMnOpQrStUv"  # never a real token: the app owner's HF_TOKEN
USER_TOKEN = "hf_oauth_SignedInUserTokenZyXwVuTsRq"  # never a real token: a signed-in user's own OAuth token


class FakeHub:
    """Just enough of the Hub's HTTP API for create_repo + upload_folder, recording every request."""

    def __init__(self, fail_create_with: tuple[int, str] | None = None, existing: dict[str, bool] | None = None,
                 models: dict[str, dict[str, bytes]] | None = None, gated: set[str] | None = None):
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.files: dict[tuple[str, str], bytes] = {}
        self.existing = dict(existing or {})  # "models/acme/voice" or "datasets/acme/voice-data" -> private?
        self.models = dict(models or {})  # "acme/model" -> {file name: bytes}, served for download
        self.gated = set(gated or ())  # model ids whose download is refused as gated (403)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # noqa: ANN002
                pass

            def _reply(self, code: int, body: dict, error_code: str | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                if error_code:
                    self.send_header("X-Error-Code", error_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _model_file(self, head: bool) -> bool:
                """/api/models/<id>/revision|tree/... and /<id>/resolve/<sha>/<file>: a model to download."""
                path = self.path.split("?")[0]
                for repo, files in {**hub.models, **{g: {} for g in hub.gated}}.items():
                    if path.startswith((f"/api/models/{repo}/", f"/{repo}/resolve/")) and repo in hub.gated:
                        self._reply(403, {"error": f"Access to model {repo} is restricted. You must have access "
                                                   "to it and be authenticated to access it."}, error_code="GatedRepo")
                        return True
                    if path == f"/api/models/{repo}":  # model_info with files_metadata: each file's size
                        self._reply(200, {"id": repo, "sha": FAKE_SHA,
                                          "siblings": [{"rfilename": f, "size": len(d)} for f, d in files.items()]})
                        return True
                    if path.startswith(f"/api/models/{repo}/revision/"):
                        self._reply(200, {"id": repo, "sha": FAKE_SHA, "siblings": [{"rfilename": f} for f in files]})
                        return True
                    if path.startswith(f"/api/models/{repo}/tree/"):
                        self._reply(200, [{"type": "file", "path": f, "size": len(data), "oid": f"{i:040x}"}
                                          for i, (f, data) in enumerate(files.items())])
                        return True
                    if path.startswith(f"/{repo}/resolve/"):
                        data = files[path.split("/resolve/", 1)[1].split("/", 1)[1]]
                        self.send_response(200)
                        for key, value in (("X-Repo-Commit", FAKE_SHA), ("ETag", f'"{len(data):040x}"'),
                                           ("Content-Length", str(len(data)))):
                            self.send_header(key, value)
                        self.end_headers()
                        if not head:
                            self.wfile.write(data)
                        return True
                return False

            def do_HEAD(self):  # noqa: N802
                hub.requests.append(("HEAD", self.path, {k.lower(): v for k, v in self.headers.items()}, b""))
                if not self._model_file(head=True):
                    self._reply(404, {"error": "not in the fake"})

            def do_GET(self):  # noqa: N802
                hub.requests.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}, b""))
                if self._model_file(head=False):
                    return
                path = self.path.split("?")[0]
                if path == "/api/whoami-v2":
                    return self._reply(200, {"type": "user", "name": "tester", "fullname": "Tester", "orgs": []})
                repo = path.removeprefix("/api/")  # repo_info: /api/models/<owner>/<name>
                if repo.startswith(("models/", "datasets/")):
                    if repo in hub.existing:
                        return self._reply(200, {"id": repo.split("/", 1)[1], "private": hub.existing[repo]})
                    return self._reply(404, {"error": "Repository not found"}, error_code="RepoNotFound")
                self._reply(404, {"error": "not in the fake"})

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append(("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                base, path = f"http://127.0.0.1:{self.server.server_port}", self.path.split("?")[0]
                if path == "/api/repos/create":
                    if fail_create_with:
                        return self._reply(fail_create_with[0], {"error": fail_create_with[1]})
                    req = json.loads(body)
                    prefix = "datasets/" if req["type"] == "dataset" else ""
                    owner = req.get("organization") or "tester"
                    url = f"{base}/{prefix}{owner}/{req['name']}"
                    key = f"{req['type']}s/{owner}/{req['name']}"
                    if key in hub.existing:  # as the Hub does: the repository and its visibility stay as they are
                        return self._reply(409, {"error": "You already created this repo", "url": url})
                    hub.existing[key] = req.get("visibility") == "private"
                    return self._reply(200, {"url": url})
                if path == "/api/validate-yaml":
                    return self._reply(200, {})
                if "/preupload/" in path:
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                       for f in files]})
                if "/commit/" in path:
                    repo = path.removeprefix("/api/").split("/commit/")[0]
                    for line in body.splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            hub.files[(repo, item["value"]["path"])] = base64.b64decode(item["value"]["content"])
                    return self._reply(200, {"commitUrl": f"{base}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40})
                self._reply(404, {"error": f"no route {path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def created(self) -> list[dict]:
        return [json.loads(b) for m, p, h, b in self.requests if p == "/api/repos/create"]

    def repo_files(self, repo: str) -> dict[str, bytes]:
        return {path: data for (r, path), data in self.files.items() if r == repo}


@pytest.fixture()
def online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The token in HF_TOKEN, no login cache, and huggingface_hub allowed to reach localhost."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))  # no login cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the tests' offline switch, lifted for the fake only


@pytest.fixture()
def fake_hub():
    hub = FakeHub()
    yield hub
    hub.server.shutdown()


def copy_run(adapter: Path, run_id: str = "20260101-000000-pirate-abc123") -> Path:
    from voicetune import store

    dest = store.run_dir(run_id)
    shutil.copytree(adapter, dest)
    return dest


def every_text(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_push_creates_private_repos_with_card_and_leaks_no_token(
    pirate_adapter: Path, fake_hub: FakeHub, online: None, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture,
):
    from voicetune import export, hub, store

    caplog.set_level(logging.DEBUG)  # every library's debug log, huggingface_hub's request log included
    run = copy_run(pirate_adapter)
    statuses: list[str] = []
    pushed = hub.push_run(run, "pirate-voice", include_merged=True, include_dataset=True, merged_dtype="bf16",
                          endpoint=fake_hub.url, on_status=statuses.append)

    assert [(p.kind, p.repo_id) for p in pushed] == [
        ("adapter", "tester/pirate-voice"), ("merged model", "tester/pirate-voice-merged"),
        ("dataset", "tester/pirate-voice-data")]
    assert pushed[2].url == f"{fake_hub.url}/datasets/tester/pirate-voice-data"
    assert fake_hub.created() == [
        {"name": "pirate-voice", "organization": None, "visibility": "private", "type": "model"},
        {"name": "pirate-voice-merged", "organization": None, "visibility": "private", "type": "model"},
        {"name": "pirate-voice-data", "organization": None, "visibility": "private", "type": "dataset"}]
    assert {h.get("authorization") for _, _, h, _ in fake_hub.requests} == {f"Bearer {TOKEN}"}

    # The adapter repository holds exactly what the zip holds, model card included
    adapter_files = fake_hub.repo_files("models/tester/pirate-voice")
    expected = export.adapter_files(run)
    assert adapter_files.keys() == expected.keys()
    for name, content in expected.items():
        assert adapter_files[name] == (content.read_bytes() if isinstance(content, Path) else content), name
    assert adapter_files["README.md"].startswith(b"---\nbase_model: HuggingFaceTB/SmolLM2-135M-Instruct\nlibrary_name: peft\n")

    merged = fake_hub.repo_files("models/tester/pirate-voice-merged")
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", export.MERGE_RECORD} <= merged.keys()
    assert b"library_name: transformers" in merged["README.md"]
    assert json.loads(merged["config.json"])["dtype"] == "bfloat16"

    data = fake_hub.repo_files("datasets/tester/pirate-voice-data")
    record = json.loads((run / "run.json").read_text())
    assert data["conversations.jsonl"] == Path(record["data"]["file"]).read_bytes()
    assert data["validation.jsonl"] == (run / "heldout.jsonl").read_bytes()
    assert statuses[0] == "preparing the adapter" and statuses[-1] == "uploading the dataset to pirate-voice-data"

    # Nothing staged is left behind, and the token is in no file, no log line and no output
    assert not list(store.home().glob(".push-*"))
    out = capsys.readouterr()
    assert caplog.text  # the debug log really was captured
    for where, text in [("log", caplog.text.encode()), ("stdout", out.out.encode()), ("stderr", out.err.encode()),
                        *every_text(tmp_path).items(), *((str(k), v) for k, v in fake_hub.files.items())]:
        assert TOKEN.encode() not in text, where


def fake_adapter(folder: Path) -> Path:
    """The files a finished run has, with placeholder weights: enough for staging, which never loads them."""
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"run_id": folder.name, "base_model": "embedded:smollm2-135m-instruct",
                                                 "config": {}, "data": {}, "metrics": {}}))
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/local/path", "r": 8}))
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    (folder / "config.yaml").write_text("epochs: 1\n")
    return folder


def test_a_refused_push_never_shows_the_token(online: None, tmp_path: Path):
    """The Hub's error text may echo what it was sent; the message users see has the token cut out."""
    from voicetune import hub, store
    from voicetune.ui import export_tab

    failing = FakeHub(fail_create_with=(401, f"Invalid credentials in Authorization header: Bearer {TOKEN}"))
    try:
        run = fake_adapter(store.run_dir("20260101-000000-voice-abc123"))
        with pytest.raises(hub.HubError) as e:
            hub.push_run(run, "acme/voice", endpoint=failing.url)
        assert TOKEN not in str(e.value)
        assert str(e.value).startswith("pushing to the Hub failed: ")
        assert "401" in str(e.value) and "Bearer ***" in str(e.value)

        # The same through the app's handler (a gr.Error) and the command line (stderr)
        import gradio as gr

        with pytest.raises(gr.Error) as ui_error:
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("HF_ENDPOINT", failing.url)
                mp.setenv("VOICETUNE_PUSH_WITH_OWNER_TOKEN", "1")
                export_tab.push(run.name, "acme/voice", True, False, False, "bf16", False, None)
        assert TOKEN not in ui_error.value.message and "Pushing to the Hub failed" in ui_error.value.message

        result = run_cli("push", "--run", str(run), "--repo", "acme/voice",
                         env={"HF_ENDPOINT": failing.url, "HF_HUB_OFFLINE": "0", "HF_TOKEN": TOKEN})
        assert result.returncode == 3
        assert "error: pushing to the Hub failed" in result.stderr
        assert TOKEN not in result.stderr + result.stdout
    finally:
        failing.server.shutdown()
    for where, text in every_text(tmp_path).items():
        assert TOKEN.encode() not in text, where


def test_token_comes_from_hf_token_or_the_login(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from voicetune import hub

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))  # read at import time
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(hub.HubError, match="^no Hugging Face token: set the HF_TOKEN secret"):
        hub.resolve_token()
    (tmp_path / "hf-home").mkdir()
    (tmp_path / "hf-home" / "token").write_text("hf_FromTheLoginCache123456")  # where `huggingface-cli login` puts it
    assert hub.resolve_token() == "hf_FromTheLoginCache123456"
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert hub.resolve_token() == TOKEN  # the secret wins over the login
    assert sorted(p.name for p in (tmp_path / "hf-home").iterdir()) == ["token"]  # nothing written by us


def test_bad_names_and_offline_mode_are_refused_before_any_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from huggingface_hub import constants

    from voicetune import failures, hub, store

    # huggingface_hub reads HF_HUB_OFFLINE once, when first imported; set it as an offline machine has it.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    with pytest.raises(hub.HubError, match="^'my voice!' is not a valid repository name"):
        hub.check_repo_name("my voice!")
    with pytest.raises(hub.HubError, match="^enter a repository name"):
        hub.check_repo_name("  ")
    assert hub.check_repo_name(" acme/voice ") == "acme/voice"
    run = fake_adapter(store.run_dir("20260101-000000-voice-abc123"))
    with pytest.raises(hub.HubError, match="^HF_HUB_OFFLINE is set"):  # the tests run offline
        hub.push_run(run, "acme/voice", endpoint="http://127.0.0.1:9")
    assert failures.scrub(f"a {TOKEN} b hf_OtherLookingToken99", TOKEN) == "a *** b hf_***"


def test_the_dataset_is_pushed_only_as_the_run_read_it(online: None, tmp_path: Path):
    from voicetune import hub, runs, store
    from voicetune.runs import files_fingerprint

    run = fake_adapter(store.run_dir("20260101-000000-voice-abc123"))
    data = tmp_path / "voice.jsonl"
    data.write_text('{"messages": []}\n')
    runs.keep_training_data(run, data)  # what training keeps beside the adapter
    record = json.loads((run / "run.json").read_text())
    record["data"] = {"file": str(data), "sha256_16": files_fingerprint([data])}
    (run / "run.json").write_text(json.dumps(record))
    (run / runs.TRAINING_DATA).write_text('{"messages": [1]}\n')  # the kept copy was edited after training
    with pytest.raises(hub.HubError) as e:
        hub.push_run(run, "acme/voice", include_dataset=True, endpoint="http://127.0.0.1:9")  # fails before any request
    assert str(e.value) == ("the conversations of 20260101-000000-voice-abc123 do not match what the run trained "
                            "on; push without the dataset, or train again")
    (run / runs.TRAINING_DATA).unlink()
    with pytest.raises(hub.HubError, match="^the conversations 20260101-000000-voice-abc123 trained on are not in "
                                           "this workspace"):
        hub.push_run(run, "acme/voice", include_dataset=True, endpoint="http://127.0.0.1:9")


def shared_run_naming_a_secret(tmp_path: Path) -> tuple[Path, Path]:
    """A run as a teammate's zip could bring it: its record names a file of someone else, with its true hash."""
    from voicetune import store
    from voicetune.runs import files_fingerprint

    secret = tmp_path / "alice" / "conversations.jsonl"
    secret.parent.mkdir()
    secret.write_text('{"messages": [{"role": "user", "content": "my private order 4711"}]}\n')
    run = fake_adapter(store.run_dir("20260101-000000-shared-abc123"))
    record = json.loads((run / "run.json").read_text())
    record["data"] = {"file": str(secret), "sha256_16": files_fingerprint([secret])}
    (run / "run.json").write_text(json.dumps(record))
    return run, secret


def test_a_run_record_cannot_make_a_push_upload_a_file_outside_the_workspace(fake_hub: FakeHub, tmp_path: Path):
    """Issue 15: the dataset came from the path in run.json, which a shared adapter's author controls."""
    run, secret = shared_run_naming_a_secret(tmp_path)
    result = run_cli("push", "--run", run.name, "--repo", "acme/voice", "--dataset",
                     env={"HF_ENDPOINT": fake_hub.url, "HF_HUB_OFFLINE": "0", "HF_TOKEN": TOKEN})
    assert (result.returncode, result.stderr) == (3, (
        "error: the conversations 20260101-000000-shared-abc123 trained on are not in this workspace (a teammate's "
        "shared adapter carries none); push without the dataset, or train again\n"))
    assert fake_hub.requests == []  # refused before any request
    assert b"4711" not in b"".join(fake_hub.files.values())


def test_a_push_checks_the_dataset_before_it_merges(fake_hub: FakeHub, tmp_path: Path, workspace: Path):
    """Cheap before expensive: a dataset that cannot be pushed is refused before the merge converts a model."""
    run, _ = shared_run_naming_a_secret(tmp_path)
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    result = run_cli("push", "--run", run.name, "--repo", "acme/voice", "--merged", "--dataset",
                     env={"HF_ENDPOINT": fake_hub.url, "HF_HUB_OFFLINE": "0", "HF_TOKEN": TOKEN,
                          "VOICETUNE_CACHE": str(cache)})
    assert result.returncode == 3 and "are not in this workspace" in result.stderr, result.stderr
    assert list(cache.iterdir()) == [] and fake_hub.requests == []


def test_nothing_that_leaves_the_workspace_names_a_server_path(online: None, fake_hub: FakeHub, tmp_path: Path,
                                                              workspace: Path):
    """The zip (through the CLI), the Hub push and the model card carry names, never this machine's folders."""
    import zipfile

    from voicetune import export, hub, store

    run = fake_adapter(store.run_dir("20260101-000000-voice-abc123"))
    jobs_folder = store.root() / "jobs" / run.name
    local_base = tmp_path / "models" / "my-llama"
    config = {"data": str(jobs_folder / "data.jsonl"), "out": str(run), "base_model": str(local_base),
              "checkpoint_dir": str(jobs_folder / "checkpoints"), "heldout_data": str(jobs_folder / "heldout.jsonl"),
              "epochs": 3}
    record = {"run_id": run.name, "base_model": str(local_base), "base_model_path": str(local_base),
              "data": {"file": str(jobs_folder / "data.jsonl"), "train": 9}, "config": config, "metrics": {}}
    (run / "run.json").write_text(json.dumps(record))
    import yaml

    (run / "config.yaml").write_text(yaml.safe_dump(config))

    result = run_cli("export", "--run", run.name, "--zip", env={"VOICETUNE_HOME": str(workspace)})
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(result.stdout.strip()) as z:
        shared = {name: z.read(name) for name in z.namelist()}
    hub.push_run(run, "acme/voice", endpoint=fake_hub.url)
    shared.update({f"hub:{path}": data for (_, path), data in fake_hub.files.items()})
    for name, data in shared.items():
        for private in (str(tmp_path), "/models/", "/jobs/", "checkpoints"):
            assert private.encode() not in data, (name, private)
    public = json.loads(shared["run.json"])
    assert public["data"] == {"file": "data.jsonl", "train": 9} and "base_model_path" not in public
    assert public["config"] == {"data": "data.jsonl", "base_model": "my-llama", "heldout_data": "heldout.jsonl",
                                "epochs": 3}
    assert yaml.safe_load(shared["config.yaml"]) == public["config"]
    assert json.loads(shared["adapter_config.json"])["base_model_name_or_path"] == "my-llama"
    assert "| file | data.jsonl |" in shared["README.md"].decode()
    assert export.public_record(public) == public  # the public copy is already public


def signed_in_with_hugging_face(monkeypatch: pytest.MonkeyPatch, hub_url: str):
    """The app as a Space with Hugging Face sign-in runs it, and the user's own OAuth token as gradio injects it."""
    import gradio as gr

    monkeypatch.setenv("SPACE_ID", "acme/voicetune")
    monkeypatch.setenv("OAUTH_CLIENT_ID", "client-id")
    monkeypatch.setenv("HF_ENDPOINT", hub_url)
    return gr.OAuthToken(token=USER_TOKEN, scope="openid profile write-repos manage-repos", expires_at=None)


def test_the_app_pushes_with_the_signed_in_users_token_never_the_owners(online: None, fake_hub: FakeHub,
                                                                        monkeypatch: pytest.MonkeyPatch):
    import gradio as gr

    from voicetune import store
    from voicetune.ui import export_tab

    run = fake_adapter(store.run_dir("20260101-000000-voice-abc123"))  # HF_TOKEN (the owner's) is set by `online`
    user = signed_in_with_hugging_face(monkeypatch, fake_hub.url)
    message, confirm = export_tab.push(run.name, "voice", True, False, False, "bf16", False, user)
    assert message == f"Pushed:\n- adapter: [tester/voice]({fake_hub.url}/tester/voice) (private)"
    assert confirm == {"__type__": "update", "visible": False, "value": False}
    assert fake_hub.created() == [{"name": "voice", "organization": None, "visibility": "private", "type": "model"}]
    assert {h.get("authorization") for _, _, h, _ in fake_hub.requests} == {f"Bearer {USER_TOKEN}"}
    # Signed out (or the sign-in expired): no push at all, and never the owner's token as a fallback
    before = len(fake_hub.requests)
    with pytest.raises(gr.Error) as e:
        export_tab.push(run.name, "voice", True, False, False, "bf16", False, None)
    assert e.value.message == export_tab.NEED_HF_SIGN_IN and len(fake_hub.requests) == before


def test_an_existing_repository_is_not_overwritten_without_a_confirmation(online: None, monkeypatch: pytest.MonkeyPatch):
    from voicetune import hub, store
    from voicetune.ui import export_tab

    run = fake_adapter(store.run_dir("20260101-000000-voice-abc123"))
    public = FakeHub(existing={"models/tester/voice": False})  # a public repository of the user's, made elsewhere
    try:
        user = signed_in_with_hugging_face(monkeypatch, public.url)
        message, confirm = export_tab.push(run.name, "voice", True, False, False, "bf16", False, user)
        assert message == ("⚠️ This repository already exists on the Hub: tester/voice (public). Nothing was uploaded. "
                           "Choose another name, or confirm that the new files should be added to it (its visibility "
                           "stays as it is): tick **Add to the existing repository** and press Push again.")
        assert confirm == {"__type__": "update", "visible": True, "value": False}
        assert public.created() == [] and public.files == {}  # nothing created, nothing committed
        # Confirmed: the files go in, and the message says public (what it is), not "private" (what was ticked)
        message, _ = export_tab.push(run.name, "voice", True, False, False, "bf16", True, user)
        assert message == f"Pushed:\n- adapter: [tester/voice]({public.url}/tester/voice) (public)"
        assert public.existing == {"models/tester/voice": False}
        assert public.repo_files("models/tester/voice").keys() == {"adapter_config.json", "adapter_model.safetensors",
                                                                    "README.md", "load_adapter.py", "run.json",
                                                                    "config.yaml"}
        # The library call itself: every repository the push would write is looked up first
        with pytest.raises(hub.RepoExists) as e:
            hub.push_run(run, "tester/voice", include_dataset=False, include_merged=False, endpoint=public.url)
        assert e.value.existing == {"tester/voice": "public"}
    finally:
        public.server.shutdown()


def test_without_hugging_face_sign_in_the_owners_token_needs_the_owners_setting(online: None, fake_hub: FakeHub,
                                                                               monkeypatch: pytest.MonkeyPatch):
    import gradio as gr

    from voicetune import store
    from voicetune.ui import export_tab, session

    monkeypatch.setenv("VOICETUNE_AUTH", "alice:a,bob:b")
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    assert session.mode() == "password"
    run = fake_adapter(store.run_dir("20260101-000000-voice-abc123"))
    with pytest.raises(gr.Error) as e:
        export_tab.push(run.name, "voice", True, False, False, "bf16", False, None)
    assert e.value.message == export_tab.OWNER_TOKEN_OFF and fake_hub.requests == []
    assert export_tab.token_status().startswith("Pushing is off: it would push with its owner's Hugging Face token")
    monkeypatch.setenv("VOICETUNE_PUSH_WITH_OWNER_TOKEN", "1")
    message, _ = export_tab.push(run.name, "voice", True, False, False, "bf16", False, None)
    assert message.startswith("Pushed:\n- adapter: [tester/voice]")
    assert {h.get("authorization") for _, _, h, _ in fake_hub.requests} == {f"Bearer {TOKEN}"}
