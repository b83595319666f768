"""How much device memory a LoRA/QLoRA run or a chat model needs, from the model's config alone.

The owner of that arithmetic: training decides activation checkpointing from it, chat decides between 16-bit
and 4-bit weights, and the time estimate takes the parameter count. Every figure is bytes and written out
below so a reader can redo it by hand; it is an estimate for a decoder of Llama's shape (attention + gated MLP).

    shape = ModelShape.from_config(json.load(open("config.json")))
    est = training_estimate(shape, qlora=True, lora_rank=16, micro_batch=4, max_length=1024)
    est.total(checkpointing=False) / 2**30      # 31.4 GiB for Llama-3-8B at 4 x 1024; 8.7 GiB with checkpointing
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NF4_BITS = 4.127  # 4-bit codes + an 8-bit absmax per 64 weights + an fp32 scale per 256 absmax (double quant)
HALF = 2  # bytes of a bf16/fp16 value
FULL = 4  # bytes of an fp32 value: a CPU without bf16 trains and chats on fp32 weights
# Saved for backward per token in one decoder layer, in 16-bit values: the two RMSNorm inputs and outputs
# (6h counting their fp32 upcasts), q k v, the attention output, the residual (together 4h + 2·kv width),
# and the MLP's gate, up, act(gate) and act(gate)*up (4·intermediate). LoRA's rank-r outputs are negligible.
LAYER_H, LAYER_I, LAYER_KV = 10, 4, 2
CONTEXT_BYTES = 1 << 30  # CUDA context, cuBLAS workspaces and allocator slack, measured ~0.5-1 GiB on H100/A100
MARGIN = 0.9  # use at most 90% of what is free: fragmentation and the loss head's chunks need the rest


@dataclass(frozen=True)
class ModelShape:
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ModelShape":
        """Read a transformers config.json (Llama, Qwen, Mistral, SmolLM, Phi-3 and GPT-2 style names)."""
        hidden = config.get("hidden_size") or config["n_embd"]
        heads = config.get("num_attention_heads") or config["n_head"]
        return cls(
            vocab=config["vocab_size"],
            hidden=hidden,
            intermediate=config.get("intermediate_size") or config.get("n_inner") or 4 * hidden,
            layers=config.get("num_hidden_layers") or config["n_layer"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or hidden // heads,
            tied=bool(config.get("tie_word_embeddings", True)),
        )

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def linear_params(self) -> int:
        """Weights of the decoder layers' seven linear layers: the ones QLoRA quantizes and LoRA adapts."""
        attn = 2 * self.hidden * self.q_width + 2 * self.hidden * self.kv_width  # q, o; k, v
        return self.layers * (attn + 3 * self.hidden * self.intermediate)  # + gate, up, down

    @property
    def embedding_params(self) -> int:
        """The input embedding and, when untied, the LM head (never quantized)."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def non_embedding_params(self) -> int:
        """The parameters that cost FLOPs per token (MFU and time estimates leave the embeddings out)."""
        return self.params - self.embedding_params

    @property
    def params(self) -> int:
        norms = self.layers * 2 * self.hidden + self.hidden
        return self.linear_params + self.embedding_params + norms

    def lora_params(self, rank: int) -> int:
        """LoRA A (in x r) and B (r x out) on every linear layer of every decoder layer ("all-linear")."""
        h, i, q, kv = self.hidden, self.intermediate, self.q_width, self.kv_width
        per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
        return self.layers * per_layer * rank


def weight_bytes(shape: ModelShape, four_bit: bool, value_bytes: int = HALF) -> int:
    """Base weights on the device: 16-bit everywhere (fp32 on a CPU: value_bytes=FULL), or NF4 linear layers
    with embeddings and norms in value_bytes."""
    if not four_bit:
        return shape.params * value_bytes
    return int(shape.linear_params * NF4_BITS / 8) + (shape.params - shape.linear_params) * value_bytes


def adapter_bytes(shape: ModelShape, rank: int, eight_bit_optimizer: bool) -> int:
    """LoRA weights and gradients in fp32 (4 + 4 bytes) and AdamW's two moments (8 bytes, or 2 when 8-bit)."""
    return shape.lora_params(rank) * (4 + 4 + (2 if eight_bit_optimizer else 8))


def activation_bytes(shape: ModelShape, tokens: int, checkpointing: bool, value_bytes: int = HALF) -> int:
    """Activations kept for backward over `tokens` (micro batch x max length).

    Without checkpointing every layer keeps all of them; with it each layer keeps only its input (h values)
    and one layer's worth is rebuilt at a time during backward.
    """
    per_layer = value_bytes * (LAYER_H * shape.hidden + LAYER_I * shape.intermediate + LAYER_KV * shape.kv_width) * tokens
    if not checkpointing:
        return shape.layers * per_layer
    return shape.layers * value_bytes * shape.hidden * tokens + per_layer


