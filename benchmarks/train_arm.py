"""One training arm of the benchmark, run in its own process so its peak memory and model load are its own.

Arms:
- `voicetune`: voicetune's engine, `train.run_sft` with the settings a user gets by default.
- `trl`: what a user writes by hand with plain TRL + PEFT: the conversational "messages" file loaded with
  `datasets`, `SFTConfig` left at its defaults, `LoraConfig(target_modules="all-linear")`. On a CPU it sets
  what a careful user sets there: `use_cpu=True`, gradient checkpointing off, and the precision given by
  `--precision` (fp32; or bf16 autocast, which pays only on CPUs with bf16 instructions).
- `trl-defaults`: SFTConfig's defaults (bf16, gradient checkpointing on); on a CPU with `use_cpu=True`, which
  TRL's own error asks for there, unless `--as-is` (then TRL refuses bf16 on a CPU and the arm fails).

Both sides get the same optimisation settings (learning rate, schedule, batch size, LoRA rank, one epoch
over the same conversations, seed), so every conversation is trained exactly once on each side and only
the engine differs. Afterwards each saved adapter is scored the same way: the mean loss on the assistant
tokens of the trained conversations, so "same loss" compares like with like.

    .venv/bin/python -m benchmarks.train_arm --arm trl --data d.jsonl --model path --out o --result r.json
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ARMS = ("voicetune", "trl", "trl-defaults")


def peak_memory_mb_of(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _optim_settings(cfg: Any) -> dict[str, Any]:
    """The optimisation settings both arms share, taken from voicetune's TrainConfig."""
    return dict(learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler, warmup_steps=0.05,
                per_device_train_batch_size=cfg.batch_size, num_train_epochs=1, max_steps=cfg.max_steps,
                seed=cfg.seed, data_seed=cfg.seed)


def run_voicetune(cfg: Any, device: str) -> dict[str, Any]:
    from voicetune.train import run_sft

    record = run_sft(cfg)
    m = record["metrics"]
    return {"train_loss": m["train_loss"], "tokens_per_s": m["tokens_per_s"], "steps": m["steps"],
            "precision": record["precision"], "threads": record["torch_threads"]}


def trl_fixes(device: str, defaults: bool, precision: str, as_is: bool) -> dict[str, Any]:
    """The SFTConfig settings a hand-written baseline changes from TRL's defaults on this device.

    On a GPU the defaults stand (QLoRA, bf16). On a CPU TRL refuses its own bf16 default without
    `use_cpu=True` ("Your setup doesn't support bf16/gpu"), so a user who reads that error adds the flag; a
    careful user also turns gradient checkpointing off (not needed below ~1.5B parameters, and slow with LoRA)
    and picks the precision the CPU runs fastest, which the bench measures rather than assumes.
    """
    if device == "cuda" or as_is:
        return {}
    if defaults:
        return {"use_cpu": True}
    return {"use_cpu": True, "bf16": precision == "bf16", "gradient_checkpointing": False}


