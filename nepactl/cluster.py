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

# Throughput assumed for the dry run's wall-time estimate when the profile states none:
# training images per second per GPU (bf16, one H100-class GPU, 224 px; measured on tiny CPUs
# it is meaningless). Set cluster.images_per_s_per_gpu to a number you measured.
IMAGES_PER_S_PER_GPU = {"tiny": 20000.0, "S": 3000.0, "B": 1100.0, "L": 380.0, "H": 160.0}


@dataclass(frozen=True, kw_only=True)
class ClusterConfig:
    """Where and how jobs run. `executor: auto` is slurm when sbatch is on PATH, else local.

    templates/clusters/slurm.yaml documents every field with these defaults (a test keeps
    them in agreement); `nepactl cluster init` writes a profile from what the scheduler reports.
    """

    executor: Literal["auto", "slurm", "local", "debug"] = "auto"
    partition: str | None = None  # sbatch --partition; null: the cluster's default partition
    account: str | None = None  # sbatch --account
    qos: str | None = None  # sbatch --qos
    constraint: str | None = None  # sbatch --constraint, e.g. "h100|a100"
    gpus_per_node: int = 0  # GPUs requested per node (sbatch --gpus-per-node)
    tasks_per_node: int = 1  # processes per node (one per GPU); sets train.procs_per_node
    cpus_per_task: int | None = None  # CPUs per process; data.num_workers defaults to this - 1
    mem_gb: float | None = None  # memory per node, GB; null: the partition's default
    time_min: int = 2880  # time limit of one attempt, minutes; the job requeues at the limit
    signal_delay_s: int = 120  # the warning signal (USR2) comes this long before the limit
    max_timeouts: int = 30  # requeues after time limits
    max_preemptions: int = 50  # requeues after preemptions
    setup: tuple[str, ...] = ()  # shell lines run before the job (module load, activate, ...)
    # interpreter of the job on the compute nodes; null: `python3` as found after `setup` (or
    # inside `container`), else the interpreter that runs nepactl
    python: str | None = None
    # "auto": GPUs when gpus_per_node > 0 (a job given GPUs that sees no CUDA fails at once);
    # "cpu": run on CPUs on purpose (GPUs, if any, are hidden from the job)
    device: Literal["auto", "cpu"] = "auto"
    # an image the job runs in: a path to an Apptainer image (*.sif), run as
    # `apptainer exec`; anything else is a pyxis/enroot image, given to srun --container-image
    container: str | None = None
    container_mounts: tuple[str, ...] = ()  # extra paths visible in the container (data, ...)
    images_per_s_per_gpu: float | None = None  # for the dry run's wall time; null: a size table
    sbatch_extra: dict[str, Any] = field(default_factory=dict)  # other sbatch flags

    def __post_init__(self) -> None:
        # Values become #SBATCH lines: a line break would smuggle in shell commands.
        for name in ("partition", "account", "qos", "constraint", "python", "container"):
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
        check(self.cpus_per_task is None or self.cpus_per_task >= 1, "cluster.cpus_per_task",
              "must be >= 1")
        check(self.images_per_s_per_gpu is None or self.images_per_s_per_gpu > 0,
              "cluster.images_per_s_per_gpu", "must be > 0")

    def resolved_executor(self) -> str:
        if self.executor != "auto":
            return self.executor
        return "slurm" if shutil.which("sbatch") else "local"

    @property
    def uses_gpus(self) -> bool:
        return self.gpus_per_node > 0 and self.device != "cpu"

    @property
    def apptainer(self) -> bool:
        return bool(self.container) and self.container.endswith(".sif")  # type: ignore[union-attr]


def python_command(cluster: ClusterConfig, mounts: tuple[str, ...] = ()) -> str:
    """The job's interpreter: the profile's, else `python3` after setup / in the container, else ours."""
    python = cluster.python or ("python3" if cluster.setup or cluster.container else shlex.quote(sys.executable))
    if not cluster.apptainer:
        return python
    binds = "".join(f" --bind {shlex.quote(m)}" for m in (*mounts, *cluster.container_mounts))
    return f"apptainer exec{' --nv' if cluster.uses_gpus else ''}{binds} {shlex.quote(cluster.container)} {python}"


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
    if cluster.container and not cluster.apptainer:  # pyxis: srun starts each task in the image
        mounts = ",".join([*_mounts(code_dir), *cluster.container_mounts])
        params["srun_args"] = [f"--container-image={cluster.container}"] + (
            [f"--container-mounts={mounts}"] if mounts else [])
    return params


def _mounts(code_dir: Path | None) -> tuple[str, ...]:
    """The run directory (code snapshot, checkpoints, logs) must be visible inside a container."""
    return (str(code_dir.parent),) if code_dir is not None else ()


def sbatch_script(cluster: ClusterConfig, folder: Path, *, nodes: int, job_name: str,
                  code_dir: Path | None) -> str:
    """The exact script submitit writes for these parameters (what --dry-run prints)."""
    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([python_command(cluster, _mounts(code_dir)), "-u -m submitit.core._submit",
                        shlex.quote(str(folder))])
    params = slurm_parameters(cluster, nodes=nodes, job_name=job_name, code_dir=code_dir)
    return _make_sbatch_string(command=command, folder=folder, **params)


def make_executor(cluster: ClusterConfig, folder: Path, *, nodes: int, job_name: str,
                  code_dir: Path | None):
    """A submitit executor for the profile, parameters set."""
    import submitit

    kind = cluster.resolved_executor()
    if kind == "slurm":
        executor = submitit.SlurmExecutor(folder, max_num_timeout=cluster.max_timeouts,
                                          python=python_command(cluster, _mounts(code_dir)))
        executor.update_parameters(**slurm_parameters(cluster, nodes=nodes, job_name=job_name,
                                                      code_dir=code_dir))
        return executor
    if kind == "local":
        if nodes != 1:
            raise ValueError("the local executor runs one node: use --nodes 1")
        # no setup lines and no container here: the profile's python, else this one
        executor = submitit.LocalExecutor(folder, max_num_timeout=cluster.max_timeouts,
                                          python=cluster.python or shlex.quote(sys.executable))
        # submitit exports CUDA_VISIBLE_DEVICES for the GPUs asked for ("" when none): without
        # gpus_per_node a workstation's GPUs would be hidden and the job would train on the CPU.
        executor.update_parameters(timeout_min=cluster.time_min, tasks_per_node=cluster.tasks_per_node,
                                   signal_delay_s=cluster.signal_delay_s,
                                   gpus_per_node=cluster.gpus_per_node if cluster.uses_gpus else 0,
                                   visible_gpus=_visible_gpus())
        return executor
    return submitit.DebugExecutor(folder)


def _visible_gpus() -> tuple[int, ...]:
    """The GPU indices the user restricted this shell to (CUDA_VISIBLE_DEVICES), if numeric."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    parts = [p.strip() for p in value.split(",") if p.strip()]
    return tuple(int(p) for p in parts) if parts and all(p.isdigit() for p in parts) else ()
