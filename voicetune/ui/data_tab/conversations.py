"""The Conversations sub-tab: a searchable table of the project's conversations, bulk actions on a
selection, and an editor with one row per turn, a live check and the loss-mask preview.

    tab.view = build_conversations(tab, transcript)   # inside the Conversations sub-tab

Every edit is written to the database the moment it is made (on blur, submit or click), and the table and
the editor are read back from it (`view`), so a reload or a restarted app shows exactly what was saved.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from voicetune import projects, store
from voicetune.data import Conversation, Problem, check_messages
from voicetune.templates import encode_all, preview
from voicetune.ui.data_tab.project_bar import ask_delete
from voicetune.ui.data_tab.shared import (MAX_LENGTH, DataTab, Refresh, conn, editing_state, fail, first,
                                          problems_markdown, project_tokenizer)
from voicetune.ui.session import pid

MASK_COLORS = {"trained": "#16a34a"}
ROLE_LABELS = [("Customer (user)", "user"), ("Brand reply (assistant)", "assistant"), ("Instructions (system)", "system")]
TABLE_COLUMNS = ["#", "customer says", "brand replies", "turns", "tags", "held out"]
STALE_TURNS = ("Conversation {cid} was changed in another tab or window since you opened it, so this edit was not "
               "saved. The editor now shows the saved version: make your change again there.")


# ---------------------------------------------------------------- the table


def conversations_table(project: int, query: str = "", tag: str = "") -> pd.DataFrame:
    rows = [[c["id"], first(c["messages"], "user"), first(c["messages"][::-1], "assistant"), len(c["messages"]),
             ", ".join(c["tags"]), "yes" if c["held_out"] else ""]
            for c in projects.search(conn(), pid(project), query, tag or "")]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _label(conv: dict) -> str:
    return f"#{conv['id']} · {first(conv['messages'], 'user')[:40] or '(no customer turn yet)'}"


def selected_conversation(editing: dict | None, project: int) -> dict | None:
    """The conversation open in the editor, if it is still live and in this project."""
    cid = (editing or {}).get("id")
    if cid is None:
        return None
    try:
        conv = projects.get_conversation(conn(), int(cid))
    except projects.ProjectError:
        return None
    return conv if conv["deleted"] is None and conv["project_id"] == pid(project) else None


def live_check(project: int, messages: list[dict], number: int) -> tuple[str, list, str]:
    """The editor's live check, with the real template, and the loss-mask preview when it passes."""
    problems = [Problem(number, p.field, p.message, "conversation") for p in check_messages(messages, number)]
    if not problems:
        tok = project_tokenizer(project)
        encoded, found = encode_all(tok, [Conversation(messages, number)], MAX_LENGTH)
        problems = [Problem(number, p.field, p.message, "conversation") for p in found]
        if encoded:
            enc = encoded[0]
            pairs = [(piece, "trained" if on else None) for piece, on in preview(tok, messages)]
            return "✅ Ready to train on.", pairs, (f"Exactly what the model trains on: {len(enc.input_ids)} tokens, "
                                                   f"{enc.n_trained} in green carry the loss")
    return "⚠️ " + "\n".join(["To fix before training:", problems_markdown(problems)]), [], "Preview (fix the problems first)"


def view(project: int, editing: dict | None, query: str, tag: str) -> tuple:
    """The table and the selected conversation, read back from the database."""
    db = conn()
    tags = projects.all_tags(db, pid(project))
    convs = store.list_conversations(db, pid(project))
    conv = selected_conversation(editing, project)
    outputs = [conversations_table(project, query, tag), gr.update(choices=["", *tags], value=tag if tag in tags else ""),
               gr.update(choices=[(_label(c), c["id"]) for c in convs], value=[])]
    if conv is None:
        hint = "Pick a conversation in the table, or start a new one." if convs else \
            "No conversations yet: start one, record one, import a file, or load a bundled example voice."
        return (*outputs, f"### {hint}", "", False, "", gr.update(value=[], label="Preview"), [])
    live, pairs, label = live_check(project, conv["messages"], conv["id"])
    chat = [{"role": "assistant" if m.get("role") == "assistant" else "user",
             "content": ("[instructions] " if m.get("role") == "system" else "") + str(m.get("content", ""))}
            for m in conv["messages"] if isinstance(m, dict)]
    source = f" · from {conv['source']}" if conv["source"] else ""
    return (*outputs, f"### Conversation {conv['id']}{source}", ", ".join(conv["tags"]), bool(conv["held_out"]), live,
            gr.update(value=pairs, label=label), chat)


