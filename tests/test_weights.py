"""Downloading a base model from a local fake Hub (loopback): progress, the shared cache, and a gated refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_hub import TOKEN, FakeHub


@pytest.fixture()
def hub_online(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """huggingface_hub allowed to reach the fake only, and a model cache of this test's own."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))  # no login cache
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    cache = tmp_path / "model-cache"
    monkeypatch.setenv("VOICETUNE_CACHE", str(cache))
    return cache


def model_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_a_base_downloads_with_progress_into_the_shared_cache_and_is_then_usable(
        tiny_qwen: Path, hub_online: Path, monkeypatch: pytest.MonkeyPatch, workspace: Path):
    from voicetune import catalog, projects, store, weights

    files = {**model_files(tiny_qwen), "pytorch_model.bin": b"not wanted"}  # a second copy of the weights
    hub = FakeHub(models={"acme/tiny-chat": files})
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    try:
        assert weights.local_snapshot("acme/tiny-chat") is None
        wanted = {k: v for k, v in files.items() if k != "pytorch_model.bin"}
        assert weights.download_size("acme/tiny-chat") == sum(map(len, wanted.values()))  # shown before a download
        events: list[tuple[int, int]] = []
        folder = weights.download("acme/tiny-chat", on_progress=lambda done, total: events.append((done, total)))
    finally:
        hub.server.shutdown()
    assert model_files(folder) == wanted  # byte for byte, and never the .bin copy
    assert folder.is_relative_to(hub_online / "hub")  # VOICETUNE_CACHE, shared by every user of the machine
    assert events and events[-1] == (sum(map(len, wanted.values())),) * 2
    assert [d for d, _ in events] == sorted(d for d, _ in events)  # bytes only grow
    sent = {h.get("authorization") for m, p, h, _ in hub.requests if "/resolve/" in p}
    assert sent == {f"Bearer {TOKEN}"}  # HF_TOKEN, as no signed-in user's token was given
    # Now it is here: offline too, and a project can use it.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights.local_snapshot("acme/tiny-chat") == folder
    assert catalog.available_here() == ["SmolLM2-135M-Instruct (embedded)", "acme/tiny-chat"]
    pid = projects.create_project(store.connect(), "Downloaded")
    assert projects.set_base_model(store.connect(), pid, "acme/tiny-chat") == "acme/tiny-chat"
    assert catalog.check_base("acme/tiny-chat").shape.vocab == 600


def test_a_gated_model_is_refused_with_its_licence_page_and_nothing_kept(hub_online: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):
    from voicetune import weights
    from voicetune.models import ModelError

    hub = FakeHub(gated={"meta-llama/Llama-3.2-1B-Instruct"})
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    try:
        with pytest.raises(ModelError) as e:
            weights.download("meta-llama/Llama-3.2-1B-Instruct", token="hf_UserOwnTokenFromSignInAbCdEf",
                             on_progress=lambda done, total: None)
    finally:
        hub.server.shutdown()
    assert str(e.value) == ("meta-llama/Llama-3.2-1B-Instruct is gated: accept its licence at "
                            "https://huggingface.co/meta-llama/Llama-3.2-1B-Instruct with your Hugging Face account, "
                            "then download again (signed in, or with HF_TOKEN set)")
    assert {h.get("authorization") for _, _, h, _ in hub.requests} == {"Bearer hf_UserOwnTokenFromSignInAbCdEf"}
    assert weights.local_snapshot("meta-llama/Llama-3.2-1B-Instruct") is None


def test_offline_a_download_is_refused_with_what_is_here(workspace: Path):
    from voicetune import weights
    from voicetune.models import ModelError

    with pytest.raises(ModelError) as e:
        weights.download("Qwen/Qwen2.5-0.5B-Instruct")
    assert str(e.value) == ("Qwen/Qwen2.5-0.5B-Instruct is not on this machine and voicetune is offline (no network). "
                            "Available here: SmolLM2-135M-Instruct (embedded).")
