"""Add a teammate's adapter: upload the zip their Export tab made, and it becomes a run to chat with and score.

The zip is checked by voicetune.archives (size, entry count, expansion ratio, paths, file kinds, and that it
was trained on this app's base model) before anything is written to the workspace.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from voicetune import archives
from voicetune.ui.settings import MAX_UPLOAD_MB


def add_shared_adapter(upload: str | None) -> str:
    if not upload:
        raise gr.Error("Choose the adapter zip to add first.")
    try:
        run_id = archives.import_adapter_zip(Path(upload))
    except archives.ArchiveError as e:
        raise gr.Error(f"This zip was not added: {e}") from None
    return f"Added as run `{run_id}`: pick it on the Compare tab to chat with it."


def build_shared_adapter() -> gr.events.Dependency:
    """Returns the event that adds a run, so the app can refresh the run lists after it."""
    with gr.Accordion("Add a teammate's adapter (.zip)", open=False):
        gr.Markdown("A zip made with **Make adapter zip** on another voicetune, trained on the same base model.")
        upload = gr.File(label=f"Adapter zip (up to {MAX_UPLOAD_MB} MB)", file_types=[".zip"], type="filepath",
                         height=100)
        add_btn = gr.Button("Add adapter")
        msg = gr.Markdown()
    return add_btn.click(add_shared_adapter, upload, msg, api_name="add_shared_adapter")