def run_trl(cfg: Any, device: str, fixes: dict[str, Any]) -> dict[str, Any]:
    """The hand-written baseline: nothing of voicetune's is used here."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    kwargs: dict[str, Any] = {}
    if device == "cuda":  # QLoRA as the PEFT and TRL docs write it
        kwargs = dict(dtype=torch.bfloat16, device_map={"": 0}, quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16))
    model = AutoModelForCausalLM.from_pretrained(cfg.base_model, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(cfg.base_model)
    dataset = load_dataset("json", data_files=cfg.data, split="train")
    args = SFTConfig(output_dir=str(Path(cfg.out).parent / f".{Path(cfg.out).name}-work"), report_to="none",
                     save_strategy="no", disable_tqdm=True, include_num_input_tokens_seen="non_padding",
                     **_optim_settings(cfg), **fixes)
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    result = trainer.train()
    trainer.save_model(cfg.out)
    seen = trainer.state.num_input_tokens_seen
    return {"train_loss": result.training_loss, "tokens_per_s": round(seen / result.metrics["train_runtime"], 1),
            "steps": trainer.state.global_step, "tokens_seen": int(seen), "threads": torch.get_num_threads(),
            "precision": ("bf16 autocast" if args.bf16 else "fp16" if args.fp16 else "fp32")
            + (", checkpointing on" if args.gradient_checkpointing else ""),
            "gradient_checkpointing": bool(args.gradient_checkpointing)}


def assistant_loss(base_model: str, adapter: str, data: str, device: str) -> float:
    """Mean loss per assistant token over the trained conversations, one conversation at a time (no padding)."""
    import torch
    from peft import PeftModel

    from voicetune import models
    from voicetune.data import load_conversations
    from voicetune.templates import IGNORE, encode_all

    tokenizer = models.load_tokenizer(base_model)
    encoded, _ = encode_all(tokenizer, load_conversations(data), 100_000)
    precision = models.precision_for(device, qlora=False)
    model = PeftModel.from_pretrained(models.load_model(base_model, precision, for_training=False), adapter).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for e in encoded:
            ids = torch.tensor([e.input_ids], device=model.device)
            labels = torch.tensor([e.labels], device=model.device)
            n = int((labels[:, 1:] != IGNORE).sum())
            total += float(model(input_ids=ids, labels=labels, use_cache=False).loss) * n
            count += n
    return total / max(count, 1)


def switch_levers(padded_batches: bool, trl_head: bool, fp32_base: bool = False) -> None:
    """Turn one of the engine's choices back to TRL's, in this process only, to measure what it is worth."""
    from voicetune import models, train

    if fp32_base:  # the frozen base in fp32 under bf16 autocast, as TRL holds it, instead of bf16 weights
        from dataclasses import replace

        load = models.load_model
        models.load_model = lambda path, precision, for_training=True, attn_implementation=None: load(
            path, replace(precision, bf16=False) if precision.device == "cpu" else precision, for_training,
            attn_implementation)
    if padded_batches:
        train.one_per_micro_batch = lambda cfg, device: False
    if trl_head:
        from trl import SFTTrainer

        train._trainer_class = lambda device: SFTTrainer


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arm", choices=ARMS, required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--model", required=True, help="a local model folder")
    p.add_argument("--out", required=True, help="where the adapter is saved")
    p.add_argument("--result", required=True, help="JSON file that receives the figures")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="trl arm on a CPU: fp32, or bf16 autocast (fast only with bf16 instructions)")
    p.add_argument("--as-is", action="store_true",
                   help="trl-defaults arm: SFTConfig's defaults untouched, without use_cpu=True on a CPU")
    p.add_argument("--padding-free", choices=("on", "off"), default="off",
                   help="voicetune arm only; off is TrainConfig's default")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's choice")
    p.add_argument("--padded-batches", action="store_true",
                   help="voicetune arm only: padded batches grouped by length instead of one conversation per pass")
    p.add_argument("--trl-head", action="store_true",
                   help="voicetune arm only: TRL's own fused LM head instead of train.labelled_head_loss")
    p.add_argument("--fp32-base", action="store_true",
                   help="voicetune arm only: the frozen base in fp32 weights where bf16 training holds it in bf16")
    p.add_argument("--dropout", type=float, default=None, help="voicetune arm only: LoRA dropout")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (-1: one epoch)")
    p.add_argument("--no-loss-check", action="store_true", help="skip scoring the saved adapter")
    a = p.parse_args(argv)

    # Imports are the same for every arm and not part of what is timed.
    import peft  # noqa: F401
    import torch
    import trl  # noqa: F401

    from voicetune import models, store
    from voicetune.config import TrainConfig

    if a.threads:
        torch.set_num_threads(a.threads)
    device = models.detect_device()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cfg = TrainConfig(data=a.data, out=a.out, base_model=a.model, epochs=1, batch_size=a.batch_size,
                      max_steps=a.max_steps, val_fraction=0.0, scorecard=False, early_stopping=False, logging_steps=1,
                      padding_free=a.padding_free == "on")
    if a.dropout is not None:
        cfg.lora.dropout = a.dropout
    switch_levers(padded_batches=a.padded_batches, trl_head=a.trl_head, fp32_base=a.fp32_base)
    started = time.perf_counter()
    if a.arm == "voicetune":
        figures = run_voicetune(cfg, device)
    else:
        defaults = a.arm == "trl-defaults"
        figures = run_trl(cfg, device, trl_fixes(device, defaults, a.precision, a.as_is))
    figures["seconds_to_adapter"] = round(time.perf_counter() - started, 2)
    figures["peak_memory_mb"] = round(peak_memory_mb_of(device))
    if not a.no_loss_check:
        figures["assistant_loss"] = round(assistant_loss(a.model, a.out, a.data, device), 4)
    figures = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in figures.items()}
    store.atomic_write_json(Path(a.result), {"arm": a.arm, "padding_free": a.padding_free, "device": device,
                                             "load_average": os.getloadavg(), **figures})


if __name__ == "__main__":
    main()
