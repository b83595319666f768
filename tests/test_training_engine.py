"""The training recipe: Auto and presets, failure codes, run diffs, determinism, early stopping, atomic saves
under a full disk or a SIGKILL, and the same command under `accelerate launch` with two processes."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tests.conftest import QUESTIONS, ROOT, run_cli, write_jsonl
from voicetune import recipes, runs
from voicetune.config import DEFAULT_REPLAY, TrainConfig
from voicetune.failures import classify

COSMO = ROOT / "examples" / "cosmo-coffee.jsonl"


# --- Auto and presets -----------------------------------------------------------------------------------

def test_auto_follows_the_written_rule() -> None:
    tiny = recipes.auto_settings([100] * 20)
    # No size given: the embedded 135M model, which takes the small-model rate (docs/recipes.md).
    assert (tiny.epochs, tiny.learning_rate, tiny.rank, tiny.alpha, tiny.max_length) == (5.0, 1e-3, 16, 32, 256)
    assert recipes.auto_settings([100] * 20, params=135_000_000).learning_rate == 1e-3
    assert recipes.auto_settings([100] * 20, params=8_000_000_000).learning_rate == 2e-4
    assert "20 examples is little data" in tiny.why[0]
    usual = recipes.auto_settings([300] * 200 + [700])
    assert (usual.epochs, usual.rank, usual.max_length) == (3.0, 16, 768)
    large = recipes.auto_settings([50] * 12_000)
    assert (large.epochs, large.learning_rate, large.rank) == (2.0, 5e-4, 32)
    assert recipes.auto_settings([50] * 12_000, params=8_000_000_000).learning_rate == 1e-4
    assert recipes.auto_settings([9000]).max_length == 4096


def test_presets_differ_in_the_expected_direction() -> None:
    lengths = [120] * 48
    quick, balanced, thorough = (recipes.preset_settings(p, lengths) for p in recipes.PRESETS)
    assert balanced == recipes.preset_settings(recipes.AUTO, lengths)
    assert quick.max_steps > 0 and quick.rank < balanced.rank < thorough.rank
    assert quick.learning_rate == 2e-3  # a small model: few steps, a rate high enough to be heard
    # General replay in Balanced and Thorough (docs/recipes.md); none in Quick look, whose steps are the voice's
    assert balanced.replay == thorough.replay == DEFAULT_REPLAY > 0 and quick.replay == 0
    assert balanced.as_config()["replay"] == DEFAULT_REPLAY and "general replay" in balanced.why[-1]
    assert recipes.preset_settings(recipes.QUICK, lengths, params=8_000_000_000).learning_rate == 3e-4
    times = [recipes.estimate_seconds(s, lengths, "cpu") for s in (quick, balanced, thorough)]
    assert times == sorted(times) and times[0] > 0
    assert recipes.estimate_seconds(replace(balanced, replay=0.0), lengths, "cpu") < times[1]  # replay costs time
    with pytest.raises(ValueError, match="unknown preset"):
        recipes.preset_settings("Fastest", lengths)


def test_expected_time_learns_from_runs_on_this_machine() -> None:
    records = [{"device": "cpu", "metrics": {"tokens_per_s": rate}} for rate in (100.0, 300.0, 200.0)]
    assert recipes.measured_tokens_per_s(records, "cpu") == 200.0
    assert recipes.measured_tokens_per_s(records, "cuda") is None
    s = recipes.auto_settings([100] * 40)
    assert recipes.estimate_seconds(s, [100] * 40, "cpu", 200.0) < recipes.estimate_seconds(s, [100] * 40, "cpu")


# --- Failure codes and run diffs ------------------------------------------------------------------------

def test_failures_get_a_code_and_a_plain_fix() -> None:
    import torch

    from voicetune.data import DataError, Problem
    from voicetune.models import ModelError

    assert classify(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")).code == "oom"
    assert "reduce the max length or the batch size" in classify(MemoryError()).fix.lower()
    assert classify(OSError(errno.ENOSPC, "No space left on device")).code == "disk_full"
    assert classify(ModelError("could not load")).code == "model"
    assert classify(DataError([Problem(3, "messages", "bad")])).code == "data"
    assert classify(OSError("libcudart.so.12: cannot open shared object file")).code == "cuda_missing"
    assert classify(RuntimeError("something else")).code == "crash"


def test_two_runs_diff_on_what_changed_only() -> None:
    a = {"run_id": "a", "finished": "x", "config": {"learning_rate": 2e-4, "lora": {"r": 16}, "out": "/a"},
         "metrics": {"train_loss": 1.0}, "versions": {"trl": "1.16.0"}}
    b = {"run_id": "b", "finished": "y", "config": {"learning_rate": 3e-4, "lora": {"r": 16}, "out": "/b"},
         "metrics": {"train_loss": 0.9}, "versions": {"trl": "1.16.0"}}
    assert runs.diff_runs(a, b) == [("config.learning_rate", 2e-4, 3e-4), ("metrics.train_loss", 1.0, 0.9)]
    assert runs.run_row(a)[0] == "a" and len(runs.run_row(a)) == len(runs.COLUMNS)


# --- Real training --------------------------------------------------------------------------------------

def _losses(record: dict) -> list[float]:
    return [h["loss"] for h in record["history"] if "loss" in h]


def test_the_final_evaluation_is_read_from_the_log_when_these_weights_were_already_evaluated() -> None:
    """A run ends with one evaluation of the weights it keeps; when the last step, or the best checkpoint early
    stopping reloaded, was an evaluation step, that logged evaluation is those weights' and is not run again."""
    from types import SimpleNamespace

    from voicetune.train import logged_evaluation

    log = [{"loss": 2.0, "step": 4}, {"eval_loss": 1.5, "eval_rewards/margins": 0.3, "epoch": 1.0, "step": 4},
           {"loss": 1.0, "step": 8}, {"eval_loss": 1.7, "step": 8}, {"loss": 0.9, "step": 9}]

    def trainer(step: int, best: str | None = None, reload: bool = False) -> SimpleNamespace:
        state = SimpleNamespace(global_step=step, log_history=log, best_model_checkpoint=best)
        return SimpleNamespace(state=state, args=SimpleNamespace(load_best_model_at_end=reload))

    assert logged_evaluation(trainer(8)) == {"eval_loss": 1.7}
    assert logged_evaluation(trainer(9)) == {}  # the last step was not evaluated: evaluate
    assert logged_evaluation(trainer(9, "/w/checkpoint-4", reload=True)) == {"eval_loss": 1.5,
                                                                           "eval_rewards/margins": 0.3}
    assert logged_evaluation(trainer(8, "/w/checkpoint-4", reload=False)) == {"eval_loss": 1.7}  # not reloaded


