"""Improve a finished run from preferences: TRL's DPOTrainer on top of the run's own adapter.

DPO (direct preference optimisation) raises the likelihood of each chosen reply relative to its rejected one,
measured against a frozen reference, so the voice moves toward what people picked without drifting far from
the run it started from. Here:
- the starting point is the parent SFT run's adapter, loaded trainable as PEFT's "default" adapter;
- the reference is that same parent policy: TRL 1.16's DPOTrainer, given a PeftModel that already carries a
  trained adapter, adds a frozen copy of it named "ref" and computes the reference log-probs under "ref"
  (`use_adapter(model, "ref")`). One base model in memory, two adapters on it; the bare base is never the
  reference (tests/test_dpo.py checks the reference log-probs equal the parent's, not the base's);
- the new run copies its parent's held-out conversations and few-shot examples, so the scorecard scores parent
  and child on the same conversations, and records its parent, the pairs' hash and the preference metrics.

    python -m voicetune train --method dpo --from 20261123-cosmo --preferences prefs.jsonl --out workspace/runs/x
    record = run_dpo(DPOConfig(data="prefs.jsonl", parent="20261123-cosmo", out="workspace/runs/x"))
"""

from __future__ import annotations

import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from voicetune import models, preferences, runs, store
from voicetune.config import TrainConfig
from voicetune.data import Conversation, DataError, Problem
from voicetune.preferences import Pair
from voicetune.train import (OnEvent, done_event, keep_adapters_fp32, peak_memory_mb_of, plan_run,
                             progress_callback, release_device_memory, resume_point, train_and_evaluate,
                             work_folder)

PREFERENCES_FILE = "preferences.jsonl"  # the pairs a DPO run read, byte for byte, kept in its folder


@dataclass
class DPOConfig:
    """The settings of one DPO run; saved as config.yaml beside its adapter like a TrainConfig."""

    data: str = ""  # the preference pairs: TRL prompt/chosen/rejected JSONL (string or conversational form)
    out: str = ""  # folder that receives the adapter and its run.json
    parent: str = ""  # the finished SFT run (id or folder): its adapter is both the start and the reference
    method: str = "dpo"  # marks this config for the job engine and the command line
    # How far the policy may move from the parent: the reward is beta x (log-ratio to the reference). 0.1 is the
    # DPO paper's and TRL's default; 0.05-0.5 is the useful range (lower lets the voice move further).
    beta: float = 0.1
    # LoRA on tens of pairs: 10x Zephyr's QLoRA DPO rate (5e-6), because a few dozen steps at 5e-6 barely move
    # an adapter. Lower it if held-out accuracy reaches 1.0 while replies get worse.
    learning_rate: float = 5e-5
    epochs: float = 3.0  # passes over the pairs; 1-3 for tens to hundreds of pairs
    max_steps: int = -1  # >0 caps the optimizer steps (tests and quick looks); -1 follows epochs
    batch_size: int = 4  # pairs per step (each pair is two sequences: chosen and rejected)
    grad_accum: int = 1
    max_length: int = 1024  # tokens of prompt + reply; longer pairs are refused, never cut
    val_fraction: float = 0.2  # share of pairs held out: the preference accuracy is measured on them
    seed: int = 42
    logging_steps: int = 1
    checkpoint_dir: str = ""  # periodic checkpoints for resuming an interrupted job; "" keeps none
    scorecard: bool = True  # score the new run on its parent's held-out conversations after training
    qlora: bool | None = None  # None: as for SFT, QLoRA on CUDA, plain LoRA on CPU
    base_model: str = ""  # filled from the parent's record: a child always shares its parent's base
    heldout_data: str = ""  # unused (DPO holds out pairs): present so the command line's contract reads one shape

    def __post_init__(self) -> None:
        if self.method != "dpo":
            raise ValueError(f"`method` must be dpo here, got {self.method!r}")
        if not 0 < self.beta <= 10:
            raise ValueError(f"`beta` must be in (0, 10], got {self.beta}")
        if self.learning_rate <= 0 or self.epochs <= 0:
            raise ValueError("`learning_rate` and `epochs` must be positive")
        if not 0.0 <= self.val_fraction < 0.5:
            raise ValueError(f"`val_fraction` must be in [0, 0.5), got {self.val_fraction}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("`batch_size` and `grad_accum` must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        if path is not None:
            store.atomic_write_text(Path(path), text)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DPOConfig":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown setting(s) in config: {', '.join(unknown)}")
        return cls(**data)


def is_dpo_yaml(path: str | None) -> bool:
    """Whether a job's config.yaml is a DPO run's (the job engine spawns every method as `train --config`)."""
    if not path or not Path(path).is_file():
        return False
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return isinstance(data, dict) and data.get("method") == "dpo"


