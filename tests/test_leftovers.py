"""Leftovers of interrupted writes (.old-*, .import.*, .merge-*, .push-*, *.tmp) are cleaned at start-up, and
never one still being written."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.conftest import ROOT, run_cli

HOUR_AGO = time.time() - 3600
NO_SUCH_PID = 4_194_400  # above Linux's largest pid (2**22): no process has it


def make(path: Path, *, old: bool, folder: bool = True) -> Path:
    """A leftover folder with a file inside (or a file), last touched an hour ago or just now."""
    if folder:
        path.mkdir(parents=True)
        (path / "part.bin").write_bytes(b"x")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    if old:
        for p in [*path.rglob("*"), path] if folder else [path]:
            os.utime(p, (HOUR_AGO, HOUR_AGO))
    return path


def test_start_up_cleans_abandoned_leftovers_and_keeps_live_ones(workspace: Path) -> None:
    """Issue 15: these piled up for ever. The CLI cleans at every start, the app when its supervisor starts."""
    stale = [
        make(workspace / "runs" / ".cosmo.old-1a2b3c", old=True),
        make(workspace / "runs" / f".import.{NO_SUCH_PID}.abcd1234", old=False),  # fresh, but its owner is gone
        make(workspace / "exports" / "cosmo" / ".merge-k3j4h5g6", old=True),
        make(workspace / "users" / "ann-1234567890" / ".push-abcd1234", old=True),
        make(workspace / ".voicetune.db.x1y2z3.tmp", old=True, folder=False),
    ]
    live = [
        make(workspace / "runs" / f".import.{os.getpid()}.efgh5678", old=True),  # its owner (this test) lives
        make(workspace / "exports" / "cosmo" / ".merge-fresh123", old=False),  # being written right now
        make(workspace / "runs" / ".run.json.q9w8e7.tmp", old=False, folder=False),
        make(workspace / "runs" / "20260101-000000-cosmo-abc123", old=True),  # not a leftover at all
    ]
    result = run_cli("validate", "--data", str(ROOT / "examples" / "cosmo-coffee.jsonl"),
                     env={"VOICETUNE_HOME": str(workspace)})
    assert result.returncode == 0, result.stderr
    assert [p.exists() for p in stale] == [False] * len(stale)
    assert [p.exists() for p in live] == [True] * len(live)

    # The app's start-up does the same (jobs.supervisor().start(), which app.py calls)
    from voicetune import jobs

    again = make(workspace / "runs" / ".voice.old-4d5e6f", old=True)
    jobs.supervisor().start()
    assert not again.exists() and all(p.exists() for p in live)


def test_a_command_makes_no_workspace_to_clean(tmp_path: Path) -> None:
    home = tmp_path / "none-yet"
    result = run_cli("validate", "--data", str(ROOT / "examples" / "cosmo-coffee.jsonl"),
                     env={"VOICETUNE_HOME": str(home)})
    assert result.returncode == 0 and not home.exists()
