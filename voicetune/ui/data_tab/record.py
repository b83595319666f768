"""The Record sub-tab: type what a customer says and the reply you wish your brand had given; each exchange
is saved at once to the open conversation (or a new one).

    transcript = make_transcript()     # before the Conversations sub-tab, whose `view` fills it
    build_record(tab, transcript)      # inside the Record sub-tab
"""

from __future__ import annotations

import gradio as gr

from voicetune import projects
from voicetune.ui.data_tab.conversations import selected_conversation
from voicetune.ui.data_tab.shared import DataTab, conn, editing_state, fail
from voicetune.ui.session import pid


def record(project: int, editing: dict, customer: str, reply: str) -> tuple[dict, str, str, str]:
    """Record mode: append the customer's line and the ideal reply to the open conversation (or a new one)."""
    conv = selected_conversation(editing, project)
    try:
        cid = projects.append_exchange(conn(), pid(project), conv["id"] if conv else None, customer, reply)
    except projects.ProjectError as e:
        raise fail(e)
    return editing_state(cid), "", "", f"Saved to conversation {cid}."


def start_recording() -> tuple[dict, str]:
    return editing_state(), "The next exchange you add starts a new conversation."


def make_transcript() -> gr.Chatbot:
    """Made before it is placed (render=False): the Conversations sub-tab, built first, refreshes it."""
    return gr.Chatbot(label="The conversation so far", height=280, render=False)


def build_record(tab: DataTab, transcript: gr.Chatbot) -> None:
    gr.Markdown("Type what a customer says, then the reply you wish your brand had given. Each exchange is "
                "saved at once to the open conversation; *Start a new conversation* begins another.")
    transcript.render()
    customer = gr.Textbox(label="Customer says", lines=2)
    reply = gr.Textbox(label="Ideal brand reply", lines=3)
    with gr.Row():
        rec_btn = gr.Button("Add exchange", variant="primary")
        fresh_btn = gr.Button("Start a new conversation")
    inputs, outputs = [tab.project, tab.editing, customer, reply], [tab.editing, customer, reply, tab.status]
    rec_btn.click(record, inputs, outputs, api_name="record")
    reply.submit(record, inputs, outputs)
    fresh_btn.click(start_recording, None, [tab.editing, tab.status])
