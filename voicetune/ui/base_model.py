"""Project settings → Base model: pick a catalog model, a Hub id or a local folder, see whether it fits this
machine, download it, and make it the project's base. Runs keep the base they were trained on.

    build_base_settings(project)      # inside the Project settings accordion; refreshed when the project changes
"""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from voicetune import catalog, fit, models, projects, store, weights
from voicetune.failures import hide_paths
from voicetune.models import ModelError
from voicetune.ui.session import pid


def choices() -> list[tuple[str, str]]:
    """The picker's entries: the catalog (size, licence, gated), then any other model downloaded here."""
    entries = [(f"{e.name} · {e.params / 1e9:.2f}B · {e.licence}{' · gated' if e.gated else ''}", e.hub_id)
               for e in catalog.CATALOG]
    known = {e.hub_id for e in catalog.CATALOG}
    return entries + [(f"{repo} · downloaded", repo) for repo in catalog.downloaded() if repo not in known]


def suggested_base() -> str:
    """A new project's base: fit.suggest_base for this machine when it is here already, else the app's default
    (a new project must never start on a model it would have to download before it could do anything)."""
    from voicetune.models import default_base_model

    name = fit.suggest_base(fit.this_machine())
    if catalog.find(name) is catalog.CATALOG[0] or models.local_snapshot(name) is not None:
        return name
    return default_base_model()


def project_lengths(project: int) -> list[int]:
    """The project's conversations in tokens, about 4 characters a token: enough for a time estimate, with no
    tokenizer of a model that may not be downloaded yet."""
    convs = projects.conversations_of(store.connect(), pid(project), held_out=False)
    return [max(16, len(json.dumps(c.messages, ensure_ascii=False)) // 4) for c in convs] or [300] * 50


def availability(name: str) -> str:
    if catalog.find(name) is catalog.CATALOG[0]:
        return "Embedded: always available here, offline too."
    try:
        catalog.check_base(name)
        return "Downloaded: available here."
    except ModelError as e:
        if models.REPO_ID.fullmatch(name) and not catalog.offline() and "not downloaded" in str(e):
            size = weights.download_size(name)
            return f"Not downloaded yet{f' ({size / 1e9:.1f} GB)' if size else ''}: press Download."
        return hide_paths(str(e))


def describe(name: str | None, project: int | None) -> str:
    """The chosen model's facts, whether it is here, and whether it fits this machine, as Markdown."""
    name = (name or "").strip()
    if not name or project is None:
        return ""
    entry = catalog.find(name)
    shape = catalog.shape_for(name)
    lines = [f"**{catalog.label(name)}**"]
    if entry:
        lines.append(f"{entry.params / 1e9:.2f}B parameters · licence [{entry.licence}]({entry.licence_url})"
                     f"{' (gated: accept it on the Hub first)' if entry.gated else ''} · context {entry.context:,} "
                     f"tokens · {entry.template} chat template")
    lines += ["", availability(name)]  # its own paragraph: markdown would run it into the facts line
    if shape is not None:
        report = fit.fit_report(shape, fit.this_machine(), lengths=project_lengths(project))
        lines += ["", "**Will it fit this machine?** (an estimate: rank 16, batch 4, max length 1024)"]
        lines += [f"- {line}" for line in report.advice]
    current = projects.base_of(store.get_project(store.connect(), pid(project)))
    lines += ["", f"This project's base now: **{catalog.label(current)}**. Runs keep the base they were trained on."]
    return "\n".join(lines)


def load(project: int | None) -> tuple[Any, str]:
    if project is None:
        return gr.update(choices=choices(), value=None), ""
    current = projects.base_of(store.get_project(store.connect(), pid(project)))
    return gr.update(choices=choices(), value=current), describe(current, project)


def use(name: str | None, project: int) -> str:
    """Make the picked model the project's base; refused in words (nothing saved) when it cannot be one."""
    try:
        stored = projects.set_base_model(store.connect(), pid(project), name or "")
    except ModelError as e:
        raise gr.Error(hide_paths(str(e)))
    gr.Info(f"New runs of this project train on {catalog.label(stored)}.")
    return describe(stored, project)


def download(name: str | None, project: int, oauth_token: gr.OAuthToken | None = None,
             progress: gr.Progress = gr.Progress()) -> str:
    """Fetch the picked Hub model into the shared cache, with a progress bar and its size; gated models go with
    the signed-in user's own token (else HF_TOKEN), and a refusal links the licence page."""
    name = (name or "").strip()
    token = oauth_token.token if oauth_token is not None and oauth_token.token else None

    def report(done: int, total: int) -> None:
        progress(done / total if total else 0, desc=f"{catalog.label(name)}: {done / 1e9:.2f} of {total / 1e9:.2f} GB")

    try:
        weights.download(name, token=token, on_progress=report)
    except ModelError as e:
        raise gr.Error(hide_paths(str(e)))
    return describe(name, project)


def build_base_settings(project: gr.State) -> None:
    with gr.Row(equal_height=True):
        picker = gr.Dropdown([], value=None, allow_custom_value=True, scale=4,
                             label="Base model (catalog, Hub id owner/name, or a folder on this machine)")
        use_btn = gr.Button("Use for this project", scale=1)
        fetch_btn = gr.Button("Download", scale=1)
    about = gr.Markdown()
    picker.change(describe, [picker, project], about)
    use_btn.click(use, [picker, project], about, api_name="use_base_model")
    fetch_btn.click(download, [picker, project], about, api_name="download_base_model", concurrency_limit=1,
                    concurrency_id="download")
    project.change(load, project, [picker, about])  # the page's own load sets the project, so this runs then too
