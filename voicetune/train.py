"""One supervised fine-tuning run: TRL's SFTTrainer with a PEFT LoRA (or QLoRA) adapter.

The data is checked in full before any model is loaded, so a bad file costs seconds, not a model load.
Conversations are tokenized with the base model's own chat template and carry their own labels (loss on
assistant replies only, see templates.py); TRL keeps a dataset that already has `labels` as it is.

    record = run_sft(TrainConfig(data="examples/cosmo-coffee.jsonl", out="workspace/runs/demo"))
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from voicetune import memory, models, replay, runs, store
from voicetune.config import TrainConfig
from voicetune.data import Conversation, DataError, load_conversations, split_train_val
from voicetune.templates import Encoded, encode_all

Event = dict[str, Any]
OnEvent = Callable[[Event], None]

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
    replay: list[Encoded] = field(default_factory=list)  # the base's own general answers (replay.py), trained on
    replay_convs: list[Conversation] = field(default_factory=list)  # ... and nothing else: never scored or shown
    general_val: list[Encoded] = field(default_factory=list)  # other general answers, watched beside val, never trained


def prepare_data(cfg: TrainConfig, tokenizer: Any) -> Prepared:
    """Load, check and encode: every problem in the file is reported before training starts.

    Conversations the user marked "held out" (cfg.heldout_data) are the validation set; otherwise a seeded
    share of the data is held back.
    """
    convs = load_conversations(cfg.data)
    held = load_conversations(cfg.heldout_data) if cfg.heldout_data else []
    encoded, problems = encode_all(tokenizer, convs, cfg.max_length)
    held_encoded, held_problems = encode_all(tokenizer, held, cfg.max_length) if held else ([], [])
    problems += [replace(p, message=f"(held-out file) {p.message}") for p in held_problems]
    if problems:
        raise DataError(problems)
    by_line = {c.line: e for c, e in zip(convs, encoded)}
    if held:
        train_c, val_c = list(convs), held
        train, val = [by_line[c.line] for c in train_c], held_encoded
    else:
        train_c, val_c = split_train_val(convs, cfg.val_fraction, cfg.seed)
        train, val = [by_line[c.line] for c in train_c], [by_line[c.line] for c in val_c]
    return Prepared(train, val, train_c, val_c, runs.files_fingerprint([cfg.data, *([cfg.heldout_data] if held else [])]))


def add_replay(cfg: TrainConfig, model: Any, tokenizer: Any, prepared: Prepared, on_event: OnEvent) -> Prepared:
    """Mix in the base model's own answers to general questions (replay.py); called before the adapter exists.

    A run that watches general answers too (early_stopping_watch) also gets as many other general answers as it
    holds out conversations, to pool into its validation loss (measured and not Auto's: docs/recipes.md)."""
    n = replay.how_many(cfg.replay, len(prepared.train))
    watch = len(prepared.val) if cfg.early_stopping_watch == "voice+general" and prepared.val else 0
    if not n and not watch:
        return prepared
    on_event({"type": "status", "phase": "loading",
              "message": f"asking the base model {n + watch} general questions to keep its plain answers (replay)"})
    questions = replay.choose(n, cfg.seed)
    convs, encoded = _base_answers(model, tokenizer, questions, cfg.max_length)
    _, watched = _base_answers(model, tokenizer, replay.choose_apart(watch, cfg.seed, questions), cfg.max_length)
    if n:  # said, not silent: an answer the base did not finish, or one too long to train on, is left out
        on_event({"type": "status", "phase": "loading", "replay_asked": n, "replay_kept": len(encoded),
                  "message": f"replay: {len(encoded)} of the base's {n} general answers kept and trained on "
                             f"(one it did not finish, or too long to train on, is left out, never cut)"})
    return replace(prepared, replay=encoded, replay_convs=convs, general_val=watched)


def _base_answers(model: Any, tokenizer: Any, questions: list[str],
                  max_length: int) -> tuple[list[Conversation], list[Encoded]]:
    """The base's answers to `questions` as conversations and their encodings; one too long is left out, not cut."""
    if not questions:
        return [], []
    convs = [Conversation(m, line=i + 1) for i, m in enumerate(replay.answer(model, tokenizer, questions))]
    encoded, problems = encode_all(tokenizer, convs, max_length)  # the encodings of the convs it accepted
    refused = {p.line for p in problems}
    return [c for c in convs if c.line not in refused], encoded


COMPLETE_MARK = "voicetune-complete"  # written after the trainer's last checkpoint file: the checkpoint is whole


def peak_memory_mb_of(device: str) -> float:
    """Peak memory of this process: allocated CUDA memory on a GPU, resident set size on a CPU."""
    import torch

    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def progress_callback(on_event: OnEvent, device: str) -> Any:
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """Forwards the trainer's log lines as events with throughput and memory; marks whole checkpoints."""

        started = 0.0
        tokens_at_start = 0
        tokens_per_s: float | None = None  # non-padding tokens per second in this session (resumes excluded)

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.started, self.tokens_at_start = time.time(), state.num_input_tokens_seen
            on_event({"type": "start", "phase": "training", "total_steps": state.max_steps, "time": self.started,
                      "resumed_at": state.global_step})

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            logs = {k: v for k, v in dict(logs or {}).items() if not k.startswith("train_")}
            elapsed = max(time.time() - self.started, 1e-9)
            seen = state.num_input_tokens_seen - self.tokens_at_start
            self.tokens_per_s = round(seen / elapsed, 1)
            on_event({"type": "log", "step": state.global_step, "total_steps": state.max_steps,
                      "epoch": round(state.epoch or 0.0, 3), "time": time.time(), **logs,
                      "tokens_per_s": self.tokens_per_s, "peak_memory_mb": round(peak_memory_mb_of(device))})

        def on_save(self, args, state, control, **kw):  # noqa: ANN001
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if folder.is_dir():
                    store.atomic_write_text(folder / COMPLETE_MARK, f"{state.global_step}\n")

    return Progress()


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest checkpoint whose files were all written; a checkpoint cut off mid-save is skipped."""
    root = Path(folder)
    if not root.is_dir():
        return None
    whole = [c for c in root.glob("checkpoint-*") if (c / COMPLETE_MARK).exists()]
    return max(whole, key=lambda c: int(c.name.split("-")[-1]), default=None)


def _early_stopping(cfg: TrainConfig, n_train: int, n_val: int) -> bool:
    if not n_val:
        return False
    return cfg.early_stopping if cfg.early_stopping is not None else n_train < 500


def _rank() -> tuple[int, int]:
    """This process's rank and the world size under `accelerate launch` (0 and 1 when run alone)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def one_per_micro_batch(cfg: TrainConfig, device: str) -> bool:
    """On a CPU, train one conversation per forward pass and accumulate gradients up to the batch size.

    A CPU's matrix units are already saturated by one conversation, so a padded batch only adds work: with
    this data's length spread a third or more of a padded batch is padding, and its mask keeps attention off
    the fast causal path. One conversation per pass has neither, and the loss is the same: the trainer
    divides each update by the trained tokens of the whole accumulated batch. `make bench` measures it.
    A GPU needs the batch to fill its cores, so there the batch stays (grouped by length, or padding-free).
    """
    return device == "cpu" and not cfg.padding_free


def micro_batching(cfg: TrainConfig, device: str) -> tuple[int, int]:
    """Conversations per forward pass and passes per update (see one_per_micro_batch)."""
    if one_per_micro_batch(cfg, device):
        return 1, cfg.batch_size * cfg.grad_accum
    return cfg.batch_size, cfg.grad_accum


VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "flex_attention")


def padding_free_plan(asked: bool, device: str, attention: str | None) -> tuple[bool, str | None]:
    """Whether padding-free batches are used, and the attention implementation to load the model with.

    Padding-free pays only with an attention that reads the conversation boundaries from position_ids: flash
    attention's varlen kernels, or flex attention's block-sparse mask. On sdpa or eager transformers builds a
    dense (tokens x tokens) block mask instead, which costs more than the padding it saves. So: honoured as is
    on a varlen attention; on a GPU the model is loaded with flex attention; on a CPU (no flex kernel without
    a compiler) it stays off, and the CPU's one-conversation-per-pass batches waste no padding anyway.
    """
    if not asked:
        return False, None
    if attention in VARLEN_ATTENTION:
        return True, None
    if device == "cuda":
        return True, "flex_attention"
    return False, None


def checkpointing_for(cfg: TrainConfig, estimate: memory.TrainingEstimate | None, available: int | None) -> bool:
    """The config's choice, or (None) on exactly when the memory estimate says the run would not fit without it."""
    if cfg.activation_checkpointing is not None:
        return cfg.activation_checkpointing
    return estimate is not None and memory.checkpointing_needed(estimate, available)


def _sft_args(cfg: TrainConfig, work: Path, precision: models.Precision, total_steps: int, has_val: bool,
              early: bool, checkpointing: bool = False) -> Any:
    from trl import SFTConfig

    micro_batch, accumulate = micro_batching(cfg, precision.device)
    eval_every = max(1, total_steps // 5)
    # Checkpoints serve two things: resuming an interrupted job and keeping the best one for early stopping.
    # They are saved at each evaluation, so the best by validation loss is always on disk.
    save = bool(cfg.checkpoint_dir) or early
    return SFTConfig(
        output_dir=str(work),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=micro_batch,
        per_device_eval_batch_size=micro_batch,
        gradient_accumulation_steps=accumulate,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=0.05,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if has_val else "no",
        eval_steps=eval_every,
        save_strategy="steps" if save else "no",
        save_steps=eval_every,
        save_total_limit=2 if save else None,
        load_best_model_at_end=early,
        metric_for_best_model="eval_loss" if early else None,
        greater_is_better=False if early else None,
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=precision.bf16,
        fp16=precision.fp16,
        use_cpu=precision.device == "cpu",
        # transformers 5's name (`gradient_checkpointing` is its deprecated alias, and TRL defaults that alias
        # to True: passing the new name explicitly overrides both). See checkpointing_for.
        activation_checkpointing=checkpointing,
        optim="paged_adamw_8bit" if precision.qlora and precision.device == "cuda" else "adamw_torch",
        max_length=None,  # lengths were checked above; TRL must never truncate silently
        train_sampling_strategy="group_by_length",  # less padding per batch
        padding_free=cfg.padding_free,  # see TrainConfig.padding_free
        include_num_input_tokens_seen="non_padding",  # for tokens per second
        disable_tqdm=True,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # LoRA leaves the frozen base unused by design
    )


def labelled_head_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> tuple[Any, Any]:
    """Next-token loss computed through the LM head only at positions whose next token is trained.

    Written by hand because TRL's fused LM head, which does the same on a GPU with a Triton kernel, falls
    back on other devices to a dozen whole-tensor torch passes per vocabulary tile, plus the entropy and top-1
    statistics it logs: on a CPU that head took over a third of every step (`make bench`). Here the hidden
    states of the trained positions go through the head once (transformers' `logits_to_keep` takes their
    indices) into one fused cross-entropy. Returns the loss, divided like TRL's by the trained tokens of the
    whole accumulated batch, and the share of next tokens the model got right.
    """
    import torch
    import torch.nn.functional as F

    labels = inputs["labels"]
    targets = labels[:, 1:]
    keep = (targets != -100).any(dim=0).nonzero().squeeze(-1)  # positions whose next token is trained
    logits = model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=keep, use_cache=False).logits
    kept = targets[:, keep]
    total = F.cross_entropy(logits.float().flatten(0, 1), kept.flatten(), ignore_index=-100, reduction="sum")
    trained = kept != -100
    loss = total / (num_items_in_batch if num_items_in_batch is not None else trained.sum().clamp(min=1))
    with torch.no_grad():
        accuracy = ((logits.argmax(-1) == kept) & trained).sum() / trained.sum().clamp(min=1)
    return loss, accuracy


