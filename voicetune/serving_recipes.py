"""How to serve an exported adapter beyond one machine: the commands the model card gives for vLLM, TGI, Ollama
and voicetune's own endpoint, filled in with the run's base model, name and LoRA rank.

Each of these servers speaks the OpenAI chat API, so the code a team wrote against voicetune's endpoint keeps
working. None of the vLLM or TGI commands were run by voicetune's tests (no GPU); tests/test_serve.py checks
that the card holds them exactly as written here.

    serving_section(record, "cosmo")   # markdown for the model card
"""

from __future__ import annotations

import re
import shlex
from typing import Any

TGI_IMAGE = "ghcr.io/huggingface/text-generation-inference:latest"


def lora_name(run_id: str) -> str:
    """The name callers use as `model`: the run id, with anything a shell or URL would trip on replaced."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-") or "voice"


def vllm_command(base: str, name: str, rank: int) -> str:
    """vLLM loads LoRA adapters up to --max-lora-rank (16 by default), so a higher rank must be stated."""
    rank_flag = f" --max-lora-rank {rank}" if rank > 16 else ""
    return f"vllm serve {shlex.quote(base)} --enable-lora --lora-modules {name}=./{name}{rank_flag}"


def tgi_command(base: str, name: str) -> str:
    return (f"docker run --gpus all -p 8080:80 -v \"$PWD/{name}:/data/{name}\" {TGI_IMAGE} "
            f"--model-id {shlex.quote(base)} --lora-adapters {name}=/data/{name}")


def serving_section(record: dict[str, Any], run_id: str, base: str) -> str:
    """The model card's "Serve it" section; `base` is the base model as a Hub id (export.hub_base)."""
    name = lora_name(run_id)
    rank = int(((record.get("config") or {}).get("lora") or {}).get("r") or 16)
    return "\n".join([
        "## Serve it",
        "",
        f"Every server below answers the OpenAI chat API: call it with `model=\"{name}\"`. Put this folder (the",
        f"unzipped adapter) at `./{name}` first.",
        "",
        "- **vLLM** (GPU), then `http://localhost:8000/v1`:",
        "",
        "  ```bash",
        f"  {vllm_command(base, name, rank)}",
        "  ```",
        "- **Text Generation Inference** (GPU), then `http://localhost:8080/v1`:",
        "",
        "  ```bash",
        f"  {tgi_command(base, name)}",
        "  ```",
        "- **Ollama** (CPU or GPU): make a GGUF with its Modelfile in voicetune (Export tab, *Make GGUF*, or",
        f"  `python -m voicetune export --run {name} --gguf`), then in that folder",
        f"  `ollama create {name} -f Modelfile && ollama run {name}`; its API is `http://localhost:11434/v1`.",
        f"- **voicetune** (CPU or GPU): `python -m voicetune serve --run {name}=./{name}`, then `http://127.0.0.1:8000/v1`.",
        "",
        "The vLLM and TGI commands follow their documented flags; voicetune's own tests did not run them (no GPU).",
    ])
