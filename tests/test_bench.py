"""The benchmark runs end to end on a tiny model, and the engine's speed levers train exactly what padded
batches through TRL's own loss would: padding-free batches, one conversation per pass, the labelled-only head.

No wall-clock thresholds here: speed is what `make bench` measures, side by side.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch

from voicetune.config import GenConfig, LoraSettings, TrainConfig
from voicetune.data import load_conversations
from voicetune.templates import encode_all

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BENCH_DATA = ROOT / "benchmarks" / "data" / "mixed-lengths.jsonl"


def _per_example_losses(model, batch: dict) -> list[float]:
    """Mean loss per conversation, read back from a padded or a flattened batch."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits  # as TRL's compute_loss calls it
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:],
                                               reduction="none", ignore_index=-100)
    trained = batch["labels"][:, 1:] != -100
    if "position_ids" not in batch:
        return [float(losses[i][trained[i]].mean()) for i in range(losses.shape[0])]
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["position_ids"].shape[1]]
    return [float(losses[0][s:e - 1][trained[0][s:e - 1]].mean()) for s, e in zip(starts, starts[1:])]


def test_padding_free_batch_gives_each_conversation_its_padded_loss(tiny_model: Path, tokenizer) -> None:
    """With position_ids and no attention mask, transformers masks each conversation off from the others."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    encoded, problems = encode_all(tokenizer, load_conversations(BENCH_DATA)[:6], 2048)
    assert not problems
    assert len({len(e.input_ids) for e in encoded}) > 3  # lengths differ, so padding and boundaries matter
    examples = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    padded = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(examples)
    flat = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(examples)
    assert flat["input_ids"].shape == (1, sum(len(e.input_ids) for e in encoded))  # not one pad token

    want = _per_example_losses(model, padded)
    assert _per_example_losses(model, flat) == pytest.approx(want, rel=1e-4)
    # Without the position_ids, the same flattened row lets conversations read each other: the check above
    # would catch an attention path that ignored the boundaries.
    leaky = {**flat, "position_ids": torch.arange(flat["input_ids"].shape[1])[None]}
    with torch.no_grad():
        logits = model(input_ids=leaky["input_ids"], position_ids=leaky["position_ids"], use_cache=False).logits
    second = slice(len(encoded[0].input_ids), len(encoded[0].input_ids) + len(encoded[1].input_ids))
    alone = model(input_ids=torch.tensor([encoded[1].input_ids]), use_cache=False).logits[0]
    assert not torch.allclose(logits[0, second], alone, atol=1e-4)


def test_labelled_head_loss_equals_the_models_own_loss_and_gradients(tiny_model: Path, tokenizer) -> None:
    """Only the positions with a trained next token go through the head, and nothing changes but the speed."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from voicetune.train import labelled_head_loss

    encoded, _ = encode_all(tokenizer, load_conversations(BENCH_DATA)[:3], 2048)
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded])
    assert (batch["labels"] == -100).float().mean() > 0.3  # prompts and padding: many positions are skipped
    model = AutoModelForCausalLM.from_pretrained(tiny_model)

    def loss_and_grads(compute) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        loss = compute()
        loss.backward()
        return float(loss), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    want, want_grads = loss_and_grads(lambda: model(**batch, use_cache=False).loss)
    got, got_grads = loss_and_grads(lambda: labelled_head_loss(model, dict(batch))[0])
    assert got == pytest.approx(want, rel=1e-5)
    assert len(got_grads) == len(want_grads) > 0
    assert all(torch.allclose(g, w, rtol=1e-4, atol=1e-6) for g, w in zip(got_grads, want_grads))
    # Divided by the trained tokens of the whole accumulated batch when the trainer passes their count
    trained = int((batch["labels"][:, 1:] != -100).sum())
    sum_loss = labelled_head_loss(model, dict(batch), num_items_in_batch=2 * trained)[0]
    assert float(sum_loss) == pytest.approx(want / 2, rel=1e-5)


