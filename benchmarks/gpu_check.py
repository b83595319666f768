"""`make gpu-check`: QLoRA on a real GPU, seven checks with one PASS/FAIL line each (figures: benchmarks/results/).

No network: the model is a random one of SmolLM2-1.7B's shape (benchmarks/configs/), built directly in bf16 on
the GPU, with the embedded tokenizer; the conversations are benchmarks/data/mixed-lengths.jsonl (check 6: a
bundled voice, examples/cosmo-coffee.jsonl).

1. QLoRA training in bf16, a few dozen steps, through voicetune's run_sft.
2. The same with the precision forced to fp16, as on a T4 (TRL's bf16 cast of the adapter used to crash here).
3. Chat on the 4-bit base: base + both adapters in one mixed batch, greedy equal to one arm at a time; time to
   first token and tokens/s.
4. The same chat on the 16-bit base, which a model that fits the GPU gets.
5. Merge of the QLoRA adapter into the full-precision base (voicetune.export.merge).
6. A voice as a user trains it: `python -m voicetune train` with only --data, --out and the base, in its own
   process as the app's jobs run: the Auto rate and general replay, validation with early stopping, then the
   scorecard and the model card, with each phase's seconds. The weights are random, so the scorecard's
   adherence means nothing here; what is checked is that the default path runs whole on the device.
7. Training bench against plain TRL QLoRA, each arm in its own process: warm-up steps excluded, the same
   conversations for both, peak memory as the driver sees it (CUDA context and paged optimizer state included),
   MFU without embedding parameters against voicetune.gpus' table.

Results go to benchmarks/results/<date>-<gpu>.md. `--cpu-smoke` runs the same code with a tiny config on a CPU
in about a minute (no MFU there); it is what tests/test_gpu_check.py runs.

    .venv/bin/python -m benchmarks.gpu_check
    .venv/bin/python -m benchmarks.gpu_check --cpu-smoke --out /tmp/check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from voicetune import gpus  # noqa: E402

DATA = ROOT / "benchmarks" / "data" / "mixed-lengths.jsonl"
VOICE = ROOT / "examples" / "cosmo-coffee.jsonl"  # a bundled voice, with its test prompts beside it
RESULTS = ROOT / "benchmarks" / "results"
TINY_CONFIG = {"vocab_size": 49152, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
               "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2}


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.detail}"


# --- pure helpers (tested on a CPU) -------------------------------------------------------------------------

def windowed_rate(points: list[tuple[float, float]], warmup: int) -> tuple[float, float]:
    """Tokens per second over (time, tokens seen) points, one per optimizer step, leaving the first `warmup`
    steps out (CUDA kernels autotune, the allocator grows, bitsandbytes pages in). Returns (rate, tokens)."""
    if len(points) <= warmup + 1:
        raise ValueError(f"need more than {warmup + 1} logged steps to time after {warmup} warm-up steps, "
                         f"got {len(points)}")
    (t0, n0), (t1, n1) = points[warmup], points[-1]
    return (n1 - n0) / (t1 - t0), n1 - n0


TIE = 0.05  # logits closer than this are a numerical tie in bf16: which one greedy picks depends on the batch shape
PURE = 1e-3  # the base row's logits in a mixed batch against an all-base batch of the same shape: same kernels


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """The first position where two token lists differ (the shorter one's end counts), or None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def mfu_line(tokens_per_s: float, non_embedding_params: int, device_name: str) -> tuple[float | None, str]:
    peak = gpus.peak_tflops(device_name)
    if peak is None:
        return None, f"no MFU: {device_name!r} is not in voicetune.gpus.PEAK_TFLOPS"
    value = gpus.mfu(tokens_per_s, non_embedding_params, peak)
    return value, f"MFU {value:.1%} of {peak:g} TFLOPS (4·N, N = {non_embedding_params / 1e9:.2f} B non-embedding)"


def results_path(date: str, device_name: str, root: Path = RESULTS) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-") or "unknown-gpu"
    return root / f"{date}-{slug}.md"


def write_results(path: Path, device_name: str, info: dict[str, Any], checks: list[Check]) -> Path:
    """The results file: the PASS/FAIL lines first, then each check's figures as JSON."""
    lines = [f"# GPU check on {device_name}", "", "Run with `make gpu-check` (benchmarks/gpu_check.py).", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), "", "## Checks", ""]
    lines += [f"- {c.line()}" for c in checks]
    lines += ["", "## Figures", ""]
    for c in checks:
        lines += [f"### {c.name}", "", "```json", json.dumps(c.figures, indent=2, sort_keys=True), "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# --- measuring ---------------------------------------------------------------------------------------------

class MemorySampler:
    """Peak device memory in use while the block runs, sampled from the driver every 20 ms.

    torch's own counters miss the CUDA context and bitsandbytes' paged (managed) optimizer state; the driver's
    free figure has both. `baseline` is what was in use before this process touched the GPU.
    """

    def __init__(self, baseline: int = 0):
        self.baseline, self.peak = baseline, 0
        self._stop = threading.Event()

    def _run(self) -> None:
        import torch

        while not self._stop.is_set():
            free, total = torch.cuda.mem_get_info()
            self.peak = max(self.peak, total - free - self.baseline)
            time.sleep(0.02)

    def __enter__(self) -> "MemorySampler":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def driver_used_bytes() -> int:
    """Memory in use on GPU 0 by every process, from nvidia-smi, without creating a CUDA context here."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[0]) * 2**20


@contextlib.contextmanager
def forced_precision(fp16: bool) -> Iterator[None]:
    """Train as a pre-Ampere GPU would (fp16, no bf16) on this one: precision_for is the only switch."""
    from voicetune import models

    real = models.precision_for
    if fp16:
        models.precision_for = lambda device, qlora=None: models.Precision(  # type: ignore[assignment]
            device, qlora=True if qlora is None else qlora, bf16=False, fp16=True)
    try:
        yield
    finally:
        models.precision_for = real  # type: ignore[assignment]


def subset(n: int, dest: Path) -> Path:
    lines = DATA.read_text(encoding="utf-8").splitlines(keepends=True)
    dest.write_text("".join((lines * (1 + n // len(lines)))[:n]), encoding="utf-8")
    return dest


def train_config(data: Path, out: Path, base: Path, steps: int, batch: int, seed: int = 42) -> Any:
    from voicetune.config import LoraSettings, TrainConfig

    return TrainConfig(data=str(data), out=str(out), base_model=str(base), max_steps=steps, batch_size=batch,
                       val_fraction=0.0, scorecard=False, early_stopping=False, learning_rate=1e-3, seed=seed,
                       max_length=4096, qlora=True, lora=LoraSettings(r=16, alpha=32))


# --- the checks --------------------------------------------------------------------------------------------

def check_training(name: str, base: Path, data: Path, out: Path, steps: int, fp16: bool, seed: int = 42) -> Check:
    from voicetune import runs, train

    with forced_precision(fp16):
        record = train.run_sft(train_config(data, out, base, steps, batch=4, seed=seed))
    losses = [h["loss"] for h in record["history"] if "loss" in h]
    finite = all(x == x and abs(x) != float("inf") for x in losses)
    ok = record["metrics"]["steps"] == steps and finite and bool(losses) and (out / runs.ADAPTER_WEIGHTS).exists()
    figures = {"precision": record["precision"], "steps": record["metrics"]["steps"], "first_loss": losses[0],
               "last_loss": losses[-1], "tokens_per_s": record["metrics"]["tokens_per_s"],
               "peak_allocated_mb": record["metrics"]["peak_memory_mb"],
               "estimated_memory_mb": record["estimated_memory_mb"],  # what "will it fit" said, CUDA context included
               "activation_checkpointing": record["activation_checkpointing"]}
    return Check(name, ok, f"{record['precision']}, {record['metrics']['steps']} steps, loss {losses[0]:.3f} -> "
                           f"{losses[-1]:.3f}", figures)


def check_chat(base: Path, adapters: list[Path], four_bit: bool) -> Check:
    """The mixed batch on the 4-bit base (what a model too big for 16-bit chat gets) or on the 16-bit base (what
    a model that fits gets: bf16 on a GPU, fp32 on a CPU): the same rule and the same figures for both."""
    from voicetune.config import GenConfig
    from voicetune.generate import ChatModel, Request

    chat = ChatModel(str(base), four_bit=four_bit)
    names = [chat.load_adapter(a, name=f"arm{i}") for i, a in enumerate(adapters)]
    msgs = [{"role": "user", "content": "Where is my order? It has been a week."}]
    requests = [Request(msgs, None)] + [Request(msgs, n) for n in names]
    gen = GenConfig(max_new_tokens=16)
    chat.generate(requests, GenConfig(max_new_tokens=2))  # warm-up: kernels and the allocator
    batched = chat.generate(requests, gen)
    all_base = chat.generate([Request(msgs, None)] * len(requests), gen)  # same shape, same path, no adapter
    chat.batch_arms = False
    alone = chat.generate(requests, gen)
    gaps = [None if b.text == a.text else divergence_gap(chat, msgs, r.adapter, b.text, a.text)
            for r, b, a in zip(requests, batched, alone)]
    purity = base_row_purity(chat, msgs, names)
    same, tie = rows_right(batched, all_base, alone, gaps, purity)
    pure = purity["mixed_vs_all_base_batch"] < PURE
    tps = sum(r.reply_tokens for r in batched) / max(r.seconds for r in batched)
    figures = {"four_bit": chat.precision.qlora, "rows_right": same, "first_token_s": batched[0].first_token_s,
               "base_row_same_as_all_base_batch": batched[0].text == all_base[0].text,
               "same_greedy_as_one_at_a_time": [b.text == a.text for b, a in zip(batched, alone)],
               "logit_gap_where_they_part": gaps, "batch_tokens_per_s": round(tps, 1),
               "alone_tokens_per_s": [round(r.tokens_per_second, 1) for r in alone],
               "alone_first_token_s": [r.first_token_s for r in alone],
               "plain_generate_base_tokens_per_s": round(plain_generate_rate(chat, msgs, gen.max_new_tokens), 1)}
    figures["base_row_purity"] = purity
    # How many scorecard rows (about 700 tokens each) one generate call would hold here (None on a CPU: no bound)
    scorecard_sized = [Request([{"role": "user", "content": "word " * 600}], None)]
    figures["rows_per_call_at_700_tokens"] = chat.rows_per_call(scorecard_sized, GenConfig(max_new_tokens=96))
    ttft = f"{batched[0].first_token_s:.3f} s" if batched[0].first_token_s else "n/a"
    return Check(chat_check_name(four_bit), all(same) and pure and chat.precision.qlora == four_bit,
                 f"base row {'the base model' if pure else 'MOVED BY AN ADAPTER'} (logits "
                 f"{purity['mixed_vs_all_base_batch']:.1e} from an all-base batch, reply "
                 f"{'the same' if same[0] else 'DIFFERENT'} as that batch's); adapters' greedy equal one-at-a-time, "
                 f"or parting at a tie under {tie:.3f}, for {sum(same[1:])}/{len(same) - 1}; first token {ttft}, "
                 f"{tps:.1f} tokens/s for the batch", figures)


def rows_right(batched: list[Any], all_base: list[Any], alone: list[Any], gaps: list[float | None],
               purity: dict[str, float]) -> tuple[list[bool], float]:
    """Whether each row of a mixed batch was answered by its own arm, and the tie allowed to adapter rows.

    The base row is held to the exact reply of the same batch with every row on the base: the same shape and
    the same decode path, so any difference is an adapter or a cache reaching it. Against the base alone it may
    part at a near-tie, since a 3-row batch rounds differently from a 1-row one (that gap is a figure, not the
    rule). An adapter row has no same-shape reference without the other adapters, so it is held to its reply
    alone, parting only where its two candidates are within twice the measured batch-shape rounding.
    """
    tie = max(TIE, 2 * purity["all_base_batch_vs_alone"])
    base_row = batched[0].text == all_base[0].text and purity["mixed_vs_all_base_batch"] < PURE
    adapter_rows = [b.text == a.text or (g is not None and g < tie)
                    for b, a, g in zip(batched[1:], alone[1:], gaps[1:])]
    return [base_row, *adapter_rows], tie


def chat_check_name(four_bit: bool) -> str:
    return f"chat: base + 2 adapters in one mixed batch on the {'4-bit' if four_bit else '16-bit'} base"


def base_row_purity(chat: Any, msgs: list[dict], names: list[str]) -> dict[str, float]:
    """Whether the base row of a mixed batch is the base model, told apart from batch-shape rounding.

    The same 3-row batch runs twice: rows (base, adapter, adapter), then every row on the base. The base row's
    last logits must be the same in both (an adapter leaking into it would move them); against the base alone in
    a 1-row batch they may differ by rounding only, which is what greedy replies that part at a near-tie show.
    """
    import torch

    from voicetune.generate import BASE
    from voicetune.templates import render

    tok = chat.tokenizer
    ids = tok([render(tok, msgs, add_generation_prompt=True)] * (1 + len(names)), return_tensors="pt",
              add_special_tokens=False).to(chat.model.device)
    with chat.lock, torch.inference_mode():
        arms = [BASE] + [n or BASE for n in chat.registry.peft_names(names)]
        mixed = chat.model(**ids, adapter_names=arms).logits[:, -1].float()
        all_base = chat.model(**ids, adapter_names=[BASE] * len(arms)).logits[:, -1].float()
        alone = chat.model(**{k: v[:1] for k, v in ids.items()}, adapter_names=[BASE]).logits[0, -1].float()
    return {"mixed_vs_all_base_batch": float((mixed[0] - all_base[0]).abs().max()),
            "all_base_batch_vs_alone": float((all_base[0] - alone).abs().max()),
            "adapter_rows_vs_base": float((mixed[1:] - all_base[1:]).abs().max()),
            "logit_spread": float(alone.std())}


def divergence_gap(chat: Any, msgs: list[dict], adapter: str | None, text_a: str, text_b: str) -> float | None:
    """Where two greedy replies part, how far apart the arm's two candidate tokens' logits are (None: no token
    to compare, e.g. one reply is a prefix of the other).

    A random model's logits are nearly flat, and a batch of 3 rows multiplies in other kernels than 1 row, so
    bf16 rounding may pick the other of two near-equal tokens (a gap under TIE); a wrong adapter shows a wide gap.
    """
    from voicetune.templates import render

    tok = chat.tokenizer
    a, b = (tok(t, add_special_tokens=False)["input_ids"] for t in (text_a, text_b))
    k = first_divergence(a, b)
    if k is None or k >= min(len(a), len(b)):
        return None
    prompt = tok(render(tok, msgs, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
    logits = chat.logits(prompt + a[:k], adapter)[-1].float()
    return abs(float(logits[a[k]] - logits[b[k]]))


def plain_generate_rate(chat: Any, msgs: list[dict], new_tokens: int) -> float:
    """transformers' own greedy generate on the same loaded model, base arm, all adapters off: the plain
    baseline for the chat's tokens/s (reply tokens over the whole call, first token included, as Reply counts)."""
    import torch

    from voicetune.templates import render

    tok = chat.tokenizer
    ids = tok(render(tok, msgs, add_generation_prompt=True), return_tensors="pt", add_special_tokens=False)
    ids = ids.to(chat.model.device)
    off = chat.model.disable_adapter() if hasattr(chat.model, "disable_adapter") else contextlib.nullcontext()
    with chat.lock, torch.inference_mode(), off:
        chat.model.generate(**ids, max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id)  # warm-up
        start = time.perf_counter()
        out = chat.model.generate(**ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                  pad_token_id=tok.pad_token_id)
        seconds = time.perf_counter() - start
    return (out.shape[1] - ids["input_ids"].shape[1]) / seconds


def check_merge(adapter: Path, dest: Path) -> Check:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from voicetune.export import merge
    from voicetune.runs import read as read_run

    merged_dir = merge(adapter, dest, dtype="fp32")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(read_run(adapter)["base_model_path"], dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, str(adapter)).eval()
    ids = torch.tensor([[1, 17, 230, 4096 % merged.config.vocab_size, 9]])
    with torch.no_grad():
        diff = float((merged(ids).logits - reference(ids).logits).abs().max())
    no_lora = not any("lora" in n for n, _ in merged.named_parameters())
    return Check("merge into the full-precision base", no_lora and diff < 1e-3,
                 f"plain model (no LoRA layers: {no_lora}); logits within {diff:.1e} of base + adapter",
                 {"max_logit_diff": diff})


USER_RUN = "a voice as a user trains it (CLI defaults, scorecard included)"


def check_user_run(base: Path, work: Path, cpu_smoke: bool) -> Check:
    """Check 6: the CLI's defaults end to end in a child process, as a job runs them (see the module docstring).

    PASS needs the adapter, the scorecard and the model card written, the base asked for general replay, a
    validation loss watched, and the phases reported as data in the order the app's job view expects.
    """
    out, events = work / "voice", work / "voice-events.jsonl"
    cmd = [sys.executable, "-m", "voicetune", "train", "--data", str(VOICE), "--out", str(out),
           "--base-model", str(base), "--events", str(events)]
    if cpu_smoke:  # a few steps: the smoke checks the path, not the voice
        cmd += ["--max-steps", "4"]
    proc, seconds, phases = run_watching_phases(cmd, events)
    if proc.returncode != 0:
        return Check(USER_RUN, False, f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
    record = json.loads((out / "run.json").read_text(encoding="utf-8"))
    card_path = out / "scorecard.json"
    card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.exists() else {}
    m, data = record["metrics"], record["data"]
    from voicetune.jobs import read_events

    asked = next((e["replay_asked"] for e in read_events(events) if "replay_asked" in e), 0)
    # A random model seldom ends an answer in time, so its replay may keep none: asking is what is checked
    ok = (bool(card) and (out / "README.md").exists() and asked > 0 and data["val"] > 0
          and m["best_step"] is not None and list(phases) == ["loading", "training", "saving", "scoring"])
    figures = {"precision": record["precision"], "learning_rate": record["config"]["learning_rate"],
               "replay_asked": asked, "replay_kept": data["replay"], "train": data["train"], "val": data["val"],
               "steps": m["steps"], "planned_steps": m["planned_steps"], "best_step": m["best_step"],
               "early_stopped": m["early_stopped"], "peak_allocated_mb": m["peak_memory_mb"],
               "estimated_memory_mb": record["estimated_memory_mb"], "phase_seconds": phases,
               "total_seconds": round(seconds, 1), "verdict": card.get("verdict"),
               "adherence": {k: v.get("rate") for k, v in card["adherence"]["arms"].items()}
               if card.get("adherence") else None}
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in phases.items())
    return Check(USER_RUN, ok, f"{record['precision']}, rate {record['config']['learning_rate']:g}, replay kept "
                               f"{data['replay']} of {asked} answers, {m['steps']} of {m['planned_steps']} steps "
                               f"(best {m['best_step']}), scorecard {'written' if card else 'MISSING'}; {timing}, "
                               f"{seconds:.0f} s in all", figures)


def run_watching_phases(cmd: list[str], events: Path) -> tuple[subprocess.CompletedProcess, float,
                                                                 dict[str, float]]:
    """Run the CLI and time each phase as the app's job view sees it: from the first event naming a phase to
    the next phase's first (the last ends with the process). The events carry no clock of their own, so the
    file is read as it grows, every 0.2 s; the child's output goes to a log beside it, so no pipe can fill.
    Also returns the whole run's seconds."""
    from voicetune.jobs import read_events

    log = events.with_suffix(".log")
    start = time.perf_counter()
    marks: list[tuple[str, float]] = []
    seen = 0
    with open(log, "w", encoding="utf-8") as out:
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)
        while True:
            done = child.poll() is not None  # read once more after it ends: its last events
            for e in read_events(events)[seen:]:
                seen += 1
                if e.get("phase") and (not marks or marks[-1][0] != e["phase"]):
                    marks.append((e["phase"], time.perf_counter()))
            if done:
                break
            time.sleep(0.2)
    end = time.perf_counter()
    phases: dict[str, float] = {}
    for (phase, t), (_, t_next) in zip(marks, marks[1:] + [("", end)]):
        phases[phase] = round(phases.get(phase, 0.0) + t_next - t, 1)
    output = log.read_text(encoding="utf-8", errors="replace")
    return subprocess.CompletedProcess(cmd, child.returncode, output, output), end - start, phases


