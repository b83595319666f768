"""Files offered for download: a per-request copy in the system temp folder, never the workspace itself.

Gradio serves a returned file only from the current folder, the system temp folder or `allowed_paths`. The
workspace can be anywhere (a Space keeps it in /data/voicetune), and adding it to `allowed_paths` would let the
file route serve every user's conversations, so each download is copied first into a fresh folder with a random
name under `tempfile.gettempdir()`, which Gradio then copies into its own cache:

    return downloads.offer(store.home() / "exports" / "cosmo.jsonl")
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from voicetune.ui.settings import DELETE_CACHE

FOLDER = "voicetune-downloads"
KEEP_S = DELETE_CACHE[1]  # as long as Gradio keeps its own copy; older copies are removed on the next download


def _downloads_root() -> Path:
    path = Path(tempfile.gettempdir()) / FOLDER
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _purge_old(root: Path, now: float) -> None:
    for folder in root.iterdir():
        try:
            if now - folder.stat().st_mtime > KEEP_S:
                shutil.rmtree(folder, ignore_errors=True)
        except FileNotFoundError:  # another request removed it first
            pass


def offer(path: str | Path) -> str:
    """A copy of `path` (same file name) that Gradio may serve; a hard link where the file system allows it."""
    source = Path(path)
    root = _downloads_root()
    _purge_old(root, time.time())
    folder = root / uuid.uuid4().hex
    folder.mkdir(mode=0o700)
    target = folder / source.name
    try:
        os.link(source, target)  # no second copy of a large merged model when both sit on one file system
    except OSError:
        shutil.copyfile(source, target)
    return str(target)


def offer_all(paths: list[str | Path]) -> list[str]:
    return [offer(p) for p in paths]
