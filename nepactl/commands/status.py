"""`nepactl status` and `nepactl runs`. Imports no torch."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated

import typer

from nepactl import console
from nepactl.commands.options import Json, OutputFormat, RunsRoot, chosen_format
from nepactl.errors import handled
from nepactl.output import Format

_COLORS = {"RUNNING": "green", "COMPLETED": "bold green", "PENDING": "yellow", "REQUEUED": "yellow",
           "STALLED": "bold red", "FAILED": "red", "DIVERGED": "bold magenta", "CANCELLED": "dim",
           "UNREADABLE": "bold red"}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _columns():
    """The status table: progress, ETA and ages made readable; JSON/CSV keep the raw fields."""
    from nepactl.output import Column

    def progress(r):
        return f"{r.step}/{r.total} ({r.percent:.0f}%)" if r.total else str(r.step)

    return (
        Column("run"), Column("task"), Column("size"), Column("geometry", "nodes x gpus"),
        Column("state", color=lambda r: _COLORS.get(r.state, "white")),
        Column("step", cell=progress, right=True), Column("eta_s", "ETA", cell=lambda r: _duration(r.eta_s)),
        Column("loss", cell=lambda r: f"{r.loss:.4f}" if r.loss is not None else "-", right=True),
        Column("checkpoint_age_s", "ckpt age", cell=lambda r: _duration(r.checkpoint_age_s)),
        Column("preemptions", "preempt/timeout", cell=lambda r: f"{r.preemptions}/{r.timeouts}"),
        Column("job_id", "job"), Column("evals", cell=lambda r: r.evals or "-"),
    )


TITLE = "NEPA runs"


@handled
def status(run: Annotated[list[str] | None, typer.Argument(help="Run names (default: all).")] = None,
           output: OutputFormat = Format.table, json_out: Json = False,
           watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh every 5 s (table only).")] = False,
           runs_root: RunsRoot = None) -> None:
    """Runs and their state: progress, ETA, loss, checkpoint age, requeues, evaluations.

    Example: nepactl status --watch
    """
    from nepactl import output as out
    from nepactl.runs import runs_root as resolve_root
    from nepactl.status import RunRow, collect

    root = resolve_root(runs_root)
    fmt = chosen_format(output, json_out)
    if fmt is not Format.table or not watch:
        rows, notes = collect(root, run)
        out.emit(rows, fmt, columns=_columns(), row_type=RunRow, title=TITLE)
        for r in rows if fmt is Format.table else ():
            if r.reason:
                console.out.print(f"{r.run} failed: {r.reason}", markup=False)
        for note in notes if fmt is Format.table else ():
            console.hint(note)
        return
    from rich.live import Live

    with Live(console=console.out, auto_refresh=False) as live:
        while True:
            rows, _ = collect(root, run)
            live.update(out.rich_table(rows, _columns(), TITLE), refresh=True)
            time.sleep(5)


@dataclass
class RunListing:
    """One line of `nepactl runs`."""

    run: str
    task: str
    size: str
    executor: str
    created: str


@handled
def runs(runs_root: RunsRoot = None, output: OutputFormat = Format.table, json_out: Json = False) -> None:
    """List run directories (name, task, size, created).

    Example: nepactl runs --format csv
    """
    from nepactl import output as out
    from nepactl.runs import RUN_INFO, list_runs, read_json
    from nepactl.runs import runs_root as resolve_root

    root = resolve_root(runs_root)
    rows = []
    for path in list_runs(root):
        info = read_json(path / RUN_INFO) or {}
        rows.append(RunListing(
            run=path.name, task=info.get("task", "?"), size=info.get("size", "?"),
            executor=info.get("executor", "?"),
            created=time.strftime("%Y-%m-%d %H:%M", time.localtime(info.get("created", 0)))))
    fmt = chosen_format(output, json_out)
    if fmt is Format.table and not rows:
        console.hint(f"no runs in {root}")
        return
    out.emit(rows, fmt, row_type=RunListing, title=f"runs in {root}")
