"""The command line: one verb per job, each calling the same core functions as the app.

    python -m voicetune train --data examples/cosmo-coffee.jsonl --out workspace/runs/cosmo
    python -m voicetune chat --adapter workspace/runs/cosmo --prompt "Are you open on Sunday?" --json
    python -m voicetune validate --data my-voice.jsonl
    python -m voicetune export --run cosmo --gguf --quant q8_0
    python -m voicetune serve --run cosmo --port 8000
    python -m voicetune draft --project "Cosmo Coffee" --questions questions.txt --out drafts.jsonl

Errors the user can fix (bad data, a missing model) print one plain message and exit non-zero, with no
traceback. Heavy libraries are imported only by the verbs that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

from voicetune.config import CHAT_MAX_TOKENS
from voicetune.data import DataError

EXIT_DATA = 2
EXIT_MODEL = 3
EXIT_TRAIN = 4  # training failed (out of memory, disk full, a crash): the message carries a fix
EXIT_CANCELLED = 5
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


def _train_config(a: argparse.Namespace) -> Any:
    from voicetune.config import DEFAULT_REPLAY, TrainConfig
    from voicetune.dpo import config_from, is_dpo_yaml

    if a.method == "dpo" or (a.method is None and is_dpo_yaml(a.config)):  # DPO: dpo.DPOConfig's own settings
        return config_from(a.config, {"data": a.preferences or a.data, "out": a.out, "parent": a.parent,
                                      "beta": a.beta, "epochs": a.epochs, "seed": a.seed, "max_steps": a.max_steps,
                                      "learning_rate": a.learning_rate, "batch_size": a.batch_size,
                                      "max_length": a.max_length, "val_fraction": a.val_fraction, "qlora": a.qlora,
                                      "scorecard": a.scorecard, "checkpoint_dir": a.checkpoint_dir})

    base = TrainConfig.from_yaml(a.config).to_dict() if a.config else {}
    overrides = {
        "data": a.data, "out": a.out, "base_model": a.base_model, "epochs": a.epochs, "seed": a.seed,
        "learning_rate": a.learning_rate, "max_steps": a.max_steps, "qlora": a.qlora, "max_length": a.max_length,
        "batch_size": a.batch_size, "val_fraction": a.val_fraction, "scorecard": a.scorecard,
        "checkpoint_dir": a.checkpoint_dir, "early_stopping": a.early_stopping, "replay": a.replay,
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    if not base.get("data") or not base.get("out"):
        raise ValueError("--data and --out are required (or set them in --config)")
    if "learning_rate" not in base:  # neither flag nor config: the Auto rule's rate for this base model's size
        from voicetune import recipes

        base["learning_rate"] = recipes.auto_learning_rate(recipes.base_params(base.get("base_model")))
    if "replay" not in base:  # likewise the Auto rule's general replay (docs/recipes.md)
        base["replay"] = DEFAULT_REPLAY
    return TrainConfig.from_dict(base)


def _raise_cancelled(signum: int, frame: Any) -> None:  # noqa: ARG001
    from voicetune.jobs import Cancelled

    raise Cancelled()


def _preflight_train(cfg: Any) -> None:
    """Everything that costs no model: the data and held-out files parse and pass their checks, and the base
    model's own files pass catalog.check_base. Raises DataError or ModelError before a base model is converted
    or loaded (the held-out file used to be read after)."""
    from dataclasses import replace

    from voicetune.config import EMBEDDED_MODEL
    from voicetune.data import load_conversations

    load_conversations(cfg.data)
    if cfg.base_model != EMBEDDED_MODEL:  # a base without a template, fast tokenizer, or needing custom code
        from voicetune.catalog import check_base

        check_base(cfg.base_model)
    if cfg.heldout_data:
        try:
            load_conversations(cfg.heldout_data)
        except DataError as e:  # worded as train.prepare_data words the held-out file's problems
            raise DataError([replace(p, message=f"(held-out file) {p.message}") for p in e.problems]) from None


JobEnd = Callable[[str, str | None, str], None]  # records how a queued job ended: state, failure code, message


def cmd_train(a: argparse.Namespace) -> int:
    """Train; as a queued job (--job) also record how it ended, with a failure code the app can explain.

    A job's output is its Training log, which its user reads: it names files, never the server's folders, and
    a crash's traceback goes to the server-side log only (failures.log_for_server).
    """
    try:
        cfg = _train_config(a)
        if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
            raise ValueError(f"--out {Path(cfg.out).name} is a file, not a folder for the adapter")
    except (OSError, TypeError, ValueError) as e:
        return _fail(EXIT_USAGE, f"config {a.config or ''}: {e}".replace("config : ", ""))
    on_event = _event_writer(a.events)
    end = _job_recorder(a.job)
    shown = (lambda p: Path(p).name) if a.job else str  # what the log says for a path
    signal.signal(signal.SIGTERM, _raise_cancelled)
    out_existed = Path(cfg.out).exists()
    from voicetune.jobs import Cancelled

    try:
        record = _run_training(a, cfg, on_event)
    except Cancelled:
        if not out_existed:  # the cancel came after the final rename: honour it, leave nothing listed
            shutil.rmtree(cfg.out, ignore_errors=True)
        on_event({"type": "status", "message": "cancelled"})
        end("cancelled", None, "cancelled; no adapter was kept")
        return _fail(EXIT_CANCELLED, "cancelled")
    except Exception as e:  # noqa: BLE001 - every failure ends as a code and a fix, never a bare traceback
        return _training_failed(a, cfg, e, on_event, end, shown)
    if not record:  # a non-zero rank under `accelerate launch`: rank 0 reports and saves
        return 0
    from voicetune.runs import keep_training_data

    if getattr(cfg, "method", "sft") != "dpo":  # a DPO run keeps its pairs itself (dpo.PREFERENCES_FILE)
        keep_training_data(Path(cfg.out), cfg.data, cfg.heldout_data)  # a Hub push reads the dataset from here
    _refresh_model_card(Path(cfg.out))
    m = record["metrics"]
    print(f"adapter saved to {shown(cfg.out)}  (train loss {m['train_loss']:.4f}, {record['duration_s']} s)")
    message = f"train loss {m['train_loss']:.3f}"
    if cfg.scorecard and record["data"]["val"]:
        message += _score_after_training(cfg, on_event)
    end("succeeded", None, message)
    return 0


def _run_training(a: argparse.Namespace, cfg: Any, on_event: Callable[[dict[str, Any]], None]) -> dict | None:
    """One SFT or DPO run; its files are checked before torch is imported, so bad data costs a second, not a
    model load. Returns the run's record (None on a non-zero rank)."""
    from voicetune.jobs import Cancelled

    # A cancel that came while the job was being started found no process to signal: honour it here,
    # now that SIGTERM raises Cancelled (a short job could otherwise finish as if never cancelled).
    if a.job:
        from voicetune.jobs import cancel_requested

        if cancel_requested(a.job):
            raise Cancelled()
    if getattr(cfg, "method", "sft") == "dpo":
        from voicetune.dpo import preflight, run_dpo

        preflight(cfg)
        return run_dpo(cfg, on_event, resume=a.resume)
    _preflight_train(cfg)
    from voicetune.train import run_sft

    return run_sft(cfg, on_event, resume=a.resume)


