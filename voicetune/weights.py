"""Getting a base model's weights: what this machine has, and a download from the Hub with progress.

Every model lives in one cache for all users of the machine, `VOICETUNE_CACHE/hub` (huggingface_hub's own
layout), so two projects on the same base share one copy. Nothing here is called by a check or an estimate;
only a user's explicit request downloads.

    local_snapshot("Qwen/Qwen2.5-0.5B-Instruct")      # the folder, or None when not downloaded
    download("Qwen/Qwen2.5-0.5B-Instruct", on_progress=lambda done, total: print(done, total))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from voicetune.catalog import find, not_here_message, offline
from voicetune.failures import scrub
from voicetune.models import REPO_ID, WANTED, ModelError, hub_cache, local_snapshot  # noqa: F401 - re-exported

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


def _tqdm_reporting(on_progress: Progress) -> type:
    """A tqdm class that tells `on_progress` the bytes written so far and the total, and prints nothing.

    snapshot_download makes two byte bars (bytes received, and bytes written to the cache, which are the files'
    sizes) and one bar counting files; only the written-bytes bar ("Reconstructing…") is reported, so a file
    is never counted twice. Its total grows as each file's download starts.
    """
    from tqdm.auto import tqdm

    class Reporting(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True  # a bar on the server's stderr helps nobody; on_progress feeds the page
            self._reports = str(kwargs.get("desc") or "").startswith("Reconstructing")
            self._done = int(kwargs.get("initial") or 0)
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            if self._reports and n:
                self._done += int(n)
                on_progress(self._done, max(int(self.total or 0), self._done))
            return super().update(n)

    return Reporting


def download(repo_id: str, *, token: str | None = None, on_progress: Progress | None = None) -> Path:
    """Download a Hub model into the shared cache and return its folder; ModelError in words on any refusal.

    `token` is the signed-in user's (else HF_TOKEN or the login, as huggingface_hub finds it). A gated model
    the token may not read is refused with its licence page, so the user can accept the licence and retry.
    """
    from huggingface_hub import get_token, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if not REPO_ID.fullmatch(repo_id or ""):
        raise ModelError(f"{repo_id!r} is not a Hub id: write it as owner/name, e.g. Qwen/Qwen2.5-0.5B-Instruct")
    if offline():
        raise ModelError(not_here_message(repo_id))
    token = token or get_token()
    page = find(repo_id).licence_url if find(repo_id) else f"https://huggingface.co/{repo_id}"
    try:
        folder = snapshot_download(repo_id, cache_dir=hub_cache(), token=token or False, allow_patterns=WANTED,
                                   endpoint=os.environ.get("HF_ENDPOINT") or None,
                                   tqdm_class=_tqdm_reporting(on_progress) if on_progress else None)
    except GatedRepoError:
        raise ModelError(f"{repo_id} is gated: accept its licence at {page} with your Hugging Face account, "
                         "then download again (signed in, or with HF_TOKEN set)") from None
    except RepositoryNotFoundError:
        raise ModelError(f"{repo_id} is not on the Hub, or is private to another account: check the name") from None
    except (HfHubHTTPError, OSError) as e:
        raise ModelError(scrub(f"downloading {repo_id} failed: {type(e).__name__}: {str(e)[:300]}", token)) from None
    return Path(folder)


def download_size(repo_id: str, token: str | None = None) -> int | None:
    """Bytes the download will take (the wanted files only), or None when the Hub cannot say (or we are offline)."""
    if offline() or not REPO_ID.fullmatch(repo_id or ""):
        return None
    import fnmatch

    from huggingface_hub import HfApi, get_token

    try:
        info = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token or get_token() or None).model_info(
            repo_id, files_metadata=True)
    except Exception:  # noqa: BLE001 - a size we cannot learn is shown as unknown, never an error
        return None
    files = [s for s in info.siblings or [] if any(fnmatch.fnmatch(s.rfilename, p) for p in WANTED)]
    return sum(s.size or 0 for s in files) or None
