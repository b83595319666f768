"""Data tab: the data studio. Projects, a table of conversations, an editor and record mode, import with a
report before anything is added, export, a health check, and the trash; one module per sub-tab here, the
project bar above them in `project_bar.py`, and what they share in `shared.py`.

    project = build_data_tab()   # in app.build_app, inside the "1 · Data" tab

Every edit is written to the database the moment it is made (on blur, submit or click), and everything
on screen is read back from the database, so a reload or a restarted app shows exactly what was saved.
"""

from __future__ import annotations

import gradio as gr

from voicetune.ui.data_tab.conversations import build_conversations
from voicetune.ui.data_tab.exporting import build_export
from voicetune.ui.data_tab.health import build_health
from voicetune.ui.data_tab.importing import build_import
from voicetune.ui.data_tab.project_bar import build_project_bar, wire_project_bar
from voicetune.ui.data_tab.record import build_record, make_transcript
from voicetune.ui.data_tab.shared import DataTab
from voicetune.ui.data_tab.trash import build_trash, make_trash_list


def build_data_tab() -> gr.State:
    """Returns the current project's id as a gr.State, which the Train and Compare tabs read.

    Every component starts empty: the page is built once, before any visitor is known, so a value read here
    would come from the root workspace and be shown to everyone. The visitor's own values arrive on page load.
    Each sub-tab wires its own events as it is built, chaining the refreshers of those built before it; the
    two outputs a sub-tab built earlier refreshes (the trash list, the Record transcript) are made first.
    """
    tab = DataTab.create()
    trash_list, transcript = make_trash_list(), make_transcript()
    bar = build_project_bar(tab, trash_list)
    with gr.Tabs():
        with gr.Tab("Conversations"):
            tab.view = build_conversations(tab, transcript)
        with gr.Tab("Record"):
            build_record(tab, transcript)
        with gr.Tab("Import"):
            imported = build_import(tab)
        with gr.Tab("Draft"):
            from voicetune.ui.draft_tab import build_draft_tab

            build_draft_tab(tab.project, tab.editing)
        with gr.Tab("Export"):
            build_export(tab)
        with gr.Tab("Health"):
            tab.health = build_health(tab, after=[imported])
        with gr.Tab("Trash"):
            build_trash(tab, trash_list)
    wire_project_bar(tab, bar)  # last: the bar's events refresh every sub-tab
    return tab.project
