"""The Trash sub-tab: deleted projects and conversations, kept for `projects.TRASH_DAYS` days; a click on a
row restores it.

    trash_list = make_trash_list()        # before the project bar, which reads it back
    build_trash(tab, trash_list)          # inside the Trash sub-tab
"""

from __future__ import annotations

import time

import gradio as gr
import pandas as pd

from voicetune import projects, store
from voicetune.ui.data_tab.shared import DataTab, conn, editing_state, first
from voicetune.ui.session import pid


def trash_table(project: int) -> pd.DataFrame:
    db = conn()
    rows = [["project", p["id"], p["name"], _days_left(p["deleted"])] for p in projects.trashed_projects(db)]
    rows += [["conversation", c["id"], first(c["messages"], "user"), _days_left(c["deleted"])]
             for c in store.list_conversations(db, pid(project), deleted=True)]
    return pd.DataFrame(rows, columns=["what", "#", "name or first message", "days left"])


def _days_left(deleted: float) -> int:
    return max(0, projects.TRASH_DAYS - int((time.time() - deleted) // projects.DAY))


def restore(project: int, table: pd.DataFrame, evt: gr.SelectData) -> tuple[int, dict, str]:
    row = table.iloc[evt.index[0]]
    db = conn()
    if row["what"] == "project":
        projects.restore_project(db, int(row["#"]))
        return int(row["#"]), editing_state(), f"Restored the project “{row['name or first message']}”."
    projects.restore_conversations(db, [int(row["#"])])
    return pid(project), editing_state(int(row["#"])), f"Restored conversation {row['#']}."


def make_trash_list() -> gr.Dataframe:
    """Made before it is placed (render=False): the project bar, built first, reads it back with the project."""
    return gr.Dataframe(interactive=False, wrap=True, label="Trash", render=False)


def build_trash(tab: DataTab, trash_list: gr.Dataframe) -> None:
    gr.Markdown(f"Deleted projects and conversations stay here for {projects.TRASH_DAYS} days. "
                "Click a row to restore it.")
    trash_list.render()
    tab.refresh_all(trash_list.select(restore, [tab.project, trash_list], [tab.project, tab.editing, tab.status]))
