"""Data tab: the data studio. Projects, a table of conversations, an editor and record mode, import with a
report before anything is added, export, a health check, and the trash.

Every edit is written to the database the moment it is made (on blur, submit or click), and everything
on screen is read back from the database, so a reload or a restarted app shows exactly what was saved.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from voicetune import importers, limits, models, projects, store
from voicetune.config import TrainConfig
from voicetune.data import MAX_FILE_BYTES, Conversation, Problem, check_messages, list_examples
from voicetune.importers import ImportReport
from voicetune.templates import TemplateError, encode_all, preview
from voicetune.ui import downloads
from voicetune.ui.charts import bar_chart_html
from voicetune.ui.session import pid

MASK_COLORS = {"trained": "#16a34a"}
ROLE_LABELS = [("Customer (user)", "user"), ("Brand reply (assistant)", "assistant"), ("Instructions (system)", "system")]
FORMATS = [("Detect automatically", "auto"), ("OpenAI chat JSONL", "openai"), ("ShareGPT", "sharegpt"),
           ("Alpaca", "alpaca"), ("CSV / spreadsheet", "csv"), ("Pasted User:/Assistant: text", "pasted")]
TABLE_COLUMNS = ["#", "customer says", "brand replies", "turns", "tags", "held out"]
SHOWN_PROBLEMS = 30
MAX_LENGTH = TrainConfig.max_length  # the default a run uses; the health check lets the user change it


def _conn():
    return store.connect()


def project_tokenizer(project: int) -> Any:
    return models.tokenizer_for(store.get_project(_conn(), pid(project))["base_model"])


def editing_state(conversation_id: int | None = None) -> dict[str, Any]:
    """A new value for the editor's state: the conversation open in it (None: none) and a fresh `rev`, so the
    change that reloads the editor fires even when the same conversation is opened again."""
    return {"id": conversation_id, "rev": time.time()}


def _fail(e: Exception) -> gr.Error:
    return gr.Error(str(e).strip("'\""))


def problems_markdown(problems: list[Problem], limit: int = SHOWN_PROBLEMS) -> str:
    lines = [f"- {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"- … and {len(problems) - limit} more")
    return "\n".join(lines)


# ---------------------------------------------------------------- projects


def project_choices() -> list[tuple[str, int]]:
    return [(p["name"], p["id"]) for p in projects.list_projects(_conn())]


def open_current() -> int:
    """The project to show on page load: the one last opened (trash older than 30 days is emptied here)."""
    conn = _conn()
    projects.purge_trash(conn)
    return projects.current_project(conn)


def switch_project(project: Any) -> tuple[int, dict]:
    if project in (None, ""):
        raise gr.Error("Choose a project.")
    try:
        projects.open_project(_conn(), pid(project))
    except (KeyError, projects.ProjectError) as e:
        raise _fail(e)
    return pid(project), editing_state()


def create_project(name: str) -> tuple[int, dict, str, str]:
    try:
        from voicetune.ui.base_model import suggested_base

        pid = projects.create_project(_conn(), name, base_model=suggested_base())
    except projects.ProjectError as e:
        raise _fail(e)
    return pid, editing_state(), "", f"Created project “{name.strip()}”."


def load_example_project(name: str) -> tuple[int, dict, str]:
    try:
        pid = projects.load_example(_conn(), name)
    except projects.ProjectError as e:
        raise _fail(e)
    project = store.get_project(_conn(), pid)
    return pid, editing_state(), f"Loaded the example voice into the new project “{project['name']}”."


def project_view(project: int) -> tuple:
    """Everything about the project itself: picker, settings and trash; and the texts the boxes now show, so a
    save can tell whether another tab changed them since."""
    p = store.get_project(_conn(), pid(project))
    val = p["val_fraction"]
    shown = {"style_guide": p["style_guide"], "system_prompt": p["system_prompt"]}
    return (gr.update(choices=project_choices(), value=p["id"]), p["name"], p["style_guide"], p["system_prompt"],
            val, trash_table(project), shown)


def rename(project: int, name: str) -> str:
    try:
        if name.strip() != store.get_project(_conn(), pid(project))["name"]:
            projects.rename_project(_conn(), pid(project), name)
    except projects.ProjectError as e:
        raise _fail(e)
    return ""


STALE_SETTING = ("The {what} was changed in another tab or window since this page showed it, so your edit was not "
                 "saved. The box now shows the saved text: make your change again there.")
STALE_TURNS = ("Conversation {cid} was changed in another tab or window since you opened it, so this edit was not "
               "saved. The editor now shows the saved version: make your change again there.")


def save_text_setting(project: int, value: str, shown: dict | None, *, key: str) -> tuple[Any, dict]:
    """The style guide or default system prompt, saved only over the text this page showed (else refreshed)."""
    try:
        save_setting(project, value, key=key, expected={key: shown[key]} if shown and key in shown else None)
    except StaleView:
        gr.Warning(STALE_SETTING.format(what=key.replace("_", " ")))
        current = store.get_project(_conn(), pid(project))[key]
        return current, {**(shown or {}), key: current}
    return gr.skip(), {**(shown or {}), key: value or ""}


def save_setting(project: int, value: Any, *, key: str, expected: dict | None = None) -> None:
    problem = limits.check_text("The style guide", value, limits.MAX_SYSTEM_PROMPT_CHARS) if key == "style_guide" else None
    if problem:
        raise gr.Error(problem + " It was not saved.")
    if key == "val_fraction" and value is not None and not 0 <= float(value) < 0.5:
        raise gr.Error("The validation share must be at least 0 and below 0.5 (e.g. 0.1 for 10%), or empty for automatic.")
    try:
        store.update_project(_conn(), pid(project), expected=expected,
                             **{key: value if key == "val_fraction" else (value or "")})
    except store.StaleWrite:
        raise StaleView(key) from None


class StaleView(Exception):
    """A save refused because another tab changed the same text since this page showed it."""


# ---------------------------------------------------------------- the table and the editor


def _first(messages: list[dict], role: str) -> str:
    text = next((str(m.get("content", "")) for m in messages if isinstance(m, dict) and m.get("role") == role), "")
    return text if len(text) <= 90 else text[:87] + "…"


def conversations_table(project: int, query: str = "", tag: str = "") -> pd.DataFrame:
    rows = [[c["id"], _first(c["messages"], "user"), _first(c["messages"][::-1], "assistant"), len(c["messages"]),
             ", ".join(c["tags"]), "yes" if c["held_out"] else ""]
            for c in projects.search(_conn(), pid(project), query, tag or "")]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _label(conv: dict) -> str:
    return f"#{conv['id']} · {_first(conv['messages'], 'user')[:40] or '(no customer turn yet)'}"


def _selected(editing: dict | None, project: int) -> dict | None:
    cid = (editing or {}).get("id")
    if cid is None:
        return None
    try:
        conv = projects.get_conversation(_conn(), int(cid))
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
    conn = _conn()
    tags = projects.all_tags(conn, pid(project))
    convs = store.list_conversations(conn, pid(project))
    conv = _selected(editing, project)
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
    cid = store.add_conversation(_conn(), pid(project), [{"role": "user", "content": ""},
                                                         {"role": "assistant", "content": ""}], source="editor")
    return editing_state(cid), f"Started conversation {cid}: type the customer's message and your reply."


def duplicate(project: int, editing: dict) -> tuple[dict, str]:
    conv = _need(editing, project)
    cid = projects.duplicate_conversation(_conn(), conv["id"])
    return editing_state(cid), f"Conversation {conv['id']} duplicated as {cid}."


def _need(editing: dict | None, project: int) -> dict:
    conv = _selected(editing, project)
    if conv is None:
        raise gr.Error("Pick a conversation in the table first.")
    return conv


def editor_version(project: int, editing: dict | None) -> dict:
    """Which version of the open conversation the editor was drawn from (set whenever it is redrawn)."""
    conv = _selected(editing, project)
    return {} if conv is None else {"id": conv["id"], "version": conv["version"]}


def edit_turn(project: int, editing: dict, seen: dict | None, index: int, role: str | None = None,
              content: str | None = None) -> dict:
    """Save one turn over the version the editor shows; a refused save marks the editor stale (redraw_if_stale)."""
    conv = _need(editing, project)
    expected = seen.get("version") if (seen or {}).get("id") == conv["id"] else None
    try:
        version = projects.set_turn(_conn(), conv["id"], index, role=role, content=content, expected_version=expected)
    except store.StaleWrite:
        gr.Warning(STALE_TURNS.format(cid=conv["id"]))
        return {**(seen or {}), "stale": True}
    except projects.ProjectError as e:
        raise _fail(e)
    return {"id": conv["id"], "version": version}


def redraw_if_stale(editing: dict, seen: dict | None) -> Any:
    """The last step after a save: a new editing state redraws a stale editor from the database. Last, because a
    redraw replaces the editor's listeners, and a step chained to a replaced listener would find it gone."""
    return {**(editing or {}), "rev": time.time()} if (seen or {}).get("stale") else gr.skip()


