"""The workspace on disk: where models, runs and datasets live, and how files are written safely.

Everything voicetune keeps sits under one folder, `VOICETUNE_HOME` (default `./workspace`), so a user can
back it up, move it, or point a Space's persistent volume at it. Its SQLite database is here too, whole: the
numbered migrations and every query, in one section per table family, so one file shows every statement.

    from voicetune import store
    store.runs_dir()                            # -> workspace/runs
    store.list_projects(store.connect())        # the live projects, by name
"""

from __future__ import annotations

import contextlib
import contextvars
import fcntl
import hashlib
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


_user: contextvars.ContextVar[str | None] = contextvars.ContextVar("voicetune_user", default=None)


def home() -> Path:
    """The workspace this request works in: the root, or the signed-in user's own folder inside it."""
    user = _user.get()
    if user is None:
        return root()
    path = root() / "users" / user
    path.mkdir(parents=True, exist_ok=True)
    return path


def user_dir_name(identity: str) -> str:
    """A folder name for a server-side identity: readable slug plus a hash, so "Al/../ice" and "al-ice" differ
    and no name can leave the users folder."""
    slug = re.sub(r"[^a-z0-9]+", "-", identity.lower()).strip("-")[:40] or "user"
    return f"{slug}-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"


@contextlib.contextmanager
def user_scope(identity: str | None) -> Iterator[None]:
    """Run the body in `identity`'s own workspace (None: the shared root). Context-local, so threads serving
    other users at the same time keep their own."""
    token = _user.set(None if identity is None else user_dir_name(identity))
    try:
        yield
    finally:
        _user.reset(token)


def root() -> Path:
    """The workspace root. A Space with persistent storage mounts it at /data, so prefer that there.

    Things shared by every user of one machine, such as the training queue for its one GPU, live here.
    """
    path = _root_path()
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def _root_path() -> Path:
    env = os.environ.get("VOICETUNE_HOME")
    if env:
        return Path(env)
    if os.environ.get("SPACE_ID") and Path("/data").is_dir() and os.access("/data", os.W_OK):
        return Path("/data/voicetune")
    return Path("workspace")


def model_cache_dir() -> Path:
    """Converted base models. Separate from `home()` so tests and several workspaces can share one cache."""
    env = os.environ.get("VOICETUNE_CACHE")
    path = Path(env) if env else root() / "cache"  # one cache for every user of the machine
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


# --- Leftovers -------------------------------------------------------------------------------------------
# Every write goes to a temporary name first; a process killed mid-write leaves that name behind. These are
# the temporary names, and how long one must have been untouched before it counts as abandoned. A name that
# carries its owner's pid (".push-<pid>-...", ".merge-<pid>-...", ".import.<pid>.") is kept while that process
# lives and removed as soon as it is gone.

LEFTOVER_MAX_AGE_S = 30 * 60  # untouched this long: no live writer (each of ours writes far more often)
LEFTOVERS = re.compile(r"^\.(?:.+\.old-[0-9a-f]{6}|import\..+|merge-.+|push-.+|.+\.tmp)$")
_OWNER = re.compile(r"^\.(?:import\.|merge-|push-)(\d+)[.-]")


def owned_temp_prefix(kind: str) -> str:
    """A prefix for mkdtemp naming this process as the owner, so clean_leftovers never takes a live one."""
    return f".{kind}.{os.getpid()}." if kind == "import" else f".{kind}-{os.getpid()}-"


def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for folder, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
    return newest


def _abandoned(path: Path, max_age_s: float) -> bool:
    owner = _OWNER.match(path.name)
    if owner:  # kept while its owner lives, whatever its age; removed once the owner is gone
        return not Path(f"/proc/{int(owner[1])}").exists()
    return time.time() - _newest_mtime(path) > max_age_s


def clean_leftovers(max_age_s: float = LEFTOVER_MAX_AGE_S) -> list[str]:
    """Remove the temporary files and folders interrupted writes left anywhere in the workspace (every user's),
    never one still being written. Called when the app's job supervisor starts and by every command. Returns
    the removed paths, relative to the workspace root."""
    base = _root_path().resolve()
    removed: list[str] = []
    if not base.is_dir():
        return removed  # no workspace yet: nothing to clean, and none is made for it
    for folder, dirs, files in os.walk(base):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            if not LEFTOVERS.match(name):
                continue
            try:
                if not _abandoned(path, max_age_s):
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except OSError:
                continue  # gone already, or not ours to remove: the next start tries again
            removed.append(str(path.relative_to(base)))
        dirs[:] = [d for d in dirs if not LEFTOVERS.match(d)]  # never walk into a leftover
    return removed


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


def _m002_data_studio(conn: sqlite3.Connection) -> None:
    """Trash (deleted rows are kept with the time they were deleted), table order, and per-project settings."""
    conn.executescript(
        """
        ALTER TABLE projects ADD COLUMN deleted REAL;             -- NULL: live; else when it went to the trash
        ALTER TABLE projects ADD COLUMN opened REAL NOT NULL DEFAULT 0;  -- last opened: the app reopens it
        ALTER TABLE projects ADD COLUMN val_fraction REAL;        -- NULL: chosen by size
        ALTER TABLE conversations ADD COLUMN position REAL NOT NULL DEFAULT 0;  -- table order
        ALTER TABLE conversations ADD COLUMN deleted REAL;        -- NULL: live; else when it went to the trash
        UPDATE conversations SET position = id;
        CREATE INDEX conversations_by_project ON conversations (project_id, deleted, position);
        """
    )


