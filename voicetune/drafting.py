"""Drafting: grow a handful of conversations into a training set, every draft reviewed by a person.

A drafting model (the project's base, a finished run of the project, or an OpenAI-compatible endpoint) answers
customer questions in the voice, or rewrites pasted FAQ answers in it. Each draft waits in the project's review
queue (store.py, m009) until a person accepts it (optionally with an edit: it becomes a conversation tagged and
sourced `drafted`, its provenance kept beside it) or rejects it (it stays out of the project). Nothing drafted
is trained on until it is accepted.

    conn = store.connect()
    asked = read_new_questions(conn, pid, "Do you deliver?\\nAre you open on Sunday?")   # deduplicated
    drafter = make_drafter(conn, pid, "base")                                             # or "run:<id>", "endpoint"
    for update in draft_replies(conn, pid, asked.kept, drafter): print(update.text)       # streamed, then queued
    accept(conn, next_pending(conn, pid)["id"], reply="Edited reply.")                    # -> conversation id
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

from voicetune import store
from voicetune.config import GenConfig
from voicetune.data import Problem
from voicetune.failures import hide_paths, scrub

DRAFTED = "drafted"  # the tag and the source of an accepted draft; Health and the split read the source
PROMPT_VERSION = "draft-reply-1"  # bump when reply_messages changes: the provenance says which prompt drafted
REWRITE_VERSION = "draft-rewrite-1"  # the same for rewrite_messages
QUESTIONS_VERSION = "draft-questions-1"  # the same for questions_messages
SEEDS = 3  # conversations shown per prompt: enough to show the voice, few enough for a 2k-token context
NEAR_COPY = 0.9  # a question this alike (difflib ratio over words) to one the project has is a duplicate
MAX_QUESTION_CHARS = 2000  # one customer message; longer is a pasted document, not a question
ENDPOINT_TIMEOUT_S = 120  # a hosted model answers in seconds; a local CPU server can take a minute or two
ERROR_BODY_CHARS = 300  # how much of an endpoint's error body is quoted to the user


class DraftError(ValueError):
    """Something the user can fix (an empty question, an endpoint that refused); the message says how."""


# ---------------------------------------------------------------- questions


def normalise(text: str) -> str:
    """A question as compared: lower case, words only ("Open Sunday?!" and "open sunday" are the same)."""
    return " ".join(re.findall(r"\w+", (text or "").lower()))


def first_customer_turn(messages: list[dict]) -> str:
    return next((str(m.get("content", "")) for m in messages if isinstance(m, dict) and m.get("role") == "user"), "")


@dataclass
class Questions:
    """Questions to draft, and the ones left out with why (a duplicate names what it repeats)."""

    kept: list[str] = field(default_factory=list)
    left_out: list[Problem] = field(default_factory=list)

    def summary(self) -> str:
        n = len(self.left_out)
        return f"{len(self.kept)} new question(s), {n} left out" + (":" if n else "")


def _known_questions(conn: sqlite3.Connection, project_id: int) -> list[tuple[str, str]]:
    """(normalised question, where it is) for the project's first customer turns and its pending drafts."""
    known = [(normalise(first_customer_turn(c["messages"])), f"conversation {c['id']}")
             for c in store.list_conversations(conn, project_id)]
    known += [(normalise(d["question"]), f"draft {d['id']} (waiting for review)")
              for d in store.list_drafts(conn, project_id, "pending")]
    return [(q, where) for q, where in known if q]


def duplicate_of(question: str, known: list[tuple[str, str]]) -> str | None:
    """Where the project already asks this question, exactly or nearly (NEAR_COPY), or None."""
    q = normalise(question)
    for other, where in known:
        if q == other:
            return where
    words = q.split()
    for other, where in known:
        if difflib.SequenceMatcher(None, words, other.split(), autojunk=False).ratio() >= NEAR_COPY:
            return f"{where} (nearly the same)"
    return None