def _training_failed(a: argparse.Namespace, cfg: Any, e: Exception, on_event: Callable[[dict[str, Any]], None],
                     end: JobEnd, shown: Callable[[Any], str]) -> int:
    """Every failure ends as a code and a fix: in the events, in the job's end state and on stderr. A crash's
    traceback goes to the server-side log for a job (its user reads the log), to stderr on the command line."""
    from voicetune.failures import classify, log_for_server

    failure = classify(e)
    if failure.code == "crash":
        if a.job:
            log_for_server(f"job {a.job} crashed:\n{traceback.format_exc()}")
        else:
            traceback.print_exc()  # the command line's user runs the machine: the details are theirs
    on_event({"type": "error", "code": failure.code, "message": failure.message, "fix": failure.fix})
    end("failed", failure.code, failure.message[:2000])
    if failure.code == "data":
        from voicetune.failures import hide_paths

        problems = [hide_paths(str(p)) if a.job else str(p) for p in e.problems]
        return _fail(EXIT_DATA, f"{shown(cfg.data)} has problems:\n" + "\n".join(f"  {p}" for p in problems))
    return _fail(EXIT_MODEL if failure.code == "model" else EXIT_TRAIN, f"{failure.message}\n{failure.fix}")


def _score_after_training(cfg: Any, on_event: Callable[[dict[str, Any]], None]) -> str:
    """The scorecard on the held-out split; returns what the job's end message adds. A failed or cancelled
    scorecard never fails the run: the adapter is already saved and usable."""
    from voicetune.jobs import Cancelled

    on_event({"type": "status", "phase": "scoring", "message": "computing the scorecard"})
    try:
        from voicetune.evaluate import scorecard

        card = scorecard(cfg.out)
        on_event({"type": "scorecard", "verdict": card["verdict"]})
        print(card["verdict"])
        _refresh_model_card(Path(cfg.out))
    except Cancelled:
        return "; scorecard cancelled"
    except Exception as e:  # noqa: BLE001
        from voicetune.failures import hide_paths

        on_event({"type": "status", "message": f"the scorecard could not be computed: {hide_paths(str(e))}"})
    return ""


