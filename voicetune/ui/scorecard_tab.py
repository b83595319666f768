"""Scorecard tab: one screen per run — a verdict, a bar chart per metric and arm, and the numbers behind it."""

from __future__ import annotations

import json

import gradio as gr
import pandas as pd

from voicetune import store
from voicetune.evaluate import (PROMPTS_FILE, SCORECARD_FILE, adherence_lines, read_prompts, scorecard, summary_rows,
                                training_line)
from voicetune.generate import AdapterError, shared_model
from voicetune.runs import finished as finished_runs
from voicetune.runs import read as read_run
from voicetune.ui import downloads
from voicetune.ui.charts import bar_chart_html

KEYS = ["base", "prompt-only", "tuned"]
LOSS_TITLE = "Reference loss (lower = writes more like your examples)"
STYLE_TITLE = "Style distance (lower = closer to your style)"


ADHERENCE_TITLE = "Voice adherence (share of unseen replies with a marker of your voice)"


def load_or_compute(run_id: str, recompute: bool = False, prompts_text: str | None = None) -> dict:
    if not run_id:
        raise gr.Error("Pick a finished run first.")
    try:
        folder = store.run_dir(run_id)
        record = read_run(folder)
        saved = folder / SCORECARD_FILE
        if saved.exists() and not recompute:
            return json.loads(saved.read_text(encoding="utf-8"))
        prompts = read_prompts(prompts_text) if prompts_text and prompts_text.strip() else None
        return scorecard(folder, chat=shared_model(record["base_model"]), test_prompts=prompts)
    except (ValueError, FileNotFoundError, AdapterError) as e:
        raise gr.Error(f"No scorecard for run {run_id}: {e}")


def marker_samples(card: dict) -> pd.DataFrame:
    """Each unseen prompt with every arm's reply and the markers it hit (✗ banned phrases; "cut" when the reply
    ran to the token limit, so a missing sign-off may only be unheard)."""
    rows = []
    for s in card.get("adherence", {}).get("samples", []):
        row = {"prompt": s["prompt"], "from": s["source"]}
        for k in KEYS:
            hits = ", ".join(s[f"{k} markers"]) or "no marker"
            banned = "; ✗ " + ", ".join(s[f"{k} banned"]) if s[f"{k} banned"] else ""
            cut = "; cut at the token limit" if s.get(f"{k} cut") else ""  # absent on older cards
            row[k] = f"{s[k]}\n[{hits}{banned}{cut}]"
        rows.append(row)
    return pd.DataFrame(rows, columns=["prompt", "from", *KEYS])


def saved_prompts(run_id: str) -> str:
    """The test prompts the run was last scored on, to edit and score again."""
    try:
        path = store.run_dir(run_id) / PROMPTS_FILE if run_id else None
    except ValueError:  # a half-typed run id
        return ""
    return path.read_text(encoding="utf-8") if path and path.exists() else ""


def show(run_id: str, recompute: bool = False, prompts_text: str | None = None) -> tuple:
    card = load_or_compute(run_id, recompute, prompts_text)
    loss_bars = bar_chart_html({k: card["likelihood"][k]["loss"] for k in KEYS}, LOSS_TITLE)
    style_bars = bar_chart_html({k: card["style"][k]["distance"] for k in KEYS}, STYLE_TITLE)
    adh = card.get("adherence")
    adh_bars = bar_chart_html({k: adh["arms"][k]["rate"] for k in KEYS}, ADHERENCE_TITLE) if adh else ""
    table = pd.DataFrame(summary_rows(card), columns=["metric", *KEYS]).round(3)
    features = pd.DataFrame(
        [{"feature": f, "reference": card["style"]["reference"][f],
          **{k: card["style"][k]["profile"][f] for k in KEYS}} for f in card["style"]["reference"]]
    ).round(3)
    samples = pd.DataFrame(card["samples"], columns=["prompt", "reference", *KEYS])
    f = card["forgetting"]
    notes = [
        f"### {card['verdict']}",
        f"Scored on **{card['heldout']} held-out conversations**: {card['heldout_source']}. {training_line(card)}",
        *(["\n".join(["```", *adherence_lines(card), "```"])] if adh else
          ["This scorecard predates voice adherence: press Recompute to measure it."]),
        f"Prompt-only costs **{card['prompt_cost']['prompt_only_tokens']:.0f}** prompt tokens per request against "
        f"**{card['prompt_cost']['tuned_tokens']:.0f}** for the tuned model: "
        f"{card['prompt_cost']['saved_per_1000_requests']:,.0f} tokens saved per 1,000 requests.",
        f"Forgetting probe: {f['probes']} questions, base {f['base_accuracy']:.0%}, tuned {f['tuned_accuracy']:.0%}"
        + (f"; lost: {', '.join(f['lost'])}" if f["lost"] else "") + ".",
        "Distinctive terms of your voice: " + (", ".join(card["style"]["terms"]) or "none found") + ".",
    ]
    if "skipped" in card["semantic"]:
        notes.append(f"Semantic similarity skipped: {card['semantic']['skipped']}.")
    if card["votes"]:
        notes.append("Blind votes: " + "; ".join(
            f"{v['arm_a']} vs {v['arm_b']}: {v['a_wins']}–{v['b_wins']} ({v['ties']} ties)" for v in card["votes"]))
    path = store.run_dir(run_id) / SCORECARD_FILE
    return ("\n\n".join(notes), adh_bars, loss_bars, style_bars, table, marker_samples(card), features, samples,
            downloads.offer(path))


