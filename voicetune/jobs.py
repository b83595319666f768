"""Training jobs: a queue in SQLite, one job at a time per machine, each in its own child process.

A job moves through queued → running → succeeded | failed | cancelled, or → interrupted when its process
died without saying how it ended (SIGKILL, the machine restarted). An interrupted job can be resumed from
its last whole checkpoint. The state and its history live in the ROOT workspace's database, because every
user of one machine shares its one GPU; each job remembers which workspace (user) it belongs to.

Why a child process: an out-of-memory error, a crash or a cancel never takes the web server down, and the
GPU memory comes back when the process ends. The child writes its own final state; the supervisor thread in
the app only starts queued jobs and notices children that died without writing one.

    job = submit(data_text, label="cosmo", epochs=3)
    while get(job.id).active: print(get(job.id).progress())
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicetune import store
from voicetune.config import TrainConfig
from voicetune.failures import FIXES
from voicetune.train import latest_checkpoint

STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")
CANCEL_GRACE_S = 20  # a cancelled child gets this long to clean up before SIGKILL
START_GRACE_S = 60  # a "running" row without a pid this long after dispatch lost its starter
# One queue serves every user of the machine, so no one workspace may fill it or hold it forever.
DEFAULT_MAX_ACTIVE = 3  # queued or running jobs per workspace (VOICETUNE_MAX_JOBS); a person trains one at a time
DEFAULT_MAX_HOURS = 12.0  # wall time per job (VOICETUNE_JOB_MAX_HOURS); a voice trains in minutes to an hour
# The child needs no Hub token (it trains and saves locally): a token in its environment could only leak
HUB_TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_TOKEN", "HUGGINGFACE_TOKEN", "HF_API_TOKEN")


class JobLimitError(ValueError):
    """A job refused because its workspace already has as many jobs waiting as one workspace may."""


def max_active_jobs() -> int:
    return int(os.environ.get("VOICETUNE_MAX_JOBS") or DEFAULT_MAX_ACTIVE)


def max_job_seconds() -> float:
    return float(os.environ.get("VOICETUNE_JOB_MAX_HOURS") or DEFAULT_MAX_HOURS) * 3600


def db() -> sqlite3.Connection:
    """The queue's database: the root workspace's, shared by every user of this machine."""
    return store.connect_root()


def _set_state(conn: sqlite3.Connection, job_id: str, state: str, *, when: tuple[str, ...] = ACTIVE,
               code: str | None = None, message: str = "", **extra: Any) -> bool:
    """Move a job to `state` only from one of the `when` states, in one statement: no lost updates."""
    sets = {"state": state, "code": code, "message": message, **extra}
    if state in ("succeeded", "failed", "cancelled", "interrupted"):
        sets["finished"] = time.time()
    with store.immediate(conn):
        moved = store.update_job(conn, job_id, sets, when=when)
        if moved:
            store.add_job_history(conn, job_id, state, message)
    return moved


# --- Processes ------------------------------------------------------------------------------------------

def _process_start(pid: int) -> str | None:
    """The kernel's start time of a process (field 22 of /proc/<pid>/stat), or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields_ = stat.rsplit(")", 1)[1].split()
    if fields_[0] == "Z":  # a zombie has finished; its parent has not collected it yet
        return None
    return fields_[19]


def _alive(row: sqlite3.Row | dict) -> bool:
    return bool(row["pid"]) and _process_start(row["pid"]) == row["pid_start"]


def _die_with_parent() -> None:
    """Runs in the child before exec: if the app process dies, the kernel kills the job too (Linux).

    A job whose supervisor is gone would hold the GPU with nobody to report to; after a restart it shows as
    interrupted and can be resumed, like a job lost to a machine restart.
    """
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


# --- Jobs -----------------------------------------------------------------------------------------------

@dataclass
class Progress:
    state: str  # one of STATES
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    message: str = ""
    phase: str = ""  # within running, from the events' own `phase` field: loading, training, saving, scoring
    losses: list[dict[str, Any]] = field(default_factory=list)  # {"step", "series", "loss"}
    elapsed_s: float = 0.0  # since the first optimizer step began
    eta_s: float | None = None  # linear in steps: early steps include warm-up, so it settles after a few
    tokens_per_s: float | None = None
    peak_memory_mb: float | None = None
    code: str | None = None  # failure code, with `fix` in plain words
    queue_position: int | None = None  # 1 = next to start
    starts_in_s: float | None = None

    @property
    def fraction(self) -> float:
        if self.state == "succeeded":
            return 1.0
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    @property
    def fix(self) -> str:
        return FIXES.get(self.code or "", "")


