"""The checks behind `nepactl doctor`: each returns ok + one line saying what to fix."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def check_binaries(executor: str) -> list[Check]:
    if executor != "slurm":
        return [Check("scheduler", True, f"executor '{executor}' needs no SLURM binaries")]
    out = []
    for binary in ("sbatch", "squeue", "scancel", "scontrol", "sacct"):
        path = shutil.which(binary)
        out.append(Check(f"{binary} on PATH", path is not None,
                         path or "not found; load SLURM's module or add it to PATH"))
    return out


def check_partition(partition: str | None, executor: str) -> Check:
    if executor != "slurm":
        return Check("partition", True, "not used by this executor")
    if partition is None:
        return Check("partition", True, "none set: the cluster's default partition")
    try:
        done = subprocess.run(["sinfo", "-h", "-p", partition, "-o", "%P %a"], capture_output=True,
                              text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("partition", False, f"sinfo failed ({exc}); is slurmctld reachable?")
    if done.returncode != 0 or not done.stdout.strip():
        return Check("partition", False, f"'{partition}' unknown to sinfo; set cluster.partition "
                                         "to one listed by `sinfo -s`")
    return Check("partition", True, done.stdout.strip().splitlines()[0])


def check_runs_root(root: Path) -> Check:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check("runs root", False, f"{root} is not writable ({exc.strerror}); set --runs-root "
                                         "or NEPA_RUNS to a writable shared directory")
    free = shutil.disk_usage(root).free / 2**30
    return Check("runs root", True, f"{root.resolve()} writable, {free:.0f} GiB free")


def check_data(data_cfg) -> Check:
    from nepa.data import check_dataset
    from nepa.errors import NepaError

    try:
        report = check_dataset(data_cfg)
    except NepaError as exc:
        return Check("data", False, str(exc))
    return Check("data", True, str(getattr(report, "summary", report)))


def check_probe(cluster_cfg, root: Path) -> Check:
    """Submit a tiny job that imports torch and nepa on a compute node."""
    from nepactl.cluster import make_executor

    folder = Path(tempfile.mkdtemp(prefix=".doctor-probe-", dir=root))
    try:
        executor = make_executor(cluster_cfg, folder, nodes=1, job_name="nepactl-doctor", code_dir=None)
        if hasattr(executor, "update_parameters") and cluster_cfg.resolved_executor() == "slurm":
            executor.update_parameters(time=5)
        job = executor.submit(_probe)
        return Check("probe job", True, job.result())
    except Exception as exc:  # the probe reports any failure as a check line
        return Check("probe job", False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1:]}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _probe() -> str:
    import socket

    import torch

    import nepa

    return (f"{socket.gethostname()}: torch {torch.__version__}, nepa {nepa.__version__}, "
            f"{torch.cuda.device_count()} GPU(s)")


def run_checks(*, cluster: str, size: str, root: Path, probe: bool) -> list[Check]:
    from nepa.errors import NepaError
    from nepactl.render import render

    results = []
    try:
        rendered = render(size=size, cluster=cluster)
    except NepaError as exc:
        return [Check("config", False, str(exc))]
    executor = rendered.cluster.resolved_executor()
    results.append(Check("config", True, f"profile '{cluster}' -> executor {executor}"))
    results += check_binaries(executor)
    results.append(check_partition(rendered.cluster.partition, executor))
    results.append(check_runs_root(root))
    results.append(check_data(rendered.run.data))
    if probe:
        results.append(check_probe(rendered.cluster, root))
    return results


