"""Who is using the app, and which workspace every event handler works in.

Three modes, chosen by the environment:

- shared: nobody signs in and everyone shares one workspace (a laptop, a private Space).
- password: `VOICETUNE_AUTH="alice:pw1,bob:pw2"` puts Gradio's login page in front; each user gets a workspace.
- huggingface: a Space with `hf_oauth: true` in its README (Spaces then set OAUTH_CLIENT_ID) shows a
  "Sign in with Hugging Face" button; each user gets a workspace, optionally only members of the
  organisations in `VOICETUNE_ALLOWED_ORG`.

The identity always comes from the server side (Gradio's login cookie or the OAuth session), never from a
value the page sends. `scope_every_handler(demo)` wraps every registered handler so it runs inside
`store.user_scope(identity)`, including the listeners a `@gr.render` function adds each time it draws; a tab
added later needs to do nothing to be scoped.

    demo = build_app()
    scope_every_handler(demo)
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Callable, Literal

import gradio as gr
from gradio.context import LocalContext

from voicetune import projects, store

Mode = Literal["shared", "password", "huggingface"]
# Events the page fires on its own (loads, timers) and steps chained after another event. Signed out they leave
# the page as it is; every other event (a click, a blur that saves, a typed change) says to sign in again, so a
# write made after sign-in expired is never dropped without a word.
QUIET_TRIGGERS = {"load", "tick", "then", "success", "failure", "unload"}
SIGN_IN = ("Sign in again: you are not signed in (or your sign-in expired), so nothing was done or saved. Use "
           "the “Sign in with Hugging Face” button at the top of the page (or reload the page), then try again.")


def mode() -> Mode:
    if os.environ.get("OAUTH_CLIENT_ID") and os.environ.get("SPACE_ID"):
        return "huggingface"
    if os.environ.get("VOICETUNE_AUTH"):
        return "password"
    return "shared"


def password_logins() -> list[tuple[str, str]] | None:
    """VOICETUNE_AUTH as Gradio's `auth` list; a malformed entry is named by position, never by its password."""
    raw = os.environ.get("VOICETUNE_AUTH", "").strip()
    if not raw:
        return None
    logins = []
    for n, entry in enumerate(raw.split(","), start=1):
        user, sep, password = entry.strip().partition(":")
        if not sep or not user.strip() or not password:
            raise ValueError(f"VOICETUNE_AUTH entry {n} is not user:password (entries are separated by commas)")
        logins.append((user.strip(), password))
    return logins


def allowed_orgs() -> set[str]:
    return {o.strip().lower() for o in os.environ.get("VOICETUNE_ALLOWED_ORG", "").split(",") if o.strip()}


def _oauth_userinfo(request: Any) -> dict | None:
    """The signed-in Hugging Face user from the server-side session cookie, as gradio reads it for OAuthProfile."""
    from gradio.oauth import _get_valid_oauth_info_from_session  # the same expiry rule as gr.OAuthProfile

    underlying = getattr(request, "request", None)
    scope = getattr(underlying, "scope", None)
    session = scope.get("session", {}) if isinstance(scope, dict) else {}
    info = _get_valid_oauth_info_from_session(session) if session else None
    return info.get("userinfo") if info else None


def identity(request: Any) -> str | None:
    """The server-side identity behind a request, or None where nobody is signed in (or in shared mode).

    Raises gr.Error for a Hugging Face user outside the allowed organisations.
    """
    current = mode()
    if current == "shared" or request is None:
        return None
    if current == "password":
        return f"user:{request.username}" if request.username else None
    userinfo = _oauth_userinfo(request)
    if not userinfo:
        return None
    orgs = allowed_orgs()
    if orgs:
        member_of = {str(o.get("preferred_username") or o.get("name", "")).lower() for o in userinfo.get("orgs") or []}
        if not orgs & member_of:
            raise gr.Error(f"This voicetune is for members of {', '.join(sorted(orgs))} on Hugging Face. "
                           "Ask an admin of the organisation to invite you, then sign in again.")
    return f"hf:{userinfo['sub']}"  # `sub` survives a username change


def display_name(request: Any) -> str | None:
    if mode() == "password":
        return getattr(request, "username", None)
    userinfo = _oauth_userinfo(request) if mode() == "huggingface" else None
    return userinfo.get("preferred_username") if userinfo else None


def _current_identity() -> str | None:
    """Read from gradio's own per-call context, which it sets around every call and every generator step."""
    return identity(LocalContext.request.get(None))


def _nobody(outputs: int, quiet: bool) -> Any:
    """Without a signed-in user: page loads and timers leave the page as it is; clicks say to sign in."""
    if not quiet:
        raise gr.Error(SIGN_IN)
    return None if outputs == 0 else gr.skip() if outputs == 1 else tuple(gr.skip() for _ in range(outputs))