def change_turns(project: int, editing: dict, action: str, index: int = 0, role: str = "user") -> dict:
    """Structural edits (add, delete, move a turn); returns a new editing state so the editor redraws."""
    conv = _need(editing, project)
    conn = _conn()
    if action == "add":
        projects.add_turn(conn, conv["id"], role)
    elif action == "delete":
        projects.delete_turn(conn, conv["id"], index)
    else:
        projects.move_turn(conn, conv["id"], index, -1 if action == "up" else 1)
    return editing_state(conv["id"])


def save_tags(project: int, editing: dict, text: str) -> None:
    conv = _need(editing, project)
    projects.set_tags(_conn(), conv["id"], projects.parse_tags(text))


def save_held_out(project: int, editing: dict, held: bool) -> None:
    conv = _selected(editing, project)
    if conv is not None and bool(conv["held_out"]) != bool(held):
        projects.set_held_out(_conn(), [conv["id"]], bool(held))


def record(project: int, editing: dict, customer: str, reply: str) -> tuple[dict, str, str, str]:
    """Record mode: append the customer's line and the ideal reply to the open conversation (or a new one)."""
    conv = _selected(editing, project)
    try:
        cid = projects.append_exchange(_conn(), pid(project), conv["id"] if conv else None, customer, reply)
    except projects.ProjectError as e:
        raise _fail(e)
    return editing_state(cid), "", "", f"Saved to conversation {cid}."


