"""The Export sub-tab: every conversation of the project, held-out ones included, as OpenAI chat JSONL or as
a zipped Hugging Face dataset folder.

    path = export_jsonl(project_id)    # what the "OpenAI chat JSONL" button offers
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import gradio as gr

from voicetune import importers, projects, store
from voicetune.ui import downloads
from voicetune.ui.data_tab.shared import DataTab, conn
from voicetune.ui.session import pid


def _export_name(project: int) -> str:
    slug = "".join(ch if ch.isalnum() else "-" for ch in store.get_project(conn(), pid(project))["name"].lower())
    return f"{slug.strip('-') or 'project'}-{time.strftime('%Y%m%d-%H%M%S')}"


def export_jsonl(project: int) -> str:
    """Every live conversation, held-out ones included, as OpenAI chat JSONL (tags kept beside messages)."""
    convs = store.list_conversations(conn(), pid(project))
    lines = [importers.json.dumps({"messages": c["messages"], **({"tags": c["tags"]} if c["tags"] else {}),
                                   **({"held_out": True} if c["held_out"] else {})}, ensure_ascii=False) + "\n"
             for c in convs]
    path = store.home() / "exports" / f"{_export_name(project)}.jsonl"
    store.atomic_write_text(path, "".join(lines))
    return downloads.offer(path)


def export_dataset(project: int) -> str:
    """A Hugging Face `datasets` folder, zipped for download."""
    convs = projects.conversations_of(conn(), pid(project))
    name = _export_name(project)
    with tempfile.TemporaryDirectory() as tmp:
        importers.export_hf_dataset(convs, Path(tmp) / name)
        archive = shutil.make_archive(str(Path(tmp) / name), "zip", tmp, name)
        path = store.home() / "exports" / f"{name}-dataset.zip"
        with store.atomic_file(path, "wb") as f:
            f.write(Path(archive).read_bytes())
    return downloads.offer(path)


def build_export(tab: DataTab) -> None:
    gr.Markdown("Every conversation of the project, held-out ones included.")
    with gr.Row():
        jsonl_btn = gr.Button("OpenAI chat JSONL")
        ds_btn = gr.Button("Hugging Face dataset (zipped folder)")
    download = gr.File(label="Download", interactive=False)
    jsonl_btn.click(export_jsonl, tab.project, download, api_name="export_jsonl")
    ds_btn.click(export_dataset, tab.project, download, api_name="export_dataset")
