"""Compare tab: one message to two to four arms at once, side by side or blind, with votes.

Arms are the base model, the prompt-only baseline (style guide + example replies as a system prompt) and
any finished run. In blind mode the server keeps the arm identities (gr.State never leaves the server):
the browser sees "Reply A" and "Reply B" and no per-arm figures until the vote is in.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Iterator

import gradio as gr
import pandas as pd

from voicetune import arena, limits, preferences, projects, store
from voicetune.catalog import label
from voicetune.config import CHAT_MAX_TOKENS, CHAT_REPETITION_PENALTY, GenConfig
from voicetune.data import check_messages
from voicetune.failures import hide_paths
from voicetune.generate import AdapterError, ChatModel, Reply, generate_groups, shared_model, stream_groups
from voicetune.models import ModelError
from voicetune.runs import finished as finished_runs
from voicetune.runs import read as read_run
from voicetune.ui import downloads
from voicetune.ui.session import pid

MAX_PANES = 4
BASE_CHOICE = "Base model"
PROMPT_ONLY_CHOICE = "Prompt-only (style guide + examples)"

_rng = random.SystemRandom()  # blind shuffles must not be predictable from the page


def run_choices() -> list[str]:
    return [r["run_id"] for r in finished_runs()]


def newest_run(runs: list[str] | None = None) -> dict:
    """A run picker listing the finished runs, newest chosen."""
    runs = run_choices() if runs is None else runs
    return gr.update(choices=runs, value=runs[0] if runs else None)


def arm_choices(runs: list[str] | None = None) -> dict:
    runs = run_choices() if runs is None else runs
    value = [BASE_CHOICE] + runs[:1]
    return gr.update(choices=[BASE_CHOICE, PROMPT_ONLY_CHOICE, *runs], value=value)


def examples_from(project: int) -> list[list[dict]]:
    """The project's training conversations, from which the prompt-only arm picks its few-shot examples."""
    return [c.messages for c in projects.conversations_of(store.connect(), pid(project), held_out=False)
            if not check_messages(c.messages, c.line)]


@dataclass
class Resolved:
    """The round's arms, the base model each answers with, and the bases grouped: (model, arm positions)."""

    arms: list[arena.Arm]
    bases: list[str]
    groups: list[tuple[ChatModel, list[int]]]

    @property
    def mixed(self) -> bool:
        return len(self.groups) > 1


def _model(base: str, who: str) -> ChatModel:
    try:
        return shared_model(base)
    except ModelError as e:
        raise gr.Error(f"Cannot use {who}: its base model {label(base)} is not available here. {hide_paths(str(e))}")


def resolve_arms(names: list[str], style_guide: str, project: int) -> Resolved:
    """Turn the chosen names into arms. The base and prompt-only arms answer with the project's base model; each
    run with the base it was trained on (its run.json), whose model checks the adapter's base and template."""
    if not names or len(names) < 1:
        raise gr.Error("Choose at least one arm to chat with.")
    if len(names) > MAX_PANES:
        raise gr.Error(f"Choose at most {MAX_PANES} arms.")
    project_base = projects.base_of(store.get_project(store.connect(), pid(project)))
    arms, bases, chats = [], [], {}
    for name in names:
        if name == BASE_CHOICE:
            arms.append(arena.base_arm())
            bases.append(project_base)
        elif name == PROMPT_ONLY_CHOICE:
            arms.append(arena.prompt_only_arm(style_guide or "", examples_from(project)))
            bases.append(project_base)
        else:
            try:
                folder = store.run_dir(name)
                base = read_run(folder)["base_model"]
            except (ValueError, FileNotFoundError, KeyError, AdapterError) as e:
                raise gr.Error(f"Cannot use run {name}: {hide_paths(str(e))}")
            chats.setdefault(base, _model(base, f"run {name}"))
            try:
                chats[base].load_adapter(folder, name=name)
            except (ValueError, FileNotFoundError, AdapterError) as e:
                raise gr.Error(f"Cannot use run {name}: {hide_paths(str(e))}")
            arms.append(arena.run_arm(name))
            bases.append(base)
    for base in bases:
        chats.setdefault(base, _model(base, "the base model arm"))
    groups = [(chats[b], [i for i, x in enumerate(bases) if x == b]) for b in dict.fromkeys(bases)]
    return Resolved(arms, bases, groups)


