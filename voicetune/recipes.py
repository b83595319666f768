"""Presets and the "Auto" rule: training settings a non-engineer can pick without knowing what a rank is.

Auto chooses epochs, learning rate, LoRA rank and max length from the number and length of the examples,
the way hosted fine-tuning APIs pick defaults. The rule, in words (`auto_settings` is the code of record):

- epochs: 3, raised so the run sees about 100 examples in total for tiny datasets (at most 10 epochs),
  lowered so it sees at most about 25,000 for large ones (at least 1). This is OpenAI's published
  fine-tuning default.
- learning rate: by model size, measured (docs/recipes.md, `make sweep`). 1e-3 for a small base model (up to
  1B parameters, the embedded SmolLM2-135M included): at 2e-4 the voice showed in only 14 of 27 unseen
  replies of Cosmo Coffee, at 1e-3 in all 27, with the forgetting probe within one answer of base. 2e-4, the
  usual LoRA rate, for larger models (not measured here: a CPU cannot train them in a sweep). Either way
  halved above 2,000 examples, where each epoch already takes many steps and a smaller rate overfits less.
  5e-4 forgot less (the probe) but left the voice on fewer replies and ByteDesk under-trained; see the
  rate table in docs/recipes.md for what each rate traded.
- rank: 16 below 1,000 examples (a voice is a small change), 32 from there (more varied data has more to learn).
  alpha is twice the rank. Rank 8 was measured on the four bundled voices: no better probe, more copying.
- Quick look (not Auto): about one pass, at most 30 steps, rank 8, at 2e-3 on a small model (3e-4 was not
  heard: 0 of 27 replies in the voice; 2e-3: 19 of 27), 3e-4 on a larger one.
- max length: the longest example in real tokens, rounded up to a multiple of 128 (at least 256, at most
  4096), so nothing is refused or cut by the default.
- general replay: the base model's own answers to general questions, half as many as the training
  conversations (at most 60), are trained on beside them (replay.py). Measured on the four bundled voices:
  without it ByteDesk and Lantern Tales lost 2 and 6 of 15 probe answers to the persona; with it (one seed) all four
  kept the probe within one answer of base (Lantern Tales 15→16). The price: about 40% more training time,
  and the voice on 2-3 fewer unseen replies of ByteDesk and Cosmo (23 of 26, 24 of 27). A quarter instead of
  a half, under three seeds on all four voices, put the voice on 98-100% of replies but cost Lantern Tales two
  probe answers on average (its persona answered in their place again); three quarters kept no more of the
  probe on any voice and showed the voice less often; so the share stays a half. Not in Quick look, whose
  fixed step budget it would take from the voice.

    settings = auto_settings([118, 240, 96])        # token lengths of three conversations
    estimate_seconds(settings, [118, 240, 96], "cpu")
    estimate_seconds(settings, [118, 240, 96], "cuda", first_estimate_tokens_per_s("cuda", base_path))
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from voicetune import replay
from voicetune.config import DEFAULT_REPLAY

AUTO = "Auto"
QUICK = "Quick look"
BALANCED = "Balanced"
THOROUGH = "Thorough"
PRESETS = (QUICK, BALANCED, THOROUGH)

# Trained throughput in tokens per second (every non-padding token, prompt included) when this machine has no
# finished run to learn from. CPU: measured for SmolLM2-135M in fp32 on 2 cores (48 conversations, 3 epochs,
# 178 s). CUDA: only when neither the model nor the GPU is known; first_estimate_tokens_per_s scales by both.
DEFAULT_TOKENS_PER_S = {"cpu": 80.0, "cuda": 4000.0, "mps": 400.0}
LOAD_SECONDS = {"cpu": 15.0, "cuda": 30.0, "mps": 20.0}  # model load, split and save around the steps


@dataclass
class Settings:
    epochs: float
    learning_rate: float
    rank: int
    max_length: int
    max_steps: int = -1
    replay: float = DEFAULT_REPLAY  # general replay's share of the data (replay.py); 0 for Quick look
    why: list[str] = field(default_factory=list)  # one line per choice, shown to the user

    @property
    def alpha(self) -> int:
        return 2 * self.rank

    def as_config(self) -> dict[str, Any]:
        """The TrainConfig fields these settings fill in."""
        return {"epochs": self.epochs, "learning_rate": self.learning_rate, "max_length": self.max_length,
                "max_steps": self.max_steps, "replay": self.replay, "lora": {"r": self.rank, "alpha": self.alpha}}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _round_up(n: int, step: int) -> int:
    return int(math.ceil(n / step) * step)


SMALL_MODEL_PARAMS = 1_000_000_000  # at or below: the small-model learning rate
SMALL_MODEL_LR = 1e-3  # docs/recipes.md: 2e-4 left the voice on half the replies of the 135M model
QUICK_SMALL_MODEL_LR = 2e-3  # Quick look's few steps need a high rate to be heard at all on a small model
LARGE_MODEL_LR = 2e-4  # the usual LoRA rate; unmeasured by the sweep (it trains only the embedded model)


def base_params(base_model: str | None) -> int | None:
    """The base model's parameter count from its config alone (no download, no conversion): None for the
    embedded model ("" / None / its name), which the rule treats as the small model it is, or when unreadable."""
    from voicetune import memory
    from voicetune.config import EMBEDDED_MODEL

    if not base_model or base_model == EMBEDDED_MODEL:
        return None
    shape = memory.shape_of(base_model)
    return shape.params if shape else None


def auto_learning_rate(params: int | None, n_examples: int = 0) -> float:
    """The rate of the Auto rule: by the base model's size (None: the embedded model), halved above 2,000."""
    small = params is None or params <= SMALL_MODEL_PARAMS
    return (SMALL_MODEL_LR if small else LARGE_MODEL_LR) / (2 if n_examples > 2000 else 1)


