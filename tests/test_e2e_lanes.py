"""Two password users in one real browser against the real app, with the workspace outside the checkout and /tmp
(as a Space keeps it in /data/voicetune): each edits turns in the editor, imports pasted conversations and
downloads a JSONL export. Every edit lands in its owner's database only; nothing of one is visible, writable or
downloadable by the other, and nothing of the shared root workspace reaches either page.

Screenshots go to test-artifacts/e2e-lanes/.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import httpx
import pytest

from tests.conftest import until
from tests.running_app import ROOT, RunningApp, start_app
from tests.test_e2e import browser, tab  # noqa: F401 - browser is the journey's module fixture, reused
from voicetune import store

pytestmark = pytest.mark.e2e

ARTIFACTS = ROOT / "test-artifacts" / "e2e-lanes"
ROOT_PROJECT, ROOT_QUESTION = "Root Secret Voice", "ROOT-ONLY question about the merger"


@pytest.fixture(scope="module")
def outside_home() -> Path:
    """A workspace neither in the checkout nor in the system temp folder, which Gradio would serve from."""
    folder = Path(tempfile.mkdtemp(prefix="voicetune-lanes-", dir="/var/tmp"))
    assert not folder.is_relative_to(ROOT) and not folder.is_relative_to(tempfile.gettempdir())
    yield folder / "home"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def app(outside_home: Path) -> RunningApp:
    # The shared root workspace holds a project whose conversation has id 1, as each user's first one will.
    outside_home.mkdir(parents=True)
    conn = store.connect(outside_home / store.DB_NAME)
    pid = conn.execute("INSERT INTO projects (name, created, opened) VALUES (?, 1, 9e9)", (ROOT_PROJECT,)).lastrowid
    store.add_conversation(conn, pid, [{"role": "user", "content": ROOT_QUESTION},
                                       {"role": "assistant", "content": "root reply"}])
    running = start_app(outside_home, env={"VOICETUNE_AUTH": "alice:a,bob:b"})
    try:
        yield running
    finally:
        running.stop()
        print(running.output())  # shown by pytest when the test failed


def db_of(app: RunningApp, user: str | None) -> Path:
    home = app.home if user is None else app.home / "users" / store.user_dir_name(f"user:{user}")
    return home / store.DB_NAME


def texts(app: RunningApp, user: str | None) -> list[str]:
    """Every turn's text in one workspace's database, read as it is on disk."""
    conn = store.connect(db_of(app, user))
    return [m["content"] for (raw,) in conn.execute("SELECT messages FROM conversations WHERE deleted IS NULL")
            for m in json.loads(raw)]


def guide_saved(app: RunningApp) -> str:
    """The style guide of alice's "Stale views" project, as it is on disk."""
    conn = store.connect(db_of(app, "alice"))
    return conn.execute("SELECT style_guide FROM projects WHERE name = 'Stale views'").fetchone()[0]