def arm_main(arm: str, base: Path, data: Path, out: Path, steps: int, batch: int, warmup: int, baseline: int,
             result: Path) -> None:
    """One arm of the training bench, in its own process (its own context, allocator and peak)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    points: list[tuple[float, float]] = []
    sampler: Any = MemorySampler(baseline) if device == "cuda" else contextlib.nullcontext()
    with sampler:
        if arm == "voicetune":
            from voicetune import train

            def on_event(e: dict[str, Any]) -> None:
                if e.get("type") == "log" and "num_tokens" in e:
                    points.append((time.perf_counter(), float(e["num_tokens"])))

            train.run_sft(train_config(data, out, base, steps, batch), on_event)
        else:
            points = plain_trl(base, data, out, steps, batch)
    rate, tokens = windowed_rate(points, warmup)
    Path(result).write_text(json.dumps({"arm": arm, "tokens_per_s": rate, "timed_tokens": tokens,
                                        "total_tokens": points[-1][1], "steps": len(points),
                                        "peak_bytes": getattr(sampler, "peak", None)}))


def plain_trl(base: Path, data: Path, out: Path, steps: int, batch: int) -> list[tuple[float, float]]:
    """QLoRA as TRL's and PEFT's docs write it, with the same data, steps, batch, rank and rate as voicetune's."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16 if cuda else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(str(base), quantization_config=quant,
                                                 dtype=torch.bfloat16 if cuda else torch.float32,
                                                 **({"device_map": {"": 0}} if cuda else {}))
    points: list[tuple[float, float]] = []

    class Steps(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            if logs and "num_tokens" in logs:
                points.append((time.perf_counter(), float(logs["num_tokens"])))

    args = SFTConfig(output_dir=str(out), report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1,
                     max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-3, max_length=4096,
                     bf16=cuda, use_cpu=not cuda, gradient_checkpointing=cuda, seed=42,
                     optim="paged_adamw_8bit" if cuda else "adamw_torch")
    trainer = SFTTrainer(model=model, args=args, processing_class=AutoTokenizer.from_pretrained(str(base)),
                         train_dataset=load_dataset("json", data_files=str(data), split="train"),
                         peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                task_type="CAUSAL_LM"),
                         callbacks=[Steps()])
    trainer.train()
    return points


