"""Use the voice from code: an OpenAI-compatible `/v1/chat/completions` and `/v1/models` for finished runs.

The app serves these routes beside its page, on the same port (voicetune/ui/app.py hands `api_routes()` to
Gradio's FastAPI app); `python -m voicetune serve --run RUN` serves them alone, without the page. Every run is
a model, by its run id or an alias its owner set, answered by the base model it was trained on; `base` is the
app's default base model with no adapter. Requests from all callers for runs of one base share the batched
mixed-adapter generation of the compare view (voicetune/batcher.py); each base has its own batches.

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:7860/v1", api_key="vt-...")
    client.chat.completions.create(model="cosmo", messages=[{"role": "user", "content": "Open Sunday?"}])

Supported: `messages` (system, user and assistant turns; text content), `temperature` (0 is greedy),
`top_p`, `max_tokens` (or `max_completion_tokens`), `seed`, `stop` (up to 4 strings), `stream` (server-sent
events in OpenAI's chunk format, ending with `data: [DONE]`, and `stream_options.include_usage`), `n` = 1,
`user` (accepted, not used), and `usage` in every reply. Anything else is refused with OpenAI's error body,
{"error": {"message", "type", "param", "code"}}, and the HTTP status OpenAI uses for it.

Counting: `prompt_tokens` is the conversation after the chat template, exactly what the model reads;
`completion_tokens` is the tokens the model generated (the end-of-turn token not counted). When a `stop`
string cuts a reply short, the reply returned is re-tokenized to count it, since the model generated past
the stop (its batch ran on) but the caller never sees those tokens.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from voicetune import apikeys, store
from voicetune.apikeys import BASE_MODEL_ID, KeyInfo, KeyRefused
from voicetune.batcher import Sampling, Scheduler
from voicetune.catalog import label
from voicetune.generate import AdapterError, AdapterMismatch, ChatModel, Reply

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256  # when a request names no max_tokens (and the key allows this many)
MAX_BODY_BYTES = 1 << 20  # 1 MiB: far above any prompt a key allows (2,048 tokens are ~10 KB of text)
MAX_STOP = 4  # OpenAI's limit on stop strings
ACCEPTED = {"model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "seed", "stop",
            "stream", "stream_options", "n", "user"}
ROLES = ("system", "user", "assistant")


class APIError(Exception):
    """An error the caller gets as OpenAI's error body with its HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _invalid(param: str, message: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


# --- The request --------------------------------------------------------------------------------------------

@dataclass
class ChatRequest:
    model: str
    messages: list[dict]
    sampling: Sampling
    stop: list[str]
    stream: bool
    include_usage: bool


def _messages(value: Any) -> list[dict]:
    """OpenAI messages as plain {role, content} text turns; a list of text parts is joined."""
    if not isinstance(value, list) or not value:
        raise _invalid("messages", "'messages' must be a non-empty list of {\"role\", \"content\"} objects.")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _invalid(where, f"{where} must be an object with 'role' and 'content'.")
        extra = sorted(set(m) - {"role", "content", "name"})
        if extra:
            raise APIError(400, f"{where} has '{extra[0]}', which this server does not support: send role and "
                                "content only.", param=f"{where}.{extra[0]}", code="unsupported_parameter")
        if m.get("role") not in ROLES:
            raise _invalid(f"{where}.role", f"{where}.role must be one of {', '.join(ROLES)}, not {m.get('role')!r}.")
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise _invalid(f"{where}.content", f"{where}.content may hold text parts only "
                                                   "({\"type\": \"text\", \"text\": ...}).")
            content = "\n".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise _invalid(f"{where}.content", f"{where}.content must be a string.")
        out.append({"role": m["role"], "content": content})
    if out[-1]["role"] != "user":
        raise _invalid(f"messages[{len(out) - 1}].role", "The last message must be the user's: the model answers it.")
    return out


