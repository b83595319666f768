"""The GPU side of the benchmark: a randomly initialised model from a bundled config, and MFU.

Not run on the CPU machine where `make bench` was written: this path is untested there (see README).
A random model trains at the same speed as a real one of that shape, and needs no download.

    folder = random_model("llama3-8b", tokenizer_path, Path("/tmp/m"))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).resolve().parent / "configs"

# Dense bf16 peak TFLOPS from the vendors' data sheets (SXM parts); a name not listed reports no MFU.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def peak_tflops(name: str) -> float | None:
    for key, value in BF16_PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def random_model(config_name: str, tokenizer_path: str, dest: Path) -> tuple[Path, int]:
    """Save a bf16 model of the bundled shape with the embedded tokenizer; returns the folder and its size.

    The embedded tokenizer's ids fit both vocabularies, so the same conversations serve every shape.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**json.loads((CONFIGS / f"{config_name}.json").read_text()))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    del model
    torch.cuda.empty_cache()
    return dest, n_params


def mfu(tokens_per_s: float, n_params: int, name: str) -> float | None:
    """Model FLOPs utilisation: LoRA costs about 4·N FLOPs per trained token (forward 2N, input gradients 2N)."""
    peak = peak_tflops(name)
    return None if peak is None else tokens_per_s * 4 * n_params / (peak * 1e12)


def describe() -> dict[str, Any]:
    import torch

    return {"gpu": gpu_name(), "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "cuda": torch.version.cuda}
