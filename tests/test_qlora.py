"""QLoRA end to end on a CPU (bitsandbytes 0.50 quantizes NF4 and runs Linear4bit there), and the GPU rules that
can be decided without a GPU: the memory estimate, checkpointing, the device map per rank, padding-free, the
adapters' dtype under fp16, and what a finished run leaves in memory.

    flock /tmp/voicetune-cpu.lock .venv/bin/python -m pytest -q tests/test_qlora.py
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import weakref
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, voice_data
from voicetune import memory, models, train
from voicetune.config import GenConfig, LoraSettings, TrainConfig

CONFIGS = ROOT / "benchmarks" / "configs"
GIB = 2**30


def _shape(name: str) -> memory.ModelShape:
    return memory.ModelShape.from_config(json.loads((CONFIGS / f"{name}.json").read_text()))


# --- the memory estimate --------------------------------------------------------------------------------

def test_memory_estimate_matches_the_arithmetic() -> None:
    s = _shape("llama3-8b")
    assert s.params == 8_030_261_248  # Llama-3-8B's published count
    assert _shape("smollm2-1.7b").params == 1_711_376_384  # SmolLM2-1.7B's
    # 32 layers x (q 4096x4096 + k,v 4096x1024 + o 4096x4096 + gate, up, down 4096x14336)
    assert s.linear_params == 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336) == 6_979_321_856
    assert s.lora_params(16) == 32 * 16 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 14336) * 3)
    est = memory.training_estimate(s, qlora=True, lora_rank=16, micro_batch=4, max_length=1024,
                                   eight_bit_optimizer=True)
    assert est.weights == int(6_979_321_856 * 4.127 / 8) + (8_030_261_248 - 6_979_321_856) * 2
    assert est.adapter == s.lora_params(16) * (4 + 4 + 2)
    tokens = 4 * 1024
    per_layer = 2 * (10 * 4096 + 4 * 14336 + 2 * 1024) * tokens  # bytes per layer, 16-bit activations
    assert est.activations == 32 * per_layer  # ~24.5 GiB: the "~25 GB"
    assert 24 * GIB < est.activations < 25 * GIB
    assert est.activations_checkpointed == 32 * 2 * 4096 * tokens + per_layer
    assert est.total(checkpointing=False) == GIB + est.weights + est.adapter + est.activations
    assert memory.weight_bytes(s, four_bit=False) == 8_030_261_248 * 2


def test_checkpointing_goes_on_only_when_the_run_would_not_fit() -> None:
    big = memory.training_estimate(_shape("llama3-8b"), qlora=True, lora_rank=16, micro_batch=4, max_length=1024)
    small = memory.training_estimate(_shape("smollm2-1.7b"), qlora=True, lora_rank=16, micro_batch=4,
                                     max_length=1024)
    assert memory.checkpointing_needed(big, 24 * GIB) and not memory.checkpointing_needed(big, 80 * GIB)
    assert memory.fits(big.total(checkpointing=True), 24 * GIB)  # and then it fits a 24 GB card
    assert not memory.checkpointing_needed(small, 24 * GIB)
    assert not memory.checkpointing_needed(big, None)  # unknown memory (a CPU): off
    cfg = TrainConfig(data="d.jsonl", out="o")
    assert train.checkpointing_for(cfg, big, 24 * GIB) is True
    assert train.checkpointing_for(cfg, big, 80 * GIB) is False
    assert train.checkpointing_for(cfg, None, 24 * GIB) is False  # no estimate (unreadable config): off
    assert train.checkpointing_for(TrainConfig(data="d", out="o", activation_checkpointing=False), big, GIB) is False
    assert train.checkpointing_for(TrainConfig(data="d", out="o", activation_checkpointing=True), small, None) is True


def test_chat_loads_4bit_only_when_16bit_does_not_fit() -> None:
    from voicetune.generate import chat_precision

    eight_b = _shape("llama3-8b")
    assert memory.chat_fits_16bit(eight_b, 80 * GIB) and not memory.chat_fits_16bit(eight_b, 16 * GIB)
    assert memory.chat_fits_16bit(_shape("smollm2-1.7b"), 16 * GIB)
    assert chat_precision("cpu", "unused", four_bit=None).qlora is False  # CPU: never decided by GPU memory
    assert chat_precision("cpu", "unused", four_bit=True).qlora is True


def test_a_batch_is_split_only_where_its_kv_cache_would_not_fit() -> None:
    """A scorecard's hundred-odd rows share one batch on an H100, and are split on a 16 GB card beside an 8B."""
    eight_b = _shape("llama3-8b")
    per_row = memory.BATCH_CACHE_COPIES * 2 * 32 * 8 * 128 * memory.HALF * 700  # layers, kv heads, head dim
    rows = memory.batch_rows(eight_b, 700, 9 * GIB)
    assert rows * per_row <= memory.MARGIN * 9 * GIB < (rows + 1) * per_row
    assert 20 <= rows < 150 and memory.batch_rows(eight_b, 700, 70 * GIB) >= 150
    assert memory.batch_rows(eight_b, 700, None) is None  # a CPU: no bound
    assert memory.batch_rows(eight_b, 100_000, GIB) == 1  # never fewer than one row


