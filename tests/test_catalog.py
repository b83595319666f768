"""The base-model catalog, the checks a base must pass, and the fit estimate, each against its arithmetic."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from voicetune import catalog
from voicetune.models import ModelError


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_catalog_parameters_are_computed_from_each_models_architecture():
    # The counts each model card publishes, to the nearest million (Qwen's q/k/v biases, ~0.1%, are not counted).
    published = {"embedded:smollm2-135m-instruct": 135, "HuggingFaceTB/SmolLM2-360M-Instruct": 362,
                 "Qwen/Qwen2.5-0.5B-Instruct": 494, "meta-llama/Llama-3.2-1B-Instruct": 1236,
                 "Qwen/Qwen2.5-1.5B-Instruct": 1544, "HuggingFaceTB/SmolLM2-1.7B-Instruct": 1711,
                 "Qwen/Qwen2.5-3B-Instruct": 3086, "meta-llama/Llama-3.2-3B-Instruct": 3213,
                 "Qwen/Qwen2.5-7B-Instruct": 7615, "mistralai/Mistral-7B-Instruct-v0.3": 7248,
                 "meta-llama/Llama-3.1-8B-Instruct": 8030}
    assert {e.hub_id: round(e.params / 1e6) for e in catalog.CATALOG} == published
    assert [e.params for e in catalog.CATALOG] == sorted(e.params for e in catalog.CATALOG)
    assert {e.name for e in catalog.CATALOG if e.gated} == {
        "Llama-3.2-1B-Instruct", "Llama-3.2-3B-Instruct", "Llama-3.1-8B-Instruct", "Mistral-7B-Instruct-v0.3"}
    assert catalog.find("qwen/qwen2.5-0.5b-instruct").licence_url == "https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct"
    assert catalog.CATALOG[0].licence_url == "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct"


def test_the_embedded_models_catalog_shape_is_its_real_config(base_path: str):
    from voicetune import memory

    assert memory.shape_of(base_path) == catalog.CATALOG[0].shape
    info = catalog.check_base("embedded:smollm2-135m-instruct")
    assert (info.shape, info.context) == (catalog.CATALOG[0].shape, 8192)


def test_a_local_folder_with_a_template_and_fast_tokenizer_is_accepted(tiny_qwen: Path, workspace: Path):
    info = catalog.check_base(str(tiny_qwen))
    assert (info.shape.vocab, info.shape.hidden, info.shape.layers, info.context) == (600, 64, 2, 2048)
    assert catalog.label(str(tiny_qwen)) == tiny_qwen.name  # never the server path
    assert files_under(workspace) == []


def broken_copy(tiny_qwen: Path, tmp_path: Path, how: str) -> Path:
    folder = tmp_path / f"model-{how}"
    shutil.copytree(tiny_qwen, folder)
    if how == "no-template":
        (folder / "chat_template.jinja").unlink(missing_ok=True)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    elif how == "slow-only":
        (folder / "tokenizer.json").unlink()
    elif how == "remote-code":
        config = json.loads((folder / "config.json").read_text())
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("how, message", [
    ("no-template", "model-no-template has no chat template: pick an instruct or chat model, not a base "
                    "(pretrained-only) one"),
    ("slow-only", "model-slow-only has no fast tokenizer (tokenizer.json): voicetune needs one to find the reply "
                  "tokens it trains on; pick another model"),
    ("remote-code", "model-remote-code needs custom code from its authors (auto_map in its config), which voicetune "
                    "never runs: pick a model that transformers supports as it is"),
])
def test_a_base_that_cannot_be_used_is_refused_with_its_reason_and_nothing_written(
        tiny_qwen: Path, tmp_path: Path, workspace: Path, how: str, message: str):
    folder = broken_copy(tiny_qwen, tmp_path, how)
    with pytest.raises(ModelError) as e:
        catalog.check_base(str(folder))
    assert str(e.value) == message
    assert files_under(workspace) == []


def test_a_hub_model_not_on_this_machine_is_refused_offline_with_what_is_here(workspace: Path):
    with pytest.raises(ModelError) as e:
        catalog.check_base("acme/not-here-7B")
    assert str(e.value).startswith("acme/not-here-7B is not on this machine and voicetune is offline (no network). "
                                   "Available here: SmolLM2-135M-Instruct (embedded)")
    with pytest.raises(ModelError) as e:
        catalog.check_base("no/such/folder")
    assert str(e.value).startswith("There is no folder 'folder' and it is not a Hub id (owner/name): check the name.")
    assert files_under(workspace) == []