def _refresh_model_card(folder: Path) -> None:
    """README.md beside the adapter; written again once the scorecard exists. The CLI writes it, not train.py,
    because the card draws on the scorecard, which sits above training in the package."""
    from voicetune import store
    from voicetune.export import model_card
    from voicetune import runs

    try:
        store.atomic_write_text(folder / runs.MODEL_CARD, model_card(runs.read(folder), folder))
    except Exception as e:  # noqa: BLE001 - a missing card never fails a saved run
        print(f"the model card could not be written: {e}", file=sys.stderr)


def _job_recorder(job_id: str | None) -> JobEnd:
    if not job_id or int(os.environ.get("RANK", "0")) != 0:
        return lambda state, code, message: None
    from voicetune.jobs import record_end

    return lambda state, code, message: record_end(job_id, state, code, message)


def cmd_eval(a: argparse.Namespace) -> int:
    from voicetune.runs import SCORECARD_FILE, locate

    try:
        folder, _ = locate(a.run)  # before the scorecard's imports and model load
        from voicetune.evaluate import scorecard
        from voicetune.generate import AdapterError

        saved = folder / SCORECARD_FILE
        prompts = None
        if a.prompts:  # one per line; they join the held-out first turns as the unseen prompts
            from voicetune.evaluate import read_prompts

            prompts = read_prompts(Path(a.prompts).read_text(encoding="utf-8"))
        try:
            fresh = a.recompute or prompts is not None or not saved.exists()
            card = scorecard(folder, test_prompts=prompts) if fresh else json.loads(saved.read_text())
        except AdapterError as e:
            raise ValueError(str(e)) from None
    except (ValueError, FileNotFoundError) as e:
        from voicetune.failures import hide_paths

        return _fail(EXIT_MODEL, hide_paths(str(e)))
    from voicetune.evaluate import summary_rows

    if a.json:
        print(json.dumps(card, ensure_ascii=False, indent=2))
        return 0
    from voicetune.evaluate import training_line

    trained = training_line(card)
    print(f"Scorecard for {card['run_id']} on {card['heldout']} held-out conversations"
          + (f"\n{trained}" if trained else "") + "\n")
    print(f"{'metric':40} {'base':>10} {'prompt-only':>12} {'tuned':>10}")
    for row in summary_rows(card):
        cells = [("" if row[k] is None else f"{row[k]:.3f}") for k in ("base", "prompt-only", "tuned")]
        print(f"{row['metric']:40} {cells[0]:>10} {cells[1]:>12} {cells[2]:>10}")
    adh = card.get("adherence")
    if adh:
        from voicetune.evaluate import adherence_lines

        print("\n" + "\n".join(adherence_lines(card)))
    print(f"\n{card['verdict']}")
    return 0


