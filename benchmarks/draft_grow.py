"""Grow 10 written conversations into ~60 with drafting, and score a run on each (the README's drafting table).

The Cosmo Coffee example's first 10 conversations and its style guide make a project; run A trains on them
(Balanced). Run A drafts replies to 50 questions (the other 38 first turns of the example and 12 typed here): a
tuned voice drafts in the voice. The drafts are accepted as drafted (no person edits them), except ones the
queue flags as repeats or that come back empty; run B trains on the lot. Both are scored on the example's test
prompts. About 11 minutes on 2 CPU cores; writes a JSON summary to the workspace and prints the headline.

    VOICETUNE_HOME=$(mktemp -d) HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.draft_grow
"""
import json
import sys
import time
from pathlib import Path
from typing import Any

from voicetune import drafting, models, projects, recipes, store, train
from voicetune.config import TrainConfig
from voicetune.evaluate import scorecard

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = (ROOT / "examples" / "cosmo-coffee.prompts.txt").read_text().splitlines()
EXTRA = [  # typed by the "user": customer questions not in the example file nor its test prompts
    "Do you sell gift cards?", "Can I book the back room for a birthday?", "Is your decaf water-processed?",
    "Do you have a loyalty card?", "Can I bring my dog inside?", "Do you sell beans by the kilo?",
    "Is there parking nearby?", "Do you do oat milk at no extra charge?", "Can I order ahead on my phone?",
    "Are your cups compostable?", "Do you cater office meetings?", "What's in the breakfast sandwich?",
]


def log(*a: object) -> None:
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def run(conn: Any, pid: int, label: str) -> tuple[str, dict, dict, float]:
    """Train a Balanced run on the project as the Train tab would, then score it on the test prompts."""
    project = store.get_project(conn, pid)
    tok = models.tokenizer_for(project["base_model"])
    check = projects.check_project(conn, pid, tok, 4096)
    held = {c.line for c in projects.conversations_of(conn, pid, held_out=True)}
    lengths = [n for cid, n in check.lengths.items() if cid not in held]
    s = recipes.preset_settings("Balanced", lengths, params=recipes.base_params(project["base_model"]))
    check = projects.check_project(conn, pid, tok, s.max_length)
    run_id = store.new_run_id(label)
    folder = store.root() / "exp" / run_id
    folder.mkdir(parents=True)
    (folder / "data.jsonl").write_text(projects.training_jsonl(conn, pid))
    (folder / "heldout.jsonl").write_text(projects.heldout_jsonl(conn, pid) or "")
    cfg = TrainConfig(data=str(folder / "data.jsonl"), heldout_data=str(folder / "heldout.jsonl")
                      if (folder / "heldout.jsonl").read_text().strip() else "",
                      out=str(store.run_dir(run_id)), base_model=project["base_model"],
                      style_guide=project["style_guide"], val_fraction=min(0.49, check.val_fraction),
                      scorecard=False, **s.as_config())
    t = time.time()
    record = train.run_sft(cfg)
    log(label, "trained", record["data"], f"{time.time() - t:.0f}s", s.why)
    card = scorecard(store.run_dir(run_id), test_prompts=PROMPTS)
    return run_id, record, card, time.time() - t


def main() -> None:
    conn = store.connect()
    pid = projects.load_example(conn, "cosmo-coffee")
    convs = store.list_conversations(conn, pid)
    rest = convs[10:]
    questions = [drafting.first_customer_turn(c["messages"]) for c in rest] + EXTRA
    projects.delete_conversations(conn, [c["id"] for c in rest])
    projects.purge_trash(conn, now=time.time() + 10**9)
    log("project", len(store.list_conversations(conn, pid)), "conversations;", len(questions), "questions")
    a_id, a_rec, a_card, a_s = run(conn, pid, "ten")
    log("A", json.dumps(a_card.get("adherence", {}).get("arms", a_card.get("adherence")))[:600])
    asked = drafting.read_new_questions(conn, pid, "\n".join(questions))
    log("kept", len(asked.kept), "left out", [str(p) for p in asked.left_out])
    drafter = drafting.LocalDrafter(store.get_project(conn, pid)["base_model"], run_id=a_id)
    t = time.time()
    ids = [u.draft_id for u in drafting.draft_replies(conn, pid, asked.kept, drafter) if u.draft_id]
    log("drafted", len(ids), f"{time.time() - t:.0f}s")
    accepted = 0
    while (d := drafting.next_pending(conn, pid)) is not None:
        if d.get("duplicate_of") or not d["reply"].strip():
            drafting.reject(conn, d["id"])
        else:
            drafting.accept(conn, d["id"])
            accepted += 1
    log("accepted", accepted, "now", len(store.list_conversations(conn, pid)))
    b_id, b_rec, b_card, b_s = run(conn, pid, "sixty")
    out = {"A": {"run": a_id, "data": a_rec["data"], "adherence": a_card.get("adherence"), "verdict": a_card.get("verdict"),
                 "seconds": a_s},
           "B": {"run": b_id, "data": b_rec["data"], "adherence": b_card.get("adherence"), "verdict": b_card.get("verdict"),
                 "seconds": b_s, "drafted": b_card.get("drafted")},
           "accepted": accepted, "draft_seconds": time.time() - t}
    (store.root() / "draft-grow.json").write_text(json.dumps(out, indent=1, default=str))
    for k in "AB":
        tuned = out[k]["adherence"]["arms"]["tuned"]
        log(k, out[k]["data"], f"voice shows in {tuned['hits']} of {tuned['of']} replies")


if __name__ == "__main__":
    main()
