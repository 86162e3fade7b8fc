"""The preemption protocol every job follows (`PreemptibleJob`); jobs implement only their work.

submitit's own handler checkpoints on rank 0 alone, inside the signal handler, and ignores
SIGTERM. Instead, our handlers (installed after submitit's) only set the work's stop flag;
at the next step boundary all ranks agree, save together, and then:
- warning signal (USR2, time limit or manual): rank 0 hands over to submitit's requeue logic
  (it classifies timeout vs preemption and counts timeouts down), which requeues the job;
- SIGTERM (SLURM preemption with PreemptMode=REQUEUE): the same self-requeue, at once (SLURM
  would requeue only a job still running when GraceTime ends, and mark one that exits
  COMPLETED).
The state lives on disk (the run directory), so the pickled job is just that directory.
Every ending, a failure included, leaves an `end` record in the ledger.
"""

from __future__ import annotations

import abc
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from nepactl import runs

log = logging.getLogger("nepactl.preempt")
WARNING_SIGNAL = signal.SIGUSR2  # what submitit asks SLURM for (--signal=USR2@delay)
EXIT_TOO_MANY_REQUEUES = 4


def _start_attempt(run_dir: Path) -> submitit.JobEnvironment:
    """Logging, torch.distributed variables, the attempt marker and (rank 0) its record."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False, overwrite=True)
    marker = (f"=== nepactl attempt start (job {env.job_id}, rank {env.global_rank}, "
              f"pid {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S')}) ===")
    print(marker, flush=True)
    print(marker, file=sys.stderr, flush=True)
    if env.global_rank == 0:
        capture_attempt(run_dir, str(env.job_id))
    return env


def _install_stop_handlers(request_stop) -> list[int]:
    """Our handlers replace submitit's: they only ask the work to stop at its next step."""
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        request_stop(signal.Signals(signum).name)

    signal.signal(WARNING_SIGNAL, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return received


def _after_stop(run_dir: Path, env: Any, received: list[int], submitit_handler: Any, *,
                step: int, reason: str | None, save_seconds: float | None) -> None:
    """Everything is saved: record why, then requeue (rank 0) unless cancelled or over the limit."""
    cause = classify_stop(received[0] if received else None, submitit_handler)
    if env.global_rank == 0 and was_cancelled(run_dir):
        # scancel sends SIGTERM too: saved, but a cancelled job must not come back.
        runs.append_ledger(run_dir, "end", job_id=str(env.job_id), status="CANCELLED",
                           step=step, exit_code=0)
        log.info("cancelled: saved at step %d, not requeued", step)
        return
    if env.global_rank == 0:
        runs.append_ledger(run_dir, "requeue", job_id=str(env.job_id), cause=cause,
                           step=step, save_seconds=save_seconds)
        over = requeue_limit_reached(run_dir, cause)
        if over:
            runs.append_ledger(run_dir, "end", job_id=str(env.job_id), status="FAILED",
                               step=step, exit_code=EXIT_TOO_MANY_REQUEUES, reason=over)
            log.error("not requeued: %s (the checkpoint is kept; nepactl resume continues)", over)
            sys.exit(EXIT_TOO_MANY_REQUEUES)
        if submitit_handler is None:
            raise RuntimeError("submitit's signal handler is missing: cannot requeue")
        # Both paths requeue now: a preempted job that just exits would be COMPLETED for
        # SLURM (it requeues only jobs still running at the end of GraceTime). submitit
        # pickles our stateless job, requeues (scontrol requeue / local restart) and exits.
        submitit_handler.checkpoint_and_try_requeue(WARNING_SIGNAL)
    log.info("stopped at step %d (%s, %s); exiting for the requeue", step, reason, cause)


@dataclass(frozen=True)
class Ending:
    """How the work ended: STOPPED (saved, to be requeued) or a final status."""

    status: str  # "STOPPED", "COMPLETED", "DIVERGED", "FAILED", ...
    step: int
    exit_code: int = 0
    reason: str | None = None
    record: dict[str, Any] = field(default_factory=dict)  # what the job returns (submitit's result)
    save_seconds: float | None = None


class PreemptibleJob(submitit.helpers.Checkpointable, abc.ABC):
    """A job over one directory: attempt records, stop signals, collective save, requeue, `end`.

    Subclasses implement `start` (build the work, return its stop-request function) and
    `work` (run it, return an Ending), and may record their own outcome in `finished`.
    """

    def __init__(self, directory: str | Path):
        self.directory = str(directory)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # The work saved everything to the directory already: requeue the same job.
        return submitit.helpers.DelayedSubmission(type(self)(self.directory))

    @abc.abstractmethod
    def start(self, directory: Path, env: Any) -> Callable[[str], None]:
        """Build the work; return its stop-request function."""

    @abc.abstractmethod
    def work(self) -> Ending:
        """Run the work to a stop or an end."""

    def finished(self, directory: Path, env: Any, ending: Ending) -> None:
        """Rank 0, after a final (not STOPPED) ending, before its `end` record."""

    def __call__(self) -> dict[str, Any]:
        directory = Path(self.directory)
        env = _start_attempt(directory)
        submitit_handler = _submitit_handler()
        try:
            check_device(directory)
            received = _install_stop_handlers(self.start(directory, env))
            ending = self.work()
        except BaseException as exc:
            if not isinstance(exc, SystemExit) and env.global_rank == 0:
                _record_failure(directory, env, exc)
            raise
        # Saved or finished: a warning signal or SIGTERM arriving from here on has nothing
        # left to stop. Ignore them (SIG_IGN survives interpreter shutdown, which resets
        # Python handlers to the default action: a late USR2 would then kill the finished
        # process and SLURM would record the completed run as FAILED).
        _ignore_stop_signals()
        if ending.status == "STOPPED":
            _after_stop(directory, env, received, submitit_handler, step=ending.step,
                        reason=ending.reason, save_seconds=ending.save_seconds)
            return ending.record
        if env.global_rank == 0:
            self.finished(directory, env, ending)
            runs.append_ledger(directory, "end", job_id=str(env.job_id), status=ending.status,
                               step=ending.step, exit_code=ending.exit_code,
                               **({"reason": ending.reason} if ending.reason else {}))
        if ending.exit_code:
            log.error("ended %s at step %d", ending.status, ending.step)
            sys.exit(ending.exit_code)
        return ending.record


def check_device(directory: Path) -> None:
    """Fail at once, in one line, when the job was given GPUs it cannot use (a wrong module, a
    CPU-only torch, a container without --nv); `cluster.device: cpu` hides them on purpose."""
    cluster = runs.read_yaml_mapping(directory / "cluster.yaml")
    if cluster.get("device") == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch initialises CUDA
        return
    given = int(os.environ.get("SLURM_GPUS_ON_NODE") or 0) or int(cluster.get("gpus_per_node") or 0)
    if not given:
        return
    from nepactl.doctor import cuda_problem

    problem = cuda_problem(given)
    if problem is not None:
        raise RuntimeError(problem)


def _record_failure(directory: Path, env: Any, exc: BaseException) -> None:
    """outcome.json and the ledger say why the job failed (one line, for status and results)."""
    reason = f"{type(exc).__name__}: {exc}".strip()[:500]
    try:
        runs.write_json(directory / "outcome.json", {"status": "FAILED", "error": str(exc)[:2000],
                                                     "reason": reason})
        runs.append_ledger(directory, "end", job_id=str(env.job_id), status="FAILED", exit_code=1,
                           reason=reason)
    except OSError:  # the directory itself is what failed: the log keeps the traceback
        log.exception("could not record the failure in %s", directory)


def was_cancelled(run_dir: Path) -> bool:
    """Cancelled by `nepactl cancel` (ledger, written before scancel) or by a plain scancel."""
    events = [e["event"] for e in runs.read_ledger(run_dir)]
    last_submit = max((i for i, e in enumerate(events) if e == "submit"), default=-1)
    if "cancel" in events[last_submit + 1:]:
        return True
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return False
    try:
        out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    # A plain scancel shows the running job as COMPLETING (not CANCELLED) while it handles
    # SIGTERM; a preempted one stays RUNNING through its GraceTime, with a PreemptTime.
    return "JobState=CANCELLED" in out or ("JobState=COMPLETING" in out and "PreemptTime=None" in out)


def requeue_limit_reached(run_dir: Path, cause: str) -> str | None:
    """A reason when this run was requeued for `cause` more often than its profile allows.

    The budget counts the requeues since the job was last submitted: `nepactl resume` (which
    may also raise the limits) starts a fresh one.
    """
    from nepa.config import load_yaml
    from nepactl.cluster import ClusterConfig

    path = run_dir / "cluster.yaml"  # absent for run directories made without nepactl
    cluster = (load_yaml(path.read_text(), str(path)) or {}) if path.is_file() else {}
    field = "max_preemptions" if cause == "preemption" else "max_timeouts"
    limit = cluster.get(field, getattr(ClusterConfig(), field))
    ledger = runs.read_ledger(run_dir)
    last_submit = max((i for i, e in enumerate(ledger) if e["event"] == "submit"), default=-1)
    count = sum(1 for e in ledger[last_submit + 1:] if e["event"] == "requeue" and e.get("cause") == cause)
    if count > limit:
        return (f"{count} {cause}s since the last submission exceed cluster.max_{cause}s={limit}; "
                f"nepactl resume --max-{cause}s N continues with a new budget")
    return None


def classify_stop(signum: int | None, handler: Any) -> str:
    """'timeout' or 'preemption', from SLURM's own view when it is there.

    SIGTERM is a preemption (SLURM requeues the job itself). For the warning signal, SLURM's
    remaining time decides: little time left means the limit is near.
    """
    if signum == signal.SIGTERM:
        return "preemption"
    left = _slurm_time_left_s()
    if left is not None:
        return "timeout" if left <= 15 * 60 else "preemption"
    if handler is not None and hasattr(handler, "has_timed_out"):
        return "timeout" if handler.has_timed_out() else "preemption"
    return "preemption"


def _slurm_time_left_s() -> float | None:
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%L"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return _parse_slurm_duration(out)


def _parse_slurm_duration(text: str) -> float | None:
    """'1-02:03:04', '02:03:04', '03:04' -> seconds; None for UNLIMITED/INVALID."""
    if not text or not text[0].isdigit():
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, minutes, seconds = parts
    return ((int(days) if days else 0) * 24 + hours) * 3600 + minutes * 60 + seconds


def capture_attempt(run_dir: Path, job_id: str) -> None:
    """Record this attempt's environment: versions, devices, SLURM variables."""
    import platform

    import torch

    attempts = run_dir / "attempts"
    attempts.mkdir(exist_ok=True)
    number = len(list(attempts.glob("attempt-*.json"))) + 1
    runs.write_json(attempts / f"attempt-{number}.json", {
        "attempt": number, "job_id": job_id, "time": time.time(), "host": platform.node(),
        "python": sys.version.split()[0], "torch": torch.__version__,
        "cuda": torch.version.cuda, "gpus": [torch.cuda.get_device_name(i)
                                             for i in range(torch.cuda.device_count())],
        "slurm": {k: v for k, v in os.environ.items() if k.startswith("SLURM_")},
        "submitit": submitit.__version__,
        "code": str(Path(__file__).resolve().parents[1]),  # the snapshot this attempt runs
    })
    runs.append_ledger(run_dir, "start", job_id=job_id, attempt=number)


def _ignore_stop_signals() -> None:
    for signum in (WARNING_SIGNAL, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def _submitit_handler():
    """The SignalHandler submitit installed for its warning signal (None outside a job)."""
    installed = signal.getsignal(WARNING_SIGNAL)
    return getattr(installed, "__self__", None)