def mixed_bases_note(resolved: Resolved) -> str:
    """What the compare view says when a round's arms sit on different base models."""
    per_base = "; ".join(f"{label(chat.base_model)} answers {', '.join(resolved.arms[i].label for i in rows)}"
                         for chat, rows in resolved.groups)
    return f"These arms are on different base models, so each is answered by its own: {per_base}."


def stats_line(r: Reply, limit: int, base: str | None = None) -> str:
    """One arm's figures; with `base` (a round mixing bases) also the model that answered it. A reply that ran
    to the token limit says so: cut mid-sentence, it would otherwise read as the model trailing off."""
    first = f" · first token {r.first_token_s:.2f} s" if r.first_token_s else ""
    on = f" · answered by {label(base)}" if base else ""
    cut = f" · cut at the {limit}-token limit (Sampling › Max reply tokens)" if r.hit_limit(limit) else ""
    return (f"{r.tokens_per_second:.1f} tok/s · prompt {r.prompt_tokens} tok · reply {r.reply_tokens} tok"
            f"{first}{on}{cut}")


def pane_updates(rnd: arena.Round, histories: dict[str, list[dict]], partial: list[str] | None,
                 user: dict | None, stats: list[str]) -> list[Any]:
    """Values and labels for all panes: only public labels, and no figures in an unvoted blind round."""
    labels = rnd.public_labels()
    out: list[Any] = []
    for i in range(MAX_PANES):
        if i >= len(rnd.arms):
            out.append(gr.update(visible=False, value=[]))
            continue
        hist = list(histories.get(rnd.arms[i].key, []))
        if partial is not None and user is not None:
            hist += [user, {"role": "assistant", "content": partial[i]}]
        out.append(gr.update(visible=True, label=labels[i], value=hist))
    hide = rnd.blind and not rnd.voted
    for i in range(MAX_PANES):
        out.append(gr.update(value="" if hide or i >= len(stats) else stats[i], visible=i < len(rnd.arms)))
    return out


def check_prompt_sizes(message: str, system: str, style_guide: str) -> None:
    """The caps of voicetune.limits, before any model work: the longest prompt sizes the whole round's cache."""
    for field, text, limit in (("The message", message, limits.MAX_MESSAGE_CHARS),
                               ("The system prompt", system, limits.MAX_SYSTEM_PROMPT_CHARS),
                               ("The style guide", style_guide, limits.MAX_SYSTEM_PROMPT_CHARS)):
        problem = limits.check_text(field, text, limit)
        if problem:
            raise gr.Error(problem)


