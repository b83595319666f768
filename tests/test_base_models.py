"""Projects on two different base models: chosen per project, trained, and compared in one round where each
run is answered by its own base. The second base is the tiny Qwen2 fixture (its own tokenizer and template)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import QUESTIONS, run_cli, write_jsonl

BASE = "Base model"


def conversations(reply: str) -> list[list[dict]]:
    return [[{"role": "user", "content": q}, {"role": "assistant", "content": reply}] for q in QUESTIONS]


def train_run(workspace: Path, tmp_path: Path, base: Path, run_id: str, reply: str,
              env: dict[str, str] | None = None) -> str:
    """A two-step run of the CLI on `base`, into the workspace's runs folder, as the app's jobs write it."""
    from voicetune import store

    data = write_jsonl(tmp_path / f"{run_id}.jsonl", [json.dumps({"messages": m}) for m in conversations(reply)])
    out = store.run_dir(run_id)
    done = run_cli("train", "--data", str(data), "--out", str(out), "--base-model", str(base), "--max-steps", "2",
                   "--learning-rate", "1e-2", "--val-fraction", "0", "--seed", "1", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_id


def train_in_process(tmp_path: Path, base: Path, run_id: str, reply: str) -> str:
    """The same two-step run as train_run, through run_sft in this process: for a run that is only answered
    with, where the CLI's start-up (~8 s) would add nothing (the Qwen run keeps the CLI's contract)."""
    from voicetune import store
    from voicetune.config import TrainConfig
    from voicetune.train import run_sft

    data = write_jsonl(tmp_path / f"{run_id}.jsonl", [json.dumps({"messages": m}) for m in conversations(reply)])
    run_sft(TrainConfig(data=str(data), out=str(store.run_dir(run_id)), base_model=str(base), max_steps=2,
                        learning_rate=1e-2, val_fraction=0.0, seed=1))
    return run_id


@pytest.fixture(scope="module")
def trained_qwen_run(tiny_qwen: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two-step Qwen run, trained once through the CLI for the tests that only read it (each gets a copy
    in its own workspace): the same run every time, without a training process per test."""
    home = tmp_path_factory.mktemp("qwen-run") / "home"
    with pytest.MonkeyPatch.context() as mp:  # store.run_dir reads the workspace this run is written into
        mp.setenv("VOICETUNE_HOME", str(home))
        train_run(home, home.parent, tiny_qwen, "qwen-run", "Qwen says hi!", env={"VOICETUNE_HOME": str(home)})
        from voicetune import store

        return store.run_dir("qwen-run")


def qwen_run_in(workspace: Path, trained_qwen_run: Path) -> str:
    """The shared Qwen run, copied into this test's workspace as if it had been trained there."""
    from voicetune import store

    shutil.copytree(trained_qwen_run, store.run_dir("qwen-run"))
    return "qwen-run"


def test_an_old_workspace_keeps_its_projects_on_the_base_they_had(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from voicetune import projects, store

    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    for step in store.MIGRATIONS[:5]:
        step(old)
    old.execute("PRAGMA user_version = 5")
    old.execute("INSERT INTO projects (name, created) VALUES ('before', 1)")  # base_model '' (the app's)
    old.commit()
    old.close()
    monkeypatch.setenv("VOICETUNE_BASE_MODEL", "acme/house-model")
    conn = store.connect(path)
    assert store.get_project(conn, 1)["base_model"] == "acme/house-model"
    monkeypatch.delenv("VOICETUNE_BASE_MODEL")
    assert projects.base_of(store.get_project(conn, 1)) == "acme/house-model"  # pinned, not the new default
    assert store.get_project(conn, projects.create_project(conn, "after"))["base_model"] == \
        "embedded:smollm2-135m-instruct"


def test_a_project_base_is_checked_before_it_is_saved(tiny_qwen: Path, tmp_path: Path):
    from voicetune import projects, store
    from voicetune.models import ModelError

    conn = store.connect()
    pid = projects.create_project(conn, "Qwen voice")
    assert projects.set_base_model(conn, pid, str(tiny_qwen)) == str(tiny_qwen)
    broken = tmp_path / "no-tokenizer-json"
    shutil.copytree(tiny_qwen, broken)
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match="no-tokenizer-json has no fast tokenizer"):
        projects.set_base_model(conn, pid, str(broken))
    assert store.get_project(conn, pid)["base_model"] == str(tiny_qwen)  # unchanged


