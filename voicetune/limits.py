"""How much one request may ask of the app: every cap on what a person types or pastes, in one place.

The UI checks these before any work starts and refuses with a plain message that names the cap; the core
functions stay general (a script may pass what it likes). No gradio here.

    from voicetune import limits
    limits.check_text("Message", text, limits.MAX_MESSAGE_CHARS)   # -> the message to show, or None
"""

from __future__ import annotations

# --- Compare ------------------------------------------------------------------------------------------
# The prompt of every arm is prefilled and a static KV cache is sized for prompt + reply, so the longest prompt
# sets the memory of the whole round. A customer message is a few sentences; 4,000 characters (~1,000 tokens)
# is a long email. The system prompt and the style guide (the prompt-only arm's instructions) get the same.
MAX_MESSAGE_CHARS = 4_000
MAX_SYSTEM_PROMPT_CHARS = 4_000
# Open (non-blind) Compare sends the whole conversation so far to every arm: 10 exchanges is a long support
# thread, and keeps the prompt under the model's context even with long messages. "Clear chats" starts again.
MAX_HISTORY_EXCHANGES = 10
# A batch runs every prompt through every arm on the one shared model, holding the chat slot meanwhile: 50
# prompts is a good test set and at most a few minutes of the slot on a GPU.
MAX_BATCH_PROMPTS = 50

# --- Import -------------------------------------------------------------------------------------------
# Pasted text skips the upload size cap (it arrives as a form value), so it gets its own: 2 MB of text is some
# thousands of conversations; more belongs in a file (uploads are capped at 50 MB, voicetune.data.MAX_FILE_BYTES).
MAX_PASTED_CHARS = 2_000_000

# --- Watching training ----------------------------------------------------------------------------------
# Each open page follows its job with a handler that holds a worker thread while it polls. Gradio serves with
# 40 threads (ui/settings.py max_threads); at most 16 watchers run at once, so other requests always find a
# thread. A page beyond that waits in the queue (it sees its place) until a watched job ends.
MAX_WATCHERS = 16


def check_text(field: str, text: str | None, limit: int) -> str | None:
    """The message for a text over its cap, or None when it fits."""
    n = len(text or "")
    if n <= limit:
        return None
    return f"{field} is {n:,} characters; the limit is {limit:,}. Shorten it and try again."
