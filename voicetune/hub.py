"""Publishing a finished run to the Hugging Face Hub: the adapter, optionally the merged model and the data.

Every repository is created private unless the user says otherwise, and carries the run's model card. A
repository that already exists is never written to unless the caller says so (`overwrite=True`), and the result
names each repository's real visibility. The token is the caller's (the app passes the signed-in user's own
Hugging Face token), else the `HF_TOKEN` secret, else `huggingface-cli login`; it is never written to disk,
logged, or shown: every error leaves this module with the token cut out of its text.

    urls = push_run(store.run_dir("20261123-101500-cosmo-1a2b3c"), "acme/cosmo-voice", include_merged=True)
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from voicetune import export, runs, store
from voicetune.failures import hide_paths, scrub

MERGED_SUFFIX = "-merged"  # the merged model goes to its own repository: it loads without PEFT
DATA_SUFFIX = "-data"  # the conversations go to a dataset repository


class HubError(Exception):
    """A push that could not happen, in words a user can act on; the token is never part of the text."""


class RepoExists(HubError):
    """Repositories the push would write to already exist; nothing was uploaded. `.existing` maps each to
    "private" or "public"."""

    def __init__(self, existing: dict[str, str]):
        self.existing = existing
        names = ", ".join(f"{name} ({visibility})" for name, visibility in existing.items())
        super().__init__(f"{'this repository already exists' if len(existing) == 1 else 'these repositories already exist'}"
                         f" on the Hub: {names}. Nothing was uploaded. Choose another name, or confirm that the new "
                         "files should be added to it (its visibility stays as it is)")


@dataclass(frozen=True)
class Pushed:
    kind: str  # "adapter", "merged model" or "dataset"
    repo_id: str
    url: str
    private: bool  # the repository's real visibility: an existing repository keeps its own


def resolve_token() -> str:
    """HF_TOKEN (a Space secret) first, then the token `huggingface-cli login` stored for this user."""
    from huggingface_hub import get_token

    token = get_token()  # reads HF_TOKEN, then the login cache; we never store it anywhere ourselves
    if not token:
        raise HubError("no Hugging Face token: set the HF_TOKEN secret (a token with write access from "
                       "https://huggingface.co/settings/tokens) or run `huggingface-cli login` on this machine")
    return token




def check_repo_name(name: str) -> str:
    """`owner/name` or `name` (then it goes under the token's own account), in the Hub's own rules."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    name = (name or "").strip()
    if not name:
        raise HubError("enter a repository name, such as `my-brand-voice` or `my-org/my-brand-voice`")
    try:
        validate_repo_id(name)
    except HFValidationError as e:
        raise HubError(f"{name!r} is not a valid repository name: {e}") from None
    if len(name.split("/")[-1]) + max(len(MERGED_SUFFIX), len(DATA_SUFFIX)) > 96:
        raise HubError(f"{name!r} is too long: keep the name under {96 - len(MERGED_SUFFIX)} characters")
    return name


def dataset_card(record: dict) -> str:
    return "\n".join([
        "---", "tags: [voicetune, conversational]", "task_categories: [text-generation]", "---", "",
        f"# Conversations for {record.get('run_id')}", "",
        "The example conversations this voice was trained from, one `{\"messages\": [...]}` per line (OpenAI "
        "chat format). `conversations.jsonl` is the file the run read; `validation.jsonl` holds the conversations "
        "the run scored itself on and never trained on (they may also appear in `conversations.jsonl`).", "",
    ])


def _data_files(adapter_dir: Path, record: dict) -> dict[str, Path]:
    """The run's own data from this workspace, only if it is still byte for byte what the run trained on.

    Never a path from the run record: an imported adapter's record names files on its author's machine
    (or anywhere its author liked), so the data comes only from the copy training kept in the run's folder.
    """
    folder = Path(adapter_dir).resolve()
    if folder.parent != store.runs_dir().resolve():
        raise HubError(f"{folder.name} is not a run of this workspace, so its conversations cannot be pushed; "
                       "push without the dataset")
    sources = runs.training_data(folder)
    if not sources:
        raise HubError(f"the conversations {folder.name} trained on are not in this workspace (a teammate's "
                       "shared adapter carries none); push without the dataset, or train again")
    if runs.files_fingerprint(sources) != (record.get("data") or {}).get("sha256_16"):
        raise HubError(f"the conversations of {folder.name} do not match what the run trained on; push without "
                       "the dataset, or train again")
    files = {"conversations.jsonl": sources[0]}
    heldout = folder / runs.HELDOUT_FILE
    if heldout.is_file():
        files["validation.jsonl"] = heldout
    return files


def _stage_merged(adapter_dir: Path, staging: Path, dtype: str, record: dict) -> Path:
    folder = export.merge(adapter_dir, staging / "merged", dtype=dtype)  # type: ignore[arg-type]
    card = export.model_card(record, adapter_dir).replace("library_name: peft", "library_name: transformers", 1)
    store.atomic_write_text(folder / "README.md", card.replace(
        "A LoRA adapter trained", "A model merged from a LoRA adapter trained", 1))
    return folder


def _visibility(api: object, repo_id: str, repo_type: str) -> str | None:
    """"private" or "public" for a repository the token can see, None where there is none."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        info = api.repo_info(repo_id, repo_type=repo_type)  # type: ignore[attr-defined]
    except RepositoryNotFoundError:
        return None
    return "private" if info.private else "public"


def _full_id(api: object, repo_id: str) -> str:
    """`owner/name`: a bare name goes under the token's own account, as create_repo puts it."""
    return repo_id if "/" in repo_id else f"{api.whoami()['name']}/{repo_id}"  # type: ignore[attr-defined]


def _look_before_writing(api: object, repo_id: str, *, include_merged: bool,
                         include_dataset: bool) -> tuple[str, dict[str, str | None]]:
    """The adapter repository's full id, and each target repository's visibility (None: not there yet). Looked
    up before anything is written: an existing repository is someone's work, and may be public."""
    owner_name = _full_id(api, repo_id)
    targets = [(owner_name, "model"), *([(owner_name + MERGED_SUFFIX, "model")] if include_merged else []),
               *([(owner_name + DATA_SUFFIX, "dataset")] if include_dataset else [])]
    return owner_name, {name: _visibility(api, name, repo_type) for name, repo_type in targets}


def _stage(adapter_dir: Path, staging: Path, record: dict, repo_id: str, *, include_merged: bool, merged_dtype: str,
           data_files: dict[str, Path], say: Callable[[str], None]) -> list[tuple[str, str, str, Path]]:
    """Every folder to upload, written before the first upload so a failed merge uploads nothing: (kind,
    repository, repository type, folder) each. `data_files` empty: no dataset."""
    say("preparing the adapter")
    uploads = [("adapter", repo_id, "model", export.write_adapter_folder(adapter_dir, staging / "adapter"))]
    if include_merged:
        say(f"merging the adapter into the base model ({merged_dtype})")
        uploads.append(("merged model", repo_id + MERGED_SUFFIX, "model",
                        _stage_merged(adapter_dir, staging, merged_dtype, record)))
    if data_files:
        folder = staging / "data"
        folder.mkdir()
        for name, source in data_files.items():
            shutil.copyfile(source, folder / name)
        store.atomic_write_text(folder / "README.md", dataset_card(record))
        uploads.append(("dataset", repo_id + DATA_SUFFIX, "dataset", folder))
    return uploads


def _upload(api: object, uploads: list[tuple[str, str, str, Path]], pushed: list[Pushed], *, repo_id: str,
            owner_name: str, visibility: dict[str, str | None], private: bool, run_id: str | None,
            say: Callable[[str], None]) -> None:
    """Create each repository (private by default; an existing one keeps its visibility) and upload its folder
    in one commit. `pushed` grows as each lands, so a later failure can say what already went up."""
    for kind, name, repo_type, folder in uploads:
        say(f"uploading the {kind} to {name}")
        full = owner_name + name[len(repo_id):]
        url = api.create_repo(name, private=private, repo_type=repo_type, exist_ok=True)  # type: ignore[attr-defined]
        api.upload_folder(repo_id=url.repo_id, folder_path=folder, repo_type=repo_type,  # type: ignore[attr-defined]
                          commit_message=f"{kind} from voicetune run {run_id}")
        was = visibility.get(full)
        pushed.append(Pushed(kind, url.repo_id, str(url), private if was is None else was == "private"))


def push_run(
    adapter_dir: Path, repo_id: str, *, private: bool = True, include_merged: bool = False,
    include_dataset: bool = False, merged_dtype: str = "bf16", endpoint: str | None = None,
    on_status: Callable[[str], None] | None = None, token: str | None = None, overwrite: bool = False,
) -> list[Pushed]:
    """Create the repositories (private unless told otherwise) and upload: adapter, merged model, data.

    The adapter goes to `repo_id`, the merged model to `repo_id-merged`, the data to the dataset
    `repo_id-data`. A repository that already exists raises RepoExists before anything is staged or uploaded,
    unless `overwrite`; then the files go in as a new commit and the repository keeps its visibility.
    Everything is staged in a temporary folder first, so a failed merge uploads nothing. `token`: whose account
    pushes (the app passes the signed-in user's); None means HF_TOKEN or the login of this machine.
    """
    from huggingface_hub import HfApi, constants

    adapter_dir = Path(adapter_dir)
    say = on_status or (lambda message: None)
    repo_id = check_repo_name(repo_id)
    try:
        record = runs.read(adapter_dir)
    except runs.RunError:
        raise HubError(f"{adapter_dir.name} is not a finished voicetune run") from None
    data_files = _data_files(adapter_dir, record) if include_dataset else {}  # local checks before any request
    if constants.HF_HUB_OFFLINE:
        raise HubError("HF_HUB_OFFLINE is set on this machine, so nothing can be pushed to the Hub")
    token = token or resolve_token()
    api = HfApi(endpoint=endpoint, token=token)
    pushed: list[Pushed] = []
    staging = Path(tempfile.mkdtemp(prefix=store.owned_temp_prefix("push"), dir=store.home()))
    try:
        owner_name, visibility = _look_before_writing(api, repo_id, include_merged=include_merged,
                                                      include_dataset=include_dataset)
        existing = {name: v for name, v in visibility.items() if v is not None}
        if existing and not overwrite:
            raise RepoExists(existing)
        uploads = _stage(adapter_dir, staging, record, repo_id, include_merged=include_merged,
                         merged_dtype=merged_dtype, data_files=data_files, say=say)
        _upload(api, uploads, pushed, repo_id=repo_id, owner_name=owner_name, visibility=visibility,
                private=private, run_id=record.get("run_id"), say=say)
    except HubError:
        raise
    except Exception as e:  # noqa: BLE001 - HTTP, validation and disk errors all reach the user as one message
        done = "".join(f" {p.kind} was uploaded to {p.url} before this;" for p in pushed)
        raise HubError(hide_paths(scrub(f"pushing to the Hub failed:{done} {type(e).__name__}: {e}", token))) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return pushed
