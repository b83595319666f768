"""The Export tab: take a finished run out of voicetune as a zip, a merged model, a GGUF, or a Hub repository.

Every file is written under the workspace's exports/<run id>/ folder first, then offered for download as a copy
(ui/downloads.py), so the workspace itself is never served.
"""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

from voicetune import export, hub, runs, store
from voicetune.ui import downloads, session
from voicetune.ui.compare_tab import newest_run

INTRO = """Take a finished run with you. **Adapter (.zip)**: the small file of learned changes, with a model card
and a script that loads it. **Merged model**: the base model with the changes folded in, for tools without
PEFT. **GGUF + Modelfile**: one file for llama.cpp and Ollama (`ollama create my-voice -f Modelfile`)."""
DTYPES = ["bf16", "fp16"]  # half precision: what people download and serve; fp32 is for the command line
QUANTS = ["f16", "q8_0"]


def _run_folder(run_id: str | None) -> Path:
    """The chosen run in this user's workspace; a name from the page is only a key into it."""
    if not run_id:
        raise gr.Error("Choose a finished run first.")
    try:
        folder = store.run_dir(run_id)
        runs.read(folder)
    except runs.RunError:
        raise gr.Error(f"There is no finished run called {run_id} in your workspace.") from None
    return folder


def exports_dir(run_id: str) -> Path:
    path = store.home() / "exports" / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_zip(run_id: str | None) -> tuple[str, str]:
    folder = _run_folder(run_id)
    try:
        dest = export.adapter_zip(folder, exports_dir(folder.name) / f"{folder.name}-adapter.zip")
    except ValueError as e:
        raise gr.Error(str(e)) from None
    return downloads.offer(dest), f"Adapter zip ready: `{dest.name}` ({dest.stat().st_size / 2**20:.1f} MB)."


def make_merged(run_id: str | None, dtype: str) -> tuple[str, str]:
    """Merge, then zip the folder: a browser downloads files, not folders."""
    folder = _run_folder(run_id)
    if dtype not in DTYPES:
        raise gr.Error(f"Choose one of {', '.join(DTYPES)} for the merged model.")
    out = exports_dir(folder.name)
    try:
        merged = export.merge(folder, out / f"merged-{dtype}", dtype=dtype)  # type: ignore[arg-type]
    except ValueError as e:
        raise gr.Error(str(e)) from None
    dest = export.zip_folder(merged, out / f"{folder.name}-merged-{dtype}.zip")
    return downloads.offer(dest), (f"Merged model ready ({dtype}): `{dest.name}` ({dest.stat().st_size / 2**20:.0f} MB). "
                       "Unzip it and load the folder with `AutoModelForCausalLM.from_pretrained`.")


def make_gguf(run_id: str | None, quant: str) -> tuple[list[str], str]:
    """Merge in full precision, write the GGUF and its Modelfile, and drop the temporary merge."""
    import shutil
    import tempfile

    folder = _run_folder(run_id)
    if quant not in QUANTS:
        raise gr.Error(f"Choose one of {', '.join(QUANTS)} for the GGUF.")
    out = exports_dir(folder.name) / f"gguf-{quant}"
    scratch = Path(tempfile.mkdtemp(prefix=".merge-", dir=out.parent))
    try:
        merged = export.merge(folder, scratch / "merged", dtype="fp32")
        gguf_file = export.to_gguf(merged, out / f"{folder.name}-{quant}.gguf", quant=quant)  # type: ignore[arg-type]
    except ValueError as e:
        raise gr.Error(str(e)) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return (downloads.offer_all([gguf_file, out / "Modelfile"]),
            f"GGUF ready ({quant}, {gguf_file.stat().st_size / 2**20:.0f} MB). Put both files in one folder, then run "
            "`ollama create my-voice -f Modelfile` and `ollama run my-voice`.")


OWNER_TOKEN_ENV = "VOICETUNE_PUSH_WITH_OWNER_TOKEN"  # "1": users who do not sign in with Hugging Face push with HF_TOKEN
NEED_HF_SIGN_IN = ("Sign in with Hugging Face to push: the run goes to your own account, with your own sign-in "
                   "(this app never pushes with its owner's token for you).")
OWNER_TOKEN_OFF = ("Pushing is off in this app: it would push with its owner's Hugging Face token for everyone who "
                   "uses it. Whoever runs the app can allow that with the setting VOICETUNE_PUSH_WITH_OWNER_TOKEN=1; "
                   "until then, download the adapter zip and push it yourself.")


def token_status() -> str:
    """Whose account a push uses, never the token itself."""
    from huggingface_hub import get_token

    if session.mode() == "huggingface":
        return "Pushing uses **your own** Hugging Face account (the one you signed in with)."
    if os.environ.get(OWNER_TOKEN_ENV) != "1":
        return "Pushing is off: " + OWNER_TOKEN_OFF.split(": ", 1)[1]
    if os.environ.get("HF_TOKEN"):
        return "Pushing uses the token in this app's `HF_TOKEN` secret: the app owner's account."
    if get_token():
        return "Pushing uses the Hugging Face account this machine is logged in to."
    return ("No Hugging Face token is set: add a token with write access as the `HF_TOKEN` secret "
            "(Space settings → Variables and secrets) to push.")