def _number(body: dict, name: str, low: float, high: float, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise _invalid(name, f"'{name}' must be a number from {low:g} to {high:g}, not {value!r}.")
    return float(value)


def _max_tokens(body: dict, key: KeyInfo) -> int:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(name)
    if value is None:
        return min(DEFAULT_MAX_TOKENS, key.max_tokens)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid(name, f"'{name}' must be a whole number of at least 1, not {value!r}.")
    if value > key.max_tokens:
        raise _invalid(name, f"'{name}' is {value}, but this key allows at most {key.max_tokens} reply tokens. "
                             "Ask for fewer, or make a key with a higher limit in the Use it tab.")
    return value


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOP:
        raise _invalid("stop", f"'stop' must be a non-empty string or a list of at most {MAX_STOP} of them.")
    return stops


def parse_request(body: Any, key: KeyInfo) -> ChatRequest:
    """Check every field of a chat completion request; the prompt's length is checked once it is rendered."""
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.")
    for name in sorted(body):
        if name not in ACCEPTED:
            raise APIError(400, f"This server does not support '{name}'. Supported: {', '.join(sorted(ACCEPTED))}.",
                           param=name, code="unsupported_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' is required: a run id, an alias, or 'base'. GET /v1/models lists them.",
                       param="model", code="missing_required_parameter")
    if body.get("n") not in (None, 1):
        raise APIError(400, "Only n = 1 is supported: send one request per reply.", param="n",
                       code="unsupported_value")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise _invalid("seed", f"'seed' must be a whole number from 0, not {seed!r}.")
    stream = body.get("stream")
    if stream not in (None, True, False):
        raise _invalid("stream", "'stream' must be true or false.")
    options = body.get("stream_options")
    if options is not None and (not stream or not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise _invalid("stream_options", "'stream_options' goes with stream: true, and may hold include_usage only.")
    temperature = _number(body, "temperature", 0, 2, 1.0)  # OpenAI's range and default
    top_p = _number(body, "top_p", 0, 1, 1.0)
    if top_p == 0:
        raise _invalid("top_p", "'top_p' must be above 0.")
    sampling = Sampling(greedy=temperature == 0, max_tokens=_max_tokens(body, key), temperature=temperature or 1.0,
                        top_p=top_p, seed=seed)
    return ChatRequest(model=model, messages=_messages(body.get("messages")), sampling=sampling,
                       stop=_stop(body.get("stop")), stream=bool(stream),
                       include_usage=bool((options or {}).get("include_usage")))


# --- The reply as it streams ------------------------------------------------------------------------------

class ReplyText:
    """Turns the growing reply into deltas a caller can append: never a character taken back.

    Held back until they are certain: leading and trailing spaces (the finished reply is stripped), a broken
    multi-byte character, and a tail that may be the start of a stop string.
    """

    def __init__(self, stop: list[str]):
        self.stop = stop
        self.sent = ""
        self.stopped = False  # a stop string ended the reply

    def _cut(self, text: str) -> tuple[str, bool]:
        hits = [text.find(s) for s in self.stop if s in text]
        return (text[: min(hits)], True) if hits else (text, False)

    def feed(self, partial: str) -> str:
        if self.stopped:
            return ""
        text, self.stopped = self._cut(partial.lstrip())
        if not self.stopped:
            text = text.rstrip().rstrip("\ufffd").rstrip()
            held = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
            text = text[: len(text) - held].rstrip()
        return self._advance(text)

    def finish(self, final: str) -> tuple[str, str]:
        """The last delta and the whole reply, from the finished text."""
        text, hit = self._cut(final.strip())
        self.stopped = self.stopped or hit
        return self._advance(text), text

    def _advance(self, text: str) -> str:
        if not text.startswith(self.sent):
            return ""  # decoding rewrote an earlier character: wait for text that extends what was sent
        delta, self.sent = text[len(self.sent):], text
        return delta


# --- The service ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Served:
    """One model a key may call: a run's adapter folder (None for `base`) and the base model that answers it."""

    folder: Path | None
    base_model: str


def workspace_models(default_base: str) -> dict[str, Served]:
    """The current workspace's servable models: `base` (the app's default base model), every finished run on
    whatever base it was trained on, and aliases. Each run is answered by its own base."""
    from voicetune import runs

    found: dict[str, Served] = {BASE_MODEL_ID: Served(None, default_base)}
    for folder in sorted(store.runs_dir().iterdir(), reverse=True):  # newest first; the folder name is the run id
        try:
            base = None if folder.name.startswith(".") else runs.read(folder).get("base_model")
        except runs.RunError:  # half-written or damaged: not a model
            continue
        if base:
            found[folder.name] = Served(folder, base)
    for alias, run_id in apikeys.aliases().items():
        if run_id in found and alias not in found:
            found[alias] = found[run_id]
    return found


class Engine:
    """One base model's batch scheduler, and a copy of its tokenizer for counting a request's tokens."""

    def __init__(self, chat: ChatModel):
        self.scheduler = Scheduler(chat)
        # A copy for counting: a fast tokenizer used by two threads at once, while ChatModel pads a batch with
        # it, can fail ("Already borrowed"). Counting is serialised on the copy.
        self._counter = copy.deepcopy(chat.tokenizer)
        self._count_lock = threading.Lock()

    @property
    def chat(self) -> ChatModel:
        return self.scheduler.chat

    def count_tokens(self, text: str) -> int:
        with self._count_lock:
            return len(self._counter(text, add_special_tokens=False)["input_ids"])

    def prompt_tokens(self, messages: list[dict]) -> int:
        """Counted exactly as ChatModel tokenizes the prompt: this base's chat template with its generation
        prompt."""
        from voicetune.templates import TemplateError, render

        try:
            with self._count_lock:
                text = render(self._counter, messages, add_generation_prompt=True)
        except TemplateError as e:
            raise _invalid("messages", str(e)) from None
        return self.count_tokens(text)


def _still_shared(chat: ChatModel) -> bool:
    from voicetune.generate import still_shared

    return still_shared(chat)


class Service:
    """Keys, models and one Engine per base model behind the routes; one per process.

    Engines are made on a base's first request. Requests for runs of one base share that base's batches; a
    base that `chat` no longer keeps loaded (shared_model's LRU, bounded by count and memory) has its
    scheduler closed, so the endpoint never holds more bases than the Compare tab may."""

    def __init__(self, *, base_model: str, models: Callable[[], dict[str, Served]], signed_in: bool,
                 chat: Callable[[str], ChatModel], kept: Callable[[ChatModel], bool] = _still_shared):
        self.base_model = base_model  # what `base` means
        self._models = models  # called inside the key owner's workspace
        self.signed_in = signed_in
        self._chat = chat
        self._kept = kept
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def engine(self, base_model: str | None = None) -> Engine:
        """The engine of this base (the default base when None); the first request of a base loads it, and
        the others wait for it."""
        base = base_model or self.base_model
        with self._lock:
            chat = self._chat(base)
            engine = self._engines.get(base)
            if engine is None or engine.chat is not chat:  # new, or reloaded after the LRU let it go
                if engine is not None:
                    engine.scheduler.close()
                engine = self._engines[base] = Engine(chat)
            for other, held in list(self._engines.items()):
                if other != base and not self._kept(held.chat):
                    held.scheduler.close()  # its answers in flight finish first; then the model can be freed
                    del self._engines[other]
            return engine

    def authenticate(self, request: HTTPRequest) -> KeyInfo:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        try:
            return apikeys.authenticate(key.strip() if scheme.lower() == "bearer" else None, signed_in=self.signed_in)
        except KeyRefused as e:
            code = "missing_api_key" if not header else "invalid_api_key"
            raise APIError(401, str(e), code=code) from None

    def models_for(self, key: KeyInfo) -> dict[str, Served]:
        with store.user_scope(key.owner):
            return self._models()


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _generation_error(e: BaseException) -> APIError:
    """A failure while answering, in words the caller can act on; details stay in the server's log."""
    if isinstance(e, AdapterMismatch):
        return APIError(400, f"This run cannot be served by the base model its record names: {e}", param="model",
                        code="model_not_supported")
    if isinstance(e, AdapterError):
        return APIError(500, "This run's adapter could not be loaded (damaged or incomplete files?).",
                        type="server_error", code="adapter_unavailable")
    if isinstance(e, RuntimeError) and "out of memory" in str(e).lower():
        return APIError(503, "The server has no memory left to answer right now (a training run may hold it). "
                             "Try again shortly, with a shorter prompt or a lower max_tokens.",
                        type="server_error", code="overloaded")
    log.error("an API request failed: %s: %s", type(e).__name__, e)
    return APIError(500, "The model failed to answer; the server's log has the details.", type="server_error")


class Answer:
    """One request's reply, arriving from the batch worker thread into this request's event loop."""

    def __init__(self, engine: Engine, key: KeyInfo, req: ChatRequest, folder: Path | None, prompt_tokens: int):
        self.engine, self.key, self.req = engine, key, req
        self.prompt_tokens = prompt_tokens
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())
        self.text = ReplyText(req.stop)
        self.events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        engine.scheduler.submit(req.messages, folder, req.sampling,
                                   lambda event: loop.call_soon_threadsafe(self.events.put_nowait, event))

    async def deltas(self) -> Any:
        """Yield text deltas; afterwards `finish_reason`, `content` and `usage` are set."""
        while True:
            kind, payload = await self.events.get()
            if kind == "error":
                raise _generation_error(payload)
            if kind == "text":
                delta = self.text.feed(payload)
                if delta:
                    yield delta
                if self.text.stopped:  # a stop string: the reply is complete; the batch may run on without it
                    self._settle(None)
                    return
            else:
                delta, _ = self.text.finish(payload.text)
                if delta:
                    yield delta
                self._settle(payload)
                return

    def _settle(self, reply: Reply | None) -> None:
        self.content = self.text.sent
        if self.text.stopped or reply is None:
            self.finish_reason = "stop"
            completion = self.engine.count_tokens(self.content) if self.content else 0
        else:
            completion = reply.reply_tokens
            self.finish_reason = "length" if reply.hit_limit(self.req.sampling.max_tokens) else "stop"
            self.prompt_tokens = reply.prompt_tokens
        self.usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                      "total_tokens": self.prompt_tokens + completion}
        log.info("api key %d: %s answered, %d + %d tokens", self.key.id, self.req.model, self.prompt_tokens, completion)

    def chunk(self, delta: dict, finish: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.req.model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    async def stream(self) -> Any:
        yield _sse(self.chunk({"role": "assistant", "content": ""}))
        try:
            async for delta in self.deltas():
                yield _sse(self.chunk({"content": delta}))
        except APIError as e:
            yield _sse(e.body())  # the openai client raises it; no [DONE] after an error
            return
        yield _sse(self.chunk({}, self.finish_reason))
        if self.req.include_usage:
            yield _sse({**self.chunk({}), "choices": [], "usage": self.usage})
        yield b"data: [DONE]\n\n"

    async def whole(self) -> dict[str, Any]:
        async for _ in self.deltas():
            pass
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.req.model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": self.content},
                             "logprobs": None, "finish_reason": self.finish_reason}],
                "usage": self.usage}


