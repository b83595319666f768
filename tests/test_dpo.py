"""Preference pairs and DPO on top of an SFT run: where pairs come from, their checks, and the training method.

The pair tests need no model. The DPO tests train on the tiny random Llama (the job machinery and the reference
setup are the point), and one slow test trains the embedded model, where the voice is the point.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.conftest import QUESTIONS, SIGN_OFF, run_cli, until, voice_data, write_jsonl
from voicetune import cli, dpo, jobs, preferences, projects, runs, store
from voicetune.data import DataError
from voicetune.preferences import Pair

REPLY = "We are on it and will write back today."


def synthetic_pairs(n: int = 24) -> list[dict]:
    """Chosen replies carry the voice's sign-off, rejected ones do not."""
    questions = [*QUESTIONS, *[f"{q} Thanks!" for q in QUESTIONS]][:n]
    return [{"prompt": [{"role": "user", "content": q}],
             "chosen": [{"role": "assistant", "content": f"{REPLY} {SIGN_OFF}"}],
             "rejected": [{"role": "assistant", "content": REPLY}]} for q in questions]


def pairs_file(path: Path, n: int = 24) -> Path:
    return write_jsonl(path, [json.dumps(p) for p in synthetic_pairs(n)])


def project_id() -> int:
    return projects.current_project(store.connect())


# --- Pairs: sources, isolation, import messages, health ---------------------------------------------------------

def test_votes_and_edits_become_pairs_with_the_system_prompt_and_another_users_never_enter() -> None:
    with store.user_scope("alice"):
        conn = store.connect()
        pid = project_id()
        prompt = [{"role": "user", "content": "Are you open?"}]
        vote = store.add_vote(conn, pid, round_id="r1", prompt=prompt, left_arm="base", right_arm="run:r-1",
                              left_reply="Yes.", right_reply="Aye, open!", choice="right", blind=True)
        made = preferences.record_vote(conn, pid, vote_id=vote, prompt=prompt, system="Be a pirate.", left_arm="base",
                                       right_arm="run:r-1", left_reply="Yes.", right_reply="Aye, open!", choice="right")
        again = preferences.record_vote(conn, pid, vote_id=vote, prompt=prompt, system="Be a pirate.",
                                        left_arm="base", right_arm="run:r-1", left_reply="Yes.",
                                        right_reply="Aye, open!", choice="right")
        tie = preferences.record_vote(conn, pid, vote_id=vote + 1, prompt=prompt, system=None, left_arm="base",
                                      right_arm="run:r-1", left_reply="a", right_reply="b", choice="tie")
        edit = preferences.record_edit(conn, pid, prompt=prompt, system="Be a pirate.", original="Yes.",
                                       edited="Aye, we be open!", arm="base")
        unchanged = preferences.record_edit(conn, pid, prompt=prompt, system=None, original="Yes.", edited=" Yes. ")
        assert made > 0 and again == 0 and tie == 0 and edit > 0 and unchanged == 0
        rows = store.list_preference_pairs(conn, pid)
        assert [(r["source"], r["chosen"], r["rejected"], r["chosen_arm"], r["rejected_arm"], r["run_id"])
                for r in rows] == [("vote", "Aye, open!", "Yes.", "run:r-1", "base", "r-1"),
                                   ("edit", "Aye, we be open!", "Yes.", "", "base", "")]
        assert rows[0]["prompt"] == [{"role": "system", "content": "Be a pirate."}, *prompt]
        assert json.loads(preferences.training_jsonl(rows).splitlines()[0]) == {
            "prompt": rows[0]["prompt"], "chosen": [{"role": "assistant", "content": "Aye, open!"}],
            "rejected": [{"role": "assistant", "content": "Yes."}]}

    # Bob's workspace is his own database: none of Alice's votes or pairs can reach his project.
    with store.user_scope("bob"):
        conn = store.connect()
        assert store.list_votes(conn, None) == []
        assert store.list_preference_pairs(conn, project_id()) == []


