"""The job system with real child processes on a tiny random model: states, queue, cancel, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import until
from voicetune import jobs, runs, store
from voicetune.train import COMPLETE_MARK, latest_checkpoint

ROOT = Path(__file__).resolve().parent.parent
DATA = (ROOT / "examples" / "cosmo-coffee.jsonl").read_text(encoding="utf-8")

pytestmark = pytest.mark.slow


def _settings(tiny_model: Path, **extra) -> dict:
    return {"base_model": str(tiny_model), "scorecard": False, "batch_size": 4, **extra}


_until = until


def test_a_job_runs_to_success_and_records_everything(tiny_model: Path) -> None:
    job = jobs.submit(DATA, label="cosmo", **_settings(tiny_model, max_steps=4))
    done = jobs.wait(job.id, timeout_s=300)
    assert done.state == "succeeded", done.log()[-2000:]
    assert [h["state"] for h in jobs.history(job.id)] == ["queued", "running", "succeeded"]

    p = done.progress()
    assert p.fraction == 1.0 and p.step == p.total_steps == 4
    assert p.tokens_per_s and p.tokens_per_s > 0 and p.peak_memory_mb and p.peak_memory_mb > 100
    assert {"train", "validation"} <= {row["series"] for row in p.losses}

    record = json.loads((done.adapter_dir / "run.json").read_text())
    for key in ("base_model", "base_model_hash", "template_hash", "tokenizer_hash", "versions", "device",
                "duration_s", "config"):
        assert record[key], key
    assert record["data"]["sha256_16"] and record["data"]["train_split_hash"] and record["data"]["val_split_hash"]
    assert record["data"]["train"] + record["data"]["val"] == 48
    assert record["metrics"]["best_eval_loss"] is not None and record["metrics"]["tokens_per_s"] > 0
    assert record["config"]["learning_rate"] == 2e-4 and record["config"]["lora"]["r"] == 16
    card = (done.adapter_dir / "README.md").read_text()
    assert "base_model:" in card and "## Hyperparameters" in card
    assert [r["run_id"] for r in runs.finished()] == [job.id]

    # Another user's workspace neither lists nor controls this job.
    root = store.root()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(store, "home", lambda: root / "users" / "someone-else")
        assert jobs.list_jobs() == []
        with pytest.raises(KeyError):
            jobs.resume(job.id)


def test_queue_allows_one_running_job_and_cancel_works_queued_and_running(tiny_model: Path) -> None:
    # Three start requests at once (a double click, two users): the database lets exactly one run.
    ids: list[str] = []
    threads = [threading.Thread(target=lambda i=i: ids.append(
        jobs.submit(DATA, label=f"race{i}", **_settings(tiny_model, max_steps=40)).id)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 3

    def running() -> list[jobs.Job]:
        return [j for j in jobs.list_jobs() if j.state == "running"]

    first = _until(running, what="a job to start")
    assert len(first) == 1
    queued = [j for j in jobs.list_jobs() if j.state == "queued"]
    assert len(queued) == 2
    assert sorted(j.progress().queue_position for j in queued) == [1, 2]

    # Cancel while queued: no process was ever started for it.
    victim = queued[0]
    assert jobs.cancel(victim.id) == "cancelled before it started"
    assert jobs.get(victim.id).state == "cancelled" and jobs.get(victim.id).pid is None

    # Cancel while running, mid-training.
    runner = first[0]
    _until(lambda: jobs.get(runner.id).progress().step >= 2, what="two training steps")
    assert len(running()) == 1  # still only one
    assert jobs.cancel(runner.id) == "cancelling"
    ended = _until(lambda: (j := jobs.get(runner.id)).state != "running" and j, what="the cancel")
    assert ended.state == "cancelled"
    assert not ended.adapter_dir.exists()
    assert runner.id not in [r["run_id"] for r in runs.finished()]

    # The last one starts once the machine is free; cancel it too so the test ends quickly.
    last = next(j for j in queued if j.id != victim.id)
    _until(lambda: jobs.get(last.id).state == "running", what="the next job to start")
    jobs.cancel(last.id)
    assert jobs.wait(last.id, timeout_s=120).state == "cancelled"
    assert runs.finished() == []


def test_sigkill_mid_step_is_interrupted_and_resumes_from_the_last_whole_checkpoint(tiny_model: Path) -> None:
    job = jobs.submit(DATA, label="killed", **_settings(tiny_model, max_steps=10))
    checkpoints = job.folder / "checkpoints"
    # Checkpoints are saved every 2 of the 10 steps; kill just after the first whole one.
    _until(lambda: latest_checkpoint(checkpoints), what="a whole checkpoint")
    pid = jobs.get(job.id).pid
    os.killpg(pid, signal.SIGKILL)
    _until(lambda: jobs.get(job.id).state == "interrupted", what="the job to be marked interrupted")
    interrupted = jobs.get(job.id)
    assert interrupted.code == "killed" and "Resume" in interrupted.progress().fix
    assert not interrupted.adapter_dir.exists()

    # A checkpoint cut off mid-save (no completion mark) is never resumed from.
    partial = checkpoints / "checkpoint-999"
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"half")
    kept = latest_checkpoint(checkpoints)
    assert kept is not None and kept.name != "checkpoint-999" and (kept / COMPLETE_MARK).exists()

    jobs.resume(job.id)
    done = jobs.wait(job.id, timeout_s=300)
    assert done.state == "succeeded", done.log()[-2000:]
    record = json.loads((done.adapter_dir / "run.json").read_text())
    assert record["resumed_from"] == kept.name
    assert record["metrics"]["steps"] == 10
    states = [h["state"] for h in jobs.history(job.id)]
    assert states == ["queued", "running", "interrupted", "queued", "running", "succeeded"]


def test_a_lost_job_is_interrupted_after_an_app_restart(tiny_model: Path) -> None:
    """The app died (its supervisor with it): on start-up, a 'running' job whose process is gone is interrupted."""
    conn = jobs.db()
    conn.execute("INSERT INTO jobs (id, home, label, state, folder, created, started, pid, pid_start)"
                 " VALUES ('ghost', ?, 'ghost', 'running', ?, ?, ?, 999999, 'x')",
                 (str(store.home()), str(store.home() / "jobs" / "ghost"), time.time() - 100, time.time() - 100))
    assert jobs.recover() == ["ghost"]
    assert jobs.get("ghost").state == "interrupted"


def test_data_that_fails_validation_fails_the_job_before_any_model_load(tiny_model: Path) -> None:
    bad = DATA + '{"messages": [{"role": "narrator", "content": "hi"}]}\n'
    job = jobs.submit(bad, label="bad", **_settings(tiny_model))
    done = jobs.wait(job.id, timeout_s=120)
    assert done.state == "failed" and done.code == "data"
    assert "line 49" in done.message and "narrator" in done.message
    assert "loading the base model" not in done.log()
    assert "Data tab" in done.progress().fix


def test_a_base_model_that_cannot_load_fails_with_a_plain_fix(tmp_path: Path) -> None:
    job = jobs.submit(DATA, label="nomodel", base_model=str(tmp_path / "no-such-model"), scorecard=False)
    done = jobs.wait(job.id, timeout_s=120)
    assert done.state == "failed" and done.code == "model"
    assert "base model could not be loaded" in done.progress().fix
    assert "Traceback" not in done.message


def test_cancel_is_one_update_so_a_job_claimed_meanwhile_is_not_missed(tiny_model: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: cancel read the job, then updated it only if it was still queued; a job the supervisor claimed
    in between was neither cancelled nor asked to stop ("nothing to cancel: the job is queued")."""
    monkeypatch.setattr(jobs.Supervisor, "wake", lambda self: None)  # the test plays the supervisor: no children
    job = jobs.submit(DATA, label="race", **_settings(tiny_model))
    real_get = jobs.get

    def read_then_claimed(job_id: str) -> jobs.Job:
        seen = real_get(job_id)
        jobs._claim_next(jobs.db())  # the supervisor takes the job right after any look at it
        return seen

    monkeypatch.setattr(jobs, "get", read_then_claimed)
    answer = jobs.cancel(job.id)
    monkeypatch.setattr(jobs, "get", real_get)
    row = jobs.db().execute("SELECT state, cancel_requested FROM jobs WHERE id = ?", (job.id,)).fetchone()
    assert (answer, row["state"]) == ("cancelled before it started", "cancelled") or \
        (answer, row["state"], row["cancel_requested"]) == ("cancelling", "running", 1)

    # A running job is asked to stop; another workspace cannot touch it; a finished one says so.
    other = jobs.submit(DATA, label="running", **_settings(tiny_model))
    assert jobs._claim_next(jobs.db())["id"] == other.id
    with store.user_scope("mallory"):
        with pytest.raises(KeyError, match="no training job"):
            jobs.cancel(other.id)
    assert jobs.db().execute("SELECT cancel_requested FROM jobs WHERE id = ?", (other.id,)).fetchone()[0] == 0
    assert jobs.cancel(other.id) == "cancelling"
    assert jobs.db().execute("SELECT cancel_requested FROM jobs WHERE id = ?", (other.id,)).fetchone()[0] == 1
    assert [h["note"] for h in jobs.history(other.id)] == ["", "", "cancel requested"]
    jobs.recover()  # no process: once the start grace is over it is cancelled, never interrupted
    jobs.db().execute("UPDATE jobs SET started = 0 WHERE id = ?", (other.id,))
    jobs.recover()
    assert jobs.get(other.id).state == "cancelled"
    assert jobs.cancel(other.id) == "nothing to cancel: the job is cancelled"