def push_token(oauth_token: gr.OAuthToken | None) -> str | None:
    """The signed-in user's own token with Hugging Face sign-in; otherwise the owner's (HF_TOKEN or this machine's
    login, resolved by hub.push_run) only where the owner allowed it."""
    if session.mode() == "huggingface":
        if oauth_token is None or not oauth_token.token:
            raise gr.Error(NEED_HF_SIGN_IN)
        return oauth_token.token
    if os.environ.get(OWNER_TOKEN_ENV) != "1":
        raise gr.Error(OWNER_TOKEN_OFF)
    return None


def push(run_id: str | None, repo: str, private: bool, merged: bool, dataset: bool, dtype: str, overwrite: bool,
         oauth_token: gr.OAuthToken | None) -> tuple[str, dict]:
    """Push; an existing repository is refused until the user ticks the confirmation and presses Push again."""
    token = push_token(oauth_token)  # first: whether this user may push at all
    folder = _run_folder(run_id)
    try:
        pushed = hub.push_run(folder, repo, private=private, include_merged=merged, include_dataset=dataset,
                              merged_dtype=dtype if dtype in DTYPES else "bf16", token=token, overwrite=bool(overwrite),
                              endpoint=os.environ.get("HF_ENDPOINT") or None)
    except hub.RepoExists as e:
        return (f"⚠️ {str(e)[:1].upper() + str(e)[1:]}: tick **Add to the existing repository** and press Push "
                "again.", gr.update(visible=True, value=False))
    except hub.HubError as e:
        raise gr.Error(str(e)[:1].upper() + str(e)[1:]) from None
    lines = ["Pushed:"] + [f"- {p.kind}: [{p.repo_id}]({p.url}) ({'private' if p.private else 'public'})"
                           for p in pushed]
    return "\n".join(lines), gr.update(visible=False, value=False)


def build_export_tab() -> gr.Dropdown:
    gr.Markdown(INTRO)
    with gr.Row():
        # Choices arrive per user on page load; any value is checked against the user's own runs on the server.
        run = gr.Dropdown([], label="Finished run", scale=3, allow_custom_value=True)
        refresh = gr.Button("↻ Refresh", scale=0, min_width=80)
    with gr.Row(equal_height=False):
        with gr.Column():
            gr.Markdown("### Adapter")
            zip_btn = gr.Button("Make adapter zip", variant="primary")
            zip_file = gr.File(label="Adapter zip", interactive=False, height=100)
            zip_msg = gr.Markdown()
        with gr.Column():
            gr.Markdown("### Merged model")
            dtype = gr.Radio(DTYPES, value="bf16", label="Precision",
                             info="bf16 for recent GPUs and CPUs, fp16 for older GPUs")
            merge_btn = gr.Button("Merge")
            merged_file = gr.File(label="Merged model (.zip)", interactive=False, height=100)
            merge_msg = gr.Markdown()
        with gr.Column():
            gr.Markdown("### GGUF for llama.cpp and Ollama")
            quant = gr.Radio(QUANTS, value="f16", label="Format", info="q8_0: half the size, nearly the same replies")
            gguf_btn = gr.Button("Make GGUF")
            gguf_files = gr.File(label="GGUF and Modelfile", file_count="multiple", interactive=False, height=140)
            gguf_msg = gr.Markdown()
    with gr.Accordion("Push to the Hugging Face Hub", open=True):
        gr.Markdown(token_status)  # a callable value: checked again on every page load
        with gr.Row():
            repo = gr.Textbox(label="Repository name", placeholder="my-brand-voice or my-org/my-brand-voice", scale=3)
            private = gr.Checkbox(value=True, label="Private", info="only you (or your organisation) can see it")
        with gr.Row():
            with_merged = gr.Checkbox(value=False, label="Also push the merged model", info="to <name>-merged")
            with_data = gr.Checkbox(value=False, label="Also push the conversations", info="to the dataset <name>-data")
        overwrite = gr.Checkbox(value=False, visible=False, label="Add to the existing repository",
                                info="its files are updated by a new commit; its visibility stays as it is")
        push_btn = gr.Button("Push", variant="primary")
        push_msg = gr.Markdown()

    refresh.click(newest_run, None, run)
    zip_btn.click(make_zip, run, [zip_file, zip_msg], api_name="export_zip")
    merge_btn.click(make_merged, [run, dtype], [merged_file, merge_msg], api_name="export_merged")
    gguf_btn.click(make_gguf, [run, quant], [gguf_files, gguf_msg], api_name="export_gguf")
    push_btn.click(push, [run, repo, private, with_merged, with_data, dtype, overwrite], [push_msg, overwrite],
                   api_name="push")
    repo.input(lambda: gr.update(visible=False, value=False), None, overwrite)  # a new name needs a new confirmation
    return run
