"""Hostile requests against the running app over loopback: paths it must not serve, uploads with hostile names
or sizes, zips built to escape or explode, files that lie about their kind, and run ids or adapters tampered
with on their way to an endpoint. Also the serving settings a page receives (voicetune/ui/settings.py)."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.running_app import MODEL_CACHE, ROOT, RunningApp, serving
from tests.test_app import raw_event
from voicetune import archives
from voicetune.ui import settings

BASE = "Base model"
GOOD_LINE = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> RunningApp:
    with serving(tmp_path_factory.mktemp("security") / "home") as running:
        yield running


@pytest.fixture(scope="module")
def client(app: RunningApp):
    return app.client()


@pytest.fixture(scope="module")
def adapter_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter of the embedded model with a real run record, as a teammate shares it, written directly
    (PEFT's key names and shapes, zero B matrices: it answers as the base model does) so it costs no model load."""
    import torch
    from safetensors.torch import save_file

    from voicetune import models
    from voicetune.templates import template_fingerprint

    folder = tmp_path_factory.mktemp("shared") / "20260101-120000-cosmo-abc123"
    folder.mkdir()
    path = models.resolve_base_model(None)
    config = json.loads((Path(path) / "config.json").read_text())
    hidden, rank = config["hidden_size"], 4
    kv = config["num_key_value_heads"] * hidden // config["num_attention_heads"]
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for module, out in (("q_proj", hidden), ("v_proj", kv)):
            key = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, hidden) * 0.01
            tensors[f"{key}.lora_B.weight"] = torch.zeros(out, rank)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
         "target_modules": ["q_proj", "v_proj"], "bias": "none", "base_model_name_or_path": path}))
    record = {"run_id": folder.name, "base_model": models.default_base_model(),
              "base_model_hash": models.base_model_fingerprint(path),
              "template_hash": template_fingerprint(models.load_tokenizer(path)), "config": {}, "metrics": {}}
    (folder / "run.json").write_text(json.dumps(record), encoding="utf-8")
    (folder / "config.yaml").write_text("epochs: 3\n", encoding="utf-8")
    return folder


def zip_of(path: Path, entries: dict[str, bytes], *, symlinks: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if name in symlinks:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, data)
    return path


def adapter_entries(folder: Path) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in ("adapter_model.safetensors", "adapter_config.json", "run.json",
                                                   "config.yaml")}


