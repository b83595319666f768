"""Training jobs run in a child process, so a crash or an out-of-memory error never takes the app down.

The app writes the data and settings to the job's folder, starts `python -m voicetune train` there, and
reads progress back from the JSON-lines event file the child appends to. The child owns the training
model; the web process never holds it.

    job = start_training(conversations_jsonl_text, label="cosmo", epochs=3)
    while job.running(): print(job.progress())
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicetune import store
from voicetune.config import TrainConfig
from voicetune.train import RUN_FILE, read_run


@dataclass
class Progress:
    state: str  # running, succeeded, failed, cancelled
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    message: str = ""
    losses: list[dict[str, Any]] = field(default_factory=list)  # {"step", "series", "loss"}
    elapsed_s: float = 0.0  # since the first optimizer step began
    eta_s: float | None = None  # linear in steps: early steps include warm-up, so it settles after a few

    @property
    def fraction(self) -> float:
        if self.state == "succeeded":
            return 1.0
        return self.step / self.total_steps if self.total_steps else 0.0


class Job:
    def __init__(self, run_id: str, folder: Path, proc: subprocess.Popen | None = None):
        self.run_id = run_id
        self.folder = folder  # the job's working folder: data.jsonl, config.yaml, events.jsonl, log.txt
        self.proc = proc
        self.cancelled = False

    @property
    def adapter_dir(self) -> Path:
        return store.run_dir(self.run_id)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def events(self) -> list[dict[str, Any]]:
        path = self.folder / "events.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # the child is mid-write on the last line; it is read on the next poll
        return out

    def log(self) -> str:
        path = self.folder / "log.txt"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def progress(self) -> Progress:
        p = Progress(state="running")
        started = None
        for e in self.events():
            if e["type"] == "start":
                p.total_steps, started = e["total_steps"], e["time"]
            elif e["type"] == "log":
                p.step, p.total_steps, p.epoch = e["step"], e["total_steps"], e.get("epoch", 0.0)
                if started is not None and p.step:
                    p.elapsed_s = e["time"] - started
                    p.eta_s = p.elapsed_s / p.step * max(0, p.total_steps - p.step)
                for key in ("loss", "eval_loss"):
                    if key in e:
                        p.losses.append({"step": e["step"], "series": "train" if key == "loss" else "validation",
                                         "loss": float(e[key])})
            elif e["type"] in ("status", "error"):
                p.message = e.get("message", "")
            elif e["type"] == "done":
                p.message = f"finished: train loss {e['train_loss']:.3f}"
        if not self.running():
            if self.cancelled:
                p.state = "cancelled"
            elif (self.adapter_dir / RUN_FILE).exists():
                p.state = "succeeded"
            else:
                p.state = "failed"
                if not p.message:
                    tail = self.log().strip().splitlines()[-3:]
                    p.message = "training stopped unexpectedly: " + " / ".join(tail)
        return p

    def cancel(self) -> None:
        """Stop the child and everything it started; a cancelled run leaves no adapter behind."""
        if self.running():
            self.cancelled = True
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_training(data_text: str, label: str = "run", **settings: Any) -> Job:
    """Write the job's inputs and start the training child process."""
    run_id = store.new_run_id(label)
    folder = store.home() / "jobs" / run_id
    folder.mkdir(parents=True)
    data = folder / "data.jsonl"
    store.atomic_write_text(data, data_text if data_text.endswith("\n") else data_text + "\n")
    cfg = TrainConfig(data=str(data), out=str(store.run_dir(run_id)), **settings)
    cfg.to_yaml(folder / "config.yaml")
    cmd = [sys.executable, "-m", "voicetune", "train", "--config", str(folder / "config.yaml"),
           "--events", str(folder / "events.jsonl")]
    with open(folder / "log.txt", "w", encoding="utf-8") as log:
        # A new session, so cancel can stop the whole process group and a dying app does not signal it.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return Job(run_id, folder, proc)


def finished_runs() -> list[dict[str, Any]]:
    """Every whole adapter in the workspace, newest first; half-written folders are never listed."""
    runs = []
    for folder in sorted(store.runs_dir().iterdir(), reverse=True):
        if folder.name.startswith("."):
            continue
        try:
            runs.append(read_run(folder))
        except (FileNotFoundError, json.JSONDecodeError):
            continue
    return runs