def start_recording() -> tuple[dict, str]:
    return editing_state(), "The next exchange you add starts a new conversation."


def selection_ids(selected: list, editing: dict | None) -> list[int]:
    ids = [int(i) for i in selected or []]
    if not ids and (editing or {}).get("id") is not None:
        ids = [int(editing["id"])]
    return ids


def select_all_shown(table: pd.DataFrame) -> list[int]:
    return [int(i) for i in table["#"]] if table is not None and len(table) else []


def bulk_tag(project: int, selected: list, tag: str) -> str:
    if not selected or not (tag or "").strip():
        raise gr.Error("Select conversations and type a tag to add.")
    projects.add_tag(_conn(), [int(i) for i in selected], tag)
    return f"Tagged {len(selected)} conversation(s) “{tag.strip().lower()}”."


def bulk_hold(project: int, selected: list, held: bool) -> str:
    if not selected:
        raise gr.Error("Select conversations first.")
    projects.set_held_out(_conn(), [int(i) for i in selected], held)
    what = "held out for evaluation (never trained on)" if held else "back in training"
    return f"{len(selected)} conversation(s) {what}."


# ---------------------------------------------------------------- delete, confirm, undo, trash


def ask_delete(kind: str, project: int, selected: list, editing: dict) -> tuple[dict, dict, str]:
    if kind == "project":
        name = store.get_project(_conn(), pid(project))["name"]
        pending = {"kind": "project", "id": pid(project)}
        question = f"Move the project **{name}** and all its conversations to the trash? You can restore it for 30 days."
    else:
        ids = selection_ids(selected, editing)
        if not ids:
            raise gr.Error("Select the conversations to delete first.")
        pending = {"kind": "conversations", "ids": ids}
        question = (f"Move {len(ids)} conversation(s) ({', '.join(map(str, ids[:10]))}{'…' if len(ids) > 10 else ''}) "
                    "to the trash? You can undo this, or restore them from the trash for 30 days.")
    return pending, gr.update(visible=True), question


def confirm_delete(project: int, pending: dict) -> tuple[int, dict, dict, dict, str, dict]:
    conn = _conn()
    if not pending:
        raise gr.Error("Nothing to delete.")
    if pending["kind"] == "project":
        projects.delete_project(conn, pending["id"])
        project, message = projects.current_project(conn), "Project moved to the trash."
    else:
        projects.delete_conversations(conn, pending["ids"])
        message = f"{len(pending['ids'])} conversation(s) moved to the trash."
    return project, editing_state(), {**pending, "done": True}, gr.update(visible=False), message, \
        gr.update(visible=True)