async def _read_json(request: HTTPRequest) -> Any:
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > MAX_BODY_BYTES:
            raise APIError(413, f"The request body is over {MAX_BODY_BYTES // 1024} KB: shorten the conversation.",
                           code="request_too_large")
    try:
        return json.loads(bytes(body) or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"We could not parse the JSON body of your request: {e}.", code="invalid_json") from None


def _model_not_found(model: str) -> APIError:
    # The same answer whether the run is someone else's or no one's: a key learns nothing of other workspaces.
    return APIError(404, f"The model '{model[:100]}' does not exist or you do not have access to it. "
                         "GET /v1/models lists yours.", param="model", code="model_not_found")


async def chat_completions(service: Service, request: HTTPRequest) -> Response:
    key = await run_in_threadpool(service.authenticate, request)
    wait = apikeys.limiter().take(key.hash, key.requests_per_minute)
    if wait:
        raise APIError(429, f"This key allows {key.requests_per_minute} requests a minute; try again in "
                            f"{math.ceil(wait)} s, or raise its limit in the Use it tab.", type="requests",
                       code="rate_limit_exceeded", headers={"Retry-After": str(math.ceil(wait))})
    req = parse_request(await _read_json(request), key)
    served = (await run_in_threadpool(service.models_for, key)).get(req.model)
    if served is None:
        raise _model_not_found(req.model)
    engine = await run_in_threadpool(service.engine, served.base_model)  # the run's own base answers it
    prompt_tokens = await run_in_threadpool(engine.prompt_tokens, req.messages)
    if prompt_tokens > key.max_prompt_tokens:
        raise APIError(400, f"The prompt is {prompt_tokens} tokens after the chat template, but this key allows "
                            f"{key.max_prompt_tokens}. Shorten the conversation, or make a key with a higher limit.",
                       param="messages", code="context_length_exceeded")
    context = engine.chat.context_length
    if context and prompt_tokens + req.sampling.max_tokens > context:
        raise APIError(400, f"The prompt ({prompt_tokens} tokens) and max_tokens ({req.sampling.max_tokens}) are "
                            f"more than the model's {context}-token context.", param="messages",
                       code="context_length_exceeded")
    answer = Answer(engine, key, req, served.folder, prompt_tokens)
    if req.stream:
        return StreamingResponse(answer.stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return JSONResponse(await answer.whole())


async def list_models(service: Service, request: HTTPRequest) -> Response:
    key = await run_in_threadpool(service.authenticate, request)
    models = await run_in_threadpool(service.models_for, key)
    # OpenAI's four fields as before, and the base that answers each (by name: never a server path)
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "voicetune" if m.folder is None else "you",
             "base_model": label(m.base_model)} for name, m in models.items()]
    return JSONResponse({"object": "list", "data": data})


