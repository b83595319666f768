"""The run folder: its file names, its record (run.json), and every way in and out of it.

A finished run is one folder under the workspace's runs/, named by its run id, laid out by `write` and read
by `read`. Training writes it; chat, the scorecard, export, the Hub push, serving and shared-adapter imports
read it through this module alone, so the layout has one owner and a refusal one type (RunError).

    folder = resolve("20260101-120000-cosmo-abc123")  # or a folder a command-line user names
    record = read(folder)                              # RunError if it is not a whole finished run
    rows = run_rows(finished())                        # the Train tab's table, newest first
    diff_runs(record_a, record_b)  # -> [("config.learning_rate", 0.0002, 0.0003), ...]
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from voicetune import levers, models, store
from voicetune.data import is_drafted
from voicetune.templates import template_fingerprint

# --- The folder's files ----------------------------------------------------------------------------------------
RUN_FILE = "run.json"  # the run record: settings, data hashes, metrics, history, versions; written last
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # PEFT's LoRA weights
ADAPTER_CONFIG = "adapter_config.json"  # PEFT's adapter settings
CONFIG_FILE = "config.yaml"  # the resolved TrainConfig, to read, diff and rerun
HELDOUT_FILE = "heldout.jsonl"  # the conversations this run never trained on: what the scorecard scores
REPLAY_FILE = "replay.jsonl"  # the base's own general answers mixed into training (replay.py), if any
FEWSHOT_FILE = "fewshot.jsonl"  # three training conversations: the scorecard's prompt-only baseline
SCORECARD_FILE = "scorecard.json"  # the scorecard, once computed
PROMPTS_FILE = "prompts.txt"  # the unseen test prompts the run was last scored on, one per line (if set)
MODEL_CARD = "README.md"  # the model card written after training
REQUIRED = (RUN_FILE, ADAPTER_WEIGHTS, ADAPTER_CONFIG)  # without these a folder is no finished run


class RunError(ValueError):
    """A run that is missing or not whole; the message names the run as the user knows it, never a server path."""


def resolve(run: str | Path) -> Path:
    """A run's folder: by id in this workspace, or the folder a command-line user names. Reads nothing."""
    if isinstance(run, Path) or (run and Path(run).is_dir()):
        folder = Path(run)
    else:
        try:
            folder = store.run_dir(str(run))  # refuses ids that leave runs/
        except ValueError:
            raise RunError(f"no finished run called {run!r} in this workspace") from None
    if not folder.is_dir():
        raise RunError(f"no finished run called {folder.name if isinstance(run, Path) else run!r} in this workspace")
    return folder


def read(folder: str | Path) -> dict[str, Any]:
    """The run record of a whole finished run; a half-written or damaged folder is refused with RunError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunError(f"no finished run called {folder.name!r} in this workspace")
    for needed in REQUIRED:
        if not (folder / needed).is_file():
            raise RunError(f"{folder.name} is not a finished voicetune run: {needed} is missing")
    try:
        record = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunError(f"{folder.name} is not a finished voicetune run: {RUN_FILE} is not valid JSON") from None
    if not isinstance(record, dict):
        raise RunError(f"{folder.name} is not a finished voicetune run: {RUN_FILE} holds no run record")
    return record


def locate(run: str | Path) -> tuple[Path, dict[str, Any]]:
    """A finished run and its record. Cheap and first: every verb finds its run before it loads a model."""
    folder = resolve(run)
    return folder, read(folder)


def finished() -> list[dict[str, Any]]:
    """Every whole run in the workspace, newest first; half-written folders are never listed."""
    records = []
    for folder in sorted(store.runs_dir().iterdir(), reverse=True):
        if folder.name.startswith("."):
            continue
        try:
            records.append(read(folder))
        except RunError:
            continue
    return records


# --- Fingerprints the record carries -------------------------------------------------------------------------

def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    names = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes")
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            pass
    return out


def files_fingerprint(paths: list[str | Path]) -> str:
    """The run's data fingerprint, recorded in run.json: a push checks the files against it before upload."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def tokenizer_hash(tokenizer: Any) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


def split_hash(convs: list[Any]) -> str:
    return hashlib.sha256(jsonl(convs).encode()).hexdigest()[:16]


def jsonl(convs: list[Any]) -> str:
    return "".join(json.dumps({"messages": c.messages}, ensure_ascii=False) + "\n" for c in convs)

# --- Runs side by side -----------------------------------------------------------------------------------------

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


# --- The record and the folder training writes -----------------------------------------------------------

