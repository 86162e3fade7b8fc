"""Follow a local job to its end with a rich progress bar on stderr (demo, ablate)."""

from __future__ import annotations

import time
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from nepa import rundir
from nepactl import console, runs


def follow_run(run_dir: Path, total: int, label: str = "pretraining") -> dict | None:
    """Progress over metrics.jsonl until the run's outcome is written; None if the job died."""
    from nepactl.status import _local_alive

    ledger = runs.read_ledger(run_dir)
    job_id = runs.own_job_id(ledger)
    submit = runs.submit_record(ledger, job_id)
    columns = (TextColumn(label), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console.err) as progress:
        task = progress.add_task("pretrain", total=total, loss="-")
        while True:
            last = rundir.last_jsonl(run_dir / rundir.METRICS) or {}
            if last:
                progress.update(task, completed=last["step"], loss=f"{last['loss']:.4f}")
            outcome = runs.read_json(run_dir / "outcome.json")
            if outcome and outcome["status"] != "STOPPED" and outcome["step"] >= last.get("step", 0):
                return outcome
            if not _local_alive(job_id, submit):
                time.sleep(1.0)  # the outcome file may land just after the process ends
                outcome = runs.read_json(run_dir / "outcome.json")
                return outcome if outcome and outcome["status"] != "STOPPED" else None
            time.sleep(0.5)


def follow_eval(eval_dir: Path, job_id: str, label: str) -> dict:
    """Progress of an evaluation job until it completes or fails; its outcome record."""
    from nepactl.status import _local_alive

    columns = (TextColumn(f"{label:<28}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[note]}"), TimeElapsedColumn())
    with Progress(*columns, console=console.err) as progress:
        bar = progress.add_task(label, total=None, note="")
        while True:
            record = runs.read_json(eval_dir / "progress.json") or {}
            if record.get("total"):
                note = f"loss {record['loss']:.3f}" if isinstance(record.get("loss"), float) else ""
                progress.update(bar, completed=record.get("step", 0), total=record["total"], note=note)
            outcome = runs.read_json(eval_dir / "outcome.json") or {}
            if outcome.get("status") in ("COMPLETED", "FAILED"):
                return outcome
            if not _local_alive(job_id):
                time.sleep(1.0)
                return runs.read_json(eval_dir / "outcome.json") or {}
            time.sleep(0.5)