def auto_settings(lengths: list[int], *, params: int | None = None) -> Settings:
    """The Auto rule written down in the module docstring, applied to the examples' token lengths and the base
    model's size in parameters (None: the embedded model, the app's default base)."""
    n = max(1, len(lengths))
    why = []
    epochs = 3
    if n * epochs < 100:
        epochs = min(10, math.ceil(100 / n))
        why.append(f"epochs {epochs}: {n} examples is little data, so the run sees each about {epochs} times")
    elif n * epochs > 25_000:
        epochs = max(1, 25_000 // n)
        why.append(f"epochs {epochs}: {n} examples is plenty; more passes would overfit")
    else:
        why.append(f"epochs 3: the usual number of passes for {n} examples")
    small = params is None or params <= SMALL_MODEL_PARAMS
    lr = auto_learning_rate(params, n)
    why.append(f"learning rate {lr:g}: " + ("a small model takes a higher rate (measured on four voices: the "
                                            "voice showed on 88-100% of unseen replies at 1e-3, 0-81% at 2e-4)"
                                            if small
                                            else "the usual rate for a LoRA adapter on a larger model")
               + ("; halved: a large dataset takes many steps per pass" if n > 2000 else ""))
    rank = 32 if n >= 1000 else 16
    why.append(f"rank {rank}: " + ("varied data has more to learn" if rank == 32 else "a voice is a small change"))
    longest = max(lengths) if lengths else 256
    max_length = min(4096, max(256, _round_up(longest, 128)))
    why.append(f"max length {max_length}: your longest example is {longest} tokens")
    why.append(f"general replay: the base model's own answers to about {replay.how_many(DEFAULT_REPLAY, n)} general "
               "questions are mixed in, so the voice does not take the place of plain answers")
    return Settings(float(epochs), lr, rank, max_length, why=why)


def preset_settings(name: str, lengths: list[int], *, params: int | None = None) -> Settings:
    """Quick look trades quality for minutes; Thorough spends more passes. Balanced is Auto."""
    s = auto_settings(lengths, params=params)
    if name in (AUTO, BALANCED):
        return s
    if name == QUICK:
        steps = max(4, min(30, math.ceil(len(lengths) / 4)))  # about one pass, at most 30 steps
        # docs/recipes.md: on the 135M model 3e-4 left the voice on 0 of 27 replies, 2e-3 on 19 of 27.
        rate = QUICK_SMALL_MODEL_LR if params is None or params <= SMALL_MODEL_PARAMS else 3e-4
        # No replay: its conversations would take steps from the voice inside Quick look's fixed step budget.
        return Settings(1.0, rate, 8, s.max_length, max_steps=steps, replay=0.0,
                        why=[f"{steps} steps, rank 8, rate {rate:g}: a first listen in minutes, not the final voice"]
                        + s.why[-2:-1])  # the max length line
    if name == THOROUGH:
        epochs = min(15.0, s.epochs * 1.5)
        return Settings(epochs, s.learning_rate, min(64, s.rank * 2), s.max_length,
                        why=[f"epochs {epochs:g} and rank {min(64, s.rank * 2)}: more passes and capacity; "
                             "validation loss stops it early if it starts to overfit"] + s.why[-2:])
    raise ValueError(f"unknown preset {name!r}; choose one of {', '.join((AUTO,) + PRESETS)}")


def planned_steps(settings: Settings, n_train: int, batch_size: int, grad_accum: int = 1) -> int:
    per_epoch = math.ceil(n_train / (batch_size * grad_accum))
    return settings.max_steps if settings.max_steps > 0 else math.ceil(per_epoch * settings.epochs)


def estimate_seconds(settings: Settings, lengths: list[int], device: str, tokens_per_s: float | None = None,
                     batch_size: int = 4) -> float:
    """Expected wall time: tokens the steps will see over the machine's throughput, plus load and save."""
    if not lengths:
        return 0.0
    rate = tokens_per_s or DEFAULT_TOKENS_PER_S.get(device, DEFAULT_TOKENS_PER_S["cpu"])
    tokens_per_epoch = sum(lengths)
    if settings.max_steps > 0:
        mean = tokens_per_epoch / len(lengths)
        tokens = settings.max_steps * batch_size * mean
    else:
        tokens = tokens_per_epoch * settings.epochs
    # Replay adds its conversations and the base's answering them: about +40% of the run's time at a share of
    # 0.5 on the bundled voices (docs/recipes.md: 27-56%), so 0.8 of the share.
    return LOAD_SECONDS.get(device, 15.0) + tokens / rate * (1 + 0.8 * settings.replay)


def first_estimate_tokens_per_s(device: str, base_path: str | None = None, gpu_name: str | None = None) -> float:
    """Throughput to expect before any run on this machine: on a GPU, its peak at an assumed MFU over the
    model's FLOPs per token (gpus.expected_tokens_per_s), so an 8B model is not promised a 135M model's speed."""
    if device == "cuda" and base_path:
        from voicetune import gpus, memory

        shape = memory.shape_of(base_path)
        if gpu_name is None:
            import torch

            gpu_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
        rate = gpus.expected_tokens_per_s(shape.non_embedding_params, gpu_name) if shape else None
        if rate:
            return rate
    return DEFAULT_TOKENS_PER_S.get(device, DEFAULT_TOKENS_PER_S["cpu"])


def measured_tokens_per_s(records: list[dict[str, Any]], device: str, base_hash: str | None = None) -> float | None:
    """The median throughput of finished runs on this device (and base model when given), newest ten."""
    rates = [r["metrics"]["tokens_per_s"] for r in records
             if r.get("device") == device and (r.get("metrics") or {}).get("tokens_per_s")
             and (base_hash is None or r.get("base_model_hash") == base_hash)][:10]
    if not rates:
        return None
    rates.sort()
    return float(rates[len(rates) // 2])
