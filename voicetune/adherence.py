"""Voice adherence: on how many unseen prompts does an arm speak in the voice, and does it only parrot?

Plain-string logic, no model: the scorecard (evaluate.py) feeds it replies. A *marker* is a word, a 2-4 word
phrase or an emoji that the project's example replies use often and the base model, answering the same
customer messages, almost never does; the user's required phrases are markers too. A reply *shows the
voice* when it hits at least one marker and no banned phrase.

    markers = derive_markers(example_replies, base_replies_to_the_same_prompts, required=["Stay caffeinated"])
    hits = [shows_voice(r, markers, banned=[]) for r in tuned_replies]
    print(count_line(sum(hits), len(hits)), wilson(sum(hits), len(hits)))
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[\U0001F300-\U0001FAFF\u2600-\u27BF\u2B50\u2B55]")
EMOJI = re.compile("[\U0001F300-\U0001FAFF\u2600-\u27BF\u2B50\u2B55]")
# Words too common to mark a voice on their own (they may still sit inside a marker phrase).
STOPWORDS = set("""a an and are as at be but by can do for from has have i if in is it its it's me my of on or
our so that the their them they this to us was we we'll we're what when which will with you you'll you're your
not no yes all any get just one more out up now how there here then than""".split())

MIN_EXAMPLE_SHARE = 0.2  # a marker appears in at least 1 in 5 of the example replies ...
MAX_BASE_SHARE = 0.05  # ... and in at most 1 in 20 of the base model's replies to the same messages
MAX_MARKERS = 12  # the strongest ones: enough for every habit of a voice, few enough to read
MAX_PHRASE_WORDS = 4
VARIANT_TOKENS = 3  # a variant is a 3-4 token run or an emoji: "until the" or "again" alone says nothing
COPY_NGRAM = 8  # a reply "copies" when it repeats 8 words in a row of one training reply ...
# ... none of them inside a stock phrase: STOCK_WORDS words in a row that the voice uses in at least
# MIN_EXAMPLE_SHARE of its replies (a sign-off, a set formula). Those are the voice, not a copy, and so is a
# stock phrase with a few words before it ("... working days. Kind regards, Ledger & Lane").
STOCK_WORDS = 4
# The last validation loss is the best and still 0.1% (and 0.002 nats) below the one before: a cosine
# schedule's last steps move little, so a larger bar would miss the under-trained runs the issue saw.
STILL_FALLING = 0.001
STILL_FALLING_NATS = 0.002
Z95 = 1.959964


@dataclass(frozen=True)
class Marker:
    text: str  # as matched: lower-case words separated by spaces, or one emoji
    kind: str  # "required", "sign-off", "greeting", "catchphrase", "emoji" or "register word"
    example_share: float  # share of the example replies that use it
    base_share: float  # share of the base model's replies that use it
    # Other parts of the same fixed phrase (a long sign-off), each a marker by itself, that a reply may say
    # instead: "Our tale is told... until the lanterns glow again! 🎭" is Lantern Tales' sign-off without the
    # "And so" its marker starts with. Shown with the marker, never counted as a second one.
    variants: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "variants": list(self.variants)}

    def forms(self) -> list[tuple[str, ...]]:
        """Every token sequence that counts as a hit: the marker, then its variants."""
        return [tuple(tokens(t)) for t in (self.text, *self.variants)]


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


def _grams(toks: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def _contains(toks: list[str], gram: tuple[str, ...]) -> bool:
    n = len(gram)
    return any(tuple(toks[i:i + n]) == gram for i in range(len(toks) - n + 1))


def _candidates(toks: list[str]) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for n in range(1, MAX_PHRASE_WORDS + 1):
        for g in _grams(toks, n):
            if n == 1 and not EMOJI.fullmatch(g[0]) and (g[0] in STOPWORDS or len(g[0]) < 3 or g[0].isdigit()):
                continue
            if n > 1 and all(w in STOPWORDS for w in g):
                continue
            out.add(g)
    return out


def _kind(gram: tuple[str, ...], replies: list[list[str]]) -> str:
    """Where the voice puts it: mostly in a reply's last words is a sign-off, in its first words a greeting."""
    if len(gram) == 1 and EMOJI.fullmatch(gram[0]):
        return "emoji"
    using = [t for t in replies if _contains(t, gram)]
    ends = sum(_contains(t[-(len(gram) + 4):], gram) for t in using)
    starts = sum(_contains(t[:len(gram) + 3], gram) for t in using)
    if ends * 2 > len(using):
        return "sign-off"
    if starts * 2 > len(using):
        return "greeting"
    return "catchphrase" if len(gram) > 1 else "register word"