def test_edit_exclude_and_delete_a_pair(tmp_path: Path) -> None:
    conn = store.connect()
    pid = project_id()
    ids = preferences.import_pairs(conn, pid, pairs_file(tmp_path / "p.jsonl", 3).read_bytes())
    store.update_preference_pair(conn, ids[0], chosen="Better.", excluded=True)
    store.delete_preference_pair(conn, ids[1])
    rows = store.list_preference_pairs(conn, pid)
    assert [(r["id"], r["chosen"], r["excluded"]) for r in rows] == [
        (ids[0], "Better.", True), (ids[2], f"{REPLY} {SIGN_OFF}", False)]
    assert [r["id"] for r in store.list_preference_pairs(conn, pid, include_excluded=False)] == [ids[2]]
    assert len(preferences.training_jsonl(rows).splitlines()) == 1
    with pytest.raises(KeyError):
        store.delete_preference_pair(conn, ids[1])


BAD_LINES = [
    ('{"prompt": "Hi", "chosen": "Hello!"}', "line 1, rejected: is missing: each line needs \"prompt\", \"chosen\" "
                                             "and \"rejected\""),
    ('{"prompt": "Hi", "chosen": "", "rejected": "Yo"}', "line 1, chosen: is empty"),
    ('{"prompt": 3, "chosen": "a", "rejected": "b"}', "line 1, prompt: must be text or a list of messages, got int"),
    ('{"prompt": [{"role": "narrator", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "a"}], '
     '"rejected": [{"role": "assistant", "content": "b"}]}',
     "line 1, prompt[0].role: unknown role 'narrator': use system, user or assistant"),
    ('{"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "user", "content": "a"}], '
     '"rejected": [{"role": "assistant", "content": "b"}]}',
     "line 1, chosen: must hold exactly one assistant message (the reply)"),
    ('{"prompt": [{"role": "user", "content": "Hi"}], "chosen": "a", "rejected": "b"}',
     "line 1, chosen: mixes forms: write prompt, chosen and rejected all as text or all as lists of messages"),
    ('{"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], "chosen": "a", '
     '"rejected": "b"}', "line 1, prompt[1]: the last prompt message must be a user turn"),
    ('{"prompt": "Hi", "chosen": "a", "rejected": "b"', "line 1: invalid JSON at column 48: Expecting ',' delimiter"),
    ('["Hi", "a", "b"]', "line 1: must be a JSON object, got list"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES)
def test_each_bad_preference_line_gives_its_exact_message(line: str, message: str) -> None:
    raw = (line + "\n").encode()
    pairs, problems = preferences.parse_jsonl_bytes(raw)
    assert pairs == [] and [str(p) for p in problems] == [message]
    with pytest.raises(DataError):  # and an import with a bad line adds nothing
        preferences.import_pairs(store.connect(), project_id(), raw)
    assert store.list_preference_pairs(store.connect(), project_id()) == []


def test_a_bad_line_among_good_ones_is_named_by_its_line_and_both_forms_import() -> None:
    good_text = json.dumps({"prompt": "Hi", "chosen": "Ahoy!", "rejected": "Hello."})
    good_conv = json.dumps(synthetic_pairs(1)[0])
    raw = "\n".join([good_text, "", good_conv, '{"prompt": "Hi", "chosen": "a", "rejected": 5}']).encode()
    pairs, problems = preferences.parse_jsonl_bytes(raw)
    assert [str(p) for p in problems] == ["line 4, rejected: must be text or a list of messages, got int"]
    assert [(p.line, p.prompt, p.chosen) for p in pairs] == [
        (1, [{"role": "user", "content": "Hi"}], "Ahoy!"), (3, synthetic_pairs(1)[0]["prompt"], f"{REPLY} {SIGN_OFF}")]
    assert [str(p) for p in preferences.parse_jsonl_bytes(b"\n")[1]] == ["file: contains no preference pairs"]


def test_health_flags_identical_contradicting_too_long_ties_and_too_few(tokenizer) -> None:
    conn = store.connect()
    pid = project_id()
    prompt = [{"role": "user", "content": "Hi"}]
    a = store.add_preference_pair(conn, pid, prompt=prompt, chosen="Same.", rejected="Same.", source="import")
    b = store.add_preference_pair(conn, pid, prompt=prompt, chosen="Ahoy!", rejected="Hello.", source="import")
    c = store.add_preference_pair(conn, pid, prompt=prompt, chosen="Hello.", rejected="Ahoy!", source="vote")
    d = store.add_preference_pair(conn, pid, prompt=[{"role": "user", "content": "word " * 200}], chosen="a",
                                  rejected="b", source="import")
    report = preferences.health(store.list_preference_pairs(conn, pid), tokenizer, max_length=64, ties=2)
    n = preferences.pair_tokens(tokenizer, Pair([{"role": "user", "content": "word " * 200}], "a", "b"))
    assert report.problems == [
        f"pair {a}: the chosen and rejected replies are identical: edit one or exclude the pair",
        f"pair {c}: contradicts pair {b} (same replies, opposite choice): exclude one of them",
        f"pair {d}: prompt and reply are {n} tokens, over the max length of 64: shorten it or exclude it"]
    assert report.blocked == "4 pairs; DPO needs at least 10: vote in blind Compare rounds or import pairs"
    assert report.warnings == ['2 tie or "both bad" votes made no pair: only a clear winner teaches a preference']
    preferences.import_pairs(conn, pid, "\n".join(json.dumps(p) for p in synthetic_pairs(12)).encode())
    report = preferences.health(store.list_preference_pairs(conn, pid), tokenizer, max_length=1024)
    assert report.blocked == "" and report.warnings == ["only 16 pairs; 30 or more give a steadier result"]


# --- DPO on the tiny model ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_parent(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """A finished SFT run on the tiny model whose adapter clearly differs from the base (high rate)."""
    from voicetune.config import TrainConfig
    from voicetune.train import run_sft

    tmp = tmp_path_factory.mktemp("tiny-parent")
    data = voice_data(tmp / "voice.jsonl", f"{REPLY} {SIGN_OFF}")
    out = tmp / "parent"
    run_sft(TrainConfig(data=str(data), out=str(out), base_model=str(tiny_model), max_steps=4, learning_rate=1e-2,
                        val_fraction=0.25, scorecard=False, seed=1))
    runs.keep_training_data(out, data)
    return out


def test_the_reference_is_the_parent_adapter_not_the_base(tiny_parent: Path, tiny_model: Path, tokenizer,
                                                         tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    from voicetune.train import plan_run
    from voicetune.config import TrainConfig

    pairs = preferences.load_pairs(pairs_file(tmp_path / "p.jsonl", 12))[:4]
    plan = plan_run(TrainConfig(base_model=str(tiny_model)), str(tiny_model), "cpu")
    model = dpo.load_policy(str(tiny_model), tiny_parent, plan.precision)
    parent = [(dpo.completion_logp(model, tokenizer, p, p.chosen), dpo.completion_logp(model, tokenizer, p, p.rejected))
              for p in pairs]
    base = [(dpo.completion_logp(model, tokenizer, p, p.chosen, None),
             dpo.completion_logp(model, tokenizer, p, p.rejected, None)) for p in pairs]
    cfg = dpo.DPOConfig(data="x", out=str(tmp_path / "out"), parent=str(tiny_parent), max_steps=1)
    trainer = dpo.build_trainer(cfg, plan, model, tokenizer, pairs, [], tmp_path / "work", 1, [])
    # Perturb the trainable adapter: the reference must not follow it
    for name, param in trainer.model.named_parameters():
        if ".default." in name and "lora_B" in name:
            param.data.add_(0.5)
    batch = next(iter(DataLoader(trainer._remove_unused_columns(trainer.train_dataset), batch_size=4,
                                 collate_fn=trainer.data_collator)))
    chosen, rejected = trainer.compute_ref_log_probs(trainer.model, trainer._prepare_inputs(batch))
    got = list(zip(chosen.tolist(), rejected.tolist()))
    tolerance = 0.05 if plan.precision.bf16 else 1e-3  # bf16 autocast rounds each log-prob a little
    for (gc, gr), (pc, pr), (bc, br) in zip(got, parent, base):
        assert abs(gc - pc) < tolerance and abs(gr - pr) < tolerance
        assert abs(gc - bc) > 20 * tolerance  # and the base's are clearly different


def _until(predicate, timeout_s: float = 240, what: str = "condition"):
    return until(predicate, timeout_s, what)


@pytest.mark.slow
def test_a_dpo_job_is_cancelled_killed_resumed_and_records_its_parent(tiny_parent: Path, tiny_model: Path) -> None:
    pairs = pairs_file(Path(store.root()) / "pairs.jsonl", 24).read_text()
    parent_id = runs.read(tiny_parent)["run_id"]

    # Cancel while running: no adapter is kept
    job = dpo.submit(pairs, str(tiny_parent), label="dpo-cancel", max_steps=40, scorecard=False)
    _until(lambda: jobs.get(job.id).progress().step >= 2, what="two DPO steps")
    assert jobs.cancel(job.id) == "cancelling"
    assert jobs.wait(job.id, timeout_s=120).state == "cancelled" and not job.adapter_dir.exists()

    # Killed after a whole checkpoint, then resumed from it to the end
    job = dpo.submit(pairs, str(tiny_parent), label="dpo-kill", max_steps=10, scorecard=False)
    from voicetune.train import latest_checkpoint

    kept = _until(lambda: latest_checkpoint(job.folder / "checkpoints"), what="a whole checkpoint")
    os.killpg(jobs.get(job.id).pid, signal.SIGKILL)
    _until(lambda: jobs.get(job.id).state == "interrupted", what="the job to be marked interrupted")
    jobs.resume(job.id)
    done = jobs.wait(job.id, timeout_s=300)
    assert done.state == "succeeded", done.log()[-2000:]
    assert [h["state"] for h in jobs.history(job.id)] == [
        "queued", "running", "interrupted", "queued", "running", "succeeded"]
    assert {e.get("phase") for e in done.events()} >= {"loading", "training", "saving"}

    record = runs.read(done.adapter_dir)
    assert record["method"] == "dpo" and record["parent_run"] == parent_id
    assert record["resumed_from"] is not None and int(record["resumed_from"].split("-")[1]) >= int(kept.name.split("-")[1])
    assert record["metrics"]["steps"] == 10
    assert record["preferences"] == {"file": "data.jsonl", "pairs": 24, "train": 19, "heldout": 5,
                                     "sha256_16": preferences.pairs_hash(preferences.load_pairs(done.folder / "data.jsonl"))}
    held = record["metrics"]["heldout_pairs"]
    assert set(held) == set(dpo.PREFERENCE_METRICS) and all(isinstance(v, float) for v in held.values())
    assert (done.adapter_dir / runs.HELDOUT_FILE).read_text() == (tiny_parent / runs.HELDOUT_FILE).read_text()
    assert not (done.adapter_dir / "ref").exists()  # only the trained adapter is saved
    assert (done.adapter_dir / dpo.PREFERENCES_FILE).read_text() == pairs
    assert "the model card could not be written" not in done.log() and (done.adapter_dir / runs.MODEL_CARD).exists()
    assert run_arm_base_is_pure(str(tiny_model), done.adapter_dir)


def run_arm_base_is_pure(base: str, adapter_dir: Path) -> bool:
    """The base arm's logits next to a DPO adapter equal a fresh base model's."""
    import torch

    from voicetune.generate import ChatModel

    ids = [1, 20, 30, 40, 50, 60]
    with_adapter = ChatModel(base)
    name = with_adapter.load_adapter(adapter_dir)
    tuned = with_adapter.logits(ids, name)
    fresh = ChatModel(base).logits(ids, None)
    return torch.equal(with_adapter.logits(ids, None), fresh) and not torch.equal(tuned, fresh)


def test_the_command_line_refuses_a_missing_parent_and_bad_pairs(tiny_parent: Path, tmp_path: Path) -> None:
    pairs = pairs_file(tmp_path / "p.jsonl", 12)
    result = run_cli("train", "--method", "dpo", "--from", "no-such-run", "--preferences", str(pairs),
                     "--out", str(tmp_path / "out"))
    assert result.returncode == 64 and "no finished run called 'no-such-run' in this workspace" in result.stderr
    bad = write_jsonl(tmp_path / "bad.jsonl", ['{"prompt": "Hi", "chosen": "a"}'])
    result = run_cli("train", "--method", "dpo", "--from", str(tiny_parent), "--preferences", str(bad),
                     "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert 'line 1, rejected: is missing: each line needs "prompt", "chosen" and "rejected"' in result.stderr
    assert not (tmp_path / "out").exists()


# --- DPO on the embedded model: the voice moves toward the chosen replies ----------------------------------------

@pytest.mark.slow
def test_dpo_raises_the_chosen_minus_rejected_margin_on_heldout_pairs_and_keeps_adherence(
        base_path: str, tokenizer, tmp_path: Path) -> None:
    from voicetune.config import TrainConfig
    from voicetune.evaluate import scorecard
    from voicetune.train import plan_run, run_sft

    data = voice_data(tmp_path / "voice.jsonl", REPLY)  # the parent learned the reply, not the sign-off
    parent = store.runs_dir() / "parent"
    run_sft(TrainConfig(data=str(data), out=str(parent), max_steps=6, learning_rate=2e-3, val_fraction=0.25,
                        scorecard=False, seed=1))
    runs.keep_training_data(parent, data)
    parent_card = scorecard(parent)
    prefs = pairs_file(tmp_path / "pairs.jsonl", 24)
    out = store.runs_dir() / "child"
    # The command line in this process: the same flags, DPOConfig and scorecard path, without a second start-up
    # and import (~8 s). `python -m voicetune train` itself runs DPO in the job test above (a job's child) and
    # refuses bad input in test_the_command_line_refuses_a_missing_parent_and_bad_pairs. Four steps (not 8) move the
    # held-out margin by ~25 nats here (-38.5 -> -13.0), far past the 1 nat asked below.
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        code = cli.main(["train", "--method", "dpo", "--from", "parent", "--preferences", str(prefs), "--out",
                         str(out), "--max-steps", "4", "--learning-rate", "5e-4"])
    finally:
        signal.signal(signal.SIGTERM, sigterm)  # cmd_train makes SIGTERM a cancel, as in a job's child
    assert code == 0
    record = runs.read(out)
    assert record["parent_run"] == "parent" and record["method"] == "dpo"
    assert record["metrics"]["heldout_pairs"]["rewards/margins"] > 0
    print("held-out pairs:", {k: round(v, 3) for k, v in record["metrics"]["heldout_pairs"].items()},
          f"{record['duration_s']} s")

    # The policy's own margin on the held-out pairs, measured here, against the parent's
    _, held = dpo.split_pairs(preferences.load_pairs(prefs), 0.2, 42)
    model = dpo.load_policy(base_path, parent, plan_run(TrainConfig(), base_path, "cpu").precision)
    before = dpo.margins(model, tokenizer, held)
    model.load_adapter(str(out), adapter_name="child")
    after = dpo.margins(model, tokenizer, held, "child")
    print(f"held-out margin: parent {sum(before) / len(before):.2f}, child {sum(after) / len(after):.2f} nats")
    assert sum(after) / len(after) > sum(before) / len(before) + 1.0

    # The scorecard shows the parent beside the child, on the same prompts; adherence does not drop
    card = json.loads((out / runs.SCORECARD_FILE).read_text())
    beside = card["parent"]
    assert beside["run_id"] == "parent"
    assert beside["parent"]["adherence"] == parent_card["adherence"]["arms"]["tuned"]["rate"]
    print(f"adherence: parent {beside['parent']['adherence']:.2f}, child {beside['this']['adherence']:.2f}")
    assert beside["this"]["adherence"] >= beside["parent"]["adherence"]
    assert card["adherence"]["prompts"] == parent_card["adherence"]["prompts"]


# --- The app's handlers: votes and edits make pairs, Improve refuses too few ------------------------------------

def test_compare_votes_and_teach_edits_record_pairs_and_improve_needs_ten(tiny_parent: Path) -> None:
    import gradio as gr

    from voicetune import arena
    from voicetune.ui import compare_tab, preferences_tab

    project = project_id()
    rnd = arena.Round(id="round-1", arms=[arena.base_arm(), arena.run_arm("r-1")], blind=True,
                      replies=["Hello.", "Ahoy, matey!"])
    state = {"round": rnd, "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
             "histories": {}, "stats": ["", ""], "system": "Be brief."}
    compare_tab.vote("right", project, state)
    compare_tab.vote("right", project, state)  # a double click: one vote, one pair
    said = compare_tab.teach("Base model", "Ahoy there!", project, state)
    assert "as a preference pair" in said
    rows = store.list_preference_pairs(store.connect(), project)
    assert [(r["source"], r["prompt"], r["chosen"], r["rejected"], r["chosen_arm"], r["rejected_arm"]) for r in rows] == [
        ("vote", state["prompt"], "Ahoy, matey!", "Hello.", "run:r-1", "base"),
        ("edit", state["prompt"], "Ahoy there!", "Hello.", "", "base")]
    assert list(preferences_tab.pairs_frame(project)["source"]) == ["vote", "edit"]

    with pytest.raises(gr.Error, match="Not enough preference pairs: 2 pairs; DPO needs at least 10"):
        preferences_tab.start_improve(project, str(tiny_parent), 0.1, 5e-5, 1)
    assert jobs.list_jobs() == []


def test_the_scorecard_lines_put_the_parent_beside_the_child_with_their_blind_votes() -> None:
    from voicetune.evaluate import parent_lines

    def headline(adh: float, loss: float) -> dict:
        return {"adherence": adh, "reference_loss": loss, "style_distance": 0.25, "probe_accuracy": 0.5}

    votes = {"arm_a": "run:child", "arm_b": "run:parent", "a_wins": 5, "b_wins": 2, "ties": 1, "both_bad": 0,
             "votes": 8}
    card = {"parent": {"run_id": "parent", "parent": headline(0.5, 1.25), "this": headline(0.75, 1.125),
                       "votes": votes}}
    assert parent_lines(card) == [
        "Parent run parent → this run:",
        "  voice adherence  50% → 75%",
        "  reference loss   1.250 → 1.125",
        "  style distance   0.250 → 0.250",
        "  probe accuracy   50% → 50%",
        "  blind votes, parent against this run: 2 to 5 (1 ties, 0 both bad)"]
    assert parent_lines({"parent": {"run_id": "p", "missing": "the parent run has no scorecard here"}}) == [
        "Parent run p: the parent run has no scorecard here (score it on the Scorecard tab)."]
    assert parent_lines({}) == []


def test_improve_from_preferences_names_pairs_to_fix_then_queues_a_dpo_job(tiny_parent: Path) -> None:
    import gradio as gr
    import yaml

    from voicetune.ui import preferences_tab

    conn = store.connect()
    project = project_id()
    preferences.import_pairs(conn, project, "\n".join(json.dumps(p) for p in synthetic_pairs(12)).encode())
    same = store.add_preference_pair(conn, project, prompt=[{"role": "user", "content": "Hi"}], chosen="Ahoy!",
                                     rejected="Ahoy!", source="import")
    with pytest.raises(gr.Error, match=f"Fix these pairs first .*: pair {same}: the chosen and rejected replies are "
                                       "identical: edit one or exclude the pair"):
        preferences_tab.start_improve(project, str(tiny_parent), 0.1, 5e-5, 1)
    preferences_tab.toggle_excluded(same, project)

    run_id, said = preferences_tab.start_improve(project, str(tiny_parent), 0.2, 1e-4, 1)
    assert said.endswith(f"improving `{tiny_parent}` from 12 preference pairs.")
    job = jobs.get(run_id)
    config = yaml.safe_load((job.folder / "config.yaml").read_text())
    assert (config["method"], config["parent"], config["beta"], config["learning_rate"], job.project_id) == (
        "dpo", str(tiny_parent), 0.2, 1e-4, project)
    assert len((job.folder / "data.jsonl").read_text().splitlines()) == 12
    jobs.cancel(run_id)
    assert jobs.wait(run_id, timeout_s=120).state == "cancelled"