def read_events(path: Path) -> list[dict[str, Any]]:
    """A training child's progress events (cli --events) as written so far, in order."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # the child is mid-write on the last line; it is read on the next poll
    return out


@dataclass
class Job:
    id: str
    home: str
    project_id: int | None
    label: str
    state: str
    folder: Path
    estimate_s: float | None
    resume: bool
    pid: int | None
    code: str | None
    message: str
    created: float
    started: float | None
    finished: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "Job":
        return cls(row["id"], row["home"], row["project_id"], row["label"], row["state"], Path(row["folder"]),
                   row["estimate_s"], bool(row["resume"]), row["pid"], row["code"], row["message"],
                   row["created"], row["started"], row["finished"])

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def adapter_dir(self) -> Path:
        return Path(self.home) / "runs" / self.id

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.folder / "events.jsonl")

    def log(self) -> str:
        path = self.folder / "log.txt"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def progress(self) -> Progress:
        p = Progress(state=self.state, code=self.code, message=self.message)
        started, started_step = None, 0
        for e in self.events():
            kind = e["type"]
            p.phase = e.get("phase", p.phase)  # data, never read from a message's wording
            if kind == "start":
                p.total_steps, started = e["total_steps"], e["time"]
                started_step = e.get("resumed_at", 0)
                if self.active:
                    p.message = f"training (resumed at step {started_step})" if started_step else "training"
            elif kind == "log":
                p.step, p.total_steps, p.epoch = e["step"], e["total_steps"], e.get("epoch", 0.0)
                p.tokens_per_s, p.peak_memory_mb = e.get("tokens_per_s"), e.get("peak_memory_mb")
                if started is not None and p.step > started_step:
                    p.elapsed_s = e["time"] - started
                    rate = p.elapsed_s / (p.step - started_step)
                    p.eta_s = rate * max(0, p.total_steps - p.step)
                for key in ("loss", "eval_loss"):
                    if key in e:
                        p.losses.append({"step": e["step"], "series": "train" if key == "loss" else "validation",
                                         "loss": float(e[key])})
            elif kind == "status":
                if self.active:
                    p.message = e.get("message", "")
            elif kind == "done":
                p.phase = "done"
        if self.state == "queued":
            p.queue_position, p.starts_in_s = queue_position(self.id)
        return p


def get(job_id: str) -> Job:
    row = store.get_job(db(), job_id)
    if row is None:
        raise KeyError(f"no training job {job_id!r}")
    return Job.from_row(row)


def owned(job_id: str) -> Job:
    """The job, only if it belongs to the current workspace: one user cannot touch another's jobs."""
    job = get(job_id)
    if Path(job.home) != store.home():
        raise KeyError(f"no training job {job_id!r}")
    return job


def list_jobs(all_users: bool = False) -> list[Job]:
    jobs = [Job.from_row(r) for r in store.list_jobs(db())]
    return jobs if all_users else [j for j in jobs if Path(j.home) == store.home()]


def history(job_id: str) -> list[dict[str, Any]]:
    return store.job_history(db(), job_id)


def queue_position(job_id: str) -> tuple[int | None, float | None]:
    """Place in the queue (1 = next) and the estimated seconds until it starts."""
    wait, position = 0.0, 0
    for row in store.active_jobs(db()):
        if row["state"] == "running":
            elapsed = time.time() - (row["started"] or time.time())
            wait += max(0.0, (row["estimate_s"] or 0.0) - elapsed)
            continue
        if row["id"] == job_id:
            return position + 1, wait
        position += 1
        wait += row["estimate_s"] or 0.0
    return None, None


def submit(data_text: str, label: str = "run", *, heldout_text: str = "", project_id: int | None = None,
           estimate_s: float | None = None, config: type = TrainConfig, **settings: Any) -> Job:
    """Write the job's inputs and queue it; the supervisor starts it when the machine is free.

    `config` is the method's settings class (TrainConfig for SFT, dpo.DPOConfig for DPO): the child reads the
    method from the config.yaml it is started with."""
    run_id = store.new_run_id(label)
    folder = store.root() / "jobs" / run_id
    folder.mkdir(parents=True)
    data = folder / "data.jsonl"
    store.atomic_write_text(data, data_text if data_text.endswith("\n") else data_text + "\n")
    if heldout_text.strip():
        store.atomic_write_text(folder / "heldout.jsonl", heldout_text.rstrip("\n") + "\n")
        settings["heldout_data"] = str(folder / "heldout.jsonl")
    cfg = config(data=str(data), out=str(store.run_dir(run_id)), checkpoint_dir=str(folder / "checkpoints"),
                 **settings)
    cfg.to_yaml(folder / "config.yaml")
    conn = db()
    try:
        with store.immediate(conn):  # the count and the insert in one transaction: two clicks cannot both pass
            active = store.count_active_jobs(conn, str(store.home()))
            if active >= max_active_jobs():
                raise JobLimitError(f"you already have {active} training jobs queued or running, the most one "
                                    "workspace may have at a time; wait for one to finish or cancel one, then start again")
            store.add_job(conn, run_id, home=str(store.home()), project_id=project_id, label=label, folder=str(folder),
                          estimate_s=estimate_s)
            store.add_job_history(conn, run_id, "queued")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    supervisor().wake()
    return get(run_id)