def select_row(table: pd.DataFrame, evt: gr.SelectData) -> dict:
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    return editing_state(int(table.iloc[row, 0]))


def new_conversation(project: int) -> tuple[dict, str]:
    cid = store.add_conversation(conn(), pid(project), [{"role": "user", "content": ""},
                                                        {"role": "assistant", "content": ""}], source="editor")
    return editing_state(cid), f"Started conversation {cid}: type the customer's message and your reply."


def duplicate(project: int, editing: dict) -> tuple[dict, str]:
    conv = _need(editing, project)
    cid = projects.duplicate_conversation(conn(), conv["id"])
    return editing_state(cid), f"Conversation {conv['id']} duplicated as {cid}."


def _need(editing: dict | None, project: int) -> dict:
    conv = selected_conversation(editing, project)
    if conv is None:
        raise gr.Error("Pick a conversation in the table first.")
    return conv


# ---------------------------------------------------------------- the editor


def editor_version(project: int, editing: dict | None) -> dict:
    """Which version of the open conversation the editor was drawn from (set whenever it is redrawn)."""
    conv = selected_conversation(editing, project)
    return {} if conv is None else {"id": conv["id"], "version": conv["version"]}


def edit_turn(project: int, editing: dict, seen: dict | None, index: int, role: str | None = None,
              content: str | None = None) -> dict:
    """Save one turn over the version the editor shows; a refused save marks the editor stale (redraw_if_stale)."""
    conv = _need(editing, project)
    expected = seen.get("version") if (seen or {}).get("id") == conv["id"] else None
    try:
        version = projects.set_turn(conn(), conv["id"], index, role=role, content=content, expected_version=expected)
    except store.StaleWrite:
        gr.Warning(STALE_TURNS.format(cid=conv["id"]))
        return {**(seen or {}), "stale": True}
    except projects.ProjectError as e:
        raise fail(e)
    return {"id": conv["id"], "version": version}


def redraw_if_stale(editing: dict, seen: dict | None) -> Any:
    """The last step after a save: a new editing state redraws a stale editor from the database. Last, because a
    redraw replaces the editor's listeners, and a step chained to a replaced listener would find it gone."""
    return {**(editing or {}), "rev": time.time()} if (seen or {}).get("stale") else gr.skip()


def change_turns(project: int, editing: dict, action: str, index: int = 0, role: str = "user") -> dict:
    """Structural edits (add, delete, move a turn); returns a new editing state so the editor redraws."""
    conv = _need(editing, project)
    db = conn()
    if action == "add":
        projects.add_turn(db, conv["id"], role)
    elif action == "delete":
        projects.delete_turn(db, conv["id"], index)
    else:
        projects.move_turn(db, conv["id"], index, -1 if action == "up" else 1)
    return editing_state(conv["id"])


def save_tags(project: int, editing: dict, text: str) -> None:
    conv = _need(editing, project)
    projects.set_tags(conn(), conv["id"], projects.parse_tags(text))


def save_held_out(project: int, editing: dict, held: bool) -> None:
    conv = selected_conversation(editing, project)
    if conv is not None and bool(conv["held_out"]) != bool(held):
        projects.set_held_out(conn(), [conv["id"]], bool(held))


# ---------------------------------------------------------------- bulk actions


def select_all_shown(table: pd.DataFrame) -> list[int]:
    return [int(i) for i in table["#"]] if table is not None and len(table) else []


def bulk_tag(project: int, selected: list, tag: str) -> str:
    if not selected or not (tag or "").strip():
        raise gr.Error("Select conversations and type a tag to add.")
    projects.add_tag(conn(), [int(i) for i in selected], tag)
    return f"Tagged {len(selected)} conversation(s) “{tag.strip().lower()}”."


