"""Data tab: pick a bundled voice or paste conversations, check them, and preview the loss mask."""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from voicetune import models, store
from voicetune.data import DataError, list_examples, parse_jsonl_text, summarize
from voicetune.templates import encode_all, preview

MASK_COLORS = {"trained": "#16a34a"}


def load_example(name: str) -> str:
    examples = list_examples()
    if name not in examples:
        raise gr.Error(f"No bundled example called {name!r}.")
    return examples[name].read_text(encoding="utf-8")


def add_saved(text: str) -> str:
    """Append the conversations saved from the Compare tab ("teach it this") that the box does not hold yet."""
    conn = store.connect()
    saved = store.list_conversations(conn, store.ensure_project(conn))
    lines = [line for line in (text or "").splitlines() if line.strip()]
    present = set(lines)
    for conv in saved:
        line = json.dumps({"messages": conv["messages"]}, ensure_ascii=False)
        if line not in present:
            lines.append(line)
            present.add(line)
    return "\n".join(lines) + ("\n" if lines else "")


def problems_markdown(problems: list[Any], limit: int = 20) -> str:
    lines = [f"- **{p}**" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"- … and {len(problems) - limit} more")
    return "\n".join(lines)


def check_data(text: str, conv_number: float) -> tuple[str, list[tuple[str, str | None]]]:
    """Full check with the real tokenizer and template, then the mask preview of one conversation."""
    if not (text or "").strip():
        return "Add some conversations first: pick an example or paste JSONL.", []
    try:
        convs = parse_jsonl_text(text)
    except DataError as e:
        return f"### {len(e.problems)} problem(s) to fix before training\n" + problems_markdown(e.problems), []
    tok = models.load_tokenizer(models.resolve_base_model(None))
    encoded, problems = encode_all(tok, convs, max_length=1024)
    if problems:
        return f"### {len(problems)} problem(s) to fix before training\n" + problems_markdown(problems), []
    s = summarize(convs)
    trained = sum(e.n_trained for e in encoded)
    total = sum(len(e.input_ids) for e in encoded)
    note = "" if len(convs) >= 10 else "\n\n⚠️ Fewer than 10 conversations: the voice will barely take."
    summary = (
        f"✅ **{s['conversations']} conversations** ({s['multi_turn']} multi-turn), {total} tokens, "
        f"of which **{trained} assistant tokens carry the loss**.{note}"
    )
    idx = min(max(int(conv_number or 1), 1), len(convs)) - 1
    pairs = preview(tok, convs[idx].messages)
    return summary, [(piece, "trained" if on else None) for piece, on in pairs]


def build_data_tab() -> gr.Textbox:
    """Returns the conversations box, which the Train tab reads."""
    names = list(list_examples())
    with gr.Row():
        example = gr.Dropdown(names, value=names[0] if names else None, label="Bundled example voice", scale=3)
        load = gr.Button("Load example", scale=1)
        saved = gr.Button("Add saved conversations", scale=1)
    text = gr.Textbox(
        label="Conversations (OpenAI chat JSONL: one {\"messages\": [...]} per line)",
        lines=12, max_lines=24, placeholder='{"messages": [{"role": "user", "content": "Hi"}, '
        '{"role": "assistant", "content": "Hello from our brand!"}]}',
    )
    with gr.Row():
        conv_no = gr.Number(value=1, precision=0, minimum=1, label="Preview conversation #", scale=1)
        check = gr.Button("Check data & preview", variant="secondary", scale=2)
    summary = gr.Markdown()
    mask = gr.HighlightedText(
        label="Exactly what the model trains on (green tokens carry the loss)",
        color_map=MASK_COLORS, combine_adjacent=True, show_legend=False,
    )
    load.click(load_example, example, text)
    saved.click(add_saved, text, text)
    check.click(check_data, [text, conv_no], [summary, mask])
    return text
