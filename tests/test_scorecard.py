"""The scorecard measures something: it sees a voice that took, and does not see one that did not."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import PIRATE_PROMPTS, QUESTIONS, run_cli, voice_data
from voicetune.evaluate import distinctive_terms, load_probes, probe_passed, profile, style_distance


def test_style_profile_and_distance_exact():
    prof = profile(["Hi there! Do you like it?", "You rock! ☕"], required=["you"], banned=["sorry"], terms=["rock"])
    assert prof["reply_words"] == pytest.approx((6 + 2) / 2)
    assert prof["exclaim_rate"] == pytest.approx((1 / 2 + 1 / 1) / 2)
    assert prof["question_rate"] == pytest.approx((1 / 2 + 0) / 2)
    assert prof["emoji_rate"] == pytest.approx(0.5)
    assert prof["required_rate"] == 1.0 and prof["banned_rate"] == 0.0
    assert prof["distinctive_rate"] == pytest.approx((0 + 1 / 2) / 2)
    assert style_distance(prof, prof)[0] == 0.0
    far = {**prof, "reply_words": prof["reply_words"] * 10}
    assert style_distance(far, prof)[1]["reply_words"] == 1.0  # capped


def test_distinctive_terms_and_probe_matching():
    assert distinctive_terms(["arr matey crew", "arr crew"], ["hello there friend"], k=2) == ["arr", "crew"]
    assert probe_passed({"expect": ["4", "four"]}, "The answer is 4.")
    assert not probe_passed({"expect": ["4"]}, "It is 42.")
    assert probe_passed({"expect_case": ["CAT"]}, "CAT") and not probe_passed({"expect_case": ["CAT"]}, "cat")
    # Spanish named in Spanish is the right answer (tuned replies that switched language said so, and were
    # counted as forgotten); a reply that never names it is not
    spain = next(p for p in load_probes() if p["id"] == "spain-language")
    assert probe_passed(spain, "El lenguaje de España es el lenguaje de España, also known as Castellano.")
    assert probe_passed(spain, "El lenguaje de España es español, el lado de la lengua espanola.")
    assert not probe_passed(spain, "El lenguaje es el lenguaje es el lenguaje. España es la lengua de la España.")


def test_the_chat_model_answers_the_likelihood_of_labelled_tokens_as_the_models_own_loss(tiny_model: Path):
    # The scorecard asks ChatModel.nll, never the weights; it must agree with the model's own shifted loss.
    import torch

    from voicetune.generate import ChatModel
    from voicetune.templates import IGNORE

    chat = ChatModel(str(tiny_model))
    ids = [chat.tokenizer.bos_token_id or 1, 17, 42, 99, 7, 256, 3, 88]
    labels = [IGNORE, IGNORE, IGNORE, 99, 7, 256, IGNORE, 88]  # a prompt, a reply, a gap, a last token
    total, count = chat.nll(ids, labels, None)
    assert count == 4  # the labelled tokens after the first: each is predicted from the ones before it
    with torch.inference_mode():
        own = chat.model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
    assert total / count == pytest.approx(float(own), rel=1e-4)
    assert chat.nll(ids, ids, None)[1] == len(ids) - 1
    assert chat.context_length == 2048  # the tiny model's max_position_embeddings


def test_the_scorecard_and_batch_compare_decode_as_the_compare_tab_plays(scripted_chat) -> None:
    """The scorecard counts what a listener hears in Compare: greedy, with the Compare tab's repetition penalty
    (a small model loops without it, and a loop never reaches the voice's sign-off) and up to its reply length
    (a shorter limit cut sign-offs that Compare plays whole)."""
    import gradio as gr

    from voicetune import evaluate, projects, store
    from voicetune.cli import build_parser
    from voicetune.config import CHAT_MAX_TOKENS, CHAT_REPETITION_PENALTY
    from voicetune.ui import compare_tab

    with gr.Blocks():
        *_, max_new, penalty, _ = compare_tab._sampling()
    assert penalty.value == CHAT_REPETITION_PENALTY > 1.0
    for gen in (evaluate.REPLY_GEN, evaluate.PROBE_GEN):
        assert gen.greedy and gen.repetition_penalty == CHAT_REPETITION_PENALTY
    assert evaluate.REPLY_GEN.max_new_tokens == max_new.value == CHAT_MAX_TOKENS
    assert build_parser().parse_args(["chat", "--adapter", "a", "--prompt", "Hi"]).max_new_tokens == CHAT_MAX_TOKENS
    project = projects.create_project(store.connect(), "decoding")
    scripted_chat.enqueue("On its way.", "Yes.", "Nine till five.", "Every day.")
    frame, _, batch = compare_tab.batch_run([compare_tab.BASE_CHOICE, compare_tab.PROMPT_ONLY_CHOICE],
                                            "Where is my order?\nDo you deliver?", "", "", project, 24)
    assert scripted_chat.gens[-1].repetition_penalty == CHAT_REPETITION_PENALTY
    # Every prompt and arm in one batch, row j * arms + i; the grid reads back prompt by prompt, arm by arm
    assert len(scripted_chat.gens) == 1 and len(scripted_chat.requests) == 4
    assert batch["grid"] == [["On its way.", "Yes."], ["Nine till five.", "Every day."]]
    assert frame.values.tolist() == [["Where is my order?", "On its way.", "Yes."],
                                     ["Do you deliver?", "Nine till five.", "Every day."]]


def test_a_reply_that_ran_to_the_token_limit_is_counted_and_shown_as_cut(scripted_chat) -> None:
    """A reply that never finished may have lost its sign-off to the limit, not to the voice: the card counts such
    replies per arm and marks each one, so a miss can be read for what it is."""
    from voicetune import evaluate
    from voicetune.adherence import Marker
    from voicetune.arena import base_arm, prompt_only_arm, run_arm
    from voicetune.ui.scorecard_tab import marker_samples

    scripted_chat.adapters["r"] = "r"
    arms = [base_arm(), prompt_only_arm("", []), run_arm("r")]
    limit = evaluate.REPLY_GEN.max_new_tokens
    long = " ".join(["word"] * limit)  # the fake counts a word as a token
    # one batch per arm (base, prompt-only, tuned): its held-out reply, then its unseen one; no marker prompts
    signed = " ".join(["word"] * (limit - 2) + ["Stay", "caffeinated!"])  # at the limit, its sign-off inside
    scripted_chat.enqueue("a", long, "b", "Short. Stay caffeinated!", "c", signed)
    unseen = [("test prompt", [{"role": "user", "content": "Hi"}])]
    answers = evaluate.answer_all(scripted_chat, arms, [[{"role": "user", "content": "Q"}]], unseen, [])
    assert answers.unseen_cut == {"base": [True], "prompt-only": [False], "tuned": [True]}

    inputs = evaluate.EvalInputs(heldout=[], few_shot=[], style_guide="", required=[], banned=[], trained=[],
                                 test_prompts=["Hi"])
    markers = [Marker("stay caffeinated", "sign-off", 1.0, 0.0)]
    adh = evaluate.adherence_section(markers, unseen, [], answers.unseen_replies, answers.unseen_cut, inputs)
    assert [adh["arms"][k]["cut"] for k in evaluate.ARM_KEYS] == [1, 0, 1]
    assert [adh["arms"][k]["hits"] for k in evaluate.ARM_KEYS] == [0, 1, 1]  # cut or not, a marker is a marker
    card = {"adherence": adh, "decoding": {"repetition_penalty": 1.1, "reply_tokens": limit}}
    lines = evaluate.adherence_lines(card)
    assert lines[2].startswith("  base ") and lines[2].endswith(f"ran to the {limit}-token limit: 1")
    assert lines[3].endswith(f"ran to the {limit}-token limit: 0")
    shown = marker_samples(card).iloc[0]
    assert shown["base"].endswith("[no marker; cut at the token limit]")
    assert shown["prompt-only"].endswith("[stay caffeinated]")


@pytest.mark.slow
def test_scorecard_sees_a_voice_that_took_and_not_one_that_did_not(pirate_adapter: Path, tmp_path: Path):
    # The real run: the scorecard was computed automatically right after training.
    card = json.loads((pirate_adapter / "scorecard.json").read_text())
    lk, st = card["likelihood"], card["style"]
    assert card["heldout"] == 3
    assert card["decoding"] == {"greedy": True, "repetition_penalty": 1.1, "reply_tokens": 96, "probe_tokens": 32}
    assert lk["tuned"]["loss"] < 0.5 * lk["base"]["loss"]
    assert st["tuned"]["distance"] < st["base"]["distance"]
    # Voice adherence on the unseen prompts: the 3 held-out first turns and the 3 new test prompts. A test
    # prompt that a trained conversation has is left out: never a trained conversation.
    adh = card["adherence"]
    held = {json.loads(line)["messages"][0]["content"]
            for line in (pirate_adapter / "heldout.jsonl").read_text().splitlines()}
    trained = set(QUESTIONS) - held
    assert adh["dropped_as_trained"] == [q for q in PIRATE_PROMPTS if q in trained] != []
    assert (adh["prompts"], adh["from_heldout"], adh["from_test_prompts"]) == (6, 3, 3)
    assert not {s["prompt"] for s in adh["samples"]} & trained
    assert any("matey" in m["text"] or "arr" in m["text"].split() for m in adh["markers"])
    assert adh["arms"]["tuned"]["hits"] == 6 and adh["arms"]["base"]["hits"] == 0
    assert adh["copying"]["tuned"]["copies"] == 0  # its only reply is the voice's common run, not a copy
    tuned_hits = [s["tuned markers"] for s in adh["samples"]]
    assert all(tuned_hits)
    assert card["verdict"].startswith("The voice shows in 6 of 6 replies (prompt-only: ")
    assert "Tuned beats prompt-only on voice" in card["verdict"]
    assert card["prompt_cost"]["prompt_only_tokens"] > card["prompt_cost"]["tuned_tokens"]
    assert set(card["forgetting"]) >= {"base_accuracy", "tuned_accuracy", "neutral_loss_base", "flagged"}

    # The control: trained (one epoch is enough) on an unrelated voice, scored on the same pirate held-out
    # conversations. Trained in this process with the settings the CLI would pass: the CLI's train contract is
    # the session's pirate run, and a second `python -m voicetune train` would add only its start-up (~8 s).
    from voicetune.config import TrainConfig
    from voicetune.train import run_sft

    data = voice_data(tmp_path / "bank.jsonl", "Thank you for contacting us. Our team will review your request "
                                              "within two working days. Kind regards, Client Services")
    control = tmp_path / "control"
    run_sft(TrainConfig(data=str(data), out=str(control), epochs=1, seed=1, learning_rate=2e-3, val_fraction=0.25,
                        scorecard=False))
    shutil.copy(pirate_adapter / "heldout.jsonl", control / "heldout.jsonl")
    result = run_cli("eval", "--run", str(control), "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    other = json.loads(result.stdout)
    assert "The voice did not take" in other["verdict"]
    assert other["likelihood"]["tuned"]["loss"] > 10 * lk["tuned"]["loss"]
    assert other["style"]["tuned"]["distance"] > st["tuned"]["distance"]


@pytest.mark.slow
def test_eval_cli_prints_the_table(pirate_adapter: Path):
    result = run_cli("eval", "--run", str(pirate_adapter))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reference loss (lower = closer)" in result.stdout
    assert "probe accuracy" in result.stdout and "Tuned beats prompt-only" in result.stdout
    assert "Voice adherence on 6 unseen prompts (3 held-out first turns, 3 test prompts" in result.stdout
    assert "replies decoded as the Compare tab plays them: greedy, repetition penalty 1.1" in result.stdout
    assert "  tuned        6 of 6 replies (100%, 95% CI 61%–100%)" in result.stdout
