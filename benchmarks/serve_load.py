"""Load on the OpenAI-compatible endpoint: 20 streaming clients at once across 3 runs, over loopback.

Starts `python -m voicetune serve` on 127.0.0.1 with three copies of one adapter under three names (three
distinct adapters, so every batch really mixes adapters), makes a key in a throwaway workspace, then measures:

- one at a time: one client, one request per run in turn (what a server without shared batches gives);
- together: CLIENTS clients started at once, each sending REQUESTS streaming requests round the three runs.

It reports requests per second and the time to first token (median and 90th percentile) of each. Everything
is bounded: a fixed number of requests, a deadline after which no new request starts, and a timeout on each.
Greedy decoding and a fixed max_tokens, so every request asks for the same work and can share a batch.

    python -m benchmarks.serve_load --adapter workspace/runs/<run id>        # about a minute on 2 CPU cores
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["Do you ship abroad?", "Are you open today?", "Can I get a refund?", "Where is my order?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(adapter: Path, work: Path, port: int, timeout_s: float) -> tuple[subprocess.Popen, str, list[str]]:
    """The headless server on loopback with runs r1, r2, r3 (copies of the adapter) and a fresh key."""
    env = {**os.environ, "VOICETUNE_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.setdefault("VOICETUNE_CACHE", str(ROOT / ".cache" / "models"))
    names = ["r1", "r2", "r3"]
    runs = []
    for name in names:
        shutil.copytree(adapter, work / name)
        runs += ["--run", f"{name}={work / name}"]
    made = subprocess.run([sys.executable, "-m", "voicetune", "serve", "--new-key", "bench",
                           "--requests-per-minute", "10000"], capture_output=True, text=True, env=env, cwd=ROOT)
    if made.returncode != 0:
        raise SystemExit(made.stderr)
    log = open(work / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "voicetune", "serve", *runs, "--host", "127.0.0.1",
                             "--port", str(port)], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout_s
    while b"serving" not in (work / "serve.log").read_bytes():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise SystemExit((work / "serve.log").read_text(errors="replace")[-2000:])
        time.sleep(0.3)
    return proc, made.stdout.strip(), names


async def one_request(client: Any, url: str, key: str, model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
            "max_tokens": max_tokens, "stream": True}
    start = time.perf_counter()
    first = None
    async with client.stream("POST", url, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if first is None and line.startswith("data: ") and '"content": "' in line and '"content": ""' not in line:
                first = time.perf_counter() - start
            if line == "data: [DONE]":
                break
    return {"ttft": first if first is not None else time.perf_counter() - start, "total": time.perf_counter() - start}


async def run_clients(url: str, key: str, models: list[str], clients: int, requests: int, max_tokens: int,
                      deadline_s: float) -> tuple[list[dict[str, Any]], float]:
    import httpx

    stop_at = time.perf_counter() + deadline_s
    results: list[dict[str, Any]] = []

    async def client_loop(n: int, client: Any) -> None:
        for i in range(requests):
            if time.perf_counter() > stop_at:
                return
            k = n * requests + i
            results.append(await one_request(client, url, key, models[k % len(models)], PROMPTS[k % len(PROMPTS)],
                                             max_tokens))

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=deadline_s + 60, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(n, client) for n in range(clients)))
        return results, time.perf_counter() - start


def summary(label: str, results: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    ttft = sorted(r["ttft"] for r in results)
    p90 = ttft[min(len(ttft) - 1, int(0.9 * len(ttft)))] if ttft else float("nan")
    return {"phase": label, "requests": len(results), "seconds": round(seconds, 2),
            "requests_per_s": round(len(results) / seconds, 2) if seconds else 0.0,
            "ttft_median_s": round(statistics.median(ttft), 2) if ttft else None, "ttft_p90_s": round(p90, 2)}


def peak_rss_mb(pid: int) -> float | None:
    """The server's peak resident memory so far (Linux VmHWM), to show memory stays bounded under load."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--adapter", required=True, help="a finished voicetune adapter folder (workspace/runs/<id>)")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--requests", type=int, default=2, help="streaming requests per client")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--deadline", type=float, default=90, help="seconds after which no new request starts")
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="voicetune-serve-load-"))
    port = free_port()
    proc, key, models = start_server(Path(a.adapter), work, port, timeout_s=180)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    rows = []
    try:
        asyncio.run(run_clients(url, key, models, 1, 1, a.max_tokens, a.deadline))  # warm: adapters load
        alone, secs = asyncio.run(run_clients(url, key, models, 1, len(models), a.max_tokens, a.deadline))
        rows.append(summary("one at a time (1 client, 3 runs in turn)", alone, secs))
        together, secs = asyncio.run(run_clients(url, key, models, a.clients, a.requests, a.max_tokens, a.deadline))
        rows.append(summary(f"together ({a.clients} clients x {a.requests}, 3 runs)", together, secs))
        rows[-1]["server_peak_rss_mb"] = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    for row in rows:
        print(json.dumps(row))
    return rows


if __name__ == "__main__":
    main()