def read_new_questions(conn: sqlite3.Connection, project_id: int, text: str) -> Questions:
    """Typed, pasted or imported questions, one per line, less blanks and duplicates of the project or each other."""
    known = _known_questions(conn, project_id)
    found = Questions()
    for line, raw in enumerate((text or "").splitlines(), start=1):
        question = raw.strip()
        if not question:
            continue
        if len(question) > MAX_QUESTION_CHARS:
            found.left_out.append(Problem(line, "", f"is {len(question):,} characters, over the {MAX_QUESTION_CHARS:,} "
                                          "of one customer message: shorten it"))
            continue
        where = duplicate_of(question, known)
        if where:
            found.left_out.append(Problem(line, "", f"“{question[:60]}” is already asked by {where}"))
            continue
        found.kept.append(question)
        known.append((normalise(question), f"line {line}"))
    return found


# ---------------------------------------------------------------- seeds: the conversations shown in a prompt

# Which of the project's conversations a prompt shows: the SEEDS whose first customer turn is most like the
# question, by cosine similarity of TF-IDF word counts (lower-cased words; idf = log(1 + N / df) over the
# project's questions). Why this: it needs no model (the sentence embedder is optional and the drafting model
# may be a remote endpoint), it is exact and repeatable in a test, it costs microseconds for a project's few
# hundred questions, and idf makes the words that tell questions apart ("refund", "vegan") count, not "you" or
# "the". Only human-written conversations that are not held out are seeds: a draft copied from a draft drifts
# from the voice, and a held-out reply shown to a drafter would leak the evaluation into training.


def _bag(text: str) -> Counter:
    return Counter(re.findall(r"\w+", (text or "").lower()))


def seed_pool(conn: sqlite3.Connection, project_id: int) -> list[dict[str, Any]]:
    """The conversations a prompt may show: human-written, not held out, with a customer turn and a reply."""
    return [c for c in store.list_conversations(conn, project_id)
            if c["source"] != DRAFTED and not c["held_out"] and first_customer_turn(c["messages"])
            and any(isinstance(m, dict) and m.get("role") == "assistant" for m in c["messages"])]


def similar_conversations(question: str, pool: list[dict[str, Any]], k: int = SEEDS) -> list[dict[str, Any]]:
    """The k conversations of `pool` whose first customer turn is most like `question` (see above); ties and a
    question sharing no word with any keep table order, so the first conversations are the fallback."""
    bags = [_bag(first_customer_turn(c["messages"])) for c in pool]
    df = Counter(w for bag in bags for w in bag)
    idf = {w: math.log(1 + len(pool) / n) for w, n in df.items()}

    def vector(bag: Counter) -> dict[str, float]:
        return {w: n * idf.get(w, math.log(1 + len(pool))) for w, n in bag.items()}

    def cosine(a: dict[str, float], b: dict[str, float]) -> float:
        dot = sum(v * b.get(w, 0.0) for w, v in a.items())
        norm = math.sqrt(sum(v * v for v in a.values())) * math.sqrt(sum(v * v for v in b.values()))
        return dot / norm if norm else 0.0

    q = vector(_bag(question))
    scores = [cosine(q, vector(bag)) for bag in bags]
    order = sorted(range(len(pool)), key=lambda i: (-scores[i], i))
    return [pool[i] for i in order[:k]]


# ---------------------------------------------------------------- prompts


def _exchange(messages: list[dict]) -> tuple[str, str]:
    user = first_customer_turn(messages)
    reply = next((str(m.get("content", "")) for m in messages if isinstance(m, dict) and m.get("role") == "assistant"), "")
    return user, reply


def _voice_system(project: dict[str, Any], seeds: list[dict[str, Any]], task: str) -> str:
    """The project's system prompt, the style guide, a few replies in the voice, and the task."""
    parts = [project.get("system_prompt", "").strip()]
    parts.append("You write replies to customers as our brand, in our voice.")
    if project.get("style_guide", "").strip():
        parts.append("Style guide:\n" + project["style_guide"].strip())
    shots = [f"Customer: {u}\nYou: {r}" for u, r in (_exchange(c["messages"]) for c in seeds) if u and r]
    if shots:
        parts.append("Replies we wrote, in our voice:\n\n" + "\n\n".join(shots))
    parts.append(task)
    return "\n\n".join(p for p in parts if p)


