"""Job phases are data: each event names its phase, and a job's progress reads that field, not message wording."""

from __future__ import annotations

import json
from pathlib import Path

from voicetune import jobs


def job_with(events: list[dict], folder: Path) -> jobs.Job:
    folder.mkdir(parents=True)
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    job = jobs.Job(id="j", home=str(folder.parent), project_id=None, label="j", state="running", folder=folder,
                   estimate_s=None, resume=False, pid=None, code=None, message="", created=0.0, started=0.0,
                   finished=None)
    return job


def test_the_phase_is_the_events_field_whatever_the_message_says(tmp_path: Path) -> None:
    events = [{"type": "data", "train": 9, "val": 3}]
    steps = [({"type": "status", "phase": "loading", "message": "reading weights"}, "loading"),
             ({"type": "start", "phase": "training", "total_steps": 3, "time": 1.0}, "training"),
             ({"type": "log", "step": 1, "total_steps": 3, "time": 2.0, "loss": 2.5}, "training"),
             ({"type": "status", "message": "saving is near"}, "training"),  # wording alone changes nothing
             ({"type": "status", "phase": "saving", "message": "writing files"}, "saving"),
             ({"type": "done", "out": "x"}, "done"),
             ({"type": "status", "phase": "scoring", "message": "judging the voice"}, "scoring")]
    for i, (event, phase) in enumerate(steps):
        events.append(event)
        assert job_with(events, tmp_path / str(i)).progress().phase == phase, event