def test_a_crash_keeps_its_traceback_in_the_server_log_and_the_training_log_names_no_folder(tiny_model: Path) -> None:
    """Issue 15: a crash printed its traceback into the Training log the user reads, paths of the server and all."""
    from voicetune.failures import SERVER_LOG

    job = jobs.submit(DATA, label="crash", **_settings(tiny_model, lora={"target_modules": ["no_such_layer"]}))
    done = jobs.wait(job.id, timeout_s=300)
    assert (done.state, done.code) == ("failed", "crash")
    shown = done.log() + done.message + json.dumps(done.events())
    assert "Traceback" not in shown and "no_such_layer" in done.message
    assert str(store.root()) not in shown and "/jobs/" not in shown
    server_log = (store.root() / SERVER_LOG).read_text(encoding="utf-8")
    assert f"job {job.id} crashed:\nTraceback (most recent call last):" in server_log


def test_one_workspace_may_queue_only_so_many_jobs(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: one user could fill the machine's single queue; now each workspace has a quota."""
    monkeypatch.setattr(jobs.Supervisor, "wake", lambda self: None)  # nothing starts: the jobs stay queued
    monkeypatch.setenv("VOICETUNE_MAX_JOBS", "2")
    first = [jobs.submit(DATA, label=f"q{i}", **_settings(tiny_model)) for i in range(2)]
    folders = sorted(p.name for p in (store.root() / "jobs").iterdir())
    with pytest.raises(jobs.JobLimitError) as refused:
        jobs.submit(DATA, label="one-too-many", **_settings(tiny_model))
    assert str(refused.value) == ("you already have 2 training jobs queued or running, the most one workspace may "
                                  "have at a time; wait for one to finish or cancel one, then start again")
    assert sorted(p.name for p in (store.root() / "jobs").iterdir()) == folders  # nothing left of the refused one
    with store.user_scope("someone-else"):  # the quota is per workspace
        jobs.submit(DATA, label="theirs", **_settings(tiny_model))
    jobs.cancel(first[0].id)
    assert jobs.submit(DATA, label="again", **_settings(tiny_model)).state == "queued"


def test_a_job_past_the_time_limit_fails_plainly_and_its_child_never_sees_the_hub_token(
        tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: a job had no time limit, so one user could hold the single queue forever; and the training
    child inherited HF_TOKEN, which it never needs."""
    monkeypatch.setenv("VOICETUNE_JOB_MAX_HOURS", "0.002")  # 7.2 s: long enough to read the child's environment
    monkeypatch.setenv("HF_TOKEN", "hf_NeverForTheChild1234")
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_NeverForTheChild1234")
    job = jobs.submit(DATA, label="long", **_settings(tiny_model, max_steps=5000))
    pid = _until(lambda: jobs.get(job.id).pid, what="the child to start")
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"VOICETUNE_HOME=" + str(store.home()).encode() in environ
    assert [v for v in environ if b"hf_NeverForTheChild" in v] == []
    done = jobs.wait(job.id, timeout_s=180)
    assert (done.state, done.code, done.message) == (
        "failed", "timeout", "stopped after 0.002 h, the longest one job may run on this machine")
    assert done.progress().fix.startswith("The job ran longer than this machine allows one job")
    _until(lambda: jobs.supervisor().children.get(job.id) is None or
           jobs.supervisor().children[job.id].poll() is not None, what="the child to end")
    assert not done.adapter_dir.exists()
