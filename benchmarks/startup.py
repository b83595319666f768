"""Time from `python app.py` to the first page served: cold (empty model cache, so the one-time conversion of
the embedded model is included) and warm (the converted model already cached).

    from benchmarks.startup import time_to_page
    seconds = time_to_page(cache_dir=Path("/tmp/empty"), home=Path("/tmp/home"))
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _served(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200 and b"<html" in r.read(4096).lower()
    except OSError:
        return False


def time_to_page(cache_dir: Path, home: Path, timeout_s: float = 600) -> float:
    """Seconds from starting the app process until GET / returns the page; the app is stopped afterwards."""
    port = _free_port()
    env = {**os.environ, "VOICETUNE_CACHE": str(cache_dir), "VOICETUNE_HOME": str(home),
           "VOICETUNE_PORT": str(port), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - started < timeout_s:
            if proc.poll() is not None:
                raise RuntimeError(f"the app exited with code {proc.returncode} before serving a page")
            if _served(f"http://127.0.0.1:{port}/"):
                return time.perf_counter() - started
            time.sleep(0.1)
        raise TimeoutError(f"no page within {timeout_s:.0f} s")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
