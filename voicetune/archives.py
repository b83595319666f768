"""Zips made by someone else, read safely: a teammate's shared adapter becomes a run in this workspace.

A zip from outside is hostile until checked: it may claim small sizes and expand to gigabytes (a zip bomb),
name entries like `../../app.py` or `/etc/cron.d/x` to write outside its folder, hold symlinks, or be a
renamed file of another kind. Python's zipfile reads the format but checks none of this for a caller that
extracts by hand, and no maintained library covers "this exact set of small files, each checked", so the
checks are written here: every cap below is tested in tests/test_security.py.

    run_id = import_adapter_zip(Path("cosmo-adapter.zip"))   # then chat with it on the Compare tab
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from voicetune import models, store
from voicetune.export import ZIP_FILES, public_record
from voicetune.templates import template_fingerprint
from voicetune import runs
from voicetune.runs import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CONFIG_FILE, REQUIRED, RUN_FILE

MAX_ARCHIVE_BYTES = 50 * 1024 * 1024  # the upload cap; a shared rank-16 adapter of SmolLM2-135M is ~4 MB
MAX_ENTRIES = 16  # an adapter zip holds 6 files; a few more leaves room, thousands would be an attack
MAX_TOTAL_BYTES = 200 * 1024 * 1024  # unpacked; a rank-64 adapter of a 1.7B model is ~150 MB
MAX_RATIO = 100  # weights barely compress (~1.1x) and JSON ~10x; a zip bomb reaches 1000x and more
CHUNK = 1024 * 1024
ADAPTER_ENTRIES = (*ZIP_FILES, "README.md", "load_adapter.py")  # what voicetune's Export tab puts in the zip
KEPT_ENTRIES = (*ZIP_FILES, "README.md")  # load_adapter.py is for people outside voicetune and is never kept


class ArchiveError(ValueError):
    """A zip refused, with the reason in plain words."""


def _entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why one entry may not be unpacked, or None."""
    name = info.filename
    path = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return f"entry {name!r} has an absolute path"
    if ".." in path.parts:
        return f"entry {name!r} points outside the archive folder (..)"
    if stat.S_ISLNK(info.external_attr >> 16):
        return f"entry {name!r} is a symbolic link"
    if info.flag_bits & 0x1:
        return f"entry {name!r} is encrypted"
    if info.file_size > 0 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        return (f"entry {name!r} expands {info.file_size // max(info.compress_size, 1)} times "
                f"(more than {MAX_RATIO}): this looks like a zip bomb")
    return None