def refused(client, api_name: str, *args) -> str:
    """The plain message of a gr.Error raised by the endpoint (gradio_client raises AppError with it)."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as caught:
        client.predict(*args, api_name=api_name)
    return str(caught.value)


def runs_in(app: RunningApp) -> list[str]:
    folder = app.home / "runs"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- What the server serves and tells the page ----------------------------------------------------------

def test_the_page_gets_the_documented_settings(app: RunningApp) -> None:
    config = httpx.get(app.url + "/config").json()
    assert config["show_error"] is False and config["run_history"] is False
    assert config["max_file_size"] == settings.MAX_UPLOAD_MB * 1024 * 1024
    assert config["footer_links"] == ["api"] and config["pwa"] is False and config["mcp_server"] is False
    assert config["analytics_enabled"] is False
    assert httpx.get(app.url + "/monitoring").status_code == 403
    assert httpx.get(app.url + "/gradio_api/runs").status_code == 404


def test_the_file_route_serves_neither_system_files_nor_the_workspace_nor_the_model_cache(app: RunningApp) -> None:
    (app.home / "exports").mkdir(exist_ok=True)
    (app.home / "exports" / "secret.jsonl").write_text(GOOD_LINE + "\n", encoding="utf-8")
    model_file = next(MODEL_CACHE.rglob("config.json"))
    for target in ("/etc/passwd", app.home / "voicetune.db", app.home / "exports" / "secret.jsonl", model_file,
                   f"{ROOT}/app.py", "../../../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "workspace/voicetune.db"):
        r = httpx.get(f"{app.url}/gradio_api/file={target}")
        # 403 "File not allowed"; a ../ path may already be folded by the URL into a route that does not exist (404)
        assert r.status_code == 403 or (".." in str(target) and r.status_code == 404), (target, r.status_code)
        assert "root:" not in r.text and "SQLite" not in r.text
    # The control: a file the app was given is served back.
    uploaded = httpx.post(app.url + "/gradio_api/upload", files={"files": ("ok.jsonl", GOOD_LINE.encode())}).json()[0]
    assert httpx.get(f"{app.url}/gradio_api/file={uploaded}").text == GOOD_LINE


def test_an_upload_named_dot_dot_is_stored_under_a_generated_name(app: RunningApp) -> None:
    before = (ROOT / "app.py").read_bytes()
    r = httpx.post(app.url + "/gradio_api/upload", files={"files": ("../../app.py", b"print('replaced')\n")})
    stored = Path(r.json()[0])
    assert r.status_code == 200 and (ROOT / "app.py").read_bytes() == before
    assert stored.name == "app.py" and ".." not in stored.parts
    assert len(stored.parent.name) == 64 and stored.parent.parent == Path("/tmp/gradio")  # a content hash folder
    assert stored.read_bytes() == b"print('replaced')\n"


def test_an_oversized_upload_is_refused_with_a_message(app: RunningApp) -> None:
    big = b"x" * (settings.MAX_UPLOAD_MB * 1024 * 1024 + 1)
    r = httpx.post(app.url + "/gradio_api/upload", files={"files": ("big.jsonl", big)}, timeout=120)
    assert r.status_code == 413
    assert "File size exceeded maximum allowed size of 52428800 bytes" in r.text


def test_a_file_whose_content_does_not_match_its_extension_is_refused(client, tmp_path: Path) -> None:
    from gradio_client import handle_file

    png = tmp_path / "conversations.jsonl"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    report = client.predict(handle_file(str(png)), "", "auto", None, None, "", api_name="/preview_import")[0]
    assert "conversations.jsonl is a PNG image, not UTF-8 text" in report and "0 accepted" in report
    fake_zip = tmp_path / "voice-adapter.zip"
    fake_zip.write_text("adapter_model.safetensors\n", encoding="utf-8")
    message = refused(client, "/add_shared_adapter", handle_file(str(fake_zip)))
    assert "voice-adapter.zip is not a zip archive (its content does not match its name)" in message


# --- Archives -------------------------------------------------------------------------------------------

def test_hostile_zips_are_refused_through_the_app_and_write_nothing(app: RunningApp, client, tmp_path: Path) -> None:
    from gradio_client import handle_file

    safe = {"run.json": b"{}", "adapter_config.json": b"{}"}
    cases = {
        "bomb.zip": ({**safe, "adapter_model.safetensors": bytes(30 * 1024 * 1024)}, "this looks like a zip bomb"),
        "dotdot.zip": ({**safe, "../../app.py": b"x"}, "entry '../../app.py' points outside the archive folder"),
        "absolute.zip": ({**safe, "/etc/cron.d/evil": b"x"}, "entry '/etc/cron.d/evil' has an absolute path"),
        "many.zip": ({f"f{i}.json": b"{}" for i in range(archives.MAX_ENTRIES + 1)}, "holds 17 entries"),
        "extra.zip": ({**safe, "run.sh": b"rm -rf /"}, "unexpected entry 'run.sh'"),
        "link.zip": ({**safe, "adapter_model.safetensors": b"/etc/passwd"}, "is a symbolic link"),
        "partial.zip": (safe, "adapter_model.safetensors is missing"),
    }
    for name, (entries, expected) in cases.items():
        path = zip_of(tmp_path / name, entries, symlinks=("adapter_model.safetensors",) if name == "link.zip" else ())
        message = refused(client, "/add_shared_adapter", handle_file(str(path)))
        assert "This zip was not added" in message and expected in message, (name, message)
        assert "Traceback" not in message
    assert runs_in(app) == []  # not even a temporary folder is left
    assert not (ROOT.parent / "app.py").exists() and not Path("/etc/cron.d/evil").exists()


def test_a_lying_zip_header_and_a_renamed_weights_file_are_refused(adapter_folder: Path, tmp_path: Path,
                                                                   workspace: Path) -> None:
    from voicetune import store

    # A header that says 10 bytes for an entry that holds 100: caught while unpacking, not trusted.
    path = zip_of(tmp_path / "liar.zip", adapter_entries(adapter_folder))
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("run.json")
    real = info.file_size.to_bytes(4, "little")
    data = data.replace(real + b"\x08\x00", (5).to_bytes(4, "little") + b"\x08\x00")  # local and central sizes
    path.write_bytes(bytes(data))
    with pytest.raises(archives.ArchiveError, match="liar.zip"):
        archives.import_adapter_zip(path)
    # Weights that are not a safetensors file (a PNG renamed) are refused before any run exists.
    entries = {**adapter_entries(adapter_folder), "adapter_model.safetensors": b"\x89PNG\r\n\x1a\n" + bytes(64)}
    with pytest.raises(archives.ArchiveError, match="not a valid safetensors file"):
        archives.import_adapter_zip(zip_of(tmp_path / "png.zip", entries))
    # An adapter of another copy of the base model: the hash check refuses it.
    record = json.loads((adapter_folder / "run.json").read_text())
    entries = {**adapter_entries(adapter_folder), "run.json": json.dumps({**record, "base_model_hash": "0" * 16}).encode()}
    with pytest.raises(archives.ArchiveError, match="trained on another copy of 'embedded:smollm2-135m-instruct' than "
                                                    "this app's base model"):
        archives.import_adapter_zip(zip_of(tmp_path / "other.zip", entries))
    assert [p.name for p in store.runs_dir().iterdir()] == []


def test_a_shared_adapter_zip_becomes_a_new_run_under_a_generated_id(adapter_folder: Path, tmp_path: Path,
                                                                     workspace: Path) -> None:
    from voicetune import store
    from voicetune.runs import finished as finished_runs

    entries = {**adapter_entries(adapter_folder), "README.md": b"# card\n", "load_adapter.py": b"print(1)\n"}
    run_id = archives.import_adapter_zip(zip_of(tmp_path / "cosmo-adapter.zip", entries))
    assert run_id.endswith(run_id[-6:]) and "shared-cosmo-abc123" in run_id and run_id != adapter_folder.name
    folder = store.run_dir(run_id)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter_config.json",
                                                         "adapter_model.safetensors", "config.yaml", "run.json"]
    assert (folder / "adapter_model.safetensors").read_bytes() == (adapter_folder / "adapter_model.safetensors").read_bytes()
    record = json.loads((folder / "run.json").read_text())
    assert record["run_id"] == run_id and record["imported_from"] == adapter_folder.name
    assert [r["run_id"] for r in finished_runs()] == [run_id]


def test_a_shared_adapter_naming_another_base_is_refused_before_anything_loads(
        app: RunningApp, client, adapter_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: the record's base_model is what the scorecard loads (or downloads); a hash that matches this
    app's base proves nothing about the name beside it. Only the app's own base models are accepted."""
    from gradio_client import handle_file

    record = json.loads((adapter_folder / "run.json").read_text())
    entries = {**adapter_entries(adapter_folder), "run.json": json.dumps({**record, "base_model": "evil/model"}).encode()}
    message = refused(client, "/add_shared_adapter", handle_file(str(zip_of(tmp_path / "evil.zip", entries))))
    assert message == ("This zip was not added: this adapter was trained on the base model 'evil/model', which is "
                       "not on this machine; only adapters of the embedded model, this app's base model or a model "
                       "downloaded here can be added (download the base first: Project settings)")
    assert runs_in(app) == []
    # Refused before any model is converted or loaded: an empty model cache stays empty.
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    monkeypatch.setenv("VOICETUNE_CACHE", str(cache))
    with pytest.raises(archives.ArchiveError, match="^this adapter was trained on the base model 'evil/model'"):
        archives.import_adapter_zip(zip_of(tmp_path / "evil2.zip", entries))
    assert list(cache.iterdir()) == []
    assert archives.allowed_base_models() == ["embedded:smollm2-135m-instruct"]
    monkeypatch.setenv("VOICETUNE_BASE_MODEL", "acme/house-model")
    assert archives.allowed_base_models() == ["embedded:smollm2-135m-instruct", "acme/house-model"]
    # A model downloaded into the shared cache (a complete snapshot) is here already: its adapters may come in
    snapshot = cache / "hub" / "models--acme--downloaded" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "hub" / "models--acme--downloaded" / "refs").mkdir()
    (cache / "hub" / "models--acme--downloaded" / "refs" / "main").write_text("0" * 40)
    assert archives.allowed_base_models() == ["embedded:smollm2-135m-instruct", "acme/house-model",
                                              "acme/downloaded"]


