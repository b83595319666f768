"""Will it fit? A base model on this machine (or a named one): training and chat memory, time per preset, and
what to change when it does not fit, in plain words. The arithmetic is memory.py's; this module only asks it
the questions a user has before training.

    report = fit_report(catalog.find("Qwen/Qwen2.5-7B-Instruct").shape, T4, lengths=[300] * 100)
    report.fits, report.advice          # True, ["Training (QLoRA 4-bit): 6.1 GiB of 15.0 GiB with checkpointing…", …]
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from voicetune import gpus, memory, recipes
from voicetune.catalog import CATALOG
from voicetune.config import EMBEDDED_MODEL
from voicetune.memory import ModelShape

GIB = 1 << 30
MIB = 1 << 20
SLOW_ON_CPU = 0.5e9  # parameters: above this a CPU trains a voice in hours, not minutes (see cpu_tokens_per_s)
SHORTEST = 256  # the shortest max length suggested: recipes.auto_settings never picks less


@dataclass(frozen=True)
class Machine:
    name: str  # what the user knows it as: the GPU's name, or "CPU"
    device: str  # "cuda" or "cpu"
    memory: int | None  # bytes a run may use: the GPU's memory, or the machine's RAM; None: unknown
    bf16: bool = False  # a CPU with real bf16 instructions: it trains on bf16 weights (models.load_model)


# Reference machines for the README's table: the memory nvidia-smi reports for each GPU (a "16 GB" T4 shows
# 15,360 MiB, a "24 GB" L4 23,034 MiB) and a Hugging Face "CPU basic" Space (2 vCPU, 16 GB RAM).
T4 = Machine("Tesla T4", "cuda", 15_360 * MIB)
L4 = Machine("NVIDIA L4", "cuda", 23_034 * MIB)
CPU_16GB = Machine("CPU (16 GB RAM)", "cpu", 16 * 10**9)


def this_machine() -> Machine:
    """The GPU voicetune trains on (its total memory, as a plan is made before any run), else the CPU's RAM."""
    from voicetune import models
    from voicetune.models import detect_device, local_rank

    if detect_device() == "cuda":
        import torch

        props = torch.cuda.get_device_properties(local_rank())
        return Machine(props.name, "cuda", int(props.total_memory))
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        ram = None
    return Machine("CPU", "cpu", ram, bf16=models.cpu_has_bf16())


@dataclass(frozen=True)
class Option:
    """One way to train: 4-bit or 16-bit (fp32 on a CPU) weights, activation checkpointing on or off."""

    qlora: bool
    checkpointing: bool
    bytes: int
    fits: bool
    device: str = "cuda"
    bf16: bool = False  # on a CPU: bf16 weights, not fp32

    @property
    def label(self) -> str:
        cpu = "LoRA bf16" if self.bf16 else "LoRA fp32"
        kind = "QLoRA 4-bit" if self.qlora else "LoRA 16-bit" if self.device == "cuda" else cpu
        return kind + (", checkpointing" if self.checkpointing else "")


@dataclass
class FitReport:
    machine: Machine
    params: int
    options: list[Option]
    chat_bytes: int
    chat_four_bit: bool
    chat_fits: bool
    seconds: dict[str, float]  # preset -> expected seconds of training
    advice: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return any(o.fits for o in self.options)


def training_options(shape: ModelShape, machine: Machine, *, rank: int, batch: int, max_length: int) -> list[Option]:
    """Every way this machine can train the model, cheapest in memory last. A CPU trains LoRA only, on fp32
    weights, or bf16 ones where it has bf16 instructions: voicetune never quantizes on a CPU (precision_for),
    where 4-bit kernels are slower, not smaller in practice."""
    kinds = (False, True) if machine.device == "cuda" else (False,)
    out = []
    for qlora in kinds:
        est = memory.training_estimate(shape, qlora=qlora, lora_rank=rank, micro_batch=batch, max_length=max_length,
                                       device=machine.device, cpu_bf16=machine.bf16)
        for ckpt in (False, True):
            need = est.total(checkpointing=ckpt)
            out.append(Option(qlora, ckpt, need, memory.fits(need, machine.memory), machine.device, machine.bf16))
    return out


def tokens_per_s(shape: ModelShape, machine: Machine) -> float:
    """Expected trained tokens/s before any run: a GPU's peak at the assumed MFU (gpus.py); on a CPU the measured
    rate of the embedded model, scaled by FLOPs per token (non-embedding parameters), which is what a CPU is
    bound by once the model is larger than its caches."""
    if machine.device == "cuda":
        return gpus.expected_tokens_per_s(shape.non_embedding_params, machine.name) or recipes.DEFAULT_TOKENS_PER_S["cuda"]
    embedded = CATALOG[0].shape.non_embedding_params
    return recipes.DEFAULT_TOKENS_PER_S["cpu"] * embedded / shape.non_embedding_params


def preset_seconds(shape: ModelShape, machine: Machine, lengths: list[int], batch: int) -> dict[str, float]:
    rate = tokens_per_s(shape, machine)
    return {name: recipes.estimate_seconds(recipes.preset_settings(name, lengths), lengths, machine.device, rate,
                                           batch_size=batch) for name in recipes.PRESETS}


def gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / GIB:.1f} GiB"


def duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def fit_report(shape: ModelShape, machine: Machine, *, lengths: list[int], rank: int = 16, batch: int = 4,
               max_length: int = 1024) -> FitReport:
    """Training and chat memory, time per preset, and the advice, for one model on one machine."""
    options = training_options(shape, machine, rank=rank, batch=batch, max_length=max_length)
    chat_16 = memory.chat_bytes(shape, four_bit=False, device=machine.device)
    chat_4 = memory.chat_bytes(shape, four_bit=True, device=machine.device)
    four = machine.device == "cuda" and not memory.fits(chat_16, machine.memory)
    chat = chat_4 if four else chat_16
    report = FitReport(machine, shape.params, options, chat, four, memory.fits(chat, machine.memory),
                       preset_seconds(shape, machine, lengths, batch))
    report.advice = advice(report, shape, rank=rank, batch=batch, max_length=max_length)
    return report


def advice(report: FitReport, shape: ModelShape, *, rank: int, batch: int, max_length: int) -> list[str]:
    """The verdict first, then what would make it fit, then speed: every line one thing the user can act on."""
    m, lines = report.machine, []
    have = f"of {gib(m.memory)} on {m.name}"
    default = [o for o in report.options if o.qlora == (m.device == "cuda")]  # what voicetune trains with by default
    plain, ckpt = default[0], default[1]
    if plain.fits:
        lines.append(f"Training fits: {plain.label} needs about {gib(plain.bytes)} {have}.")
    elif ckpt.fits:
        lines.append(f"Training fits with activation checkpointing: {gib(ckpt.bytes)} {have} (without it "
                     f"{gib(plain.bytes)}). Auto turns it on; it costs about 20-30% speed.")
    elif report.fits:
        best = next(o for o in report.options if o.fits)
        lines.append(f"Training fits only as {best.label}: {gib(best.bytes)} {have}.")
    else:
        least = min(report.options, key=lambda o: o.bytes)
        lines.append(f"Will not fit: even {least.label} needs {gib(least.bytes)} {have}.")
        lines.extend(what_would_fit(shape, m, rank=rank, batch=batch, max_length=max_length))
    if report.chat_fits:
        kind = "4-bit (16-bit does not fit)" if report.chat_four_bit else "16-bit" if m.device == "cuda" else "fp32"
        lines.append(f"Chat and compare: about {gib(report.chat_bytes)} with {kind} weights.")
    else:
        lines.append(f"Chat will not fit: it needs about {gib(report.chat_bytes)} {have}.")
    times = ", ".join(f"{name} {duration(s)}" for name, s in report.seconds.items())
    lines.append(f"Expected training time: {times}.")
    if m.device == "cpu" and report.params > SLOW_ON_CPU:
        lines.append(f"Slow on a CPU: anything above ~0.5B parameters trains for hours here "
                     f"({report.params / 1e9:.1f}B); use a GPU, or a smaller model for a first listen.")
    return lines


def what_would_fit(shape: ModelShape, machine: Machine, *, rank: int, batch: int, max_length: int) -> list[str]:
    """Changes that would make a run fit, the smallest change first: a shorter max length, a batch of one, then a
    smaller catalog model at these settings."""
    out = []
    qlora = machine.device == "cuda"

    def need(s: ModelShape, b: int, length: int) -> int:
        return memory.training_estimate(s, qlora=qlora, lora_rank=rank, micro_batch=b, max_length=length,
                                        device=machine.device, cpu_bf16=machine.bf16).total(checkpointing=True)

    length = max_length // 2
    while length >= SHORTEST and not memory.fits(need(shape, batch, length), machine.memory):
        length //= 2
    if length >= SHORTEST:
        out.append(f"A max length of {length} would fit (conversations longer than that are refused or shortened).")
    if batch > 1 and memory.fits(need(shape, 1, max_length), machine.memory):
        out.append("A batch size of 1 would fit (raise gradient accumulation to keep the same effective batch).")
    smaller = [e for e in CATALOG if e.params < shape.params and memory.fits(need(e.shape, batch, max_length),
                                                                              machine.memory)]
    if smaller:
        out.append(f"A smaller model would fit: {smaller[-1].name} ({smaller[-1].params / 1e9:.1f}B).")
    if not out:
        out.append("Nothing in the catalog fits this machine at these settings: use a machine with more memory.")
    return out


def suggest_base(machine: Machine) -> str:
    """The base a new project starts on: the embedded model on a CPU; on a GPU the largest catalog model whose
    QLoRA run (rank 16, batch 4, max length 1024, checkpointing allowed) fits."""
    if machine.device != "cuda":
        return EMBEDDED_MODEL
    fitting = [e for e in CATALOG if memory.fits(memory.training_estimate(
        e.shape, qlora=True, lora_rank=16, micro_batch=4, max_length=1024).total(checkpointing=True), machine.memory)]
    return fitting[-1].hub_id if fitting else EMBEDDED_MODEL
