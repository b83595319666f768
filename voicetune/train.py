"""One supervised fine-tuning run: TRL's SFTTrainer with a PEFT LoRA (or QLoRA) adapter.

The data is checked in full before any model is loaded, so a bad file costs seconds, not a model load.
Conversations are tokenized with the base model's own chat template and carry their own labels (loss on
assistant replies only, see templates.py); TRL keeps a dataset that already has `labels` as it is.

    record = run_sft(TrainConfig(data="examples/cosmo-coffee.jsonl", out="workspace/runs/demo"))
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from voicetune import models, store
from voicetune.config import TrainConfig
from voicetune.data import Conversation, DataError, load_conversations, split_train_val
from voicetune.templates import Encoded, encode_all, template_fingerprint

Event = dict[str, Any]
OnEvent = Callable[[Event], None]

RUN_FILE = "run.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _library_versions() -> dict[str, str]:
    import importlib.metadata as md

    names = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes")
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            pass
    return out


def _to_dataset(rows: list[Encoded]) -> Any:
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "input_ids": [r.input_ids for r in rows],
            "labels": [r.labels for r in rows],
            "length": [len(r.input_ids) for r in rows],  # lets the sampler group batches by length
        }
    )


@dataclass
class Prepared:
    train: list[Encoded]
    val: list[Encoded]
    train_convs: list[Conversation]
    val_convs: list[Conversation]  # held out: never trained on, scored by the scorecard
    data_hash: str


def prepare_data(cfg: TrainConfig, tokenizer: Any) -> Prepared:
    """Load, check and encode: every problem in the file is reported before training starts."""
    convs = load_conversations(cfg.data)
    encoded, problems = encode_all(tokenizer, convs, cfg.max_length)
    if problems:
        raise DataError(problems)
    by_line = {c.line: e for c, e in zip(convs, encoded)}
    train_c, val_c = split_train_val(convs, cfg.val_fraction, cfg.seed)
    data_hash = hashlib.sha256(Path(cfg.data).read_bytes()).hexdigest()[:16]
    return Prepared([by_line[c.line] for c in train_c], [by_line[c.line] for c in val_c], train_c, val_c, data_hash)


def _jsonl(convs: list[Conversation]) -> str:
    return "".join(json.dumps({"messages": c.messages}, ensure_ascii=False) + "\n" for c in convs)


def _progress_callback(on_event: OnEvent) -> Any:
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """Forwards the trainer's log lines as events; the UI and CLI render them."""

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            on_event({"type": "start", "total_steps": state.max_steps, "time": time.time()})

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            logs = dict(logs or {})
            on_event({"type": "log", "step": state.global_step, "total_steps": state.max_steps,
                      "epoch": round(state.epoch or 0.0, 3), "time": time.time(), **logs})

    return Progress()


def run_sft(cfg: TrainConfig, on_event: OnEvent | None = None) -> dict[str, Any]:
    """Train an adapter into cfg.out and return the run record written beside it."""
    on_event = on_event or (lambda e: None)
    started = time.time()
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    # Check the data and the template (needs only the tokenizer)
    base_path = models.resolve_base_model(cfg.base_model)
    tokenizer = models.load_tokenizer(base_path)
    prepared = prepare_data(cfg, tokenizer)
    train_rows, val_rows, data_hash = prepared.train, prepared.val, prepared.data_hash
    on_event({"type": "data", "train": len(train_rows), "val": len(val_rows),
              "trained_tokens": sum(r.n_trained for r in train_rows)})

    # Load the model
    import torch
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    precision = models.precision_for(models.detect_device(), cfg.qlora)
    on_event({"type": "status", "message": f"loading the base model ({precision.label})"})
    model = models.load_model(base_path, precision)

    # Build the trainer
    work = Path(tempfile.mkdtemp(prefix=".training-", dir=out.parent))
    steps_per_epoch = math.ceil(len(train_rows) / (cfg.batch_size * cfg.grad_accum))
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(steps_per_epoch * cfg.epochs)
    eval_every = max(1, total_steps // 5)
    args = SFTConfig(
        output_dir=str(work),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if val_rows else "no",
        eval_steps=eval_every,
        save_strategy="no",  # the adapter is saved once, atomically, below
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=precision.bf16,
        fp16=precision.fp16,
        use_cpu=precision.device == "cpu",
        gradient_checkpointing=False,  # 2-3x slower with LoRA and not needed below ~1.5B parameters
        optim="paged_adamw_8bit" if precision.qlora and precision.device == "cuda" else "adamw_torch",
        max_length=None,  # lengths were checked above; TRL must never truncate silently
        train_sampling_strategy="group_by_length",  # less padding per batch
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=_to_dataset(train_rows),
        eval_dataset=_to_dataset(val_rows) if val_rows else None,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[_progress_callback(on_event)],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our Progress callback reports instead of raw dict prints

    # Train
    try:
        result = trainer.train()
        history = [dict(h) for h in trainer.state.log_history]
        final_eval = trainer.evaluate() if val_rows else {}

        # Save the adapter: into a temporary folder, record last, then one rename into place
        on_event({"type": "status", "message": "saving the adapter"})
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        trainer.model.save_pretrained(tmp)
        record = {
            "run_id": out.name,
            "base_model": cfg.base_model,
            "base_model_path": base_path,
            "base_model_hash": models.base_model_fingerprint(base_path),
            "template_hash": template_fingerprint(tokenizer),
            "precision": precision.label,
            "device": precision.device,
            "qlora": precision.qlora,
            "data": {"file": str(cfg.data), "sha256_16": data_hash, "train": len(train_rows), "val": len(val_rows),
                     "trained_tokens": sum(r.n_trained for r in train_rows)},
            "config": cfg.to_dict(),
            "metrics": {"train_loss": result.training_loss, "eval_loss": final_eval.get("eval_loss"),
                        "steps": trainer.state.global_step},
            "history": history,
            "versions": _library_versions(),
            "torch_threads": torch.get_num_threads(),
            "duration_s": round(time.time() - started, 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        cfg.to_yaml(tmp / "config.yaml")
        # The split travels with the adapter, so the scorecard always scores what this run never saw.
        store.atomic_write_text(tmp / "heldout.jsonl", _jsonl(prepared.val_convs))
        store.atomic_write_text(tmp / "fewshot.jsonl", _jsonl(prepared.train_convs[:3]))
        store.atomic_write_json(tmp / RUN_FILE, record)
        store.publish_dir(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    on_event({"type": "done", "out": str(out), "train_loss": result.training_loss,
              "eval_loss": final_eval.get("eval_loss"), "duration_s": record["duration_s"]})
    return record


def read_run(adapter_dir: str | Path) -> dict[str, Any]:
    """The run record of a finished adapter; refuse folders that are not whole voicetune adapters."""
    folder = Path(adapter_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"no adapter folder at {folder}")
    for needed in (RUN_FILE, ADAPTER_WEIGHTS, "adapter_config.json"):
        if not (folder / needed).exists():
            raise FileNotFoundError(f"{folder} is not a finished voicetune adapter: {needed} is missing")
    return json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