def config_from(config_path: str | None, overrides: dict[str, Any]) -> DPOConfig:
    """Defaults, then the YAML file, then the command line's flags (the project's one order of precedence)."""
    base = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) if config_path else {}
    base = dict(base or {})
    base.update({k: v for k, v in overrides.items() if v is not None and k in {f.name for f in fields(DPOConfig)}})
    base["method"] = "dpo"
    if not base.get("data") or not base.get("out") or not base.get("parent"):
        raise ValueError("--method dpo needs --from RUN, --preferences FILE and --out DIR")
    runs.locate(base["parent"])  # a RunError (a usage error) before anything else: the parent must be whole
    return DPOConfig.from_dict(base)


def submit(pairs_text: str, parent: str, *, label: str = "dpo", project_id: int | None = None,
           **settings: Any) -> Any:
    """Queue a DPO run on the job engine (same queue, cancel, resume and failure codes as SFT)."""
    from voicetune import jobs

    return jobs.submit(pairs_text, label=label, project_id=project_id, config=DPOConfig, parent=parent, **settings)


# --- Before any model loads -------------------------------------------------------------------------------------

def parent_of(cfg: DPOConfig) -> tuple[Path, dict[str, Any]]:
    """The parent run's folder and record; a DPO run can only start from a finished SFT run."""
    folder, record = runs.locate(cfg.parent)
    return folder, record


def split_pairs(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """A seeded share of the pairs held out for the preference accuracy (none below ten pairs)."""
    n_val = 0 if val_fraction <= 0 or len(pairs) < 10 else max(1, round(len(pairs) * val_fraction))
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_val])
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


def check_pairs(pairs: list[Pair], tokenizer: Any, max_length: int) -> None:
    """Refuse what would train badly: too few pairs, identical replies, pairs longer than the max length."""
    problems = []
    for p in pairs:
        if p.chosen.strip() == p.rejected.strip():
            problems.append(Problem(p.line, "chosen", "is the same as rejected: there is no preference to learn"))
        elif (n := preferences.pair_tokens(tokenizer, p)) > max_length:
            problems.append(Problem(p.line, "", f"prompt and reply are {n} tokens, over the max length of "
                                                f"{max_length}: shorten it or raise max length"))
    if not problems and len(pairs) < preferences.MIN_PAIRS:
        problems.append(Problem(None, "", f"has {len(pairs)} pairs; DPO needs at least {preferences.MIN_PAIRS}"))
    if problems:
        raise DataError(problems)


def preflight(cfg: DPOConfig) -> None:
    """What costs no model: the parent run is whole and the pairs file parses (DataError, RunError)."""
    parent_of(cfg)
    preferences.load_pairs(cfg.data)


# --- Model and trainer ------------------------------------------------------------------------------------------

def _dataset(pairs: list[Pair]) -> Any:
    from datasets import Dataset

    return Dataset.from_list([p.record() for p in pairs])


def load_policy(base_path: str, parent_folder: Path, precision: models.Precision, attention: str | None = None) -> Any:
    """The base model with the parent's adapter loaded trainable as "default" (DPOTrainer adds the frozen "ref")."""
    from peft import PeftModel

    model = models.load_model(base_path, precision, attn_implementation=attention)
    return PeftModel.from_pretrained(model, str(parent_folder), is_trainable=True)