def _trainer_class(device: str) -> type:
    """TRL's SFTTrainer, with `labelled_head_loss` on devices where its fused head has no Triton kernel."""
    from trl import SFTTrainer

    if device == "cuda":
        return SFTTrainer

    class LabelledHeadSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            mode = "train" if self.model.training else "eval"
            loss, accuracy = labelled_head_loss(model, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as TRL does: DDP averages the ranks' gradients
            self._metrics[mode]["mean_token_accuracy"].append(float(self.accelerator.gather_for_metrics(accuracy).mean()))
            if mode == "train" and "attention_mask" in inputs:
                self._total_train_tokens += int(self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum())
                self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, None) if return_outputs else loss

    return LabelledHeadSFTTrainer


def keep_adapters_fp32(model: Any) -> int:
    """Put the trainable (LoRA) parameters back in fp32, whatever the compute precision; returns how many moved.

    TRL 1.16 casts the trainable parameters of any quantized model to bf16, whatever the precision flags
    (sft_trainer.py, after get_peft_model; PEFT's autocast_adapter_dtype is not honoured for quantized models,
    peft#2889). Under fp16 (a T4 or V100) the trainer's GradScaler then meets bf16 gradients and fails at the
    first optimizer step (trl#4901). Under bf16 the adapter would learn in bf16: an AdamW step of ~1e-4 on a
    LoRA weight of ~0.05 is below bf16's resolution there (8 bits of mantissa), so small updates round away.
    fp32 master weights under 16-bit autocast are the usual mixed-precision recipe and PEFT's own default for
    unquantized models, and cost a few MB. The GPU check found the bf16 copy on an H100 (2026-11-26). Done after
    the trainer is built and before train() creates the optimizer; `param.data` keeps each Parameter object,
    so nothing holds a stale one.
    """
    import torch

    moved = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            moved += 1
    return moved