def history() -> pd.DataFrame:
    """Every run of the workspace with a scorecard, newest first, for comparing runs over time."""
    rows = []
    for r in finished_runs():
        path = store.run_dir(r["run_id"]) / SCORECARD_FILE
        if not path.exists():
            continue
        card = json.loads(path.read_text(encoding="utf-8"))
        rows.append({
            "run": r["run_id"], "finished": r.get("finished"), "examples": r["data"]["train"],
            "tuned loss": card["likelihood"]["tuned"]["loss"], "base loss": card["likelihood"]["base"]["loss"],
            "tuned style": card["style"]["tuned"]["distance"],
            "tuned adherence": card.get("adherence", {}).get("arms", {}).get("tuned", {}).get("rate"),
            "probe acc": card["forgetting"]["tuned_accuracy"],
            "verdict": card["verdict"],
        })
    return pd.DataFrame(rows, columns=["run", "finished", "examples", "tuned loss", "base loss", "tuned style",
                                       "tuned adherence", "probe acc", "verdict"]).round(3)


def build_scorecard_tab() -> gr.Dropdown:
    """Returns the run picker, refreshed by the app when a run finishes."""
    with gr.Row():
        # Filled on page load, inside the visitor's own workspace; at build time there is no visitor.
        run = gr.Dropdown([], label="Run", allow_custom_value=True, scale=3)
        open_btn = gr.Button("Show scorecard", variant="primary", scale=1)
        redo = gr.Button("Recompute", scale=1)
    with gr.Accordion("Unseen test prompts (one per line; empty: the project's, or the run's last)", open=False):
        prompts = gr.Textbox(lines=6, show_label=False,
                             placeholder="Paste customer questions the run never trained on, then press Recompute")
    verdict = gr.Markdown()
    adh_plot = gr.HTML()
    with gr.Row():
        loss_plot = gr.HTML()
        style_plot = gr.HTML()
    table = gr.Dataframe(label="Headline numbers", interactive=False)
    with gr.Accordion("Unseen replies and the markers each hit", open=False):
        markers = gr.Dataframe(interactive=False, wrap=True)
    with gr.Accordion("Style features behind the distance", open=False):
        features = gr.Dataframe(interactive=False)
    with gr.Accordion("Replies it was judged on", open=False):
        samples = gr.Dataframe(interactive=False, wrap=True)
    download = gr.File(label="scorecard.json", interactive=False)
    with gr.Accordion("All runs over time", open=False):
        runs_table = gr.Dataframe(interactive=False, wrap=True)
        refresh = gr.Button("Refresh", size="sm")
    outputs = [verdict, adh_plot, loss_plot, style_plot, table, markers, features, samples, download]
    # Showing a saved scorecard needs no model, so it does not queue behind chat replies.
    open_btn.click(show, [run], outputs, concurrency_limit=4, api_name="scorecard")
    run.change(saved_prompts, [run], prompts)
    redo.click(lambda r, p: show(r, True, p), [run, prompts], outputs, concurrency_limit=1, concurrency_id="chat")
    refresh.click(history, None, runs_table, api_name="scorecard_history")
    return run
