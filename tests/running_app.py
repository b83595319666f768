"""The real app as a separate process, as a person starts it (`python app.py`), for tests that talk to it over
loopback: hostile requests, load, faults and the browser journey. Each gets its own workspace and a free port
in 7880-7899, or in its own 20 ports above them under pytest-xdist's later workers (two workers scanning one
range picked the same port between one checking it and the app binding it); the converted base model is shared."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
MODEL_CACHE = ROOT / ".cache" / "models"
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)  # gw0, gw1, ... under xdist
PORTS = range(7880 + 20 * _WORKER, 7900 + 20 * _WORKER)


def free_port() -> int:
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


@dataclass
class RunningApp:
    proc: subprocess.Popen
    home: Path
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:] if self.log.exists() else ""

    def client(self):
        from gradio_client import Client

        return Client(self.url + "/", verbose=False)

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, as when the machine or the process dies."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def start_app(home: Path, *, env: dict[str, str] | None = None, wait: bool = True,
              prefix: list[str] | None = None, timeout_s: float = 240, log_dir: Path | None = None) -> RunningApp:
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    log = (log_dir or home.parent) / f"app-{port}-{time.time_ns()}.log"
    full_env = {**os.environ, "VOICETUNE_HOME": str(home), "VOICETUNE_CACHE": str(MODEL_CACHE),
                "VOICETUNE_PORT": str(port), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log, "wb") as out:
        proc = subprocess.Popen([*(prefix or []), sys.executable, "app.py"], cwd=ROOT, env=full_env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    app = RunningApp(proc, home, port, log)
    if wait:
        wait_ready(app, timeout_s)
    return app


def wait_ready(app: RunningApp, timeout_s: float = 240) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if app.proc.poll() is not None:
            raise AssertionError(f"the app exited while starting:\n{app.output()}")
        try:
            if httpx.get(app.url + "/config", timeout=5).status_code in (200, 401):  # 401: up, behind a login
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    app.stop()
    raise AssertionError(f"the app did not start in {timeout_s:.0f} s:\n{app.output()}")


@contextmanager
def serving(home: Path) -> Iterator[RunningApp]:
    """The app for a whole test module: started on home, stopped however the module ends."""
    running = start_app(home)
    try:
        yield running
    finally:
        running.stop()