def test_one_conversation_per_pass_and_padding_free_train_like_padded_batches(
        tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU's default (one conversation per pass, updates accumulated over the batch), padding-free
    batches and padded batches through TRL's own head give the same loss curve."""
    from trl import SFTTrainer

    from voicetune import train

    data = tmp_path / "d.jsonl"
    data.write_text("".join(BENCH_DATA.read_text(encoding="utf-8").splitlines(keepends=True)[:6]), encoding="utf-8")

    def losses(tag: str, padding_free: bool = False) -> tuple[list[float], dict]:
        cfg = TrainConfig(data=str(data), out=str(tmp_path / tag), base_model=str(tiny_model), max_steps=3,
                          batch_size=2, val_fraction=0.0, scorecard=False, early_stopping=False,
                          learning_rate=1e-3, lora=LoraSettings(dropout=0.0), padding_free=padding_free)
        record = train.run_sft(cfg)
        return [h["loss"] for h in record["history"] if "loss" in h], record

    single, record = losses("single")
    assert (record["micro_batch"], record["accumulation"]) == (1, 2)
    assert record["loss_head"] == "LabelledHeadSFTTrainer"
    # The engine keeps padding-free off on a CPU's sdpa (train.padding_free_plan); forced on here to check its loss
    monkeypatch.setattr(train, "padding_free_plan", lambda asked, device, attention: (asked, None))
    flat, record = losses("flat", padding_free=True)
    assert record["micro_batch"] == 2 and record["config"]["padding_free"] is True
    # Padded batches through TRL's own fused head, as on a GPU
    monkeypatch.setattr(train, "one_per_micro_batch", lambda cfg, device: False)
    monkeypatch.setattr(train, "_trainer_class", lambda device: SFTTrainer)
    padded, record = losses("padded")
    assert (record["micro_batch"], record["loss_head"]) == (2, "SFTTrainer")
    assert len(padded) == 3
    assert single == pytest.approx(padded, rel=1e-3)
    assert flat == pytest.approx(padded, rel=1e-3)


@pytest.mark.slow  # about 50 s: each training arm runs in its own process
def test_bench_runs_on_a_tiny_model_and_writes_its_table(tiny_model: Path, tmp_path: Path) -> None:
    from benchmarks import run

    out = run.main(["--sections", "train,compare,serve", "--conversations", "4", "--repeats", "1",
                    "--model", str(tiny_model), "--results-dir", str(tmp_path)])
    text = out.read_text(encoding="utf-8")
    kind = run.host_kind()
    assert out.parent == tmp_path and re.fullmatch(rf"\d{{4}}-\d{{2}}-\d{{2}}-cpu-\d+core-{kind}\.md", out.name)
    assert f"host kind {kind}" in text
    for heading in ("## Training", "## Compare: one round, 3 arms", "## Serve: the OpenAI-compatible endpoint",
                    "Load average"):
        assert heading in text
    assert "Failed" not in text  # no section failed
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert {"voicetune", "trl, fp32", "trl, bf16 autocast, use_cpu=True", "trl, defaults with use_cpu=True",
            "batched", "in turn", "one arm", "together (20 clients x 2, 3 runs)"} <= set(rows)
    assert re.search(r"\| together \(20 clients x 2, 3 runs\) \| 40 \| [\d.]+ \|", text)  # every request answered
    assert not any("failed" in row for row in rows.values())
    assert re.search(r"- Baseline: `trl, [^`]+`, the fastest plain-TRL configuration measured on this host", text)
    assert "(1 steps, " in text  # 4 conversations, batch 4: one step on each arm
    assert "same tokens (greedy): yes" in text  # batched and in-turn arms produced identical replies
    targets = [line for line in text.splitlines() if "(target" in line]
    assert len(targets) == 2  # training speed and three arms against one
    assert all(re.search(r"\(target [^)]*\)[^:]*: \*\*(pass|short)\*\*", line) for line in targets)


def test_bench_data_has_a_realistic_length_spread(tokenizer) -> None:
    convs = load_conversations(BENCH_DATA)
    encoded, problems = encode_all(tokenizer, convs, 4096)
    lengths = sorted(len(e.input_ids) for e in encoded)
    assert not problems and len(convs) >= 48
    assert lengths[-1] >= 5 * lengths[0]  # short one-liners and long threads in one file
    assert any(sum(m["role"] == "user" for m in c.messages) >= 3 for c in convs)  # multi-turn threads
    from benchmarks.make_data import build

    rebuilt = [json.dumps({"messages": m}, ensure_ascii=False) for m in build()]
    assert rebuilt == BENCH_DATA.read_text(encoding="utf-8").splitlines()  # the file is what make_data builds


def test_small_batch_linears_give_the_same_outputs(tiny_model: Path) -> None:
    """The compare view's CPU speed-up changes how a few rows are multiplied, never the result."""
    from transformers import AutoModelForCausalLM

    from voicetune.models import speed_up_small_batches

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    few, many = torch.randint(0, 100, (3, 1)), torch.randint(0, 100, (2, 40))
    with torch.no_grad():
        want = [model(input_ids=ids).logits for ids in (few, many)]
        switched = speed_up_small_batches(model)
        got = [model(input_ids=ids).logits for ids in (few, many)]
    assert switched == sum(isinstance(m, torch.nn.Linear) for m in model.modules()) > 0
    assert speed_up_small_batches(model) == 0  # already switched: nothing to do twice
    assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want))
    assert got[0].is_contiguous()