def reply_messages(project: dict[str, Any], seeds: list[dict[str, Any]], question: str) -> list[dict]:
    """What the drafting model is sent to answer one question (PROMPT_VERSION): the system prompt and style guide,
    then the seed conversations' first exchanges as earlier turns of the chat, then the question. Examples as
    turns, not as text in the system prompt: a small model continues a dialogue far better than it follows a
    description of one (the embedded 135M model narrated "The customer asked..." when shown them as text)."""
    system = "\n\n".join(p for p in (project.get("system_prompt", "").strip(), "You reply to customers as our brand.",
                                       "Style guide:\n" + project["style_guide"].strip()
                                       if project.get("style_guide", "").strip() else "") if p)
    turns = []
    for user, reply in (_exchange(c["messages"]) for c in seeds):
        if user and reply:
            turns += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return [{"role": "system", "content": system}, *turns, {"role": "user", "content": question}]


def rewrite_messages(project: dict[str, Any], seeds: list[dict[str, Any]], question: str, original: str) -> list[dict]:
    """What the drafting model is sent to rewrite a pasted answer in the voice (REWRITE_VERSION)."""
    task = ("Rewrite the answer you are given in our voice. Keep every fact, promise and number in it; change only "
            "the wording. Write only the rewritten reply.")
    asked = f"The customer asked: {question}\n\n" if question else ""
    return [{"role": "system", "content": _voice_system(project, seeds, task)},
            {"role": "user", "content": f"{asked}Answer to rewrite:\n{original}"}]


def questions_messages(project: dict[str, Any], questions: list[str], n: int) -> list[dict]:
    """What the drafting model is sent to propose n more customer questions (QUESTIONS_VERSION)."""
    about = f"The brand's style guide, for what it sells and who its customers are:\n{project['style_guide'].strip()}\n\n" \
        if project.get("style_guide", "").strip() else ""
    shown = "\n".join(f"- {q}" for q in questions)
    return [{"role": "system", "content": "You help a brand collect the messages its customers send it."},
            {"role": "user", "content": f"{about}Messages our customers sent us:\n{shown}\n\nWrite {n} more messages "
             "customers might send us: some say one of these in other words, some ask about something new. One "
             "message per line, nothing else."}]


def parse_proposed(text: str) -> list[str]:
    """A model's list of questions as lines, without bullets or numbers ("1. ", "- ", "* ")."""
    lines = (re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip() for line in (text or "").splitlines())
    return [line.strip('"“”') for line in lines if len(normalise(line).split()) >= 2]


def parse_faq(text: str) -> list[tuple[str, str]]:
    """Pasted FAQ answers or support replies as (question, answer): blocks separated by a line of `---`; in each,
    a first line ending in "?" is the question and the rest the answer, else the whole block is the answer."""
    pairs = []
    for block in re.split(r"(?m)^\s*---+\s*$", text or ""):
        lines = block.strip().splitlines()
        if not lines:
            continue
        if len(lines) > 1 and lines[0].strip().endswith("?"):
            pairs.append((lines[0].strip(), "\n".join(lines[1:]).strip()))
        else:
            pairs.append(("", "\n".join(lines).strip()))
    return [(q, a) for q, a in pairs if a]


# ---------------------------------------------------------------- drafting models


class Drafter(Protocol):
    """A model that drafts: `label` is what the provenance records; `stream` yields the reply so far, then whole.
    Once a stream has ended, `cut` says whether that reply ran to the token limit (so it ends mid-sentence)."""

    label: str
    cut: bool

    def stream(self, messages: list[dict], gen: GenConfig) -> Iterator[str]: ...