def send(names: list[str], blind: bool, message: str, system: str, style_guide: str, project: int,
         greedy: bool, temperature: float, top_p: float, max_new_tokens: float, repetition_penalty: float,
         seed: float, state: dict | None) -> Iterator[list[Any]]:
    if not (message or "").strip():
        raise gr.Error("Type a message to send.")
    check_prompt_sizes(message, system, style_guide)
    if not blind and any(len(h) >= 2 * limits.MAX_HISTORY_EXCHANGES for h in (state or {}).get("histories", {}).values()):
        raise gr.Error(f"This chat has reached {limits.MAX_HISTORY_EXCHANGES} exchanges, the most one comparison "
                       "sends to the model: press Clear chats to start a new one.")
    resolved = resolve_arms(names, style_guide, project)
    arms = resolved.arms
    if blind and len(arms) < 2:
        raise gr.Error("Blind mode needs at least two arms: tick two or more.")
    gen = GenConfig(max_new_tokens=int(max_new_tokens), greedy=bool(greedy), temperature=float(temperature),
                    top_p=float(top_p), repetition_penalty=float(repetition_penalty), seed=int(seed))
    state = dict(state or {})
    keys = [a.key for a in arms]
    # Open mode keeps a multi-turn history per arm; blind rounds are single messages, judged on their own.
    histories = state.get("histories", {}) if (not blind and state.get("keys") == keys) else {}
    rnd = arena.new_round(arms, blind=bool(blind), rng=random.Random(_rng.random()))
    user = {"role": "user", "content": message.strip()}
    requests = arena.round_requests(rnd, histories, user["content"], system or None)
    if resolved.mixed and not blind:  # blind rounds say nothing that could tell the arms apart
        gr.Info(mixed_bases_note(resolved))
    replies: list[Reply] = []
    try:
        for update in stream_groups(resolved.groups, requests, gen):
            if update.replies is not None:
                replies = update.replies
                break
            yield ["", *pane_updates(rnd, histories, update.texts, user, []), gr.update(visible=False), state]
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
        if "out of memory" not in str(e).lower():
            raise
        raise gr.Error("There is no memory left for chat while a training run uses the GPU. "
                       "Try again when the run finishes, or with fewer arms or shorter replies.")
    rnd.replies = [r.text for r in replies]
    for arm, reply in zip(rnd.arms, replies):
        histories[arm.key] = [*histories.get(arm.key, []), user, {"role": "assistant", "content": reply.text}]
    state = {"keys": keys, "histories": histories, "round": rnd, "prompt": [*requests[0].messages],
             "system": system or None,  # what base and tuned arms were sent: a vote's pair keeps it
             "stats": [stats_line(r, gen.max_new_tokens, base if resolved.mixed else None)
                       for r, base in zip(replies, resolved.bases)]}
    yield ["", *pane_updates(rnd, histories, None, None, state["stats"]), gr.update(visible=bool(blind)), state]


def vote(choice: str, project: int, state: dict | None) -> list[Any]:
    rnd: arena.Round | None = (state or {}).get("round")
    if rnd is None or not rnd.replies:
        raise gr.Error("Send a message first, then vote.")
    if len(rnd.arms) != 2:
        raise gr.Error("Votes compare exactly two replies: use blind mode, or tick two arms.")
    if choice not in arena.CHOICES:
        raise gr.Error(f"Unknown vote {choice!r}.")
    prompt = [m for m in state["prompt"] if m["role"] != "system"]
    conn = store.connect()
    sides = dict(left_arm=rnd.arms[0].key, right_arm=rnd.arms[1].key, left_reply=rnd.replies[0],
                 right_reply=rnd.replies[1], choice=choice)
    vote_id = store.add_vote(conn, pid(project), round_id=rnd.id, prompt=prompt, blind=rnd.blind, **sides)
    preferences.record_vote(conn, pid(project), vote_id=vote_id, prompt=prompt, system=state.get("system"),
                            base_model=store.get_project(conn, pid(project))["base_model"], **sides)
    rnd.voted = True
    revealed = " · ".join(f"**{side}** was {arm.label}" for side, arm in zip(("Left", "Right"), rnd.arms))
    return [f"Vote saved. {revealed}", *pane_updates(rnd, state["histories"], None, None, state["stats"]),
            gr.update(visible=False), win_table(project), state]


WIN_COLUMNS = ["arm_a", "arm_b", "a_wins", "b_wins", "ties", "both_bad", "votes", "a_win_rate", "ci95_low",
               "ci95_high"]


def win_table(project: int | None) -> pd.DataFrame:
    if project is None:
        return pd.DataFrame(columns=WIN_COLUMNS)
    rows = arena.win_rates(store.list_votes(store.connect(), pid(project)))
    return pd.DataFrame(rows, columns=WIN_COLUMNS).round(3)


def teach_choices(state: dict | None) -> dict:
    rnd = (state or {}).get("round")
    labels = rnd.public_labels() if rnd else []
    return gr.update(choices=labels, value=labels[0] if labels else None)


def pick_reply(label: str, state: dict | None) -> str:
    rnd = (state or {}).get("round")
    if not rnd or label not in rnd.public_labels():
        return ""
    return rnd.replies[rnd.public_labels().index(label)]


