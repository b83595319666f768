"""Load and faults against the real app process: 20 people chatting while a job trains, the app killed with
SIGKILL mid-job and started again, a full disk while saving, and a workspace the app may not read.

Training and chat run on the tiny random model (VOICETUNE_BASE_MODEL), so these measure the server, the
queue and the job system, not the embedded model's speed. Figures are printed to the test output.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import threading
import time
from dataclasses import astuple
from pathlib import Path

import pytest

from tests.running_app import RunningApp, start_app
from voicetune import jobs, projects, store
from voicetune.ui import faults
from voicetune.ui.train_tab import Advanced

pytestmark = pytest.mark.slow

USERS = 20
LOAD_LIMIT_S = 240  # the whole burst; a request still waiting then must be waiting in the queue, with a place
BASE = "Base model"


def custom(max_steps: int) -> tuple:
    """The Train tab's Custom choice and its Advanced settings, in the order the /train endpoint takes them."""
    settings = Advanced(rank=4, alpha=8, dropout=0.0, learning_rate=2e-3, lr_scheduler="constant", epochs=1,
                        max_steps=max_steps, batch_size=2, grad_accum=1, max_length=1024, seed=1, qlora="Off",
                        early_stopping="Off", padding_free=False)
    return ("Custom", *astuple(settings))


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def project_of_app(client, base_model: Path) -> int:
    """Open the bundled example (48 conversations) in a fresh project that trains on base_model, with no
    validation split (so no scorecard after training)."""
    client.predict("cosmo-coffee", api_name="/load_example_project")
    conn = store.connect()
    pid = projects.current_project(conn)
    store.update_project(conn, pid, val_fraction=0.0, base_model=str(base_model))
    return pid


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture()
def tiny_app(workspace: Path, tiny_model: Path) -> RunningApp:
    """The app in this test's own workspace (so the test reads the same database), on the tiny model."""
    app = start_app(workspace, env={"VOICETUNE_BASE_MODEL": str(tiny_model)})
    try:
        yield app
    finally:
        app.stop()


