"""`make bench`: voicetune against a hand-written TRL + PEFT setup, side by side in one run.

Each measurement alternates the arms in turn and repeats, so load from other processes on the machine hits
every arm alike; the table reports the median and the spread (min-max) and the machine's load average.
Training arms run in their own processes (own peak memory, own model load); compare and start-up follow.
The markdown table goes to stdout and to benchmarks/results/<date>-<device>.md.

    .venv/bin/python -m benchmarks.run                       # the full CPU bench, a few minutes
    .venv/bin/python -m benchmarks.run --sections train --conversations 4 --repeats 1 --model tiny/
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATA = ROOT / "benchmarks" / "data" / "mixed-lengths.jsonl"
RESULTS = ROOT / "benchmarks" / "results"
SECTIONS = ("train", "compare", "startup", "serve")

# The targets; the bench prints pass/short for each.
TRAIN_SPEEDUP = 1.5  # voicetune's trained tokens/s over the baseline's
LOSS_TOLERANCE = 0.02  # voicetune's assistant loss may be at most 2% above the baseline's
GPU_MEMORY_RATIO = 0.7  # voicetune's peak GPU memory over the baseline's
COMPARE_RATIO = 1.3  # three arms against one
WARM_START_S = 15.0  # warm start-up to first page on a CPU


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes", "gradio"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"cpu": _cpu_name(), "cores": len(os.sched_getaffinity(0)),
                            "torch_threads": torch.get_num_threads(), "host_kind": host_kind(),
                            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                            "device": "cuda" if torch.cuda.is_available() else "cpu", "versions": _versions()}
    if info["device"] == "cuda":
        from benchmarks import gpu

        info.update(gpu.describe())
    return info


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def spread(values: list[float]) -> dict[str, float]:
    """Median and min-max of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt(s: dict[str, float] | None, digits: int = 1) -> str:
    if not s:
        return "n/a"
    if s["n"] == 1:
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def verdict(ok: bool) -> str:
    return "**pass**" if ok else "**short**"


# ---------------------------------------------------------------- training


def _subset(n: int, work: Path) -> Path:
    lines = [line for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()][:n]
    path = work / f"bench-{n}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def train_arm(arm: str, model: str, data: Path, work: Path, tag: str, extra: list[str] | None = None,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """One training arm in its own process; a failing arm comes back as {"failed": its last error line}.

    A failure is a result too (TRL refusing bf16 on a CPU, an out-of-memory): the table reports it and the
    other arms' figures are kept, instead of the whole run losing everything measured before it.
    """
    out, result = work / f"adapter-{tag}", work / f"result-{tag}.json"
    cmd = [sys.executable, "-m", "benchmarks.train_arm", "--arm", arm, "--data", str(data), "--model", model,
           "--out", str(out), "--result", str(result), *(extra or [])]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0 or not result.exists():
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        return {"failed": (lines[-1] if lines else f"exit code {proc.returncode}")[:300]}
    return {**json.loads(result.read_text()), "adapter": str(out)}


def host_kind() -> str:
    """The host's CPU kind as voicetune itself reads it (models.cpu_kind), for the file name and the arms."""
    from voicetune.models import cpu_kind

    return cpu_kind()


EMULATED_STEPS = 2  # bf16 baselines on a CPU without bf16 instructions run ~20x slower: a short sample


def baseline_arms(device: str, kind: str) -> list[tuple[str, str, list[str], bool]]:
    """The hand-written TRL configurations a user could pick on this host: (label, arm, flags, every repeat).

    The fairest baseline is the fastest of them, measured here rather than assumed: fp32 with checkpointing
    off; bf16 autocast with `use_cpu=True` and checkpointing off; TRL's defaults with `use_cpu=True`. On a
    CPU without bf16 instructions the two bf16 arms are sampled once over a few steps (they are emulated
    there and far slower; a full epoch each would take most of an hour).
    """
    if device == "cuda":
        return [("trl, QLoRA defaults", "trl", [], True)]
    from voicetune.models import BF16_CPU_KINDS

    native = kind in BF16_CPU_KINDS
    sample = [] if native else ["--max-steps", str(EMULATED_STEPS), "--no-loss-check"]
    return [("trl, fp32", "trl", ["--precision", "fp32"], True),
            ("trl, bf16 autocast, use_cpu=True", "trl", ["--precision", "bf16", *sample], native),
            ("trl, defaults with use_cpu=True", "trl-defaults", sample, native)]