@dataclass(frozen=True)
class TrainingEstimate:
    weights: int
    adapter: int
    activations: int  # without checkpointing
    activations_checkpointed: int
    context: int = CONTEXT_BYTES  # the CUDA context; none on a CPU

    def total(self, checkpointing: bool) -> int:
        acts = self.activations_checkpointed if checkpointing else self.activations
        return self.context + self.weights + self.adapter + acts


def training_estimate(shape: ModelShape, *, qlora: bool, lora_rank: int, micro_batch: int, max_length: int,
                      eight_bit_optimizer: bool = False, device: str = "cuda",
                      cpu_bf16: bool = False) -> TrainingEstimate:
    """On a CPU (device="cpu") there is no CUDA context, and weights and activations count 4 bytes a value, or 2
    on a CPU with bf16 instructions (cpu_bf16), where load_model keeps a base that trains under bf16 in bf16
    weights (levers.py)."""
    tokens = micro_batch * max_length
    value = HALF if device == "cuda" or cpu_bf16 else FULL
    return TrainingEstimate(
        weights=weight_bytes(shape, qlora, value),
        adapter=adapter_bytes(shape, lora_rank, eight_bit_optimizer),
        activations=activation_bytes(shape, tokens, checkpointing=False, value_bytes=value),
        activations_checkpointed=activation_bytes(shape, tokens, checkpointing=True, value_bytes=value),
        context=CONTEXT_BYTES if device == "cuda" else 0,
    )


def fits(needed: int, available: int | None) -> bool:
    """True when `needed` bytes fit in MARGIN of `available`; an unknown amount (None) counts as fitting."""
    return available is None or needed <= MARGIN * available


def checkpointing_needed(estimate: TrainingEstimate, available: int | None) -> bool:
    """Auto rule: on only when the run would not fit without it (it costs 20-30% speed, 2-3x with some LoRA setups)."""
    return not fits(estimate.total(checkpointing=False), available)


CHAT_CACHE_TOKENS = 8 * 2048  # a KV cache for a few arms' long prompts


def chat_bytes(shape: ModelShape, four_bit: bool, device: str = "cuda", cache_tokens: int = CHAT_CACHE_TOKENS) -> int:
    """Chat memory: the weights (16-bit or NF4 on a GPU, fp32 on a CPU), a KV cache, and the CUDA context."""
    value = HALF if device == "cuda" else FULL
    kv_cache = 2 * shape.layers * shape.kv_width * value * cache_tokens
    return (CONTEXT_BYTES if device == "cuda" else 0) + weight_bytes(shape, four_bit, value) + kv_cache


def chat_fits_16bit(shape: ModelShape, available: int | None, cache_tokens: int = CHAT_CACHE_TOKENS) -> bool:
    """Whether 16-bit weights plus a KV cache for a few arms' long prompts fit; otherwise chat loads 4-bit."""
    return fits(chat_bytes(shape, four_bit=False, cache_tokens=cache_tokens), available)


# A batch's KV cache is held twice for a moment: the decoder prefills each row's cache, then stacks them into
# the batch's static cache (decoding.Decoder.prefill_rows). The logits of a decode step and the prefill's
# activations take a little more, so a row is counted at 2.5 times its cache.
BATCH_CACHE_COPIES = 2.5


def batch_rows(shape: ModelShape, tokens_per_row: int, available: int | None, value_bytes: int = HALF) -> int | None:
    """The most rows one generate call may decode together so that their KV cache fits in `available` bytes
    (MARGIN of it), or None when nothing is known (a CPU, where memory pages rather than fails).

    Why: a scorecard asks for every arm's replies at once (a hundred rows or more), which costs one pass of the
    model per token on a GPU, but a 7-8B base's cache for that many rows of a few hundred tokens is larger
    than what a 16 GB GPU has left beside the weights. So the batch is split where it would not fit."""
    if available is None:
        return None
    per_row = BATCH_CACHE_COPIES * 2 * shape.layers * shape.kv_width * value_bytes * max(1, tokens_per_row)
    return max(1, int(available * MARGIN // per_row))


def free_bytes(device: str) -> int | None:
    """Free memory on this process's GPU (what the driver reports, other processes included); None on a CPU,
    where the operating system pages rather than failing and the rules above leave everything off."""
    if device != "cuda":
        return None
    import torch

    from voicetune.models import local_rank

    # This process's own GPU: asking the current device before accelerate has set it would open a second
    # CUDA context on GPU 0 from every rank. What torch's allocator holds but no tensor uses (a finished
    # batch's cache) is this process's to reuse, though the driver counts it as taken.
    rank = local_rank()
    idle = torch.cuda.memory_reserved(rank) - torch.cuda.memory_allocated(rank)
    return int(torch.cuda.mem_get_info(rank)[0]) + max(0, idle)


def shape_of(path: str) -> ModelShape | None:
    """The shape of a local or cached model from its config; None when the config cannot be read."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path).to_dict()
        config.update(config.get("text_config") or {})
        return ModelShape.from_config(config)
    except Exception:  # noqa: BLE001 - an unreadable config only loses the estimate, never the run
        return None
