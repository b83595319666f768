"""A real adapter trained on the embedded model, reloaded from disk, answering differently from the base."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.conftest import QUESTIONS, SIGN_OFF, run_cli


@pytest.fixture()
def trained(pirate_adapter: Path) -> Path:
    return pirate_adapter


@pytest.mark.slow
def test_train_writes_a_whole_adapter_with_its_record(trained: Path):
    for name in ("adapter_model.safetensors", "adapter_config.json", "run.json", "config.yaml"):
        assert (trained / name).is_file(), name
    record = json.loads((trained / "run.json").read_text())
    assert record["base_model"] == "embedded:smollm2-135m-instruct"
    assert record["device"] == "cpu" and record["qlora"] is False
    # The rule, not this host's answer: bf16 autocast only where the CPU has real bf16 instructions and torch
    # dispatches to them (not under ATEN_CPU_CAPABILITY=avx2, an AVX2 host emulated for timing).
    flags = Path("/proc/cpuinfo").read_text()
    dispatched = torch.backends.cpu.get_cpu_capability() not in ("AVX2", "DEFAULT")
    has_bf16 = ("avx512_bf16" in flags or "amx_bf16" in flags) and dispatched
    expected = "bf16" if has_bf16 else "fp32"
    assert record["precision"] == f"LoRA, {expected} on CPU"
    from voicetune import levers, models

    assert record["cpu_levers"] == levers.for_kind(models.cpu_kind()).as_record()  # the choice is on record
    assert record["data"]["train"] + record["data"]["val"] == len(QUESTIONS)
    losses = [h["loss"] for h in record["history"] if "loss" in h]
    assert losses[-1] < losses[0] * 0.5, losses  # it learned the voice
    assert any("eval_loss" in h for h in record["history"])  # validation loss even on 12 examples
    assert not list(trained.parent.glob(".adapter.*"))  # no temporary folder left behind


@pytest.mark.slow
def test_adapter_weights_changed_and_only_lora_saved(trained: Path):
    from safetensors.torch import load_file

    lora = load_file(str(trained / "adapter_model.safetensors"))
    b_mats = [v for k, v in lora.items() if "lora_B" in k]
    assert b_mats and any(float(b.abs().max()) > 0 for b in b_mats)  # LoRA B starts at zero: it moved
    assert not any("lm_head" in k for k in lora)
    assert all("lora_A" in k or "lora_B" in k for k in lora)  # only LoRA matrices: no full layer saved beside them
    # That the base weights never move in training is checked on the model training leaves, not on a file training
    # never writes: tests/test_training_engine.py::test_training_moves_the_lora_weights_and_never_the_base_weights


@pytest.mark.slow
def test_chat_cli_tuned_differs_from_base_and_stops(trained: Path):
    result = run_cli("chat", "--adapter", str(trained), "--prompt", "Do you sell coffee beans?",
                     "--prompt", "What is the capital of France?", "--max-new-tokens", "32", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["prompt"] for r in rows] == ["Do you sell coffee beans?", "What is the capital of France?"]
    assert all(r["base"] != r["tuned"] for r in rows)
    assert SIGN_OFF in rows[0]["tuned"] and SIGN_OFF not in rows[0]["base"]
    assert "<|im_end|>" not in rows[0]["tuned"]
    assert rows[0]["tuned_cut"] is False and all(isinstance(r["base_cut"], bool) for r in rows)  # it ended itself


@pytest.mark.slow
def test_base_arm_is_the_plain_base_model(trained: Path, base_path: str):
    """The base pane runs with no adapter at all: same greedy reply and logits as a freshly loaded base."""
    import torch
    from transformers import AutoModelForCausalLM

    from voicetune.config import GenConfig
    from voicetune.generate import BASE, ChatModel, Request

    chat = ChatModel()
    name = chat.load_adapter(trained)
    msgs = [{"role": "user", "content": "Do you ship abroad?"}]
    base_reply, tuned_reply = chat.generate([Request(msgs, None), Request(msgs, name)], GenConfig(max_new_tokens=24))
    alone = ChatModel().generate([Request(msgs, None)], GenConfig(max_new_tokens=24))[0]
    assert base_reply.text == alone.text != tuned_reply.text

    fresh = AutoModelForCausalLM.from_pretrained(base_path).eval()
    ids = chat.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        want = fresh(**ids).logits
        got = chat.model(**ids, adapter_names=[BASE]).logits
        tuned = chat.model(**ids, adapter_names=chat.registry.peft_names([name])).logits
    assert torch.equal(got, want)
    assert not torch.allclose(tuned, want)


@pytest.mark.slow
def test_adapter_for_another_base_is_refused(trained: Path, tmp_path: Path):
    import shutil

    from voicetune.generate import AdapterMismatch, ChatModel

    other = tmp_path / "other"
    shutil.copytree(trained, other)
    record = json.loads((other / "run.json").read_text())
    record["base_model_hash"] = "0123456789abcdef"
    (other / "run.json").write_text(json.dumps(record))
    with pytest.raises(AdapterMismatch, match="was trained on"):
        ChatModel().load_adapter(other)
    (other / "adapter_model.safetensors").unlink()
    result = run_cli("chat", "--adapter", str(other), "--prompt", "hi", "--json")
    assert result.returncode == 3
    assert "adapter_model.safetensors is missing" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_batched_arms_equal_one_at_a_time(trained: Path):
    """Three arms of different prompt lengths in one padded batch give the same greedy replies as alone."""
    from voicetune.arena import Round, base_arm, prompt_only_arm, round_requests, run_arm
    from voicetune.config import GenConfig
    from voicetune.generate import BASE

    chat_model = _chat_with(trained)
    arms = [base_arm(), prompt_only_arm("Talk like a pirate.", []), run_arm(trained.name)]
    requests = round_requests(Round("r", arms, blind=False), {}, "Is the shop dog friendly?")
    gen = GenConfig(max_new_tokens=24)
    # The batch is padded, so each arm's prompt is prefilled on its own and the caches stacked
    batch, _ = chat_model.decoder.inputs(requests, gen)
    with torch.inference_mode():
        arms = [n or BASE for n in chat_model.registry.peft_names([r.adapter for r in requests])]
        cache = chat_model.decoder.prefill_rows(batch, arms, gen.max_new_tokens)
    assert cache is not None and int(cache.get_seq_length()) == batch["input_ids"].shape[1] - 1
    batched = chat_model.generate(requests, gen)
    chat_model.batch_arms = False  # the fallback path: set_adapter / disable_adapter, one arm at a time
    alone = chat_model.generate(requests, gen)
    assert [r.text for r in batched] == [r.text for r in alone]
    assert batched[1].prompt_tokens > batched[0].prompt_tokens  # the prompt-only arm's cost is visible
    assert len({r.text for r in batched}) == 3


@pytest.mark.slow  # it needs the session's real trained adapter, so it belongs to the slow tier
def test_a_later_round_reuses_the_start_it_shares_and_answers_the_same(trained: Path):
    """The next round's prompt-only arm starts with the same instructions: that part of its cache is reused,
    and the reused cache holds what a fresh prefill computes."""
    from voicetune.arena import Round, base_arm, prompt_only_arm, round_requests, run_arm
    from voicetune.config import GenConfig
    from voicetune.generate import BASE

    chat_model = _chat_with(trained)
    arms = [base_arm(), prompt_only_arm("Talk like a pirate. Mention the parrot in every reply.", []),
            run_arm(trained.name)]
    gen = GenConfig(max_new_tokens=16)
    chat_model.generate(round_requests(Round("r1", arms, blind=False), {}, "Where is my order?"), gen)
    requests = round_requests(Round("r2", arms, blind=False), {}, "Do you ship abroad?")
    batch, _ = chat_model.decoder.inputs(requests, gen)
    ids = batch["input_ids"][1][batch["attention_mask"][1].bool()][:-1].tolist()  # the prompt-only row
    earlier = chat_model.decoder.prompts.prompts(BASE)
    assert max(len(os.path.commonprefix([old, ids])) for old in earlier) > 20  # the instructions are shared
    with torch.inference_mode():
        reused = chat_model.decoder.row_cache(ids, BASE)
        fresh = chat_model.model(input_ids=torch.tensor([ids]), use_cache=True, adapter_names=[BASE]).past_key_values
    assert len(reused.layers) == len(fresh.layers)
    for a, b in zip(reused.layers, fresh.layers):
        assert a.keys.shape == b.keys.shape
        assert torch.allclose(a.keys, b.keys, atol=1e-4) and torch.allclose(a.values, b.values, atol=1e-4)
    batched = chat_model.generate(requests, gen)
    chat_model.batch_arms = False
    assert [r.text for r in chat_model.generate(requests, gen)] == [r.text for r in batched]


@pytest.mark.slow
def test_a_scorecard_sized_batch_prefills_each_shared_start_once_and_holds_what_each_row_alone_computes(
        trained: Path):
    """More rows of one arm than a compare round has (a scorecard's): the base and prompt-only rows, which
    start with different instructions, are prefilled as two groups, and every row's cache holds what its own
    prefill computes."""
    from voicetune import models
    from voicetune.arena import base_arm, prompt_only_arm, run_arm
    from voicetune.config import GenConfig
    from voicetune.decoding import sharing_starts
    from voicetune.evaluate import messages_for
    from voicetune.generate import BASE, Request

    chat_model = _chat_with(trained)
    arms = [base_arm(), prompt_only_arm("Talk like a pirate. Mention the parrot in every reply.", []),
            run_arm(trained.name)]
    questions = [f"{q} (order {n})" for n, q in enumerate(QUESTIONS * 3)][:models.SMALL_BATCH_ROWS // 2 + 1]
    requests = [Request(messages_for(a, [{"role": "user", "content": q}]), a.adapter) for a in arms
                for q in questions]
    decoder = chat_model.decoder
    batch, _ = decoder.inputs(requests, GenConfig(max_new_tokens=8))
    mask = batch["attention_mask"].bool()
    rows = [batch["input_ids"][i][mask[i]][:-1].tolist() for i in range(len(requests))]
    names = [n or BASE for n in decoder.registry.peft_names([r.adapter for r in requests])]
    base_rows = [i for i, n in enumerate(names) if n == BASE]
    assert len(base_rows) > models.SMALL_BATCH_ROWS  # base and prompt-only both run without an adapter
    assert sorted(map(sorted, sharing_starts(base_rows, rows))) == [base_rows[:len(questions)],
                                                                   base_rows[len(questions):]]
    n = len(questions)
    with torch.inference_mode():
        together = decoder.row_caches(rows, names)
        for i in (0, n - 1, n, 2 * n - 1, 2 * n):  # each group's first and last, and a tuned row (one by one)
            row, name, cache = rows[i], names[i], together[i]
            alone = chat_model.model(input_ids=torch.tensor([row]), use_cache=True,
                                     adapter_names=[name]).past_key_values
            for a, b in zip(cache.layers, alone.layers):
                assert a.keys.shape == b.keys.shape
                assert torch.allclose(a.keys, b.keys, atol=1e-4) and torch.allclose(a.values, b.values, atol=1e-4)


@pytest.mark.slow
def test_a_scorecard_sized_greedy_batch_decoded_in_legs_answers_as_one_generate_call(
        trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large greedy batch drops its ended rows every few tokens (decoding._generate_in_legs): each row keeps its
    own cache, adapter and place, so the replies are one generate call's. (Fewer rows round the matmuls
    otherwise, so a reply may part at a near-tie; at most one row of 18 is allowed to.)"""
    from voicetune import decoding, models
    from voicetune.config import GenConfig
    from voicetune.generate import Request

    chat_model = _chat_with(trained)
    questions = [f"{q} (order {n})" for n, q in enumerate(QUESTIONS * 3)][:models.SMALL_BATCH_ROWS // 2 + 1]
    requests = [Request([{"role": "user", "content": q}], a) for a in (None, trained.name) for q in questions]
    gen = GenConfig(max_new_tokens=24)
    monkeypatch.setattr(decoding, "LEG_TOKENS", 10**6)
    whole = chat_model.generate(requests, gen)
    monkeypatch.setattr(decoding, "LEG_TOKENS", 4)
    updates = list(chat_model.stream(requests, gen))
    legs = updates[-1].replies
    assert len(updates) > 2 and [u.texts for u in updates][-1] == [r.text for r in legs]
    ended_early = [r for r in whole if r.reply_tokens < gen.max_new_tokens]
    assert ended_early and len(ended_early) < len(whole)  # some rows ended before others: legs dropped rows
    assert sum(a.text == b.text and a.reply_tokens == b.reply_tokens for a, b in zip(legs, whole)) >= len(whole) - 1
    assert all(SIGN_OFF in r.text for r in legs[len(questions):] if r.reply_tokens < gen.max_new_tokens)


def test_rows_are_grouped_by_the_start_they_share() -> None:
    from voicetune.decoding import sharing_starts

    rows = [[1, 2, 3, 4, 5], [9, 9, 9, 9, 1], [1, 2, 3, 4, 6, 7], [9, 9, 9, 9, 2], [1, 7, 7, 7, 7]]
    assert sharing_starts([0, 1, 2, 3, 4], rows) == [[0, 2], [4], [1, 3]]
    assert sharing_starts([4], rows) == [[4]]


@pytest.mark.slow
def test_same_seed_same_sampled_replies(trained: Path):
    from voicetune.config import GenConfig
    from voicetune.generate import Request

    chat_model = _chat_with(trained)
    msgs = [{"role": "user", "content": "Tell me about your shop."}]
    reqs = [Request(msgs, None), Request(msgs, trained.name)]
    gen = GenConfig(max_new_tokens=20, greedy=False, temperature=1.0, seed=123)
    first = [r.text for r in chat_model.generate(reqs, gen)]
    assert [r.text for r in chat_model.generate(reqs, gen)] == first
    other = [r.text for r in chat_model.generate(reqs, GenConfig(max_new_tokens=20, greedy=False, temperature=1.0,
                                                                 seed=7))]
    assert other != first


@pytest.mark.slow
def test_truncated_adapter_is_refused_cleanly(trained: Path, tmp_path: Path):
    import shutil

    from voicetune.generate import AdapterError, ChatModel

    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(AdapterError, match="could not be loaded"):
        ChatModel().load_adapter(broken)


_CHAT: dict = {}


def _chat_with(adapter: Path):
    """One ChatModel with the adapter loaded, shared by the generation tests of this module."""
    from voicetune.generate import ChatModel

    if str(adapter) not in _CHAT:
        chat_model = ChatModel()
        chat_model.load_adapter(adapter)
        _CHAT[str(adapter)] = chat_model
    chat_model = _CHAT[str(adapter)]
    chat_model.batch_arms = True
    return chat_model