def _m003_jobs(conn: sqlite3.Connection) -> None:
    """Training jobs and their state history. They live in the ROOT workspace's database: one GPU, one queue."""
    conn.executescript(
        """
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,                  -- the run id; the adapter goes to <home>/runs/<id>
            home TEXT NOT NULL,                   -- the workspace (user) the job belongs to
            project_id INTEGER,                   -- in that workspace's own database
            label TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL CHECK (state IN
                ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
            folder TEXT NOT NULL,                 -- config.yaml, data, events.jsonl, log.txt, checkpoints/
            estimate_s REAL,                      -- expected duration, for the queue's start times
            resume INTEGER NOT NULL DEFAULT 0,    -- 1: continue from the last whole checkpoint
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            pid INTEGER,
            pid_start TEXT,                       -- the process's start time: a recycled pid is not our job
            code TEXT,                            -- failure code (see failures.py)
            message TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL,
            started REAL,
            finished REAL
        );
        CREATE INDEX jobs_by_state ON jobs (state, created);
        CREATE TABLE job_history (
            id INTEGER PRIMARY KEY,
            job_id TEXT NOT NULL REFERENCES jobs(id),
            state TEXT NOT NULL,
            note TEXT NOT NULL DEFAULT '',
            time REAL NOT NULL
        );
        """
    )


def _m004_api_keys(conn: sqlite3.Connection) -> None:
    """Keys for the OpenAI-compatible endpoint (voicetune/apikeys.py), friendly model names for runs, and, in the
    ROOT database only, which workspace holds each key (a hash, so the route itself grants nothing)."""
    conn.executescript(
        """
        CREATE TABLE api_keys (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            hash TEXT NOT NULL UNIQUE,            -- sha256 of the key; the key itself is never stored
            hint TEXT NOT NULL,                   -- its last four characters, to tell keys apart in a list
            owner TEXT,                           -- the signed-in identity that made it; NULL in a shared workspace
            requests_per_minute INTEGER NOT NULL,
            max_tokens INTEGER NOT NULL,          -- the most reply tokens one request may ask for
            max_prompt_tokens INTEGER NOT NULL,   -- the longest prompt, in tokens after the chat template
            created REAL NOT NULL,
            revoked REAL                          -- NULL: live; else when it was revoked
        );
        CREATE TABLE api_key_routes (hash TEXT PRIMARY KEY, home TEXT NOT NULL);  -- '' is the root workspace
        CREATE TABLE model_aliases (alias TEXT PRIMARY KEY, run_id TEXT NOT NULL);
        """
    )


def _m005_row_versions(conn: sqlite3.Connection) -> None:
    """A version per conversation, raised by every change of its turns: a write made from a stale view (another
    tab saved since it was loaded) names the version it saw, and the UPDATE refuses it instead of the last writer
    silently winning."""
    conn.executescript("ALTER TABLE conversations ADD COLUMN version INTEGER NOT NULL DEFAULT 0;")


def _m006_project_base_model(conn: sqlite3.Connection) -> None:
    """Each project names its own base model. Before, '' meant "whatever base the app was started with"; every
    such project is pinned to that base now, so a later VOICETUNE_BASE_MODEL or a new default does not move a
    project onto another base under its runs (which compare would then refuse)."""
    # The default as it stood when this migration was written (models.default_base_model then), spelled out: a
    # migration pins what was true at its time, so a later change of the embedded default must not change it.
    default = os.environ.get("VOICETUNE_BASE_MODEL") or "embedded:smollm2-135m-instruct"
    conn.execute("UPDATE projects SET base_model = ? WHERE base_model = ''", (default,))


def _m007_test_prompts(conn: sqlite3.Connection) -> None:
    """A project's unseen test prompts (one per line): the scorecard measures voice adherence on them."""
    conn.executescript("ALTER TABLE projects ADD COLUMN test_prompts TEXT NOT NULL DEFAULT '';")


def _m008_preference_pairs(conn: sqlite3.Connection) -> None:
    """A project's preference pairs (voicetune/preferences.py): a reply preferred over another to the same prompt,
    from a blind vote, a "teach it this" edit or an imported file. DPO trains on the ones not excluded."""
    conn.executescript(
        """
        CREATE TABLE preference_pairs (
            id INTEGER PRIMARY KEY,
            project_id INTEGER NOT NULL REFERENCES projects(id),
            prompt TEXT NOT NULL,                 -- JSON list of messages, system prompt included, as the arms saw it
            chosen TEXT NOT NULL,                 -- the preferred reply
            rejected TEXT NOT NULL,               -- the other reply
            source TEXT NOT NULL CHECK (source IN ('vote', 'edit', 'import')),
            chosen_arm TEXT NOT NULL DEFAULT '',  -- arm keys ("base", "run:<id>"); '' for an edit's own text or an import
            rejected_arm TEXT NOT NULL DEFAULT '',
            run_id TEXT NOT NULL DEFAULT '',      -- the run whose reply was judged, where known
            base_model TEXT NOT NULL DEFAULT '',  -- the project's base model when the pair was made
            vote_id INTEGER UNIQUE,               -- the vote it came from: a vote makes at most one pair
            excluded INTEGER NOT NULL DEFAULT 0,  -- 1: kept in the list, never trained on
            created REAL NOT NULL
        );
        CREATE INDEX preference_pairs_by_project ON preference_pairs (project_id, id);
        """
    )


