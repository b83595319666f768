"""Data tab › Draft: questions in, replies in the voice out, and a review queue a person works through.

Nothing drafted is trained on until it is accepted here. The queue lives in the database (drafting.py, store.py
m009), so a reload or a restarted app shows the same draft waiting. The endpoint's API key is write-only: the
page sends it once, on save, and is never sent it back.

Keyboard shortcuts in the review queue: Alt+A accept (with any edit), Alt+R reject, Alt+G regenerate.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from voicetune import drafting, store
from voicetune.ui.session import pid

SHORTCUTS = """() => {
  if (window.voicetuneDraftKeys) return;
  window.voicetuneDraftKeys = true;
  const ids = {a: "draft-accept", r: "draft-reject", g: "draft-regenerate"};
  document.addEventListener("keydown", (e) => {
    const id = e.altKey && !e.ctrlKey && !e.metaKey ? ids[e.key.toLowerCase()] : null;
    const button = id && document.getElementById(id);
    if (button && button.offsetParent !== null) { e.preventDefault(); button.click(); }
  });
}"""
NO_KEY = "No key saved (leave empty for a local server that needs none)"
SAVED_KEY = "A key is saved: type a new one to replace it (it is never shown)"


def _conn():
    return store.connect()


def _fail(e: Exception) -> gr.Error:
    return gr.Error(str(e))


def _private_ok() -> bool:
    """A private or local endpoint address is fine while one person uses the app; once people sign in, any of
    them could point it at the server's own network (drafting.check_base_url)."""
    from voicetune.ui.session import mode

    return mode() == "shared"


def _drafter(project: Any, model: str) -> drafting.Drafter:
    try:
        return drafting.make_drafter(_conn(), pid(project), model or "base", private_ok=_private_ok())
    except drafting.DraftError as e:
        raise _fail(e) from None


# ---------------------------------------------------------------- models and the endpoint


def model_choices(project: Any) -> dict:
    choices = drafting.drafter_choices(_conn(), pid(project))
    return gr.update(choices=choices, value=choices[0][1])


def endpoint_view() -> tuple[str, str, dict]:
    """The saved endpoint as the page may see it: base URL and model, and only whether a key is saved."""
    shown = drafting.endpoint_settings(_conn())
    return shown["base_url"], shown["model"], gr.update(value="", placeholder=SAVED_KEY if shown["has_key"] else NO_KEY)


def save_endpoint(project: Any, base_url: str, model: str, key: str) -> tuple[str, dict, dict]:
    try:
        shown = drafting.save_endpoint(_conn(), base_url, model, key or None, private_ok=_private_ok())
    except drafting.DraftError as e:
        raise _fail(e) from None
    return (f"Saved: drafting can use {shown['model']} at {shown['base_url']}.",
            gr.update(value="", placeholder=SAVED_KEY if shown["has_key"] else NO_KEY), model_choices(project))


# ---------------------------------------------------------------- questions and drafting


def read_questions_file(upload: Any) -> str:
    if not upload:
        return gr.skip()
    path = Path(upload if isinstance(upload, str) else upload.name)
    if path.stat().st_size > 1 << 20:
        raise gr.Error(f"{path.name} is over 1 MiB: a questions file is one question per line; split it.")
    return path.read_text(encoding="utf-8", errors="replace")


def propose(project: Any, model: str, questions: str) -> tuple[str, str]:
    """"More questions like these": proposals join the box, for the user to keep, edit or delete."""
    try:
        found = drafting.propose_questions(_conn(), pid(project), _drafter(project, model))
    except drafting.DraftError as e:
        raise _fail(e) from None
    lines = [q for q in (questions or "").splitlines() if q.strip()] + found.kept
    return "\n".join(lines), f"Proposed {len(found.kept)} new question(s); edit the list, then draft."


def _cut_note(cut: bool) -> str:
    return f" (⚠️ {drafting.CUT_NOTE})" if cut else ""


def _progress(done: list[str], question: str, text: str) -> str:
    return "\n\n".join([*done, f"**{question or '(pasted answer)'}**\n\n{text}▌"])