def test_an_imported_run_keeps_no_path_of_its_author(adapter_folder: Path, tmp_path: Path, workspace: Path) -> None:
    """A zip's record and settings may name files of another machine; the run keeps their names only, and
    takes this app's name for its base."""
    from voicetune import store

    record = json.loads((adapter_folder / "run.json").read_text())
    record.update(base_model_path="/home/alice/models/x", data={"file": "/home/alice/secret/data.jsonl"},
                  config={"data": "/home/alice/secret/data.jsonl", "out": "/home/alice/runs/x", "epochs": 3})
    entries = {**adapter_entries(adapter_folder), "run.json": json.dumps(record).encode(),
               "config.yaml": b"data: /home/alice/secret/data.jsonl\ncheckpoint_dir: /home/alice/ck\nepochs: 3\n"}
    folder = store.run_dir(archives.import_adapter_zip(zip_of(tmp_path / "alice.zip", entries)))
    for name in ("run.json", "config.yaml"):
        assert "/home/alice" not in (folder / name).read_text(), name
    kept = json.loads((folder / "run.json").read_text())
    assert kept["data"] == {"file": "data.jsonl"} and kept["config"] == {"data": "data.jsonl", "epochs": 3}
    assert (folder / "config.yaml").read_text() == "data: data.jsonl\nepochs: 3\n"


