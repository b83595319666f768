"""What the page says when the machine, not the user, is the problem: a full disk, a workspace it cannot read.

Gradio shows a gr.Error's words and, for any other exception, only "Error" (show_error is off, so no
traceback reaches the page). A full disk would then be a bare "Error" in every tab, so every handler is
wrapped once, after the app is built, to turn those few failures into plain words with the fix:

    demo = plain_fault_messages(build_app())
    check_workspace()   # at start-up: refuse to serve a workspace it cannot write, and say why

Nothing is rolled back here: every write in voicetune is atomic or a SQLite transaction, so a failed save
leaves the previous state, and the message says so.
"""

from __future__ import annotations

import errno
import functools
import inspect
import os
import sqlite3
from typing import Any, Callable

import gradio as gr

from voicetune import store

DISK_FULL = ("The disk is full, so this was not saved. Everything saved before is intact. "
             "Free some space (delete old exports or runs), then try again.")
NO_ACCESS = ("voicetune cannot read or write its workspace folder ({where}). Everything saved before is "
             "intact. Ask whoever runs the app to give it access to that folder, then try again.")
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
ACCESS_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


def _workspace() -> str:
    """The workspace folder's name, without touching the disk (which may be what failed)."""
    return os.environ.get("VOICETUNE_HOME") or "workspace"


def plain_message(e: BaseException) -> str | None:
    """The words for a machine fault, or None for any other exception (which keeps its own handling)."""
    if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
        return DISK_FULL
    if isinstance(e, OSError) and e.errno in ACCESS_ERRNOS:
        return NO_ACCESS.format(where=_workspace())
    if isinstance(e, sqlite3.OperationalError):
        text = str(e).lower()
        if "disk is full" in text or "disk i/o error" in text:
            return DISK_FULL
        if "unable to open" in text or "readonly" in text or "authori" in text:
            return NO_ACCESS.format(where=_workspace())
    return None


def _translated(e: Exception) -> BaseException:
    message = plain_message(e)
    return gr.Error(message) if message else e


def plain_faults(fn: Callable) -> Callable:
    """fn, with machine faults raised as gr.Error; signature kept, so Gradio still injects by type hints."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:  # noqa: BLE001 - re-raised unchanged unless it is a machine fault
                raise _translated(e) from e
        return gen_wrapper

    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        return fn  # voicetune's handlers are synchronous; an async one keeps Gradio's own handling

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised unchanged unless it is a machine fault
            raise _translated(e) from e
    return wrapper


def plain_fault_messages(demo: gr.Blocks) -> gr.Blocks:
    """Wrap every handler of demo, render-time listeners included (once, after the whole app is built, like
    session's scoping)."""
    from voicetune.ui.session import every_handler

    return every_handler(demo, lambda block_fn: plain_faults(block_fn.fn), "_voicetune_faults")


def check_workspace() -> None:
    """Write and read back a probe file and open the database before serving; exit with the fix if not."""
    try:
        where = store.root()
        store.atomic_write_text(where / ".voicetune-probe", "ok")
        (where / ".voicetune-probe").read_text(encoding="utf-8")
        (where / ".voicetune-probe").unlink()
        store.count_projects(store.connect())
    except (OSError, sqlite3.Error) as e:
        why = "the disk is full" if plain_message(e) == DISK_FULL else "it cannot read or write it"
        raise SystemExit(f"voicetune cannot start with the workspace folder {_workspace()}: {why} ({e}). "
                         "Nothing in it was changed. Give the app access to that folder (or free some space), "
                         "or point VOICETUNE_HOME at another folder, then start it again.") from None
