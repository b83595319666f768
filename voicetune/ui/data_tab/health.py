"""The Health sub-tab: the full check a run needs (counts, the split, the length distribution, every problem
and warning), with fixes the user confirms: drop the last turns of long conversations, merge duplicates.

    tab.health = build_health(tab, after=[imported])   # inside the Health sub-tab
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from voicetune import projects, store
from voicetune.templates import TemplateError
from voicetune.ui.charts import bar_chart_html
from voicetune.ui.data_tab.shared import MAX_LENGTH, DataTab, Refresh, conn, fail, problems_markdown, project_tokenizer
from voicetune.ui.session import pid


def health(project: int, max_length: float, truncate: bool = False) -> tuple[str, str, dict, dict, dict]:
    """The full check a run needs, with counts, the length distribution and every problem and warning."""
    tok = project_tokenizer(project)
    try:
        report = projects.check_project(conn(), pid(project), tok, int(max_length or MAX_LENGTH), truncate=truncate)
    except TemplateError as e:
        raise fail(e)
    lengths = sorted(report.lengths.values())
    too_long = len(report.over_length)
    shorten = gr.update(visible=bool(too_long or report.shortened),
                        value=f"Drop the last turns of {len(report.shortened) or too_long} long conversation(s)")
    pairs = [(f"#{a} and #{b} ({r:.0%} alike): keep #{a}", f"{a}-{b}") for a, b, r in report.duplicates]
    plot = bar_chart_html(length_buckets(lengths), "Conversations by length (tokens)", fmt="{}", bar_h=16)
    return ("\n\n".join(_summary_lines(project, report, lengths, max_length)), plot, shorten,
            gr.update(choices=pairs, value=None, visible=bool(pairs)), gr.update(visible=bool(pairs)))


def _summary_lines(project: int, report: Any, lengths: list[int], max_length: float) -> list[str]:
    """The check in words: counts and split first, then what blocks training, then what is only worth a look."""
    auto = store.get_project(conn(), pid(project))["val_fraction"] is None
    lines = [
        f"**{report.conversations} conversations** · {report.turns} turns · {report.tokens:,} tokens, of which "
        f"{report.trained_tokens:,} carry the loss · {report.held_out} held out for evaluation",
        f"Split: **{report.n_train} to train on, {report.n_val} for validation**"
        + (" (the held-out conversations)" if report.held_out else
           f" ({report.val_fraction:.0%}, {'chosen by size' if auto else 'your setting'})"),
    ]
    if report.drafted:
        lines.insert(1, f"Drafted: **{report.drafted} of the {report.trainable} conversations to train on** "
                        f"({report.drafted / report.trainable:.0%}); drafted ones are never held back for the scorecard")
    if lengths:
        lines.append(f"Length in tokens: shortest {lengths[0]}, median {lengths[len(lengths) // 2]}, "
                     f"longest {lengths[-1]} (max length {int(max_length or MAX_LENGTH)})")
    if report.problems:
        lines += [f"### ⛔ {len(report.problems)} problem(s) block training", problems_markdown(report.problems)]
    else:
        lines.append("### ✅ Ready to train")
    if report.warnings:
        lines += [f"### ⚠️ {len(report.warnings)} warning(s)", problems_markdown(report.warnings)]
    return lines


def length_buckets(lengths: list[int]) -> dict[str, int]:
    """A histogram: conversations per token range, in up to 12 equal buckets, shortest first (lengths sorted)."""
    if not lengths:
        return {}
    width = max(1, -(-(lengths[-1] + 1) // 12))
    counts: dict[int, int] = {}
    for n in lengths:
        counts[n // width] = counts.get(n // width, 0) + 1
    return {f"{b * width}-{(b + 1) * width - 1}": counts[b] for b in sorted(counts)}


def shorten_long(project: int, max_length: float) -> str:
    """With the user's consent (the button), long conversations lose their last turns; originals go to the trash."""
    report = projects.check_project(conn(), pid(project), project_tokenizer(project), int(max_length or MAX_LENGTH),
                                    truncate=True)
    n = projects.apply_shortening(conn(), report)
    return f"Shortened {n} conversation(s); the full versions are in the trash."


def merge(project: int, pair: str) -> str:
    if not pair:
        raise gr.Error("Choose a pair of duplicates to merge.")
    keep, drop = (int(x) for x in pair.split("-"))
    projects.merge_duplicate(conn(), keep, drop)
    return f"Kept conversation {keep}; {drop} went to the trash (its tags were kept)."


def build_health(tab: DataTab, *, after: list[Any]) -> Refresh:
    """Lays out and wires the sub-tab; the check also runs after each event in `after` (a confirmed import).
    Returns its refresher, which the project bar runs when the project or its validation share changes."""
    with gr.Row(equal_height=True):
        max_len = gr.Number(MAX_LENGTH, precision=0, minimum=16, label="Max length (tokens)", scale=1)
        check_btn = gr.Button("Check all conversations", variant="primary", scale=2)
    summary = gr.Markdown()
    lengths = gr.HTML()
    shorten_btn = gr.Button("Drop the last turns of long conversations", visible=False)
    with gr.Row(equal_height=True):
        dupes = gr.Dropdown([], label="Duplicates to merge", visible=False, scale=3)
        merge_btn = gr.Button("Merge (keep the first)", scale=1, visible=False)
    refresh = (health, [tab.project, max_len], [summary, lengths, shorten_btn, dupes, merge_btn])
    for event in after:
        event.then(*refresh)
    check_btn.click(*refresh, api_name="check_project")
    tab.refresh_all(shorten_btn.click(shorten_long, [tab.project, max_len], tab.status)).then(*refresh)
    tab.refresh_all(merge_btn.click(merge, [tab.project, dupes], tab.status)).then(*refresh)
    return refresh
