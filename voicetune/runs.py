"""Finished runs side by side: one row per run, and the settings and results where two runs differ.

A user who trained twice wants to know what changed between the voice they liked and the one they did
not. The run record (run.json) holds everything; this module picks the columns and computes the diff.

    rows = run_rows(jobs.finished_runs())
    diff_runs(record_a, record_b)  # -> [("config.learning_rate", 0.0002, 0.0003), ...]
    keep_training_data(run_folder, cfg.data, cfg.heldout_data)  # then a Hub push can offer the dataset
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from voicetune import store

COLUMNS = ["run", "finished", "base model", "preset", "train / val", "epochs", "learning rate", "rank",
           "train loss", "best val loss", "steps", "tokens/s", "peak memory MB", "device", "minutes"]

# Keys that differ between any two runs by construction and say nothing about the voice.
_NOISE = ("run_id", "finished", "history", "duration_s", "config.out", "config.data", "config.checkpoint_dir",
          "config.heldout_data", "data.file", "base_model_path")


def _fmt(value: Any, digits: int = 4) -> Any:
    return round(value, digits) if isinstance(value, float) else value


def run_row(record: dict[str, Any]) -> list[Any]:
    cfg, m, data = record.get("config", {}), record.get("metrics", {}), record.get("data", {})
    return [
        record.get("run_id"), record.get("finished", ""), cfg.get("base_model", ""), cfg.get("preset") or "custom",
        f"{data.get('train', '?')} / {data.get('val', '?')}", _fmt(cfg.get("epochs")), cfg.get("learning_rate"),
        (cfg.get("lora") or {}).get("r"), _fmt(m.get("train_loss")), _fmt(m.get("best_eval_loss")),
        m.get("steps"), m.get("tokens_per_s"), m.get("peak_memory_mb"), record.get("device", ""),
        _fmt((record.get("duration_s") or 0) / 60, 1),
    ]


def run_rows(records: list[dict[str, Any]]) -> list[list[Any]]:
    return [run_row(r) for r in records]


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become dotted keys, so two records compare key by key."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def diff_runs(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Every setting, hash, version and metric that differs, noise left out, sorted by key."""
    fa, fb = flatten(a), flatten(b)
    rows = []
    for key in sorted(set(fa) | set(fb)):
        if any(key == n or key.startswith(n + ".") for n in _NOISE):
            continue
        va, vb = fa.get(key), fb.get(key)
        if va != vb:
            rows.append((key, _fmt(va), _fmt(vb)))
    return rows


# --- The conversations a run trained on ---------------------------------------------------------------------
# A copy sits in the run's own folder, so pushing the dataset reads only this workspace's files, never a path
# from a run record (a shared adapter's record names files of its author's machine). A shared adapter's zip
# never carries these, so an imported run has no dataset to push.

TRAINING_DATA = "data.jsonl"  # the file the run read, byte for byte
TRAINING_HELDOUT = "heldout-data.jsonl"  # the conversations marked held out, when the run had them


def keep_training_data(run_folder: Path, data: str | Path, heldout: str | Path | None = None) -> None:
    """Copy the files a finished run read into its folder (each written whole, then renamed into place)."""
    for source, name in ((data, TRAINING_DATA), (heldout, TRAINING_HELDOUT)):
        # An empty held-out file is not part of the run's fingerprint (train.prepare_data), so it is not kept
        if source and Path(source).is_file() and (name == TRAINING_DATA or Path(source).read_bytes().strip()):
            with store.atomic_file(Path(run_folder) / name, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out)


def training_data(run_folder: Path) -> list[Path]:
    """The kept copies of what the run read ([] if none): the data file, then the held-out file if any."""
    folder = Path(run_folder)
    data = folder / TRAINING_DATA
    if not data.is_file():
        return []
    heldout = folder / TRAINING_HELDOUT
    return [data, *([heldout] if heldout.is_file() else [])]


def locate(run: str) -> tuple[Path, dict[str, Any]]:
    """A finished run, by id in this workspace or by the folder a command-line user names, and its record.

    Cheap and first: every verb finds its run before it loads a model, and a refusal names the run as the
    user typed it, never a folder of the server.
    """
    import json

    from voicetune.train import ADAPTER_WEIGHTS, RUN_FILE, read_run

    folder = Path(run) if run and Path(run).is_dir() else store.run_dir(run)  # refuses ids that leave runs/
    if not folder.is_dir():
        raise ValueError(f"no finished run called {run!r} in this workspace")
    for needed in (RUN_FILE, ADAPTER_WEIGHTS, "adapter_config.json"):
        if not (folder / needed).is_file():
            raise ValueError(f"{folder.name} is not a finished voicetune run: {needed} is missing")
    try:
        record = read_run(folder)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{folder.name} is not a finished voicetune run: {RUN_FILE} is not valid JSON") from None
    if not isinstance(record, dict):
        raise ValueError(f"{folder.name} is not a finished voicetune run: {RUN_FILE} holds no run record")
    return folder, record
