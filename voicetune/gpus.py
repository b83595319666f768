"""GPU peak throughput and model FLOPs utilisation (MFU): the one table the time estimate and `make gpu-check` use.

    peak_tflops("NVIDIA H100 80GB HBM3")         # 989.4: the SXM part
    mfu(tokens_per_s=9000, n_params=1.6e9, peak=989.4)
"""

from __future__ import annotations

import re

# Dense (no sparsity) 16-bit tensor-core peaks in TFLOPS from NVIDIA's data sheets: bf16 where the part has it,
# fp16 otherwise (T4, V100). Matched against torch.cuda.get_device_name() in this order, so the more specific
# name comes first (H100 PCIe before H100, L40S before L40 before L4, A100 and A10G before A10).
PEAK_TFLOPS: list[tuple[str, float]] = [
    (r"H100.*NVL", 835.0),
    (r"H100.*PCIe", 756.0),
    (r"H100", 989.4),  # SXM5 (device name "NVIDIA H100 80GB HBM3")
    (r"H200", 989.4),
    (r"A100", 312.0),  # SXM4 and PCIe alike
    (r"L40S", 362.05),
    (r"L40\b", 181.05),
    (r"L4\b", 121.0),
    (r"A10G", 125.0),  # AWS's GA102 part: the A10's 72 SMs and clocks (AWS lists the A10's 250 INT8 TOPS)
    (r"A10\b", 125.0),
    (r"V100.*PCIE", 112.0),
    (r"V100", 125.0),  # SXM2, fp16 (no bf16 hardware)
    (r"T4\b", 65.0),  # fp16 (no bf16 hardware)
]
LORA_FLOPS_PER_PARAM = 4  # per trained token: forward 2·N and input gradients 2·N; frozen weights get no gradient
ASSUMED_MFU = 0.2  # LoRA/QLoRA on one GPU before any run is measured: PEFT's comparison saw ~26% on an L40S
# A small model is bound by kernel launches, not FLOPs: about 50 ms for a step of 2,000 tokens at best.
MAX_TOKENS_PER_S = 40_000.0


def peak_tflops(device_name: str) -> float | None:
    """The dense 16-bit peak of the named GPU; None for a GPU not in the table (no MFU is reported for it)."""
    for pattern, tflops in PEAK_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return tflops
    return None


def mfu(tokens_per_s: float, n_params: float, peak: float) -> float:
    """Share of the peak a LoRA run used: tokens/s x 4 x N FLOPs over peak TFLOPS (N without embeddings)."""
    return tokens_per_s * LORA_FLOPS_PER_PARAM * n_params / (peak * 1e12)


def expected_tokens_per_s(n_params: float, device_name: str) -> float | None:
    """Trained tokens per second a LoRA run of N (non-embedding) parameters should reach at ASSUMED_MFU."""
    peak = peak_tflops(device_name)
    if peak is None or n_params <= 0:
        return None
    return min(MAX_TOKENS_PER_S, peak * 1e12 * ASSUMED_MFU / (LORA_FLOPS_PER_PARAM * n_params))