def test_a_compare_round_mixing_two_bases_answers_each_run_with_its_own_base(
        tiny_model: Path, tiny_qwen: Path, tmp_path: Path, workspace: Path, trained_qwen_run: Path):
    from voicetune import generate, projects, store
    from voicetune.config import GenConfig
    from voicetune.runs import read as read_run
    from voicetune.ui import compare_tab

    conn = store.connect()
    pid = projects.create_project(conn, "Two bases")
    projects.set_base_model(conn, pid, str(tiny_qwen))
    qwen_run = qwen_run_in(workspace, trained_qwen_run)
    llama_run = train_in_process(tmp_path, tiny_model, "llama-run", "Llama says hi!")
    assert read_run(store.run_dir(qwen_run))["base_model"] == str(tiny_qwen)

    out = list(compare_tab.send([BASE, qwen_run, llama_run], False, "Do you ship abroad?", "", "", pid, True, 0.7,
                                0.9, 8, 1.0, 0, {}))
    final = out[-1]
    panes, stats = final[1:4], final[5:8]
    assert [p["label"] for p in panes] == ["Base model", f"Tuned: {qwen_run}", f"Tuned: {llama_run}"]
    assert [next(x for x in s["value"].split(" · ") if x.startswith("answered by")) for s in stats] == [
        f"answered by {tiny_qwen.name}", f"answered by {tiny_qwen.name}", f"answered by {tiny_model.name}"]
    # Each reply is exactly what its own base (with its adapter) says alone, greedy.
    msgs = [{"role": "user", "content": "Do you ship abroad?"}]
    gen = GenConfig(max_new_tokens=8, greedy=True, repetition_penalty=1.0, seed=0)
    qwen, llama = generate.shared_model(str(tiny_qwen)), generate.shared_model(str(tiny_model))
    alone = [qwen.generate([generate.Request(msgs, None)], gen)[0].text,
             qwen.generate([generate.Request(msgs, qwen_run)], gen)[0].text,
             llama.generate([generate.Request(msgs, llama_run)], gen)[0].text]
    assert [p["value"][-1]["content"] for p in panes] == alone
    note = compare_tab.mixed_bases_note(compare_tab.resolve_arms([BASE, qwen_run, llama_run], "", pid))
    assert note == (f"These arms are on different base models, so each is answered by its own: {tiny_qwen.name} "
                    f"answers Base model, Tuned: {qwen_run}; {tiny_model.name} answers Tuned: {llama_run}.")
    # Export uses the run's own base: the merged model carries the Qwen tokenizer and template, the zip names it.
    from voicetune import export, models

    merged = export.merge(store.run_dir(qwen_run), tmp_path / "merged", dtype="fp32")
    tok = models.load_tokenizer(str(merged))
    assert (len(tok), tok.chat_template) == (600, models.load_tokenizer(str(tiny_qwen)).chat_template)
    files = export.adapter_files(store.run_dir(qwen_run))
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == tiny_qwen.name


def test_a_run_claiming_another_base_is_still_refused(tiny_model: Path, tiny_qwen: Path, tmp_path: Path,
                                                       workspace: Path, trained_qwen_run: Path):
    import gradio as gr

    from voicetune import projects, store
    from voicetune.ui import compare_tab

    conn = store.connect()
    pid = projects.create_project(conn, "Claims")
    qwen_run = qwen_run_in(workspace, trained_qwen_run)
    edited = store.run_dir("edited-run")
    shutil.copytree(store.run_dir(qwen_run), edited)
    record = json.loads((edited / "run.json").read_text())
    (edited / "run.json").write_text(json.dumps({**record, "base_model": str(tiny_model)}))
    with pytest.raises(gr.Error) as e:
        compare_tab.resolve_arms([BASE, "edited-run"], "", pid)
    assert e.value.message == (f"Cannot use run edited-run: adapter edited-run was trained on '{tiny_model.name}', "
                               f"not on the loaded base model '{tiny_model.name}'")


def test_loaded_bases_are_kept_in_a_small_lru(tiny_model: Path, tiny_qwen: Path, monkeypatch: pytest.MonkeyPatch):
    from voicetune import generate

    monkeypatch.setattr(generate, "_shared", generate.OrderedDict())
    monkeypatch.setattr(generate, "MAX_BASES", 1)
    first = generate.shared_model(str(tiny_model))
    assert generate.shared_model(str(tiny_model)) is first
    generate.shared_model(str(tiny_qwen))
    assert list(generate._shared) == [str(tiny_qwen)]  # the base used longest ago went
    monkeypatch.setattr(generate, "MAX_BASES", 3)
    generate.shared_model(str(tiny_model))
    sizes = {k: generate.loaded_bytes(c) for k, c in generate._shared.items()}
    budget_mb = (sizes[str(tiny_model)] + sizes[str(tiny_qwen)] - 1) / (1 << 20)  # one byte short of both
    monkeypatch.setenv("VOICETUNE_CHAT_MEMORY_MB", str(budget_mb))
    generate.shared_model(str(tiny_qwen))
    assert list(generate._shared) == [str(tiny_qwen)]  # over the memory budget: the other went


