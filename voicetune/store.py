"""The workspace on disk: where models, runs and datasets live, and how files are written safely.

Everything voicetune keeps sits under one folder, `VOICETUNE_HOME` (default `./workspace`), so a user can
back it up, move it, or point a Space's persistent volume at it:

    from voicetune import store
    store.runs_dir()            # -> workspace/runs
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any


def home() -> Path:
    """The workspace root. A Space with persistent storage mounts it at /data, so prefer that there."""
    env = os.environ.get("VOICETUNE_HOME")
    if env:
        path = Path(env)
    elif os.environ.get("SPACE_ID") and Path("/data").is_dir() and os.access("/data", os.W_OK):
        path = Path("/data/voicetune")
    else:
        path = Path("workspace")
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def model_cache_dir() -> Path:
    """Converted base models. Separate from `home()` so tests and several workspaces can share one cache."""
    env = os.environ.get("VOICETUNE_CACHE")
    path = Path(env) if env else home() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def runs_dir() -> Path:
    path = home() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def new_run_id(label: str = "run") -> str:
    """Sortable by time, readable, and unique even for two runs started in the same second."""
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:32] or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}-{uuid.uuid4().hex[:6]}"


def run_dir(run_id: str) -> Path:
    """Resolve a run id to its folder, refusing ids that would escape the runs folder."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", run_id or ""):
        raise ValueError(f"not a valid run id: {run_id!r}")
    return runs_dir() / run_id


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file, fsync, then rename: a crash leaves the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def publish_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written folder into place in one rename, replacing an older one only once the new one is whole."""
    final_dir = Path(final_dir)
    os.chmod(tmp_dir, 0o755)  # mkdtemp makes 0700 folders; a published folder is as readable as any other
    if final_dir.exists():
        old = final_dir.with_name(f".{final_dir.name}.old-{uuid.uuid4().hex[:6]}")
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)
