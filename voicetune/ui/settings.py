"""How the app is served: every Gradio setting that bears on safety and load, with the reason for each, in one place.

app.py's `build_app()` and `main()` take these and nothing else, so a reviewer reads this file to know what the
server allows; tests/test_security.py and tests/test_load.py check them against the running app.

    demo = build_app()              # gr.Blocks(**BLOCKS)
    demo.queue(**QUEUE)
    demo.launch(**launch_settings())
"""

from __future__ import annotations

import os
from typing import Any

# --- Uploads --------------------------------------------------------------------------------------------
# The largest file anyone may upload. Example conversations for a voice are a few MB at most; a shared
# adapter zip for a small model is a few MB too (rank 16 on SmolLM2-135M: ~4 MB). Gradio refuses larger
# uploads with HTTP 413 before the body reaches disk.
MAX_UPLOAD_MB = 50
MAX_FILE_SIZE = f"{MAX_UPLOAD_MB}mb"

# Gradio's upload and output cache (uploaded files, files offered for download) is purged on a schedule:
# every 30 minutes, files older than 2 hours go. Two hours covers an import previewed, then confirmed, and a
# download clicked long after the export; nothing the user made lives only there (the workspace keeps it).
# Gradio also empties the cache when the server restarts.
DELETE_CACHE = (30 * 60, 2 * 60 * 60)  # (how often, minimum age), seconds

BLOCKS: dict[str, Any] = {
    "title": "voicetune",
    "delete_cache": DELETE_CACHE,
    "analytics_enabled": False,  # no usage pings to Gradio's servers (and none could leave a closed network)
}

# --- The queue ------------------------------------------------------------------------------------------
# One event at a time per handler unless the handler says otherwise: the model is shared, and a CPU has two
# cores to give. Chat shares one slot ("chat" concurrency id); the training watchers only read the database
# and share 16 slots ("watch", voicetune.limits.MAX_WATCHERS), so open pages cannot hold every worker thread.
# At most 64 events wait; the 65th person is told the queue is full instead of waiting without end. Waiting people see their place in the queue ("position N") on the page.
QUEUE: dict[str, Any] = {
    "default_concurrency_limit": 1,
    "max_size": 64,
    "api_open": False,  # every call goes through the queue and its limits; no REST route skips them
}

# --- What the server may serve and show -----------------------------------------------------------------
# allowed_paths stays empty: /gradio_api/file= serves only Gradio's own cache (uploads and files the app
# returned, copied there) and its static assets. The workspace (VOICETUNE_HOME: conversations, votes, runs)
# and the model cache are never served directly; a download is a copy Gradio makes into its cache. They are
# not added to blocked_paths either, because Gradio checks a returned file against blocked_paths too, and a
# download (an adapter zip) is written in the workspace first.
ALLOWED_PATHS: list[str] = []

LAUNCH: dict[str, Any] = {
    "max_file_size": MAX_FILE_SIZE,
    "allowed_paths": ALLOWED_PATHS,
    # A plain-words gr.Error always reaches the page; any other exception shows only "Error", never its text
    # or a traceback (show_error=False), and nothing is echoed to a console in the page (debug off).
    "show_error": False,
    "debug": False,
    # Gradio 6 keeps a "run history" of every input a user sent, in the browser's storage, unless told not
    # to; a marketing team's customer conversations must not linger in a shared browser. False also deletes
    # runs an older version saved.
    "run_history": False,
    "enable_monitoring": False,  # no /monitoring endpoint: it would show traffic to anyone with its URL
    "footer_links": ["api"],  # the API page documents the endpoints; no settings or run-history links
    "mcp_server": False,  # the app is not a tool server for LLM agents
    "pwa": False,  # no installable app with an offline cache of pages
    "ssr_mode": False,  # client-side rendering: no second (Node) server with its own port to protect
    "strict_cors": True,  # another site in the same browser cannot call a local app
    "max_threads": 40,  # Starlette's default, stated: the bound on request threads
    # Sessions whose gr.State (blind-round secrets, chat histories) is kept in memory; the oldest go first.
    # 1,000 sessions of a few KB each bound that memory.
    "state_session_capacity": 1000,
}


def launch_settings() -> dict[str, Any]:
    """LAUNCH plus where to listen: VOICETUNE_HOST/PORT, else Gradio's own GRADIO_SERVER_NAME/PORT (which hosts such
    as Spaces set), else loopback locally and every interface on a Space, where the proxy must reach it."""
    on_space = bool(os.environ.get("SPACE_ID"))
    env = lambda *names: next((os.environ[n] for n in names if os.environ.get(n, "").strip()), None)  # noqa: E731
    return {
        **LAUNCH,
        "server_name": env("VOICETUNE_HOST", "GRADIO_SERVER_NAME") or ("0.0.0.0" if on_space else "127.0.0.1"),
        "server_port": int(env("VOICETUNE_PORT", "GRADIO_SERVER_PORT") or "7860"),
    }
