"""The app: three tabs (Data → Train → Compare) wired to the core. `python app.py` serves it."""

from __future__ import annotations

import gradio as gr

from voicetune import jobs, models, serve, spaces
from voicetune.ui import faults, session, settings
from voicetune.ui.compare_tab import arm_choices, build_compare_tab, newest_run, run_choices
from voicetune.ui.data_tab import build_data_tab
from voicetune.ui.export_tab import build_export_tab
from voicetune.ui.scorecard_tab import build_scorecard_tab
from voicetune.ui.shared_adapter import build_shared_adapter
from voicetune.ui.train_tab import build_train_tab
from voicetune.ui.use_tab import build_use_tab

INTRO = """# 🎙️ voicetune
Teach a small language model your brand voice: **1.** collect example conversations, **2.** train,
**3.** compare the base model and your tuned model side by side.
"""


def run_pickers() -> tuple[dict, dict, dict]:
    """The Compare arms, the Scorecard run and the Export run, from one listing of the finished runs."""
    runs = run_choices()
    return arm_choices(runs), newest_run(runs), newest_run(runs)


def build_app() -> gr.Blocks:
    with gr.Blocks(**settings.BLOCKS) as demo:
        gr.Markdown(INTRO)
        base = models.default_base_model()
        gr.Markdown(f"Base model: `{base}` · device: `{models.detect_device()}`")
        for notice in (spaces.storage_warning(), spaces.hardware_notice()):
            if notice:
                gr.Markdown(notice, elem_classes="voicetune-notice")
        who = session.build_identity_bar()
        with gr.Tabs():
            with gr.Tab("1 · Data"):
                project = build_data_tab()  # the current project's id
            with gr.Tab("2 · Train"):
                train_tab = build_train_tab(project)
            with gr.Tab("3 · Compare"):
                arms, style_guide_io = build_compare_tab(project)
            with gr.Tab("4 · Scorecard"):
                score_run = build_scorecard_tab()
            with gr.Tab("5 · Export"):
                export_run = build_export_tab()
                shared_added = build_shared_adapter()
            with gr.Tab("6 · Use it"):
                build_use_tab(demo)
        # A reload, a finished run or a teammate's adapter: every run picker is filled from one read.
        pickers = [arms, score_run, export_run]
        for ended in train_tab.ended:
            ended.then(run_pickers, None, pickers)
        shared_added.then(run_pickers, None, pickers)
        demo.load(session.whoami, None, who)
        train_tab.on_load(demo)
        demo.load(run_pickers, None, pickers)
        demo.load(*style_guide_io)
    # Every handler runs in the signed-in user's own workspace (one shared workspace when nobody signs in).
    return session.scope_every_handler(faults.plain_fault_messages(demo))  # a full disk gets plain words


def main() -> None:
    faults.check_workspace()  # an unwritable workspace stops here with the fix, not mid-click
    spaces.ensure_embedded_model()  # a Space cannot pip-install it with --no-deps from requirements.txt
    # Convert the embedded model before serving, so the first click never waits half a minute.
    models.resolve_base_model(None)
    models.warm_imports()  # before any request thread can resolve transformers' lazy names at the same moment
    # Jobs left "running" by a previous app process are marked interrupted; queued ones start.
    jobs.supervisor().start()
    demo = build_app()
    demo.queue(**settings.QUEUE)
    demo.launch(
        **settings.launch_settings(),  # upload cap, served paths, errors, history: see voicetune/ui/settings.py
        auth=session.password_logins(),  # VOICETUNE_AUTH="alice:pw1,bob:pw2": a login page, one workspace each
        # The OpenAI-compatible /v1 routes on the same port, each API key reaching its owner's workspace
        app_kwargs={"routes": serve.api_routes(serve.app_service(signed_in=session.mode() != "shared"))},
    )
