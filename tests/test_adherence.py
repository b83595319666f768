"""Voice adherence on plain strings: markers, hits, the Wilson interval, copying, unseen prompts, the verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voicetune import projects, store
from voicetune.adherence import (
    Marker, arm_adherence, copying_rate, derive_markers, lead_sentence, marker_hits, shows_voice, still_falling,
    unseen_prompts, wilson,
)
from voicetune.data import list_examples
from voicetune.evaluate import prompts_for_run, verdict

EXAMPLES = [
    "We open at 7. See you soon! Stay caffeinated! ☕",
    "Yes we are! Sundays 8 till 4. Stay caffeinated! ☕",
    "Yay, welcome aboard! Pick your beans. Stay caffeinated! ☕",
    "Hey there! The wifi is on your receipt. Stay caffeinated! ☕",
    "Hey there! Beans ship every two weeks, so you never run dry.",
]
BASE = ["We are open from 7am to 5pm.", "Our hours are listed on the website.", "I'm sorry, I cannot help with that.",
        "The wifi password is on the receipt.", "Beans ship every two weeks."]


def test_markers_are_what_the_examples_repeat_and_base_does_not_say():
    markers = derive_markers(EXAMPLES, BASE, required=["See you soon"])
    assert [(m.text, m.kind) for m in markers] == [
        ("see you soon", "required"), ("stay caffeinated ☕", "sign-off"), ("hey there", "greeting")]
    assert markers[1].example_share == 0.8 and markers[1].base_share == 0.0
    # "beans ship every two weeks" recurs in one example only, and base says it: never a marker.
    assert all("beans" not in m.text for m in markers)


def test_a_phrase_base_uses_is_no_marker_and_one_habit_is_one_marker():
    examples = ["Kind regards, Ledger & Lane Client Services"] * 4 + ["Please wait. Kind regards, Ledger & Lane"]
    base = ["Please wait a moment."] * 19 + ["kind regards"]
    markers = derive_markers(examples, base)
    # "please" is in all of base's replies: no marker. "kind regards" (1 of 20 base replies, allowed) sits inside
    # the stronger sign-off; "ledger lane client services" shares its words and only appears where it does.
    # "client services" shares no word with it, so it stays a marker of its own.
    assert [(m.text, m.kind) for m in markers] == [("kind regards ledger lane", "sign-off"),
                                                   ("client services", "sign-off")]


def test_a_sign_off_said_in_part_still_shows_the_voice_but_a_common_fragment_does_not():
    """One habit is one marker, and the marker is its strongest run; a reply that says the rest of the same fixed
    phrase without that run ("Our tale is told..." without "And so") still speaks in the voice."""
    sign_off = "And so our tale is told... until the lanterns glow again! 🎭"
    examples = [f"Tickets are at the door. {sign_off}", f"Yes, we do matinees. {sign_off}",
                f"The bar opens at six. {sign_off}", "Of course, friend."]
    base = ["Tickets are sold at the door.", "We do matinees.", "The bar opens at 6pm.", "Sure."]
    [marker] = derive_markers(examples, base)
    assert marker.text == "and so our tale" and "until the lanterns glow" in marker.variants
    assert "🎭" in marker.variants and marker.to_dict()["variants"] == list(marker.variants)
    assert marker_hits("Indeed! Our tale is told... until the lanterns glow again! 🎭", [marker]) == [marker.text]
    assert marker_hits("The lanterns glow again tonight.", [marker]) == [marker.text]  # 3 words of the phrase
    for plain in ("Until the doors open, wait outside.", "Come again soon.", "The tale is long."):
        assert marker_hits(plain, [marker]) == [], plain  # 1-2 common words of it are not the phrase


def test_hits_and_banned_phrases_count_against_a_reply():
    markers = [Marker("stay caffeinated ☕", "sign-off", 1.0, 0.0), Marker("hey there", "greeting", 0.4, 0.0)]
    assert marker_hits("Hey there! Sure. Stay caffeinated! ☕", markers) == ["stay caffeinated ☕", "hey there"]
    assert marker_hits("Stay caffeinated!", markers) == []  # the whole marker, emoji included
    assert shows_voice("Hey there!", markers, banned=[])
    assert not shows_voice("Hey there! Unfortunately no.", markers, banned=["unfortunately"])
    assert not shows_voice("We are open.", markers, banned=[])
    row = arm_adherence(["Hey there!", "No.", "Hey there, unfortunately not."], markers, ["unfortunately"])
    assert (row["hits"], row["of"]) == (1, 3)
    assert row["low"] == pytest.approx(0.06149, abs=1e-5) and row["high"] == pytest.approx(0.79234, abs=1e-5)


def test_wilson_interval_exact():
    assert wilson(18, 20) == pytest.approx((0.698966, 0.972134), abs=1e-6)
    assert wilson(0, 20) == pytest.approx((0.0, 0.161125), abs=1e-6)
    assert wilson(20, 20) == pytest.approx((0.838875, 1.0), abs=1e-6)
    assert wilson(0, 0) == (0.0, 1.0)


def test_copying_is_eight_words_of_one_training_reply_but_not_the_shared_sign_off():
    training = ["Your parcel left our roastery this morning and should arrive by Friday. Thanks for ordering with "
                "us from the hill",
                "Refunds take five days. Thanks for ordering with us from the hill",
                "We roast on Mondays. Thanks for ordering with us from the hill"]
    replies = ["Good news: your parcel left our roastery this morning and should arrive soon.",  # copies 8+ words
               "We roast daily. Thanks for ordering with us from the hill",  # only the shared sign-off
               "Something else entirely."]
    assert copying_rate(replies, training) == {"copies": 1, "of": 3, "rate": pytest.approx(1 / 3)}


def test_a_stock_phrase_with_a_few_words_before_it_is_the_voice_not_a_copy():
    # Ledger & Lane's replies end "... within three working days. Kind regards, Ledger & Lane Client Services":
    # eight words in a row of a training reply, but four of them its sign-off.
    sign = "Kind regards, Ledger & Lane Client Services"
    training = [f"Our team will reply within three working days. {sign}", f"Please use the app. {sign}",
                f"Thank you for asking. {sign}", f"We are sorry to hear that, and we will help. {sign}"]
    replies = [f"We will write within three working days. {sign}",  # four own words and the sign-off
               f"Our team will reply within three working days, we promise. {sign}",  # eight own words: a copy
               f"We are sorry to hear that, and we will help you today. {sign}"]  # nine own words: a copy
    assert copying_rate(replies, training)["copies"] == 2


def test_unseen_prompts_never_include_a_trained_conversation():
    trained = [[{"role": "user", "content": "Are you open today?"}, {"role": "assistant", "content": "Yes!"}],
               [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hey"},
                {"role": "user", "content": "Do you ship abroad?"}, {"role": "assistant", "content": "No."}]]
    heldout = [[{"role": "system", "content": "Be Cosmo."}, {"role": "user", "content": "Is it vegan?"},
                {"role": "assistant", "content": "Yes."}, {"role": "user", "content": "And gluten?"},
                {"role": "assistant", "content": "No."}]]
    prompts, dropped = unseen_prompts(heldout, ["are you  OPEN today?", "", "Do you ship abroad?", "New one?",
                                                "new one?"], trained)
    assert prompts == [("held-out", [{"role": "system", "content": "Be Cosmo."},
                                     {"role": "user", "content": "Is it vegan?"}]),
                       ("test prompt", [{"role": "user", "content": "New one?"}])]
    assert dropped == ["are you  OPEN today?", "Do you ship abroad?"]
    trained_turns = {m["content"].lower() for c in trained for m in c if m["role"] == "user"}
    assert not {p[-1]["content"].lower() for _, p in prompts} & trained_turns


def test_still_falling_reads_the_eval_history():
    history = [{"loss": 3.0, "step": 1}, {"eval_loss": 2.0, "step": 2}, {"eval_loss": 1.5, "step": 4}]
    assert still_falling(history) == (2.0, 1.5)
    assert still_falling(history + [{"eval_loss": 1.6, "step": 6}]) is None  # turned up: it stopped in time
    assert still_falling([{"eval_loss": 2.0}, {"eval_loss": 1.995}]) == (2.0, 1.995)
    assert still_falling([{"eval_loss": 2.0}, {"eval_loss": 1.999}]) is None  # flat: less than 0.1%
    assert still_falling([{"eval_loss": 2.0}]) is None
    assert still_falling([{"eval_loss": 0.0107}, {"eval_loss": 0.0099}]) is None  # 7% less, but of nothing


def _card(tuned_hits: int, tuned_style: float, falling: list[float] | None = None) -> dict:
    arm = lambda h: {"hits": h, "of": 20, "rate": h / 20}  # noqa: E731
    return {
        "likelihood": {"base": {"loss": 3.0}, "prompt-only": {"loss": 2.5}, "tuned": {"loss": 1.0}},
        "style": {"base": {"distance": 0.6}, "prompt-only": {"distance": 0.3}, "tuned": {"distance": tuned_style}},
        "forgetting": {"flagged": False, "base_accuracy": 0.5, "tuned_accuracy": 0.5, "probes": 22},
        "adherence": {"arms": {"base": arm(0), "prompt-only": arm(11), "tuned": arm(tuned_hits)}},
        "under_trained": falling,
    }


def test_verdict_leads_with_adherence_and_never_overclaims():
    assert lead_sentence(_card(18, 0.2)["adherence"]["arms"]) == \
        "The voice shows in 18 of 20 replies (prompt-only: 11 of 20, base: 0 of 20)"
    assert verdict(_card(18, 0.2)) == (
        "The voice shows in 18 of 20 replies (prompt-only: 11 of 20, base: 0 of 20). Tuned beats prompt-only on "
        "voice (reference loss 1.00 vs 2.50, style distance 0.20 vs 0.30); no measurable forgetting.")
    # Better loss and style, but fewer replies in the voice: not "beats".
    assert verdict(_card(9, 0.2)).startswith(
        "The voice shows in 9 of 20 replies (prompt-only: 11 of 20, base: 0 of 20). Tuned does not beat "
        "prompt-only on voice (it speaks in the voice on fewer replies)")
    # Worse style than prompt-only: not "beats" either.
    assert "Tuned does not beat prompt-only on voice (reference loss" in verdict(_card(18, 0.35))
    # A dip below the flag is named, and said to be within noise (not "no measurable forgetting")
    dipped = _card(18, 0.2)
    dipped["forgetting"]["tuned_accuracy"] = 0.45
    assert verdict(dipped).endswith(
        "; a small probe dip (50% → 45% on 22 questions), too small for a probe this size to tell from noise.")
    assert verdict(_card(18, 0.2, [1.62, 1.41])).endswith(
        " The run looks under-trained: validation loss was still falling at its last evaluation "
        "(1.620 → 1.410); more epochs may help.")


def test_bundled_voices_ship_unseen_prompts_and_a_project_keeps_them(tmp_path: Path):
    for name, path in list_examples().items():
        prompts = [p for p in path.with_name(f"{name}.prompts.txt").read_text().splitlines() if p.strip()]
        trained = [json.loads(line)["messages"] for line in path.read_text().splitlines()]
        assert len(prompts) >= 20, name
        assert 30 <= len(trained) <= 50, name
        kept, dropped = unseen_prompts([], prompts, trained)
        assert dropped == [] and len(kept) == len(prompts), name
    conn = store.connect()
    pid = projects.load_example(conn, "cosmo-coffee")
    saved = conn.execute("SELECT test_prompts FROM projects WHERE id = ?", (pid,)).fetchone()[0]
    assert saved.splitlines()[0] == "Do you have any seasonal drinks right now?"
    # A run from the command line on a bundled file finds the prompts beside it.
    run = tmp_path / "run"
    run.mkdir()
    record = {"run_id": "run", "data": {"file": str(list_examples()["ledger-lane"])}}
    assert prompts_for_run(run, record)[0] == \
        (list_examples()["ledger-lane"].with_name("ledger-lane.prompts.txt").read_text().splitlines()[0])
    (run / "prompts.txt").write_text("Only this one?\n")
    assert prompts_for_run(run, record) == ["Only this one?"]