@dataclass
class Plan:
    """How this run uses the device, decided before the model loads, and recorded in run.json."""

    precision: models.Precision
    padding_free: bool
    attention: str | None  # attention implementation to load with; None: transformers' default (sdpa)
    checkpointing: bool
    estimate: memory.TrainingEstimate | None


def plan_run(cfg: TrainConfig, base_path: str, device: str, longest: int | None = None) -> Plan:
    """How this run uses the device. `longest`: the longest training example in tokens, when known.

    A micro-batch is never longer than its longest example (batches pad to their own longest, and padding-free
    packs at most micro_batch examples), so the activation estimate uses that, not the max length: on an H100 a
    1.7B QLoRA run estimated at the 4,096-token max length said 45 GB where it peaked at 5.6 GB (the GPU check,
    2026-11-26), which would have turned checkpointing on, 20-30% slower, on any card under 50 GB.
    """
    precision = models.precision_for(device, cfg.qlora)
    padding_free, attention = padding_free_plan(cfg.padding_free, device, None)
    micro_batch, _ = micro_batching(replace(cfg, padding_free=padding_free), device)
    shape = memory.shape_of(base_path)
    length = min(cfg.max_length, longest) if longest else cfg.max_length
    estimate = None if shape is None else memory.training_estimate(
        shape, qlora=precision.qlora, lora_rank=cfg.lora.r, micro_batch=micro_batch, max_length=length,
        eight_bit_optimizer=precision.qlora and device == "cuda")
    checkpointing = checkpointing_for(cfg, estimate, memory.free_bytes(device))
    return Plan(precision, padding_free, attention, checkpointing, estimate)