class LocalDrafter:
    """The project's base model, or a finished run of the project on its own base (a tuned voice drafts in the
    voice, so the loop bootstraps); the loaded base is generate.shared_model's, shared with Compare."""

    def __init__(self, base_model: str, run_id: str | None = None):
        self.base_model, self.run_id = base_model, run_id
        self.label = f"run:{run_id}" if run_id else f"base:{base_model}"
        self.cut = False

    def stream(self, messages: list[dict], gen: GenConfig) -> Iterator[str]:
        from voicetune import generate, runs

        adapter = None
        if self.run_id:
            folder, record = runs.locate(self.run_id)
            chat = generate.shared_model(record["base_model"])
            adapter = chat.load_adapter(folder, name=self.run_id)
        else:
            chat = generate.shared_model(self.base_model)
        self.cut = False
        for update in chat.stream([generate.Request(messages, adapter)], gen):
            if update.replies is not None:
                self.cut = update.replies[0].hit_limit(gen.max_new_tokens)
            yield update.texts[0]


class EndpointError(DraftError):
    """The endpoint could not be reached or refused; the message never holds the key."""


class EndpointDrafter:
    """An OpenAI-compatible /chat/completions endpoint (Ollama, vLLM, llama.cpp's server, a hosted model).

    The key goes only into the Authorization header, and every error is scrubbed of it (failures.scrub) before
    anyone sees it. Streams when the server does (server-sent events); a server that ignores `stream` is read
    whole. Plain urllib: one POST needs no client library.
    """

    def __init__(self, base_url: str, model: str, api_key: str = "", timeout: float = ENDPOINT_TIMEOUT_S):
        self.base_url, self.model, self._key, self.timeout = check_base_url(base_url), model.strip(), api_key, timeout
        if not self.model:
            raise DraftError("Name the endpoint's model (e.g. llama3.1 for Ollama).")
        self.label = f"endpoint:{self.model} at {urllib.parse.urlsplit(self.base_url).hostname}"
        self.cut = False

    def _clean(self, text: str) -> str:
        return hide_paths(scrub(str(text), self._key or None))

    def stream(self, messages: list[dict], gen: GenConfig) -> Iterator[str]:
        body = {"model": self.model, "messages": messages, "max_tokens": gen.max_new_tokens, "stream": True,
                "temperature": 0.0 if gen.greedy else gen.temperature, **({} if gen.greedy else {"top_p": gen.top_p}),
                "seed": gen.seed}
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream, application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = urllib.request.Request(f"{self.base_url}/chat/completions", data=json.dumps(body).encode(),
                                         headers=headers, method="POST")
        self.cut = False
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - http(s) checked
                if "text/event-stream" in response.headers.get("Content-Type", ""):
                    yield from self._events(response)
                else:
                    yield self._whole(response.read())
        except urllib.error.HTTPError as e:
            raise EndpointError(self._clean(f"The drafting endpoint refused the request (HTTP {e.code}: "
                                            f"{_error_text(e)}). Check its base URL, model and API key in the "
                                            "endpoint settings.")) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise EndpointError(self._clean(f"Could not reach the drafting endpoint at {self.base_url} ({reason}). "
                                            "Check that the server is running and the base URL is right.")) from None

    def _events(self, response: Any) -> Iterator[str]:
        text = ""
        for raw in response:
            line = raw.decode("utf-8", errors="replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                choice = json.loads(data)["choices"][0]
                delta = choice.get("delta", {}).get("content") or ""
                self.cut = self.cut or choice.get("finish_reason") == "length"  # the API's word for the limit
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                raise EndpointError("The drafting endpoint sent a stream voicetune cannot read: is it "
                                    "OpenAI-compatible (/v1/chat/completions)?") from None
            text += delta
            yield text

    def _whole(self, raw: bytes) -> str:
        try:
            choice = json.loads(raw)["choices"][0]
            self.cut = choice.get("finish_reason") == "length"
            return str(choice["message"]["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError):
            raise EndpointError("The drafting endpoint's answer is not an OpenAI chat completion: is the base URL "
                                "the one that ends in /v1?") from None


def _error_text(e: urllib.error.HTTPError) -> str:
    """The server's own error message ({"error": {"message": ...}} when it sends one), shortened."""
    try:
        raw = e.read()[:4000].decode("utf-8", errors="replace")
    except OSError:
        raw = ""
    try:
        parsed = json.loads(raw)
        error = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
        message = error.get("message", raw) if isinstance(error, dict) else str(error)
    except ValueError:
        message = raw
    message = " ".join(str(message).split())[:ERROR_BODY_CHARS]
    return message or e.reason or "no message"


ALLOW_PRIVATE_ENV = "VOICETUNE_ENDPOINT_ALLOW_PRIVATE"  # the owner's yes to private addresses in a shared app


def check_base_url(base_url: str, private_ok: bool = True) -> str:
    """The endpoint's URL, normalised, or a DraftError in plain words.

    A key belongs in the key field, where it is kept out of logs and errors: a URL with credentials or a query
    string is refused. With `private_ok` False (an app several people sign in to), an address on the server's
    own machine or private network is refused too, unless the owner set VOICETUNE_ENDPOINT_ALLOW_PRIVATE=1:
    otherwise any user could make the server fetch from its own network (a request forgery). The host is
    resolved once, here; a name that later resolves elsewhere is not re-checked.
    """
    url = (base_url or "").strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DraftError("The endpoint's base URL must start with http:// or https://, e.g. "
                         "http://localhost:11434/v1 for Ollama.")
    if parts.username or parts.password or parts.query:
        raise DraftError("Put the endpoint's key in the API key field, not in the base URL (no user:password@ "
                         "and no ?query in it).")
    if not (private_ok or os.environ.get(ALLOW_PRIVATE_ENV) == "1") and _private_host(parts.hostname):
        raise DraftError(f"{parts.hostname} is on this server's own machine or private network, and this app is "
                         f"shared by several people: use a public address, or ask the app's owner to set "
                         f"{ALLOW_PRIVATE_ENV}=1.")
    return url


def _private_host(host: str) -> bool:
    """Whether any address the host resolves to is loopback, private, link-local or otherwise not public."""
    import ipaddress
    import socket

    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as e:
        raise DraftError(f"The endpoint's host {host} cannot be found ({e.strerror or e}).") from None
    addresses = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}
    return any(not a.is_global for a in addresses)


def endpoint_settings(conn: sqlite3.Connection) -> dict[str, Any]:
    """What a page may show of the endpoint: never the key, only whether one is saved."""
    saved = store.get_draft_endpoint(conn)
    if saved is None:
        return {"base_url": "", "model": "", "has_key": False}
    return {"base_url": saved["base_url"], "model": saved["model"], "has_key": bool(saved["api_key"])}


def save_endpoint(conn: sqlite3.Connection, base_url: str, model: str, api_key: str | None = None, *,
                  private_ok: bool = True) -> dict[str, Any]:
    """Check and save the workspace's endpoint; an empty or None key keeps the saved one (the field is
    write-only: the page never holds the key, so an untouched field must not erase it). `private_ok`: see
    check_base_url (the app passes False when people sign in)."""
    url = check_base_url(base_url, private_ok)
    if not (model or "").strip():
        raise DraftError("Name the endpoint's model (e.g. llama3.1 for Ollama).")
    store.set_draft_endpoint(conn, url, model.strip(), (api_key or "").strip() or None)
    return endpoint_settings(conn)


def drafter_choices(conn: sqlite3.Connection, project_id: int) -> list[tuple[str, str]]:
    """(label, value) of every model that can draft for the project: its base, its finished runs, the endpoint."""
    from voicetune import projects, runs

    project = store.get_project(conn, project_id)
    choices = [(f"Base model ({projects.base_of(project)})", "base")]
    finished = {r["run_id"] for r in runs.finished()}
    choices += [(f"Run {rid}", f"run:{rid}") for rid in store.succeeded_runs_of_project(project_id) if rid in finished]
    saved = store.get_draft_endpoint(conn)
    if saved:
        choices.append((f"Endpoint: {saved['model']} at {urllib.parse.urlsplit(saved['base_url']).hostname}",
                        "endpoint"))
    return choices


def make_drafter(conn: sqlite3.Connection, project_id: int, choice: str, *, private_ok: bool = True) -> Drafter:
    """The drafting model a choice names: "base", "run:<id>" (a finished run of this project) or "endpoint"."""
    from voicetune import projects

    if choice == "endpoint":
        saved = store.get_draft_endpoint(conn)
        if saved is None:
            raise DraftError("No drafting endpoint is set up: fill in its base URL and model first.")
        check_base_url(saved["base_url"], private_ok)  # saved before sign-in was turned on, say
        return EndpointDrafter(saved["base_url"], saved["model"], saved["api_key"])
    if choice.startswith("run:"):
        run_id = choice[4:]
        if run_id not in store.succeeded_runs_of_project(project_id):
            raise DraftError(f"Run {run_id} is not a finished run of this project: choose another drafting model.")
        return LocalDrafter(projects.base_of(store.get_project(conn, project_id)), run_id)
    if choice in ("", "base", None):
        return LocalDrafter(projects.base_of(store.get_project(conn, project_id)))
    raise DraftError(f"Unknown drafting model “{choice}”: choose the base model, a run, or the endpoint.")


# ---------------------------------------------------------------- drafting into the queue


# Sampled, so drafts vary and regenerate gives another; 120 tokens hold a brand reply of a few sentences and cut a
# runaway loop short. No repetition penalty: it counts the prompt too, so it pushes drafts off the examples' own
# sign-off (embedded model, Cosmo Coffee, 5 questions, one seed: 3 of 5 drafts ended in ☕ without, 2 with 1.1).
DRAFT_GEN = GenConfig(max_new_tokens=120, greedy=False, temperature=0.7)
CUT_NOTE = "cut at the token limit: it ends mid-sentence"  # how the queue and the CLI mark a cut draft


@dataclass
class Update:
    """One step of a batch of drafts: the reply so far of question `index`, and its draft id once queued."""

    index: int
    question: str
    text: str
    draft_id: int | None = None  # set on the last update of a question: it is in the queue
    record: dict[str, Any] | None = None  # set on the last update: the whole draft (drafts_jsonl's keys)
    cut: bool = False  # set on the last update: the reply ran to the token limit, so it ends mid-sentence


def _finish(text: str) -> str:
    return text.strip()


def draft_replies(conn: sqlite3.Connection, project_id: int, questions: list[str], drafter: Drafter,
                  gen: GenConfig = DRAFT_GEN, *, queue: bool = True) -> Iterator[Update]:
    """Answer each question in the voice, in order, streaming; each whole reply goes to the queue at once, so a
    reload loses at most the one being written. A question the project already asks is queued flagged. With
    queue=False nothing is stored: the last update of each question carries the draft (the CLI writes a file)."""
    project = store.get_project(conn, project_id)
    pool = seed_pool(conn, project_id)
    for i, question in enumerate(questions):
        known = _known_questions(conn, project_id)
        seeds = similar_conversations(question, pool)
        text = ""
        for text in drafter.stream(reply_messages(project, seeds, question), gen):
            yield Update(i, question, text)
        record = {"question": question, "reply": _finish(text), "kind": "answer", "original": "",
                  "model": drafter.label, "prompt_version": PROMPT_VERSION, "seeds": [c["id"] for c in seeds],
                  "cut": drafter.cut}
        draft_id = store.add_draft(conn, project_id, **record, duplicate_of=_conversation_id(
            duplicate_of(question, known))) if queue else None
        yield Update(i, question, _finish(text), draft_id, record, drafter.cut)


def rewrite_answers(conn: sqlite3.Connection, project_id: int, pairs: list[tuple[str, str]], drafter: Drafter,
                    gen: GenConfig = DRAFT_GEN) -> Iterator[Update]:
    """Rewrite pasted answers (parse_faq) in the voice, into the same queue; the original is kept beside it."""
    project = store.get_project(conn, project_id)
    pool = seed_pool(conn, project_id)
    for i, (question, original) in enumerate(pairs):
        known = _known_questions(conn, project_id)
        seeds = similar_conversations(question or original, pool)
        text = ""
        for text in drafter.stream(rewrite_messages(project, seeds, question, original), gen):
            yield Update(i, question, text)
        draft_id = store.add_draft(conn, project_id, kind="rewrite", question=question, original=original,
                                   reply=_finish(text), model=drafter.label, prompt_version=REWRITE_VERSION,
                                   seeds=[c["id"] for c in seeds], cut=drafter.cut,
                                   duplicate_of=_conversation_id(duplicate_of(question, known)) if question else None)
        yield Update(i, question, _finish(text), draft_id, cut=drafter.cut)


def _conversation_id(where: str | None) -> int | None:
    found = re.match(r"conversation (\d+)", where or "")
    return int(found[1]) if found else None


def propose_questions(conn: sqlite3.Connection, project_id: int, drafter: Drafter, n: int = 10,
                      gen: GenConfig = DRAFT_GEN) -> Questions:
    """"More questions like these": n questions the drafting model proposes from the project's own, deduplicated
    like typed ones. Nothing is queued: the user picks which to draft."""
    asked = [first_customer_turn(c["messages"]) for c in seed_pool(conn, project_id)][:20]
    if not asked:
        raise DraftError("The project has no customer questions yet to propose more from: type a few first.")
    text = ""
    for text in drafter.stream(questions_messages(store.get_project(conn, project_id), asked, n),
                               dataclasses.replace(gen, max_new_tokens=max(gen.max_new_tokens, 40 * n))):
        pass
    return read_new_questions(conn, project_id, "\n".join(parse_proposed(text)[:n]))


def regenerate(conn: sqlite3.Connection, draft_id: int, drafter: Drafter, attempt: int = 1) -> Iterator[str]:
    """A new reply for a pending draft (sampled with another seed), streamed, then saved over the old one."""
    draft = _pending(conn, draft_id)
    project = store.get_project(conn, draft["project_id"])
    pool = seed_pool(conn, draft["project_id"])
    seeds = similar_conversations(draft["question"] or draft["original"], pool)
    if draft["kind"] == "rewrite":
        messages, version = rewrite_messages(project, seeds, draft["question"], draft["original"]), REWRITE_VERSION
    else:
        messages, version = reply_messages(project, seeds, draft["question"]), PROMPT_VERSION
    gen = dataclasses.replace(DRAFT_GEN, seed=DRAFT_GEN.seed + attempt)
    text = ""
    for text in drafter.stream(messages, gen):
        yield text
    store.set_draft_reply(conn, draft_id, _finish(text), model=drafter.label, prompt_version=version,
                          seeds=[c["id"] for c in seeds], cut=drafter.cut)


# ---------------------------------------------------------------- review


def _pending(conn: sqlite3.Connection, draft_id: int) -> dict[str, Any]:
    draft = store.get_draft(conn, int(draft_id))
    if draft is None:
        raise DraftError(f"There is no draft {draft_id}.")
    if draft["status"] != "pending":
        raise DraftError(f"Draft {draft_id} was already {draft['status']} (in another tab?): nothing was changed.")
    return draft


def next_pending(conn: sqlite3.Connection, project_id: int) -> dict[str, Any] | None:
    """The oldest draft waiting for review: the queue is reviewed in the order it was drafted."""
    pending = store.list_drafts(conn, project_id, "pending")
    return pending[0] if pending else None


def accept(conn: sqlite3.Connection, draft_id: int, reply: str | None = None) -> int:
    """The draft becomes a conversation of its project (tagged and sourced `drafted`); `reply`, when given, is the
    reviewer's edit and is what is stored. Returns the conversation's id."""
    draft = _pending(conn, draft_id)
    text = (draft["reply"] if reply is None else reply).strip()
    if not draft["question"].strip():
        raise DraftError(f"Draft {draft_id} has no customer question: type the question it answers, then accept.")
    if not text:
        raise DraftError(f"Draft {draft_id} has an empty reply: write one, regenerate, or reject it.")
    messages = [{"role": "user", "content": draft["question"].strip()}, {"role": "assistant", "content": text}]
    cid = store.accept_draft(conn, draft["id"], messages, reply=text, edited=text != draft["reply"].strip(),
                             tag=DRAFTED, source=DRAFTED)
    if cid is None:
        raise DraftError(f"Draft {draft_id} was decided in another tab: nothing was changed.")
    return cid


def set_question(conn: sqlite3.Connection, draft_id: int, question: str) -> None:
    """A rewrite pasted without its question gets one typed by the reviewer before it is accepted."""
    draft = _pending(conn, draft_id)
    store.set_draft_question(conn, draft["id"], question.strip())


def reject(conn: sqlite3.Connection, draft_id: int) -> None:
    """Keep the draft out of the project; it stays in the queue's history as rejected."""
    _pending(conn, draft_id)
    if not store.reject_draft(conn, int(draft_id)):
        raise DraftError(f"Draft {draft_id} was decided in another tab: nothing was changed.")


def provenance(conn: sqlite3.Connection, conversation_id: int) -> dict[str, Any] | None:
    """Where a drafted conversation came from: model, prompt version, seed conversations, edited or not."""
    draft = store.draft_of_conversation(conn, conversation_id)
    if draft is None:
        return None
    return {"draft": draft["id"], "model": draft["model"], "prompt_version": draft["prompt_version"],
            "seeds": draft["seeds"], "edited": bool(draft["edited"]), "kind": draft["kind"]}


# ---------------------------------------------------------------- drafts as a file (the CLI's draft verb)

DRAFT_KEYS = ("question", "reply", "kind", "original", "model", "prompt_version", "seeds", "cut")


def drafts_jsonl(drafts: list[dict[str, Any]]) -> str:
    """Drafts for review elsewhere, one JSON object a line; import_drafts reads them back into the queue."""
    return "".join(json.dumps({k: d.get(k) for k in DRAFT_KEYS}, ensure_ascii=False) + "\n" for d in drafts)


def import_drafts(conn: sqlite3.Connection, project_id: int, raw: bytes) -> tuple[list[int], list[Problem]]:
    """A drafts file (drafts_jsonl) into the project's review queue as pending drafts; every bad line is a
    Problem naming it, and nothing of a bad line is queued."""
    known = _known_questions(conn, project_id)
    ids, problems = [], []
    for n, line in enumerate(raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            problems.append(Problem(n, "", f"invalid JSON ({e.msg} at column {e.colno})"))
            continue
        problem = _check_draft_record(obj, n)
        if problem:
            problems.append(problem)
            continue
        ids.append(store.add_draft(
            conn, project_id, kind=obj.get("kind") or "answer", question=obj["question"].strip(),
            reply=obj["reply"].strip(), original=obj.get("original") or "", model=str(obj.get("model") or "file"),
            prompt_version=str(obj.get("prompt_version") or ""), seeds=[int(s) for s in obj.get("seeds") or []],
            cut=obj.get("cut") is True, duplicate_of=_conversation_id(duplicate_of(obj["question"], known))))
    return ids, problems


def _check_draft_record(obj: Any, n: int) -> Problem | None:
    if not isinstance(obj, dict):
        return Problem(n, "", "must be a JSON object with “question” and “reply”")
    for key in ("question", "reply"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            return Problem(n, key, "is missing or empty: each line needs a question and a reply")
    if obj.get("kind", "answer") not in ("answer", "rewrite", None):
        return Problem(n, "kind", "must be “answer” or “rewrite”")
    seeds = obj.get("seeds") or []
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        return Problem(n, "seeds", "must be a list of conversation ids")
    if obj.get("cut") not in (None, True, False):
        return Problem(n, "cut", "must be true or false (whether the reply ran to the token limit)")
    return None