def check_zip(path: Path, *, allowed: tuple[str, ...] | None = None) -> list[zipfile.ZipInfo]:
    """Every check that needs only the zip's directory; raises ArchiveError naming the first problem."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_ARCHIVE_BYTES:
        raise ArchiveError(f"{path.name} is {size / 2**20:.0f} MB; the limit is {MAX_ARCHIVE_BYTES // 2**20} MB")
    if not zipfile.is_zipfile(path):
        raise ArchiveError(f"{path.name} is not a zip archive (its content does not match its name)")
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ArchiveError(f"{path.name} is a damaged zip archive: {e}") from e
    if len(infos) > MAX_ENTRIES:
        raise ArchiveError(f"{path.name} holds {len(infos)} entries; a shared adapter holds at most {MAX_ENTRIES}")
    names: set[str] = set()
    for info in infos:
        problem = _entry_problem(info)
        if problem:
            raise ArchiveError(f"{path.name}: {problem}")
        if info.filename in names:
            raise ArchiveError(f"{path.name}: entry {info.filename!r} appears twice")
        names.add(info.filename)
        if allowed is not None and not info.is_dir() and info.filename not in allowed:
            raise ArchiveError(f"{path.name}: unexpected entry {info.filename!r}; a shared adapter holds only "
                               f"{', '.join(allowed)} at the top level")
    total = sum(i.file_size for i in infos)
    if total > MAX_TOTAL_BYTES:
        raise ArchiveError(f"{path.name} unpacks to {total / 2**20:.0f} MB; the limit is "
                           f"{MAX_TOTAL_BYTES // 2**20} MB")
    return infos


def extract(path: Path, dest: Path, names: tuple[str, ...]) -> None:
    """Unpack the named entries into dest, counting real bytes: a header that lies about sizes is caught too."""
    try:
        _extract(path, dest, names)
    except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as e:  # RuntimeError: encrypted
        raise ArchiveError(f"{Path(path).name} is a damaged zip archive: {e}") from e


def _extract(path: Path, dest: Path, names: tuple[str, ...]) -> None:
    written = 0
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if info.filename not in names or info.is_dir():
                continue
            target = dest / PurePosixPath(info.filename).name  # top-level files only: no folder is ever made
            with z.open(info) as src, open(target, "xb") as out:
                seen = 0
                while chunk := src.read(CHUNK):
                    seen += len(chunk)
                    written += len(chunk)
                    if seen > info.file_size or written > MAX_TOTAL_BYTES:
                        raise ArchiveError(f"{Path(path).name}: entry {info.filename!r} unpacks to more than "
                                           f"its header says: refused")
                    out.write(chunk)


def _check_weights(folder: Path) -> None:
    """The weights file must be a safetensors file (the header parses), not another file renamed."""
    from safetensors import safe_open

    try:
        with safe_open(str(folder / ADAPTER_WEIGHTS), framework="pt") as f:
            keys = list(f.keys())
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for every kind of damage
        raise ArchiveError(f"{ADAPTER_WEIGHTS} is not a valid safetensors file ({type(e).__name__})") from e
    if not any("lora_" in k for k in keys):
        raise ArchiveError(f"{ADAPTER_WEIGHTS} holds no LoRA weights")


def allowed_base_models(base_model: str | None = None) -> list[str]:
    """The base models a shared adapter may name: the embedded one, the ones this app is configured with, and
    every Hub model already downloaded into the shared cache (a project may train on any of them).

    A record names its base as text, and whatever it names would be loaded (or downloaded) by the scorecard
    and the compare arena; so an adapter of a base that is not here already is refused before anything loads.
    """
    from voicetune import catalog
    from voicetune.config import EMBEDDED_MODEL

    configured = [EMBEDDED_MODEL, models.default_base_model(), *([base_model] if base_model else [])]
    return list(dict.fromkeys([*configured, *catalog.downloaded()]))


def _allowed_base(record: dict[str, Any], base_model: str | None) -> str:
    """The allowed base the record names (a local folder may be named by its folder name), else ArchiveError."""
    named = record.get("base_model")
    for allowed in allowed_base_models(base_model):
        if named == allowed or (Path(allowed).is_absolute() and named == Path(allowed).name):
            return allowed
    shown = str(named)[:100] if isinstance(named, str) else repr(named)[:100]
    raise ArchiveError(f"this adapter was trained on the base model {shown!r}, which is not on this machine; "
                       "only adapters of the embedded model, this app's base model or a model downloaded here can "
                       "be added (download the base first: Project settings)")


def _check_base(record: dict[str, Any], base: str) -> None:
    """The adapter must fit its (allowed) base model: the same checks as ChatModel.check_adapter."""
    path = models.resolve_base_model(base)
    if record.get("base_model_hash") != models.base_model_fingerprint(path):
        raise ArchiveError(f"this adapter was trained on another copy of {record.get('base_model')!r} than this "
                           "app's base model (the base model's hash differs)")
    if record.get("template_hash") != template_fingerprint(models.load_tokenizer(path)):
        raise ArchiveError("this adapter was trained with a different chat template than this app's base model")


def _keep_public_config(folder: Path, zip_name: str) -> None:
    """config.yaml as settings only: paths another machine wrote there are dropped like on export."""
    from voicetune.export import public_config_yaml

    if not (folder / CONFIG_FILE).is_file():
        return
    try:
        text = public_config_yaml(folder)
    except ValueError as e:
        raise ArchiveError(f"{zip_name}: {e}") from e
    store.atomic_write_text(folder / CONFIG_FILE, text)


def import_adapter_zip(path: Path, *, base_model: str | None = None) -> str:
    """Check a shared adapter zip, unpack it as a new run under a generated id, and return that id.

    Nothing is written to the runs folder until every check passed: the run appears in one rename.
    """
    path = Path(path)
    infos = check_zip(path, allowed=ADAPTER_ENTRIES)
    present = {i.filename for i in infos}
    missing = [n for n in REQUIRED if n not in present]
    if missing:
        raise ArchiveError(f"{path.name} is not a voicetune adapter zip: {', '.join(missing)} is missing")
    runs_root = store.runs_dir()
    tmp = Path(tempfile.mkdtemp(prefix=store.owned_temp_prefix("import"), dir=runs_root))
    try:
        extract(path, tmp, KEPT_ENTRIES)
        try:
            record = runs.read(tmp)
            config = json.loads((tmp / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        except (runs.RunError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArchiveError(f"{path.name}: {RUN_FILE} or {ADAPTER_CONFIG} is not valid JSON") from e
        if not isinstance(record, dict) or not isinstance(config, dict) or config.get("peft_type") != "LORA":
            raise ArchiveError(f"{path.name} is not a voicetune adapter zip: it holds no LoRA run record")
        base = _allowed_base(record, base_model)  # before anything loads: the record says what would be loaded
        _check_weights(tmp)
        _check_base(record, base)
        origin = str(record.get("run_id") or "shared")
        run_id = store.new_run_id("shared-" + re.sub(r"^\d{8}-\d{6}-", "", origin))  # never the zip's own id
        # Only the public part of what the zip says is kept (no paths of another machine), under our base's name
        record = {**public_record(record), "run_id": run_id, "imported_from": origin[:200], "base_model": base}
        store.atomic_write_json(tmp / RUN_FILE, record)
        _keep_public_config(tmp, path.name)
        store.publish_dir(tmp, store.run_dir(run_id))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run_id