def bulk_hold(project: int, selected: list, held: bool) -> str:
    if not selected:
        raise gr.Error("Select conversations first.")
    projects.set_held_out(conn(), [int(i) for i in selected], held)
    what = "held out for evaluation (never trained on)" if held else "back in training"
    return f"{len(selected)} conversation(s) {what}."


# ---------------------------------------------------------------- layout and wiring


def _editor(tab: DataTab, after_edit: Refresh) -> None:
    """One row per turn, drawn from the database whenever the conversation's structure changes."""
    project, editing, seen = tab.project, tab.editing, tab.seen

    @gr.render(inputs=[project, editing])
    def turns(pid: int, state: dict) -> None:
        conv = selected_conversation(state, pid)
        if conv is None:
            return
        for i, msg in enumerate(conv["messages"]):
            msg = msg if isinstance(msg, dict) else {"role": "user", "content": str(msg)}
            with gr.Row(equal_height=True, key=f"turn-{conv['id']}-{i}"):
                # interactive stated: Gradio does not infer it for components drawn at render time, and showed
                # the role picker (and, when redrawn, the text) disabled
                role = gr.Dropdown(ROLE_LABELS, value=msg.get("role") if msg.get("role") in ("user", "assistant", "system")
                                   else None, label=f"Turn {i + 1}", scale=2, min_width=150, interactive=True)
                content = gr.Textbox(str(msg.get("content") or ""), lines=2, max_lines=12, show_label=False, scale=7,
                                     placeholder="Type this turn…", interactive=True)
                with gr.Column(scale=1, min_width=90):
                    up, down, drop = (gr.Button(s, size="sm") for s in ("↑ up", "↓ down", "✕ delete"))
            role.input(functools.partial(_set_role, index=i), [project, editing, seen, role], seen).then(
                *after_edit).then(redraw_if_stale, [editing, seen], editing)
            content.blur(functools.partial(_set_content, index=i), [project, editing, seen, content], seen).then(
                *after_edit).then(redraw_if_stale, [editing, seen], editing)
            for button, action in ((up, "up"), (down, "down"), (drop, "delete")):
                button.click(functools.partial(change_turns, action=action, index=i), [project, editing], editing)


def _set_role(project: int, editing: dict, seen: dict, role: str, *, index: int) -> dict:
    return edit_turn(project, editing, seen, index, role=role)


def _set_content(project: int, editing: dict, seen: dict, content: str, *, index: int) -> dict:
    return edit_turn(project, editing, seen, index, content=content)


@dataclass
class Table:
    """The search row, the table and the bulk actions on a selection of its rows."""

    query: gr.Textbox
    tag: gr.Dropdown
    new_btn: gr.Button
    table: gr.Dataframe
    chosen: gr.Dropdown
    all_btn: gr.Button
    bulk_delete: gr.Button
    hold_btn: gr.Button
    train_btn: gr.Button
    bulk_tag_box: gr.Textbox
    bulk_tag_btn: gr.Button


@dataclass
class Header:
    """The open conversation's title, tags, held-out box and its own buttons, above its turns."""

    title: gr.Markdown
    tags_box: gr.Textbox
    held: gr.Checkbox
    dup_btn: gr.Button
    del_btn: gr.Button


def _table() -> Table:
    with gr.Row(equal_height=True):
        query = gr.Textbox(label="Search", placeholder="words in any turn or tag", scale=3, max_lines=1)
        tag = gr.Dropdown([""], value="", label="Tag", scale=1)
        new_btn = gr.Button("+ New conversation", variant="primary", scale=1)
    table = gr.Dataframe(pd.DataFrame(columns=TABLE_COLUMNS), interactive=False, wrap=True, max_height=320,
                         label="Conversations (click a row to edit it)", column_widths=["6%", "36%", "38%",
                                                                                           "7%", "8%", "5%"])
    with gr.Accordion("Select several (bulk actions)", open=False):
        chosen = gr.Dropdown([], multiselect=True, label="Selected conversations")
        with gr.Row():
            all_btn = gr.Button("Select all shown", size="sm")
            bulk_delete = gr.Button("Delete selected…", variant="stop", size="sm")
            hold_btn = gr.Button("Hold out for evaluation", size="sm")
            train_btn = gr.Button("Train on them again", size="sm")
        with gr.Row(equal_height=True):
            bulk_tag_box = gr.Textbox(label="Tag to add", max_lines=1, scale=3)
            bulk_tag_btn = gr.Button("Add tag to selected", size="sm", scale=1)
    return Table(query, tag, new_btn, table, chosen, all_btn, bulk_delete, hold_btn, train_btn, bulk_tag_box,
                 bulk_tag_btn)