def teach(label: str, edited: str, project: int, state: dict | None) -> str:
    """Save the round's prompt with the (edited) reply as a new training conversation."""
    rnd = (state or {}).get("round")
    if not rnd or not rnd.replies:
        raise gr.Error("Send a message first.")
    if not (edited or "").strip():
        raise gr.Error("The reply to teach is empty.")
    messages = [*[m for m in state["prompt"] if m["role"] != "system"], {"role": "assistant", "content": edited.strip()}]
    conn = store.connect()
    cid = store.add_conversation(conn, pid(project), messages, source="teach-it-this")
    arm = rnd.arms[rnd.public_labels().index(label)].key if label in rnd.public_labels() else ""
    pair = preferences.record_edit(conn, pid(project), prompt=messages[:-1], system=state.get("system"),
                                   original=pick_reply(label, state), edited=edited, arm=arm,
                                   base_model=store.get_project(conn, pid(project))["base_model"])
    also = " and as a preference pair (edited over original) for Improve from preferences" if pair else ""
    return f"Saved as conversation {cid} in this project{also}: the next run trains on it (see the Data tab)."


def export_preferences(project: int) -> str:
    votes = store.list_votes(store.connect(), pid(project))
    path = store.home() / "exports" / f"preferences-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    store.atomic_write_text(path, arena.preference_jsonl(votes))
    return downloads.offer(path)


def batch_run(names: list[str], prompts_text: str, system: str, style_guide: str, project: int,
              max_new_tokens: float) -> tuple[pd.DataFrame, str, dict]:
    """Every prompt through every arm; each prompt is one batched round."""
    prompts = [p.strip() for p in (prompts_text or "").splitlines() if p.strip()]
    if not prompts:
        raise gr.Error("Paste one test prompt per line.")
    if len(prompts) > limits.MAX_BATCH_PROMPTS:
        raise gr.Error(f"The batch has {len(prompts)} prompts; the limit is {limits.MAX_BATCH_PROMPTS}. "
                       "Split it into smaller batches.")
    check_prompt_sizes(max(prompts, key=len), system, style_guide)
    resolved = resolve_arms(names, style_guide, project)
    arms = resolved.arms
    gen = GenConfig(max_new_tokens=int(max_new_tokens), repetition_penalty=CHAT_REPETITION_PENALTY)
    # Every prompt's round in one batch per base (row j * arms + i: prompt j, arm i), not one round after another
    rnd = arena.Round(id="batch", arms=arms, blind=False)
    requests = [r for prompt in prompts for r in arena.round_requests(rnd, {}, prompt, system or None)]
    groups = [(chat, [j * len(arms) + i for j in range(len(prompts)) for i in rows]) for chat, rows in resolved.groups]
    texts = [r.text for r in generate_groups(groups, requests, gen)]
    grid = [texts[j * len(arms):(j + 1) * len(arms)] for j in range(len(prompts))]
    path = store.home() / "exports" / f"grid-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    store.atomic_write_text(path, arena.grid_csv(prompts, arms, grid))
    frame = pd.DataFrame([[p, *row] for p, row in zip(prompts, grid)], columns=["prompt", *[a.label for a in arms]])
    batch = {"id": f"batch-{time.strftime('%Y%m%d-%H%M%S')}", "prompts": prompts, "arms": [a.key for a in arms],
             "grid": grid, "system": system or ""}
    return frame, downloads.offer(path), batch


def batch_vote(row: float, choice: str, project: int, batch: dict | None) -> str:
    """A vote on one row of the grid; needs exactly two arms, left and right as the columns show them."""
    if not batch:
        raise gr.Error("Run a batch first.")
    if len(batch["arms"]) != 2:
        raise gr.Error("Row votes compare exactly two arms: run the batch with two arms.")
    i = int(row or 0) - 1
    if not 0 <= i < len(batch["prompts"]):
        raise gr.Error(f"Row must be between 1 and {len(batch['prompts'])}.")
    prompt = [{"role": "user", "content": batch["prompts"][i]}]
    conn = store.connect()
    sides = dict(left_arm=batch["arms"][0], right_arm=batch["arms"][1], left_reply=batch["grid"][i][0],
                 right_reply=batch["grid"][i][1], choice=choice)
    stored = store.add_vote(conn, pid(project), round_id=f"{batch['id']}-{i + 1}", prompt=prompt, blind=False,
                            **sides)
    preferences.record_vote(conn, pid(project), vote_id=stored, prompt=prompt, system=batch.get("system"),
                            base_model=store.get_project(conn, pid(project))["base_model"], **sides)
    return f"Row {i + 1}: vote saved." if stored else f"Row {i + 1} already has a vote."


