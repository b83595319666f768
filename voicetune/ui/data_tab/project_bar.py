"""The bar above the Data tab's sub-tabs: the project picker, a new or example project, the project's
settings, the status line, and the delete confirmation with its undo (for projects and conversations alike).

    bar = build_project_bar(tab, trash_list)   # before the sub-tabs
    wire_project_bar(tab, bar)                 # after them: its events refresh every sub-tab
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import gradio as gr

from voicetune import limits, projects, store
from voicetune.data import list_examples
from voicetune.ui.data_tab.shared import DataTab, conn, editing_state, fail
from voicetune.ui.data_tab.trash import trash_table
from voicetune.ui.session import pid

STALE_SETTING = ("The {what} was changed in another tab or window since this page showed it, so your edit was not "
                 "saved. The box now shows the saved text: make your change again there.")


# ---------------------------------------------------------------- projects


def project_choices() -> list[tuple[str, int]]:
    return [(p["name"], p["id"]) for p in projects.list_projects(conn())]


def open_current() -> int:
    """The project to show on page load: the one last opened (trash older than 30 days is emptied here)."""
    db = conn()
    projects.purge_trash(db)
    return projects.current_project(db)


def switch_project(project: Any) -> tuple[int, dict]:
    if project in (None, ""):
        raise gr.Error("Choose a project.")
    try:
        projects.open_project(conn(), pid(project))
    except (KeyError, projects.ProjectError) as e:
        raise fail(e)
    return pid(project), editing_state()


def create_project(name: str) -> tuple[int, dict, str, str]:
    try:
        from voicetune.ui.base_model import suggested_base

        new = projects.create_project(conn(), name, base_model=suggested_base())
    except projects.ProjectError as e:
        raise fail(e)
    return new, editing_state(), "", f"Created project “{name.strip()}”."


def load_example_project(name: str) -> tuple[int, dict, str]:
    try:
        new = projects.load_example(conn(), name)
    except projects.ProjectError as e:
        raise fail(e)
    project = store.get_project(conn(), new)
    return new, editing_state(), f"Loaded the example voice into the new project “{project['name']}”."


def project_view(project: int) -> tuple:
    """Everything about the project itself: picker, settings and trash; and the texts the boxes now show, so a
    save can tell whether another tab changed them since."""
    p = store.get_project(conn(), pid(project))
    val = p["val_fraction"]
    shown = {"style_guide": p["style_guide"], "system_prompt": p["system_prompt"]}
    return (gr.update(choices=project_choices(), value=p["id"]), p["name"], p["style_guide"], p["system_prompt"],
            val, trash_table(project), shown)


def rename(project: int, name: str) -> str:
    try:
        if name.strip() != store.get_project(conn(), pid(project))["name"]:
            projects.rename_project(conn(), pid(project), name)
    except projects.ProjectError as e:
        raise fail(e)
    return ""


def save_text_setting(project: int, value: str, shown: dict | None, *, key: str) -> tuple[Any, dict]:
    """The style guide or default system prompt, saved only over the text this page showed (else refreshed)."""
    try:
        save_setting(project, value, key=key, expected={key: shown[key]} if shown and key in shown else None)
    except StaleView:
        gr.Warning(STALE_SETTING.format(what=key.replace("_", " ")))
        current = store.get_project(conn(), pid(project))[key]
        return current, {**(shown or {}), key: current}
    return gr.skip(), {**(shown or {}), key: value or ""}


def save_setting(project: int, value: Any, *, key: str, expected: dict | None = None) -> None:
    problem = limits.check_text("The style guide", value, limits.MAX_SYSTEM_PROMPT_CHARS) if key == "style_guide" else None
    if problem:
        raise gr.Error(problem + " It was not saved.")
    if key == "val_fraction" and value is not None and not 0 <= float(value) < 0.5:
        raise gr.Error("The validation share must be at least 0 and below 0.5 (e.g. 0.1 for 10%), or empty for automatic.")
    try:
        store.update_project(conn(), pid(project), expected=expected,
                             **{key: value if key == "val_fraction" else (value or "")})
    except store.StaleWrite:
        raise StaleView(key) from None


class StaleView(Exception):
    """A save refused because another tab changed the same text since this page showed it."""


# ---------------------------------------------------------------- delete, confirm, undo


def selection_ids(selected: list, editing: dict | None) -> list[int]:
    """The conversations a delete means: those selected, else the one open in the editor."""
    ids = [int(i) for i in selected or []]
    if not ids and (editing or {}).get("id") is not None:
        ids = [int(editing["id"])]
    return ids


def ask_delete(kind: str, project: int, selected: list, editing: dict) -> tuple[dict, dict, str]:
    if kind == "project":
        name = store.get_project(conn(), pid(project))["name"]
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
    db = conn()
    if not pending:
        raise gr.Error("Nothing to delete.")
    if pending["kind"] == "project":
        projects.delete_project(db, pending["id"])
        project, message = projects.current_project(db), "Project moved to the trash."
    else:
        projects.delete_conversations(db, pending["ids"])
        message = f"{len(pending['ids'])} conversation(s) moved to the trash."
    return project, editing_state(), {**pending, "done": True}, gr.update(visible=False), message, \
        gr.update(visible=True)


def undo(project: int, last: dict) -> tuple[int, dict, str, dict]:
    db = conn()
    if not last or not last.get("done"):
        raise gr.Error("There is nothing to undo.")
    if last["kind"] == "project":
        projects.restore_project(db, last["id"])
        project = last["id"]
    else:
        projects.restore_conversations(db, last["ids"])
    return project, editing_state(), "Undone: restored from the trash.", gr.update(visible=False)


# ---------------------------------------------------------------- layout and wiring


@dataclass
class ProjectBar:
    """The bar's components, kept from its layout to its wiring (which waits for the sub-tabs)."""

    picker: gr.Dropdown
    new_name: gr.Textbox
    create: gr.Button
    example: gr.Dropdown
    load_ex: gr.Button
    name_box: gr.Textbox
    val_share: gr.Number
    delete_project: gr.Button
    style_guide: gr.Textbox
    system_prompt: gr.Textbox
    confirm_row: gr.Row
    yes: gr.Button
    no: gr.Button
    undo_btn: gr.Button
    pending: gr.State  # the delete the confirm row asks about
    last_delete: gr.State  # the delete the undo button reverses