@pytest.mark.slow
def test_same_data_seed_and_settings_give_the_same_loss_curve(tiny_model: Path, tmp_path: Path) -> None:
    from voicetune.train import run_sft

    curves = []
    for i in range(2):
        cfg = TrainConfig(data=str(COSMO), out=str(tmp_path / f"run{i}"), base_model=str(tiny_model), max_steps=5,
                          seed=7, scorecard=False, learning_rate=1e-3)
        curves.append(_losses(run_sft(cfg)))
    assert len(curves[0]) == 5
    assert curves[0] == pytest.approx(curves[1], abs=1e-4)
    other = run_sft(TrainConfig(data=str(COSMO), out=str(tmp_path / "other"), base_model=str(tiny_model),
                                max_steps=5, seed=8, scorecard=False, learning_rate=1e-3))
    assert _losses(other) != pytest.approx(curves[0], abs=1e-4)  # the seed matters, so the check above can fail


@pytest.mark.slow
def test_early_stopping_stops_on_rising_validation_loss_and_keeps_the_best(tmp_path: Path, base_path: str) -> None:
    """Trained on one voice and validated on a contradicting one, validation loss rises after the first steps."""
    import torch
    from safetensors.torch import load_file

    from voicetune.train import run_sft

    def convs(reply: str, questions: list[str]) -> list[str]:
        return [json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": reply}]})
                for q in questions]

    train = write_jsonl(tmp_path / "train.jsonl", convs("Arr matey, the crew be on it! Yo ho ho!", QUESTIONS))
    held = write_jsonl(tmp_path / "held.jsonl",
                       convs("Good day. Kindly allow us a moment to look into this.", QUESTIONS[:4]))
    record = run_sft(TrainConfig(data=str(train), heldout_data=str(held), out=str(tmp_path / "out"), epochs=10,
                                 learning_rate=2e-3, scorecard=False, early_stopping_patience=1,
                                 checkpoint_dir=str(tmp_path / "checkpoints")))  # kept, to compare with below
    m = record["metrics"]
    evals = {h["step"]: h["eval_loss"] for h in record["history"] if "eval_loss" in h}
    assert record["config"]["early_stopping"] is None  # on by default for a small dataset
    assert m["early_stopped"] and m["steps"] < m["planned_steps"]
    best = min(evals, key=evals.get)
    assert max(evals) != best and evals[max(evals)] > evals[best]  # it stopped because validation loss rose
    assert m["eval_loss"] == pytest.approx(m["best_eval_loss"], rel=1e-4)
    # The adapter kept is the best checkpoint's, not the last one's
    saved = load_file(tmp_path / "out" / runs.ADAPTER_WEIGHTS)
    for step, same in ((best, True), (max(evals), False)):
        kept = load_file(tmp_path / "checkpoints" / f"checkpoint-{step}" / runs.ADAPTER_WEIGHTS)
        assert all(torch.equal(saved[k], kept[k]) for k in saved) is same, step
    assert record["data"]["val"] == 4 and record["data"]["val_source"] == "held-out conversations"


