"""`nepactl status` and `nepactl runs`. Imports no torch."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated

import typer

from nepactl import console
from nepactl.commands.options import Json, RunsRoot
from nepactl.errors import handled

_COLORS = {"RUNNING": "green", "COMPLETED": "bold green", "PENDING": "yellow", "REQUEUED": "yellow",
           "STALLED": "bold red", "FAILED": "red", "DIVERGED": "bold magenta", "CANCELLED": "dim"}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _table(rows):
    from rich.table import Table

    table = Table(title="NEPA runs")
    for column in ("run", "task", "size", "nodes x gpus", "state", "step", "ETA", "loss",
                   "ckpt age", "preempt/timeout", "job", "evals"):
        table.add_column(column, justify="right" if column in ("step", "loss") else "left")
    for r in rows:
        progress = f"{r.step}/{r.total} ({r.percent:.0f}%)" if r.total else str(r.step)
        color = _COLORS.get(r.state, "white")
        table.add_row(r.run, r.task, r.size, r.geometry, f"[{color}]{r.state}[/{color}]", progress,
                      _duration(r.eta_s), f"{r.loss:.4f}" if r.loss is not None else "-",
                      _duration(r.checkpoint_age_s), f"{r.preemptions}/{r.timeouts}", r.job_id,
                      r.evals or "-")
    return table


@handled
def status(run: Annotated[list[str] | None, typer.Argument(help="Run names (default: all).")] = None,
           json_out: Json = False,
           watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh every 5 s.")] = False,
           runs_root: RunsRoot = None) -> None:
    """Runs and their state: progress, ETA, loss, checkpoint age, requeues, evaluations.

    Example: nepactl status --watch
    """
    from nepactl.runs import runs_root as resolve_root
    from nepactl.status import collect

    root = resolve_root(runs_root)
    if json_out:
        rows, _ = collect(root, run)
        sys.stdout.write(json.dumps([r.as_dict() for r in rows], indent=1) + "\n")  # machine mode
        return
    if not watch:
        rows, notes = collect(root, run)
        console.out.print(_table(rows))
        for r in rows:
            if r.reason:
                console.out.print(f"{r.run} failed: {r.reason}", markup=False)
        for note in notes:
            console.hint(note)
        return
    from rich.live import Live

    with Live(console=console.out, auto_refresh=False) as live:
        while True:
            rows, _ = collect(root, run)
            live.update(_table(rows), refresh=True)
            time.sleep(5)


@handled
def runs(runs_root: RunsRoot = None, json_out: Json = False) -> None:
    """List run directories (name, task, size, created).

    Example: nepactl runs --json
    """
    from nepactl.runs import RUN_INFO, list_runs, read_json
    from nepactl.runs import runs_root as resolve_root

    root = resolve_root(runs_root)
    rows = []
    for path in list_runs(root):
        info = read_json(path / RUN_INFO) or {}
        rows.append({"run": path.name, "task": info.get("task", "?"), "size": info.get("size", "?"),
                     "executor": info.get("executor", "?"),
                     "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(info.get("created", 0)))})
    if json_out:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
    elif rows:
        console.render_table(f"runs in {root}", rows)
    else:
        console.hint(f"no runs in {root}")