def _header() -> Header:
    title = gr.Markdown("### Pick a conversation in the table, or start a new one.")
    with gr.Row(equal_height=True):
        tags_box = gr.Textbox(label="Tags (comma-separated)", max_lines=1, scale=3)
        held = gr.Checkbox(label="Held out for evaluation (never trained on)", scale=2)
        dup_btn = gr.Button("Duplicate", size="sm", scale=1)
        del_btn = gr.Button("Delete…", variant="stop", size="sm", scale=1)
    return Header(title, tags_box, held, dup_btn, del_btn)


def build_conversations(tab: DataTab, transcript: gr.Chatbot) -> Refresh:
    """Lays out and wires the sub-tab; returns its refresher, `view`, which also fills the Record sub-tab's
    `transcript`. The live check and the preview are made first (render=False) and placed below the editor:
    the editor's own events refresh them, and it is drawn above them."""
    t = _table()
    h = _header()
    live = gr.Markdown(render=False)
    mask = gr.HighlightedText(label="Preview", color_map=MASK_COLORS, combine_adjacent=True, show_legend=False,
                              render=False)
    refresh = (view, [tab.project, tab.editing, t.query, t.tag],
               [t.table, t.tag, t.chosen, h.title, h.tags_box, h.held, live, mask, transcript])
    _editor(tab, refresh)
    with gr.Row():
        adds = [(gr.Button(text, size="sm"), role) for text, role in
                (("+ Customer turn", "user"), ("+ Brand reply", "assistant"), ("+ Instructions", "system"))]
    live.render()
    mask.render()
    _wire_table(tab, t, h, refresh)
    for button, role in adds:
        button.click(functools.partial(change_turns, action="add", role=role), [tab.project, tab.editing], tab.editing)
    _wire_bulk(tab, t, refresh)
    return refresh


def _wire_table(tab: DataTab, t: Table, h: Header, refresh: Refresh) -> None:
    """The editor follows `editing`; search, picking a row and the open conversation's own fields."""
    project, editing = tab.project, tab.editing
    editing.change(*refresh)
    editing.change(editor_version, [project, editing], tab.seen)
    t.query.submit(*refresh, api_name="view")
    t.query.blur(*refresh)
    t.tag.input(*refresh)
    t.table.select(select_row, t.table, editing)
    t.new_btn.click(new_conversation, project, [editing, tab.status], api_name="new_conversation")
    h.dup_btn.click(duplicate, [project, editing], [editing, tab.status], api_name="duplicate")
    h.tags_box.blur(save_tags, [project, editing, h.tags_box], None, api_name="set_tags").then(*refresh)
    h.held.input(save_held_out, [project, editing, h.held], None, api_name="set_held_out").then(*refresh)
    h.del_btn.click(functools.partial(ask_delete, "conversations"), [project, gr.State([]), editing], tab.ask)


def _wire_bulk(tab: DataTab, t: Table, refresh: Refresh) -> None:
    """Tag, hold out, train on again or delete the selected conversations (a delete asks first)."""
    project = tab.project
    t.all_btn.click(select_all_shown, t.table, t.chosen)
    t.bulk_tag_btn.click(bulk_tag, [project, t.chosen, t.bulk_tag_box], tab.status).then(*refresh)
    t.hold_btn.click(functools.partial(bulk_hold, held=True), [project, t.chosen], tab.status).then(*refresh)
    t.train_btn.click(functools.partial(bulk_hold, held=False), [project, t.chosen], tab.status).then(*refresh)
    t.bulk_delete.click(functools.partial(ask_delete, "conversations"), [project, t.chosen, tab.editing], tab.ask)
