"""The whole journey in a real browser (Debian's Chromium driven by Playwright) against the real app process:
project → import with an error → fix → train (Quick look, embedded model) → progress to 100% → compare →
blind vote → scorecard → adapter zip download, with a reload mid-way and a phone-width check.

Screenshots of each main screen go to test-artifacts/e2e/. Elements are found by their visible labels and text.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from tests.running_app import ROOT, RunningApp, serving

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "test-artifacts" / "e2e"
TRAIN_TIMEOUT_MS = 600_000
QUESTIONS = ["Where is my order?", "Are you open today?", "Can I get a refund?", "Do you sell gift cards?",
             "Do you ship abroad?", "Is the shop dog friendly?", "Do you have vegan options?",
             "How long does delivery take?", "Can I change my address?", "What is your phone number?",
             "Can I cancel my subscription?", "How do I reset my password?"]  # 12: training needs at least 10
SIGN_OFF = "Stay cosy! ☕"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: run `make test` as root to install it (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> RunningApp:
    with serving(tmp_path_factory.mktemp("e2e") / "home") as running:
        yield running


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def no_sideways_scroll(page) -> None:
    """Readable: the page is no wider than the window (nothing cut off to the right)."""
    width, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width <= inner + 2, f"the page is {width}px wide in a {inner}px window"


def data_file(folder: Path) -> Path:
    lines = [json.dumps({"messages": [{"role": "user", "content": q},
                                      {"role": "assistant", "content": f"Happy to help with that. {SIGN_OFF}"}]})
             for q in QUESTIONS]
    lines[3] = '{"messages": [{"role": "user", "content": "Do you sell gift cards?"}'  # broken: line 4
    path = folder / "voice.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tab(page, name: str) -> None:
    """Open a tab; on a narrow screen the tabs that do not fit sit in the "⋯" menu, as a person finds them."""
    from playwright.sync_api import expect

    expect(page.get_by_role("tab").first).to_be_visible()  # the page has drawn its tabs (after a reload too)
    target = page.get_by_role("tab", name=name).first
    if target.is_visible():
        target.click()
        return
    page.locator(".overflow-menu:visible button").first.click()
    page.locator(".overflow-dropdown:visible").get_by_text(name).first.click()


def test_the_whole_journey_in_a_browser(browser, app: RunningApp, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)  # a shared 2-core machine: the first model load alone can take 20 s
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(app.url)
    expect(page.get_by_text("Teach a small language model your brand voice")).to_be_visible()

    # 1. Create a project.
    page.get_by_label("New project").fill("E2E Voice")
    page.get_by_role("button", name="Create project").click()
    expect(page.get_by_text("Created project “E2E Voice”")).to_be_visible()
    shot(page, "1-data")
    no_sideways_scroll(page)

    # 2. Import a file with a deliberate error: the report names line 4.
    tab(page, "Import")
    upload = page.locator(".block", has=page.get_by_text("File (.jsonl, .json, .csv, .txt; up to 50 MB)")).last
    # As a person does it: click the drop zone, pick the file in the chooser.
    with page.expect_file_chooser() as chooser:
        upload.get_by_text("Click to Upload").click()
    chooser.value.set_files(str(data_file(tmp_path)))
    # Uploaded before Preview is pressed. By role and accessible name: Chromium builds differ in how they split the
    # file name's stem and extension into text nodes, so a text match on "voice.jsonl" is not portable.
    expect(upload.get_by_role("cell", name="voice.jsonl")).to_be_visible()
    page.get_by_role("button", name="Preview import").click()
    expect(page.get_by_text("11 accepted, 1 rejected")).to_be_visible()
    expect(page.get_by_text("line 4: invalid JSON")).to_be_visible()
    shot(page, "2-import-report")
    page.get_by_role("button", name="Add 11 conversation(s) to the project").click()
    expect(page.get_by_text("Added 11 conversation(s) from voice.jsonl")).to_be_visible()

    # 3. Fix it: the rejected conversation, typed in again and saved.
    tab(page, "Record")
    page.get_by_label("Customer says").fill("Do you sell gift cards?")
    page.get_by_label("Ideal brand reply").fill(f"Happy to help with that. {SIGN_OFF}")
    page.get_by_role("button", name="Add exchange").click()
    expect(page.get_by_text("Saved to conversation")).to_be_visible()

    # Reload mid-way: everything typed and saved is still there.
    page.reload()
    tab(page, "Conversations")
    expect(page.get_by_text("Do you sell gift cards?").first).to_be_visible()
    expect(page.get_by_label("Project (one brand voice)")).to_have_value("E2E Voice")

    # 4-5. Train with the quickest preset on the embedded model; progress reaches 100%.
    tab(page, "2 · Train")
    page.get_by_label("Quick look").check()
    page.get_by_role("button", name="Train", exact=True).click()
    # The run's id, not its passing "queued" status: a job the supervisor starts at once replaces that status
    # before a loaded machine's browser may draw it (it failed that way once under two test workers).
    expect(page.get_by_label("Run id")).not_to_have_value("")
    expect(page.get_by_text("Open the Compare tab to hear the difference")).to_be_visible(timeout=TRAIN_TIMEOUT_MS)
    expect(page.get_by_text("100% · step").first).to_be_visible()
    chart = page.get_by_role("img", name="Loss (lower = closer to your examples)")
    expect(chart.locator("polyline").first).to_be_attached()  # the loss is drawn, not an empty frame
    shot(page, "4-train-done")

    # 6. Compare: send a message to the base model and the new run.
    tab(page, "3 · Compare")
    # Short replies keep the test quick: two CPU cores write about two tokens a second per pane.
    page.get_by_role("button", name="Sampling").click()
    max_tokens = page.get_by_label("number input for Max reply tokens")
    max_tokens.fill("32")
    max_tokens.press("Enter")
    page.get_by_placeholder("Ask what a customer would ask…").fill("Do you ship abroad?")
    page.get_by_role("button", name="Send").click()
    # Every pane answers, each with its own speed line.
    expect(page.get_by_text("tok/s · prompt")).to_have_count(2, timeout=180_000)
    shot(page, "6-compare")

    # 7. Blind mode: replies are "Reply A" / "Reply B" until the vote reveals them.
    page.get_by_label("Blind A/B").check()
    page.get_by_placeholder("Ask what a customer would ask…").fill("Can I get a refund?")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_text("Reply A").first).to_be_visible(timeout=180_000)
    expect(page.get_by_text("tok/s · prompt")).to_have_count(0)  # no per-arm figures before the vote
    page.get_by_role("button", name="👈 Left is better").click()
    expect(page.get_by_text("Left** was").or_(page.get_by_text("Left was"))).to_be_visible()
    shot(page, "7-blind-vote")

    # 8. The scorecard of the run.
    tab(page, "4 · Scorecard")
    page.get_by_role("button", name="Show scorecard").click()
    expect(page.get_by_text("Forgetting probe:")).to_be_visible(timeout=120_000)
    shot(page, "8-scorecard")

    # 9. Download the adapter zip.
    tab(page, "5 · Export")
    page.get_by_role("button", name="Make adapter zip").click()
    expect(page.get_by_text("Adapter zip ready")).to_be_visible(timeout=120_000)
    with page.expect_download() as download:
        page.get_by_role("link", name="MB").first.click()  # the file's download link shows its size
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    with zipfile.ZipFile(saved) as z:
        assert {"adapter_model.safetensors", "adapter_config.json", "run.json"} <= set(z.namelist())
    shot(page, "9-export")

    # The phone width: the same page, readable without sideways scrolling.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    small = phone.new_page()
    small.goto(app.url)
    expect(small.get_by_text("Teach a small language model your brand voice")).to_be_visible()
    shot(small, "phone-data")
    no_sideways_scroll(small)
    tab(small, "3 · Compare")
    expect(small.get_by_text("Arms to compare (2–4)")).to_be_visible()
    shot(small, "phone-compare")
    no_sideways_scroll(small)
    phone.close()
    context.close()


def test_drafts_reviewed_in_a_browser(browser, app: RunningApp) -> None:
    """Data › Draft: three questions drafted by the embedded model, two accepted (one edited, one by Alt+A), one
    rejected by Alt+R; the Conversations table then shows the two drafted conversations."""
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(app.url)
    page.get_by_label("New project").fill("E2E Drafts")
    page.get_by_role("button", name="Create project").click()
    expect(page.get_by_text("Created project “E2E Drafts”")).to_be_visible()

    page.get_by_role("tab", name="Draft", exact=True).click()
    page.get_by_label("Customer questions, one per line").fill("Do you deliver?\nIs there wifi?\nCan I bring my dog?")
    page.get_by_role("button", name="Draft replies").click()
    expect(page.get_by_text("✅ 3 draft(s) are waiting for review below.")).to_be_visible(timeout=300_000)
    expect(page.get_by_text("· 3 waiting (0 accepted, 0 rejected so far)")).to_be_visible()
    expect(page.get_by_label("Customer says")).to_have_value("Do you deliver?")
    shot(page, "draft-1-queue")

    page.get_by_label("Drafted reply (edit it, then accept)").fill("We deliver within 2 miles! ☕")
    page.get_by_role("button", name="Accept").click()
    expect(page.get_by_text("· 2 waiting (1 accepted, 0 rejected so far)")).to_be_visible()
    expect(page.get_by_label("Customer says")).to_have_value("Is there wifi?")
    page.keyboard.press("Alt+r")
    expect(page.get_by_text("· 1 waiting (1 accepted, 1 rejected so far)")).to_be_visible()
    page.keyboard.press("Alt+a")
    expect(page.get_by_text("No drafts waiting for review (2 accepted, 1 rejected so far)")).to_be_visible()
    shot(page, "draft-2-reviewed")

    page.get_by_role("tab", name="Conversations", exact=True).click()
    table = page.locator(".block", has=page.get_by_text("Conversations (click a row to edit it)")).last
    expect(table).to_contain_text("We deliver within 2 miles! ☕")  # the edit, as stored
    shown = table.inner_text()  # what a person reads (the grid keeps hidden copies of some cells for editing)
    assert shown.splitlines().count("drafted") == 2 and "Can I bring my dog?" in shown  # the 2 accepted, tagged drafted
    assert "Is there wifi?" not in shown  # the rejected one: kept out of the project
    shot(page, "draft-3-table")
    context.close()
