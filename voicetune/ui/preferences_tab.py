"""The project's preference pairs (in Compare) and "Improve from preferences" (in Train): thin views over
voicetune/preferences.py and voicetune/dpo.py.

A pair is one reply preferred over another to the same prompt: a blind vote's winner over its loser, or a
"teach it this" edit over the reply it started from, or a line of an imported prompt/chosen/rejected file.
"""

from __future__ import annotations

import time
from typing import Any

import gradio as gr
import pandas as pd

from voicetune import dpo, models, preferences, runs, store
from voicetune.data import DataError
from voicetune.ui import downloads
from voicetune.ui.session import pid

PAIR_COLUMNS = ["id", "source", "arms (chosen › rejected)", "date", "excluded", "prompt", "chosen", "rejected"]
EXPLAIN_DPO = ("Improve from preferences trains a finished run further with DPO: it makes the replies people "
               "preferred more likely than the ones they rejected, while staying close to the run it starts from.")


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _arms(row: dict[str, Any]) -> str:
    """Which arm's reply won over which, in one column (an imported pair names none)."""
    if not (row["chosen_arm"] or row["rejected_arm"]):
        return "none (imported)"
    return f"{row['chosen_arm'] or '?'} › {row['rejected_arm'] or '?'}"


def pairs_frame(project: int | None) -> pd.DataFrame:
    rows = store.list_preference_pairs(store.connect(), pid(project))
    return pd.DataFrame([[r["id"], r["source"], _arms(r),
                          time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"])), "yes" if r["excluded"] else "no",
                          _short(next((m["content"] for m in reversed(r["prompt"]) if m["role"] == "user"), "")),
                          _short(r["chosen"]), _short(r["rejected"])] for r in rows], columns=PAIR_COLUMNS)


def _pair(pair_id: float | None) -> dict[str, Any]:
    try:
        return store.get_preference_pair(store.connect(), int(pair_id or 0))
    except KeyError:
        raise gr.Error(f"There is no pair {int(pair_id or 0)} in this workspace: pick an id from the table.") from None


def _mine(pair_id: float | None, project: int | None) -> dict[str, Any]:
    row = _pair(pair_id)
    if row["project_id"] != pid(project):
        raise gr.Error(f"Pair {row['id']} belongs to another project: pick an id from the table.")
    return row


def load_pair(pair_id: float | None, project: int | None) -> tuple[str, str]:
    row = _mine(pair_id, project)
    return row["chosen"], row["rejected"]


def save_pair(pair_id: float | None, chosen: str, rejected: str, project: int | None) -> tuple[pd.DataFrame, str]:
    row = _mine(pair_id, project)
    if not (chosen or "").strip() or not (rejected or "").strip():
        raise gr.Error("Both replies need text: to drop the pair, use Exclude or Delete.")
    store.update_preference_pair(store.connect(), row["id"], chosen=chosen.strip(), rejected=rejected.strip())
    return pairs_frame(project), f"Pair {row['id']} saved."


def toggle_excluded(pair_id: float | None, project: int | None) -> tuple[pd.DataFrame, str]:
    row = _mine(pair_id, project)
    store.update_preference_pair(store.connect(), row["id"], excluded=not row["excluded"])
    return pairs_frame(project), f"Pair {row['id']} {'included again' if row['excluded'] else 'excluded from training'}."


def delete_pair(pair_id: float | None, project: int | None) -> tuple[pd.DataFrame, str]:
    row = _mine(pair_id, project)
    store.delete_preference_pair(store.connect(), row["id"])
    return pairs_frame(project), f"Pair {row['id']} deleted."


def import_file(path: str | None, project: int | None) -> tuple[pd.DataFrame, str]:
    if not path:
        raise gr.Error("Choose a .jsonl file of prompt/chosen/rejected lines first.")
    conn = store.connect()
    project_row = store.get_project(conn, pid(project))
    try:
        with open(path, "rb") as f:
            ids = preferences.import_pairs(conn, pid(project), f.read(), base_model=project_row["base_model"])
    except DataError as e:
        shown = "; ".join(str(p) for p in e.problems[:5])
        raise gr.Error(f"Nothing was imported: {len(e.problems)} problem(s): {shown}") from None
    return pairs_frame(project), f"Imported {len(ids)} pairs."


def _tokenizer(base_model: str) -> Any | None:
    """The project's base tokenizer for the length check; None when the base is not on this machine yet."""
    try:
        return models.load_tokenizer(models.resolve_base_model(base_model or None))
    except Exception:  # noqa: BLE001 - the other checks still run
        return None


def health_markdown(project: int | None, max_length: float = 1024) -> str:
    conn = store.connect()
    project_row = store.get_project(conn, pid(project))
    ties = sum(v["choice"] in ("tie", "both_bad") for v in store.list_votes(conn, pid(project)))
    tokenizer = _tokenizer(project_row["base_model"])
    report = preferences.health(store.list_preference_pairs(conn, pid(project)), tokenizer, int(max_length), ties)
    lines = report.lines() or [f"{report.pairs} pairs, no problems found."]
    if tokenizer is None:
        lines.append("Prompt lengths were not checked: the project's base model is not on this machine yet.")
    return "\n".join(f"- {line}" for line in lines)