def test_train_with_a_base_that_has_no_chat_template_is_refused_before_anything_is_written(
        tiny_qwen: Path, tmp_path: Path, workspace: Path):
    broken = tmp_path / "pretrained-only"
    shutil.copytree(tiny_qwen, broken)
    (broken / "chat_template.jinja").unlink()
    data = write_jsonl(tmp_path / "d.jsonl", [json.dumps({"messages": m}) for m in conversations("Hi!")])
    out = tmp_path / "out"
    done = run_cli("train", "--data", str(data), "--out", str(out), "--base-model", str(broken))
    assert done.returncode == 3  # EXIT_MODEL
    assert done.stderr.strip().splitlines()[1:] == [
        "error: pretrained-only has no chat template: pick an instruct or chat model, not a base (pretrained-only) one",
        "The base model could not be loaded. Check the model id or folder, and that it is a causal language model "
        "with a chat template."]
    assert not out.exists() and not (workspace / "runs").exists()
    done = run_cli("train", "--data", str(data), "--out", str(out), "--base-model", "acme/not-downloaded")
    assert done.returncode == 3
    assert done.stderr.splitlines()[1].startswith("error: acme/not-downloaded is not on this machine and voicetune is offline (no "
                                  "network). Available here: SmolLM2-135M-Instruct (embedded)")


def test_project_settings_pick_check_and_use_a_base(tiny_qwen: Path, tmp_path: Path, workspace: Path):
    import gradio as gr

    from voicetune import projects, store
    from voicetune.ui import base_model

    conn = store.connect()
    pid = projects.create_project(conn, "Settings")
    picker, about = base_model.load(pid)
    assert picker["value"] == "embedded:smollm2-135m-instruct"
    assert picker["choices"][2] == ("Qwen2.5-0.5B-Instruct · 0.49B · Apache-2.0", "Qwen/Qwen2.5-0.5B-Instruct")
    assert about.startswith("**SmolLM2-135M-Instruct (embedded)**\n0.13B parameters · licence [Apache-2.0]"
                            "(https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct) · context 8,192 tokens · "
                            "chatml chat template\n\nEmbedded: always available here, offline too.\n\n"
                            "**Will it fit this machine?**")
    gated = base_model.describe("meta-llama/Llama-3.1-8B-Instruct", pid)
    assert "licence [Llama 3.1 Community License](https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct) (gated: " \
           "accept it on the Hub first)" in gated
    assert "meta-llama/Llama-3.1-8B-Instruct is not on this machine and voicetune is offline (no network)." in gated
    about = base_model.use(str(tiny_qwen), pid)
    assert about.startswith(f"**{tiny_qwen.name}**\n\nDownloaded: available here.")
    assert about.endswith(f"This project's base now: **{tiny_qwen.name}**. Runs keep the base they were trained on.")
    broken = tmp_path / "custom-code"
    shutil.copytree(tiny_qwen, broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(gr.Error) as e:
        base_model.use(str(broken), pid)
    assert e.value.message == ("custom-code needs custom code from its authors (auto_map in its config), which "
                               "voicetune never runs: pick a model that transformers supports as it is")
    assert store.get_project(conn, pid)["base_model"] == str(tiny_qwen)


def test_a_new_project_on_a_cpu_starts_on_the_embedded_model(workspace: Path):
    from voicetune import fit
    from voicetune.ui import base_model

    if fit.this_machine().device == "cuda":
        pytest.skip("the rule for a GPU is fit.suggest_base's, tested in test_catalog.py")
    assert base_model.suggested_base() == "embedded:smollm2-135m-instruct"


def test_a_run_on_the_second_base_is_scored_on_its_own_base(tiny_qwen: Path, tmp_path: Path, workspace: Path):
    """The scorecard of a run loads the base the run names (here the Qwen-shaped model with its own tokenizer and
    template), not the app's default: base's reference loss in the card is the Qwen base's own."""
    from voicetune import evaluate, store
    from voicetune.arena import base_arm
    from voicetune.generate import ChatModel

    data = write_jsonl(tmp_path / "q.jsonl", [json.dumps({"messages": m}) for m in conversations("Qwen says hi!")])
    out = store.run_dir("qwen-scored")
    done = run_cli("train", "--data", str(data), "--out", str(out), "--base-model", str(tiny_qwen), "--max-steps",
                   "2", "--learning-rate", "1e-2", "--val-fraction", "0.25", "--seed", "1", "--no-scorecard")
    assert done.returncode == 0, done.stderr[-3000:]
    card = evaluate.scorecard(out)
    heldout = evaluate.read_jsonl(out / evaluate.HELDOUT_FILE)
    assert card["heldout"] == len(heldout) > 0
    own = evaluate.reference_likelihood(ChatModel(str(tiny_qwen)), base_arm(), heldout)
    assert card["likelihood"]["base"]["loss"] == pytest.approx(own["loss"], rel=1e-6)
    assert card["likelihood"]["base"]["tokens"] == own["tokens"]  # counted with the Qwen tokenizer
    assert (out / evaluate.SCORECARD_FILE).is_file()