async def unknown_route(request: HTTPRequest) -> Response:
    known = {"/v1/models": "GET", "/v1/chat/completions": "POST"}
    if request.url.path in known:
        return APIError(405, f"{request.url.path} takes {known[request.url.path]}, not {request.method}.",
                        code="method_not_allowed").response()
    return APIError(404, f"Unknown request URL: {request.method} {request.url.path[:100]}. This server offers "
                         "GET /v1/models and POST /v1/chat/completions.", code="unknown_url").response()


def _handler(fn: Callable[[Service, HTTPRequest], Awaitable[Response]], service: Service) -> Callable:
    async def endpoint(request: HTTPRequest) -> Response:
        try:
            return await fn(service, request)
        except APIError as e:
            return e.response()
        except Exception as e:  # noqa: BLE001 - the caller gets OpenAI's body, never a traceback
            return _generation_error(e).response()
    return endpoint


def api_routes(service: Service) -> list[BaseRoute]:
    """The /v1 routes, for a FastAPI or Starlette app (Gradio's: `launch(app_kwargs={"routes": ...})`)."""
    every = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return [
        Route("/v1/models", _handler(list_models, service), methods=["GET"]),
        Route("/v1/chat/completions", _handler(chat_completions, service), methods=["POST"]),
        Route("/v1/{rest:path}", unknown_route, methods=every),
        Route("/v1", unknown_route, methods=every),
    ]