def cmd_chat(a: argparse.Namespace) -> int:
    from voicetune.runs import locate

    try:
        folder, record = locate(a.adapter)  # before the model libraries are even imported
    except ValueError as e:
        return _fail(EXIT_MODEL, str(e))
    from voicetune.config import CHAT_REPETITION_PENALTY, GenConfig
    from voicetune.generate import AdapterError, ChatModel, compare
    from voicetune.models import ModelError

    try:
        chat = ChatModel(a.base_model or record["base_model"])
        name = chat.load_adapter(str(folder))
    except (FileNotFoundError, AdapterError, ModelError) as e:
        from voicetune.failures import hide_paths

        return _fail(EXIT_MODEL, hide_paths(str(e)))
    gen = GenConfig(max_new_tokens=a.max_new_tokens, repetition_penalty=CHAT_REPETITION_PENALTY)
    for row in compare(chat, name, a.prompt, gen, system=a.system):
        if a.json:
            print(json.dumps(row, ensure_ascii=False), flush=True)
        else:
            cut = {k: f" [cut at the {gen.max_new_tokens}-token limit]" if row[f"{k}_cut"] else ""
                   for k in ("base", "tuned")}
            print(f"> {row['prompt']}\n  base : {row['base']}{cut['base']}\n  tuned: {row['tuned']}{cut['tuned']}\n",
                  flush=True)
    return 0


def cmd_validate(a: argparse.Namespace) -> int:
    """Problems fail the file (exit 2); warnings are printed to stderr, line by line, and pass."""
    from voicetune.data import Problem, load_conversations

    warnings: list[Problem] = []
    try:
        convs = load_conversations(a.data, warnings)
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        warned = f", {len(warnings)} warning{'s' * (len(warnings) != 1)}" if warnings else ""
        if a.with_template:
            from voicetune import models
            from voicetune.templates import encode_all

            tok = models.load_tokenizer(models.resolve_base_model(a.base_model))
            encoded, problems = encode_all(tok, convs, a.max_length)
            if problems:
                raise DataError(problems)
            print(f"{a.data}: {len(convs)} conversations, {sum(e.n_trained for e in encoded)} trained tokens, "
                  f"no problems{warned}")
            return 0
    except DataError as e:
        return _fail(EXIT_DATA, f"{a.data} has problems:\n" + "\n".join(f"  {p}" for p in e.problems))
    print(f"{a.data}: {len(convs)} conversations, no problems{warned}")
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    """The run is found and checked first (cheap); only then is a model merged or converted."""
    from voicetune import export, store
    from voicetune.runs import locate

    try:
        folder, _ = locate(a.run)
        out = Path(a.out) if a.out else store.home() / "exports" / folder.name
        if a.zip:
            done = export.adapter_zip(folder, out / f"{folder.name}-adapter.zip" if not a.out else out)
        elif a.merge:
            done = export.merge(folder, out / f"merged-{a.dtype}" if not a.out else out, dtype=a.dtype)
        else:
            import shutil
            import tempfile

            dest = out if a.out else out / f"gguf-{a.quant}" / f"{folder.name}-{a.quant}.gguf"
            dest.parent.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=store.owned_temp_prefix("merge"), dir=dest.parent))
            try:  # GGUF is written from a full-precision merge, which is then dropped
                done = export.to_gguf(export.merge(folder, scratch / "merged", dtype="fp32"), dest, quant=a.quant)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    except (ValueError, FileNotFoundError) as e:
        from voicetune.failures import hide_paths

        return _fail(EXIT_MODEL, hide_paths(str(e)))
    print(done)
    return 0