STALE_GUIDE = ("The style guide was changed elsewhere (the Data tab, or another tab or window) since this box showed "
               "it, so your edit was not saved. The box now shows the saved text: make your change again there.")


def load_style_guide(project: int | None) -> tuple[str, str | None]:
    """The style guide, twice: for the box, and as the text the box shows (a save is checked against it)."""
    text = "" if project is None else store.get_project(store.connect(), pid(project))["style_guide"]
    return text, (None if project is None else text)


def save_style_guide(text: str, project: int, shown: str | None) -> tuple[Any, str | None]:
    """Saved only over the text this box showed; otherwise the box is refreshed and says so."""
    problem = limits.check_text("The style guide", text, limits.MAX_SYSTEM_PROMPT_CHARS)
    if problem:
        raise gr.Error(problem + " It was not saved.")
    try:
        store.update_project(store.connect(), pid(project), style_guide=text or "",
                             expected=None if shown is None else {"style_guide": shown})
    except store.StaleWrite:
        gr.Warning(STALE_GUIDE)
        return load_style_guide(project)
    return gr.skip(), text or ""


def _sampling() -> tuple[gr.Checkbox, gr.Slider, gr.Slider, gr.Slider, gr.Slider, gr.Number]:
    """Greedy or sampled decoding, the reply length, the repetition penalty and the seed, shared by every arm."""
    with gr.Accordion("Sampling", open=False):
        with gr.Row():
            greedy = gr.Checkbox(value=True, label="Greedy (same reply every time)")
            temperature = gr.Slider(0.05, 1.5, value=0.7, label="Temperature")
            top_p = gr.Slider(0.1, 1.0, value=0.9, label="Top-p")
        with gr.Row():
            max_new = gr.Slider(16, 256, value=CHAT_MAX_TOKENS, step=16, label="Max reply tokens")
            rep = gr.Slider(1.0, 1.5, value=CHAT_REPETITION_PENALTY, step=0.05, label="Repetition penalty")
            seed = gr.Number(value=0, precision=0, label="Seed")
    return greedy, temperature, top_p, max_new, rep, seed


def _build_batch(arms: gr.Dropdown, system: gr.Textbox, style_guide: gr.Textbox, project: gr.State,
                 max_new: gr.Slider) -> None:
    """The batch accordion, laid out and wired: test prompts through every arm, a grid, and votes per row."""
    with gr.Accordion("Batch: run a list of test prompts through every arm", open=False):
        batch_prompts = gr.Textbox(lines=5, label="One test prompt per line")
        batch_btn = gr.Button("Run batch")
        grid = gr.Dataframe(interactive=False, wrap=True)
        grid_file = gr.File(label="Grid as CSV", interactive=False)
        with gr.Row():
            row_no = gr.Number(value=1, precision=0, minimum=1, label="Row to vote on (two arms)")
            row_buttons = [gr.Button(t, size="sm") for t in ("Left column better", "Right column better", "Tie",
                                                             "Both bad")]
        row_msg = gr.Markdown()
    batch_state = gr.State({})
    batch_btn.click(batch_run, [arms, batch_prompts, system, style_guide, project, max_new],
                    [grid, grid_file, batch_state], concurrency_limit=1, concurrency_id="chat", api_name="batch")
    for button, choice in zip(row_buttons, arena.CHOICES):
        button.click(batch_vote, [row_no, gr.State(choice), project, batch_state], row_msg, api_name=f"batch_vote_{choice}")


def _arms_row() -> tuple[gr.Dropdown, gr.Checkbox]:
    with gr.Row():
        # Runs appear while the app is up, so the server cannot fix the list of valid values at build
        # time; resolve_arms checks every name itself (store.run_dir + read_run). The runs are listed on
        # page load, inside the visitor's own workspace: at build time there is no visitor.
        arms = gr.Dropdown([BASE_CHOICE, PROMPT_ONLY_CHOICE], value=[BASE_CHOICE], multiselect=True,
                           allow_custom_value=True, label="Arms to compare (2–4)", scale=4)
        blind = gr.Checkbox(label="Blind A/B", value=False, scale=1,
                            info="Two random arms in random order; revealed after your vote")
    return arms, blind