def export_pairs(project: int | None) -> str:
    rows = store.list_preference_pairs(store.connect(), pid(project))
    path = store.home() / "exports" / f"preference-pairs-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    store.atomic_write_text(path, preferences.training_jsonl(rows))
    return downloads.offer(path)


def build_preferences_view(project: gr.State) -> None:
    """The pairs table with edit, exclude, delete, import, export and the health check, wired here."""
    table = gr.Dataframe(pd.DataFrame(columns=PAIR_COLUMNS), interactive=False, wrap=True,
                         column_widths=["5%", "8%", "14%", "11%", "8%", "22%", "16%", "16%"])
    with gr.Row():
        pair_id = gr.Number(value=None, precision=0, label="Pair id (from the table)")
        load_btn = gr.Button("Load", size="sm")
        exclude_btn = gr.Button("Exclude / include", size="sm")
        delete_btn = gr.Button("Delete", size="sm", variant="stop")
    with gr.Row():
        chosen = gr.Textbox(lines=3, label="Chosen reply")
        rejected = gr.Textbox(lines=3, label="Rejected reply")
    save_btn = gr.Button("Save edit", size="sm")
    message = gr.Markdown()
    with gr.Row():
        upload = gr.File(label="Import prompt/chosen/rejected JSONL", file_types=[".jsonl"], type="filepath")
        health_btn = gr.Button("Health check")
        export_btn = gr.Button("Export pairs (JSONL)")
    health = gr.Markdown()
    exported = gr.File(label="Pairs", interactive=False)

    refresh = gr.Button("Refresh list", size="sm")
    refresh.click(pairs_frame, project, table)
    load_btn.click(load_pair, [pair_id, project], [chosen, rejected])
    save_btn.click(save_pair, [pair_id, chosen, rejected, project], [table, message])
    exclude_btn.click(toggle_excluded, [pair_id, project], [table, message])
    delete_btn.click(delete_pair, [pair_id, project], [table, message])
    upload.upload(import_file, [upload, project], [table, message])
    health_btn.click(health_markdown, project, health)
    export_btn.click(export_pairs, project, exported)
    project.change(pairs_frame, project, table)


# --- Train tab: Improve from preferences ------------------------------------------------------------------------

def sft_runs() -> dict:
    """Finished runs that can be improved: a DPO run can itself be improved again, so every whole run."""
    ids = [r["run_id"] for r in runs.finished()]
    return gr.update(choices=ids, value=ids[0] if ids else None)


def start_improve(project: int | None, parent: str | None, beta: float, learning_rate: float,
                  epochs: float) -> tuple[str, str]:
    """Check the pairs, then queue a DPO run of `parent` on the project's included pairs."""
    if not parent:
        raise gr.Error("Pick a finished run to improve.")
    try:
        runs.locate(parent)
    except runs.RunError as e:
        raise gr.Error(f"{e}: pick a finished run.") from None
    conn = store.connect()
    rows = store.list_preference_pairs(conn, pid(project), include_excluded=False)
    tokenizer = _tokenizer(store.get_project(conn, pid(project))["base_model"])
    report = preferences.health(rows, tokenizer, dpo.DPOConfig().max_length)
    if report.blocked:
        raise gr.Error(f"Not enough preference pairs: {report.blocked}.")
    if report.refused:  # the run would refuse them by their line in its file; here they are named by pair id
        raise gr.Error("Fix these pairs first (Compare → Preference pairs): " + "; ".join(report.refused[:5]))
    try:
        settings = dict(beta=float(beta), learning_rate=float(learning_rate), epochs=float(epochs))
        dpo.DPOConfig(data="x", out="x", parent=parent, **settings)  # range checks, in plain words
        job = dpo.submit(preferences.training_jsonl(rows), parent, label=f"{parent[:20]}-dpo",
                         project_id=pid(project), **settings)
    except ValueError as e:  # a bad setting, or the per-workspace job quota
        raise gr.Error(str(e)) from None
    return job.id, f"**Run `{job.id}`** queued: improving `{parent}` from {len(rows)} preference pairs."


def build_improve_panel() -> tuple[gr.Dropdown, gr.Number, gr.Number, gr.Number, gr.Button]:
    """The parent picker, the advanced settings with their defaults, and the start button (wired by the caller)."""
    gr.Markdown(EXPLAIN_DPO)
    defaults = dpo.DPOConfig()
    parent = gr.Dropdown([], label="Run to improve", allow_custom_value=True)
    with gr.Accordion("Advanced settings", open=False):
        with gr.Row():
            beta = gr.Number(value=defaults.beta, label="Beta (lower lets the voice move further; 0.05–0.5)")
            rate = gr.Number(value=defaults.learning_rate, label="Learning rate")
            epochs = gr.Number(value=defaults.epochs, label="Epochs over the pairs")
    button = gr.Button("Improve from preferences", variant="secondary")
    return parent, beta, rate, epochs, button