def cmd_push(a: argparse.Namespace) -> int:
    """Push a run to the Hub; the token comes from HF_TOKEN or `huggingface-cli login`, never from a flag
    (a flag would sit in the shell history and the process list)."""
    from voicetune import hub
    from voicetune.runs import locate

    try:
        folder, _ = locate(a.run)
        pushed = hub.push_run(folder, a.repo, private=not a.public, include_merged=a.merged,
                              include_dataset=a.dataset, merged_dtype=a.dtype, overwrite=a.overwrite,
                              on_status=lambda message: print(message, file=sys.stderr))
    except (ValueError, hub.HubError) as e:
        return _fail(EXIT_MODEL, str(e))
    for p in pushed:
        print(f"{p.kind}: {p.url}")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    """The OpenAI-compatible endpoint without the page; keys are the shared workspace's (made here or in the app)."""
    from voicetune import apikeys, serve
    from voicetune.models import ModelError
    from voicetune.runs import locate

    try:
        if a.new_key:
            print(apikeys.make_key(a.new_key, owner=None, requests_per_minute=a.requests_per_minute,
                                   max_tokens=a.max_tokens, max_prompt_tokens=a.max_prompt_tokens))
            print("Shown once: store it now. Revoke it with --revoke-key ID (--keys lists them).", file=sys.stderr)
            return 0
        if a.revoke_key is not None:
            if not apikeys.revoke_key(a.revoke_key):
                return _fail(EXIT_USAGE, f"there is no live key with id {a.revoke_key} (--keys lists them)")
            print(f"key {a.revoke_key} revoked")
            return 0
        if a.keys:
            for k in apikeys.list_keys():
                state = "revoked" if k["revoked"] else "live"
                print(f"{k['id']:>4}  {k['name']}  …{k['hint']}  {state}  {k['requests_per_minute']}/min  "
                      f"max_tokens {k['max_tokens']}  prompt {k['max_prompt_tokens']}")
            return 0
        if not a.run:
            return _fail(EXIT_USAGE, "name at least one run to serve: --run RUN or --run NAME=RUN")
        runs = {}
        for spec in a.run:
            name, sep, run = spec.partition("=")
            folder, _ = locate(run if sep else spec)
            runs[name if sep else folder.name] = folder
        service = serve.headless_service(runs, a.base_model)
    except (ValueError, FileNotFoundError, ModelError) as e:
        return _fail(EXIT_MODEL, str(e))
    serve.serve_forever(service, a.host, a.port)
    return 0


MACHINES = ("this", "t4", "l4", "cpu")  # `models --machine`: this machine, or the README's reference machines


def cmd_models(a: argparse.Namespace) -> int:
    """The catalog with what fits: a Markdown table per machine (the README's model section is this output)."""
    from voicetune import fit
    from voicetune.catalog import CATALOG

    machine = {"t4": fit.T4, "l4": fit.L4, "cpu": fit.CPU_16GB}.get(a.machine) or fit.this_machine()
    lengths = [a.tokens] * a.conversations
    print(f"{machine.name}, {gib_or_unknown(machine.memory)}; rank 16, batch 4, max length 1024, "
          f"{a.conversations} conversations of {a.tokens} tokens (an estimate)\n")
    print("| model | params | licence | gated | context | template | training | chat | Quick look / Balanced |")
    print("|---|---|---|---|---|---|---|---|---|")
    for e in CATALOG:
        r = fit.fit_report(e.shape, machine, lengths=lengths)
        # The default way (QLoRA on a GPU; checkpointing only when needed), else any way that fits
        default = [o for o in r.options if o.qlora == (machine.device == "cuda")]
        way = next((o for o in default + r.options if o.fits), None)
        training = f"{way.label}: {fit.gib(way.bytes)}" if way else f"does not fit ({fit.gib(min(o.bytes for o in r.options))})"
        chat = (f"{fit.gib(r.chat_bytes)}{' 4-bit' if r.chat_four_bit else ''}" if r.chat_fits
                else f"does not fit ({fit.gib(r.chat_bytes)})")
        times = " / ".join(fit.duration(r.seconds[p]) for p in ("Quick look", "Balanced"))
        print(f"| {e.name} | {e.params / 1e9:.2f}B | {e.licence} | {'yes' if e.gated else 'no'} | {e.context:,} | "
              f"{e.template} | {training} | {chat} | {times} |")
    return 0


def gib_or_unknown(n: int | None) -> str:
    return "memory unknown" if n is None else f"{n / (1 << 30):.1f} GiB"


