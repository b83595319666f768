"""The CPU speed levers voicetune pulls, chosen once per process from the kind of CPU it runs on.

Why a table and not one setting: a lever that pays on one kind of CPU can cost on another. torch's default
matmul paths differ by instruction set (MKL/oneDNN pick AVX2 kernels on one host, AVX512 or AMX tiles on
another), so a trick that dodges a slow path on one host can walk into a slow path on the next. Each entry
below is what `make bench --levers` measured on a 2-core host of that kind (benchmarks/results/); a kind that
was never measured gets the plain path, never a guess.

- `skinny_decode`: run a compare round's decoding matmuls (2-4 rows) as `weight @ x.T`. On AVX2 (AMD EPYC)
  torch's default path makes 3 rows cost 2-3x one row, and the transposed product about one row. On
  AVX512-BF16 without AMX (AMD EPYC) the same: a 3-arm round took 2.47 s with it against 4.54 s without,
  0.95x one arm's time against 1.76x (2026-11-27-cpu-2core-avx512-bf16.md). On AMX (Intel Xeon) the default
  path already costs about one row and the transposed product is 3-4x slower (the LM head, 3 rows: 3.1 ms
  plain, 11.7 ms transposed); a 3-arm round took 1.47x one arm with it and 1.14x without. Both kinds that pay
  were AMD chips and the one that costs an Intel one; an Intel chip of the avx512-bf16 kind (AVX512-BF16
  without AMX, Cooper Lake) was never measured.
- `one_per_pass`: train one conversation per forward pass (train.one_per_micro_batch). Measured to pay on
  AVX2 (padding is pure waste there); on AMX see the README's Performance table.
- `bf16`: bf16 autocast in training, only with real bf16 instructions (models.cpu_has_bf16); without them
  it runs ~20x slower than fp32.
- Not pulled anywhere: bf16 weights for the chat model. On AMX it made the 135M model's 3-arm round slower
  (5.1 s against 4.1 s in fp32). On AVX512-BF16 without AMX (AMD EPYC), before `skinny_decode` was on there,
  it made the round 2.7x faster (1.78 s against 4.82 s, benchmarks/chat_precision.py); with it on, fp32 takes
  2.37 s and bf16 weights 2.40 s. And there the batched and in-turn greedy replies parted in 6 rounds of 6
  (bf16 rounds differently for other batch shapes), where fp32 keeps them the same tokens. The
  base pane must answer as the base does alone, so chat stays in fp32 on every CPU until the mixed batch is
  held to a same-shape rule on a CPU too (benchmarks/gpu_check.rows_right holds it so on a GPU).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from voicetune import models

# Kinds on which the transposed decoding product was measured to pay. AVX512 without bf16 was never measured,
# so it keeps the plain path; AMX was measured to lose by it.
SKINNY_DECODE_KINDS = ("avx2", "plain", "avx512-bf16")


@dataclass(frozen=True)
class CpuLevers:
    """What this process does differently on a CPU, and why (see the module docstring)."""

    kind: str  # models.cpu_kind(): amx, avx512-bf16, avx512, avx2, plain or unknown
    skinny_decode: bool
    one_per_pass: bool
    bf16: bool

    def as_record(self) -> dict[str, Any]:
        """For run.json and the bench's table, so a figure always says which levers produced it."""
        return asdict(self)


def for_kind(kind: str) -> CpuLevers:
    """The levers for a CPU kind; a pure function of the kind, so tests can ask for every kind on any host."""
    return CpuLevers(kind=kind, skinny_decode=kind in SKINNY_DECODE_KINDS, one_per_pass=True,
                     bf16=kind in models.BF16_CPU_KINDS)


def chosen() -> CpuLevers:
    """The levers for the CPU this process runs on."""
    return for_kind(models.cpu_kind())
