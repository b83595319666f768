"""Build benchmarks/data/mixed-lengths.jsonl: the bundled voices reshaped into a realistic spread of lengths.

The bundled voices are single exchanges of similar size; real support logs are not. This keeps their
text and makes a third of the conversations one short exchange, a third as they are, and a third long
multi-turn threads of two to four exchanges, so padding waste in a batch is what a real project sees.

    .venv/bin/python benchmarks/make_data.py   # rewrites the file; deterministic
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from voicetune.store import atomic_write_text  # noqa: E402

SOURCES = ("examples/cosmo-coffee.jsonl", "examples/ledger-lane.jsonl")
OUT = ROOT / "benchmarks" / "data" / "mixed-lengths.jsonl"


def _read(path: Path) -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _short(messages: list[dict]) -> list[dict]:
    """The first exchange, with the reply cut to its first sentence: a quick question and a one-line answer."""
    user = next(m for m in messages if m["role"] == "user")
    reply = next(m for m in messages if m["role"] == "assistant")["content"]
    first = reply.split(". ")[0].split("\n")[0].rstrip(".") + "."
    return [dict(user), {"role": "assistant", "content": first}]


def _thread(parts: list[list[dict]]) -> list[dict]:
    """Several exchanges of one voice as one multi-turn conversation, keeping the first system prompt."""
    system = [m for m in parts[0] if m["role"] == "system"]
    return system + [dict(m) for p in parts for m in p if m["role"] != "system"]


def build(seed: int = 0) -> list[list[dict]]:
    rng = random.Random(seed)
    out: list[list[dict]] = []
    for source in SOURCES:
        convs = _read(ROOT / source)
        rng.shuffle(convs)
        third = len(convs) // 3
        out += [_short(c) for c in convs[:third]]
        out += convs[third:2 * third]
        rest = convs[2 * third:]
        while rest:
            k = min(len(rest), rng.randint(2, 4))
            out.append(_thread(rest[:k]))
            rest = rest[k:]
    rng.shuffle(out)
    return out


def main() -> None:
    lines = [json.dumps({"messages": m}, ensure_ascii=False) for m in build()]
    atomic_write_text(OUT, "\n".join(lines) + "\n")
    print(f"wrote {len(lines)} conversations to {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