def sign_in(browser, app: RunningApp, user: str):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(app.url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(user[0])
    page.get_by_role("button", name="Login").click()
    expect(page.get_by_text(f"Signed in as {user}")).to_be_visible()
    return context, page


def edit_turns(page, name: str) -> None:
    """A new conversation, both turns typed and left (each blur saves), then the customer turn moved down."""
    from playwright.sync_api import expect

    tab(page, "Conversations")
    page.get_by_role("button", name="+ New conversation").click()
    expect(page.get_by_text("type the customer's message and your reply")).to_be_visible()
    turns = page.get_by_placeholder("Type this turn…")
    expect(turns).to_have_count(2)
    for i, text in enumerate((f"{name} asks about oat milk", f"{name} replies: we have it!")):
        turns.nth(i).fill(text)
        turns.nth(i).blur()
        expect(page.get_by_role("gridcell", name=text)).to_be_visible()  # read back from the database into the table


def unexpected_errors(app: RunningApp) -> list[str]:
    """The exception line of every traceback in the app's log other than a plain-words gr.Error (which gradio logs
    too), e.g. a request the server could not handle."""
    log = app.log.read_text(encoding="utf-8", errors="replace")
    found = []
    for chunk in log.split("Traceback (most recent call last):")[1:]:
        line = next((ln for ln in chunk.splitlines() if ln and not ln[0].isspace()), "")
        if not line.startswith("gradio.exceptions.Error"):
            found.append(line)
    return found + (["ASGI"] if "Exception in ASGI application" in log else [])


def watch_events(page) -> list[str]:
    """The events the page sends to the queue, as they go (their handler and inputs, cut short), for a message."""
    sent: list[str] = []
    page.on("request", lambda r: sent.append((r.post_data or "")[:160]) if "queue/join" in r.url else None)
    return sent


def type_and_leave(box, text: str) -> None:
    """Type into a box and leave it, which saves it."""
    box.fill(text)
    box.blur()


def until_or_none(predicate, timeout_s: float):
    try:
        return until(predicate, timeout_s)
    except AssertionError:
        return None


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_two_users_each_in_their_own_lane(browser, app: RunningApp, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    root_before = texts(app, None)

    # Signed out, the app describes nothing; signed in, the page holds no value from the root workspace
    assert httpx.get(app.url + "/config").status_code == 401
    alice_ctx, alice = sign_in(browser, app, "alice")
    bob_ctx, bob = sign_in(browser, app, "bob")
    config = alice.request.get(app.url + "/config").text()
    assert ROOT_PROJECT not in config and ROOT_QUESTION not in config

    # Each user makes a project of the same name and edits turns, in turn, in the open editor
    for page, name in ((alice, "Alice"), (bob, "Bob")):
        page.get_by_label("New project").fill("Launch voice")
        page.get_by_role("button", name="Create project").click()
        expect(page.get_by_text("Created project “Launch voice”")).to_be_visible()
    edit_turns(alice, "Alice")
    edit_turns(bob, "Bob")
    # Moving a turn (a button drawn at render time, like the text boxes) also lands in the owner's database
    alice.get_by_role("button", name="↓ down").first.click()
    expect(alice.get_by_placeholder("Type this turn…").first).to_have_value("Alice replies: we have it!")
    shot(alice, "alice-editor")

    assert texts(app, "alice") == ["Alice replies: we have it!", "Alice asks about oat milk"]
    assert texts(app, "bob") == ["Bob asks about oat milk", "Bob replies: we have it!"]
    assert texts(app, None) == root_before  # the root workspace was never written

    # Each imports pasted conversations
    for page, name in ((alice, "Alice"), (bob, "Bob")):
        tab(page, "Import")
        page.get_by_label("…or paste conversations").fill(f"User: {name} imports a question\nAssistant: {name} answers")
        page.get_by_role("button", name="Preview import").click()
        page.get_by_role("button", name="Add 1 conversation(s) to the project").click()
        expect(page.get_by_text("Added 1 conversation(s) from pasted text")).to_be_visible()
    assert "Alice imports a question" in texts(app, "alice") and "Bob imports a question" in texts(app, "bob")

    # Each downloads a JSONL export of their own project, from a workspace Gradio would not serve directly
    downloads = {}
    for page, name in ((alice, "alice"), (bob, "bob")):
        page.get_by_role("tab", name="Export", exact=True).click()  # the Data tab's own, not "5 · Export"
        page.get_by_role("button", name="OpenAI chat JSONL").click()
        shot(page, f"{name}-export")
        link = page.locator("a[download]:visible").first  # the File component's download link
        with page.expect_download() as download:
            link.click()
        saved = tmp_path / f"{name}.jsonl"
        download.value.save_as(saved)
        downloads[name] = (saved.read_text(encoding="utf-8"), link.get_attribute("href"))
    assert "Alice asks about oat milk" in downloads["alice"][0] and "Alice imports" in downloads["alice"][0]
    assert "Bob" not in downloads["alice"][0] and "Alice" not in downloads["bob"][0]
    assert ROOT_QUESTION not in downloads["alice"][0] + downloads["bob"][0]
    # Alice's download link is no use signed out
    assert httpx.get(app.url + downloads["alice"][1] if downloads["alice"][1].startswith("/") else
                     downloads["alice"][1]).status_code in (401, 403)
    shot(bob, "bob-export")

    # Nothing of one user is on the other's page (after a reload, everything is read back from the database)
    for page, other in ((alice, "Bob"), (bob, "Alice")):
        page.reload()
        tab(page, "Conversations")
        expect(page.get_by_role("gridcell", name=re.compile("imports a question"))).to_be_visible()
        content = page.content()
        assert other not in content and ROOT_PROJECT not in content and ROOT_QUESTION not in content

    # Bob may not push with the owner's token: this app has no VOICETUNE_PUSH_WITH_OWNER_TOKEN
    tab(bob, "5 · Export")
    expect(bob.get_by_text("Pushing is off: it would push with its owner's Hugging Face token")).to_be_visible()
    bob.get_by_role("button", name="Push", exact=True).click()
    expect(bob.get_by_text("Pushing is off in this app").last).to_be_visible()
    alice_ctx.close()
    bob_ctx.close()
    assert unexpected_errors(app) == []  # no request failed on the way


def open_row(page, text: str, tries: int = 4) -> None:
    """Click a conversation's row until the editor shows it: on a loaded machine the table may redraw (a
    project refresh) between drawing the row and taking the click, and the click is then lost."""
    from playwright.sync_api import expect

    for attempt in range(tries):
        page.get_by_role("gridcell", name=text).click()
        try:
            expect(page.get_by_placeholder("Type this turn…").first).to_have_value(text, timeout=20_000)
            return
        except AssertionError:
            if attempt == tries - 1:
                raise


def test_a_stale_view_never_overwrites_a_newer_save(browser, app: RunningApp) -> None:
    """Two tabs on one conversation, and Compare's style guide box after an edit on the Data tab: the later save
    from the stale view is refused with a plain message, and the view shows what is saved."""
    from playwright.sync_api import expect

    from voicetune.ui.compare_tab import STALE_GUIDE
    from voicetune.ui.data_tab.conversations import STALE_TURNS

    expect.set_options(timeout=60_000)
    first_ctx, first = sign_in(browser, app, "alice")
    first.get_by_label("New project").fill("Stale views")
    first.get_by_role("button", name="Create project").click()
    expect(first.get_by_text("Created project “Stale views”")).to_be_visible()
    edit_turns(first, "Carol")
    second_ctx, second = sign_in(browser, app, "alice")  # the same person, a second tab
    joins = watch_events(second)
    # Opened now, long before it is typed in (a person opens it, then reads, then types): typed into the
    # instant it opens, on a loaded machine the box can still be settling.
    second.get_by_text("Project settings").click()
    for page in (first, second):
        tab(page, "Conversations")
        open_row(page, "Carol asks about oat milk")
    cid = int(second.get_by_role("heading", name=re.compile(r"Conversation \d+")).inner_text().split()[1])

    first_turn = first.get_by_placeholder("Type this turn…").first
    first_turn.fill("Saved in the first tab")
    first_turn.blur()
    expect(first.get_by_role("gridcell", name="Saved in the first tab")).to_be_visible()
    second_turn = second.get_by_placeholder("Type this turn…").first
    second_turn.fill("Typed in the stale second tab")
    second_turn.blur()
    expect(second.get_by_text(STALE_TURNS.format(cid=cid))).to_be_visible()
    expect(second.get_by_placeholder("Type this turn…").first).to_have_value("Saved in the first tab")
    assert "Saved in the first tab" in texts(app, "alice") and "Typed in the stale second tab" not in texts(app, "alice")
    shot(second, "stale-turn")

    # One page: the style guide changed on the Data tab, then Compare's box (drawn before that) is left
    guide = second.get_by_label("Style guide (used by the prompt-only arm and the scorecard)")
    type_and_leave(guide, "Warm, short, sign off with a wave.")
    # The Data tab's save lands before Compare's box is edited (as a person's would, seconds apart); on a loaded
    # machine the two saves could otherwise reach the server in either order.
    saved = lambda: guide_saved(app) == "Warm, short, sign off with a wave."  # noqa: E731
    if not until_or_none(saved, 30):
        # Seen in two full two-process suites and in one of ~25 runs of this file on a loaded machine: the save
        # never reached the database. Said, with what the page held and sent, and typed once more; this test is
        # about the stale view that follows.
        warnings.warn(f"the Data tab's style guide save did not land in 30 s; the box held "
                      f"{guide.input_value()!r}; the page's events since sign-in: {joins}")
        type_and_leave(guide, "Warm, short, sign off with a wave.")
        until(saved, 60, "the Data tab's style guide save")
    tab(second, "3 · Compare")
    second.get_by_text("Style guide for the prompt-only arm").click()
    box = second.get_by_placeholder(re.compile("Warm and upbeat"))
    box.fill("Formal and long.")
    box.blur()
    expect(second.get_by_text(STALE_GUIDE)).to_be_visible()
    expect(box).to_have_value("Warm, short, sign off with a wave.")
    assert guide_saved(app) == "Warm, short, sign off with a wave."
    shot(second, "stale-style-guide")
    first_ctx.close()
    second_ctx.close()
    assert unexpected_errors(app) == []  # no request failed on the way