def _m009_drafts(conn: sqlite3.Connection) -> None:
    """The review queue: a drafted reply waits here until a person accepts (it becomes a conversation, tagged and
    sourced `drafted`) or rejects it (kept here, out of the project). Provenance stays with the draft: which model
    drafted it, with which version of the prompt, from which of the project's conversations. And one OpenAI-
    compatible endpoint per workspace to draft with; its key is kept here, server-side, and never sent to a page."""
    conn.executescript(
        """
        CREATE TABLE drafts (
            id INTEGER PRIMARY KEY,
            project_id INTEGER NOT NULL REFERENCES projects(id),
            kind TEXT NOT NULL CHECK (kind IN ('answer', 'rewrite')),  -- answer a question, or rewrite a pasted reply
            question TEXT NOT NULL,               -- the customer's message
            original TEXT NOT NULL DEFAULT '',    -- rewrite: the pasted answer, as it was
            reply TEXT NOT NULL DEFAULT '',       -- the drafted reply (the edited one once accepted with an edit)
            status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'accepted', 'rejected')),
            model TEXT NOT NULL DEFAULT '',       -- the drafting model, e.g. "run:<id>" or "endpoint:llama3 at host"
            prompt_version TEXT NOT NULL DEFAULT '',
            seeds TEXT NOT NULL DEFAULT '[]',     -- JSON ids of the project's conversations shown in the prompt
            duplicate_of INTEGER,                 -- a conversation that already asks (nearly) this question
            edited INTEGER NOT NULL DEFAULT 0,    -- 1: accepted with the reviewer's own text
            conversation_id INTEGER,              -- the conversation an accepted draft became
            created REAL NOT NULL,
            decided REAL                          -- when it was accepted or rejected
        );
        CREATE INDEX drafts_by_project ON drafts (project_id, status, id);
        CREATE TABLE draft_endpoint (
            id INTEGER PRIMARY KEY CHECK (id = 1),  -- one per workspace
            base_url TEXT NOT NULL,
            model TEXT NOT NULL,
            api_key TEXT NOT NULL DEFAULT ''     -- sent only in the Authorization header; never shown or logged
        );
        """
    )


def _m010_reply_cache(conn: sqlite3.Connection) -> None:
    conn.executescript(
        """
        -- The base model's greedy scorecard replies, by a hash of all that decides them (voicetune/reply_cache.py)
        CREATE TABLE reply_cache (
            key TEXT PRIMARY KEY,
            text TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            reply_tokens INTEGER NOT NULL,
            used REAL NOT NULL                    -- last written or read: the oldest go first past the bound
        );
        CREATE INDEX reply_cache_by_use ON reply_cache (used);
        """
    )


def _m011_draft_cut(conn: sqlite3.Connection) -> None:
    conn.executescript(
        """
        -- 1: the drafted reply ran to the token limit, so it ends mid-sentence (the review queue says so)
        ALTER TABLE drafts ADD COLUMN cut INTEGER NOT NULL DEFAULT 0;
        """
    )


MIGRATIONS = [_m001_initial, _m002_data_studio, _m003_jobs, _m004_api_keys, _m005_row_versions,
              _m006_project_base_model, _m007_test_prompts, _m008_preference_pairs, _m009_drafts, _m010_reply_cache,
              _m011_draft_cut]


def _statements(script: str) -> list[str]:
    """A SQL script as its statements, split where SQLite itself says a statement is complete."""
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())  # a last statement without its semicolon (or a closing comment)
    return statements


