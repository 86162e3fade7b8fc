"""Small job callables for the SLURM cluster tests.

The tests pickle these by value (``cloudpickle.register_pickle_by_value``), so the job
process needs no import path to the test tree. Progress is written to JSON-lines files the
test polls; nothing here imports torch, so a job is ready for signals within a second.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import submitit


def add(a: int, b: int) -> dict:
    """Returns the sum and where it ran (the job id and SLURM's node name)."""
    return {"sum": a + b, "job_id": submitit.JobEnvironment().job_id,
            "node": os.environ.get("SLURMD_NODENAME")}


def _record(path: Path, **event) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({"t": time.time(), "pid": os.getpid(), **event}) + "\n")


def read_events(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class Counter(submitit.helpers.Checkpointable):
    """Counts to ``steps``, one step per ``step_s``; a requeue resumes from the saved step.

    Events: ``{"event": "start", "i": first step, "restart": SLURM_RESTART_COUNT}`` and
    ``{"event": "step", "i": n}``.
    """

    def __init__(self, events: Path, steps: int, step_s: float):
        self.events = Path(events)
        self.steps = steps
        self.step_s = step_s
        self.i = 0
        self.starts: list[int] = []

    def __call__(self) -> dict:
        restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        self.starts.append(self.i)
        _record(self.events, event="start", i=self.i, restart=restart)
        while self.i < self.steps:
            time.sleep(self.step_s)
            self.i += 1
            _record(self.events, event="step", i=self.i)
        return {"i": self.i, "starts": self.starts, "restart": restart}


def record_starts(events: Path, first_run_s: float, rerun_s: float) -> dict:
    """Idempotent work that records each start and each SIGTERM, and carries on after it.

    submitit ignores SIGTERM; so does this job (it only notes the signal), so a preempted run
    ends with SLURM's SIGKILL after the grace time and runs again from scratch, for
    ``rerun_s`` instead of ``first_run_s``.
    """
    events = Path(events)
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, frame: _record(events, event="sigterm"))
    try:
        _record(events, event="start", restart=restart)
        deadline = time.monotonic() + (rerun_s if restart else first_run_s)
        while time.monotonic() < deadline:
            time.sleep(0.1)
        _record(events, event="done", restart=restart)
    finally:
        signal.signal(signal.SIGTERM, previous)
    starts = [e["restart"] for e in read_events(events) if e["event"] == "start"]
    return {"starts": starts, "restart": restart}
