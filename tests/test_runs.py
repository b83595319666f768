"""The run folder's one owner (voicetune/runs.py): finding a run, refusing one that is not whole, listing them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voicetune import runs, store


def whole_run(folder: Path, record: object | None = None) -> Path:
    folder.mkdir(parents=True)
    for name in runs.REQUIRED:
        (folder / name).write_text("{}")
    (folder / runs.RUN_FILE).write_text(json.dumps({"run_id": folder.name} if record is None else record))
    return folder


def test_a_run_is_found_by_id_or_folder_and_read(workspace: Path, tmp_path: Path) -> None:
    folder = whole_run(store.run_dir("20260101-000000-a"))
    assert runs.locate("20260101-000000-a") == (folder, {"run_id": "20260101-000000-a"})
    elsewhere = whole_run(tmp_path / "mine")
    assert runs.locate(str(elsewhere)) == (elsewhere, {"run_id": "mine"})


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / runs.ADAPTER_WEIGHTS).unlink(), "x is not a finished voicetune run: adapter_model.safetensors is missing"),
    (lambda f: (f / runs.RUN_FILE).write_text("{oops"), "x is not a finished voicetune run: run.json is not valid JSON"),
    (lambda f: (f / runs.RUN_FILE).write_text("[1]"), "x is not a finished voicetune run: run.json holds no run record"),
])
def test_every_refusal_is_one_run_error_naming_the_run_not_its_path(tmp_path: Path, damage, message: str) -> None:
    folder = whole_run(tmp_path / "x")
    damage(folder)
    with pytest.raises(runs.RunError) as e:
        runs.read(folder)
    assert str(e.value) == message


def test_unknown_and_escaping_ids_are_refused_before_anything_is_read(workspace: Path) -> None:
    # An escaping id that names no folder from here: an existing folder is what a command-line user may name.
    for run_id in ("nobody", "../../voicetune-no-such-folder"):
        with pytest.raises(runs.RunError) as e:
            runs.resolve(run_id)
        assert str(e.value) == f"no finished run called {run_id!r} in this workspace"


def test_finished_lists_whole_runs_newest_first_and_skips_the_rest(workspace: Path) -> None:
    whole_run(store.run_dir("20260101-000000-old"))
    whole_run(store.run_dir("20260102-000000-new"))
    whole_run(store.run_dir("20260103-000000-broken"), record=[1])
    store.run_dir("20260104-000000-half").mkdir()  # a run still being written has no run.json yet
    whole_run(store.runs_dir() / ".20260105-000000-tmp")
    assert [r["run_id"] for r in runs.finished()] == ["20260102-000000-new", "20260101-000000-old"]