# --- Tampered requests to the compare endpoint -----------------------------------------------------------

@pytest.mark.slow
def test_tampered_run_ids_and_adapters_sent_to_the_compare_endpoint_are_refused(app: RunningApp, client,
                                                                                adapter_folder: Path) -> None:
    import shutil

    def send(arms: list[str]) -> str:
        return refused(client, "/send", arms, False, "Hello?", "", "", True, 0.7, 0.9, 16, 1.0, 0)

    for hostile in ("../../etc", "/etc/passwd", "..", "runs/../../voicetune.db"):
        message = send([BASE, hostile])
        assert f"Cannot use run {hostile}: not a valid run id" in message, message
    runs = app.home / "runs"
    runs.mkdir(exist_ok=True)
    # A run whose weights were damaged after training, and one whose record was edited to claim another base.
    corrupt = runs / "corrupt-run"
    shutil.copytree(adapter_folder, corrupt)
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x00" * 100)
    assert "Cannot use run corrupt-run: adapter corrupt-run could not be loaded (damaged or incomplete files?)" \
        in send([BASE, "corrupt-run"])
    edited = runs / "edited-run"
    shutil.copytree(adapter_folder, edited)
    record = json.loads((edited / "run.json").read_text())
    (edited / "run.json").write_text(json.dumps({**record, "base_model_hash": "f" * 16}))
    assert "Cannot use run edited-run: adapter edited-run was trained on" in send([BASE, "edited-run"])
    # The same damaged run cannot be smuggled in by the shared-adapter upload either.
    from gradio_client import handle_file

    bad = zip_of(app.home.parent / "corrupt.zip", adapter_entries(corrupt))
    assert "not a valid safetensors file" in refused(client, "/add_shared_adapter", handle_file(str(bad)))
    # A good shared adapter, added through the app, then answers in the compare endpoint.
    good = zip_of(app.home.parent / "good.zip", adapter_entries(adapter_folder))
    added = client.predict(handle_file(str(good)), api_name="/add_shared_adapter")
    run_id = added.split("`")[1]
    out = client.predict([BASE, run_id], False, "Hello?", "", "", True, 0.7, 0.9, 16, 1.0, 0, api_name="/send")
    assert out[2]["label"] == f"Tuned: {run_id}" and out[2]["value"][-1]["role"] == "assistant"


def test_an_unexpected_failure_shows_no_traceback_or_internals(app: RunningApp) -> None:
    """A request the page would never send (arms not a list) fails inside the handler: the page gets "Error"."""
    raw = raw_event(app.client(), "send", [12345, False, "Hi", "", "", None, True, 0.7, 0.9, 16, 1.0, 0])
    assert "process_completed" in raw and '"success": false' in raw.replace('"success":false', '"success": false')
    for leak in ("Traceback", "TypeError", "File \"", str(ROOT), "site-packages"):
        assert leak not in raw, leak