def check_bench(base: Path, data: Path, work: Path, steps: int, batch: int, warmup: int, device_name: str,
                non_embedding_params: int, cuda: bool) -> Check:
    baseline = driver_used_bytes() if cuda else 0
    arms = {}
    for arm in ("voicetune", "trl"):
        result = work / f"{arm}.json"
        cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--arm", arm, "--base", str(base), "--data", str(data),
               "--out", str(work / f"{arm}-adapter"), "--bench-steps", str(steps), "--batch", str(batch),
               "--warmup", str(warmup), "--baseline", str(baseline), "--result", str(result)]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            return Check("training bench vs plain TRL QLoRA", False, f"the {arm} arm failed: "
                         f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}",
                         {"stderr": done.stderr[-2000:]})
        arms[arm] = json.loads(result.read_text())
    vt, trl = arms["voicetune"], arms["trl"]
    same_tokens = vt["total_tokens"] == trl["total_tokens"]
    speed = vt["tokens_per_s"] / trl["tokens_per_s"]
    figures: dict[str, Any] = {"arms": arms, "speedup": speed, "warmup_steps": warmup}
    detail = f"{speed:.2f}x plain TRL's tokens/s ({vt['tokens_per_s']:.0f} vs {trl['tokens_per_s']:.0f})"
    if cuda:
        memory_ratio = vt["peak_bytes"] / trl["peak_bytes"]
        figures["memory_ratio"] = memory_ratio
        detail += (f", peak memory {vt['peak_bytes'] / 2**30:.1f} vs {trl['peak_bytes'] / 2**30:.1f} GiB "
                   f"(context and paged optimizer included)")
        for arm in ("voicetune", "trl"):
            value, text = mfu_line(arms[arm]["tokens_per_s"], non_embedding_params, device_name)
            figures[f"mfu_{arm}"] = value
            detail += f"; {arm} {text}"
    detail += f"; both arms {'saw the same' if same_tokens else 'did NOT see the same'} {vt['total_tokens']:.0f} tokens"
    return Check("training bench vs plain TRL QLoRA", same_tokens and speed > 0, detail, figures)