def draft(project: Any, model: str, questions: str) -> Iterator[str]:
    """Draft a reply to each new question, streaming each as it is written; each lands in the queue when whole."""
    conn = _conn()
    asked = drafting.read_new_questions(conn, pid(project), questions)
    if not asked.kept:
        raise gr.Error("No new questions to draft: " + ("; ".join(str(p) for p in asked.left_out[:5])
                                                        or "type one per line."))
    notes = [f"{asked.summary()} " + "; ".join(str(p) for p in asked.left_out[:10])] if asked.left_out else []
    done: list[str] = list(notes)
    try:
        for update in drafting.draft_replies(conn, pid(project), asked.kept, _drafter(project, model)):
            if update.draft_id is None:
                yield _progress(done, update.question, update.text)
            else:
                done.append(f"**{update.question}** → queued as draft {update.draft_id}{_cut_note(update.cut)}"
                            f"\n\n{update.text}")
                yield "\n\n".join(done)
    except drafting.DraftError as e:
        raise _fail(e) from None
    yield "\n\n".join([*done, f"✅ {len(asked.kept)} draft(s) are waiting for review below."])


def rewrite(project: Any, model: str, pasted: str) -> Iterator[str]:
    pairs = drafting.parse_faq(pasted)
    if not pairs:
        raise gr.Error("Paste one or more answers first; put a line of --- between them.")
    done: list[str] = []
    try:
        for update in drafting.rewrite_answers(_conn(), pid(project), pairs, _drafter(project, model)):
            if update.draft_id is None:
                yield _progress(done, update.question, update.text)
            else:
                done.append(f"**{update.question or '(no question)'}** → queued as draft {update.draft_id}"
                            f"{_cut_note(update.cut)}\n\n{update.text}")
                yield "\n\n".join(done)
    except drafting.DraftError as e:
        raise _fail(e) from None


def import_file(project: Any, upload: Any) -> str:
    if not upload:
        raise gr.Error("Choose a drafts file (.jsonl, as `python -m voicetune draft --out` writes it).")
    path = Path(upload if isinstance(upload, str) else upload.name)
    ids, problems = drafting.import_drafts(_conn(), pid(project), path.read_bytes())
    lines = [f"{len(ids)} draft(s) from {path.name} put in the review queue."]
    lines += [f"- {p}" for p in problems[:20]]
    return "\n".join(lines)


# ---------------------------------------------------------------- the review queue


def queue_view(project: Any) -> tuple[str, str, str, str, dict]:
    """The oldest pending draft (header, question, reply, details), read back from the database."""
    conn = _conn()
    counts = store.draft_counts(conn, pid(project))
    draft = drafting.next_pending(conn, pid(project))
    tally = f"{counts['accepted']} accepted, {counts['rejected']} rejected so far"
    if draft is None:
        return f"### No drafts waiting for review ({tally})", "", "", "", {"id": None}
    details = [f"Drafted by `{draft['model']}` with prompt `{draft['prompt_version']}`; examples shown: "
               + (", ".join(f"#{s}" for s in draft["seeds"]) or "none")]
    if draft["duplicate_of"]:
        details.append(f"⚠️ Conversation {draft['duplicate_of']} already asks this: accepting adds a near copy.")
    if draft["cut"]:
        details.append("⚠️ This reply ran to the drafting model's token limit, so it ends mid-sentence: finish or "
                       "trim it before accepting (the model learns to end where its examples end), or regenerate.")
    if draft["kind"] == "rewrite":
        details.append(f"Rewritten from:\n\n> {draft['original']}")
    header = f"### Draft {draft['id']} · {counts['pending']} waiting ({tally})"
    return header, draft["question"], draft["reply"], "\n\n".join(details), {"id": draft["id"]}


def _current(current: dict | None) -> int:
    if not (current or {}).get("id"):
        raise gr.Error("No draft is waiting for review.")
    return int(current["id"])


def accept(project: Any, current: dict, question: str, reply: str) -> tuple[str, dict]:
    """Accept the draft shown, with the text as the reviewer left it (an edit is stored as edited)."""
    conn, draft_id = _conn(), _current(current)
    try:
        draft = store.get_draft(conn, draft_id)
        if draft and question.strip() and question.strip() != draft["question"]:
            drafting.set_question(conn, draft_id, question)
        cid = drafting.accept(conn, draft_id, reply=reply)
    except drafting.DraftError as e:
        raise _fail(e) from None
    return f"Accepted draft {draft_id} as conversation {cid} (tagged drafted).", {"id": None, "rev": time.time()}


def reject(project: Any, current: dict) -> str:
    draft_id = _current(current)
    try:
        drafting.reject(_conn(), draft_id)
    except drafting.DraftError as e:
        raise _fail(e) from None
    return f"Rejected draft {draft_id}: it stays out of the project."