def scoped(fn: Callable, *, outputs: int = 1, quiet: bool = False) -> Callable:
    """fn, run in the signed-in user's workspace. Generators are scoped around every step, since gradio may
    run each step on a different thread; signature and type hints stay fn's, so gradio still injects
    gr.Request, gr.Progress and friends by them."""
    needs_user = mode() != "shared"

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            user = _current_identity()
            if needs_user and user is None:
                _nobody(outputs, quiet)
                return
            steps = fn(*args, **kwargs)
            try:
                while True:
                    with store.user_scope(user):
                        try:
                            item = next(steps)
                        except StopIteration:
                            return
                    yield item  # outside the scope: the next step may run on another thread
            finally:
                with store.user_scope(user):
                    steps.close()
        return gen_wrapper

    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def agen_wrapper(*args: Any, **kwargs: Any) -> Any:
            user = _current_identity()
            if needs_user and user is None:
                _nobody(outputs, quiet)
                return
            steps = fn(*args, **kwargs)
            while True:
                with store.user_scope(user):
                    try:
                        item = await steps.__anext__()
                    except StopAsyncIteration:
                        return
                yield item
        return agen_wrapper

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            user = _current_identity()
            if needs_user and user is None:
                return _nobody(outputs, quiet)
            with store.user_scope(user):
                return await fn(*args, **kwargs)
        return async_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        user = _current_identity()
        if needs_user and user is None:
            return _nobody(outputs, quiet)
        with store.user_scope(user):
            return fn(*args, **kwargs)
    return wrapper


def is_quiet(block_fn: Any) -> bool:
    """True for a handler the page runs by itself (loads, timers, chained steps, a @gr.render redraw)."""
    return block_fn.renderable is not None or all(trigger in QUIET_TRIGGERS for _, trigger in block_fn.targets)


def every_handler(demo: gr.Blocks, wrap: Callable[[Any], Callable], marker: str) -> gr.Blocks:
    """Replace every handler's fn with wrap(block_fn), once, and do the same for the listeners a @gr.render
    function creates while the app runs.

    Gradio registers those render-time listeners in the session's own copy of the dependency table when the
    render runs, long after the app was built, so a pass over demo.fns never sees them. The render's own
    handler (Renderable.apply) is therefore wrapped to wrap, right after each redraw, every listener it added.
    """
    for block_fn in list(demo.fns.values()):
        _wrap_handler(block_fn, wrap, marker)
    return demo


def _wrap_handler(block_fn: Any, wrap: Callable[[Any], Callable], marker: str) -> None:
    if block_fn.fn is None or getattr(block_fn.fn, marker, False):
        return
    fn = wrap(block_fn)
    if block_fn.renderable is not None:
        fn = _then_wrap_rendered(fn, wrap, marker)
    setattr(fn, marker, True)
    block_fn.fn = fn


def _then_wrap_rendered(render: Callable, wrap: Callable[[Any], Callable], marker: str) -> Callable:
    @functools.wraps(render)
    def redraw(*args: Any, **kwargs: Any) -> Any:
        result = render(*args, **kwargs)
        config = LocalContext.blocks_config.get(None)  # this session's dependency table, as Renderable.apply uses
        for block_fn in list(config.fns.values()) if config is not None else []:
            if block_fn.rendered_in is not None:
                _wrap_handler(block_fn, wrap, marker)
        return result
    return redraw


def scope_every_handler(demo: gr.Blocks) -> gr.Blocks:
    """Run every handler of demo, render-time listeners included, in the signed-in user's workspace (call once,
    after the whole app is built)."""
    return every_handler(demo, lambda block_fn: scoped(block_fn.fn, outputs=len(block_fn.outputs),
                                                       quiet=is_quiet(block_fn)), "_voicetune_scoped")


def whoami(request: gr.Request) -> str:
    """The line under the title: whose workspace this is."""
    if mode() == "shared":
        return "Everyone using this app shares one workspace."
    name = display_name(request)
    if not name:
        return "Not signed in: sign in with Hugging Face to get your own workspace."
    return f"Signed in as **{name}**: your projects, runs and exports are yours alone."


def build_identity_bar() -> gr.Markdown:
    """A sign-in button where Hugging Face sign-in is on, and a line saying whose workspace this is."""
    with gr.Row():
        if mode() == "huggingface":
            gr.LoginButton(scale=0)
        who = gr.Markdown(elem_id="voicetune-identity")
    return who


def pid(project: Any) -> int:
    """The project id a handler works on: the page's, or for a call with none yet (an API client, a page still
    loading) the user's current project. The page is built without one (see data_tab.build_data_tab)."""
    return projects.current_project(store.connect()) if project in (None, "") else int(project)