def bench_train(model: str, data: Path, work: Path, repeats: int, levers: bool, log: Any,
                device: str = "cpu", kind: str = "") -> dict[str, list[dict[str, Any]]]:
    """voicetune and the plain-TRL baselines in turn, `repeats` times; with levers, one lever changed at a time."""
    arms: list[tuple[str, str, list[str], bool]] = [("voicetune", "voicetune", [], True),
                                                   *baseline_arms(device, kind or host_kind())]
    if levers:
        arms += [("voicetune, padded batches grouped by length", "voicetune", ["--padded-batches"], True),
                 ("voicetune, TRL's fused LM head", "voicetune", ["--trl-head"], True),
                 ("voicetune, LoRA dropout 0.05", "voicetune", ["--dropout", "0.05"], True),
                 ("voicetune, padding-free", "voicetune", ["--padding-free", "on"], True),
                 ("voicetune, 1 thread", "voicetune", ["--threads", "1"], True),
                 *([("voicetune, frozen base in fp32 weights", "voicetune", ["--fp32-base"], True)]
                   if device == "cpu" and levers_for(kind or host_kind()).bf16 else []),
                 ("trl, library defaults as is", "trl-defaults", ["--as-is"], False)]
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _, _ in arms}
    for i in range(repeats):
        order = arms if i % 2 == 0 else arms[::-1]
        for label, arm, extra, every in order:
            if i > 0 and (not every or any("failed" in r for r in runs[label])):
                continue  # slow or failing arms are measured once
            log(f"  train {label} (repeat {i + 1}/{repeats})")
            runs[label].append(train_arm(arm, model, data, work, f"{_slug(label)}-{i}", extra))
    return runs


