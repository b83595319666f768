"""Finished runs side by side: one row per run, and the settings and results where two runs differ.

A user who trained twice wants to know what changed between the voice they liked and the one they did
not. The run record (run.json) holds everything; this module picks the columns and computes the diff.

    rows = run_rows(jobs.finished_runs())
    diff_runs(record_a, record_b)  # -> [("config.learning_rate", 0.0002, 0.0003), ...]
"""

from __future__ import annotations

from typing import Any

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
