"""Compare tab: one message, answered by the base model and by a tuned adapter, side by side."""

from __future__ import annotations

import gradio as gr

from voicetune import store
from voicetune.config import GenConfig
from voicetune.generate import AdapterMismatch, ChatModel, Request, with_system
from voicetune.jobs import finished_runs
from voicetune.train import read_run

_models: dict[str, ChatModel] = {}  # base model id -> the one loaded copy, shared by every adapter


def chat_model_for(base_model: str) -> ChatModel:
    if base_model not in _models:
        _models[base_model] = ChatModel(base_model)
    return _models[base_model]


def send(run_id: str, system: str, message: str, max_new_tokens: float,
         base_hist: list[dict], tuned_hist: list[dict]) -> tuple[str, list[dict], list[dict]]:
    if not run_id:
        raise gr.Error("Pick a finished run first (train one in the Train tab).")
    if not (message or "").strip():
        raise gr.Error("Type a message to send.")
    try:
        folder = store.run_dir(run_id)
        record = read_run(folder)
        chat = chat_model_for(record["base_model"])
        name = chat.load_adapter(folder)
    except (ValueError, FileNotFoundError, AdapterMismatch) as e:
        raise gr.Error(f"Cannot use run {run_id}: {e}")
    user = {"role": "user", "content": message.strip()}
    # Each pane keeps its own history: the tuned model sees its own earlier replies, not the base model's.
    msgs_base = with_system([*strip(base_hist), user], system)
    msgs_tuned = with_system([*strip(tuned_hist), user], system)
    base, tuned = chat.generate([Request(msgs_base, None), Request(msgs_tuned, name)],
                                GenConfig(max_new_tokens=int(max_new_tokens)))
    return "", [*base_hist, user, {"role": "assistant", "content": base.text}], \
        [*tuned_hist, user, {"role": "assistant", "content": tuned.text}]


def strip(history: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else str(m["content"])}
            for m in history or []]


def run_choices() -> list[str]:
    return [r["run_id"] for r in finished_runs()]


def newest_run() -> dict:
    choices = run_choices()
    return gr.update(choices=choices, value=choices[0] if choices else None)


def build_compare_tab() -> gr.Dropdown:
    """Returns the runs dropdown, which the Train tab refreshes when a run finishes."""
    choices = run_choices()
    with gr.Row():
        # Runs appear while the app is up, so the server-side choice list cannot be fixed at build time;
        # `send` checks the id itself (store.run_dir + read_run) instead.
        run = gr.Dropdown(choices, value=choices[0] if choices else None, label="Tuned run", scale=3,
                          allow_custom_value=True)
        refresh = gr.Button("↻ Refresh runs", scale=1)
    system = gr.Textbox(label="System prompt (optional, sent to both)", lines=1)
    with gr.Row():
        base_pane = gr.Chatbot(label="Base model (no adapter)", height=360)
        tuned_pane = gr.Chatbot(label="Tuned (base + your adapter)", height=360)
    with gr.Row():
        msg = gr.Textbox(placeholder="Ask what a customer would ask…", show_label=False, scale=5)
        go = gr.Button("Send", variant="primary", scale=1)
    with gr.Row():
        max_new = gr.Slider(16, 256, value=96, step=16, label="Max reply tokens")
        clear = gr.Button("Clear chats")
    inputs = [run, system, msg, max_new, base_pane, tuned_pane]
    go.click(send, inputs, [msg, base_pane, tuned_pane], concurrency_limit=1, concurrency_id="chat")
    msg.submit(send, inputs, [msg, base_pane, tuned_pane], concurrency_limit=1, concurrency_id="chat")
    clear.click(lambda: ([], []), None, [base_pane, tuned_pane])
    refresh.click(newest_run, None, run)
    return run