def cmd_fetch(a: argparse.Namespace) -> int:
    """Download a base model into the shared cache (VOICETUNE_CACHE), with its progress on stderr."""
    from voicetune.models import ModelError
    from voicetune.weights import download

    shown = [-1]

    def progress(done: int, total: int) -> None:
        percent = int(100 * done / total) if total else 0
        if percent != shown[0]:
            shown[0] = percent
            print(f"\r{a.model}: {done / 1e9:.2f} of {total / 1e9:.2f} GB ({percent}%)", end="", file=sys.stderr)

    try:
        download(a.model, on_progress=progress)
    except ModelError as e:
        return _fail(EXIT_MODEL, str(e))
    print(f"\n{a.model} is downloaded: use it with --base-model {a.model}", file=sys.stderr)
    return 0


def cmd_draft(a: argparse.Namespace) -> int:
    """Draft replies for review elsewhere (--out), or put a reviewed drafts file back into the queue (--import)."""
    from voicetune import drafting, projects, store

    conn = store.connect()
    found = [p for p in projects.list_projects(conn) if p["name"] == a.project]
    if not found:
        names = ", ".join(f"“{p['name']}”" for p in projects.list_projects(conn)) or "none yet"
        return _fail(EXIT_USAGE, f"no project called “{a.project}” in this workspace (projects: {names})")
    pid = found[0]["id"]
    if a.import_file:
        ids, problems = drafting.import_drafts(conn, pid, Path(a.import_file).read_bytes())
        for p in problems:
            print(f"{Path(a.import_file).name}: {p}", file=sys.stderr)
        print(f"{len(ids)} draft(s) put in the review queue of “{a.project}”; review them in the Data tab's Draft tab.")
        return EXIT_DATA if problems else 0
    if not a.questions or not a.out:
        return _fail(EXIT_USAGE, "--questions and --out are required (or --import FILE to queue a drafts file)")
    asked = drafting.read_new_questions(conn, pid, Path(a.questions).read_text(encoding="utf-8"))
    for p in asked.left_out:
        print(f"{Path(a.questions).name}: {p}", file=sys.stderr)
    try:
        drafter = drafting.make_drafter(conn, pid, a.model)
        records = []
        for update in drafting.draft_replies(conn, pid, asked.kept, drafter, queue=False):
            if update.record is not None:
                records.append(update.record)
                cut = f" ({drafting.CUT_NOTE})" if update.cut else ""
                print(f"{len(records)}/{len(asked.kept)} {update.question}{cut}", file=sys.stderr)
    except drafting.DraftError as e:
        return _fail(EXIT_MODEL, str(e))
    store.atomic_write_text(Path(a.out), drafting.drafts_jsonl(records))
    print(f"{len(records)} draft(s) written to {a.out}: review them, then "
          f"`python -m voicetune draft --project \"{a.project}\" --import {a.out}` puts them in the review queue.")
    return 0