def undo(project: int, last: dict) -> tuple[int, dict, str, dict]:
    conn = _conn()
    if not last or not last.get("done"):
        raise gr.Error("There is nothing to undo.")
    if last["kind"] == "project":
        projects.restore_project(conn, last["id"])
        project = last["id"]
    else:
        projects.restore_conversations(conn, last["ids"])
    return project, editing_state(), "Undone: restored from the trash.", gr.update(visible=False)


def trash_table(project: int) -> pd.DataFrame:
    conn = _conn()
    rows = [["project", p["id"], p["name"], _days_left(p["deleted"])] for p in projects.trashed_projects(conn)]
    rows += [["conversation", c["id"], _first(c["messages"], "user"), _days_left(c["deleted"])]
             for c in store.list_conversations(conn, pid(project), deleted=True)]
    return pd.DataFrame(rows, columns=["what", "#", "name or first message", "days left"])


def _days_left(deleted: float) -> int:
    return max(0, projects.TRASH_DAYS - int((time.time() - deleted) // projects.DAY))


def restore(project: int, table: pd.DataFrame, evt: gr.SelectData) -> tuple[int, dict, str]:
    row = table.iloc[evt.index[0]]
    conn = _conn()
    if row["what"] == "project":
        projects.restore_project(conn, int(row["#"]))
        return int(row["#"]), editing_state(), f"Restored the project “{row['name or first message']}”."
    projects.restore_conversations(conn, [int(row["#"])])
    return pid(project), editing_state(int(row["#"])), f"Restored conversation {row['#']}."


# ---------------------------------------------------------------- import and export


def _read_upload(upload: Any) -> tuple[str, bytes]:
    path = Path(upload if isinstance(upload, str) else upload.name)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise gr.Error(f"{path.name} is {size // 2**20} MiB, over the {MAX_FILE_BYTES // 2**20} MiB cap: split it.")
    return path.name, path.read_bytes()


def csv_columns(upload: Any) -> tuple[dict, dict, dict, dict]:
    """After an upload, offer the CSV's own header names for the prompt and response columns."""
    if not upload:
        return gr.update(visible=False), gr.update(), gr.update(), gr.update()
    name, raw = _read_upload(upload)
    if importers.detect_format(name, raw) != "csv":
        return gr.update(visible=False), gr.update(), gr.update(), gr.update()
    header = importers.csv_header(raw)
    guess = lambda words, i: next((h for h in header if h.lower() in words), header[i] if len(header) > i else None)  # noqa: E731
    return (gr.update(visible=True), gr.update(choices=header, value=guess({"prompt", "question", "user", "input"}, 0)),
            gr.update(choices=header, value=guess({"response", "answer", "reply", "assistant", "output"}, 1)),
            gr.update(choices=["", *header], value=""))


def read_import(upload: Any, pasted: str, fmt: str, prompt_col: str, response_col: str,
                system_col: str) -> tuple[ImportReport, str]:
    """The import report for a file or pasted text; nothing is added to the project here."""
    if upload:
        name, raw = _read_upload(upload)
        wrong = importers.check_extension(name, raw)
        if wrong:
            return ImportReport([], [wrong], []), name
    elif (pasted or "").strip():
        problem = limits.check_text("The pasted text", pasted, limits.MAX_PASTED_CHARS)
        if problem:
            raise gr.Error(problem.replace("Shorten it", "Save it as a file and upload that, or paste less"))
        name, raw = "pasted text", pasted.encode("utf-8")
    else:
        raise gr.Error("Upload a file or paste some conversations first.")
    fmt = importers.detect_format(name, raw) if fmt in (None, "", "auto") else fmt
    if fmt == "csv":
        if not prompt_col or not response_col:
            raise gr.Error("Choose which CSV columns hold the customer's message and the reply.")
        return importers.import_csv(raw, prompt_col, response_col, system_col or None), name
    reader = {"openai": importers.import_openai_jsonl, "sharegpt": importers.import_sharegpt,
              "alpaca": importers.import_alpaca, "pasted": importers.import_pasted}[fmt]
    return reader(raw), name


def preview_import(project: int, upload: Any, pasted: str, fmt: str, prompt_col: str, response_col: str,
                   system_col: str) -> tuple[str, pd.DataFrame, dict, dict]:
    report, name = read_import(upload, pasted, fmt, prompt_col, response_col, system_col)
    report = projects.against_project(_conn(), pid(project), report)
    parts = [f"### {name}: {report.summary()}"]
    if report.problems:
        parts += ["**Rejected** (fix these in the file and import again):", problems_markdown(report.problems)]
    if report.duplicates:
        parts += ["**Duplicates** (left out):", problems_markdown(report.duplicates)]
    if report.warnings:
        parts += ["**Warnings** (imported as they are, but worth a look):", problems_markdown(report.warnings)]
    rows = [[c.line, _first(c.messages, "user"), _first(c.messages[::-1], "assistant"), len(c.messages)]
            for c in report.conversations]
    frame = pd.DataFrame(rows, columns=[report.unit, "customer says", "brand replies", "turns"])
    button = gr.update(visible=report.accepted > 0, value=f"Add {report.accepted} conversation(s) to the project")
    return "\n\n".join(parts), frame, button, {"report": report, "name": name}


def confirm_import(project: int, pending: dict) -> tuple[str, dict, dict, dict]:
    if not pending or "report" not in pending:
        raise gr.Error("Preview the import first.")
    ids = projects.add_imported(_conn(), pid(project), pending["report"].conversations, source=pending["name"])
    return (f"Added {len(ids)} conversation(s) from {pending['name']}.", gr.update(visible=False), {},
            editing_state())


def _export_name(project: int) -> str:
    slug = "".join(ch if ch.isalnum() else "-" for ch in store.get_project(_conn(), pid(project))["name"].lower())
    return f"{slug.strip('-') or 'project'}-{time.strftime('%Y%m%d-%H%M%S')}"


def export_jsonl(project: int) -> str:
    """Every live conversation, held-out ones included, as OpenAI chat JSONL (tags kept beside messages)."""
    convs = store.list_conversations(_conn(), pid(project))
    lines = [importers.json.dumps({"messages": c["messages"], **({"tags": c["tags"]} if c["tags"] else {}),
                                   **({"held_out": True} if c["held_out"] else {})}, ensure_ascii=False) + "\n"
             for c in convs]
    path = store.home() / "exports" / f"{_export_name(project)}.jsonl"
    store.atomic_write_text(path, "".join(lines))
    return downloads.offer(path)


def export_dataset(project: int) -> str:
    """A Hugging Face `datasets` folder, zipped for download."""
    convs = projects.conversations_of(_conn(), pid(project))
    name = _export_name(project)
    with tempfile.TemporaryDirectory() as tmp:
        importers.export_hf_dataset(convs, Path(tmp) / name)
        archive = shutil.make_archive(str(Path(tmp) / name), "zip", tmp, name)
        path = store.home() / "exports" / f"{name}-dataset.zip"
        with store.atomic_file(path, "wb") as f:
            f.write(Path(archive).read_bytes())
    return downloads.offer(path)


# ---------------------------------------------------------------- health


def health(project: int, max_length: float, truncate: bool = False) -> tuple[str, str, dict, dict, dict]:
    """The full check a run needs, with counts, the length distribution and every problem and warning."""
    tok = project_tokenizer(project)
    try:
        report = projects.check_project(_conn(), pid(project), tok, int(max_length or MAX_LENGTH), truncate=truncate)
    except TemplateError as e:
        raise _fail(e)
    lengths = sorted(report.lengths.values())
    auto = store.get_project(_conn(), pid(project))["val_fraction"] is None
    lines = [
        f"**{report.conversations} conversations** · {report.turns} turns · {report.tokens:,} tokens, of which "
        f"{report.trained_tokens:,} carry the loss · {report.held_out} held out for evaluation",
        f"Split: **{report.n_train} to train on, {report.n_val} for validation**"
        + (" (the held-out conversations)" if report.held_out else
           f" ({report.val_fraction:.0%}, {'chosen by size' if auto else 'your setting'})"),
    ]
    if report.drafted:
        lines.insert(1, f"Drafted: **{report.drafted} of the {report.trainable} conversations to train on** "
                        f"({report.drafted / report.trainable:.0%}); drafted ones are never held back for the scorecard")
    if lengths:
        lines.append(f"Length in tokens: shortest {lengths[0]}, median {lengths[len(lengths) // 2]}, "
                     f"longest {lengths[-1]} (max length {int(max_length or MAX_LENGTH)})")
    if report.problems:
        lines += [f"### ⛔ {len(report.problems)} problem(s) block training", problems_markdown(report.problems)]
    else:
        lines.append("### ✅ Ready to train")
    if report.warnings:
        lines += [f"### ⚠️ {len(report.warnings)} warning(s)", problems_markdown(report.warnings)]
    too_long = len(report.over_length)
    shorten = gr.update(visible=bool(too_long or report.shortened),
                        value=f"Drop the last turns of {len(report.shortened) or too_long} long conversation(s)")
    pairs = [(f"#{a} and #{b} ({r:.0%} alike): keep #{a}", f"{a}-{b}") for a, b, r in report.duplicates]
    plot = bar_chart_html(length_buckets(lengths), "Conversations by length (tokens)", fmt="{}", bar_h=16)
    return ("\n\n".join(lines), plot, shorten, gr.update(choices=pairs, value=None, visible=bool(pairs)),
            gr.update(visible=bool(pairs)))


def length_buckets(lengths: list[int]) -> dict[str, int]:
    """A histogram: conversations per token range, in up to 12 equal buckets, shortest first (lengths sorted)."""
    if not lengths:
        return {}
    width = max(1, -(-(lengths[-1] + 1) // 12))
    counts: dict[int, int] = {}
    for n in lengths:
        counts[n // width] = counts.get(n // width, 0) + 1
    return {f"{b * width}-{(b + 1) * width - 1}": counts[b] for b in sorted(counts)}


def shorten_long(project: int, max_length: float) -> str:
    """With the user's consent (the button), long conversations lose their last turns; originals go to the trash."""
    report = projects.check_project(_conn(), pid(project), project_tokenizer(project), int(max_length or MAX_LENGTH),
                                    truncate=True)
    n = projects.apply_shortening(_conn(), report)
    return f"Shortened {n} conversation(s); the full versions are in the trash."


def merge(project: int, pair: str) -> str:
    if not pair:
        raise gr.Error("Choose a pair of duplicates to merge.")
    keep, drop = (int(x) for x in pair.split("-"))
    projects.merge_duplicate(_conn(), keep, drop)
    return f"Kept conversation {keep}; {drop} went to the trash (its tags were kept)."


# ---------------------------------------------------------------- layout


def _editor(project: gr.State, editing: gr.State, seen: gr.State, after_edit: list) -> None:
    """One row per turn, drawn from the database whenever the conversation's structure changes."""
    @gr.render(inputs=[project, editing])
    def turns(pid: int, state: dict) -> None:
        conv = _selected(state, pid)
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


def build_data_tab() -> gr.State:
    """Returns the current project's id as a gr.State, which the Train and Compare tabs read.

    Every component starts empty: the page is built once, before any visitor is known, so a value read here
    would come from the root workspace and be shown to everyone. The visitor's own values arrive on page load.
    """
    project = gr.State(None)
    editing = gr.State({"id": None, "rev": 0})  # the conversation open in the editor
    seen = gr.State({})  # the version of it the editor shows: saves over a newer one are refused
    shown = gr.State({})  # the style guide and system prompt as the boxes show them
    pending, last_delete, pending_import = gr.State({}), gr.State({}), gr.State({})
    examples = list(list_examples())

    with gr.Row(equal_height=True):
        picker = gr.Dropdown([], value=None, label="Project (one brand voice)", scale=3)
        new_name = gr.Textbox(label="New project", placeholder="e.g. Cosmo Coffee", scale=2, max_lines=1)
        create = gr.Button("Create project", scale=1)
    with gr.Row(equal_height=True):
        example = gr.Dropdown(examples, value=examples[0] if examples else None, scale=3,
                              label="No data yet? Start from a bundled example voice")
        load_ex = gr.Button("Load example as a new project", scale=1)
    with gr.Accordion("Project settings", open=False):
        with gr.Row():
            name_box = gr.Textbox(label="Project name", max_lines=1, scale=3)
            val_share = gr.Number(label="Validation share (empty: chosen by size)", minimum=0, maximum=0.45,
                                  step=0.05, scale=2)
            delete_project = gr.Button("Delete project…", variant="stop", scale=1)
        from voicetune.ui.base_model import build_base_settings

        build_base_settings(project)
        style_guide = gr.Textbox(label="Style guide (used by the prompt-only arm and the scorecard)", lines=3)
        system_prompt = gr.Textbox(label="Default system prompt", lines=2)
    status = gr.Markdown()
    with gr.Row(visible=False) as confirm_row:
        question = gr.Markdown()
        yes = gr.Button("Yes, move to trash", variant="stop", size="sm")
        no = gr.Button("Cancel", size="sm")
    undo_btn = gr.Button("↶ Undo delete", visible=False, size="sm")

    with gr.Tabs():
        with gr.Tab("Conversations"):
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
            title = gr.Markdown("### Pick a conversation in the table, or start a new one.")
            with gr.Row(equal_height=True):
                tags_box = gr.Textbox(label="Tags (comma-separated)", max_lines=1, scale=3)
                held = gr.Checkbox(label="Held out for evaluation (never trained on)", scale=2)
                dup_btn = gr.Button("Duplicate", size="sm", scale=1)
                del_btn = gr.Button("Delete…", variant="stop", size="sm", scale=1)
            after_edit: list = []  # filled below, once the outputs exist
            _editor(project, editing, seen, after_edit)
            with gr.Row():
                add_user = gr.Button("+ Customer turn", size="sm")
                add_reply = gr.Button("+ Brand reply", size="sm")
                add_system = gr.Button("+ Instructions", size="sm")
            live = gr.Markdown()
            mask = gr.HighlightedText(label="Preview", color_map=MASK_COLORS, combine_adjacent=True, show_legend=False)
        with gr.Tab("Record"):
            gr.Markdown("Type what a customer says, then the reply you wish your brand had given. Each exchange is "
                        "saved at once to the open conversation; *Start a new conversation* begins another.")
            chat = gr.Chatbot(label="The conversation so far", height=280)
            customer = gr.Textbox(label="Customer says", lines=2)
            reply = gr.Textbox(label="Ideal brand reply", lines=3)
            with gr.Row():
                rec_btn = gr.Button("Add exchange", variant="primary")
                fresh_btn = gr.Button("Start a new conversation")
        with gr.Tab("Import"):
            gr.Markdown("Formats: OpenAI chat JSONL (a `weight` of 0 or 1 on replies is kept), ShareGPT, Alpaca, "
                        "CSV with a header row, or pasted text like `User: …` / `Assistant: …` with `---` between "
                        "conversations. You see a report before anything is added.")
            with gr.Row():
                upload = gr.File(label="File (.jsonl, .json, .csv, .txt; up to 50 MB)", file_types=[
                    ".jsonl", ".json", ".csv", ".tsv", ".txt"], scale=1)
                pasted = gr.Textbox(label="…or paste conversations", lines=6, scale=1,
                                    placeholder="User: Do you ship abroad?\nAssistant: We do! …\n---\nUser: …")
            fmt = gr.Dropdown(FORMATS, value="auto", label="Format")
            with gr.Row(visible=False) as csv_row:
                prompt_col = gr.Dropdown([], label="Column with the customer's message", allow_custom_value=True)
                response_col = gr.Dropdown([], label="Column with the reply", allow_custom_value=True)
                system_col = gr.Dropdown([""], value="", label="Column with a system prompt (optional)",
                                         allow_custom_value=True)
            preview_btn = gr.Button("Preview import", variant="primary")
            import_report = gr.Markdown()
            import_table = gr.Dataframe(interactive=False, wrap=True, max_height=300, label="Will be added")
            add_btn = gr.Button("Add to the project", variant="primary", visible=False)
        with gr.Tab("Draft"):
            from voicetune.ui.draft_tab import build_draft_tab

            build_draft_tab(project, editing)
        with gr.Tab("Export"):
            gr.Markdown("Every conversation of the project, held-out ones included.")
            with gr.Row():
                jsonl_btn = gr.Button("OpenAI chat JSONL")
                ds_btn = gr.Button("Hugging Face dataset (zipped folder)")
            download = gr.File(label="Download", interactive=False)
        with gr.Tab("Health"):
            with gr.Row(equal_height=True):
                max_len = gr.Number(MAX_LENGTH, precision=0, minimum=16, label="Max length (tokens)", scale=1)
                check_btn = gr.Button("Check all conversations", variant="primary", scale=2)
            summary = gr.Markdown()
            lengths = gr.HTML()
            shorten_btn = gr.Button("Drop the last turns of long conversations", visible=False)
            with gr.Row(equal_height=True):
                dupes = gr.Dropdown([], label="Duplicates to merge", visible=False, scale=3)
                merge_btn = gr.Button("Merge (keep the first)", scale=1, visible=False)
        with gr.Tab("Trash"):
            gr.Markdown(f"Deleted projects and conversations stay here for {projects.TRASH_DAYS} days. "
                        "Click a row to restore it.")
            trash = gr.Dataframe(interactive=False, wrap=True, label="Trash")

    # ---- wiring: every write goes to the database at once, then the view is read back from it
    view_io = (view, [project, editing, query, tag], [table, tag, chosen, title, tags_box, held, live, mask, chat])
    after_edit.extend(view_io)
    project_io = (project_view, project, [picker, name_box, style_guide, system_prompt, val_share, trash, shown])
    health_io = (health, [project, max_len], [summary, lengths, shorten_btn, dupes, merge_btn])

    def refresh_all(event: Any) -> Any:
        return event.then(*project_io).then(*view_io)

    # On page load everything is read back from the database: nothing lives only in the browser.
    gr.context.Context.root_block.load(open_current, None, project).then(*project_io).then(*view_io)
    project.change(*project_io).then(*view_io).then(*health_io)
    editing.change(*view_io)
    editing.change(editor_version, [project, editing], seen)
    picker.input(switch_project, picker, [project, editing])
    create.click(create_project, new_name, [project, editing, new_name, status], api_name="create_project")
    new_name.submit(create_project, new_name, [project, editing, new_name, status])
    load_ex.click(load_example_project, example, [project, editing, status], api_name="load_example_project")
    name_box.blur(rename, [project, name_box], status).then(*project_io)
    for box, key in ((style_guide, "style_guide"), (system_prompt, "system_prompt")):
        box.blur(functools.partial(save_text_setting, key=key), [project, box, shown], [box, shown])
    val_share.blur(functools.partial(save_setting, key="val_fraction"), [project, val_share], None).then(*health_io)

    query.submit(*view_io, api_name="view")
    query.blur(*view_io)
    tag.input(*view_io)
    table.select(select_row, table, editing)
    new_btn.click(new_conversation, project, [editing, status], api_name="new_conversation")
    dup_btn.click(duplicate, [project, editing], [editing, status], api_name="duplicate")
    tags_box.blur(save_tags, [project, editing, tags_box], None, api_name="set_tags").then(*view_io)
    held.input(save_held_out, [project, editing, held], None, api_name="set_held_out").then(*view_io)
    for button, role in ((add_user, "user"), (add_reply, "assistant"), (add_system, "system")):
        button.click(functools.partial(change_turns, action="add", role=role), [project, editing], editing)
    rec_btn.click(record, [project, editing, customer, reply], [editing, customer, reply, status], api_name="record")
    reply.submit(record, [project, editing, customer, reply], [editing, customer, reply, status])
    fresh_btn.click(start_recording, None, [editing, status])
    all_btn.click(select_all_shown, table, chosen)
    bulk_tag_btn.click(bulk_tag, [project, chosen, bulk_tag_box], status).then(*view_io)
    hold_btn.click(functools.partial(bulk_hold, held=True), [project, chosen], status).then(*view_io)
    train_btn.click(functools.partial(bulk_hold, held=False), [project, chosen], status).then(*view_io)

    ask = [pending, confirm_row, question]
    del_btn.click(functools.partial(ask_delete, "conversations"), [project, gr.State([]), editing], ask)
    bulk_delete.click(functools.partial(ask_delete, "conversations"), [project, chosen, editing], ask)
    delete_project.click(functools.partial(ask_delete, "project"), [project, chosen, editing], ask)
    refresh_all(yes.click(confirm_delete, [project, pending], [project, editing, last_delete, confirm_row, status,
                                                                undo_btn], api_name="confirm_delete"))
    no.click(lambda: ({}, gr.update(visible=False)), None, [pending, confirm_row])
    refresh_all(undo_btn.click(undo, [project, last_delete], [project, editing, status, undo_btn], api_name="undo"))
    refresh_all(trash.select(restore, [project, trash], [project, editing, status]))

    upload.change(csv_columns, upload, [csv_row, prompt_col, response_col, system_col])
    preview_btn.click(preview_import, [project, upload, pasted, fmt, prompt_col, response_col, system_col],
                      [import_report, import_table, add_btn, pending_import], api_name="preview_import")
    add_btn.click(confirm_import, [project, pending_import], [status, add_btn, pending_import, editing],
                  api_name="confirm_import").then(*health_io)

    jsonl_btn.click(export_jsonl, project, download, api_name="export_jsonl")
    ds_btn.click(export_dataset, project, download, api_name="export_dataset")

    check_btn.click(*health_io, api_name="check_project")
    refresh_all(shorten_btn.click(shorten_long, [project, max_len], status)).then(*health_io)
    refresh_all(merge_btn.click(merge, [project, dupes], status)).then(*health_io)
    return project
