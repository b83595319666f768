"""Train tab: pick how thorough, see the expected time, queue the job, watch it, cancel or resume it, and
compare finished runs.

Training runs as a queued job (voicetune.jobs) in its own process. This tab only submits and reads: a
reload, a second browser or a second user sees the same queue, and the job goes on if every page closes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator

import gradio as gr
import pandas as pd

from voicetune import jobs, limits, models, projects, recipes, runs, store
from voicetune.config import TrainConfig
from voicetune.ui.charts import line_chart_html
from voicetune.ui.session import pid

POLL_SECONDS = 1.0
CUSTOM = "Custom"
BALANCED_LABEL = "Balanced (Auto)"
PRESET_CHOICES = [recipes.QUICK, BALANCED_LABEL, recipes.THOROUGH, CUSTOM]
JOB_COLUMNS = ["run", "state", "queue", "progress", "message"]
_DEFAULTS = TrainConfig()


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def progress_html(p: jobs.Progress | None) -> str:
    if p is None:
        return '<div class="vt-progress">Ready: check your conversations on the Data tab, then press Train.</div>'
    pct = round(100 * p.fraction)
    color = {"failed": "#dc2626", "cancelled": "#9ca3af", "interrupted": "#d97706"}.get(p.state, "#2563eb")
    if p.state == "queued":
        where = f"position {p.queue_position} in the queue" if p.queue_position else "in the queue"
        detail = f"{where} · starts in about {_minutes(p.starts_in_s)}"
    elif p.total_steps:
        detail = f"step {p.step} of {p.total_steps} · epoch {p.epoch:.2f}"
        if p.step:
            detail += f" · {p.elapsed_s:.0f} s elapsed"
            if p.eta_s is not None and p.state == "running":
                detail += f" · about {_minutes(p.eta_s)} left"
        if p.tokens_per_s:
            detail += f" · {p.tokens_per_s:.0f} tokens/s"
        if p.peak_memory_mb:
            detail += f" · peak memory {p.peak_memory_mb / 1024:.1f} GB"
    else:
        detail = p.message or "preparing"
    return (
        f'<div class="vt-progress"><div style="background:#e5e7eb;border-radius:6px;height:18px">'
        f'<div style="width:{pct}%;background:{color};height:18px;border-radius:6px"></div></div>'
        f"<div>{pct}% · {detail} · <b>{p.state}</b></div></div>"
    )


def status_markdown(job: jobs.Job, p: jobs.Progress) -> str:
    if p.state == "succeeded":
        return f"✅ **Run `{job.id}` finished** ({p.message}). Open the Compare tab to hear the difference."
    if p.state in ("failed", "interrupted"):
        text = f"**Run `{job.id}` {p.state}**" + (f" (`{p.code}`)" if p.code else "") + f": {p.message}"
        if p.fix:
            text += f"\n\n**What to do:** {p.fix}"
        if p.state == "interrupted" or p.code in ("oom", "crash", "killed"):
            text += "\n\nPress **Resume** to continue from its last checkpoint."
        return text
    if p.state == "cancelled":
        return f"Run `{job.id}` cancelled; no adapter was kept."
    return f"**Run `{job.id}`**: {p.message or p.state}"


def loss_chart(p: jobs.Progress | None) -> str:
    return line_chart_html((p.losses if p else None) or [])


def jobs_frame() -> pd.DataFrame:
    rows = []
    for job in jobs.list_jobs()[:20]:
        p = job.progress()
        queue = f"#{p.queue_position}, starts in ~{_minutes(p.starts_in_s)}" if p.queue_position else ""
        rows.append([job.id, job.state, queue, f"{round(100 * p.fraction)}%", p.message])
    return pd.DataFrame(rows, columns=JOB_COLUMNS)


def runs_frame() -> pd.DataFrame:
    return pd.DataFrame(runs.run_rows(runs.finished()), columns=runs.COLUMNS)


# --- Planning ------------------------------------------------------------------------------------------

def _preset_name(choice: str) -> str:
    return recipes.BALANCED if choice == BALANCED_LABEL else choice


def _check(project_id: int, max_length: int) -> tuple[dict, projects.ProjectCheck]:
    conn = store.connect()
    project = store.get_project(conn, int(project_id))
    check = projects.check_project(conn, int(project_id), models.tokenizer_for(project["base_model"]), int(max_length))
    return project, check


def _train_lengths(check: projects.ProjectCheck, project_id: int) -> list[int]:
    held = {c.line for c in projects.conversations_of(store.connect(), int(project_id), held_out=True)}
    return [n for cid, n in check.lengths.items() if cid not in held]


def _throughput(base_model: str | None = None) -> float | None:
    """Tokens/s measured by this machine's earlier runs; before any, on a GPU, a first estimate scaled by the
    project's model size and the GPU's peak (an 8B model is not promised a 135M model's speed)."""
    device = models.detect_device()
    rate = recipes.measured_tokens_per_s(runs.finished(), device)
    if rate or device != "cuda":
        return rate
    return recipes.first_estimate_tokens_per_s(device, models.resolve_base_model(base_model or None))


def plan(project_id: int | None, choice: str) -> tuple[Any, ...]:
    """The preset's settings with the reasons, every preset's expected time, and the advanced fields filled in."""
    if project_id is None:
        return ("Open or create a project on the Data tab first.",) + (gr.update(),) * len(_ADVANCED)
    project, check = _check(project_id, 4096)
    lengths = _train_lengths(check, project_id)
    if not lengths:
        return ("No conversations to train on yet: add some on the Data tab.",) + (gr.update(),) * len(_ADVANCED)
    device, rate = models.detect_device(), _throughput(project["base_model"])
    times = []
    params = recipes.base_params(project["base_model"])  # the Auto rate depends on the model's size
    for name in recipes.PRESETS:
        s = recipes.preset_settings(name, lengths, params=params)
        times.append(f"**{name}** ≈ {_minutes(recipes.estimate_seconds(s, lengths, device, rate))}")
    basis = "measured on this machine" if rate else "a first estimate for this kind of machine"
    lines = [" · ".join(times) + f" ({basis}, {len(lengths)} conversations)"]
    if choice == CUSTOM:
        return ("\n\n".join(lines + ["Using your own settings below."]),) + (gr.update(),) * len(_ADVANCED)
    s = recipes.preset_settings(_preset_name(choice), lengths, params=params)
    lines.append(f"**{choice}** chose:\n" + "\n".join(f"- {w}" for w in s.why))
    fill = {"epochs": s.epochs, "learning_rate": s.learning_rate, "rank": s.rank, "alpha": s.alpha,
            "max_length": s.max_length, "max_steps": s.max_steps, "replay": s.replay}
    return ("\n\n".join(lines),) + tuple(gr.update(value=fill[k]) if k in fill else gr.update() for k in _ADVANCED)


# --- Starting, watching, stopping -----------------------------------------------------------------------

AUTO_ON_OFF = {"Auto": None, "On": True, "Off": False}  # a three-way radio's answer, as a TrainConfig value


@dataclass
class Advanced:
    """The Advanced panel's settings, by name. The panel's inputs are wired in this class's field order (the
    one place that order is written: Gradio hands a handler its inputs by position), so a handler rebuilds
    the dataclass from them and everything after reads fields by name; tests and API clients build one too:
    `client.predict("Custom", *astuple(Advanced(max_steps=20)), api_name="/train")`."""

    rank: int = _DEFAULTS.lora.r
    alpha: int = _DEFAULTS.lora.alpha
    dropout: float = _DEFAULTS.lora.dropout
    learning_rate: float = _DEFAULTS.learning_rate
    lr_scheduler: str = _DEFAULTS.lr_scheduler
    epochs: float = _DEFAULTS.epochs
    max_steps: int = -1
    batch_size: int = _DEFAULTS.batch_size
    grad_accum: int = _DEFAULTS.grad_accum
    max_length: int = _DEFAULTS.max_length
    seed: int = _DEFAULTS.seed
    qlora: str = "Auto"  # Auto / On / Off
    early_stopping: str = "Auto"
    padding_free: bool = _DEFAULTS.padding_free
    activation_checkpointing: str = "Auto"
    replay: float = _DEFAULTS.replay


_ADVANCED = tuple(f.name for f in fields(Advanced))  # the panel's inputs, in order


def _settings(choice: str, lengths: list[int], adv: Advanced, params: int | None = None) -> dict[str, Any]:
    """TrainConfig fields: the preset's, or every advanced field as the user set it."""
    common = {"batch_size": int(adv.batch_size), "grad_accum": int(adv.grad_accum), "seed": int(adv.seed),
              "lr_scheduler": adv.lr_scheduler, "early_stopping": AUTO_ON_OFF[adv.early_stopping],
              "qlora": AUTO_ON_OFF[adv.qlora], "padding_free": bool(adv.padding_free),
              "activation_checkpointing": AUTO_ON_OFF[adv.activation_checkpointing]}
    if choice != CUSTOM:
        s = recipes.preset_settings(_preset_name(choice), lengths, params=params)
        cfg = s.as_config()
        cfg["lora"]["dropout"] = float(adv.dropout)
        return {**common, **cfg, "preset": choice}
    return {**common, "epochs": float(adv.epochs), "learning_rate": float(adv.learning_rate),
            "max_steps": int(adv.max_steps), "max_length": int(adv.max_length), "preset": CUSTOM,
            "replay": float(adv.replay),
            "lora": {"r": int(adv.rank), "alpha": int(adv.alpha), "dropout": float(adv.dropout)}}


def start(project_id: int | None, choice: str, *advanced: Any) -> tuple[str, str]:
    """Check the project's data, then queue the job. Returns at once: `watch` streams the progress.

    `advanced`: the panel's values in `Advanced`'s field order (how Gradio passes inputs), read by name from here."""
    project_id = pid(project_id)  # an API client, or a page still loading: the user's current project
    adv = Advanced(*advanced)
    project, check = _check(project_id, 4096 if choice != CUSTOM else int(adv.max_length))
    lengths = _train_lengths(check, project_id)
    settings = _settings(choice, lengths, adv, recipes.base_params(project["base_model"]))
    if choice != CUSTOM:  # a preset picks its own max length from the lengths; Custom was checked with its own
        project, check = _check(project_id, settings["max_length"])
    if not check.ok:
        first = "; ".join(str(p) for p in check.problems[:5])
        raise gr.Error(f"Fix the data first on the Data tab ({len(check.problems)} problem(s)): {first}")
    try:
        TrainConfig(**{k: v for k, v in settings.items() if k != "lora"})  # range checks, in plain words
    except ValueError as e:
        raise gr.Error(f"Check the advanced settings: {e}")
    conn = store.connect()
    estimate = recipes.estimate_seconds(recipes.Settings(settings["epochs"], settings["learning_rate"],
                                                         settings["lora"]["r"], settings["max_length"],
                                                         settings["max_steps"]),
                                        lengths, models.detect_device(), _throughput(project["base_model"]),
                                        settings["batch_size"])
    try:
        job = jobs.submit(projects.training_jsonl(conn, int(project_id)), label=project["name"],
                          heldout_text=projects.heldout_jsonl(conn, int(project_id)), project_id=int(project_id),
                          estimate_s=estimate, base_model=project["base_model"] or _DEFAULTS.base_model,
                          style_guide=project["style_guide"], val_fraction=min(0.49, check.val_fraction), **settings)
    except jobs.JobLimitError as e:  # the per-workspace quota, in its own plain words
        raise gr.Error(str(e)[:1].upper() + str(e)[1:]) from None
    return job.id, f"**Run `{job.id}`** queued."


def _job_or_none(run_id: str) -> jobs.Job | None:
    try:
        return jobs.owned(run_id) if run_id else None
    except (KeyError, ValueError):
        return None


def watch(run_id: str) -> Iterator[tuple]:
    """Stream one job's progress until it ends; a reload starts watching again from the database."""
    job = _job_or_none(run_id)
    if job is None:
        yield progress_html(None), loss_chart(None), "", "", jobs_frame()
        return
    while True:
        job = jobs.owned(job.id)
        p = job.progress()
        yield progress_html(p), loss_chart(p), status_markdown(job, p), job.log()[-4000:], jobs_frame()
        if not job.active:
            return
        time.sleep(POLL_SECONDS)


def latest_job() -> str:
    """The job a reloaded page should show: the newest active one, else the newest."""
    mine = jobs.list_jobs()
    active = [j for j in mine if j.active]
    return (active or mine or [None])[0].id if (active or mine) else ""


def cancel(run_id: str) -> str:
    if not _job_or_none(run_id):
        return "Nothing to cancel: no job is selected."
    result = jobs.cancel(run_id)
    return {"cancelling": f"Cancelling run `{run_id}`…",
            "cancelled before it started": f"Run `{run_id}` was taken out of the queue."}.get(result, result)


def resume(run_id: str) -> str:
    if not _job_or_none(run_id):
        raise gr.Error("No job is selected.")
    try:
        job = jobs.resume(run_id)
    except ValueError as e:
        raise gr.Error(str(e).capitalize())
    return f"**Run `{job.id}`** queued again: {job.message}."


def diff(a: str, b: str) -> pd.DataFrame:
    records = {r["run_id"]: r for r in runs.finished()}
    if a not in records or b not in records:
        raise gr.Error("Pick two finished runs to compare.")
    return pd.DataFrame(runs.diff_runs(records[a], records[b]), columns=["setting or result", a, b])


def run_choices() -> tuple[dict, dict]:
    ids = [r["run_id"] for r in runs.finished()]
    return gr.update(choices=ids, value=ids[1] if len(ids) > 1 else None), \
        gr.update(choices=ids, value=ids[0] if ids else None)


# --- Layout ---------------------------------------------------------------------------------------------

def _advanced_fields() -> dict[str, gr.components.Component]:
    d = Advanced()  # the panel starts at the dataclass's defaults
    f: dict[str, Any] = {}
    with gr.Accordion("Advanced settings (choosing any of these switches to Custom)", open=False):
        with gr.Row():
            f["epochs"] = gr.Number(d.epochs, label="Epochs", minimum=0.1, maximum=50)
            f["learning_rate"] = gr.Number(d.learning_rate, label="Learning rate", minimum=1e-6, maximum=1e-2)
            f["lr_scheduler"] = gr.Dropdown(["cosine", "linear", "constant"], value=d.lr_scheduler, label="Schedule")
            f["max_steps"] = gr.Number(d.max_steps, label="Max steps (-1: follow epochs)", precision=0)
        with gr.Row():
            f["rank"] = gr.Number(d.rank, label="LoRA rank", precision=0, minimum=1, maximum=256)
            f["alpha"] = gr.Number(d.alpha, label="LoRA alpha", precision=0, minimum=1)
            f["dropout"] = gr.Number(d.dropout, label="LoRA dropout", minimum=0, maximum=0.9)
            f["seed"] = gr.Number(d.seed, label="Seed", precision=0)
        with gr.Row():
            f["batch_size"] = gr.Number(d.batch_size, label="Batch size", precision=0, minimum=1, maximum=256)
            f["grad_accum"] = gr.Number(d.grad_accum, label="Gradient accumulation", precision=0, minimum=1)
            f["max_length"] = gr.Number(d.max_length, label="Max length (tokens)", precision=0, minimum=16)
            f["replay"] = gr.Number(d.replay, label="General replay (share of your conversations)", minimum=0,
                                    maximum=1, info="The base model's own answers to general questions, trained "
                                                    "on beside yours so the voice does not replace plain answers")
        with gr.Row():
            f["qlora"] = gr.Radio(list(AUTO_ON_OFF), value=d.qlora, label="QLoRA (4-bit base; Auto: on with a GPU)")
            f["early_stopping"] = gr.Radio(list(AUTO_ON_OFF), value=d.early_stopping,
                                           label="Early stopping (Auto: on below 500 conversations)")
            f["padding_free"] = gr.Checkbox(d.padding_free, label="Packing (padding-free batches)",
                                            info="Faster on a GPU with flash attention; slower on a CPU")
            f["activation_checkpointing"] = gr.Radio(
                list(AUTO_ON_OFF), value=d.activation_checkpointing, label="Activation checkpointing",
                info="Auto: on only when the run would not fit the GPU's memory without it (slower, far less memory)")
    return f


def build_train_tab(project: gr.State) -> "TrainTab":
    """Returns the event that fires when a watched job ends, and the page-load wiring for the app."""
    preset = gr.Radio(PRESET_CHOICES, value=BALANCED_LABEL, label="How thorough?",
                      info="Quick look: a first listen in minutes. Balanced: settings chosen from your data. "
                           "Thorough: more passes, stops early if it starts to overfit.")
    plan_md = gr.Markdown()
    adv = _advanced_fields()
    with gr.Row():
        start_btn = gr.Button("Train", variant="primary", scale=3)
        cancel_btn = gr.Button("Cancel", variant="stop", scale=1)
        resume_btn = gr.Button("Resume", scale=1)
    run_id = gr.Textbox(label="Run id", interactive=False, max_lines=1)
    bar = gr.HTML(progress_html(None))
    status = gr.Markdown()
    plot = gr.HTML(loss_chart(None))
    with gr.Accordion("Training log", open=False):
        log = gr.Textbox(lines=10, max_lines=20, show_label=False, autoscroll=True)
    with gr.Accordion("Queue and recent jobs", open=False):
        # Both tables fill on page load, inside the visitor's own workspace (at build time there is none).
        queue = gr.Dataframe(pd.DataFrame(columns=JOB_COLUMNS), interactive=False, wrap=True)
    with gr.Accordion("Finished runs", open=False):
        runs_table = gr.Dataframe(pd.DataFrame(columns=runs.COLUMNS), interactive=False, wrap=True)
        with gr.Row():
            run_a = gr.Dropdown([], label="Run A")
            run_b = gr.Dropdown([], label="Run B")
            diff_btn = gr.Button("What changed?")
        diff_table = gr.Dataframe(interactive=False, wrap=True)
    with gr.Accordion("Improve from preferences (DPO)", open=False):
        from voicetune.ui import preferences_tab

        parent, beta, rate, dpo_epochs, improve_btn = preferences_tab.build_improve_panel()

    panel = [adv[k] for k in _ADVANCED]
    watch_out = [bar, plot, status, log, queue]
    preset.change(plan, [project, preset], [plan_md, *panel])
    project.change(plan, [project, preset], [plan_md, *panel])
    for one in panel:
        one.input(lambda: CUSTOM, None, preset)
    started = start_btn.click(start, [project, preset, *panel], [run_id, status], api_name="train",
                              concurrency_limit=4)
    # Watchers only read the database, but each holds a worker thread while it polls: bounded (voicetune.limits).
    follow = {"concurrency_limit": limits.MAX_WATCHERS, "concurrency_id": "watch"}
    watching = started.success(watch, run_id, watch_out, api_name="watch", **follow)
    cancel_btn.click(cancel, run_id, status, api_name="cancel", concurrency_limit=None)
    resume_btn.click(resume, run_id, status, api_name="resume", concurrency_limit=4).success(
        watch, run_id, watch_out, **follow)
    diff_btn.click(diff, [run_a, run_b], diff_table, api_name="diff_runs")
    ended = watching.then(runs_frame, None, runs_table).then(run_choices, None, [run_a, run_b])
    improving = improve_btn.click(preferences_tab.start_improve, [project, parent, beta, rate, dpo_epochs],
                                  [run_id, status], api_name="improve", concurrency_limit=4)
    improved = improving.success(watch, run_id, watch_out, **follow).then(runs_frame, None, runs_table).then(
        preferences_tab.sft_runs, None, parent)

    def on_load(demo: gr.Blocks) -> None:
        """A reload (or a second browser) shows the plan, the queue, the runs, and follows the newest job."""
        demo.load(plan, [project, preset], [plan_md, *panel])
        demo.load(runs_frame, None, runs_table).then(run_choices, None, [run_a, run_b])
        demo.load(preferences_tab.sft_runs, None, parent)
        demo.load(jobs_frame, None, queue)
        demo.load(latest_job, None, run_id).then(watch, run_id, watch_out, **follow)

    return TrainTab((ended, improved), on_load)


@dataclass
class TrainTab:
    ended: tuple[gr.events.Dependency, ...]  # each fires when a watched job (SFT or DPO) ends: other tabs list the new run
    on_load: Callable[[gr.Blocks], None]
