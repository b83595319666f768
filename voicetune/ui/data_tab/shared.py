"""What the Data tab's sub-tabs share: the per-visitor states, the helpers every sub-tab calls, and the
refreshers (a handler with its inputs and outputs) that one sub-tab chains after a write another one shows.

    tab = DataTab.create()          # in build_data_tab, before any sub-tab is built
    button.click(write, [tab.project], tab.status).then(*tab.view)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import gradio as gr

from voicetune import models, store
from voicetune.config import TrainConfig
from voicetune.data import Problem
from voicetune.ui.session import pid

SHOWN_PROBLEMS = 30
MAX_LENGTH = TrainConfig.max_length  # the default a run uses; the health check lets the user change it

Refresh = tuple[Callable[..., Any], Any, Any]  # (handler, inputs, outputs): what `.then(*refresh)` takes


def conn() -> Any:
    return store.connect()


def project_tokenizer(project: int) -> Any:
    return models.tokenizer_for(store.get_project(conn(), pid(project))["base_model"])


def editing_state(conversation_id: int | None = None) -> dict[str, Any]:
    """A new value for the editor's state: the conversation open in it (None: none) and a fresh `rev`, so the
    change that reloads the editor fires even when the same conversation is opened again."""
    return {"id": conversation_id, "rev": time.time()}


def fail(e: Exception) -> gr.Error:
    return gr.Error(str(e).strip("'\""))


def problems_markdown(problems: list[Problem], limit: int = SHOWN_PROBLEMS) -> str:
    lines = [f"- {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"- … and {len(problems) - limit} more")
    return "\n".join(lines)


def first(messages: list[dict], role: str) -> str:
    """The first turn of `role`, cut to fit a table cell."""
    text = next((str(m.get("content", "")) for m in messages if isinstance(m, dict) and m.get("role") == role), "")
    return text if len(text) <= 90 else text[:87] + "…"


@dataclass
class DataTab:
    """The states every sub-tab reads and the refreshers they chain after a write.

    Passed from sub-tab to sub-tab as each is built: a sub-tab fills in the refresher it owns (`view` by
    Conversations, `project_view` by the project bar, `health` by Health) and uses those built before it. The
    project bar is wired last, because its events refresh every sub-tab.
    """

    project: gr.State  # the current project's id, which the Train and Compare tabs read too
    editing: gr.State  # the conversation open in the editor
    seen: gr.State  # the version of it the editor shows: saves over a newer one are refused
    shown: gr.State  # the style guide and system prompt as the boxes show them
    status: gr.Markdown | None = None  # one message line under the project bar
    ask: list | None = None  # the delete confirmation's outputs: pending, its row, its question
    project_view: Refresh | None = None  # picker, settings and trash, read back from the database
    view: Refresh | None = None  # the table and the open conversation, read back from the database
    health: Refresh | None = None  # the health check

    @classmethod
    def create(cls) -> DataTab:
        """Every state starts empty: the page is built once, before any visitor is known."""
        return cls(project=gr.State(None), editing=gr.State({"id": None, "rev": 0}), seen=gr.State({}),
                   shown=gr.State({}))

    def refresh_all(self, event: Any) -> Any:
        """After a write that can change the project itself (a delete, a restore): everything is read back."""
        return event.then(*self.project_view).then(*self.view)