def cancel(job_id: str) -> str:
    """Cancel a queued or running job of this workspace. A cancelled run leaves no adapter to list or load.

    One UPDATE decides, filtered by owner and state: a job claimed by the supervisor between a separate check
    and the update could otherwise be missed (it was "queued" when looked at, "running" when updated).
    """
    conn = db()
    with store.immediate(conn):
        asked = store.request_cancel(conn, job_id, str(store.home()))
        row = store.get_job(conn, job_id, home=str(store.home()))
        if asked:
            before_start = row["state"] == "cancelled"
            store.add_job_history(conn, job_id, row["state"],
                                  "cancelled before it started" if before_start else "cancel requested")
    if row is None:
        raise KeyError(f"no training job {job_id!r}")
    if not asked:
        return f"nothing to cancel: the job is {row['state']}"
    if row["state"] == "cancelled":
        return "cancelled before it started"
    if _alive(row):
        os.killpg(row["pid"], signal.SIGTERM)  # the child cleans up and records "cancelled" itself
    supervisor().wake()
    return "cancelling"


def resume(job_id: str) -> Job:
    """Queue an interrupted (or failed) job again; it continues from its last whole checkpoint."""
    job = owned(job_id)
    if job.state not in ("interrupted", "failed"):
        raise ValueError(f"only an interrupted or failed job can be resumed; this one is {job.state}")
    note = "resuming from " + (getattr(latest_checkpoint(job.folder / "checkpoints"), "name", None)
                               or "the beginning (no whole checkpoint)")
    _set_state(db(), job.id, "queued", when=("interrupted", "failed"), message=note, resume=1, cancel_requested=0,
               pid=None, pid_start=None, finished=None)
    supervisor().wake()
    return get(job.id)


def recover() -> list[str]:
    """Mark jobs whose process is gone without a final word as interrupted. Runs at start-up and on each tick."""
    conn = db()
    lost = []
    for row in store.running_jobs(conn):
        if _alive(row):
            continue
        if not row["pid"] and time.time() - (row["started"] or 0) < START_GRACE_S:
            continue  # being started right now by a supervisor
        if row["cancel_requested"]:
            _set_state(conn, row["id"], "cancelled", when=("running",), message="cancelled")
        elif _set_state(conn, row["id"], "interrupted", when=("running",), code="killed",
                        message="the training process stopped without finishing"):
            lost.append(row["id"])
    return lost


def _claim_next(conn: sqlite3.Connection) -> sqlite3.Row | None:
    """Atomically take the oldest queued job if nothing is running: two callers can never both win."""
    with store.immediate(conn):
        row = None if store.any_job_running(conn) else store.oldest_queued_job(conn)
        if row is not None:
            store.start_job(conn, row["id"])
            store.add_job_history(conn, row["id"], "running", "resumed" if row["resume"] else "")
    return row


def _spawn(row: sqlite3.Row) -> subprocess.Popen:
    folder = Path(row["folder"])
    cmd = [sys.executable, "-m", "voicetune", "train", "--config", str(folder / "config.yaml"),
           "--events", str(folder / "events.jsonl"), "--job", row["id"]]
    if row["resume"]:
        cmd.append("--resume")
    env = {k: v for k, v in os.environ.items() if k not in HUB_TOKEN_VARIABLES}
    env.update({"PYTHONUNBUFFERED": "1", "VOICETUNE_HOME": row["home"],
                "VOICETUNE_JOBS_DB": str(store.root() / store.DB_NAME), "VOICETUNE_CACHE": str(store.model_cache_dir())})
    with open(folder / "log.txt", "a", encoding="utf-8") as log:
        # A new session, so cancel can stop the whole process group.
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                preexec_fn=_die_with_parent)