def derive_markers(examples: list[str], base_replies: list[str], required: list[str] = (),
                   k: int = MAX_MARKERS) -> list[Marker]:
    """The voice's markers: the required phrases, then the k n-grams/emoji with the highest smoothed log-odds
    of appearing in an example reply rather than in a base reply (the measure of
    evaluate.distinctive_terms, counted per reply so one long reply cannot carry a word). A candidate must
    recur (in at least MIN_EXAMPLE_SHARE of the examples, and in 2) and be rare in base's replies (at most
    MAX_BASE_SHARE). One habit is one marker: see _same_habit."""
    ex, base = [tokens(t) for t in examples], [tokens(t) for t in base_replies]
    where: dict[tuple[str, ...], set[int]] = {}
    for i, t in enumerate(ex):
        for g in _candidates(t):
            where.setdefault(g, set()).add(i)
    df_base = Counter(g for t in base for g in _candidates(t))
    n_ex, n_base = max(1, len(ex)), max(1, len(base))
    need = max(2, math.ceil(MIN_EXAMPLE_SHARE * n_ex))
    scored = []
    for g, rows in where.items():
        if len(rows) < need or df_base[g] / n_base > MAX_BASE_SHARE:
            continue
        score = math.log((len(rows) + 1) / (n_ex + 2)) - math.log((df_base[g] + 1) / (n_base + 2))
        scored.append((-score, -len(g), " ".join(g), g))
    markers = [Marker(p.lower().strip(), "required", _share(ex, tuple(tokens(p))), _share(base, tuple(tokens(p))))
               for p in required if tokens(p)]
    kept: list[tuple[str, ...]] = [tuple(tokens(m.text)) for m in markers]
    ranked = sorted(scored)
    grams = [g for *_, g in ranked]  # strongest first: a marker's variants are listed in this order
    derived = 0
    for _, _, text, g in ranked:
        if derived >= k:
            break
        if any(_same_habit(g, big, where) for big in kept):
            continue
        kept.append(g)
        derived += 1
        markers.append(Marker(text, _kind(g, ex), len(where[g]) / n_ex, df_base[g] / n_base,
                              _variants(g, grams, where)))
    return markers


def _variants(g: tuple[str, ...], candidates: list[tuple[str, ...]], where: dict[tuple[str, ...], set[int]]
              ) -> tuple[str, ...]:
    """The other runs of g's fixed phrase: candidates (strongest first) used in exactly the replies g is, not
    inside g, and long enough (or an emoji) to say the phrase on their own. No library derives these."""
    return tuple(" ".join(v) for v in candidates
                 if v != g and where[v] == where[g] and not _contains(list(g), v)
                 and (len(v) >= VARIANT_TOKENS or (len(v) == 1 and EMOJI.fullmatch(v[0]))))


def _same_habit(g: tuple[str, ...], kept: tuple[str, ...], where: dict[tuple[str, ...], set[int]]) -> bool:
    """A phrase inside a kept marker (or around it), one used in exactly the same replies, or one sharing a
    word with it and used only where it is (the rest of a long sign-off) adds nothing to it."""
    if _contains(list(kept), g) or _contains(list(g), kept):
        return True
    mine, theirs = where[g], where.get(kept)
    return theirs is not None and (mine == theirs or (mine <= theirs and bool(set(g) & set(kept))))


def _share(replies: list[list[str]], gram: tuple[str, ...]) -> float:
    return sum(_contains(t, gram) for t in replies) / len(replies) if replies and gram else 0.0


def marker_hits(reply: str, markers: list[Marker]) -> list[str]:
    """The markers a reply hits, each named by its own text whichever of its forms the reply says."""
    toks = tokens(reply)
    return [m.text for m in markers if any(_contains(toks, f) for f in m.forms())]


def banned_hits(reply: str, banned: list[str]) -> list[str]:
    lower = reply.lower()
    return [b for b in banned if b.strip() and b.lower() in lower]


def shows_voice(reply: str, markers: list[Marker], banned: list[str]) -> bool:
    """At least one marker, and no banned phrase (a banned phrase counts against the reply)."""
    return bool(marker_hits(reply, markers)) and not banned_hits(reply, banned)


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for k successes in n: honest at 0 of 20 and 20 of 20, where k/n ± 2 SE is not."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def arm_adherence(replies: list[str], markers: list[Marker], banned: list[str]) -> dict[str, Any]:
    hits = sum(shows_voice(r, markers, banned) for r in replies)
    low, high = wilson(hits, len(replies))
    return {"hits": hits, "of": len(replies), "rate": hits / len(replies) if replies else 0.0,
            "low": low, "high": high}


