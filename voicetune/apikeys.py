"""API keys for the OpenAI-compatible endpoint, friendly model names for runs, and each key's rate limit.

A key belongs to one workspace (the shared one, or one signed-in user's) and reaches only that workspace's
runs. It is `vt-` followed by 32 random bytes, shown once when it is made; the database keeps only its
sha256. A plain sha256 is enough here, and a slow password hash (bcrypt, scrypt) would buy nothing: those
protect guessable passwords, while a 256-bit random key cannot be found from its hash by any search, and a
slow hash would cost milliseconds on every request.

The key's row (name, limits, revoked) lives in its owner's workspace database. So that a request can find
that workspace without opening every user's database, the root database holds a route: the key's hash and
the workspace's folder name. A route grants nothing by itself; the owner's row must exist and be live.

    key = make_key("laptop", owner=None)          # "vt-..." shown once
    info = authenticate(key, signed_in=False)     # KeyInfo, or KeyRefused
    with store.user_scope(info.owner): ...        # the key owner's runs
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from voicetune import store

PREFIX = "vt-"
# Defaults for a new key, each changeable when the key is made:
REQUESTS_PER_MINUTE = 60  # one a second on average; a burst of a minute's worth is allowed (token bucket)
MAX_TOKENS = 512  # a brand reply rarely needs more than a few hundred tokens
MAX_PROMPT_TOKENS = 2048  # a system prompt, a few examples and a conversation fit comfortably
ALIAS_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
BASE_MODEL_ID = "base"  # the model name of the base model, without any adapter


class KeyRefused(Exception):
    """No key, a wrong key, or a revoked one. The message never contains the key."""


@dataclass(frozen=True)
class KeyInfo:
    id: int
    name: str
    hash: str  # identifies the key in the rate limiter and logs without revealing it
    owner: str | None  # the identity whose workspace the key reaches; None: the shared workspace
    requests_per_minute: int
    max_tokens: int
    max_prompt_tokens: int


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _home_name() -> str:
    """The current workspace as the route records it: '' for the root, else its folder under users/."""
    home = store.home()
    return "" if home == store.root() else home.name


def make_key(name: str, *, owner: str | None, requests_per_minute: int = REQUESTS_PER_MINUTE,
             max_tokens: int = MAX_TOKENS, max_prompt_tokens: int = MAX_PROMPT_TOKENS) -> str:
    """A new key in the current workspace. Returns the key itself: the only time anyone sees it."""
    name = (name or "").strip()
    if not name or len(name) > 80:
        raise ValueError("Give the key a name of 1 to 80 characters, e.g. where it will be used (“support bot”).")
    for field, value, low, high in (("requests per minute", requests_per_minute, 1, 10_000),
                                    ("max reply tokens", max_tokens, 1, 8192),
                                    ("max prompt tokens", max_prompt_tokens, 16, 32768)):
        if not low <= int(value) <= high:
            raise ValueError(f"The key's {field} must be between {low} and {high:,}, not {value}.")
    key = PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    digest = key_hash(key)
    store.add_api_key(store.connect(), name=name, digest=digest, hint=key[-4:], owner=owner,
                      requests_per_minute=int(requests_per_minute), max_tokens=int(max_tokens),
                      max_prompt_tokens=int(max_prompt_tokens))
    store.add_key_route(store.connect_root(), digest, _home_name())
    return key


def list_keys() -> list[dict[str, Any]]:
    """The current workspace's keys, newest first, without their hashes."""
    return store.list_api_keys(store.connect())


def revoke_key(key_id: int) -> bool:
    """Revoke one of the current workspace's keys at once; False if it has no such live key."""
    conn = store.connect()
    row = store.live_api_key(conn, key_id=int(key_id))
    if row is None:
        return False
    store.revoke_api_key(conn, int(key_id))
    store.delete_key_route(store.connect_root(), row["hash"])
    _limiter.forget(row["hash"])
    return True


def authenticate(key: str | None, *, signed_in: bool) -> KeyInfo:
    """The live key's owner and limits. With sign-in on only a signed-in user's key works (the root workspace
    is nobody's); with it off only a key of the shared workspace does."""
    if not key:
        raise KeyRefused("No API key. Send one as 'Authorization: Bearer <key>'; make one in the app's Use it tab.")
    wrong = KeyRefused("This API key is not valid: it is wrong or was revoked. Make a new one in the Use it tab.")
    if not key.startswith(PREFIX) or len(key) > 200:
        raise wrong
    digest = key_hash(key)
    route = store.key_route(store.connect_root(), digest)
    if route is None or bool(route) != signed_in:
        raise wrong
    home = store.root() / "users" / route if route else store.root()
    if not (home / store.DB_NAME).is_file():
        raise wrong
    row = store.live_api_key(store.connect(home / store.DB_NAME), digest=digest)
    if row is None:
        raise wrong
    owner = row["owner"]
    # The row must name the workspace it sits in: a copied database cannot lend its keys to another user.
    if (owner is None) == signed_in or (owner is not None and store.user_dir_name(owner) != route):
        raise wrong
    return KeyInfo(id=row["id"], name=row["name"], hash=digest, owner=owner,
                   requests_per_minute=row["requests_per_minute"], max_tokens=row["max_tokens"],
                   max_prompt_tokens=row["max_prompt_tokens"])


# --- Friendly model names ---------------------------------------------------------------------------------

def set_alias(alias: str, run_id: str) -> None:
    """Name a run of the current workspace for API callers, e.g. "cosmo" for "20261123-101500-cosmo-a1b2c3"."""
    alias = (alias or "").strip()
    if not re.fullmatch(ALIAS_PATTERN, alias):
        raise ValueError("An alias is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit.")
    if alias == BASE_MODEL_ID:
        raise ValueError(f"“{BASE_MODEL_ID}” already names the base model: choose another alias.")
    if alias != run_id and (store.runs_dir() / alias).is_dir():
        raise ValueError(f"“{alias}” is already the id of another run: choose another alias.")
    store.run_dir(run_id)  # refuses ids that are not run ids
    store.set_model_alias(store.connect(), alias, run_id)


def remove_alias(alias: str) -> None:
    store.delete_model_alias(store.connect(), alias)


def aliases() -> dict[str, str]:
    """alias -> run id in the current workspace."""
    return store.model_aliases(store.connect())


# --- Rate limits ------------------------------------------------------------------------------------------

class RateLimiter:
    """A token bucket per key: a minute's worth of requests may come at once, then they refill evenly.

    Kept in memory, per process: a restart forgives, which is harmless for a limit meant to stop one runaway
    client from starving everyone else of the one model.
    """

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # key hash -> (tokens left, when last refilled)
        self._lock = threading.Lock()

    def take(self, key: str, per_minute: int, now: float | None = None) -> float:
        """Take one request; returns 0 when allowed, else the seconds until the next one is."""
        now = time.monotonic() if now is None else now
        rate = per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(key, (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / rate

    def forget(self, key: str) -> None:
        with self._lock:
            self._buckets.pop(key, None)


_limiter = RateLimiter()


def limiter() -> RateLimiter:
    return _limiter