def release() -> None:
    from voicetune.train import release_device_memory

    release_device_memory()


def run_checks(work: Path, cpu_smoke: bool, steps: int, bench_steps: int, batch: int, warmup: int,
               report: Callable[[Check], None], out_root: Path, skip: frozenset[str] = frozenset(),
               ) -> tuple[Path, list[Check]]:
    """Every check in turn; the results file is written again after each one, so a run cut short by the
    device's time limit still leaves what it measured."""
    import torch

    from benchmarks.gpu import random_model
    from voicetune import memory, models

    cuda = torch.cuda.is_available() and not cpu_smoke
    device = "cuda" if cuda else "cpu"
    device_name = torch.cuda.get_device_name(0) if cuda else "cpu-smoke"
    info = {"torch": torch.__version__, "device": device_name}
    if cuda:
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    config = TINY_CONFIG if cpu_smoke else json.loads((ROOT / "benchmarks/configs/smollm2-1.7b.json").read_text())
    base, _ = random_model(config, models.resolve_base_model(None), work / "base", device=device)
    shape = memory.ModelShape.from_config(config)
    data = subset(16 if cpu_smoke else 64, work / "data.jsonl")
    checks: list[Check] = []

    path = results_path(time.strftime("%Y-%m-%d"), device_name, out_root)

    def run(make: Callable[[], Check], name: str) -> Check | None:
        started = time.perf_counter()
        try:
            check = make()
        except Exception as e:  # noqa: BLE001 - one failed check must not hide the others
            check = Check(name, False, f"{type(e).__name__}: {str(e)[:300]}")
        check.figures["check_seconds"] = round(time.perf_counter() - started, 1)
        checks.append(check)
        report(check)
        write_results(path, device_name, info, checks)
        return check if check.passed else None

    bf16 = run(lambda: check_training("QLoRA training, bf16" if cuda else "QLoRA training (CPU smoke, fp32)",
                                      base, data, work / "bf16", steps, fp16=False), "QLoRA training, bf16")
    fp16_name = "QLoRA training, fp16 forced (as on a T4)" if cuda else "QLoRA training, second adapter (CPU smoke)"
    # Another seed, so the two adapters differ even where both train in the same precision (the CPU smoke)
    fp16 = run(lambda: check_training(fp16_name, base, data, work / "fp16", steps, fp16=cuda, seed=7), fp16_name)
    adapters = [work / "bf16", work / "fp16"]
    if bf16 and fp16:
        for four_bit in (True, False):
            run(lambda: check_chat(base, adapters, four_bit), chat_check_name(four_bit))
            release()
    if bf16:
        run(lambda: check_merge(adapters[0], work / "merged"), "merge")
    release()  # the CLI and the bench arms run in their own processes; this one keeps nothing on the GPU meanwhile
    if "user-run" not in skip:
        run(lambda: check_user_run(base, work, cpu_smoke), USER_RUN)
    if "bench" not in skip:
        # One epoch of exactly bench_steps x batch conversations, so both arms train on the same tokens
        bench_data = subset(bench_steps * batch, work / "bench.jsonl")
        run(lambda: check_bench(base, bench_data, work, bench_steps, batch, warmup, device_name,
                                shape.non_embedding_params, cuda), "training bench vs plain TRL QLoRA")
    return path, checks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny config on a CPU: the same code path in a minute")
    p.add_argument("--steps", type=int, default=0, help="training steps of checks 1-2 (default 30; smoke 3)")
    p.add_argument("--bench-steps", type=int, default=0, help="steps per bench arm (default 40; smoke 4)")
    p.add_argument("--warmup", type=int, default=-1, help="bench steps left out of the timing (default 5; smoke 1)")
    p.add_argument("--out", default="", help="results folder (default benchmarks/results)")
    p.add_argument("--skip", action="append", default=[], choices=("user-run", "bench"),
                   help="leave out the two longest checks (a rerun of the others inside a short device lease)")
    # One bench arm in a child process (used by check 5 itself)
    p.add_argument("--arm", choices=("voicetune", "trl"))
    p.add_argument("--base"), p.add_argument("--data"), p.add_argument("--result")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--baseline", type=int, default=0)
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    steps = a.steps or (3 if a.cpu_smoke else 30)
    bench_steps = a.bench_steps or (4 if a.cpu_smoke else 40)
    warmup = a.warmup if a.warmup >= 0 else (1 if a.cpu_smoke else 5)
    if a.arm:
        arm_main(a.arm, Path(a.base), Path(a.data), Path(a.out), bench_steps, a.batch, warmup, a.baseline,
                 Path(a.result))
        return 0
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        path, checks = run_checks(Path(tmp), a.cpu_smoke, steps, bench_steps, a.batch, warmup,
                                  lambda c: print(c.line(), flush=True), Path(a.out) if a.out else RESULTS,
                                  frozenset(a.skip))
    print(f"results: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0 if checks and all(c.passed for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
