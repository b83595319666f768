"""The GPU side of the benchmark: a randomly initialised model from a bundled config, and MFU.

A random model trains at the same speed as a real one of that shape, and needs no download. `make bench` and
`make gpu-check` (benchmarks/gpu_check.py) both build theirs here; the peak table is voicetune.gpus'.

    folder, n_params = random_model("smollm2-1.7b", tokenizer_path, Path("/tmp/m"))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from voicetune import gpus

CONFIGS = Path(__file__).resolve().parent / "configs"


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def peak_tflops(name: str) -> float | None:
    return gpus.peak_tflops(name)


def random_model(config_name: str | dict[str, Any], tokenizer_path: str, dest: Path, device: str = "cuda",
                 ) -> tuple[Path, int]:
    """Save a bf16 model of the bundled shape (or of the given config) with the embedded tokenizer; returns the
    folder and its parameter count.

    Built directly in bf16 on `device` (never fp32 first: an 8B model in fp32 is 32 GB). The embedded
    tokenizer's ids fit both bundled vocabularies, so the same conversations serve every shape.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    values = config_name if isinstance(config_name, dict) else json.loads((CONFIGS / f"{config_name}.json").read_text())
    config = LlamaConfig(**values)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return dest, n_params


def mfu(tokens_per_s: float, n_params: int, name: str) -> float | None:
    """Model FLOPs utilisation: LoRA costs about 4·N FLOPs per trained token (forward 2N, input gradients 2N)."""
    peak = gpus.peak_tflops(name)
    return None if peak is None else gpus.mfu(tokens_per_s, n_params, peak)


def describe() -> dict[str, Any]:
    import torch

    return {"gpu": gpu_name(), "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "cuda": torch.version.cuda}