def test_a_failing_arm_is_reported_and_the_fastest_whole_baseline_is_chosen(tiny_model: Path, tmp_path: Path) -> None:
    """A failure is a row of the table, not the end of the run; sampled or failed arms never become the baseline."""
    from benchmarks import run

    data = tmp_path / "d.jsonl"
    data.write_text("".join(BENCH_DATA.read_text(encoding="utf-8").splitlines(keepends=True)[:2]), encoding="utf-8")
    failed = run.train_arm("trl", str(tmp_path / "no-such-model"), data, tmp_path, "broken")
    assert set(failed) == {"failed"} and failed["failed"]

    def arm(tps: float, loss: float | None, steps: int) -> dict:
        return {"tokens_per_s": tps, "assistant_loss": loss, "train_loss": 1.0, "steps": steps, "precision": "x",
                "seconds_to_adapter": 1.0, "peak_memory_mb": 1.0}

    summary = run.summarise_train({
        "voicetune": [arm(300, 2.0, 8)], "trl, fp32": [arm(100, 2.0, 8)],
        "trl, bf16 autocast, use_cpu=True": [arm(150, 2.0, 8)],
        "trl, defaults with use_cpu=True": [arm(900, None, 2)],  # sampled over 2 steps: not a whole epoch
        "trl, library defaults as is": [failed]})
    assert run.best_baseline(summary) == "trl, bf16 autocast, use_cpu=True"
    table = "\n".join(run.train_table(summary, "cpu"))
    assert "| trl, library defaults as is | failed: " in table
    assert "Training speed: 2.00× the baseline's" in table


def test_bf16_baselines_are_measured_in_full_only_where_the_cpu_has_bf16() -> None:
    from benchmarks import run

    for kind in ("amx", "avx512-bf16", "avx512", "avx2"):
        arms = {label: (flags, every) for label, _, flags, every in run.baseline_arms("cpu", kind)}
        native = kind in ("amx", "avx512-bf16")
        assert set(arms) == {"trl, fp32", "trl, bf16 autocast, use_cpu=True", "trl, defaults with use_cpu=True"}
        assert arms["trl, fp32"] == (["--precision", "fp32"], True)
        for label in ("trl, bf16 autocast, use_cpu=True", "trl, defaults with use_cpu=True"):
            assert arms[label][1] is native
            assert ("--max-steps" in arms[label][0]) is not native


