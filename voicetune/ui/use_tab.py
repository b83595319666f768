"""Use it tab: call a finished run from your own code through the app's OpenAI-compatible endpoint.

Pick a run of any base model (each is answered by the base it was trained on; the list shows which), or give
it a friendly alias, copy the snippet for the `openai` Python client or curl, and make
an API key. A key is shown once, kept only as a hash, reaches only your own workspace's runs, and has its
own rate limit and caps on reply and prompt length (voicetune/apikeys.py); revoking it works at once. The
endpoint itself is voicetune/serve.py, served on this same port under /v1.
"""

from __future__ import annotations

import json
import time

import gradio as gr
import pandas as pd

from voicetune import apikeys
from voicetune.catalog import label
from voicetune.models import default_base_model
from voicetune.serve import workspace_models
from voicetune.ui import session

KEY_COLUMNS = ["id", "name", "key ends with", "requests / min", "max reply tokens", "max prompt tokens", "made", "state"]
EXAMPLE = "Do you ship abroad?"


def model_choices() -> dict:
    """The models an API key of this workspace can call: its finished runs of every base (newest first),
    aliases, and base; each shown with the base model that answers it, and chosen by its name."""
    served = workspace_models(default_base_model())
    choices = [(f"{name} · {label(m.base_model)}", name) for name, m in served.items() if name != apikeys.BASE_MODEL_ID]
    base = served[apikeys.BASE_MODEL_ID].base_model
    choices.append((f"{apikeys.BASE_MODEL_ID} · {label(base)}", apikeys.BASE_MODEL_ID))
    return gr.update(choices=choices, value=choices[0][1])


def base_url(request: gr.Request | None) -> str:
    """This server's /v1 address as the browser reached it (a proxy's forwarded host and scheme first)."""
    headers = dict(request.headers) if request is not None else {}
    underlying = getattr(request, "request", None)
    scheme = headers.get("x-forwarded-proto") or getattr(getattr(underlying, "url", None), "scheme", None) or "http"
    host = headers.get("x-forwarded-host") or headers.get("host") or "127.0.0.1:7860"
    return f"{scheme.split(',')[0].strip()}://{host.split(',')[0].strip()}/v1"


def snippets(model: str | None, request: gr.Request) -> tuple[str, str]:
    """Copy-paste code for the chosen model: the openai Python client, and curl."""
    model = model or apikeys.BASE_MODEL_ID
    url = base_url(request)
    python = f'''import os

from openai import OpenAI  # pip install openai

client = OpenAI(base_url="{url}", api_key=os.environ["VOICETUNE_API_KEY"])
reply = client.chat.completions.create(
    model="{model}",
    messages=[{{"role": "user", "content": "{EXAMPLE}"}}],
    max_tokens=200,
    temperature=0,  # 0: the most likely reply, the same every time; up to 2 for more varied ones
)
print(reply.choices[0].message.content)
'''
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": EXAMPLE}], "max_tokens": 200,
                       "temperature": 0})
    curl = f'''curl {url}/chat/completions \\
  -H "Authorization: Bearer $VOICETUNE_API_KEY" \\
  -H "Content-Type: application/json" \\
  -d '{body}'
'''
    return python, curl


def keys_table() -> pd.DataFrame:
    rows = [[k["id"], k["name"], f"…{k['hint']}", k["requests_per_minute"], k["max_tokens"], k["max_prompt_tokens"],
             time.strftime("%Y-%m-%d %H:%M", time.localtime(k["created"])), "revoked" if k["revoked"] else "live"]
            for k in apikeys.list_keys()]
    return pd.DataFrame(rows, columns=KEY_COLUMNS)


def make_key(name: str, per_minute: float, max_tokens: float, max_prompt: float,
             request: gr.Request) -> tuple[str, str, pd.DataFrame]:
    try:
        key = apikeys.make_key(name, owner=session.identity(request), requests_per_minute=int(per_minute),
                               max_tokens=int(max_tokens), max_prompt_tokens=int(max_prompt))
    except ValueError as e:
        raise gr.Error(str(e)) from None
    shown = "Copy this key now: it is shown only once, and voicetune keeps only a hash of it."
    return key, shown, keys_table()