Subcommands = Any  # what add_subparsers returns (argparse._SubParsersAction: a private name)


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per verb, each declared by its own helper below."""
    p = argparse.ArgumentParser(prog="python -m voicetune", description="Tune a small model to a brand voice.")
    sub = p.add_subparsers(dest="verb", required=True)
    _add_train(sub)
    _add_chat(sub)
    _add_eval(sub)
    _add_export(sub)
    _add_push(sub)
    _add_serve(sub)
    _add_models(sub)
    _add_fetch(sub)
    _add_draft(sub)
    _add_validate(sub)
    return p


def _add_train(sub: Subcommands) -> None:
    """`train`: SFT on conversations, or DPO on preference pairs (--method dpo); the app's jobs run this too."""
    t = sub.add_parser("train", help="train an adapter on a JSONL file of conversations")
    t.add_argument("--data", help="OpenAI chat JSONL: one {\"messages\": [...]} per line")
    t.add_argument("--out", help="folder for the adapter and its run.json")
    t.add_argument("--config", help="a YAML file of TrainConfig settings; flags override it")
    t.add_argument("--base-model", help="a catalog or Hub id (downloaded: see `fetch`) or a local folder "
                                        "(default: the embedded SmolLM2-135M-Instruct; `models` lists the catalog)")
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
    t.add_argument("--checkpoint-dir", help="save checkpoints here, so an interrupted run can be resumed")
    t.add_argument("--resume", action="store_true", help="continue from the newest whole checkpoint")
    t.add_argument("--early-stopping", action=argparse.BooleanOptionalAction, default=None,
                   help="stop when validation loss stops improving and keep the best checkpoint "
                        "(default: on below 500 conversations)")
    t.add_argument("--replay", type=float, metavar="SHARE",
                   help="general replay: the base model's own answers to general questions, this share of the "
                        "training conversations, trained on beside them so the voice does not replace plain "
                        "answers (default 0.5; 0 turns it off)")
    t.add_argument("--method", choices=["sft", "dpo"], default=None,
                   help="sft (default): learn from conversations; dpo: improve a finished run (--from) from "
                        "preference pairs (--preferences)")
    t.add_argument("--from", dest="parent", metavar="RUN", help="dpo: the finished run to improve (id or folder)")
    t.add_argument("--preferences", help="dpo: TRL prompt/chosen/rejected JSONL")
    t.add_argument("--beta", type=float, help="dpo: how far the run may move from its parent (default 0.1)")
    t.add_argument("--job", help=argparse.SUPPRESS)  # the app's job id: the run records its end state there
    t.set_defaults(fn=cmd_train)


def _add_chat(sub: Subcommands) -> None:
    """`chat`: the base model and a tuned adapter answer the same prompts."""
    c = sub.add_parser("chat", help="answer prompts with the base model and the tuned adapter")
    c.add_argument("--adapter", required=True, help="a finished run's folder")
    c.add_argument("--prompt", action="append", required=True, help="repeat for several prompts")
    c.add_argument("--system", help="system prompt for both arms")
    c.add_argument("--max-new-tokens", type=int, default=CHAT_MAX_TOKENS)
    c.add_argument("--base-model", help="override the base recorded in the adapter's run.json")
    c.add_argument("--json", action="store_true", help="one JSON object per line: prompt, base, tuned")
    c.set_defaults(fn=cmd_chat)


def _add_eval(sub: Subcommands) -> None:
    """`eval`: a run's voice scorecard."""
    e = sub.add_parser("eval", help="compute and print a run's voice scorecard")
    e.add_argument("--run", required=True, help="a run id in the workspace, or an adapter folder")
    e.add_argument("--json", action="store_true", help="print the whole scorecard as JSON")
    e.add_argument("--recompute", action="store_true", help="score again even if the run has a scorecard")
    e.add_argument("--prompts", help="unseen test prompts, one per line (scores again with them; default: the "
                   "run's project's, or <data>.prompts.txt beside the training file)")
    e.set_defaults(fn=cmd_eval)


def _add_export(sub: Subcommands) -> None:
    """`export`: a run as an adapter zip, a merged model or a GGUF (exactly one)."""
    x = sub.add_parser("export", help="a run as an adapter zip, a merged model, or a GGUF for llama.cpp/Ollama")
    x.add_argument("--run", required=True, help="a run id in the workspace, or an adapter folder")
    what = x.add_mutually_exclusive_group(required=True)
    what.add_argument("--zip", action="store_true", help="the adapter with its model card and a load script")
    what.add_argument("--merge", action="store_true", help="the adapter folded into its base model")
    what.add_argument("--gguf", action="store_true", help="a merged GGUF plus an Ollama Modelfile beside it")
    x.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16", help="precision of --merge")
    x.add_argument("--quant", choices=["f16", "q8_0"], default="f16", help="GGUF weight format")
    x.add_argument("--out", help="the file or folder to write (default: <workspace>/exports/<run id>/...)")
    x.set_defaults(fn=cmd_export)