def app_service(*, signed_in: bool) -> Service:
    """The app's endpoint: each key reaches its owner's workspace; each run is answered by its own base model,
    loaded through the same shared LRU as the Compare tab; `base` is the app's default base model."""
    from voicetune.generate import shared_model
    from voicetune.models import default_base_model

    base = default_base_model()
    return Service(base_model=base, models=lambda: workspace_models(base), signed_in=signed_in, chat=shared_model)


# --- Headless: python -m voicetune serve --------------------------------------------------------------------

def headless_service(runs: dict[str, Path], base_model: str | None = None) -> Service:
    """Just these runs (name -> adapter folder) and `base`, for keys of the shared workspace.

    Each run is answered by the base it was trained on, or all by `base_model` when one is given. `base` is
    that base model, else the runs' one base, else (runs of several bases, or none) the default base model.
    Every run is checked against its base now, so a mismatch is refused at start-up, not at the first request.
    """
    from voicetune.generate import shared_model
    from voicetune import runs as run_folder
    from voicetune.models import default_base_model

    bases = {name: base_model or run_folder.read(folder)["base_model"] for name, folder in runs.items()}
    default = base_model or (next(iter(set(bases.values()))) if len(set(bases.values())) == 1
                             else default_base_model())
    for name, folder in runs.items():
        shared_model(bases[name]).check_adapter(folder)  # another base or template: refused now
    fixed: dict[str, Served] = {BASE_MODEL_ID: Served(None, default),
                                **{name: Served(folder, bases[name]) for name, folder in runs.items()}}
    return Service(base_model=default, models=lambda: dict(fixed), signed_in=False, chat=shared_model)


def serve_forever(service: Service, host: str, port: int) -> None:
    """uvicorn with warnings only: no access log, so no request line or header is ever written."""
    import uvicorn
    from starlette.applications import Starlette

    app = Starlette(routes=api_routes(service))
    served = service._models()
    for base in dict.fromkeys(m.base_model for m in served.values() if m.folder is not None):
        service.engine(base)  # load each run's base before the first caller waits for it
    print(f"voicetune: serving {', '.join(served)} at http://{host}:{port}/v1", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
