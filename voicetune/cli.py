"""The command line: one verb per job, each calling the same core functions as the app.

    python -m voicetune train --data examples/cosmo-coffee.jsonl --out workspace/runs/cosmo
    python -m voicetune chat --adapter workspace/runs/cosmo --prompt "Are you open on Sunday?" --json
    python -m voicetune validate --data my-voice.jsonl

Errors the user can fix (bad data, a missing model) print one plain message and exit non-zero, with no
traceback. Heavy libraries are imported only by the verbs that need them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from voicetune.data import DataError

EXIT_DATA = 2
EXIT_MODEL = 3
EXIT_USAGE = 64


def _fail(code: int, message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _event_writer(path: str | None) -> Callable[[dict[str, Any]], None]:
    """Progress as JSON lines (for the app, which runs training as a child process) and a line on stderr."""
    sink = open(path, "a", encoding="utf-8", buffering=1) if path else None

    def on_event(event: dict[str, Any]) -> None:
        if sink:
            sink.write(json.dumps(event, default=str) + "\n")
        if event["type"] == "log" and "loss" in event:
            print(f"step {event['step']}/{event['total_steps']}  loss {event['loss']:.4f}", file=sys.stderr)
        elif event["type"] == "log" and "eval_loss" in event:
            print(f"step {event['step']}/{event['total_steps']}  validation loss {event['eval_loss']:.4f}", file=sys.stderr)
        elif event["type"] in ("status", "error"):
            print(event.get("message", ""), file=sys.stderr)

    return on_event


def cmd_train(a: argparse.Namespace) -> int:
    from voicetune.config import TrainConfig

    try:
        base = TrainConfig.from_yaml(a.config).to_dict() if a.config else {}
    except (OSError, ValueError) as e:
        return _fail(EXIT_USAGE, f"config {a.config}: {e}")
    overrides = {
        "data": a.data, "out": a.out, "base_model": a.base_model, "epochs": a.epochs, "seed": a.seed,
        "learning_rate": a.learning_rate, "max_steps": a.max_steps, "qlora": a.qlora, "max_length": a.max_length,
        "batch_size": a.batch_size, "val_fraction": a.val_fraction, "scorecard": a.scorecard,
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    if not base.get("data") or not base.get("out"):
        return _fail(EXIT_USAGE, "--data and --out are required (or set them in --config)")
    try:
        cfg = TrainConfig.from_dict(base)
    except (TypeError, ValueError) as e:
        return _fail(EXIT_USAGE, str(e))
    # Check the file before importing torch: bad data costs a second, not a model load.
    from voicetune.data import load_conversations

    on_event = _event_writer(a.events)
    try:
        load_conversations(cfg.data)
        from voicetune.models import ModelError
        from voicetune.train import run_sft

        try:
            record = run_sft(cfg, on_event)
        except ModelError as e:
            on_event({"type": "error", "code": "model", "message": str(e)})
            return _fail(EXIT_MODEL, str(e))
    except DataError as e:
        on_event({"type": "error", "code": "data", "message": str(e)})
        return _fail(EXIT_DATA, f"{cfg.data} has problems:\n" + "\n".join(f"  {p}" for p in e.problems))
    m = record["metrics"]
    print(f"adapter saved to {cfg.out}  (train loss {m['train_loss']:.4f}, {record['duration_s']} s)")
    if cfg.scorecard and record["data"]["val"]:
        # A failed scorecard never fails the run: the adapter is already saved and usable.
        on_event({"type": "status", "message": "computing the scorecard"})
        try:
            from voicetune.evaluate import scorecard

            card = scorecard(cfg.out)
            on_event({"type": "scorecard", "verdict": card["verdict"]})
            print(card["verdict"])
        except Exception as e:  # noqa: BLE001
            on_event({"type": "status", "message": f"the scorecard could not be computed: {e}"})
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from voicetune import store
    from voicetune.evaluate import SCORECARD_FILE, scorecard, summary_rows
    from voicetune.generate import AdapterError

    folder = Path(a.run) if Path(a.run).is_dir() else None
    try:
        folder = folder or store.run_dir(a.run)
        saved = folder / SCORECARD_FILE
        card = json.loads(saved.read_text()) if saved.exists() and not a.recompute else scorecard(folder)
    except (ValueError, FileNotFoundError, AdapterError) as e:
        return _fail(EXIT_MODEL, str(e))
    if a.json:
        print(json.dumps(card, ensure_ascii=False, indent=2))
        return 0
    print(f"Scorecard for {card['run_id']} on {card['heldout']} held-out conversations\n")
    print(f"{'metric':40} {'base':>10} {'prompt-only':>12} {'tuned':>10}")
    for row in summary_rows(card):
        cells = [("" if row[k] is None else f"{row[k]:.3f}") for k in ("base", "prompt-only", "tuned")]
        print(f"{row['metric']:40} {cells[0]:>10} {cells[1]:>12} {cells[2]:>10}")
    print(f"\n{card['verdict']}")
    return 0


def cmd_chat(a: argparse.Namespace) -> int:
    from voicetune.config import GenConfig
    from voicetune.generate import AdapterError, ChatModel, compare
    from voicetune.models import ModelError
    from voicetune.train import read_run

    try:
        record = read_run(a.adapter)
        chat = ChatModel(a.base_model or record["base_model"])
        name = chat.load_adapter(a.adapter)
    except (FileNotFoundError, AdapterError, ModelError) as e:
        return _fail(EXIT_MODEL, str(e))
    gen = GenConfig(max_new_tokens=a.max_new_tokens)
    for row in compare(chat, name, a.prompt, gen, system=a.system):
        if a.json:
            print(json.dumps(row, ensure_ascii=False), flush=True)
        else:
            print(f"> {row['prompt']}\n  base : {row['base']}\n  tuned: {row['tuned']}\n", flush=True)
    return 0


def cmd_validate(a: argparse.Namespace) -> int:
    from voicetune.data import load_conversations

    try:
        convs = load_conversations(a.data)
        if a.with_template:
            from voicetune import models
            from voicetune.templates import encode_all

            tok = models.load_tokenizer(models.resolve_base_model(a.base_model))
            encoded, problems = encode_all(tok, convs, a.max_length)
            if problems:
                raise DataError(problems)
            print(f"{a.data}: {len(convs)} conversations, {sum(e.n_trained for e in encoded)} trained tokens, no problems")
            return 0
    except DataError as e:
        return _fail(EXIT_DATA, f"{a.data} has problems:\n" + "\n".join(f"  {p}" for p in e.problems))
    print(f"{a.data}: {len(convs)} conversations, no problems")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m voicetune", description="Tune a small model to a brand voice.")
    sub = p.add_subparsers(dest="verb", required=True)

    t = sub.add_parser("train", help="train an adapter on a JSONL file of conversations")
    t.add_argument("--data", help="OpenAI chat JSONL: one {\"messages\": [...]} per line")
    t.add_argument("--out", help="folder for the adapter and its run.json")
    t.add_argument("--config", help="a YAML file of TrainConfig settings; flags override it")
    t.add_argument("--base-model", help="Hub id or local folder (default: the embedded SmolLM2-135M-Instruct)")
    t.add_argument("--epochs", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--learning-rate", type=float)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--max-length", type=int)
    t.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    t.add_argument("--val-fraction", type=float)
    t.add_argument("--qlora", action=argparse.BooleanOptionalAction, default=None,
                   help="4-bit base weights (default: on with CUDA, off on CPU)")
    t.add_argument("--scorecard", action=argparse.BooleanOptionalAction, default=None,
                   help="score the run on its held-out split after training (default: on)")
    t.add_argument("--events", help="append progress events as JSON lines to this file")
    t.set_defaults(fn=cmd_train)

    c = sub.add_parser("chat", help="answer prompts with the base model and the tuned adapter")
    c.add_argument("--adapter", required=True, help="a finished run's folder")
    c.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    c.add_argument("--system", help="system prompt for both arms")
    c.add_argument("--max-new-tokens", type=int, default=128)
    c.add_argument("--base-model", help="override the base recorded in the adapter's run.json")
    c.add_argument("--json", action="store_true", help="one JSON object per line: prompt, base, tuned")
    c.set_defaults(fn=cmd_chat)

    e = sub.add_parser("eval", help="compute and print a run's voice scorecard")
    e.add_argument("--run", required=True, help="a run id in the workspace, or an adapter folder")
    e.add_argument("--json", action="store_true", help="print the whole scorecard as JSON")
    e.add_argument("--recompute", action="store_true", help="score again even if the run has a scorecard")
    e.set_defaults(fn=cmd_eval)

    v = sub.add_parser("validate", help="check a JSONL file and report every problem with its line")
    v.add_argument("--data", required=True)
    v.add_argument("--with-template", action="store_true", help="also render with the base model's chat template")
    v.add_argument("--base-model", default=None)
    v.add_argument("--max-length", type=int, default=1024)
    v.set_defaults(fn=cmd_validate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return _fail(130, "interrupted")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