def summarise_train(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for label, all_runs in runs.items():
        rs = [r for r in all_runs if "failed" not in r]
        if not rs:
            if all_runs:
                out[label] = {"failed": all_runs[0]["failed"]}
            continue
        out[label] = {key: spread([r[key] for r in rs if r.get(key) is not None])
                      for key in ("tokens_per_s", "seconds_to_adapter", "peak_memory_mb", "train_loss",
                                  "assistant_loss") if any(r.get(key) is not None for r in rs)}
        out[label]["precision"] = rs[0].get("precision")
        out[label]["steps"] = rs[0].get("steps")
        out[label]["tokens_seen"] = rs[0].get("tokens_seen")
    return out


def best_baseline(summary: dict[str, dict[str, Any]]) -> str | None:
    """The fastest plain-TRL arm that trained the whole epoch (sampled and failed arms cannot be the baseline)."""
    full = summary.get("voicetune", {}).get("steps")
    candidates = [label for label, s in summary.items()
                  if label.startswith("trl") and "as is" not in label and "failed" not in s
                  and s.get("tokens_per_s") and s.get("assistant_loss") and (full is None or s.get("steps") == full)]
    return max(candidates, key=lambda label: summary[label]["tokens_per_s"]["median"], default=None)


# ---------------------------------------------------------------- report


def train_table(summary: dict[str, dict[str, Any]], device: str, gpu_params: int | None = None,
                gpu_name: str | None = None) -> list[str]:
    lines = ["| arm | trained tokens/s | s to saved adapter | peak memory MiB | final train loss | "
             "assistant loss after | precision |", "|---|---|---|---|---|---|---|"]
    for label, s in summary.items():
        if "failed" in s:
            lines.append(f"| {label} | failed: {s['failed'].replace('|', '/')} | | | | | |")
            continue
        lines.append(f"| {label} | {fmt(s.get('tokens_per_s'))} | {fmt(s.get('seconds_to_adapter'))} | "
                     f"{fmt(s.get('peak_memory_mb'), 0)} | {fmt(s.get('train_loss'), 3)} | "
                     f"{fmt(s.get('assistant_loss'), 3)} | {s.get('precision')} |")
    vt, name = summary.get("voicetune"), best_baseline(summary)
    if not vt or "failed" in vt or not name:
        return lines + ["", "- Training speed: no ratio: voicetune or every baseline arm failed (see the table)."]
    base = summary[name]
    speedup = vt["tokens_per_s"]["median"] / base["tokens_per_s"]["median"]
    loss_ok = vt["assistant_loss"]["median"] <= base["assistant_loss"]["median"] * (1 + LOSS_TOLERANCE)
    lines += ["", f"- Baseline: `{name}`, the fastest plain-TRL configuration measured on this host.",
              f"- Training speed: {speedup:.2f}× the baseline's trained tokens/s "
              f"(target ≥ {TRAIN_SPEEDUP}× at the same loss): {verdict(speedup >= TRAIN_SPEEDUP and loss_ok)}",
              f"- Same loss: voicetune {vt['assistant_loss']['median']:.3f} vs baseline "
              f"{base['assistant_loss']['median']:.3f} on the trained conversations' assistant tokens "
              f"(within {LOSS_TOLERANCE:.0%} or lower): {verdict(loss_ok)}"]
    if device == "cuda":
        ratio = vt["peak_memory_mb"]["median"] / base["peak_memory_mb"]["median"]
        lines.append(f"- Peak GPU memory: {ratio:.2f}× the baseline's (target ≤ {GPU_MEMORY_RATIO}×): "
                     f"{verdict(ratio <= GPU_MEMORY_RATIO)}")
        if gpu_params and gpu_name:
            from benchmarks import gpu

            for label in ("voicetune", name):
                m = gpu.mfu(summary[label]["tokens_per_s"]["median"], gpu_params, gpu_name)
                lines.append(f"- MFU {label}: " + (f"{m:.1%} of {gpu_name}'s bf16 peak" if m else "unknown GPU"))
    return lines


def compare_table(rows: list[dict[str, Any]]) -> list[str]:
    ways = list(dict.fromkeys(r["way"] for r in rows))  # batched, in turn, one arm; with --levers, a lever flipped
    by = {w: [r for r in rows if r["way"] == w] for w in ways}
    s = {w: {k: spread([r[k] for r in rs]) for k in ("seconds", "tokens_per_s", "first_token_s")}
         for w, rs in by.items()}
    tokens = {w: spread([r["tokens"] for r in rs]) for w, rs in by.items()}
    in_turn = {r["repeat"]: r["texts"] for r in by["in turn"]}
    same = all(r["texts"] == in_turn[r["repeat"]] for r in by["batched"])
    lines = ["| way | arms | reply tokens | seconds per round | tokens/s | first token in every pane, s |",
             "|---|---|---|---|---|---|"]
    for w in ways:
        arms = 1 if w == "one arm" else 3
        lines.append(f"| {w} | {arms} | {fmt(tokens[w], 0)} | {fmt(s[w]['seconds'], 2)} | {fmt(s[w]['tokens_per_s'])} | "
                     f"{fmt(s[w]['first_token_s'], 2)} |")
    ratio = s["batched"]["seconds"]["median"] / s["one arm"]["seconds"]["median"]
    turn = s["in turn"]["seconds"]["median"] / s["batched"]["seconds"]["median"]
    lines += ["", f"- Three arms batched take {ratio:.2f}× one arm's time (target ≤ {COMPARE_RATIO}×): "
                  f"{verdict(ratio <= COMPARE_RATIO)}; in turn they take {turn:.2f}× the batched time.",
              f"- Batched and in-turn replies are the same tokens (greedy): {'yes' if same else 'NO'}."]
    return lines


def startup_table(cold: list[float], warm: list[float], device: str) -> list[str]:
    lines = ["| start | seconds to first page |", "|---|---|",
             f"| cold (empty model cache: conversion included) | {fmt(spread(cold))} |",
             f"| warm (converted model cached) | {fmt(spread(warm))} |", ""]
    if device == "cpu":
        ok = statistics.median(warm) < WARM_START_S
        lines.append(f"- Warm start-up under {WARM_START_S:.0f} s on a CPU: {verdict(ok)}")
    return lines


def section(heading: str, measure: Any) -> list[str]:
    """A report section; one that fails says so in its place, and the sections measured before it are kept."""
    try:
        return [heading, "", *measure(), ""]
    except Exception as e:  # noqa: BLE001 - a failed measurement is reported, not fatal to the run
        return [heading, "", f"Failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400], ""]


def levers_for(kind: str) -> Any:
    from voicetune import levers

    return levers.for_kind(kind)


def compare_section(model: str, adapter: str, repeats: int, log: Any, flip_lever: bool = False) -> list[str]:
    if not adapter:
        raise RuntimeError("no tuned adapter to compare: the voicetune training arm failed")
    from benchmarks.compare_round import measure

    log(f"compare: one round, 3 arms, {repeats} repeats")
    rows = measure(model, adapter, repeats=repeats, flip_skinny_decode=flip_lever)
    return ["Greedy, at most 48 new tokens per arm; a new customer question every repeat, the three ways "
            "alternating within it.", "", *compare_table(rows)]


def serve_section(model: str, adapter: str, data: Path, work: Path, log: Any) -> list[str]:
    """The OpenAI-compatible endpoint under 20 streaming clients across 3 runs while a training job runs."""
    if not adapter:
        raise RuntimeError("no tuned adapter to serve: the voicetune training arm failed")
    from benchmarks import serve_load

    log("serve: 20 streaming clients across 3 runs, a training job running beside them")
    training = subprocess.Popen([sys.executable, "-m", "benchmarks.train_arm", "--arm", "voicetune", "--data", str(data),
                                 "--model", model, "--out", str(work / "adapter-beside-serve"), "--no-loss-check",
                                 "--result", str(work / "result-beside-serve.json")],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        rows = serve_load.main(["--adapter", adapter])
    finally:
        training.terminate()
        training.wait(timeout=60)
    lines = ["| phase | requests | requests/s | first token, median / p90 s | server peak RSS MiB |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['phase']} | {r['requests']} | {r['requests_per_s']} | {r['ttft_median_s']} / "
                     f"{r['ttft_p90_s']} | {r.get('server_peak_rss_mb') or ''} |")
    return ["`voicetune serve` on loopback, greedy, 24 reply tokens, bounded in count and time; a voicetune "
            "training job runs in another process throughout.", "", *lines]


def startup_section(work: Path, repeats: int, device: str, log: Any) -> list[str]:
    from benchmarks.startup import time_to_page

    cold, warm = [], []
    for i in range(repeats):
        cache = work / f"cache-{i}"
        log(f"start-up: cold and warm (repeat {i + 1}/{repeats})")
        cold.append(time_to_page(cache, work / f"home-cold-{i}"))
        warm.append(time_to_page(cache, work / f"home-warm-{i}"))
    return startup_table(cold, warm, device)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: train, compare, startup, serve")
    p.add_argument("--repeats", type=int, default=3, help="runs of each arm, alternated")
    p.add_argument("--conversations", type=int, default=32, help="conversations each training arm trains on")
    p.add_argument("--model", default="", help="a local model folder; default: the embedded model (CPU) or "
                                               "a random model from --gpu-config (GPU)")
    p.add_argument("--gpu-config", default="smollm2-1.7b", help="benchmarks/configs/<name>.json, on a GPU")
    p.add_argument("--levers", action="store_true", help="also train with one lever changed at a time")
    p.add_argument("--results-dir", default=str(RESULTS))
    a = p.parse_args(argv)
    sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown section(s): {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")

    from voicetune import models

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    info = machine()
    device = info["device"]
    work = Path(tempfile.mkdtemp(prefix="voicetune-bench-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["VOICETUNE_HOME"] = str(work / "home")  # runs and jobs of the bench stay out of the user's workspace
    load_before = os.getloadavg()
    started = time.time()
    report = [f"# voicetune benchmark, {time.strftime('%Y-%m-%d %H:%M')}", "",
              f"Machine: {info['cpu']}, {info['cores']} cores, torch threads {info['torch_threads']}, "
              f"host kind {info['host_kind']} (torch CPU capability {info['cpu_capability']}), device {device}"
              + (f", GPU {info['gpu']} (capability {info['capability']}, CUDA {info['cuda']})" if device == "cuda"
                 else ""), "",
              "Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()), ""]
    if device == "cpu":
        report += ["Levers chosen for this kind (voicetune/levers.py): " + ", ".join(
            f"{k} {v}" for k, v in levers_for(info["host_kind"]).as_record().items() if k != "kind"), ""]
    gpu_params = None
    try:
        model = a.model
        if not model and device == "cuda":
            from benchmarks import gpu

            folder, gpu_params = gpu.random_model(a.gpu_config, models.resolve_base_model(None), work / "gpu-model")
            model = str(folder)
            report.append(f"Model: random {a.gpu_config} ({gpu_params / 1e9:.2f} B parameters), QLoRA.\n")
        elif not model:
            model = models.resolve_base_model(None)  # converts once if needed, before anything is timed
            report.append("Model: the embedded SmolLM2-135M-Instruct, LoRA r16 on all linear layers.\n")
        adapter = ""
        if {"train", "compare", "serve"} & set(sections):
            data = _subset(a.conversations, work)
            if "train" in sections:
                log(f"training: {a.conversations} conversations, {a.repeats} repeats")
                runs = bench_train(model, data, work, a.repeats, a.levers, log, device, info["host_kind"])
                summary = summarise_train(runs)
                adapter = runs["voicetune"][-1].get("adapter", "")
                baseline = summary.get(best_baseline(summary) or "", {})
                steps, seen = baseline.get("steps"), baseline.get("tokens_seen")
                report += ["## Training", "",
                           f"{a.conversations} conversations of benchmarks/data/mixed-lengths.jsonl, one epoch, "
                           f"batch 4 ({steps} steps, {seen} non-padding tokens), same learning rate, schedule and "
                           f"seed on every arm. The baselines are plain TRL + PEFT written by hand (conversational "
                           f"dataset, SFTConfig defaults, LoraConfig all-linear)"
                           + (", in each configuration a user could pick on a CPU (`use_cpu=True`; fp32 or bf16 "
                              "autocast; gradient checkpointing off, or TRL's default on); the fastest one that "
                              "trained the whole epoch is the baseline. " if device == "cpu" else ". ")
                           + "\"Assistant loss after\" scores each saved adapter the same way.", "",
                           *train_table(summary, device, gpu_params, info.get("gpu")), ""]
            if {"compare", "serve"} & set(sections) and not adapter:
                adapter = train_arm("voicetune", model, data, work, "for-compare", ["--no-loss-check"]).get("adapter", "")
        if "compare" in sections:
            report += section("## Compare: one round, 3 arms (base, prompt-only, tuned)",
                              lambda: compare_section(model, adapter, a.repeats, log, a.levers))
        if "serve" in sections:
            report += section("## Serve: the OpenAI-compatible endpoint under load",
                              lambda: serve_section(model, adapter, _subset(a.conversations, work), work, log))
        if "startup" in sections:
            report += section("## Start-up: `python app.py` to the first page served",
                              lambda: startup_section(work, a.repeats, device, log))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    report += [f"Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; after: "
               f"{', '.join(f'{x:.2f}' for x in load_after)}. Whole run: {time.time() - started:.0f} s.", ""]
    text = "\n".join(report)
    print(text)
    name = info.get("gpu") or f"cpu-{info['cores']}core-{info['host_kind']}"
    out = Path(a.results_dir) / f"{time.strftime('%Y-%m-%d')}-{_slug(name)}.md"
    from voicetune.store import atomic_write_text

    atomic_write_text(out, text)
    log(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