def count_line(hits: int, of: int) -> str:
    return f"{hits} of {of} replies"


# --- copying ------------------------------------------------------------------------------------------


def stock_phrases(training_replies: list[str], n: int = STOCK_WORDS) -> set[tuple[str, ...]]:
    """n-word runs the voice repeats across many replies (a sign-off, a set formula): style, not copying."""
    df = Counter(g for t in training_replies for g in _grams(tokens(t), n))
    need = max(2, math.ceil(MIN_EXAMPLE_SHARE * len(training_replies)))
    return {g for g, c in df.items() if c >= need}


def copies(reply: str, training_grams: set[tuple[str, ...]], stock: set[tuple[str, ...]],
           n: int = COPY_NGRAM) -> bool:
    """Whether the reply repeats n words in a row of a training reply, none of them inside a stock phrase."""
    toks = tokens(reply)
    stocked = [False] * len(toks)
    for i in range(len(toks) - STOCK_WORDS + 1):
        if tuple(toks[i:i + STOCK_WORDS]) in stock:
            stocked[i:i + STOCK_WORDS] = [True] * STOCK_WORDS
    return any(tuple(toks[i:i + n]) in training_grams and not any(stocked[i:i + n])
               for i in range(len(toks) - n + 1))


def training_runs(training_replies: list[str], n: int = COPY_NGRAM) -> tuple[set[tuple[str, ...]],
                                                                           set[tuple[str, ...]]]:
    """What `copies` checks a reply against: every n-word run of the training replies, and their stock phrases."""
    grams = set().union(*(_grams(tokens(t), n) for t in training_replies)) if training_replies else set()
    return grams, stock_phrases(training_replies)


def copying_rate(replies: list[str], training_replies: list[str], n: int = COPY_NGRAM) -> dict[str, Any]:
    """Share of replies that repeat n words in a row of one training reply (the voice's stock phrases aside)."""
    grams, stock = training_runs(training_replies, n)
    k = sum(copies(r, grams, stock, n) for r in replies)
    return {"copies": k, "of": len(replies), "rate": k / len(replies) if replies else 0.0}


# --- unseen prompts -----------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def first_turn(conv: list[dict]) -> list[dict]:
    """A conversation's system prompt (if any) and its first customer message: how a new chat opens."""
    first = next(i for i, m in enumerate(conv) if m["role"] == "user")
    return [m for m in conv[:first] if m["role"] == "system"] + [conv[first]]


def unseen_prompts(heldout: list[list[dict]], test_prompts: list[str], trained: list[list[dict]]
                   ) -> tuple[list[tuple[str, list[dict]]], list[str]]:
    """(source, messages) per unseen prompt, and the prompts dropped because a trained conversation has
    that customer message: a prompt the run trained on would measure memory, not the voice."""
    seen = {_norm(m["content"]) for c in trained for m in c if m["role"] == "user"}
    out: list[tuple[str, list[dict]]] = []
    dropped: list[str] = []
    taken: set[str] = set()
    candidates = [("held-out", first_turn(c)) for c in heldout] + \
                 [("test prompt", [{"role": "user", "content": p.strip()}]) for p in test_prompts if p.strip()]
    for source, msgs in candidates:
        key = _norm(msgs[-1]["content"])
        if key in seen:
            dropped.append(msgs[-1]["content"])
        elif key not in taken:
            taken.add(key)
            out.append((source, msgs))
    return out, dropped


# --- the verdict's adherence sentences -----------------------------------------------------------------


def lead_sentence(adh: dict[str, dict[str, Any]]) -> str:
    """'The voice shows in 18 of 20 replies (prompt-only: 11 of 20, base: 0 of 20)' — the verdict's first line."""
    t, p, b = adh["tuned"], adh["prompt-only"], adh["base"]
    return (f"The voice shows in {count_line(t['hits'], t['of'])} (prompt-only: {p['hits']} of {p['of']}, "
            f"base: {b['hits']} of {b['of']})")


def still_falling(history: list[dict[str, Any]]) -> tuple[float, float] | None:
    """(previous, last) validation loss when the run ended while it was still improving, else None."""
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    if len(evals) < 2:
        return None
    prev, last = evals[-2], evals[-1]
    falling = last < prev * (1 - STILL_FALLING) and prev - last > STILL_FALLING_NATS  # near zero: done
    return (prev, last) if last <= min(evals) and falling else None