def _dpo_args(cfg: DPOConfig, work: Path, precision: models.Precision, total_steps: int, has_val: bool,
              checkpointing: bool) -> Any:
    from trl import DPOConfig as TRLDPOConfig

    every = max(1, total_steps // 5)
    save = bool(cfg.checkpoint_dir)
    return TRLDPOConfig(
        output_dir=str(work), beta=cfg.beta, learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum, lr_scheduler_type="cosine", warmup_steps=0.1,
        logging_steps=cfg.logging_steps, eval_strategy="steps" if has_val else "no", eval_steps=every,
        save_strategy="steps" if save else "no", save_steps=every, save_total_limit=2 if save else None,
        report_to="none", seed=cfg.seed, data_seed=cfg.seed, bf16=precision.bf16, fp16=precision.fp16,
        use_cpu=precision.device == "cpu", activation_checkpointing=checkpointing,
        optim="paged_adamw_8bit" if precision.qlora and precision.device == "cuda" else "adamw_torch",  # as SFT
        max_length=None,  # lengths were checked before: TRL must never truncate silently
        precompute_ref_log_probs=False,  # the "ref" adapter is in memory anyway; a cache file would outlive the job
        disable_tqdm=True, dataloader_num_workers=0, ddp_find_unused_parameters=False,
    )


def build_trainer(cfg: DPOConfig, plan: Any, model: Any, tokenizer: Any, train: list[Pair], val: list[Pair],
                  work: Path, total_steps: int, callbacks: list[Any]) -> Any:
    """TRL's DPOTrainer over the parent's adapter; refuses a setup whose reference would be the bare base."""
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOTrainer

    trainer = DPOTrainer(model=model, ref_model=None, processing_class=tokenizer, callbacks=callbacks,
                         args=_dpo_args(cfg, work, plan.precision, total_steps, bool(val), plan.checkpointing),
                         train_dataset=_dataset(train), eval_dataset=_dataset(val) if val else None)
    if "ref" not in trainer.model.peft_config:  # TRL falls back to the bare base for some PEFT versions
        raise RuntimeError("DPOTrainer made no frozen copy of the parent adapter: the reference would be the base")
    trainer.remove_callback(PrinterCallback)
    keep_adapters_fp32(trainer.model)
    return trainer


def completion_logp(model: Any, tokenizer: Any, pair: Pair, reply: str, adapter: str | None = "default") -> float:
    """Sum of log-probabilities of `reply` after the pair's prompt under one adapter (None: the bare base)."""
    import torch

    prompt = tokenizer.apply_chat_template(pair.prompt, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template([*pair.prompt, {"role": "assistant", "content": reply}], tokenize=False)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    start = next((i for i, (a, b) in enumerate(zip(p_ids, ids)) if a != b), min(len(p_ids), len(ids)))
    x = torch.tensor([ids], device=model.device)
    with torch.no_grad():
        if adapter is None:
            with model.disable_adapter():
                logits = model(input_ids=x).logits[0].float()
        else:
            model.set_adapter(adapter)
            logits = model(input_ids=x).logits[0].float()
    logps = torch.log_softmax(logits[:-1], -1).gather(-1, x[0, 1:, None])[:, 0]
    return float(logps[start - 1:].sum())


def margins(model: Any, tokenizer: Any, pairs: list[Pair], adapter: str | None = "default") -> list[float]:
    """Chosen minus rejected log-probability per pair: what DPO raises."""
    return [completion_logp(model, tokenizer, p, p.chosen, adapter) - completion_logp(model, tokenizer, p, p.rejected,
                                                                                       adapter) for p in pairs]


# --- The run ----------------------------------------------------------------------------------------------------

def run_dpo(cfg: DPOConfig, on_event: OnEvent | None = None, resume: bool = False) -> dict[str, Any]:
    """Train the parent's adapter on the pairs into cfg.out and return the run record written beside it."""
    try:
        return _train(cfg, on_event or (lambda e: None), resume)
    finally:
        release_device_memory()


def _plan(cfg: DPOConfig, parent: dict[str, Any], base_path: str) -> Any:
    """The SFT planner (precision, checkpointing) for this run: twice the sequences per step, the parent's rank."""
    shaped = TrainConfig(base_model=parent["base_model"], qlora=cfg.qlora, batch_size=cfg.batch_size * 2,
                         max_length=cfg.max_length, lora=parent.get("config", {}).get("lora") or {})
    return plan_run(shaped, base_path, models.detect_device())


def _train(cfg: DPOConfig, on_event: OnEvent, resume: bool) -> dict[str, Any]:
    started, out = time.time(), Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    # Check the parent and the pairs (needs only the tokenizer)
    parent_folder, parent = parent_of(cfg)
    cfg.base_model = parent["base_model"]
    base_path = models.resolve_base_model(cfg.base_model)
    tokenizer = models.load_tokenizer(base_path)
    pairs = preferences.load_pairs(cfg.data)
    check_pairs(pairs, tokenizer, cfg.max_length)
    train, val = split_pairs(pairs, cfg.val_fraction, cfg.seed)
    on_event({"type": "data", "train": len(train), "val": len(val), "method": "dpo", "parent": parent["run_id"]})

    # Load the base with the parent's adapter
    plan = _plan(cfg, parent, base_path)
    on_event({"type": "status", "phase": "loading", "message": f"loading the base model ({plan.precision.label}) "
              f"with the adapter of {parent['run_id']}"})
    model = load_policy(base_path, parent_folder, plan.precision, plan.attention)

    # Build the trainer
    checkpoint = resume_point(cfg, resume, on_event)
    work = work_folder(cfg, out)  # type: ignore[arg-type] - reads only checkpoint_dir
    total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(
        math.ceil(len(train) / (cfg.batch_size * cfg.grad_accum)) * cfg.epochs)
    callbacks = [progress_callback(on_event, plan.precision.device)]
    trainer = build_trainer(cfg, plan, model, tokenizer, train, val, work, total_steps, callbacks)
    del model

    # Train, then measure on the held-out pairs
    try:
        result, history, final_eval = train_and_evaluate(trainer, checkpoint, bool(val), on_event)
        split = _parent_split(parent_folder)
        record = _record(cfg, parent, plan, trainer, result, final_eval, history, total_steps, (pairs, train, val),
                         _parent_data(parent_folder, parent, split), callbacks[0].tokens_per_s, checkpoint, started)
        on_event({"type": "status", "phase": "saving", "message": "saving the adapter"})
        trainer.model.delete_adapter("ref")  # the frozen reference is the parent's adapter, already on disk
        extra = {PREFERENCES_FILE: Path(cfg.data).read_text(encoding="utf-8"),
                 **_parent_prompts(parent_folder, parent)}
        runs.write(trainer.model, record, cfg, split, out, extra)  # one rename: never a run without its pairs
    finally:
        if not cfg.checkpoint_dir:
            shutil.rmtree(work, ignore_errors=True)
    on_event(done_event(out, result, final_eval, record))
    return record


def _parent_prompts(parent_folder: Path, parent: dict[str, Any]) -> dict[str, str]:
    """The unseen test prompts the parent is scored on, as a file of the child: both score the same prompts."""
    from voicetune.evaluate import prompts_for_run

    prompts = prompts_for_run(parent_folder, parent)
    return {runs.PROMPTS_FILE: "\n".join(prompts) + "\n"} if prompts else {}


class _Split:
    """The parent's held-out and few-shot conversations, in the shape runs.write reads."""

    def __init__(self, val: list[list[dict]], few_shot: list[list[dict]]):
        self.val_convs = [Conversation(m) for m in val]
        self.train_convs = [Conversation(m) for m in few_shot]
        self.replay_convs: list[Conversation] = []  # DPO replays nothing: its pairs are the whole training set


def _parent_split(parent_folder: Path) -> _Split:
    from voicetune.evaluate import read_jsonl

    return _Split(read_jsonl(parent_folder / runs.HELDOUT_FILE), read_jsonl(parent_folder / runs.FEWSHOT_FILE))


PREFERENCE_METRICS = ("rewards/margins", "rewards/chosen", "rewards/rejected", "rewards/accuracies")


def _parent_data(parent_folder: Path, parent: dict[str, Any], split: _Split) -> dict[str, Any]:
    """The parent's data section, pointing at its kept training file: the scorecard derives the voice's markers
    from it, so parent and child are scored against the same markers."""
    kept = runs.training_data(parent_folder)
    return {**parent.get("data", {}), **({"file": str(kept[0])} if kept else {}), "val": len(split.val_convs),
            "val_source": f"the held-out conversations of {parent['run_id']}"}


def _record(cfg: DPOConfig, parent: dict[str, Any], plan: Any, trainer: Any, result: Any,
            final_eval: dict[str, Any], history: list[dict[str, Any]], total_steps: int,
            split_pairs_: tuple[list[Pair], list[Pair], list[Pair]], data: dict[str, Any],
            tokens_per_s: float | None, checkpoint: Path | None, started: float) -> dict[str, Any]:
    """The run record: the parent's base and fingerprints, the pairs' hash, and the preference metrics."""
    import torch

    pairs, train, val = split_pairs_
    held = {k: final_eval.get(f"eval_{k}") for k in PREFERENCE_METRICS}
    last_train = next((h for h in reversed(history) if "rewards/margins" in h), {})
    pconf = parent.get("config", {})
    return {
        "run_id": Path(cfg.out).name, "method": "dpo", "parent_run": parent["run_id"],
        **{k: parent.get(k) for k in ("base_model", "base_model_path", "base_model_hash", "template_hash",
                                      "tokenizer_hash")},
        "precision": plan.precision.label, "device": plan.precision.device, "qlora": plan.precision.qlora,
        "world_size": 1, "micro_batch": cfg.batch_size, "accumulation": cfg.grad_accum,
        "loss_head": type(trainer).__name__, "padding_free": False, "activation_checkpointing": plan.checkpointing,
        # The scorecard reads the parent's training data (its markers of the voice) and the voice's phrases
        "data": data,
        "preferences": {"file": Path(cfg.data).name, "sha256_16": preferences.pairs_hash(pairs),
                        "pairs": len(pairs), "train": len(train), "heldout": len(val)},
        "config": {**{k: pconf.get(k) for k in ("style_guide", "required_phrases", "banned_phrases", "lora")},
                   **cfg.to_dict()},
        "metrics": {"train_loss": result.training_loss, "eval_loss": final_eval.get("eval_loss"),
                    "best_eval_loss": final_eval.get("eval_loss"), "steps": trainer.state.global_step,
                    "planned_steps": total_steps, "tokens_per_s": tokens_per_s,
                    "peak_memory_mb": round(peak_memory_mb_of(plan.precision.device)),
                    "heldout_pairs": held, "train_pairs": {k: last_train.get(k) for k in PREFERENCE_METRICS}},
        "resumed_from": checkpoint.name if checkpoint else None,
        "history": history, "versions": runs.library_versions(), "torch_threads": torch.get_num_threads(),
        "duration_s": round(time.time() - started, 1), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }

