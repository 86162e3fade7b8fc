"""The submission mechanism: fill a run directory, submit a job for it through submitit, cancel.

It knows no job class: callers (nepactl.launch, nepactl.evaluate, ...) hand it the job.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nepa import rundir
from nepa.config import to_dict
from nepactl import runs
from nepactl.cluster import make_executor, sbatch_script
from nepactl.errors import CliError
from nepactl.render import Rendered
from nepactl.specs import write_chain


@dataclass(frozen=True)
class Submission:
    run_dir: Path
    job_id: str
    executor: str


def fill_run_dir(staging: Path, rendered: Rendered, task: str, size: str) -> None:
    from nepa.train.runconfig import write_run_config

    write_run_config(staging, rendered.run, holder=staging.parent / rendered.run.name, runs_root=staging.parent)
    (staging / "cluster.yaml").write_text(yaml.safe_dump(to_dict(rendered.cluster), sort_keys=False))
    train = rendered.run.train
    rundir.write_run_info(staging, rundir.RunInfo(
        name=rendered.run.name, task=task, size=size, nodes=train.nodes, procs_per_node=train.procs_per_node,
        gpus_per_node=rendered.cluster.gpus_per_node, executor=rendered.cluster.resolved_executor(),
        created=time.time(), max_steps=train.max_steps, derived=rendered.derived, layers=tuple(rendered.layers)))
    if rendered.chain.active:
        write_chain(staging, rendered.chain)
    runs.snapshot_code(staging / "code")


@contextlib.contextmanager
def _job_free_environment():
    """Submitting from inside a job (chained evaluations): the new job must not inherit this
    job's SLURM_* and SUBMITIT_* variables (sbatch reads some, e.g. conflicting memory flags)."""
    inherited = {k: v for k, v in os.environ.items()
                 if (k.startswith("SLURM_") and k != "SLURM_CONF") or k.startswith("SUBMITIT_")}
    for key in inherited:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(inherited)


@contextlib.contextmanager
def _quiet_children():
    """The local executor's controller inherits stdio: give it /dev/null, not our terminal."""
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def submit_job(run_dir: Path, job: Callable[[], Any], *, attempt_cause: str,
               dependency: str | None = None) -> Submission:
    """Submit (or resubmit) `job` for a directory, with its stored cluster profile and code snapshot.

    `job` is a picklable callable (a PreemptibleJob of the directory). `dependency` (SLURM only)
    makes it wait for that job to complete successfully; it is not stored, so a later resume
    does not wait again.
    """
    from dataclasses import replace

    from nepa.config import from_dict
    from nepactl.cluster import ClusterConfig

    cluster = from_dict(ClusterConfig, yaml.safe_load((run_dir / "cluster.yaml").read_text()) or {},
                        path="cluster", source=str(run_dir / "cluster.yaml"))
    if dependency and cluster.resolved_executor() == "slurm":
        cluster = replace(cluster, sbatch_extra={**cluster.sbatch_extra, "dependency": f"afterok:{dependency}"})
    info = runs.read_json(run_dir / runs.RUN_INFO) or {}
    run_dir = run_dir.resolve()
    code_dir = run_dir / "code"
    executor = make_executor(cluster, run_dir / "submitit", nodes=info.get("nodes", 1),
                             job_name=run_dir.name, code_dir=code_dir)
    kind = cluster.resolved_executor()
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(code_dir) + (os.pathsep + previous if previous else "")
    cwd = os.getcwd()
    try:
        if kind == "local":  # the controller inherits the cwd; see cluster.slurm_parameters
            os.chdir(run_dir)
        # submitit prints sbatch's stderr before raising; the error below says it in one line.
        quiet = _quiet_children() if kind == "local" else contextlib.redirect_stderr(io.StringIO())
        with quiet, _job_free_environment():
            submitted = executor.submit(job)
    except Exception as exc:
        message = str(exc).strip().splitlines()
        raise CliError(f"{kind} refused the job: {message[-1] if message else exc}; check the "
                       "cluster profile (partition, account, limits) with nepactl doctor") from None
    finally:
        os.chdir(cwd)
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous
    runs.append_ledger(run_dir, "submit", job_id=str(submitted.job_id), executor=kind, cause=attempt_cause)
    if kind == "debug":  # submitit's debug executor runs the job in this process, on demand
        submitted.result()
    return Submission(run_dir, str(submitted.job_id), kind)


def cancel_jobs(run_dir: Path) -> list[str]:
    """scancel / stop every job the run submitted (its own and its evaluations')."""
    import subprocess

    jobs = runs.submitted_jobs(run_dir)
    slurm = [job for job, kind in jobs if kind == "slurm"]
    if slurm:
        done = subprocess.run(["scancel", *slurm], capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise CliError(f"scancel failed: {done.stderr.strip()}; try scancel {' '.join(slurm)}")
    for job, kind in jobs:
        if kind == "local":
            _stop_local(job)
    return [job for job, _ in jobs]


def _stop_local(job_id: str) -> bool:
    import signal

    import psutil

    try:
        controller = psutil.Process(int(job_id))
    except (psutil.NoSuchProcess, ValueError):
        return False
    family = [controller, *controller.children(recursive=True)]
    controller.send_signal(signal.SIGINT)
    _, alive = psutil.wait_procs(family, timeout=5)
    for proc in alive:
        proc.kill()
    psutil.wait_procs(alive, timeout=5)  # a killed process is gone only once the kernel says so
    return True


def dry_run_script(rendered: Rendered, root: Path) -> str | None:
    """The sbatch script a real submit would write (None for local/debug executors)."""
    if rendered.cluster.resolved_executor() != "slurm":
        return None
    run_dir = (root / rendered.run.name).resolve()  # as submit_job will see it
    return sbatch_script(rendered.cluster, run_dir / "submitit", nodes=rendered.run.train.nodes,
                         job_name=rendered.run.name, code_dir=run_dir / "code")
