"""The app: three tabs (Data → Train → Compare) wired to the core. `python app.py` serves it."""

from __future__ import annotations

import os

import gradio as gr

from voicetune import models
from voicetune.ui.compare_tab import arm_choices, build_compare_tab, load_style_guide, newest_run
from voicetune.ui.data_tab import build_data_tab
from voicetune.ui.scorecard_tab import build_scorecard_tab
from voicetune.ui.train_tab import build_train_tab

INTRO = """# 🎙️ voicetune
Teach a small language model your brand voice: **1.** collect example conversations, **2.** train,
**3.** compare the base model and your tuned model side by side.
"""


def build_app() -> gr.Blocks:
    with gr.Blocks(title="voicetune") as demo:
        gr.Markdown(INTRO)
        base = models.default_base_model()
        gr.Markdown(f"Base model: `{base}` · device: `{models.detect_device()}`")
        with gr.Tabs():
            with gr.Tab("1 · Data"):
                data_box = build_data_tab()
            with gr.Tab("2 · Train"):
                trained = build_train_tab(data_box)
            with gr.Tab("3 · Compare"):
                arms, style_guide = build_compare_tab(data_box)
            with gr.Tab("4 · Scorecard"):
                score_run = build_scorecard_tab()
        trained.then(arm_choices, None, arms).then(newest_run, None, score_run)
        demo.load(newest_run, None, score_run)
        demo.load(arm_choices, None, arms)  # a reload lists runs finished since the page was built
        demo.load(load_style_guide, None, style_guide)
    return demo


def main() -> None:
    # Convert the embedded model before serving, so the first click never waits half a minute.
    models.resolve_base_model(None)
    demo = build_app()
    demo.queue(default_concurrency_limit=1, max_size=32)
    demo.launch(
        # Local use stays on loopback; a Space must listen on every interface to be reached.
        server_name=os.environ.get("VOICETUNE_HOST", "0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1"),
        server_port=int(os.environ.get("VOICETUNE_PORT", "7860")),
        max_file_size="50mb",
        enable_monitoring=False,
        footer_links=["api"],
    )
