"""Why a training job failed, as a short code and a fix in plain words.

A marketing user cannot act on "CUDA error: out of memory at ...". They can act on "reduce max length or
batch size, or use QLoRA". The job keeps the raw message in its log; the UI shows the code and the fix.

    failure = classify(exc)   # -> Failure(code="oom", fix="...", message="...")
"""

from __future__ import annotations

import errno
import re
import time
from dataclasses import dataclass
from pathlib import Path

TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{8,}")  # Hugging Face user tokens, should one appear unannounced


def scrub(text: str, token: str | None) -> str:
    """The text with the token, and anything shaped like a token, replaced by asterisks."""
    if token:
        text = text.replace(token, "***")
    return TOKEN_PATTERN.sub("hf_***", text)


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
    "crash": "Training stopped with an unexpected error. Try again, and report it if it repeats; the server's "
             "log has the details.",
    "timeout": "The job ran longer than this machine allows one job (VOICETUNE_JOB_MAX_HOURS). Train fewer "
               "epochs or steps, or with a shorter max length, then start again.",
}

# An absolute path of two parts or more ("/data/voicetune/users/x/runs/r"), not inside a URL ("https://a/b").
_PATH = re.compile(r"(?<![\w:/.])(?:~|[A-Za-z]:)?(?:[/\\][\w.@+=,-]+){2,}[/\\]?")
SERVER_LOG = "logs/server.log"  # under the workspace root: for whoever runs the machine, never shown to users


def hide_paths(text: str) -> str:
    """The text with every absolute path replaced by its last part: users see names, never the server's layout."""
    return _PATH.sub(lambda m: re.split(r"[/\\]", m.group(0).rstrip("/\\"))[-1], text)


def log_for_server(text: str) -> Path:
    """Append to the server-side log (tracebacks live here, never in a log a user reads); returns its path."""
    from voicetune import store

    path = store.root() / SERVER_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text.rstrip()}\n")
    return path


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
    """Map an exception from a training run to one of FIXES' codes; the message names files, never their paths."""
    from voicetune.data import DataError
    from voicetune.models import ModelError

    text = hide_paths(str(exc))
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