def regenerate(project: Any, model: str, current: dict) -> Iterator[str]:
    draft_id = _current(current)
    try:
        for text in drafting.regenerate(_conn(), draft_id, _drafter(project, model), attempt=int(time.time())):
            yield text
    except drafting.DraftError as e:
        raise _fail(e) from None


# ---------------------------------------------------------------- layout


def build_draft_tab(project: gr.State, editing: gr.State) -> None:
    """The Draft sub-tab; an accept sets `editing`, so the Conversations table is read back at once."""
    gr.Markdown("Grow a handful of conversations into a training set: a model drafts replies in your voice, and "
                "**nothing is trained on until you accept it** below.")
    with gr.Row(equal_height=True):
        model = gr.Dropdown([("Base model", "base")], value="base", label="Drafting model", scale=3)
        refresh = gr.Button("↻ Models", size="sm", scale=0)
    with gr.Accordion("OpenAI-compatible endpoint (Ollama, vLLM, llama.cpp, a hosted model)", open=False):
        with gr.Row():
            base_url = gr.Textbox(label="Base URL", placeholder="http://localhost:11434/v1", max_lines=1)
            endpoint_model = gr.Textbox(label="Model", placeholder="llama3.1", max_lines=1)
            key = gr.Textbox(label="API key (write-only)", type="password", placeholder=NO_KEY, max_lines=1)
        save = gr.Button("Save endpoint", size="sm")
    with gr.Tabs():
        with gr.Tab("Questions"):
            questions = gr.Textbox(label="Customer questions, one per line (already asked ones are left out)",
                                   lines=5, placeholder="Do you deliver?\nCan I pay by card?")
            with gr.Row():
                upload = gr.File(label="…or a .txt file, one per line", file_types=[".txt"], scale=2)
                more = gr.Button("More questions like these", scale=1)
                go = gr.Button("Draft replies", variant="primary", scale=1)
        with gr.Tab("Rewrite in our voice"):
            pasted = gr.Textbox(label="FAQ answers or support replies: a question line ending in ?, then the "
                                      "answer; a line of --- between them", lines=6)
            go_rewrite = gr.Button("Rewrite in our voice", variant="primary")
        with gr.Tab("From a file"):
            drafts_file = gr.File(label="A drafts file from `python -m voicetune draft`", file_types=[".jsonl"])
            go_import = gr.Button("Put them in the review queue")
    progress = gr.Markdown()
    gr.Markdown("#### Review queue · Alt+A accept (with your edits) · Alt+R reject · Alt+G regenerate")
    header = gr.Markdown()
    current = gr.State({"id": None})
    question = gr.Textbox(label="Customer says", lines=1)
    reply = gr.Textbox(label="Drafted reply (edit it, then accept)", lines=4)
    details = gr.Markdown()
    with gr.Row():
        accept_btn = gr.Button("Accept", variant="primary", elem_id="draft-accept")
        regen_btn = gr.Button("Regenerate", elem_id="draft-regenerate")
        reject_btn = gr.Button("Reject", variant="stop", elem_id="draft-reject")
    status = gr.Markdown()

    # ---- wiring: every decision is written at once, then the queue is read back from the database
    queue_io = (queue_view, project, [header, question, reply, details, current])
    gr.context.Context.root_block.load(None, None, None, js=SHORTCUTS)
    project.change(model_choices, project, model).then(*queue_io).then(endpoint_view, None, [base_url, endpoint_model, key])
    refresh.click(model_choices, project, model)
    refresh.click(*queue_io, api_name="review_queue")
    save.click(save_endpoint, [project, base_url, endpoint_model, key], [status, key, model], api_name="save_endpoint")
    upload.change(read_questions_file, upload, questions)
    more.click(propose, [project, model, questions], [questions, status], api_name="propose_questions")
    go.click(draft, [project, model, questions], progress, api_name="draft_replies").then(*queue_io)
    go_rewrite.click(rewrite, [project, model, pasted], progress, api_name="rewrite_answers").then(*queue_io)
    go_import.click(import_file, [project, drafts_file], status, api_name="import_drafts").then(*queue_io)
    accept_btn.click(accept, [project, current, question, reply], [status, editing], api_name="accept_draft").then(*queue_io)
    reject_btn.click(reject, [project, current], status, api_name="reject_draft").then(*queue_io)
    regen_btn.click(regenerate, [project, model, current], reply, api_name="regenerate_draft").then(*queue_io)
