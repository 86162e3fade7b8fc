"""`nepactl logs`, `nepactl cancel`, `nepactl resume`."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated

import typer

from nepactl import console
from nepactl.commands.options import RunsRoot
from nepactl.errors import CliError, handled

RunName = Annotated[str, typer.Argument(help="Run name (see nepactl runs).")]
ATTEMPT_MARKER = re.compile(r"^=== nepactl attempt start .*===$", re.M)


def split_attempts(text: str) -> list[str]:
    """Per-attempt chunks of a log that requeues append to."""
    starts = [m.start() for m in ATTEMPT_MARKER.finditer(text)]
    if not starts:
        return [text] if text else []
    return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)])]


def _log_files(run_dir: Path, rank: int) -> list[Path]:
    folder = run_dir / "submitit"
    files = sorted(folder.glob(f"*_{rank}_log.err")) + sorted(folder.glob(f"*_{rank}_log.out"))
    return sorted(files, key=lambda p: p.stat().st_mtime)


@handled
def logs(run: RunName,
         attempt: Annotated[int | None, typer.Option("--attempt", "-a", min=1, help="Only attempt K.")] = None,
         rank: Annotated[int, typer.Option("--rank", "-r", min=0, help="Process rank.")] = 0,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
         runs_root: RunsRoot = None) -> None:
    """Print the logs of a run, attempt by attempt (requeues append to the same files).

    Example: nepactl logs my-run --attempt 2 --rank 1
    """
    from nepactl.runs import find_run
    from nepactl.runs import runs_root as resolve_root

    run_dir = find_run(resolve_root(runs_root), run)
    files = _log_files(run_dir, rank)
    if not files:
        raise CliError(f"no logs for rank {rank} of '{run}' yet (in {run_dir / 'submitit'}); "
                       "the job may still be pending: nepactl status")
    for path in files:
        chunks = split_attempts(path.read_text(errors="replace"))
        if attempt is not None:
            if attempt > len(chunks):
                raise CliError(f"{path.name} has {len(chunks)} attempt(s), not {attempt}")
            chunks = [chunks[attempt - 1]]
        console.err.print(f"[dim]== {path.name}[/dim]")
        for chunk in chunks:
            console.out.print(chunk, markup=False, end="")
    if follow:
        sizes = {p: p.stat().st_size for p in files}
        while True:
            time.sleep(1)
            for p in _log_files(run_dir, rank):
                size = p.stat().st_size
                if size > sizes.get(p, 0):
                    with open(p, errors="replace") as f:
                        f.seek(sizes.get(p, 0))
                        console.out.print(f.read(), markup=False, end="")
                    sizes[p] = size


@handled
def cancel(run: RunName, runs_root: RunsRoot = None) -> None:
    """Cancel a run's job and its evaluation jobs that are still active (pending ones included).

    A finished run and its finished evaluations are left as they are.
    Example: nepactl cancel my-run
    """
    from nepactl.runs import append_ledger, find_run
    from nepactl.runs import runs_root as resolve_root
    from nepactl.status import active_jobs
    from nepactl.submit import cancel_jobs

    run_dir = find_run(resolve_root(runs_root), run)
    targets = active_jobs(run_dir)
    if not targets:
        console.hint(f"'{run}' has no active job (nor have its evaluations): nothing cancelled")
        return
    # Recorded first, in the directory of each job: a job saving on scancel's SIGTERM reads it
    # and does not requeue itself; a finished run's own state is left alone.
    for directory, job, _ in targets:
        append_ledger(directory, "cancel", job_ids=[job])
    cancelled = cancel_jobs(run_dir, [(job, executor) for _, job, executor in targets])
    console.out.print(f"cancelled {run}: jobs {', '.join(cancelled)}")


@handled
def resume(run: RunName,
           max_preemptions: Annotated[int | None, typer.Option(
               "--max-preemptions", min=0, help="New cluster.max_preemptions for this run.")] = None,
           max_timeouts: Annotated[int | None, typer.Option(
               "--max-timeouts", min=0, help="New cluster.max_timeouts for this run.")] = None,
           runs_root: RunsRoot = None) -> None:
    """Resubmit a stopped, failed or cancelled run; it continues from its newest valid checkpoint.

    Its requeue budgets (preemptions, time limits) start afresh; the options also raise them.
    Example: nepactl resume my-run --max-preemptions 50
    """
    from nepactl.launch import resume_run
    from nepactl.runs import find_run
    from nepactl.runs import runs_root as resolve_root

    budgets = {k: v for k, v in (("max_preemptions", max_preemptions), ("max_timeouts", max_timeouts))
               if v is not None}
    submission, moved = resume_run(find_run(resolve_root(runs_root), run), budgets=budgets)
    console.out.print(f"{run}\t{submission.executor} job {submission.job_id}")
    if moved:
        console.hint(f"final evaluations now wait for job {submission.job_id}: jobs {', '.join(moved)}")