def test_training_moves_the_lora_weights_and_never_the_base_weights(tiny_model: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """TRL's test_train_nll_loss_peft, for run_sft: the model as training leaves it, just before the save, has
    every LoRA B matrix moved from zero and every base weight exactly as the base model's file holds it."""
    import torch
    from safetensors.torch import load_file

    from voicetune import train

    trained: dict = {}
    real_save = runs.write

    def keep_model(model, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        trained.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_save(model, *args, **kwargs)

    monkeypatch.setattr(runs, "write", keep_model)
    train.run_sft(TrainConfig(data=str(COSMO), out=str(tmp_path / "out"), base_model=str(tiny_model), max_steps=3,
                              batch_size=4, val_fraction=0.0, scorecard=False, learning_rate=1e-2))
    lora_b = [v for k, v in trained.items() if "lora_B" in k]
    assert lora_b and all(float(b.abs().max()) > 0 for b in lora_b)  # LoRA B starts at zero: every one moved
    base = load_file(str(tiny_model / "model.safetensors"))
    frozen = {k.replace("base_model.model.", "", 1).replace(".base_layer", ""): v
              for k, v in trained.items() if "lora_" not in k}
    assert set(frozen) == set(base) | ({"lm_head.weight"} & set(frozen))  # tied head: saved once in the file
    for name, weight in base.items():
        # as training holds it: the file's values in the dtype the engine loaded them in (bf16 on a bf16 CPU)
        assert torch.equal(frozen[name], weight.to(frozen[name].dtype)), name


def _peft_tiny(tiny_model: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    return get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                          LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))


def _save(model, out: Path) -> None:
    from voicetune.train import Prepared

    record = {"run_id": out.name, "base_model": "tiny", "config": {}, "metrics": {}, "data": {}}
    runs.write(model, record, TrainConfig(data="x", out=str(out)), Prepared([], [], [], [], "0"), out)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_full_disk_during_save_leaves_the_previous_adapter_intact(tiny_model: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import peft.peft_model

    out = tmp_path / "runs" / "voice"
    model = _peft_tiny(tiny_model)
    _save(model, out)
    before = _snapshot(out)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(peft.peft_model, "safe_save_file", full_disk)  # the adapter weights' write
    with pytest.raises(OSError) as caught:
        _save(model, out)
    assert classify(caught.value).code == "disk_full"
    assert _snapshot(out) == before
    assert [p.name for p in out.parent.iterdir()] == ["voice"]  # no temporary folder left behind


KILL_MID_SAVE = """
import signal, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from tests.test_training_engine import _peft_tiny, _save
from voicetune.cli import _raise_cancelled
signal.signal(signal.SIGTERM, _raise_cancelled)  # as in the training child: a cancel raises Cancelled
model = _peft_tiny(Path({tiny!r}))
real = model.save_pretrained
def slow_save(folder, **kw):
    real(folder, **kw)
    print("weights written", flush=True)
    time.sleep(60)  # a slow disk: the kill lands here, after the weights, before the rename
model.save_pretrained = slow_save
_save(model, Path({out!r}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "cancelled"])
def test_a_kill_or_cancel_mid_save_leaves_no_half_adapter(tiny_model: Path, tmp_path: Path, sig: int) -> None:

    out = tmp_path / "workspace" / "runs" / "voice"
    _save(_peft_tiny(tiny_model), out)
    before = _snapshot(out)
    script = KILL_MID_SAVE.format(root=str(ROOT), tiny=str(tiny_model), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "weights written"
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert _snapshot(out) == before  # the old adapter is whole and unchanged
    leftovers = [p.name for p in out.parent.iterdir() if p.name != "voice"]
    if sig == signal.SIGKILL:
        assert leftovers and all(name.startswith(".") for name in leftovers)  # the half-written one is hidden
    else:
        assert "Cancelled" in err and leftovers == []  # a cancel cleans up after itself
    assert [r["run_id"] for r in runs.finished()] == ["voice"]


@pytest.mark.slow
def test_the_train_command_runs_unchanged_under_accelerate_launch_with_two_processes(tiny_model: Path,
                                                                                      tmp_path: Path) -> None:
    """`accelerate launch --cpu` uses a single process in accelerate 1.15 (several CPU processes need mpirun);
    `--multi_gpu` on a machine without CUDA starts two processes through torchrun with the gloo backend."""
    out = tmp_path / "out"
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(29500 + os.getpid() % 1000), "-m", "voicetune", "train", "--data", str(COSMO), "--out", str(out),
              "--base-model", str(tiny_model), "--max-steps", "3", "--no-scorecard"]
    result = subprocess.run(launch, capture_output=True, text=True, cwd=ROOT, timeout=600,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 0/2: trained 3 steps" in result.stderr and "rank 1/2: trained 3 steps" in result.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["world_size"] == 2 and record["metrics"]["steps"] == 3
    beside = sorted(p.name for p in tmp_path.iterdir() if p.name != "workspace")  # the test's own workspace
    assert beside == ["out"]  # one adapter, nothing half-written beside it


def test_cli_reports_a_model_that_cannot_load_with_its_fix(tmp_path: Path) -> None:
    result = run_cli("train", "--data", str(COSMO), "--out", str(tmp_path / "out"), "--base-model",
                     str(tmp_path / "missing"), "--no-scorecard")
    assert result.returncode == 3
    assert "The base model could not be loaded" in result.stderr and "Traceback" not in result.stderr
