"""Run states from the run directory and the scheduler. Imports no torch.

Sources, cheapest first: the run directory (ledger, outcome, metrics tail, heartbeats,
checkpoints), then `squeue` for all live job ids in one call, then `sacct` for jobs squeue no
longer knows, and only while sacct works (one failure turns it off for this call, silently
but for one hint). Local jobs are checked through their controller process.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nepa import rundir
from nepactl import runs

# States of a run whose job may still do work (nothing new is submitted for it).
ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "STALLED")
STALE_HEARTBEAT_S = 600.0  # a rank silent this long while the scheduler says RUNNING: STALLED
SCHEDULER_TIMEOUT_S = 10.0


@dataclass
class RunRow:
    run: str
    task: str
    size: str
    geometry: str
    state: str
    step: int
    total: int | None
    percent: float | None
    eta_s: float | None
    loss: float | None
    checkpoint_age_s: float | None
    preemptions: int
    timeouts: int
    job_id: str
    evals: str
    problem: str = ""  # why the run could not be read (its state is then UNREADABLE)
    reason: str = ""  # why it FAILED: the one-line error its job recorded

    def as_dict(self) -> dict:
        return asdict(self)


class Scheduler:
    """squeue/sacct queries, batched and bounded; remembers a failing sacct."""

    def __init__(self) -> None:
        self.has_squeue = shutil.which("squeue") is not None
        self.sacct_ok = shutil.which("sacct") is not None
        self.notes: list[str] = []

    def _run(self, args: list[str]) -> str | None:
        try:
            done = subprocess.run(args, capture_output=True, text=True, timeout=SCHEDULER_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout if done.returncode == 0 else None

    def squeue(self, job_ids: list[str]) -> dict[str, str]:
        if not self.has_squeue or not job_ids:
            return {}
        # -r: one line per array task (pending tasks are otherwise folded into 123_[0-3])
        out = self._run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(job_ids)])
        if out is None:  # squeue errors when none of the ids is known any more
            return {}
        states = {}
        for line in out.splitlines():
            if " " in line:
                job, state = line.split(maxsplit=1)
                states.update(dict.fromkeys(array_tasks(job), state.strip()))
        return states

    def sacct(self, job_ids: list[str]) -> dict[str, str]:
        if not self.sacct_ok or not job_ids:
            return {}
        out = self._run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)])
        if out is None:
            self.sacct_ok = False
            self.notes.append("sacct unavailable: states of finished jobs come from the run directory")
            return {}
        states = {}
        for line in out.splitlines():
            job, _, state = line.partition("|")
            states.update(dict.fromkeys(array_tasks(job.strip()), state.split()[0] if state else ""))
        return states


def array_tasks(job: str) -> list[str]:
    """'123_[0-2,5%2]' -> ['123_0', '123_1', '123_2', '123_5'] (sacct folds tasks that never ran)."""
    head, sep, rest = job.partition("_[")
    if not sep:
        return [job]
    tasks = []
    for part in rest.rstrip("]").split("%")[0].split(","):
        low, _, high = part.partition("-")
        if low.isdigit():
            tasks += [f"{head}_{i}" for i in range(int(low), int(high or low) + 1)]
    return tasks


def process_identity(pid: int) -> dict[str, Any] | None:
    """What tells a local job's controller from a later process given the same (reused) pid:
    its start time and command line, recorded with the submission. None when it is gone."""
    import psutil

    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            return {"started": proc.create_time(), "cmdline": proc.cmdline()}
    except (psutil.Error, OSError):
        return None


def local_process(job_id: str, submit: dict[str, Any] | None = None) -> Any:
    """The live controller of a local job (a psutil.Process), or None when it is gone or its pid
    now belongs to another process. Local executor job ids are the controller's pid.

    `submit` is the job's ledger record: its `process` identity must match. Records written
    before identities were kept fall back to a weaker check: a submitit command line.
    """
    import psutil

    if not job_id.isdigit():
        return None
    now = process_identity(int(job_id))
    if now is None:
        return None
    recorded = (submit or {}).get("process")
    if isinstance(recorded, dict):
        same = (abs(now["started"] - float(recorded.get("started", -1))) < 0.01
                and now["cmdline"] == recorded.get("cmdline"))
    else:
        same = any("submitit" in part for part in now["cmdline"])
    try:
        return psutil.Process(int(job_id)) if same else None
    except psutil.Error:
        return None


def _local_alive(job_id: str, submit: dict[str, Any] | None = None) -> bool:
    return local_process(job_id, submit) is not None


def _eta(run_dir: Path, step: int, total: int | None) -> float | None:
    if total is None or step >= total:
        return None
    recent = rundir.tail_jsonl(run_dir / rundir.METRICS, 20)
    if len(recent) < 2 or recent[-1]["step"] <= recent[0]["step"]:
        return None
    rate = (recent[-1]["step"] - recent[0]["step"]) / max(1e-9, recent[-1]["time"] - recent[0]["time"])
    return (total - step) / rate if rate > 0 else None


def _checkpoint_age(run_dir: Path) -> float | None:
    pointer = run_dir / "checkpoints" / "latest"
    try:
        return time.time() - pointer.stat().st_mtime
    except OSError:
        return None


def _eval_cells(run_dir: Path) -> str:
    """Per task: evaluations done / launched, and the progress of running ones (no scheduler query)."""
    directory = run_dir / "evals"
    if not directory.is_dir():
        return ""
    tasks: dict[str, list[str]] = {}
    for eval_dir in runs.list_runs(directory):
        task = (runs.read_json(eval_dir / runs.RUN_INFO) or {}).get("task", eval_dir.name)
        if (eval_dir / "result.json").is_file():
            tasks.setdefault(task, []).append("done")
            continue
        outcome = runs.read_json(eval_dir / "outcome.json") or {}
        progress = runs.read_json(eval_dir / "progress.json") or {}
        if outcome.get("status") == "FAILED":
            tasks.setdefault(task, []).append("failed" + (f": {_short(failure_reason(outcome, []))}"
                                                          if failure_reason(outcome, []) else ""))
        elif progress.get("total"):
            tasks.setdefault(task, []).append(f"{100 * progress.get('step', 0) / progress['total']:.0f}%")
        else:
            tasks.setdefault(task, []).append("queued")
    cells = []
    for task, states in tasks.items():
        done = states.count("done")
        rest = [s for s in states if s != "done"]
        cells.append(f"{task} {done}/{len(states)}" + (f" ({', '.join(rest)})" if rest else ""))
    return ", ".join(cells)


def failure_reason(outcome: dict | None, ledger: list[dict]) -> str:
    """The one-line error a failed job recorded (outcome.json, else its `end` ledger event)."""
    if outcome and outcome.get("status") == "FAILED":
        return str(outcome.get("reason") or outcome.get("error") or "")
    ends = [e for e in ledger if e.get("event") == "end" and e.get("status") == "FAILED"]
    return str(ends[-1].get("reason") or "") if ends else ""


def _short(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def run_state(ledger: list[dict], outcome: dict | None, scheduler_state: str | None,
              executor: str, alive: bool, heartbeat_age: float | None) -> str:
    """One of PENDING, RUNNING, REQUEUED, STALLED, DIVERGED, FAILED, CANCELLED, COMPLETED."""
    events = [e["event"] for e in ledger]
    last_submit = max((i for i, e in enumerate(events) if e == "submit"), default=-1)
    if "cancel" in events[last_submit + 1:]:  # final until a new submit (nepactl resume)
        return "CANCELLED"
    if scheduler_state:
        state = scheduler_state.upper()
        if state in ("PENDING", "CONFIGURING", "REQUEUE_HOLD", "REQUEUE_FED", "REQUEUED"):
            started = outcome is not None or sum(e == "submit" for e in events) > 1
            return "REQUEUED" if started or state.startswith("REQUEUE") else "PENDING"
        if state in ("RUNNING", "COMPLETING", "SUSPENDED"):
            if heartbeat_age is not None and heartbeat_age > STALE_HEARTBEAT_S:
                return "STALLED"
            return "RUNNING"
        if state.startswith("CANCELLED"):
            return "CANCELLED"
        if state in ("FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"):
            return "DIVERGED" if outcome and outcome.get("status") == "DIVERGED" else "FAILED"
    if executor == "local" and alive:
        if heartbeat_age is not None and heartbeat_age > STALE_HEARTBEAT_S:
            return "STALLED"
        return "RUNNING"
    if outcome is not None:
        status = outcome.get("status")
        if status in ("COMPLETED", "DIVERGED"):
            return status
        return "REQUEUED" if scheduler_state else "FAILED"
    if scheduler_state is None and executor == "slurm" and last_submit >= 0:
        return "FAILED"
    return "FAILED" if last_submit >= 0 else "PENDING"


def collect(root: Path, only: list[str] | None = None) -> tuple[list[RunRow], list[str]]:
    """Status rows of every run (or the named ones), with notes for the user."""
    listed = [runs.find_run(root, n) for n in only] if only else runs.list_runs(root)
    problems = {d: reason for d in listed if (reason := runs.unreadable(d))}
    dirs = [d for d in listed if d not in problems]
    infos = {d: runs.read_json(d / runs.RUN_INFO) or {} for d in dirs}
    ledgers = {d: runs.read_ledger(d) for d in dirs}
    job_ids = {d: runs.own_job_id(ledgers[d]) for d in dirs}
    scheduler = Scheduler()
    slurm_ids = [job_ids[d] for d in dirs if infos[d].get("executor") == "slurm" and job_ids[d]]
    states = scheduler.squeue(slurm_ids)
    missing = [j for j in slurm_ids if j not in states]
    states.update(scheduler.sacct(missing))
    rows = {}
    now = time.time()
    for d in dirs:
        try:
            rows[d] = _row(d, infos[d], ledgers[d], job_ids[d], states, now)
        except OSError as exc:  # lost between the check and the read
            problems[d] = f"{exc.strerror or type(exc).__name__}: {exc.filename or d}"
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # edited by hand, say
            problems[d] = f"malformed content ({type(exc).__name__}: {exc})"
    notes = list(scheduler.notes)
    for d, reason in problems.items():  # listed, never dropped: one bad run hides no other
        rows[d] = RunRow(run=d.name, task="?", size="?", geometry="?", state="UNREADABLE", step=0,
                         total=None, percent=None, eta_s=None, loss=None, checkpoint_age_s=None,
                         preemptions=0, timeouts=0, job_id="", evals="", problem=reason)
        notes.append(f"{d.name} is unreadable ({reason}); check its owner and mode, or the disk")
    return [rows[d] for d in listed], notes


def _row(d: Path, info: dict, ledger: list[dict], job_id: str, states: dict[str, str], now: float) -> RunRow:
    """The status row of one readable run."""
    outcome = runs.read_json(d / "outcome.json")
    last = rundir.last_jsonl(d / rundir.METRICS) or {}
    finished = (outcome or {}).get("status") in ("COMPLETED", "DIVERGED")
    beats = [] if finished else [b.get("time", 0) for b in runs.iter_heartbeats(d)]
    heartbeat_age = now - min(beats) if beats else None
    executor = info.get("executor", "local")
    alive = executor == "local" and not finished and _local_alive(job_id, runs.submit_record(ledger, job_id))
    state = run_state(ledger, outcome, states.get(job_id), executor, alive, heartbeat_age)
    step = int(last.get("step", 0))
    total = info.get("max_steps") or (outcome or {}).get("total_steps")
    return RunRow(
        run=d.name, task=info.get("task", "?"), size=info.get("size", "?"),
        geometry=f"{info.get('nodes', 1)}x{info.get('gpus_per_node') or info.get('procs_per_node', 1)}",
        state=state, step=step, total=total,
        percent=100.0 * step / total if total else None,
        eta_s=_eta(d, step, total) if state == "RUNNING" else None,
        loss=last.get("loss"), checkpoint_age_s=_checkpoint_age(d),
        preemptions=sum(e.get("cause") == "preemption" for e in ledger if e["event"] == "requeue"),
        timeouts=sum(e.get("cause") == "timeout" for e in ledger if e["event"] == "requeue"),
        job_id=job_id, evals=_eval_cells(d),
        reason=failure_reason(outcome, ledger) if state == "FAILED" else "")


def active_jobs(run_dir: Path) -> list[tuple[Path, str, str]]:
    """(directory, job id, executor) of the jobs of a run that may still run: its own and its
    evaluations' (a pending chained evaluation counts)."""
    found = []
    for parent in (run_dir.parent, run_dir / "evals"):
        names = [run_dir.name] if parent == run_dir.parent else [p.name for p in runs.list_runs(parent)]
        if not names:
            continue
        for row in collect(parent, names)[0]:
            if row.state in ACTIVE_STATES and row.job_id:
                executor = (runs.read_json(parent / row.run / runs.RUN_INFO) or {}).get("executor", "local")
                found.append((parent / row.run, row.job_id, executor))
    return found