def revoke_key(key_id: float | None) -> tuple[str, pd.DataFrame]:
    if key_id is None or not apikeys.revoke_key(int(key_id)):
        raise gr.Error(f"There is no live key with id {key_id}: pick an id from the table of keys.")
    return f"Key {int(key_id)} is revoked: requests with it are refused from now on.", keys_table()


def set_alias(alias: str, model: str | None) -> tuple[str, dict]:
    names = workspace_models(default_base_model())
    if not model or model not in names or names[model].folder is None:
        raise gr.Error("Choose one of your finished runs to name (the base model already has the name “base”).")
    run_id = names[model].folder.name
    try:
        apikeys.set_alias(alias, run_id)
    except ValueError as e:
        raise gr.Error(str(e)) from None
    update = model_choices()
    return f"API callers can now ask for model “{alias.strip()}” to get run {run_id}.", gr.update(
        choices=update["choices"], value=alias.strip())


def load_use_tab() -> tuple[dict, pd.DataFrame]:
    return model_choices(), keys_table()


def build_use_tab(demo: gr.Blocks) -> gr.Dropdown:
    """The tab; fills itself on page load in the visitor's own workspace. Returns the model picker."""
    gr.Markdown("Call a finished run from your own code. This server speaks the OpenAI chat API under `/v1`: any "
                "OpenAI client works. Each request needs an API key from below; the chat on this page does not.")
    with gr.Row():
        model = gr.Dropdown([apikeys.BASE_MODEL_ID], value=apikeys.BASE_MODEL_ID, allow_custom_value=True,
                            label="Run to call (its id, an alias, or base) · the base model that answers it",
                            scale=3)
        alias = gr.Textbox(label="Alias for this run (optional)", placeholder="e.g. cosmo", scale=2)
        alias_btn = gr.Button("Set alias", scale=1)
        refresh_btn = gr.Button("↻ Runs", scale=0, min_width=80)  # a run that finished after the page loaded
    alias_msg = gr.Markdown()
    python = gr.Code(language="python", label="Python (openai client)", interactive=False)
    curl = gr.Code(language="shell", label="curl", interactive=False)
    gr.Markdown("### API keys\nA key reaches only the runs of this workspace. Set `VOICETUNE_API_KEY` to it.")
    with gr.Row():
        name = gr.Textbox(label="Name (where it will be used)", placeholder="e.g. support bot", scale=2)
        per_minute = gr.Number(value=apikeys.REQUESTS_PER_MINUTE, precision=0, minimum=1, label="Requests per minute")
        max_tokens = gr.Number(value=apikeys.MAX_TOKENS, precision=0, minimum=1, label="Max reply tokens")
        max_prompt = gr.Number(value=apikeys.MAX_PROMPT_TOKENS, precision=0, minimum=16, label="Max prompt tokens")
    make_btn = gr.Button("Make key", variant="primary")
    new_key = gr.Textbox(label="New key (shown once)", interactive=False, buttons=["copy"])
    new_key_msg = gr.Markdown()
    table = gr.Dataframe(pd.DataFrame(columns=KEY_COLUMNS), interactive=False, label="Your keys")
    with gr.Row():
        revoke_id = gr.Number(precision=0, label="Key id to revoke", scale=1)
        revoke_btn = gr.Button("Revoke key", variant="stop", scale=1)
    revoke_msg = gr.Markdown()

    model.change(snippets, model, [python, curl])
    refresh_btn.click(load_use_tab, None, [model, table])
    alias_btn.click(set_alias, [alias, model], [alias_msg, model], api_name="set_model_alias")
    make_btn.click(make_key, [name, per_minute, max_tokens, max_prompt], [new_key, new_key_msg, table],
                   api_name="make_api_key")
    revoke_btn.click(revoke_key, revoke_id, [revoke_msg, table], api_name="revoke_api_key")
    demo.load(load_use_tab, None, [model, table]).then(snippets, model, [python, curl])
    return model