def _add_push(sub: Subcommands) -> None:
    """`push`: a run to the Hugging Face Hub, private and refusing existing repositories unless told."""
    h = sub.add_parser("push", help="push a run to the Hugging Face Hub (private unless --public)")
    h.add_argument("--run", required=True, help="a run id in the workspace, or an adapter folder")
    h.add_argument("--repo", required=True, help="name or owner/name of the model repository")
    h.add_argument("--public", action="store_true", help="make new repositories public (default: private)")
    h.add_argument("--merged", action="store_true", help="also push the merged model to <repo>-merged")
    h.add_argument("--dataset", action="store_true", help="also push the conversations to the dataset <repo>-data")
    h.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16", help="precision of the merged model")
    h.add_argument("--overwrite", action="store_true",
                   help="add the files to repositories that already exist (default: refuse, upload nothing)")
    h.set_defaults(fn=cmd_push)


def _add_serve(sub: Subcommands) -> None:
    """`serve`: the OpenAI-compatible endpoint, and the API keys that reach it."""
    s = sub.add_parser("serve", help="an OpenAI-compatible endpoint (/v1/chat/completions) for runs, without the app")
    s.add_argument("--run", action="append", help="a run id or adapter folder, or NAME=RUN to call it NAME; repeat")
    s.add_argument("--host", default="127.0.0.1", help="where to listen (default: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--base-model", help="override the base model the runs record")
    s.add_argument("--new-key", metavar="NAME", help="make an API key, print it once, and exit")
    s.add_argument("--requests-per-minute", type=int, default=60, help="the new key's rate limit")
    s.add_argument("--max-tokens", type=int, default=512, help="the most reply tokens the new key may ask for")
    s.add_argument("--max-prompt-tokens", type=int, default=2048, help="the longest prompt the new key may send")
    s.add_argument("--revoke-key", type=int, metavar="ID", help="revoke a key by its id and exit")
    s.add_argument("--keys", action="store_true", help="list the keys (never the keys themselves) and exit")
    s.set_defaults(fn=cmd_serve)


def _add_models(sub: Subcommands) -> None:
    """`models`: the base-model catalog, sized for a machine."""
    m = sub.add_parser("models", help="the base-model catalog with the memory and time each needs on a machine")
    m.add_argument("--machine", choices=MACHINES, default="this", help="this machine, or a T4, an L4 or a 16 GB CPU")
    m.add_argument("--conversations", type=int, default=100, help="conversations in the time estimate")
    m.add_argument("--tokens", type=int, default=300, help="tokens per conversation in the time estimate")
    m.set_defaults(fn=cmd_models)


def _add_fetch(sub: Subcommands) -> None:
    """`fetch`: one base model from the Hub into the shared cache."""
    f = sub.add_parser("fetch", help="download a base model from the Hub into the shared model cache")
    f.add_argument("model", help="a Hub id, e.g. Qwen/Qwen2.5-0.5B-Instruct (gated ones need HF_TOKEN)")
    f.set_defaults(fn=cmd_fetch)


def _add_draft(sub: Subcommands) -> None:
    """`draft`: replies in a project's voice to a file of questions, or a drafts file into the review queue."""
    d = sub.add_parser("draft", help="draft replies in a project's voice to a file of questions (one per line), "
                                      "or put a drafts file into the project's review queue")
    d.add_argument("--project", required=True, help="the project's name, as the app shows it")
    d.add_argument("--questions", help="a text file, one customer question per line")
    d.add_argument("--out", help="the drafts file to write (JSON lines: question, reply, provenance)")
    d.add_argument("--model", default="base", help="base (the project's base model), run:<run id>, or endpoint")
    d.add_argument("--import", dest="import_file", metavar="FILE", help="queue a drafts file for review and exit")
    d.set_defaults(fn=cmd_draft)


def _add_validate(sub: Subcommands) -> None:
    """`validate`: a JSONL file's problems, each with its line."""
    v = sub.add_parser("validate", help="check a JSONL file and report every problem with its line")
    v.add_argument("--data", required=True)
    v.add_argument("--with-template", action="store_true", help="also render with the base model's chat template")
    v.add_argument("--base-model", default=None)
    v.add_argument("--max-length", type=int, default=1024)
    v.set_defaults(fn=cmd_validate)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "job", None):  # a job's child leaves this to the app that started it
        from voicetune import store

        store.clean_leftovers()  # what interrupted writes left behind, never a live one
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return _fail(130, "interrupted")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
