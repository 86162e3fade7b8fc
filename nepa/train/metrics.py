"""metrics.jsonl (each step exactly once, also across resumes), heartbeats, TensorBoard."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from nepa.rundir import METRICS, atomic_write, read_jsonl


class MetricsLog:
    """Append-only per-step log; on resume, lines past the resumed step are dropped first."""

    def __init__(self, run_dir: str | Path, *, resume_step: int, tensorboard: bool = False):
        self.path = Path(run_dir) / METRICS
        self._truncate_after(resume_step)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # One directory per run: requeues continue the same TensorBoard run.
            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step + 1)

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= step]  # torn lines go too
        atomic_write(self.path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in kept).encode()))

    def rewind(self, step: int) -> None:
        """Forget records after `step` (a rollback to an earlier checkpoint)."""
        self._file.close()
        self._truncate_after(step)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"train/{key}", value, record["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(run_dir) / METRICS)


class Heartbeat:
    """`RUN/heartbeats/rank{R}.json`, refreshed at most every `interval_s`: a hung rank goes stale."""

    def __init__(self, run_dir: str | Path, rank: int, interval_s: float = 5.0):
        self.path = Path(run_dir) / "heartbeats" / f"rank{rank}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.interval_s = interval_s
        self._last = 0.0
        self._static = {"rank": rank, "pid": os.getpid(), "host": socket.gethostname()}

    def beat(self, step: int, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self._static, "step": step, "time": now}))
        os.replace(tmp, self.path)
