"""The Import sub-tab: a file or pasted text in any of the supported formats, with a report of what would be
added, rejected or left out as a duplicate before anything is added.

    report, name = read_import(None, "User: Hi\\nAssistant: Hello!", "auto", "", "", "")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from voicetune import importers, limits, projects
from voicetune.data import MAX_FILE_BYTES
from voicetune.importers import ImportReport
from voicetune.ui.data_tab.shared import DataTab, conn, editing_state, first, problems_markdown
from voicetune.ui.session import pid

FORMATS = [("Detect automatically", "auto"), ("OpenAI chat JSONL", "openai"), ("ShareGPT", "sharegpt"),
           ("Alpaca", "alpaca"), ("CSV / spreadsheet", "csv"), ("Pasted User:/Assistant: text", "pasted")]


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
    report = projects.against_project(conn(), pid(project), report)
    parts = [f"### {name}: {report.summary()}"]
    if report.problems:
        parts += ["**Rejected** (fix these in the file and import again):", problems_markdown(report.problems)]
    if report.duplicates:
        parts += ["**Duplicates** (left out):", problems_markdown(report.duplicates)]
    if report.warnings:
        parts += ["**Warnings** (imported as they are, but worth a look):", problems_markdown(report.warnings)]
    rows = [[c.line, first(c.messages, "user"), first(c.messages[::-1], "assistant"), len(c.messages)]
            for c in report.conversations]
    frame = pd.DataFrame(rows, columns=[report.unit, "customer says", "brand replies", "turns"])
    button = gr.update(visible=report.accepted > 0, value=f"Add {report.accepted} conversation(s) to the project")
    return "\n\n".join(parts), frame, button, {"report": report, "name": name}


def confirm_import(project: int, pending: dict) -> tuple[str, dict, dict, dict]:
    if not pending or "report" not in pending:
        raise gr.Error("Preview the import first.")
    ids = projects.add_imported(conn(), pid(project), pending["report"].conversations, source=pending["name"])
    return (f"Added {len(ids)} conversation(s) from {pending['name']}.", gr.update(visible=False), {},
            editing_state())


def build_import(tab: DataTab) -> Any:
    """Lays out and wires the sub-tab; returns the event of a confirmed import, for Health (built later) to
    chain its check onto."""
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
    pending_import = gr.State({})
    upload.change(csv_columns, upload, [csv_row, prompt_col, response_col, system_col])
    preview_btn.click(preview_import, [tab.project, upload, pasted, fmt, prompt_col, response_col, system_col],
                      [import_report, import_table, add_btn, pending_import], api_name="preview_import")
    return add_btn.click(confirm_import, [tab.project, pending_import], [tab.status, add_btn, pending_import, tab.editing],
                         api_name="confirm_import")
