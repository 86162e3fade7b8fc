"""Cluster profiles and the submitit executors they choose (slurm, local, debug)."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nepa.config import check


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    """Where and how jobs run. `executor: auto` is slurm when sbatch is on PATH, else local."""

    executor: Literal["auto", "slurm", "local", "debug"] = "auto"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_node: int = 0  # GPUs requested per node
    tasks_per_node: int = 1  # processes per node (one per GPU); sets train.procs_per_node
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    time_min: int = 1440  # time limit of one attempt, minutes
    signal_delay_s: int = 90  # the warning signal (USR2) comes this long before the limit
    max_timeouts: int = 3  # requeues after time limits
    max_preemptions: int = 20  # requeues after preemptions
    setup: tuple[str, ...] = ()  # shell lines run before the job (module load, activate, ...)
    sbatch_extra: dict[str, Any] = field(default_factory=dict)  # other sbatch flags
    python: str | None = None  # interpreter on the compute nodes (default: this one)

    def __post_init__(self) -> None:
        # Values become #SBATCH lines: a line break would smuggle in shell commands.
        for name in ("partition", "account", "qos", "constraint", "python"):
            value = getattr(self, name)
            check(value is None or value.isprintable(), f"cluster.{name}",
                  "must be one printable line (no line breaks or control characters)")
        for key, value in self.sbatch_extra.items():
            check(str(key).isprintable() and str(value).isprintable(), f"cluster.sbatch_extra.{key}",
                  "must be one printable line (no line breaks or control characters)")
        check(self.tasks_per_node >= 1, "cluster.tasks_per_node", "must be >= 1")
        check(self.gpus_per_node >= 0, "cluster.gpus_per_node", "must be >= 0")
        check(self.gpus_per_node in (0, self.tasks_per_node), "cluster.tasks_per_node",
              f"use one process per GPU: set it to gpus_per_node ({self.gpus_per_node})")
        check(self.time_min >= 1, "cluster.time_min", "must be >= 1 minute")
        check(0 <= self.signal_delay_s < 60 * self.time_min, "cluster.signal_delay_s",
              "must be shorter than the time limit")

    def resolved_executor(self) -> str:
        if self.executor != "auto":
            return self.executor
        return "slurm" if shutil.which("sbatch") else "local"


def python_command(cluster: ClusterConfig) -> str:
    return cluster.python or shlex.quote(sys.executable)


def slurm_parameters(cluster: ClusterConfig, *, nodes: int, job_name: str,
                     code_dir: Path | None) -> dict[str, Any]:
    """sbatch parameters in submitit's SlurmExecutor vocabulary (also used for --dry-run).

    With a code snapshot the job runs in the run directory (--chdir): `python -m` puts the
    working directory first on sys.path, which must not be a source tree.
    """
    setup = list(cluster.setup)
    if code_dir is not None:  # jobs and their requeues run the code snapshot taken at submit
        setup.append(f"export PYTHONPATH={shlex.quote(str(code_dir))}${{PYTHONPATH:+:$PYTHONPATH}}")
    params: dict[str, Any] = {
        "job_name": job_name, "time": cluster.time_min, "nodes": nodes,
        "ntasks_per_node": cluster.tasks_per_node, "signal_delay_s": cluster.signal_delay_s,
        "setup": setup,
        # One task failing (rank 0's checkpoint write, a full disk) ends the step: without it the
        # other ranks wait in their next collective until the NCCL timeout.
        "srun_args": ["--kill-on-bad-exit=1"],
    }
    optional = {"partition": cluster.partition, "account": cluster.account, "qos": cluster.qos,
                "constraint": cluster.constraint, "cpus_per_task": cluster.cpus_per_task,
                "gpus_per_node": cluster.gpus_per_node or None,
                "mem": f"{int(cluster.mem_gb)}GB" if cluster.mem_gb else None}
    params.update({k: v for k, v in optional.items() if v is not None})
    extra = dict(cluster.sbatch_extra)
    if code_dir is not None:
        extra.setdefault("chdir", str(code_dir.parent))
    if extra:
        params["additional_parameters"] = extra
    return params


def sbatch_script(cluster: ClusterConfig, folder: Path, *, nodes: int, job_name: str,
                  code_dir: Path | None) -> str:
    """The exact script submitit writes for these parameters (what --dry-run prints)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([python_command(cluster), "-u -m submitit.core._submit", shlex.quote(str(folder))])
    params = slurm_parameters(cluster, nodes=nodes, job_name=job_name, code_dir=code_dir)
    return _make_sbatch_string(command=command, folder=folder, **params)


def make_executor(cluster: ClusterConfig, folder: Path, *, nodes: int, job_name: str,
                  code_dir: Path | None):
    """A submitit executor for the profile, parameters set."""
    import submitit

    kind = cluster.resolved_executor()
    if kind == "slurm":
        executor = submitit.SlurmExecutor(folder, max_num_timeout=cluster.max_timeouts,
                                          python=python_command(cluster))
        executor.update_parameters(**slurm_parameters(cluster, nodes=nodes, job_name=job_name,
                                                      code_dir=code_dir))
        return executor
    if kind == "local":
        if nodes != 1:
            raise ValueError("the local executor runs one node: use --nodes 1")
        executor = submitit.LocalExecutor(folder, max_num_timeout=cluster.max_timeouts,
                                          python=python_command(cluster))
        # submitit exports CUDA_VISIBLE_DEVICES for the GPUs asked for ("" when none): without
        # gpus_per_node a workstation's GPUs would be hidden and the job would train on the CPU.
        executor.update_parameters(timeout_min=cluster.time_min, tasks_per_node=cluster.tasks_per_node,
                                   signal_delay_s=cluster.signal_delay_s, gpus_per_node=cluster.gpus_per_node,
                                   visible_gpus=_visible_gpus())
        return executor
    return submitit.DebugExecutor(folder)


def _visible_gpus() -> tuple[int, ...]:
    """The GPU indices the user restricted this shell to (CUDA_VISIBLE_DEVICES), if numeric."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    parts = [p.strip() for p in value.split(",") if p.strip()]
    return tuple(int(p) for p in parts) if parts and all(p.isdigit() for p in parts) else ()
