"""The workspace on disk: where models, runs and datasets live, and how files are written safely.

Everything voicetune keeps sits under one folder, `VOICETUNE_HOME` (default `./workspace`), so a user can
back it up, move it, or point a Space's persistent volume at it:

    from voicetune import store
    store.runs_dir()            # -> workspace/runs
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator


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


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[Any]:
    """Write to a temporary file, fsync, then rename: a crash leaves the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


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


# --- The database -------------------------------------------------------------------------------------
# Metadata, conversations and votes live in one SQLite file beside the artifacts. The schema only moves
# forward through numbered migrations (m001, m002, ...); `PRAGMA user_version` records how far a file got.

DB_NAME = "voicetune.db"


def _m001_initial(conn: sqlite3.Connection) -> None:
    conn.executescript(
        """
        CREATE TABLE projects (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            base_model TEXT NOT NULL DEFAULT '',
            style_guide TEXT NOT NULL DEFAULT '',
            system_prompt TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL
        );
        CREATE TABLE conversations (
            id INTEGER PRIMARY KEY,
            project_id INTEGER NOT NULL REFERENCES projects(id),
            messages TEXT NOT NULL,              -- JSON list of {role, content[, weight]}
            tags TEXT NOT NULL DEFAULT '[]',     -- JSON list of strings
            held_out INTEGER NOT NULL DEFAULT 0, -- 1: for evaluation only, never trained on
            source TEXT NOT NULL DEFAULT '',     -- where it came from, e.g. "teach-it-this"
            created REAL NOT NULL,
            updated REAL NOT NULL
        );
        CREATE TABLE votes (
            id INTEGER PRIMARY KEY,
            project_id INTEGER NOT NULL REFERENCES projects(id),
            round_id TEXT NOT NULL,
            prompt TEXT NOT NULL,                -- JSON list of messages shown to both arms
            left_arm TEXT NOT NULL,
            right_arm TEXT NOT NULL,
            left_reply TEXT NOT NULL,
            right_reply TEXT NOT NULL,
            choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie', 'both_bad')),
            blind INTEGER NOT NULL,
            created REAL NOT NULL,
            UNIQUE (round_id, left_arm, right_arm)
        );
        """
    )


MIGRATIONS = [_m001_initial]


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every migration the file has not seen yet, each in its own transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
        with conn:
            step(conn)
            conn.execute(f"PRAGMA user_version = {number}")
    return len(MIGRATIONS)


def connect(path: Path | None = None) -> sqlite3.Connection:
    """A connection with WAL (readers never block the writer) and foreign keys on; migrated on open."""
    conn = sqlite3.connect(path or home() / DB_NAME, timeout=30, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA synchronous=NORMAL")
    migrate(conn)
    return conn


DEFAULT_PROJECT = "default"  # until projects get their own screen, every vote and saved conversation goes here


def ensure_project(conn: sqlite3.Connection, name: str = DEFAULT_PROJECT) -> int:
    row = conn.execute("SELECT id FROM projects WHERE name = ?", (name,)).fetchone()
    if row:
        return int(row["id"])
    with conn:
        cur = conn.execute("INSERT INTO projects (name, created) VALUES (?, ?)", (name, time.time()))
    return int(cur.lastrowid)


def get_project(conn: sqlite3.Connection, project_id: int) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM projects WHERE id = ?", (project_id,)).fetchone()
    if row is None:
        raise KeyError(f"no project with id {project_id}")
    return dict(row)


def update_project(conn: sqlite3.Connection, project_id: int, **fields_: str) -> None:
    allowed = {"name", "base_model", "style_guide", "system_prompt"}
    bad = set(fields_) - allowed
    if bad:
        raise ValueError(f"unknown project field(s): {', '.join(sorted(bad))}")
    if fields_:
        sets = ", ".join(f"{k} = ?" for k in fields_)
        with conn:
            conn.execute(f"UPDATE projects SET {sets} WHERE id = ?", (*fields_.values(), project_id))


def add_conversation(
    conn: sqlite3.Connection, project_id: int, messages: list[dict], *, tags: list[str] | None = None,
    held_out: bool = False, source: str = "",
) -> int:
    now = time.time()
    with conn:
        cur = conn.execute(
            "INSERT INTO conversations (project_id, messages, tags, held_out, source, created, updated)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (project_id, json.dumps(messages, ensure_ascii=False), json.dumps(tags or []), int(held_out), source,
             now, now),
        )
    return int(cur.lastrowid)


def list_conversations(conn: sqlite3.Connection, project_id: int) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM conversations WHERE project_id = ? ORDER BY id", (project_id,)).fetchall()
    return [{**dict(r), "messages": json.loads(r["messages"]), "tags": json.loads(r["tags"])} for r in rows]


def add_vote(conn: sqlite3.Connection, project_id: int, *, round_id: str, prompt: list[dict], left_arm: str,
             right_arm: str, left_reply: str, right_reply: str, choice: str, blind: bool) -> int:
    """One vote per round and pair: a double click or a replayed request cannot count twice."""
    with conn:
        cur = conn.execute(
            "INSERT OR IGNORE INTO votes (project_id, round_id, prompt, left_arm, right_arm, left_reply, right_reply,"
            " choice, blind, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (project_id, round_id, json.dumps(prompt, ensure_ascii=False), left_arm, right_arm, left_reply,
             right_reply, choice, int(blind), time.time()),
        )
    return int(cur.lastrowid) if cur.rowcount == 1 else 0  # 0: this round's vote was already counted


def list_votes(conn: sqlite3.Connection, project_id: int) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM votes WHERE project_id = ? ORDER BY id", (project_id,)).fetchall()
    return [{**dict(r), "prompt": json.loads(r["prompt"])} for r in rows]