def test_twenty_people_chat_while_a_job_trains(tiny_app: RunningApp, tiny_model: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    from gradio_client import Client
    from gradio_client.utils import Status

    trainer = tiny_app.client()
    project_of_app(trainer, tiny_model)
    run_id, _ = trainer.predict(*custom(20), api_name="/train")
    wait_for(lambda: jobs.get(run_id).state == "running", 120, "the job to start")
    start_rss = rss_mb(tiny_app.proc.pid)

    results: dict[int, dict] = {}
    peak = {"app_mb": start_rss}
    stop = threading.Event()

    def sample_memory() -> None:
        while not stop.is_set():
            peak["app_mb"] = max(peak["app_mb"], rss_mb(tiny_app.proc.pid))
            time.sleep(0.25)

    def person(n: int) -> None:
        out: dict = {"positions": set()}
        results[n] = out
        try:
            # A browser waits as long as the server takes; gradio_client's 5 s default would fail a busy server.
            client = Client(tiny_app.url + "/", verbose=False, httpx_kwargs={"timeout": 60})
            job = client.submit([BASE], False, f"Hello from person {n}, is the shop open?", "", "", True, 0.7, 0.9,
                                16, 1.0, n, api_name="/send")
            started = time.time()
            while not job.done() and time.time() - started < LOAD_LIMIT_S:
                status = job.status()
                if status.code == Status.IN_QUEUE and status.rank is not None:
                    out["positions"].add(status.rank + 1)  # the place the page shows, counted from 1
                time.sleep(0.1)
            if job.done():
                result = job.result()
                out["answer"] = result[1]["value"][-1]  # the last message in the first pane
                out["seconds"] = time.time() - started
            else:
                status = job.status()
                out["still_queued_at"] = status.rank + 1 if status.rank is not None else None
                job.cancel()
        except Exception as e:  # noqa: BLE001 - any error is a failure, reported below with the person's number
            out["error"] = f"{type(e).__name__}: {e}"

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    t0 = time.time()
    people = [threading.Thread(target=person, args=(n,)) for n in range(USERS)]
    for t in people:
        t.start()
    for t in people:
        t.join(LOAD_LIMIT_S + 60)
    burst_s = time.time() - t0
    done = jobs.wait(run_id, timeout_s=300)
    stop.set()

    errors = {n: r["error"] for n, r in results.items() if "error" in r}
    answered = [r for r in results.values() if "answer" in r]
    waiting = [r for r in results.values() if "still_queued_at" in r]
    seconds = sorted(r["seconds"] for r in answered)
    positions = sorted({p for r in results.values() for p in r["positions"]})
    with capsys.disabled():
        print(f"\n[load] {USERS} people, 1 training job ({done.state}) · burst {burst_s:.1f} s · "
              f"answered {len(answered)}, still queued {len(waiting)}, errors {len(errors)} · "
              f"reply seconds min {seconds[0] if seconds else 0:.1f} / median "
              f"{seconds[len(seconds) // 2] if seconds else 0:.1f} / max {seconds[-1] if seconds else 0:.1f} · "
              f"queue positions seen {positions[:3]}…{positions[-1:] if positions else []} · "
              f"app memory {start_rss:.0f} MB → peak {peak['app_mb']:.0f} MB")
    assert not errors, errors
    assert len(results) == USERS and len(answered) + len(waiting) == USERS
    assert all(isinstance(r["answer"], dict) and r["answer"]["role"] == "assistant" for r in answered)
    assert all(r["still_queued_at"] for r in waiting)  # a waiting person has a place in the queue to see
    assert positions and max(positions) > 1  # people did wait in line, and were told where they stood
    assert done.state == "succeeded", done.log()[-2000:]
    assert peak["app_mb"] - start_rss < 1500  # twenty sessions add states and queues, not a model each


def test_a_killed_app_leaves_the_data_whole_and_the_job_interrupted_and_resumable(workspace: Path,
                                                                                  tiny_model: Path) -> None:
    env = {"VOICETUNE_BASE_MODEL": str(tiny_model)}
    app = start_app(workspace, env=env)
    try:
        client = app.client()
        pid = project_of_app(client, tiny_model)
        before = [c["messages"] for c in store.list_conversations(store.connect(), pid)]
        run_id, _ = client.predict(*custom(12), api_name="/train")
        checkpoints = jobs.get(run_id).folder / "checkpoints"
        from voicetune.train import latest_checkpoint

        wait_for(lambda: latest_checkpoint(checkpoints), 240, "a whole checkpoint")
        child = jobs.get(run_id).pid
    finally:
        app.kill()  # SIGKILL: the app gets no chance to write anything more
    wait_for(lambda: not _alive(child), 30, "the training process to die with the app")
    assert jobs.get(run_id).state == "running"  # nobody has looked yet: the row still says running

    app = start_app(workspace, env=env)
    try:
        conn = store.connect()
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert [c["messages"] for c in store.list_conversations(conn, pid)] == before
        job = jobs.get(run_id)
        assert job.state == "interrupted" and job.code == "killed"
        client = app.client()
        status = client.predict(run_id, api_name="/watch")[2]
        assert f"Run `{run_id}` interrupted" in status and "Press **Resume**" in status
        assert "queued again" in client.predict(run_id, api_name="/resume")
        done = jobs.wait(run_id, timeout_s=300)
        assert done.state == "succeeded", done.log()[-2000:]
        history = jobs.history(run_id)
        assert [h["state"] for h in history] == ["queued", "running", "interrupted", "queued", "running", "succeeded"]
        assert history[3]["note"].startswith("resuming from checkpoint-")  # not from the beginning
        assert done.progress().step == 12
        assert "finished" in client.predict(run_id, api_name="/watch")[2]
    finally:
        app.stop()


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


# --- Faults ---------------------------------------------------------------------------------------------

@pytest.fixture()
def small_disk(tmp_path: Path) -> Path:
    """A real 6 MB filesystem (tmpfs) to fill up; needs root and permission to mount."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem to fill (needs root): {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill the disk to the last byte. Unbuffered writes, smaller and smaller: a buffered file that hit the
    end would raise again on close, flushing what it still held."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for chunk in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_while_saving_gives_a_plain_message_and_keeps_what_was_saved(small_disk: Path, tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                                   tiny_model: Path) -> None:
    from gradio_client.exceptions import AppError

    home = small_disk / "workspace"
    monkeypatch.setenv("VOICETUNE_HOME", str(home))
    app = start_app(home, env={"VOICETUNE_BASE_MODEL": str(tiny_model)}, log_dir=tmp_path)  # the log is not on it
    try:
        client = app.client()
        client.predict("Full disk", api_name="/create_project")
        client.predict("Do you deliver?", "Every day before noon!", api_name="/record")
        conn = store.connect()
        pid = projects.current_project(conn)
        saved = [c["messages"] for c in store.list_conversations(conn, pid)]
        filler = fill(small_disk)
        for api_name, args in (("/record", ("And on Sundays?", "Sundays too! " + "x" * 200_000)),
                               ("/export_jsonl", ())):
            with pytest.raises(AppError) as caught:
                client.submit(*args, api_name=api_name).result(timeout=120)
            assert str(caught.value) == faults.DISK_FULL, (api_name, str(caught.value))
        assert [c["messages"] for c in store.list_conversations(store.connect(), pid)] == saved
        assert not list((home / "exports").glob("*.jsonl")) and not list((home / "exports").glob(".*.tmp"))
        filler.unlink()
        client.predict("And on Sundays?", "Sundays too!", api_name="/record")  # space again: saving works
        conn = store.connect()
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert len(store.list_conversations(conn, pid)[0]["messages"]) == 4
    finally:
        app.stop()


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_unreadable_workspace_stops_the_app_with_the_fix_and_changes_nothing(workspace: Path) -> None:
    conn = store.connect()
    pid = projects.create_project(conn, "Kept")
    store.add_conversation(conn, pid, [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    before = _digest(workspace)
    workspace.chmod(0)
    try:
        # As root the permission bits would not apply: drop the capabilities that override them.
        app = start_app(workspace, wait=False, prefix=["setpriv", "--bounding-set", "-dac_override,-dac_read_search",
                                                       "--"])
        code = app.proc.wait(timeout=120)
        out = app.output()
    finally:
        workspace.chmod(0o755)
    assert code != 0
    assert f"voicetune cannot start with the workspace folder {workspace}: it cannot read or write it" in out, out
    assert "Traceback" not in out
    assert _digest(workspace) == before
    rows = sqlite3.connect(workspace / store.DB_NAME).execute("SELECT count(*) FROM conversations").fetchone()
    assert rows == (1,)