def build_project_bar(tab: DataTab, trash_list: gr.Dataframe) -> ProjectBar:
    """Lays out the bar and sets `tab.status`, `tab.ask` and `tab.project_view` (which reads back the trash too,
    so `trash_list` is made before the bar and placed in the Trash sub-tab)."""
    picker, new_name, create, example, load_ex = _project_rows()
    with gr.Accordion("Project settings", open=False):
        with gr.Row():
            name_box = gr.Textbox(label="Project name", max_lines=1, scale=3)
            val_share = gr.Number(label="Validation share (empty: chosen by size)", minimum=0, maximum=0.45,
                                  step=0.05, scale=2)
            delete_project = gr.Button("Delete project…", variant="stop", scale=1)
        from voicetune.ui.base_model import build_base_settings

        build_base_settings(tab.project)
        style_guide = gr.Textbox(label="Style guide (used by the prompt-only arm and the scorecard)", lines=3)
        system_prompt = gr.Textbox(label="Default system prompt", lines=2)
    tab.status = gr.Markdown()
    with gr.Row(visible=False) as confirm_row:
        question = gr.Markdown()
        yes = gr.Button("Yes, move to trash", variant="stop", size="sm")
        no = gr.Button("Cancel", size="sm")
    undo_btn = gr.Button("↶ Undo delete", visible=False, size="sm")
    pending, last_delete = gr.State({}), gr.State({})
    tab.ask = [pending, confirm_row, question]
    tab.project_view = (project_view, tab.project,
                        [picker, name_box, style_guide, system_prompt, val_share, trash_list, tab.shown])
    return ProjectBar(picker, new_name, create, example, load_ex, name_box, val_share, delete_project, style_guide,
                      system_prompt, confirm_row, yes, no, undo_btn, pending, last_delete)


def _project_rows() -> tuple[gr.Dropdown, gr.Textbox, gr.Button, gr.Dropdown, gr.Button]:
    """The picker with a new project beside it, and a bundled example voice to start from."""
    examples = list(list_examples())
    with gr.Row(equal_height=True):
        picker = gr.Dropdown([], value=None, label="Project (one brand voice)", scale=3)
        new_name = gr.Textbox(label="New project", placeholder="e.g. Cosmo Coffee", scale=2, max_lines=1)
        create = gr.Button("Create project", scale=1)
    with gr.Row(equal_height=True):
        example = gr.Dropdown(examples, value=examples[0] if examples else None, scale=3,
                              label="No data yet? Start from a bundled example voice")
        load_ex = gr.Button("Load example as a new project", scale=1)
    return picker, new_name, create, example, load_ex


def wire_project_bar(tab: DataTab, bar: ProjectBar) -> None:
    """Every write goes to the database at once, then what it changed is read back from it."""
    project, editing, status = tab.project, tab.editing, tab.status
    # On page load everything is read back from the database: nothing lives only in the browser.
    gr.context.Context.root_block.load(open_current, None, project).then(*tab.project_view).then(*tab.view)
    project.change(*tab.project_view).then(*tab.view).then(*tab.health)
    bar.picker.input(switch_project, bar.picker, [project, editing])
    bar.create.click(create_project, bar.new_name, [project, editing, bar.new_name, status], api_name="create_project")
    bar.new_name.submit(create_project, bar.new_name, [project, editing, bar.new_name, status])
    bar.load_ex.click(load_example_project, bar.example, [project, editing, status], api_name="load_example_project")
    bar.name_box.blur(rename, [project, bar.name_box], status).then(*tab.project_view)
    for box, key in ((bar.style_guide, "style_guide"), (bar.system_prompt, "system_prompt")):
        box.blur(functools.partial(save_text_setting, key=key), [project, box, tab.shown], [box, tab.shown])
    bar.val_share.blur(functools.partial(save_setting, key="val_fraction"), [project, bar.val_share], None).then(
        *tab.health)
    _wire_delete(tab, bar)


def _wire_delete(tab: DataTab, bar: ProjectBar) -> None:
    """Deleting the project asks first; a confirmed delete (of it or of conversations) can be undone."""
    project, editing = tab.project, tab.editing
    bar.delete_project.click(functools.partial(ask_delete, "project"), [project, gr.State([]), editing], tab.ask)
    tab.refresh_all(bar.yes.click(confirm_delete, [project, bar.pending], [project, editing, bar.last_delete,
                                                                            bar.confirm_row, tab.status, bar.undo_btn],
                                  api_name="confirm_delete"))
    bar.no.click(lambda: ({}, gr.update(visible=False)), None, [bar.pending, bar.confirm_row])
    tab.refresh_all(bar.undo_btn.click(undo, [project, bar.last_delete], [project, editing, tab.status, bar.undo_btn],
                                       api_name="undo"))
