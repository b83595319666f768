"""The base-model catalog, the checks a base must pass, and the fit estimate, each against its arithmetic."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from voicetune import catalog
from voicetune.config import DEFAULT_REPLAY
from voicetune.models import ModelError


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_catalog_parameters_are_computed_from_each_models_architecture():
    # The counts each model card publishes, to the nearest million (Qwen's q/k/v biases, ~0.1%, are not counted).
    published = {"embedded:smollm2-135m-instruct": 135, "HuggingFaceTB/SmolLM2-360M-Instruct": 362,
                 "Qwen/Qwen2.5-0.5B-Instruct": 494, "meta-llama/Llama-3.2-1B-Instruct": 1236,
                 "Qwen/Qwen2.5-1.5B-Instruct": 1544, "HuggingFaceTB/SmolLM2-1.7B-Instruct": 1711,
                 "Qwen/Qwen2.5-3B-Instruct": 3086, "meta-llama/Llama-3.2-3B-Instruct": 3213,
                 "Qwen/Qwen2.5-7B-Instruct": 7615, "mistralai/Mistral-7B-Instruct-v0.3": 7248,
                 "meta-llama/Llama-3.1-8B-Instruct": 8030}
    assert {e.hub_id: round(e.params / 1e6) for e in catalog.CATALOG} == published
    assert [e.params for e in catalog.CATALOG] == sorted(e.params for e in catalog.CATALOG)
    assert {e.name for e in catalog.CATALOG if e.gated} == {
        "Llama-3.2-1B-Instruct", "Llama-3.2-3B-Instruct", "Llama-3.1-8B-Instruct", "Mistral-7B-Instruct-v0.3"}
    assert catalog.find("qwen/qwen2.5-0.5b-instruct").licence_url == "https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct"
    assert catalog.CATALOG[0].licence_url == "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct"


def test_the_embedded_models_catalog_shape_is_its_real_config(base_path: str):
    from voicetune import memory

    assert memory.shape_of(base_path) == catalog.CATALOG[0].shape
    info = catalog.check_base("embedded:smollm2-135m-instruct")
    assert (info.shape, info.context) == (catalog.CATALOG[0].shape, 8192)


def test_a_local_folder_with_a_template_and_fast_tokenizer_is_accepted(tiny_qwen: Path, workspace: Path):
    info = catalog.check_base(str(tiny_qwen))
    assert (info.shape.vocab, info.shape.hidden, info.shape.layers, info.context) == (600, 64, 2, 2048)
    assert catalog.label(str(tiny_qwen)) == tiny_qwen.name  # never the server path
    assert files_under(workspace) == []


def broken_copy(tiny_qwen: Path, tmp_path: Path, how: str) -> Path:
    folder = tmp_path / f"model-{how}"
    shutil.copytree(tiny_qwen, folder)
    if how == "no-template":
        (folder / "chat_template.jinja").unlink(missing_ok=True)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    elif how == "slow-only":
        (folder / "tokenizer.json").unlink()
    elif how == "remote-code":
        config = json.loads((folder / "config.json").read_text())
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
        (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("how, message", [
    ("no-template", "model-no-template has no chat template: pick an instruct or chat model, not a base "
                    "(pretrained-only) one"),
    ("slow-only", "model-slow-only has no fast tokenizer (tokenizer.json): voicetune needs one to find the reply "
                  "tokens it trains on; pick another model"),
    ("remote-code", "model-remote-code needs custom code from its authors (auto_map in its config), which voicetune "
                    "never runs: pick a model that transformers supports as it is"),
])
def test_a_base_that_cannot_be_used_is_refused_with_its_reason_and_nothing_written(
        tiny_qwen: Path, tmp_path: Path, workspace: Path, how: str, message: str):
    folder = broken_copy(tiny_qwen, tmp_path, how)
    with pytest.raises(ModelError) as e:
        catalog.check_base(str(folder))
    assert str(e.value) == message
    assert files_under(workspace) == []


def test_a_hub_model_not_on_this_machine_is_refused_offline_with_what_is_here(workspace: Path):
    with pytest.raises(ModelError) as e:
        catalog.check_base("acme/not-here-7B")
    assert str(e.value).startswith("acme/not-here-7B is not on this machine and voicetune is offline (no network). "
                                   "Available here: SmolLM2-135M-Instruct (embedded)")
    with pytest.raises(ModelError) as e:
        catalog.check_base("no/such/folder")
    assert str(e.value).startswith("There is no folder 'folder' and it is not a Hub id (owner/name): check the name.")
    assert files_under(workspace) == []


# ---------------------------------------------------------------- will it fit


GIB = 1 << 30


def test_qlora_training_memory_is_the_arithmetic_written_out():
    from voicetune import fit

    # Qwen2.5-0.5B: hidden 896, intermediate 4864, 24 layers, 14 heads of 64, 2 KV heads, vocab 151,936, tied.
    linear = 24 * (2 * 896 * 896 + 2 * 896 * 128 + 3 * 896 * 4864)  # q, o; k, v; gate, up, down
    params = linear + 151_936 * 896 + 24 * 2 * 896 + 896  # + embedding + norms
    assert params == catalog.find("Qwen/Qwen2.5-0.5B-Instruct").params == 494_005_120
    weights = int(linear * 4.127 / 8) + (params - linear) * 2  # NF4 linear layers, 16-bit embedding and norms
    lora = 24 * 16 * ((896 + 896) + 2 * (896 + 128) + (896 + 896) + 2 * (896 + 4864) + (4864 + 896))
    adapter = lora * (4 + 4 + 8)  # fp32 weight and gradient, AdamW's two fp32 moments
    per_layer = 2 * (10 * 896 + 4 * 4864 + 2 * 128) * 4 * 1024  # 16-bit values saved per token, batch 4 x 1024
    context = 1 << 30
    options = fit.training_options(catalog.find("Qwen/Qwen2.5-0.5B-Instruct").shape, fit.L4, rank=16, batch=4,
                                   max_length=1024)
    assert [(o.label, o.bytes) for o in options] == [
        ("LoRA 16-bit", context + params * 2 + adapter + 24 * per_layer),
        ("LoRA 16-bit, checkpointing", context + params * 2 + adapter + 24 * 2 * 896 * 4096 + per_layer),
        ("QLoRA 4-bit", context + weights + adapter + 24 * per_layer),
        ("QLoRA 4-bit, checkpointing", context + weights + adapter + 24 * 2 * 896 * 4096 + per_layer),
    ]
    assert options[2].bytes == 7_308_608_624 and all(o.fits for o in options)  # 6.8 GiB of an L4's 22.5


def test_on_a_cpu_weights_and_activations_are_fp32_with_no_cuda_context():
    from voicetune import fit

    shape = catalog.CATALOG[0].shape  # the embedded SmolLM2-135M: hidden 576, intermediate 1536, 30 layers
    lora = 30 * 16 * ((576 + 576) + 2 * (576 + 192) + (576 + 576) + 2 * (576 + 1536) + (1536 + 576))
    per_layer = 4 * (10 * 576 + 4 * 1536 + 2 * 192) * 4 * 1024
    options = fit.training_options(shape, fit.CPU_16GB, rank=16, batch=4, max_length=1024)
    assert [(o.label, o.bytes) for o in options] == [
        ("LoRA fp32", 134_515_008 * 4 + lora * 16 + 30 * per_layer),
        ("LoRA fp32, checkpointing", 134_515_008 * 4 + lora * 16 + 30 * 4 * 576 * 4096 + per_layer),
    ]


def test_a_bf16_cpu_counts_its_bf16_weights_and_says_so():
    """A CPU with bf16 instructions trains on bf16 weights (models.load_model): its fit counts 2 bytes a value, and
    the label says bf16, where a CPU without them counts and says fp32."""
    from voicetune import fit

    shape = catalog.CATALOG[0].shape
    plain = fit.training_options(shape, fit.CPU_16GB, rank=16, batch=4, max_length=1024)
    bf16 = fit.training_options(shape, fit.Machine("CPU", "cpu", 16 * 10**9, bf16=True), rank=16, batch=4,
                                max_length=1024)
    assert [o.label for o in bf16] == ["LoRA bf16", "LoRA bf16, checkpointing"]
    lora = shape.lora_params(16) * 16  # fp32 adapter, gradients and AdamW moments either way
    for p, b in zip(plain, bf16):
        assert p.bytes - lora == 2 * (b.bytes - lora)  # weights and activations: half the bytes


def test_the_advice_says_plainly_what_fits_and_what_would():
    from voicetune import fit

    lengths = [300] * 100
    t4 = fit.fit_report(catalog.find("meta-llama/Llama-3.1-8B-Instruct").shape, fit.T4, lengths=lengths)
    assert t4.advice[:2] == [
        "Training fits with activation checkpointing: 8.7 GiB of 15.0 GiB on Tesla T4 (without it 31.4 GiB). "
        "Auto turns it on; it costs about 20-30% speed.",
        "Chat and compare: about 8.3 GiB with 4-bit (16-bit does not fit) weights."]
    cpu = fit.fit_report(catalog.find("Qwen/Qwen2.5-3B-Instruct").shape, fit.CPU_16GB, lengths=lengths)
    assert not cpu.fits
    assert cpu.advice[:4] == [
        "Will not fit: even LoRA fp32, checkpointing needs 14.1 GiB of 14.9 GiB on CPU (16 GB RAM).",
        "A max length of 512 would fit (conversations longer than that are refused or shortened).",
        "A batch size of 1 would fit (raise gradient accumulation to keep the same effective batch).",
        "A smaller model would fit: SmolLM2-1.7B-Instruct (1.7B)."]
    assert cpu.advice[-1] == ("Slow on a CPU: anything above ~0.5B parameters trains for hours here (3.1B); use a "
                              "GPU, or a smaller model for a first listen.")
    small = fit.fit_report(catalog.find("Qwen/Qwen2.5-0.5B-Instruct").shape, fit.CPU_16GB, lengths=lengths)
    assert not any(line.startswith("Slow on a CPU") for line in small.advice)  # 494M: under the line


def test_time_per_preset_is_the_recipes_estimate_at_the_models_rate():
    from voicetune import fit, recipes

    lengths = [300] * 100
    shape = catalog.find("Qwen/Qwen2.5-1.5B-Instruct").shape
    # On a CPU the embedded model's measured rate, scaled by non-embedding parameters (FLOPs per token)
    rate = 80.0 * catalog.CATALOG[0].shape.non_embedding_params / shape.non_embedding_params
    report = fit.fit_report(shape, fit.CPU_16GB, lengths=lengths)
    assert report.seconds == {p: recipes.estimate_seconds(recipes.preset_settings(p, lengths), lengths, "cpu", rate)
                              for p in recipes.PRESETS}
    # load + 3 epochs of 30,000 tokens, and general replay's share of that (docs/recipes.md: +40% at 0.5)
    assert report.seconds["Balanced"] == 15.0 + 300 * 100 * 3 / rate * (1 + 0.8 * DEFAULT_REPLAY)


def test_a_new_project_is_suggested_the_largest_model_that_fits_with_qlora():
    from voicetune import fit

    assert fit.suggest_base(fit.CPU_16GB) == "embedded:smollm2-135m-instruct"
    assert fit.suggest_base(fit.T4) == "meta-llama/Llama-3.1-8B-Instruct"  # 8.7 GiB with QLoRA + checkpointing
    assert fit.suggest_base(fit.Machine("small GPU", "cuda", 4 * GIB)) == "HuggingFaceTB/SmolLM2-1.7B-Instruct"


def test_every_name_imported_from_transformers_inside_a_function_is_resolved_before_the_app_serves():
    """Two request threads resolving one of transformers' lazy names at once can fail ("cannot import name
    AutoTokenizer"), so the app resolves them all at start (models.warm_imports). A new lazy import must join
    the list; the training callbacks are imported only in a job's own process, one thread."""
    import ast

    import transformers

    from voicetune import models

    package = Path(models.__file__).parent
    lazy = {a.name for p in package.rglob("*.py") for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
            if isinstance(node, ast.ImportFrom) and node.module == "transformers" and node.col_offset > 0
            for a in node.names}
    assert lazy - {"TrainerCallback", "EarlyStoppingCallback"} <= set(models.WARM_NAMES["transformers"])
    models.warm_imports()
    assert [n for n in models.WARM_NAMES["transformers"] if n not in vars(transformers)] == []