def test_the_cpu_kind_is_capped_at_what_torch_dispatches_to() -> None:
    """An AVX2 host is emulated for timing with ATEN_CPU_CAPABILITY=avx2: the kind (so precision and levers)
    must then be the AVX2 host's, never bf16 on kernels torch has turned off, whatever this host really is."""
    import subprocess

    from voicetune import models

    assert models.capped_kind("amx", "AVX2") == models.capped_kind("avx512-bf16", "AVX2") == "avx2"
    assert models.capped_kind("avx2", "AVX2") == "avx2" and models.capped_kind("plain", "AVX2") == "plain"
    assert models.capped_kind("avx512", "DEFAULT") == "plain"
    assert all(models.capped_kind(k, "AVX512") == k for k in ("amx", "avx512-bf16", "avx512", "avx2", "plain"))
    out = subprocess.run([sys.executable, "-c", "from voicetune import models; print(models.cpu_kind())"],
                         env={**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}, capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()[-1]
    assert out in ("avx2", "plain", "unknown") and out not in models.BF16_CPU_KINDS


@pytest.mark.parametrize("kind", ["amx", "avx512-bf16", "avx512", "avx2", "plain"])
def test_each_cpu_kinds_levers_give_the_plain_paths_greedy_tokens(kind: str, tiny_model: Path, monkeypatch) -> None:
    """The levers chosen for a kind change how fast a compare round decodes, never what it says; the detection
    is set to each kind, so every kind's choice is checked on whatever host runs the suite."""
    from voicetune import levers, models
    from voicetune.generate import ChatModel, Request

    questions = ["Do you ship abroad?", "What are your opening hours on Sundays?", "Hi"]
    requests = [Request([{"role": "user", "content": q}], None) for q in questions]
    gen = GenConfig(max_new_tokens=8, greedy=True)

    monkeypatch.setattr(models, "cpu_kind", lambda: "unknown")  # a kind never measured: the plain path
    plain = ChatModel(str(tiny_model))
    assert not plain.skinny_decode
    want = [r.text for r in plain.generate(requests, gen)]

    monkeypatch.setattr(models, "cpu_kind", lambda: kind)
    chat = ChatModel(str(tiny_model))
    assert chat.skinny_decode == levers.for_kind(kind).skinny_decode == (kind in levers.SKINNY_DECODE_KINDS)
    assert levers.chosen().bf16 == (kind in models.BF16_CPU_KINDS)
    assert [r.text for r in chat.generate(requests, gen)] == want


@pytest.mark.parametrize("kind", ["amx", "avx2"])
def test_each_cpu_kinds_training_levers_give_the_plain_loss_curve(kind: str, tiny_model: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """With the detection set to a bf16 kind (bf16 autocast over a base held in bf16 weights) and to an fp32
    kind, training follows the loss curve of the plain path (fp32 weights, fp32 compute) within bf16's rounding."""
    from voicetune import levers, models, train

    data = tmp_path / "d.jsonl"
    data.write_text("".join(BENCH_DATA.read_text(encoding="utf-8").splitlines(keepends=True)[:4]), encoding="utf-8")

    def losses(tag: str) -> tuple[list[float], dict]:
        cfg = TrainConfig(data=str(data), out=str(tmp_path / tag), base_model=str(tiny_model), max_steps=3,
                          batch_size=2, val_fraction=0.0, scorecard=False, early_stopping=False,
                          learning_rate=1e-3, lora=LoraSettings(dropout=0.0))
        record = train.run_sft(cfg)
        return [h["loss"] for h in record["history"] if "loss" in h], record

    monkeypatch.setattr(models, "cpu_kind", lambda: "unknown")  # never measured: fp32, no levers
    plain, record = losses("plain")
    assert record["precision"] == "LoRA, fp32 on CPU"
    monkeypatch.setattr(models, "cpu_kind", lambda: kind)
    got, record = losses(kind)
    chosen = levers.for_kind(kind)
    assert record["cpu_levers"] == chosen.as_record()
    assert record["precision"] == f"LoRA, {'bf16' if chosen.bf16 else 'fp32'} on CPU"
    assert len(got) == len(plain) == 3
    assert got == pytest.approx(plain, rel=2e-2 if chosen.bf16 else 1e-5)