class _OneTransaction:
    """The connection a migration sees: its executescript runs statement by statement inside the caller's
    transaction. sqlite3's own executescript COMMITs first, so a migration that failed half-way used to leave
    half a schema behind (and "duplicate column name" on every later open)."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def executescript(self, script: str) -> None:
        for statement in _statements(script):
            self._conn.execute(statement)

    def commit(self) -> None:
        """The migration runner commits, together with the version bump."""

    def __enter__(self) -> "_OneTransaction":  # `with conn:` inside a migration must not commit half of it
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def migrate(conn: sqlite3.Connection, path: Path | None = None) -> int:
    """Apply every migration the file has not seen yet, each in one transaction with its version bump.

    A migration that fails (a crash, a full disk, a bad statement) leaves the file at the previous version,
    with nothing of itself applied, so the next open runs it again from the start. Two processes or threads
    opening a new workspace at once must not both run one, so a lock file beside the database serialises them.
    """
    if conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS):
        return len(MIGRATIONS)
    lock_path = Path(path or home() / DB_NAME).with_suffix(".migrate.lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                step(_OneTransaction(conn))  # type: ignore[arg-type]
                conn.execute(f"PRAGMA user_version = {number}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
    return len(MIGRATIONS)


def connect(path: Path | None = None) -> sqlite3.Connection:
    """A connection with WAL (readers never block the writer) and foreign keys on; migrated on open."""
    path = Path(path or home() / DB_NAME)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA synchronous=NORMAL")
    migrate(conn, path)
    return conn


def connect_root() -> sqlite3.Connection:
    """The ROOT workspace's database, whoever is signed in: the training queue and the API key routes live there,
    shared by every user of the machine."""
    return connect(root() / DB_NAME)


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taken before the first read: a check and the write it decides (a count, then an
    insert) cannot be split by another process. Rolled back on any error, including KeyboardInterrupt."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# --- Projects ---------------------------------------------------------------------------------------------
# Every query of the workspace database lives below, in one section per table family; projects.py, jobs.py
# and apikeys.py hold the rules and call these. `conn` is the workspace's (connect()) unless a section says
# it is the root's (connect_root()).


DEFAULT_PROJECT = "default"  # the project a fresh workspace opens with (projects.current_project)


def get_project(conn: sqlite3.Connection, project_id: int) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM projects WHERE id = ?", (project_id,)).fetchone()
    if row is None:
        raise KeyError(f"no project with id {project_id}")
    return dict(row)


class StaleWrite(Exception):
    """A write based on a value or version that another write has replaced since; nothing was written."""


def update_project(conn: sqlite3.Connection, project_id: int, *, expected: dict[str, Any] | None = None,
                   **fields_: Any) -> None:
    """Set fields. With `expected` ({field: the value the caller's view showed}), only if those fields still hold
    those values, else StaleWrite and nothing is written. Per field rather than a version per project row: a
    save of the system prompt must not make an open style guide box stale."""
    allowed = {"name", "base_model", "style_guide", "system_prompt", "val_fraction"}
    bad = (set(fields_) | set(expected or {})) - allowed
    if bad:
        raise ValueError(f"unknown project field(s): {', '.join(sorted(bad))}")
    if not fields_:
        return
    sets = ", ".join(f"{k} = ?" for k in fields_)
    checks = "".join(f" AND {k} IS ?" for k in expected or {})
    with conn:
        cur = conn.execute(f"UPDATE projects SET {sets} WHERE id = ?{checks}",
                           (*fields_.values(), project_id, *(expected or {}).values()))
        if cur.rowcount == 0 and expected:
            raise StaleWrite(f"project {project_id} changed since it was read")


def list_projects(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """The live projects, by name in any case."""
    rows = conn.execute("SELECT * FROM projects WHERE deleted IS NULL ORDER BY name COLLATE NOCASE").fetchall()
    return [dict(r) for r in rows]


def list_trashed_projects(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """The projects in the trash, the last deleted first."""
    return [dict(r) for r in conn.execute("SELECT * FROM projects WHERE deleted IS NOT NULL ORDER BY deleted DESC")]


def project_named(conn: sqlite3.Connection, name: str, *, other_than: int | None = None) -> sqlite3.Row | None:
    """The project (live or trashed) holding `name`, other than `other_than`: names are unique across both."""
    return conn.execute("SELECT id, deleted FROM projects WHERE name = ? AND id IS NOT ?",
                        (name, other_than)).fetchone()


def project_names(conn: sqlite3.Connection) -> set[str]:
    """Every project's name, the trashed ones included."""
    return {r["name"] for r in conn.execute("SELECT name FROM projects")}


def add_project(conn: sqlite3.Connection, name: str) -> int:
    """A new row with every setting at its default, marked as opened now."""
    now = time.time()
    with conn:
        cur = conn.execute("INSERT INTO projects (name, created, opened) VALUES (?, ?, ?)", (name, now, now))
    return int(cur.lastrowid)


def mark_project_opened(conn: sqlite3.Connection, project_id: int) -> None:
    with conn:
        conn.execute("UPDATE projects SET opened = ? WHERE id = ?", (time.time(), project_id))


def last_opened_project(conn: sqlite3.Connection) -> int | None:
    """The live project opened last (the oldest of ties); None when there is none."""
    row = conn.execute("SELECT id FROM projects WHERE deleted IS NULL ORDER BY opened DESC, id LIMIT 1").fetchone()
    return int(row["id"]) if row else None


def count_projects(conn: sqlite3.Connection) -> int:
    """Every project row: a cheap read that proves the database opens and its schema is there."""
    return int(conn.execute("SELECT count(*) FROM projects").fetchone()[0])


def trash_project(conn: sqlite3.Connection, project_id: int) -> None:
    with conn:
        conn.execute("UPDATE projects SET deleted = ? WHERE id = ?", (time.time(), project_id))


def restore_project(conn: sqlite3.Connection, project_id: int) -> None:
    """Out of the trash, and opened: a restored project is the one the user wants next."""
    with conn:
        conn.execute("UPDATE projects SET deleted = NULL, opened = ? WHERE id = ?", (time.time(), project_id))


def purge_trashed(conn: sqlite3.Connection, cutoff: float) -> int:
    """Remove for good the conversations and projects trashed before `cutoff`, a project's conversations and
    votes with it; returns how many rows went."""
    with conn:
        old = [r["id"] for r in conn.execute("SELECT id FROM projects WHERE deleted < ?", (cutoff,))]
        gone = conn.execute("DELETE FROM conversations WHERE deleted < ?", (cutoff,)).rowcount
        for pid in old:
            gone += conn.execute("DELETE FROM conversations WHERE project_id = ?", (pid,)).rowcount
            gone += conn.execute("DELETE FROM votes WHERE project_id = ?", (pid,)).rowcount
            gone += conn.execute("DELETE FROM projects WHERE id = ?", (pid,)).rowcount
    return gone


def set_test_prompts(conn: sqlite3.Connection, project_id: int, text: str) -> None:
    with conn:
        conn.execute("UPDATE projects SET test_prompts = ? WHERE id = ?", (text, project_id))


def get_test_prompts(conn: sqlite3.Connection, project_id: int) -> str:
    """The project's test prompts, one per line; "" for a project that is gone."""
    row = conn.execute("SELECT test_prompts FROM projects WHERE id = ?", (project_id,)).fetchone()
    return row["test_prompts"] if row else ""


# --- Conversations ----------------------------------------------------------------------------------------


def add_conversation(
    conn: sqlite3.Connection, project_id: int, messages: list[dict], *, tags: list[str] | None = None,
    held_out: bool = False, source: str = "",
) -> int:
    now = time.time()
    with conn:
        cur = conn.execute(
            "INSERT INTO conversations (project_id, messages, tags, held_out, source, created, updated, position)"
            " VALUES (?, ?, ?, ?, ?, ?, ?,"
            " (SELECT COALESCE(MAX(position), 0) + 1 FROM conversations WHERE project_id = ?))",
            (project_id, json.dumps(messages, ensure_ascii=False), json.dumps(tags or []), int(held_out), source,
             now, now, project_id),
        )
    return int(cur.lastrowid)


def conversation_row(row: sqlite3.Row) -> dict[str, Any]:
    return {**dict(row), "messages": json.loads(row["messages"]), "tags": json.loads(row["tags"])}


def list_conversations(conn: sqlite3.Connection, project_id: int, *, deleted: bool = False) -> list[dict[str, Any]]:
    """A project's conversations in table order; the trashed ones instead when `deleted`."""
    where = "deleted IS NOT NULL" if deleted else "deleted IS NULL"
    rows = conn.execute(f"SELECT * FROM conversations WHERE project_id = ? AND {where} ORDER BY position, id",
                        (project_id,)).fetchall()
    return [conversation_row(r) for r in rows]


def get_conversation(conn: sqlite3.Connection, conversation_id: int) -> dict[str, Any] | None:
    """One conversation, live or trashed, with its turns and tags decoded; None when there is none."""
    row = conn.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
    return None if row is None else conversation_row(row)


def set_messages(conn: sqlite3.Connection, conversation_id: int, messages: list[dict[str, Any]], *,
                 expected_version: int | None = None) -> int:
    """Replace the turns and raise the version; with `expected_version`, only if the row is still at it (else
    StaleWrite, nothing written). Returns the new version."""
    check = "" if expected_version is None else " AND version = ?"
    with conn:
        cur = conn.execute(f"UPDATE conversations SET messages = ?, updated = ?, version = version + 1 WHERE id = ?{check}",
                           (json.dumps(messages, ensure_ascii=False), time.time(), conversation_id,
                            *([] if expected_version is None else [expected_version])))
        if cur.rowcount == 0 and expected_version is not None:
            raise StaleWrite(f"conversation {conversation_id} changed since version {expected_version}")
        return int(conn.execute("SELECT version FROM conversations WHERE id = ?", (conversation_id,)).fetchone()[0])


def position_after(conn: sqlite3.Connection, project_id: int, position: float, *, other_than: int) -> float | None:
    """The next table position after `position` in the project (any row but `other_than`); None at the end."""
    return conn.execute("SELECT MIN(position) FROM conversations WHERE project_id = ? AND position > ? AND id != ?",
                        (project_id, position, other_than)).fetchone()[0]


def set_position(conn: sqlite3.Connection, conversation_id: int, position: float) -> None:
    with conn:
        conn.execute("UPDATE conversations SET position = ? WHERE id = ?", (position, conversation_id))


def set_tags(conn: sqlite3.Connection, conversation_id: int, tags: list[str]) -> None:
    with conn:
        conn.execute("UPDATE conversations SET tags = ?, updated = ? WHERE id = ?",
                     (json.dumps(tags, ensure_ascii=False), time.time(), conversation_id))


def set_held_out(conn: sqlite3.Connection, conversation_ids: list[int], held_out: bool) -> None:
    with conn:
        conn.executemany("UPDATE conversations SET held_out = ?, updated = ? WHERE id = ?",
                         [(int(held_out), time.time(), cid) for cid in conversation_ids])


def trash_conversations(conn: sqlite3.Connection, conversation_ids: list[int], stamp: float) -> None:
    """To the trash with one time stamp; a conversation already there keeps its own."""
    with conn:
        conn.executemany("UPDATE conversations SET deleted = ? WHERE id = ? AND deleted IS NULL",
                         [(stamp, cid) for cid in conversation_ids])


def restore_conversations(conn: sqlite3.Connection, conversation_ids: list[int]) -> None:
    with conn:
        conn.executemany("UPDATE conversations SET deleted = NULL WHERE id = ?", [(cid,) for cid in conversation_ids])


# --- Jobs (the root database: connect_root()) -------------------------------------------------------------

def add_job(conn: sqlite3.Connection, job_id: str, *, home: str, project_id: int | None, label: str, folder: str,
            estimate_s: float | None) -> None:
    conn.execute("INSERT INTO jobs (id, home, project_id, label, state, folder, estimate_s, created)"
                 " VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
                 (job_id, home, project_id, label, folder, estimate_s, time.time()))


def add_job_history(conn: sqlite3.Connection, job_id: str, state: str, note: str = "") -> None:
    conn.execute("INSERT INTO job_history (job_id, state, note, time) VALUES (?, ?, ?, ?)",
                 (job_id, state, note, time.time()))


def update_job(conn: sqlite3.Connection, job_id: str, sets: dict[str, Any], *, when: tuple[str, ...]) -> bool:
    """Set `sets` on the job only while its state is one of `when`, in one statement; whether it was."""
    assignments = ", ".join(f"{k} = ?" for k in sets)
    marks = ", ".join("?" * len(when))
    cur = conn.execute(f"UPDATE jobs SET {assignments} WHERE id = ? AND state IN ({marks})",
                       (*sets.values(), job_id, *when))
    return bool(cur.rowcount)


def get_job(conn: sqlite3.Connection, job_id: str, *, home: str | None = None) -> sqlite3.Row | None:
    """The job's row; with `home`, only if it belongs to that workspace."""
    if home is None:
        return conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return conn.execute("SELECT * FROM jobs WHERE id = ? AND home = ?", (job_id, home)).fetchone()


def list_jobs(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every job of the machine, the newest first."""
    return conn.execute("SELECT * FROM jobs ORDER BY created DESC").fetchall()


def job_history(conn: sqlite3.Connection, job_id: str) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT state, note, time FROM job_history WHERE job_id = ? ORDER BY id", (job_id,))
    return [dict(r) for r in rows]


def last_job_change(conn: sqlite3.Connection, job_id: str) -> float:
    """When the job's history last moved (0 when it has none)."""
    row = conn.execute("SELECT time FROM job_history WHERE job_id = ? ORDER BY id DESC LIMIT 1", (job_id,)).fetchone()
    return row["time"] if row else 0


def active_jobs(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """The queued and running jobs in queue order (the oldest first)."""
    return conn.execute("SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY created").fetchall()


def count_active_jobs(conn: sqlite3.Connection, home: str) -> int:
    return conn.execute("SELECT COUNT(*) FROM jobs WHERE home = ? AND state IN ('queued', 'running')",
                        (home,)).fetchone()[0]


def running_jobs(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    return conn.execute("SELECT * FROM jobs WHERE state = 'running'").fetchall()


def cancelling_jobs(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Running jobs whose cancel was asked for."""
    return conn.execute("SELECT * FROM jobs WHERE state = 'running' AND cancel_requested = 1").fetchall()


def jobs_running_since(conn: sqlite3.Connection, before: float) -> list[sqlite3.Row]:
    """Running jobs started before `before`."""
    return conn.execute("SELECT * FROM jobs WHERE state = 'running' AND started < ?", (before,)).fetchall()


def any_job_running(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM jobs WHERE state = 'running' LIMIT 1").fetchone() is not None


def oldest_queued_job(conn: sqlite3.Connection) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM jobs WHERE state = 'queued' ORDER BY created LIMIT 1").fetchone()


def start_job(conn: sqlite3.Connection, job_id: str) -> None:
    """Running from now, with no process yet (set_job_pid follows once it is spawned)."""
    conn.execute("UPDATE jobs SET state = 'running', started = ?, pid = NULL, message = '' WHERE id = ?",
                 (time.time(), job_id))


def set_job_pid(conn: sqlite3.Connection, job_id: str, pid: int, pid_start: str | None) -> None:
    conn.execute("UPDATE jobs SET pid = ?, pid_start = ? WHERE id = ?", (pid, pid_start, job_id))


def request_cancel(conn: sqlite3.Connection, job_id: str, home: str) -> bool:
    """Ask the workspace's queued or running job to stop, in one statement: a queued one is cancelled at once,
    a running one is flagged for its process. False when it is neither (or not that workspace's)."""
    cur = conn.execute(
        "UPDATE jobs SET cancel_requested = 1,"
        " message = CASE state WHEN 'queued' THEN 'cancelled before it started' ELSE message END,"
        " finished = CASE state WHEN 'queued' THEN ? ELSE finished END,"
        " state = CASE state WHEN 'queued' THEN 'cancelled' ELSE state END"
        " WHERE id = ? AND home = ? AND state IN ('queued', 'running')",
        (time.time(), job_id, home))
    return bool(cur.rowcount)


def job_cancel_requested(conn: sqlite3.Connection, job_id: str) -> bool:
    row = conn.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return bool(row and row["cancel_requested"])


# --- API keys and model aliases (a key's row in its workspace; its route in the root database) -----------

def add_api_key(conn: sqlite3.Connection, *, name: str, digest: str, hint: str, owner: str | None,
                requests_per_minute: int, max_tokens: int, max_prompt_tokens: int) -> None:
    with conn:
        conn.execute(
            "INSERT INTO api_keys (name, hash, hint, owner, requests_per_minute, max_tokens, max_prompt_tokens,"
            " created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (name, digest, hint, owner, requests_per_minute, max_tokens, max_prompt_tokens, time.time()))


def list_api_keys(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """The workspace's keys, newest first, without their hashes."""
    rows = conn.execute(
        "SELECT id, name, hint, requests_per_minute, max_tokens, max_prompt_tokens, created, revoked"
        " FROM api_keys ORDER BY id DESC").fetchall()
    return [dict(r) for r in rows]


def live_api_key(conn: sqlite3.Connection, *, key_id: int | None = None,
                 digest: str | None = None) -> sqlite3.Row | None:
    """The unrevoked key with this id or this hash; None when there is none."""
    if key_id is not None:
        return conn.execute("SELECT * FROM api_keys WHERE id = ? AND revoked IS NULL", (int(key_id),)).fetchone()
    return conn.execute("SELECT * FROM api_keys WHERE hash = ? AND revoked IS NULL", (digest,)).fetchone()


def revoke_api_key(conn: sqlite3.Connection, key_id: int) -> None:
    with conn:
        conn.execute("UPDATE api_keys SET revoked = ? WHERE id = ?", (time.time(), int(key_id)))


def add_key_route(root_conn: sqlite3.Connection, digest: str, home_name: str) -> None:
    """In the root database: the key with this hash lives in workspace `home_name` ('' is the root)."""
    with root_conn:
        root_conn.execute("INSERT INTO api_key_routes (hash, home) VALUES (?, ?)", (digest, home_name))


def key_route(root_conn: sqlite3.Connection, digest: str) -> str | None:
    """The workspace folder name the key's route names ('' the root); None when it has no route."""
    row = root_conn.execute("SELECT home FROM api_key_routes WHERE hash = ?", (digest,)).fetchone()
    return None if row is None else row["home"]


def delete_key_route(root_conn: sqlite3.Connection, digest: str) -> None:
    with root_conn:
        root_conn.execute("DELETE FROM api_key_routes WHERE hash = ?", (digest,))


def set_model_alias(conn: sqlite3.Connection, alias: str, run_id: str) -> None:
    with conn:
        conn.execute("INSERT OR REPLACE INTO model_aliases (alias, run_id) VALUES (?, ?)", (alias, run_id))


def delete_model_alias(conn: sqlite3.Connection, alias: str) -> None:
    with conn:
        conn.execute("DELETE FROM model_aliases WHERE alias = ?", (alias,))


def model_aliases(conn: sqlite3.Connection) -> dict[str, str]:
    """alias -> run id, by alias."""
    rows = conn.execute("SELECT alias, run_id FROM model_aliases ORDER BY alias").fetchall()
    return {r["alias"]: r["run_id"] for r in rows}


# --- The scorecard's cache of base-model replies (migration m010; voicetune/reply_cache.py is its one user) ------

REPLY_CACHE_ROWS = 20_000  # about 10 MB; a scorecard adds about 100


def cached_replies(conn: sqlite3.Connection, keys: list[str]) -> dict[str, dict[str, Any]]:
    """The cached replies among `keys` (key -> text, prompt_tokens, reply_tokens), marked as used now."""
    found: dict[str, dict[str, Any]] = {}
    for i in range(0, len(keys), 500):  # under SQLite's limit on bound parameters
        chunk = keys[i:i + 500]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(f"SELECT key, text, prompt_tokens, reply_tokens FROM reply_cache WHERE key IN ({marks})",
                            chunk).fetchall()
        found.update({r["key"]: {k: r[k] for k in ("text", "prompt_tokens", "reply_tokens")} for r in rows})
        conn.execute(f"UPDATE reply_cache SET used = ? WHERE key IN ({marks})", [time.time(), *chunk])
    return found


def cache_replies(conn: sqlite3.Connection, rows: list[tuple[str, str, int, int]]) -> None:
    """Keep (key, text, prompt_tokens, reply_tokens) rows, then drop the least recently used past the bound."""
    if not rows:
        return
    now = time.time()
    with immediate(conn):
        conn.executemany("INSERT OR REPLACE INTO reply_cache (key, text, prompt_tokens, reply_tokens, used) "
                         "VALUES (?, ?, ?, ?, ?)", [(*row, now) for row in rows])
        conn.execute("DELETE FROM reply_cache WHERE key NOT IN "
                     "(SELECT key FROM reply_cache ORDER BY used DESC LIMIT ?)", (REPLY_CACHE_ROWS,))


# --- Votes ------------------------------------------------------------------------------------------------


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


def list_votes(conn: sqlite3.Connection, project_id: int | None) -> list[dict[str, Any]]:
    """One project's votes, or with None every project's (a run's scorecard counts its votes wherever cast)."""
    rows = (conn.execute("SELECT * FROM votes ORDER BY id") if project_id is None else
            conn.execute("SELECT * FROM votes WHERE project_id = ? ORDER BY id", (project_id,))).fetchall()
    return [{**dict(r), "prompt": json.loads(r["prompt"])} for r in rows]


# --- Preference pairs (migration m008; voicetune/preferences.py is their one user) -------------------------------
# Every pair belongs to one project in one workspace's own database, so another user's votes can never reach it.

PAIR_SOURCES = ("vote", "edit", "import")


def add_preference_pair(conn: sqlite3.Connection, project_id: int, *, prompt: list[dict], chosen: str, rejected: str,
                        source: str, chosen_arm: str = "", rejected_arm: str = "", run_id: str = "",
                        base_model: str = "", vote_id: int | None = None) -> int:
    """Insert one pair; 0 when its vote already made one (a replayed vote never counts twice)."""
    if source not in PAIR_SOURCES:
        raise ValueError(f"unknown pair source {source!r}")
    with conn:
        cur = conn.execute(
            "INSERT OR IGNORE INTO preference_pairs (project_id, prompt, chosen, rejected, source, chosen_arm,"
            " rejected_arm, run_id, base_model, vote_id, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (project_id, json.dumps(prompt, ensure_ascii=False), chosen, rejected, source, chosen_arm, rejected_arm,
             run_id, base_model, vote_id, time.time()),
        )
    return int(cur.lastrowid) if cur.rowcount == 1 else 0


def _pair_row(row: sqlite3.Row) -> dict[str, Any]:
    return {**dict(row), "prompt": json.loads(row["prompt"]), "excluded": bool(row["excluded"])}


def list_preference_pairs(conn: sqlite3.Connection, project_id: int, *,
                          include_excluded: bool = True) -> list[dict[str, Any]]:
    """A project's pairs, oldest first; without the excluded ones when asked (what training reads)."""
    where = "" if include_excluded else " AND excluded = 0"
    rows = conn.execute(f"SELECT * FROM preference_pairs WHERE project_id = ?{where} ORDER BY id",
                        (project_id,)).fetchall()
    return [_pair_row(r) for r in rows]


def get_preference_pair(conn: sqlite3.Connection, pair_id: int) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM preference_pairs WHERE id = ?", (pair_id,)).fetchone()
    if row is None:
        raise KeyError(f"no preference pair {pair_id}")
    return _pair_row(row)


def update_preference_pair(conn: sqlite3.Connection, pair_id: int, **fields_: Any) -> None:
    """Set the chosen or rejected reply, or the excluded flag, of one pair."""
    allowed = {"chosen", "rejected", "excluded"}
    bad = set(fields_) - allowed
    if bad:
        raise ValueError(f"unknown preference pair field(s): {', '.join(sorted(bad))}")
    if not fields_:
        return
    values = [int(v) if k == "excluded" else v for k, v in fields_.items()]
    with conn:
        cur = conn.execute(f"UPDATE preference_pairs SET {', '.join(f'{k} = ?' for k in fields_)} WHERE id = ?",
                           (*values, pair_id))
    if cur.rowcount == 0:
        raise KeyError(f"no preference pair {pair_id}")


def delete_preference_pair(conn: sqlite3.Connection, pair_id: int) -> None:
    with conn:
        cur = conn.execute("DELETE FROM preference_pairs WHERE id = ?", (pair_id,))
    if cur.rowcount == 0:
        raise KeyError(f"no preference pair {pair_id}")


# ==========================================================================================================
# --- Drafts (issue 21): the review queue of drafted conversations and the drafting endpoint -----------------
# Every SQL statement of voicetune/drafting.py lives in this section; its migration, m009, sits with the others.


DRAFT_STATUSES = ("pending", "accepted", "rejected")


def _draft_row(row: sqlite3.Row) -> dict[str, Any]:
    return {**dict(row), "seeds": json.loads(row["seeds"]), "cut": bool(row["cut"])}


def add_draft(conn: sqlite3.Connection, project_id: int, *, kind: str, question: str, reply: str = "",
              original: str = "", model: str = "", prompt_version: str = "", seeds: list[int] | None = None,
              duplicate_of: int | None = None, cut: bool = False) -> int:
    with conn:
        cur = conn.execute(
            "INSERT INTO drafts (project_id, kind, question, original, reply, model, prompt_version, seeds,"
            " duplicate_of, cut, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (project_id, kind, question, original, reply, model, prompt_version, json.dumps(seeds or []),
             duplicate_of, int(cut), time.time()))
    return int(cur.lastrowid)


def set_draft_reply(conn: sqlite3.Connection, draft_id: int, reply: str, *, model: str, prompt_version: str,
                    seeds: list[int], cut: bool = False) -> None:
    """A (re)drafted reply and where it came from; only while the draft is still pending."""
    with conn:
        conn.execute("UPDATE drafts SET reply = ?, model = ?, prompt_version = ?, seeds = ?, cut = ? WHERE id = ?"
                     " AND status = 'pending'", (reply, model, prompt_version, json.dumps(seeds), int(cut), draft_id))


def set_draft_question(conn: sqlite3.Connection, draft_id: int, question: str) -> None:
    with conn:
        conn.execute("UPDATE drafts SET question = ? WHERE id = ? AND status = 'pending'", (question, draft_id))


def get_draft(conn: sqlite3.Connection, draft_id: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM drafts WHERE id = ?", (draft_id,)).fetchone()
    return _draft_row(row) if row else None


def list_drafts(conn: sqlite3.Connection, project_id: int, status: str | None = None) -> list[dict[str, Any]]:
    """A project's drafts in the order they were made (the queue's order), of one status or all."""
    where, args = ("AND status = ?", (project_id, status)) if status else ("", (project_id,))
    rows = conn.execute(f"SELECT * FROM drafts WHERE project_id = ? {where} ORDER BY id", args).fetchall()
    return [_draft_row(r) for r in rows]


def draft_counts(conn: sqlite3.Connection, project_id: int) -> dict[str, int]:
    counts = dict.fromkeys(DRAFT_STATUSES, 0)
    for row in conn.execute("SELECT status, COUNT(*) AS n FROM drafts WHERE project_id = ? GROUP BY status",
                            (project_id,)):
        counts[row["status"]] = row["n"]
    return counts


def accept_draft(conn: sqlite3.Connection, draft_id: int, messages: list[dict], *, reply: str, edited: bool,
                 tag: str, source: str) -> int | None:
    """The draft becomes a conversation, in one transaction: both happen or neither. Returns the conversation's id,
    or None when the draft was no longer pending (a second click, another tab), and then nothing is written.

    The INSERT is store.add_conversation's row, written here so the draft's claim and the new row commit together.
    """
    now = time.time()
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT project_id FROM drafts WHERE id = ? AND status = 'pending'", (draft_id,)).fetchone()
        if row is None:
            conn.execute("ROLLBACK")
            return None
        pid = row["project_id"]
        cur = conn.execute(
            "INSERT INTO conversations (project_id, messages, tags, held_out, source, created, updated, position)"
            " VALUES (?, ?, ?, 0, ?, ?, ?, (SELECT COALESCE(MAX(position), 0) + 1 FROM conversations"
            " WHERE project_id = ?))",
            (pid, json.dumps(messages, ensure_ascii=False), json.dumps([tag]), source, now, now, pid))
        cid = int(cur.lastrowid)
        conn.execute("UPDATE drafts SET status = 'accepted', reply = ?, edited = ?, conversation_id = ?, decided = ?"
                     " WHERE id = ?", (reply, int(edited), cid, now, draft_id))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return cid


def reject_draft(conn: sqlite3.Connection, draft_id: int) -> bool:
    """Keep the draft out of the project; False when it was no longer pending."""
    with conn:
        cur = conn.execute("UPDATE drafts SET status = 'rejected', decided = ? WHERE id = ? AND status = 'pending'",
                           (time.time(), draft_id))
    return cur.rowcount == 1


def draft_of_conversation(conn: sqlite3.Connection, conversation_id: int) -> dict[str, Any] | None:
    """The accepted draft a conversation came from (its provenance), or None for a human-written one."""
    row = conn.execute("SELECT * FROM drafts WHERE conversation_id = ?", (conversation_id,)).fetchone()
    return _draft_row(row) if row else None


def get_draft_endpoint(conn: sqlite3.Connection) -> dict[str, str] | None:
    """The workspace's drafting endpoint with its key: for the server-side client only, never for a page."""
    row = conn.execute("SELECT base_url, model, api_key FROM draft_endpoint WHERE id = 1").fetchone()
    return dict(row) if row else None


def set_draft_endpoint(conn: sqlite3.Connection, base_url: str, model: str, api_key: str | None) -> None:
    """Save the endpoint; api_key None keeps the saved key (the page never holds it, so it cannot send it back)."""
    with conn:
        conn.execute("INSERT INTO draft_endpoint (id, base_url, model, api_key) VALUES (1, ?, ?, ?)"
                     " ON CONFLICT(id) DO UPDATE SET base_url = excluded.base_url, model = excluded.model,"
                     " api_key = CASE WHEN ? THEN excluded.api_key ELSE draft_endpoint.api_key END",
                     (base_url, model, api_key or "", api_key is not None))


def clear_draft_endpoint(conn: sqlite3.Connection) -> None:
    with conn:
        conn.execute("DELETE FROM draft_endpoint")


def succeeded_runs_of_project(project_id: int) -> list[str]:
    """Ids of the runs the current workspace trained from this project (the root database's job queue)."""
    rows = connect(root() / DB_NAME).execute(
        "SELECT id FROM jobs WHERE project_id = ? AND home = ? AND state = 'succeeded' ORDER BY created DESC",
        (project_id, str(home()))).fetchall()
    return [r["id"] for r in rows]
