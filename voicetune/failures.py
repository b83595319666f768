"""Why a training job failed, as a short code and a fix in plain words.

A marketing user cannot act on "CUDA error: out of memory at ...". They can act on "reduce max length or
batch size, or use QLoRA". The job keeps the raw message in its log; the UI shows the code and the fix.

    failure = classify(exc)   # -> Failure(code="oom", fix="...", message="...")
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

FIXES = {
    "oom": "The model ran out of memory. Reduce the max length or the batch size, turn QLoRA on, or turn "
           "activation checkpointing on (slower, but needs far less memory).",
    "cuda_missing": "A CUDA library is missing or does not match the driver. Reinstall the CUDA build of torch "
                    "for this machine, or train on the CPU.",
    "model": "The base model could not be loaded. Check the model id or folder, and that it is a causal "
             "language model with a chat template.",
    "data": "The dataset did not pass the checks. Open the Data tab, fix the listed lines, and start again.",
    "disk_full": "The disk is full, so the adapter could not be saved. Free some space; the previous adapter "
                 "was left as it was.",
    "killed": "The training process was stopped from outside (the machine restarted or ran out of memory). "
              "Resume it from its last checkpoint.",
    "crash": "Training stopped with an unexpected error. The log has the details; try again, and report it "
             "if it repeats.",
}


@dataclass
class Failure:
    code: str
    message: str

    @property
    def fix(self) -> str:
        return FIXES[self.code]


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except ImportError:
        pass
    return "out of memory" in str(exc).lower()


def classify(exc: BaseException) -> Failure:
    """Map an exception from a training run to one of FIXES' codes."""
    from voicetune.data import DataError
    from voicetune.models import ModelError

    text = str(exc)
    if isinstance(exc, DataError):
        return Failure("data", text)
    if isinstance(exc, ModelError):
        return Failure("model", text)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Failure("disk_full", text)
    if _is_oom(exc):
        return Failure("oom", text)
    lowered = text.lower()
    if any(k in lowered for k in ("libcuda", "libcudart", "libcublas", "cuda driver", "no cuda gpus")):
        return Failure("cuda_missing", text)
    return Failure("crash", f"{type(exc).__name__}: {text}")