def build_compare_tab(project: gr.State) -> tuple[gr.Dropdown, tuple]:
    """`project` holds the current project's id: its conversations, style guide and votes are used here.

    Returns the arm picker (refreshed when a run finishes) and the style guide's loader (run on page load).
    """
    arms, blind = _arms_row()
    with gr.Accordion("Style guide for the prompt-only arm", open=False):
        style_guide = gr.Textbox(lines=4, show_label=False,
                                 placeholder="e.g. Warm and upbeat, short sentences, always sign off 'Stay caffeinated!'")
    system = gr.Textbox(label="System prompt (optional, for base and tuned arms)", lines=1)
    # Hidden panes take no room, so two arms share the full width and four split it.
    with gr.Row(equal_height=True):
        panes = [gr.Chatbot(label=f"Pane {i + 1}", height=360, visible=i < 2, min_width=240) for i in range(MAX_PANES)]
    with gr.Row():
        stats = [gr.Markdown(visible=i < 2, min_height=0) for i in range(MAX_PANES)]
    with gr.Row():
        msg = gr.Textbox(placeholder="Ask what a customer would ask…", show_label=False, scale=5)
        go = gr.Button("Send", variant="primary", scale=1)
    with gr.Row(visible=False) as vote_row:
        vote_buttons = [gr.Button(text) for text in ("👈 Left is better", "Right is better 👉", "🤝 Tie", "👎 Both bad")]
    reveal = gr.Markdown()
    sampling = _sampling()
    with gr.Accordion("Teach it this: save a reply as a training conversation and a preference pair", open=False):
        which = gr.Dropdown([], label="Reply", allow_custom_value=True)  # choices change per round; teach checks
        edited = gr.Textbox(lines=3, label="Edit the reply into the ideal one")
        teach_btn = gr.Button("Save as training conversation")
        teach_msg = gr.Markdown()
    with gr.Accordion("Votes and win rates", open=False):
        table = gr.Dataframe(pd.DataFrame(columns=WIN_COLUMNS), interactive=False, wrap=True)  # filled per user
        export_btn = gr.Button("Export votes as preference data (DPO JSONL)")
        export_file = gr.File(label="Preference data", interactive=False)
    _build_batch(arms, system, style_guide, project, max_new=sampling[3])
    with gr.Accordion("Preference pairs: votes and edits that Improve from preferences trains on", open=False):
        from voicetune.ui.preferences_tab import build_preferences_view

        build_preferences_view(project)
    state = gr.State({})
    clear = gr.Button("Clear chats", size="sm")

    inputs = [arms, blind, msg, system, style_guide, project, *sampling, state]
    outputs = [msg, *panes, *stats, vote_row, state]
    for trigger in (go.click, msg.submit):
        trigger(send, inputs, outputs, concurrency_limit=1, concurrency_id="chat", api_name="send").then(
            teach_choices, state, which)
    for button, choice in zip(vote_buttons, arena.CHOICES):
        button.click(vote, [gr.State(choice), project, state], [reveal, *panes, *stats, vote_row, table, state],
                     api_name=f"vote_{choice}")
    which.change(pick_reply, [which, state], edited)
    teach_btn.click(teach, [which, edited, project, state], teach_msg)
    export_btn.click(export_preferences, project, export_file)
    guide_io = _wire_style_guide(project, style_guide)
    project.change(*guide_io).then(win_table, project, table)
    clear.click(lambda: ({}, *[[] for _ in panes], ""), None, [state, *panes, reveal])
    return arms, guide_io


def _wire_style_guide(project: gr.State, style_guide: gr.Textbox) -> tuple:
    """Saved the moment the user leaves the box, unless another tab changed it since the box showed it; returns
    its loader (run on page load and when the project changes)."""
    guide_shown = gr.State(None)  # the style guide as the box shows it
    guide_io = (load_style_guide, project, [style_guide, guide_shown])
    style_guide.blur(save_style_guide, [style_guide, project, guide_shown], [style_guide, guide_shown])
    return guide_io
