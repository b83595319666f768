"""Train tab: start a training job, watch its progress bar and loss curve, cancel it."""

from __future__ import annotations

import time
from typing import Iterator

import gradio as gr
import pandas as pd

from voicetune import jobs, store
from voicetune.data import DataError, parse_jsonl_text

_jobs: dict[str, jobs.Job] = {}  # run id -> job started from this app process
POLL_SECONDS = 1.0


def progress_html(p: jobs.Progress) -> str:
    pct = round(100 * p.fraction)
    color = {"failed": "#dc2626", "cancelled": "#9ca3af"}.get(p.state, "#2563eb")
    if p.state == "idle":
        return '<div class="vt-progress">Ready: load or paste conversations on the Data tab, then press Train.</div>'
    steps = f"step {p.step} of {p.total_steps} · epoch {p.epoch:.2f}" if p.total_steps else "preparing"
    if p.step:
        steps += f" · {p.elapsed_s:.0f} s elapsed"
        if p.eta_s is not None and p.state == "running":
            steps += f" · about {p.eta_s:.0f} s left"
    return (
        f'<div class="vt-progress"><div style="background:#e5e7eb;border-radius:6px;height:18px">'
        f'<div style="width:{pct}%;background:{color};height:18px;border-radius:6px"></div></div>'
        f"<div>{pct}% · {steps} · {p.state}</div></div>"
    )


def loss_frame(p: jobs.Progress) -> pd.DataFrame:
    return pd.DataFrame(p.losses or [], columns=["step", "series", "loss"])


def train(text: str, epochs: float, learning_rate: float) -> Iterator[tuple]:
    try:
        convs = parse_jsonl_text(text or "")
    except DataError as e:
        first = "; ".join(str(p) for p in e.problems[:5])
        raise gr.Error(f"Fix the data first ({len(e.problems)} problem(s)): {first}")
    label = convs[0].meta.get("voice", "voice") if convs else "voice"
    conn = store.connect()
    style_guide = store.get_project(conn, store.ensure_project(conn))["style_guide"]
    job = jobs.start_training(text, label=label, epochs=float(epochs), learning_rate=float(learning_rate),
                              style_guide=style_guide)
    _jobs[job.run_id] = job
    while True:
        p = job.progress()
        status = f"**Run `{job.run_id}`** — {p.message or 'starting'}"
        yield job.run_id, progress_html(p), loss_frame(p), status, job.log()[-4000:]
        if p.state != "running":
            break
        time.sleep(POLL_SECONDS)
    done = f"✅ **Run `{job.run_id}` finished.** Open the Compare tab to hear the difference." if p.state == "succeeded" \
        else f"**Run `{job.run_id}` {p.state}.** {p.message}"
    yield job.run_id, progress_html(p), loss_frame(p), done, job.log()[-4000:]


def cancel(run_id: str) -> str:
    job = _jobs.get(run_id or "")
    if job is None or not job.running():
        return "Nothing is training right now."
    job.cancel()
    return f"Run `{run_id}` cancelled; no adapter was kept."


def build_train_tab(data_box: gr.Textbox) -> gr.events.Dependency:
    """Returns the Train click event, so the app can refresh the Compare tab's runs when it ends."""
    with gr.Row():
        epochs = gr.Slider(1, 10, value=3, step=1, label="Epochs (passes over your conversations)")
        lr = gr.Number(value=2e-4, label="Learning rate", minimum=1e-6, maximum=1e-2)
    with gr.Row():
        start = gr.Button("Train", variant="primary", scale=3)
        stop = gr.Button("Cancel", variant="stop", scale=1)
    run_id = gr.Textbox(label="Run id", interactive=False, max_lines=1)
    bar = gr.HTML(progress_html(jobs.Progress(state="idle")))
    status = gr.Markdown()
    plot = gr.LinePlot(pd.DataFrame(columns=["step", "series", "loss"]), x="step", y="loss", color="series",
                       title="Loss (lower = closer to your examples)", height=260)
    with gr.Accordion("Training log", open=False):
        log = gr.Textbox(lines=10, max_lines=20, show_label=False, autoscroll=True)
    stop.click(cancel, run_id, status)
    return start.click(train, [data_box, epochs, lr], [run_id, bar, plot, status, log],
                       concurrency_limit=1, concurrency_id="train")