def build_trainer(cfg: TrainConfig, plan: Plan, model: Any, tokenizer: Any, prepared: Prepared, work: Path,
                  total_steps: int, early: bool, callbacks: list[Any]) -> Any:
    """TRL's SFTTrainer with our LoRA config, args and callbacks; the adapter left in the dtype it trains in."""
    from peft import LoraConfig
    from transformers.trainer_callback import PrinterCallback

    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    run_cfg = replace(cfg, padding_free=plan.padding_free)
    trainer = _trainer_class(plan.precision.device)(
        model=model,
        args=_sft_args(run_cfg, work, plan.precision, total_steps, bool(prepared.val), early, plan.checkpointing),
        train_dataset=_to_dataset(prepared.train + prepared.replay),
        eval_dataset=_to_dataset(prepared.val + prepared.general_val) if prepared.val else None,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # our Progress callback reports instead of raw dict prints
    keep_adapters_fp32(trainer.model)
    return trainer


def release_device_memory() -> None:
    """Give back what a finished run held, before the scorecard loads its own copy of the base model.

    The trainer, its model and its callbacks reference each other, so they wait for the cycle collector, and
    bitsandbytes keeps every paged optimizer buffer in a process-wide list: without this a 7-8B run left
    several GB allocated on the GPU while the scorecard loaded the base again in the same process.
    """
    import gc

    import torch

    try:
        from bitsandbytes.functional import GlobalPageManager

        GlobalPageManager.get_instance().paged_tensors.clear()
    except ImportError:
        pass
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def resume_point(cfg: Any, resume: bool, on_event: OnEvent) -> Path | None:
    """The newest whole checkpoint to resume from when asked (and the run keeps checkpoints); says so when there
    is none. SFT and DPO runs resume the same way."""
    checkpoint = latest_checkpoint(cfg.checkpoint_dir) if resume and cfg.checkpoint_dir else None
    if resume and checkpoint is None:
        on_event({"type": "status", "message": "no whole checkpoint to resume from: starting from the beginning"})
    return checkpoint


def train_and_evaluate(trainer: Any, checkpoint: Path | None, has_val: bool,
                       on_event: OnEvent) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    """Train (from `checkpoint` when given), then evaluate once. Returns TRL's result, the curve as trained
    (before the final evaluation, which would otherwise join it) and the final evaluation ({} without one)."""
    if checkpoint is not None:
        on_event({"type": "status", "message": f"resuming from {checkpoint.name}"})
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    history = [dict(h) for h in trainer.state.log_history]
    final_eval = (logged_evaluation(trainer) or trainer.evaluate()) if has_val else {}
    return result, history, final_eval


def logged_evaluation(trainer: Any) -> dict[str, Any]:
    """The evaluation already logged for the weights the model holds now, or {} when there is none.

    A run whose last step is an evaluation step (every run of fewer than ten steps, and any whose steps divide
    by the interval), or whose early stopping reloaded the best checkpoint, was already evaluated on exactly these
    weights: evaluating again costs a pass over the validation set (and, for DPO, the reference's too) for the
    same numbers. Eval mode has no dropout, so the logged numbers are the ones a new pass would give."""
    state = trainer.state
    reloaded = trainer.args.load_best_model_at_end and state.best_model_checkpoint is not None  # as Trainer decides
    step = int(Path(state.best_model_checkpoint).name.rsplit("-", 1)[-1]) if reloaded else state.global_step
    logged = [h for h in state.log_history if h.get("step") == step and "eval_loss" in h]
    return {k: v for k, v in logged[-1].items() if k.startswith("eval_")} if logged else {}


def done_event(out: Path, result: Any, final_eval: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The event that ends a run's log: where it went, its losses and how long it took."""
    return {"type": "done", "out": str(out), "train_loss": result.training_loss,
            "eval_loss": final_eval.get("eval_loss"), "duration_s": record["duration_s"]}


def run_sft(cfg: TrainConfig, on_event: OnEvent | None = None, resume: bool = False) -> dict[str, Any]:
    """Train an adapter into cfg.out and return the run record written beside it.

    With resume=True, training continues from the newest whole checkpoint in cfg.checkpoint_dir.
    Under `accelerate launch`, every process trains and only the first one reports and saves.
    Everything the run held (trainer, model, optimizer state) is released before this returns.
    """
    try:
        return _train(cfg, on_event, resume)
    finally:
        release_device_memory()


def work_folder(cfg: TrainConfig, out: Path) -> Path:
    """Where the trainer writes checkpoints: the job's folder (kept, to resume), else a temporary one beside out."""
    if cfg.checkpoint_dir:
        work = Path(cfg.checkpoint_dir)
        work.mkdir(parents=True, exist_ok=True)
        return work
    return Path(tempfile.mkdtemp(prefix=".training-", dir=out.parent))


def _train(cfg: TrainConfig, on_event: OnEvent | None, resume: bool) -> dict[str, Any]:
    rank, world = _rank()
    on_event = (on_event or (lambda e: None)) if rank == 0 else (lambda e: None)
    started = time.time()
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    # Check the data and the template (needs only the tokenizer)
    base_path = models.resolve_base_model(cfg.base_model)
    tokenizer = models.load_tokenizer(base_path)
    prepared = prepare_data(cfg, tokenizer)
    train_rows, val_rows = prepared.train, prepared.val
    on_event({"type": "data", "train": len(train_rows), "val": len(val_rows),
              "trained_tokens": sum(r.n_trained for r in train_rows)})

    # Plan the device's use, then load the model
    from transformers import EarlyStoppingCallback

    longest = max((len(r.input_ids) for r in train_rows), default=0)
    plan = plan_run(cfg, base_path, models.detect_device(), longest=longest)
    precision = plan.precision
    if cfg.padding_free and not plan.padding_free:
        on_event({"type": "status", "message": "padding-free batches need flash or flex attention, which this "
                  "device lacks: training one conversation per pass instead (same loss, no padding)"})
    if plan.checkpointing and cfg.activation_checkpointing is None:
        on_event({"type": "status", "message": "activation checkpointing on: the run would not fit in this "
                  "GPU's free memory without it (about 20-30% slower)"})
    on_event({"type": "status", "phase": "loading", "message": f"loading the base model ({precision.label})"})
    model = models.load_model(base_path, precision, attn_implementation=plan.attention)
    prepared = add_replay(cfg, model, tokenizer, prepared, on_event)

    # Build the trainer
    checkpoint = resume_point(cfg, resume, on_event)
    work = work_folder(cfg, out)
    steps_per_epoch = math.ceil((len(train_rows) + len(prepared.replay)) / (cfg.batch_size * cfg.grad_accum * world))
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(steps_per_epoch * cfg.epochs)
    early = _early_stopping(cfg, len(train_rows), len(val_rows))
    callbacks = [progress_callback(on_event, precision.device)]
    if early:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    trainer = build_trainer(cfg, plan, model, tokenizer, prepared, work, total_steps, early, callbacks)
    del model  # the trainer holds the PEFT-wrapped model; no second reference outlives it

    # Train
    try:
        result, history, final_eval = train_and_evaluate(trainer, checkpoint, bool(val_rows), on_event)
        print(f"rank {rank}/{world}: trained {trainer.state.global_step} steps", file=sys.stderr, flush=True)
        if rank != 0:
            trainer.accelerator.wait_for_everyone()
            return {}

        record = runs.record(cfg, prepared, base_path=base_path, tokenizer=tokenizer, plan=plan, trainer=trainer,
                             result=result, final_eval=final_eval, history=history, total_steps=total_steps,
                             tokens_per_s=callbacks[0].tokens_per_s, peak_memory_mb=peak_memory_mb_of(precision.device),
                             resumed_from=checkpoint.name if checkpoint else None, world=world, started=started)
        on_event({"type": "status", "phase": "saving", "message": "saving the adapter"})
        runs.write(trainer.model, record, cfg, prepared, out)
        trainer.accelerator.wait_for_everyone()
    finally:
        if not cfg.checkpoint_dir:
            shutil.rmtree(work, ignore_errors=True)
    on_event(done_event(out, result, final_eval, record))
    return record