def test_generate_in_memory_bound_batches_answers_as_one_batch(tiny_model: Path, two_adapters: tuple[Path, Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the free memory holds three rows' cache, seven requests go through in three calls, in order."""
    from voicetune.generate import ChatModel, Request

    chat = ChatModel(str(tiny_model))
    pirate, butler = (chat.load_adapter(a) for a in two_adapters)
    questions = ["Do you ship abroad?", "Can I get a refund?", "Are you open today?", "Hi!"]
    requests = [Request([{"role": "user", "content": q}], arm) for q in questions for arm in (None, pirate)][:7]
    requests[-1] = Request(requests[-1].messages, butler)
    gen = GenConfig(max_new_tokens=12)
    whole = chat.generate(requests, gen)
    calls = []
    stream = chat.stream
    monkeypatch.setattr(chat, "stream", lambda rs, g: calls.append(len(rs)) or stream(rs, g))
    monkeypatch.setattr(memory, "free_bytes", lambda device: 10**12)  # as a GPU would report; a CPU says None
    row_bytes = 10**12 * memory.MARGIN / chat.rows_per_call(requests, gen)  # one row's cache, as the rule counts
    monkeypatch.setattr(memory, "free_bytes", lambda device: int(3.5 * row_bytes / memory.MARGIN))
    rows = chat.rows_per_call(requests, gen)
    assert rows == 3
    split = chat.generate(requests, gen)
    assert calls == [rows] * (len(requests) // rows) + ([len(requests) % rows] if len(requests) % rows else [])
    assert [r.text for r in split] == [r.text for r in whole]


def test_training_args_carry_transformers_5_checkpointing_name(tmp_path: Path) -> None:
    """TRL defaults the deprecated `gradient_checkpointing` to True; the new name, passed explicitly, wins."""
    cfg = TrainConfig(data="d.jsonl", out="o")
    precision = models.Precision("cpu", qlora=False, bf16=False, fp16=False)
    for on in (False, True):
        args = train._sft_args(cfg, tmp_path, precision, 10, has_val=False, early=False, checkpointing=on)
        assert args.activation_checkpointing is on and args.gradient_checkpointing is on


# --- rules without a model ------------------------------------------------------------------------------

def test_each_rank_loads_onto_its_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert models.device_map_for(0) == {"": 0}
    assert models.device_map_for(3) == {"": 3}
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert models.local_rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert models.local_rank() == 1


def test_padding_free_only_with_an_attention_that_reads_boundaries() -> None:
    plan = train.padding_free_plan
    assert plan(False, "cuda", None) == (False, None)
    assert plan(True, "cuda", "flash_attention_2") == (True, None)
    assert plan(True, "cuda", "sdpa") == (True, "flex_attention")  # not sdpa's dense block mask
    assert plan(True, "cuda", None) == (True, "flex_attention")
    assert plan(True, "cpu", "sdpa") == (False, None)
    assert plan(True, "cpu", "flex_attention") == (True, None)


def test_the_oom_fix_names_activation_checkpointing() -> None:
    from voicetune.failures import classify

    assert "activation checkpointing" in classify(torch.OutOfMemoryError("CUDA out of memory")).fix


# --- 4-bit on a CPU -------------------------------------------------------------------------------------

CPU_4BIT = models.Precision("cpu", qlora=True, bf16=False, fp16=False)


def test_load_model_gives_4bit_linear_layers(tiny_model: Path) -> None:
    import bitsandbytes as bnb

    model = models.load_model(str(tiny_model), CPU_4BIT)
    layer = model.model.layers[0]
    assert isinstance(layer.self_attn.q_proj, bnb.nn.Linear4bit) and isinstance(layer.mlp.down_proj, bnb.nn.Linear4bit)
    assert layer.self_attn.q_proj.weight.quant_state.quant_type == "nf4"
    assert getattr(model, "is_loaded_in_4bit", False)


@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_adapters_train_in_fp32_under_every_precision(tiny_model: Path, tmp_path: Path, dtype: str) -> None:
    """TRL casts a quantized model's LoRA weights to bf16 whatever the flags; under fp16 (a T4) the GradScaler
    then fails at the first step, and under bf16 small updates round away, so every trainable parameter must be
    fp32 once the trainer is built (16-bit autocast does the products)."""
    data = voice_data(tmp_path / "d.jsonl", "Arr.")
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "out"), base_model=str(tiny_model), max_steps=1,
                      val_fraction=0.0, scorecard=False)
    tokenizer = models.load_tokenizer(str(tiny_model))
    precision = models.Precision("cpu", qlora=True, bf16=dtype == "bf16", fp16=dtype == "fp16")
    plan = train.Plan(precision, padding_free=False, attention=None, checkpointing=False, estimate=None)
    model = models.load_model(str(tiny_model), precision)
    trainer = train.build_trainer(cfg, plan, model, tokenizer, train.prepare_data(cfg, tokenizer), tmp_path / "w",
                                  1, False, [])
    assert trainer.args.fp16 is (dtype == "fp16")
    trainable = {n: p.dtype for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert set(trainable.values()) == {torch.float32}


def qlora_label() -> str:
    """The rule, not one machine's answer: fp32 compute beside 4-bit weights on a CPU, bf16 from Ampere on, else fp16."""
    if not torch.cuda.is_available():
        return "QLoRA (NF4 4-bit), fp32 on CPU"
    return f"QLoRA (NF4 4-bit), {'bf16' if torch.cuda.get_device_capability()[0] >= 8 else 'fp16'} on CUDA"


def _train(tiny_model: Path, folder: Path, reply: str, *, qlora: bool = True, seed: int = 1) -> dict:
    data = voice_data(folder.parent / f"{folder.name}.jsonl", reply)
    cfg = TrainConfig(data=str(data), out=str(folder), base_model=str(tiny_model), max_steps=3, batch_size=4,
                      val_fraction=0.0, scorecard=False, early_stopping=False, learning_rate=5e-2, seed=seed,
                      qlora=qlora, lora=LoraSettings(r=8, alpha=16))
    return train.run_sft(cfg)


def test_qlora_run_trains_saves_and_lets_go_of_everything(tiny_model: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Three QLoRA steps through run_sft; afterwards no trainer or model object is alive (no gc.collect here:
    what the scorecard, loaded next in the same process, would otherwise share the GPU with)."""
    from safetensors.torch import load_file

    alive: list[weakref.ref] = []
    real_load, real_build = models.load_model, train.build_trainer

    def load_and_watch(*args, **kwargs):  # the real loader; only a weak reference is kept
        model = real_load(*args, **kwargs)
        alive.append(weakref.ref(model))
        return model

    def build_and_watch(*args, **kwargs):
        trainer = real_build(*args, **kwargs)
        alive.extend([weakref.ref(trainer), weakref.ref(trainer.model)])
        return trainer

    monkeypatch.setattr(models, "load_model", load_and_watch)
    monkeypatch.setattr(train, "build_trainer", build_and_watch)
    record = _train(tiny_model, tmp_path / "run", "Arr, matey!")
    assert len(alive) == 3
    assert [ref() for ref in alive] == [None] * 3
    assert record["qlora"] is True and record["precision"] == qlora_label()
    assert record["metrics"]["steps"] == 3 and record["activation_checkpointing"] is False
    lora = load_file(str(tmp_path / "run" / "adapter_model.safetensors"))
    assert {v.dtype for v in lora.values()} == {torch.float32}
    assert any(float(v.abs().max()) > 0 for k, v in lora.items() if "lora_B" in k)  # it learned


@pytest.mark.gpu
def test_a_cuda_run_trains_4bit_with_fp32_adapters_and_chats_in_one_mixed_batch(tiny_model: Path,
                                                                                 tmp_path: Path) -> None:
    """On a GPU the default is QLoRA: NF4 base weights, 16-bit compute, the adapter kept in fp32; the 4-bit chat
    then answers the base and the adapter in one batch exactly as it answers each alone."""
    from safetensors.torch import load_file

    from voicetune.generate import ChatModel, Request

    record = _train(tiny_model, tmp_path / "run", "Arr, matey!")
    assert (record["device"], record["qlora"], record["precision"]) == ("cuda", True, qlora_label())
    lora = load_file(str(tmp_path / "run" / "adapter_model.safetensors"))
    assert {v.dtype for v in lora.values()} == {torch.float32}
    assert any(float(v.abs().max()) > 0 for k, v in lora.items() if "lora_B" in k)
    chat = ChatModel(str(tiny_model), four_bit=True)
    name = chat.load_adapter(tmp_path / "run")
    msgs = [{"role": "user", "content": "Where is my order?"}]
    gen = GenConfig(max_new_tokens=12)
    together = [r.text for r in chat.generate([Request(msgs, None), Request(msgs, name)], gen)]
    alone = [chat.generate([Request(msgs, arm)], gen)[0].text for arm in (None, name)]
    assert together == alone


@pytest.mark.gpu
def test_a_cuda_runs_peak_memory_stays_within_its_fit_estimate(base_path: str, tmp_path: Path) -> None:
    """The estimate that picks a run's settings (checkpointing, and "will it fit") must not understate: a QLoRA
    run of a 1.7B-shaped model (random weights, the embedded tokenizer, conversations up to 444 tokens) peaks, as
    torch.cuda.max_memory_allocated sees it, under the estimate, which sizes activations by the longest example.
    The CUDA context that the allocator does not see is the estimate's own CONTEXT_BYTES, and memory.fits keeps
    a 10% margin on top."""
    from benchmarks.gpu import random_model

    config = json.loads((CONFIGS / "smollm2-1.7b.json").read_text())
    base, _ = random_model(config, base_path, tmp_path / "base", device="cuda")
    cfg = TrainConfig(data=str(ROOT / "benchmarks" / "data" / "mixed-lengths.jsonl"), out=str(tmp_path / "run"),
                      base_model=str(base), max_steps=4, batch_size=4, val_fraction=0.0, scorecard=False,
                      early_stopping=False, max_length=2048, qlora=True, lora=LoraSettings(r=16, alpha=32))
    record = train.run_sft(cfg)
    peak_mb, estimate_mb = record["metrics"]["peak_memory_mb"], record["estimated_memory_mb"]
    print(f"peak allocated {peak_mb} MB, estimate {estimate_mb} MB (context {memory.CONTEXT_BYTES >> 20} MB of it)")
    assert 0 < peak_mb <= estimate_mb


def test_activation_checkpointing_from_the_config_trains(tiny_model: Path, tmp_path: Path) -> None:
    data = voice_data(tmp_path / "d.jsonl", "Arr.")
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "out"), base_model=str(tiny_model), max_steps=2,
                      val_fraction=0.0, scorecard=False, early_stopping=False, qlora=True,
                      activation_checkpointing=True)
    record = train.run_sft(cfg)
    assert record["activation_checkpointing"] is True and record["config"]["activation_checkpointing"] is True
    assert record["metrics"]["steps"] == 2
    assert all(h["loss"] == h["loss"] for h in record["history"] if "loss" in h)  # finite, not NaN


@pytest.mark.slow  # two short QLoRA runs of the embedded model: about a minute
def test_embedded_model_in_4bit_answers_two_adapters_and_the_base_in_one_batch(base_path: str,
                                                                               tmp_path: Path) -> None:
    from benchmarks.gpu_check import PURE, base_row_purity, divergence_gap, rows_right
    from voicetune.generate import ChatModel, Request

    folders = []
    voices = (("pirate", "Arr, the crew be on it, matey!"), ("butler", "Very good, madam. Consider it done."))
    for name, reply in voices:
        data = voice_data(tmp_path / f"{name}.jsonl", reply)
        cfg = TrainConfig(data=str(data), out=str(tmp_path / name), max_steps=4, batch_size=4, val_fraction=0.0,
                          scorecard=False, early_stopping=False, learning_rate=2e-3, qlora=True)
        assert train.run_sft(cfg)["precision"] == qlora_label()
        folders.append(tmp_path / name)
    chat = ChatModel(four_bit=True)
    names = [chat.load_adapter(f) for f in folders]
    msgs = [{"role": "user", "content": "Can I get a refund?"}]
    requests = [Request(msgs, None), *(Request(msgs, n) for n in names)]
    gen = GenConfig(max_new_tokens=16)
    batched = chat.generate(requests, gen)
    all_base = chat.generate([Request(msgs, None)] * len(requests), gen)
    chat.batch_arms = False
    alone = chat.generate(requests, gen)
    # The GPU check's rule (benchmarks/gpu_check.rows_right): the base row is exactly the same batch's reply with
    # every row on the base, and its logits stay put; where bf16 computes (the 4-bit layers' compute dtype on a
    # CPU with bf16), a 3-row batch rounds differently from a 1-row one, so an adapter row may part from its reply
    # alone at a near-tie only; an adapter on the wrong row parts at a wide gap.
    purity = base_row_purity(chat, msgs, names)
    assert purity["mixed_vs_all_base_batch"] < PURE, purity
    gaps = [None if b.text == a.text else divergence_gap(chat, msgs, r.adapter, b.text, a.text)
            for r, b, a in zip(requests, batched, alone)]
    right, tie = rows_right(batched, all_base, alone, gaps, purity)
    assert all(right), [(b.text, a.text, g, tie) for b, a, g in zip(batched, alone, gaps)]
    assert len({r.text for r in batched}) == 3, [r.text for r in batched]


@pytest.fixture(scope="module")
def two_adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("qlora-adapters")
    _train(tiny_model, root / "pirate", "Arr, the crew be on it!", seed=1)
    _train(tiny_model, root / "butler", "Very good, madam. It shall be done.", seed=2)
    return root / "pirate", root / "butler"


MSGS = [{"role": "user", "content": "Where is my order?"}]


def _prompt_ids(chat) -> list[int]:  # noqa: ANN001
    return list(chat.tokenizer.apply_chat_template(MSGS, add_generation_prompt=True, return_dict=True)["input_ids"])


def test_4bit_chat_answers_base_and_two_adapters_in_one_batch_as_one_at_a_time(
        tiny_model: Path, two_adapters: tuple[Path, Path]) -> None:
    from voicetune.generate import ChatModel, Request

    chat = ChatModel(str(tiny_model), four_bit=True)
    assert chat.precision.qlora and getattr(chat.model, "is_loaded_in_4bit", False)
    pirate, butler = (chat.load_adapter(a) for a in two_adapters)
    requests = [Request(MSGS, None), Request(MSGS, pirate), Request(MSGS, butler)]
    gen = GenConfig(max_new_tokens=12)
    batched = chat.generate(requests, gen)
    chat.batch_arms = False
    alone = chat.generate(requests, gen)
    assert [r.text for r in batched] == [r.text for r in alone]
    ids = _prompt_ids(chat)
    base, a, b = (chat.logits(ids, name) for name in (None, pirate, butler))
    assert not torch.allclose(base, a) and not torch.allclose(a, b)  # three different arms really ran


def test_qlora_adapter_merges_into_the_full_precision_base(tiny_model: Path, two_adapters: tuple[Path, Path],
                                                           tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from voicetune.export import merge

    merged_dir = merge(two_adapters[0], tmp_path / "merged", dtype="fp32")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, str(two_adapters[0])).eval()
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, reference(ids).logits, atol=1e-4)


# --- the shared chat model: compile, lock, adapter cache -----------------------------------------------------

def test_generation_never_auto_compiles(tiny_model: Path) -> None:
    from transformers import GenerationConfig

    from voicetune.generate import ChatModel, Request

    chat = ChatModel(str(tiny_model))
    _, kwargs = chat.decoder.inputs([Request(MSGS, None)], GenConfig())
    assert kwargs["disable_compile"] is True
    # the field transformers 5.23 reads before compiling for a static cache
    assert GenerationConfig(**{"disable_compile": True}).disable_compile is True


def test_loading_an_adapter_waits_for_a_round_in_progress(tiny_model: Path, two_adapters: tuple[Path, Path]) -> None:
    """A scorecard loading its adapter (or scoring) while another visitor's round decodes must wait for it."""
    from voicetune.generate import ChatModel, Request

    chat = ChatModel(str(tiny_model))
    pirate = chat.load_adapter(two_adapters[0])
    events: list[str] = []
    decoding = threading.Event()
    real_generate, real_load = chat.model.generate, chat.registry._load_weights

    def slow_generate(*args, **kwargs):  # the real generate, with a window for the other thread to land in
        events.append("round starts")
        decoding.set()
        time.sleep(0.5)
        out = real_generate(*args, **kwargs)
        events.append("round ends")
        return out

    def recorded_load(folder):
        events.append("adapter loads")
        return real_load(folder)

    chat.model.generate = slow_generate
    chat.registry._load_weights = recorded_load
    round_thread = threading.Thread(target=chat.generate, args=([Request(MSGS, None), Request(MSGS, pirate)],
                                                                GenConfig(max_new_tokens=4)))
    round_thread.start()
    assert decoding.wait(30)
    chat.load_adapter(two_adapters[1])  # the scorecard's step, from this thread
    events.append("scores")
    chat.logits([1, 2, 3], pirate)
    round_thread.join()
    assert events == ["round starts", "round ends", "adapter loads", "scores"]


def _republish(source: Path, dest: Path) -> None:
    """Replace `dest` by a copy of `source`, as a new training or an import of the same run id does."""
    from voicetune import store

    tmp = dest.parent / f".{dest.name}.new"
    shutil.copytree(source, tmp)
    time.sleep(0.01)  # a later modification time even on coarse clocks
    (tmp / "adapter_model.safetensors").touch()
    store.publish_dir(tmp, dest)


def test_a_republished_run_answers_with_its_new_weights(tiny_model: Path, two_adapters: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    from voicetune.generate import ChatModel

    pirate, butler = two_adapters
    run = tmp_path / "run-1"
    shutil.copytree(pirate, run)
    chat = ChatModel(str(tiny_model))
    ids = _prompt_ids(chat)
    chat.load_adapter(run, name="run-1")
    before = chat.logits(ids, "run-1")
    _republish(butler, run)
    after = chat.logits(ids, "run-1")  # no new load_adapter call: the next reply notices by itself
    fresh = ChatModel(str(tiny_model))
    fresh.load_adapter(butler, name="b")
    assert torch.allclose(after, fresh.logits(ids, "b"), atol=1e-5)
    assert not torch.allclose(before, after, atol=1e-3)
    assert len(chat.model.peft_config) == 1  # the old version was deleted, not kept beside the new one


def test_loading_past_the_bound_evicts_the_least_recently_used(tiny_model: Path, two_adapters: tuple[Path, Path],
                                                               tmp_path: Path) -> None:
    from voicetune.generate import ChatModel

    chat = ChatModel(str(tiny_model))
    chat.registry.max_adapters = 2
    folders = []
    for i in range(3):
        folders.append(tmp_path / f"run-{i}")
        shutil.copytree(two_adapters[i % 2], folders[-1])
    names = [chat.load_adapter(f) for f in folders[:2]]
    first_peft = chat.registry.peft_names([names[0]])[0]
    chat.logits([1, 2, 3], names[1])  # run-1 is now the most recently used... then run-0 again
    chat.logits([1, 2, 3], names[0])
    names.append(chat.load_adapter(folders[2]))
    assert set(chat.model.peft_config) == {first_peft, chat.registry.peft_names([names[2]])[0]}  # run-1 went
    assert len(chat.registry._loaded) == 2
    # An evicted adapter still answers: it is loaded again, evicting the next least recently used
    ids = _prompt_ids(chat)
    again = chat.logits(ids, names[1])
    fresh = ChatModel(str(tiny_model))
    fresh.load_adapter(folders[1])
    assert torch.allclose(again, fresh.logits(ids, names[1]), atol=1e-5)
    assert len(chat.model.peft_config) == 2