def record(cfg: Any, prepared: Any, *, base_path: str, tokenizer: Any, plan: Any, trainer: Any, result: Any,
           final_eval: dict[str, Any], history: list[dict[str, Any]], total_steps: int, tokens_per_s: float | None, peak_memory_mb: float,
           resumed_from: str | None, world: int, started: float) -> dict[str, Any]:
    """The run record: what trained (base, template, data and split hashes, settings), how (precision, batching),
    what came of it (metrics, history), and with which library versions, so two runs can be read and diffed."""
    import torch

    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    train_rows, val_rows = prepared.train, prepared.val
    return {
        "run_id": Path(cfg.out).name,
        "base_model": cfg.base_model,
        "base_model_path": base_path,
        "base_model_hash": models.base_model_fingerprint(base_path),
        "template_hash": template_fingerprint(tokenizer),
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "precision": plan.precision.label,
        "device": plan.precision.device,
        "qlora": plan.precision.qlora,
        "world_size": world,
        # How the engine ran the batches: conversations per forward pass, passes per update, loss head
        "micro_batch": trainer.args.per_device_train_batch_size,
        "accumulation": trainer.args.gradient_accumulation_steps,
        "loss_head": type(trainer).__name__,
        "padding_free": plan.padding_free,
        "activation_checkpointing": plan.checkpointing,
        # The CPU speed levers this host's kind chose (levers.py), so a run's speed can be read against its host
        "cpu_levers": levers.chosen().as_record() if plan.precision.device == "cpu" else None,
        "estimated_memory_mb": round(plan.estimate.total(plan.checkpointing) / 2**20) if plan.estimate else None,
        "data": {"file": str(cfg.data), "sha256_16": prepared.data_hash, "train": len(train_rows),
                 "val": len(val_rows), "trained_tokens": sum(r.n_trained for r in train_rows),
                 "drafted": sum(is_drafted(c) for c in prepared.train_convs),  # accepted drafts trained on
                 "replay": len(prepared.replay),  # the base's own general answers mixed in (replay.py)
                 "general_val": len(prepared.general_val),  # ... and those pooled into the validation loss
                 "val_source": "held-out conversations" if cfg.heldout_data else f"{cfg.val_fraction:.0%} split",
                 "train_split_hash": split_hash(prepared.train_convs),
                 "val_split_hash": split_hash(prepared.val_convs)},
        "config": cfg.to_dict(),
        "metrics": {"train_loss": result.training_loss, "eval_loss": final_eval.get("eval_loss"),
                    "best_eval_loss": min(evals) if evals else None,
                    "best_step": best_step(history), "steps": trainer.state.global_step,
                    "planned_steps": total_steps, "early_stopped": trainer.state.global_step < total_steps,
                    "tokens_per_s": tokens_per_s, "peak_memory_mb": round(peak_memory_mb)},
        "resumed_from": resumed_from,
        "history": history,
        "versions": library_versions(),
        "torch_threads": torch.get_num_threads(),
        "duration_s": round(time.time() - started, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def best_step(history: list[dict[str, Any]]) -> int | None:
    evals = [(h["eval_loss"], h["step"]) for h in history if "eval_loss" in h and "step" in h]
    return min(evals)[1] if evals else None


def write(model: Any, record: dict[str, Any], cfg: Any, prepared: Any, out: Path,
          extra: dict[str, str] | None = None) -> None:
    """Lay out the run folder in a temporary folder, run record last, then move it into place in one rename.

    A failed write (a full disk) removes the temporary folder and leaves any previous run at `out` as it
    was. A cancel (SIGTERM) is held back during the final rename, so it can never leave half a swap.
    `extra`: more files of the run (name -> text), published in the same rename (a DPO run's pairs).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)  # ADAPTER_WEIGHTS and ADAPTER_CONFIG
        cfg.to_yaml(tmp / CONFIG_FILE)
        # The split travels with the adapter, so the scorecard always scores what this run never saw.
        store.atomic_write_text(tmp / HELDOUT_FILE, jsonl(prepared.val_convs))
        store.atomic_write_text(tmp / FEWSHOT_FILE, jsonl(prepared.train_convs[:3]))
        if prepared.replay_convs:
            store.atomic_write_text(tmp / REPLAY_FILE, jsonl(prepared.replay_convs))
        for name, text in (extra or {}).items():
            store.atomic_write_text(tmp / name, text)
        store.atomic_write_json(tmp / RUN_FILE, record)
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            store.publish_dir(tmp, out)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