def test_zip_checks_on_their_own(tmp_path: Path) -> None:
    """The caps, without a server: exact messages for each refusal."""
    entries = {"a.json": b"{}"}
    assert [i.filename for i in archives.check_zip(zip_of(tmp_path / "ok.zip", entries))] == ["a.json"]
    huge = tmp_path / "huge.zip"
    huge.write_bytes(b"PK\x03\x04" + bytes(archives.MAX_ARCHIVE_BYTES))
    with pytest.raises(archives.ArchiveError, match="huge.zip is 50 MB; the limit is 50 MB"):
        archives.check_zip(huge)
    with pytest.raises(archives.ArchiveError, match=r"entry 'C:\\\\x' has an absolute path"):
        archives.check_zip(zip_of(tmp_path / "drive.zip", {"C:\\x": b"x"}))
    with pytest.raises(archives.ArchiveError, match=r"points outside the archive folder"):
        archives.check_zip(zip_of(tmp_path / "back.zip", {"a\\..\\..\\b": b"x"}))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.json", b"{}")
        z.writestr("a.json", b"{}")
    (tmp_path / "twice.zip").write_bytes(buf.getvalue())
    with pytest.raises(archives.ArchiveError, match="entry 'a.json' appears twice"):
        archives.check_zip(tmp_path / "twice.zip")


def test_where_the_app_listens_follows_voicetune_then_gradio_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("VOICETUNE_HOST", "VOICETUNE_PORT", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "SPACE_ID"):
        monkeypatch.delenv(name, raising=False)
    where = lambda: (settings.launch_settings()["server_name"], settings.launch_settings()["server_port"])  # noqa: E731
    assert where() == ("127.0.0.1", 7860)
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "8080")
    assert where() == ("0.0.0.0", 8080)
    monkeypatch.setenv("VOICETUNE_HOST", "127.0.0.2")
    monkeypatch.setenv("VOICETUNE_PORT", "7999")
    assert where() == ("127.0.0.2", 7999)
    monkeypatch.setenv("VOICETUNE_PORT", "")  # set but empty: as if unset
    assert where() == ("127.0.0.2", 8080)


def test_oversized_prompts_batches_and_pasted_imports_are_refused_before_any_work(client) -> None:
    from voicetune import limits

    long = "x" * (limits.MAX_MESSAGE_CHARS + 1)
    message = refused(client, "/send", [BASE], False, long, "", "", True, 0.7, 0.9, 16, 1.0, 0)
    assert "The message is 4,001 characters; the limit is 4,000. Shorten it and try again." in message
    message = refused(client, "/send", [BASE], False, "Hi", long, "", True, 0.7, 0.9, 16, 1.0, 0)
    assert "The system prompt is 4,001 characters; the limit is 4,000." in message
    prompts = "\n".join(f"question {i}?" for i in range(limits.MAX_BATCH_PROMPTS + 1))
    message = refused(client, "/batch", [BASE], prompts, "", "", 16)
    assert "The batch has 51 prompts; the limit is 50. Split it into smaller batches." in message
    pasted = "User: hi\nAssistant: hello\n---\n" * (limits.MAX_PASTED_CHARS // 30 + 1)
    message = refused(client, "/preview_import", None, pasted, "auto", None, None, "")
    assert (f"The pasted text is {len(pasted):,} characters; the limit is 2,000,000. Save it as a file and upload "
            "that, or paste less and try again.") in message


def test_training_watchers_share_a_bounded_number_of_slots(workspace: Path) -> None:
    """Each open page follows its job with a polling handler; unbounded, ~40 pages held every worker thread."""
    from voicetune import limits
    from voicetune.ui.app import build_app

    watchers = [f for f in build_app().fns.values() if f.fn is not None and f.fn.__name__ == "watch"]
    assert len(watchers) == 4  # after Train, after Resume, after Improve from preferences, and on page load
    assert {(f.concurrency_limit, f.concurrency_id) for f in watchers} == {(limits.MAX_WATCHERS, "watch")}


def test_a_compare_chat_stops_at_its_history_cap_with_a_plain_message(workspace: Path) -> None:
    import gradio as gr

    from voicetune import limits
    from voicetune.ui import compare_tab

    exchange = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    state = {"keys": ["base"], "histories": {"base": exchange * limits.MAX_HISTORY_EXCHANGES}}
    with pytest.raises(gr.Error) as e:
        next(compare_tab.send([BASE], False, "one more?", "", "", 1, True, 0.7, 0.9, 16, 1.0, 0, state))
    assert e.value.message == ("This chat has reached 10 exchanges, the most one comparison sends to the model: "
                               "press Clear chats to start a new one.")