class Supervisor:
    """One thread per app process: starts queued jobs, collects finished children, notices lost ones.

    The thread lives as long as the process, because the kernel's parent-death signal follows the thread
    that started a child.
    """

    def __init__(self, poll_s: float = 0.5):
        self.poll_s = poll_s
        self.children: dict[str, subprocess.Popen] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        self._lock = threading.Lock()

    def start(self) -> "Supervisor":
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                store.clean_leftovers()  # the app's start-up: what interrupted writes left, never a live one
                recover()
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._loop, args=(self._stop,), name="voicetune-jobs",
                                                daemon=True)
                self._thread.start()
        return self

    def wake(self) -> None:
        self.start()
        self._wake.set()

    def stop(self, timeout_s: float = 10) -> None:
        """End the thread, and with it (parent-death signal) any child it started.

        The thread reads the workspace from the environment on every tick, so a process that switches
        workspaces (the test suite does, per test) must stop it first or it would serve the new one too.
        """
        with self._lock:
            thread, stop, self._thread = self._thread, self._stop, None
        if thread is None or stop is None:
            return
        stop.set()
        self._wake.set()
        thread.join(timeout_s)
        self.children.clear()

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception as e:  # noqa: BLE001 - the supervisor must outlive any one bad row
                print(f"voicetune job supervisor: {e}", file=sys.stderr)
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def tick(self) -> None:
        conn = db()
        for job_id, proc in list(self.children.items()):
            if proc.poll() is not None:
                del self.children[job_id]
        self._enforce_cancels(conn)
        self._enforce_time_limit(conn)
        recover()
        row = _claim_next(conn)
        if row is not None:
            proc = _spawn(row)
            self.children[row["id"]] = proc
            store.set_job_pid(conn, row["id"], proc.pid, _process_start(proc.pid))

    def _enforce_cancels(self, conn: sqlite3.Connection) -> None:
        """A child that ignores SIGTERM past the grace period is killed, so cancel always ends a job."""
        for row in store.cancelling_jobs(conn):
            proc = self.children.get(row["id"])
            if proc is None or proc.poll() is not None:
                continue
            if time.time() - store.last_job_change(conn, row["id"]) > CANCEL_GRACE_S:
                os.killpg(proc.pid, signal.SIGKILL)


    def _enforce_time_limit(self, conn: sqlite3.Connection) -> None:
        """A job past the time limit fails with code "timeout" and is stopped like a cancel (SIGTERM: no half
        adapter is kept); a child of ours still alive a grace period after its job ended is killed."""
        limit = max_job_seconds()
        for row in store.jobs_running_since(conn, time.time() - limit):
            message = f"stopped after {limit / 3600:g} h, the longest one job may run on this machine"
            if _set_state(conn, row["id"], "failed", when=("running",), code="timeout", message=message) \
                    and _alive(row):
                os.killpg(row["pid"], signal.SIGTERM)
        for job_id, proc in list(self.children.items()):
            if proc.poll() is not None:
                continue
            row = store.get_job(conn, job_id)
            if row and row["state"] not in ACTIVE and time.time() - (row["finished"] or 0) > CANCEL_GRACE_S:
                os.killpg(proc.pid, signal.SIGKILL)


_supervisor: Supervisor | None = None


def supervisor() -> Supervisor:
    global _supervisor
    if _supervisor is None:
        _supervisor = Supervisor()
    return _supervisor


def wait(job_id: str, timeout_s: float = 600, poll_s: float = 0.5) -> Job:
    """Block until the job is no longer queued or running (for the CLI and tests)."""
    deadline = time.time() + timeout_s
    while True:
        job = get(job_id)
        if not job.active or time.time() > deadline:
            return job
        supervisor().wake()
        time.sleep(poll_s)


# --- In the child ---------------------------------------------------------------------------------------

class Cancelled(BaseException):
    """Raised in the training child by SIGTERM; BaseException so no `except Exception` swallows it."""


def child_connection() -> sqlite3.Connection:
    return store.connect(Path(os.environ["VOICETUNE_JOBS_DB"])) if os.environ.get("VOICETUNE_JOBS_DB") else db()


def cancel_requested(job_id: str) -> bool:
    """Whether a cancel came before this child could be signalled (it was being started at the time)."""
    return store.job_cancel_requested(child_connection(), job_id)


def record_end(job_id: str, state: str, code: str | None = None, message: str = "") -> None:
    """The child's last word: its final state. Without it the supervisor will call the job interrupted."""
    _set_state(child_connection(), job_id, state, when=("running",), code=code, message=message)


__all__ = ["Job", "Progress", "STATES", "cancel", "get", "history", "list_jobs",
           "recover", "resume", "submit", "supervisor", "wait"]
