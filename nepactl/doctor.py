"""The checks behind `nepactl doctor`: each returns ok + one line saying what to fix."""

from __future__ import annotations

import shutil
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


def check_scheduler(profile, size: str | None = None) -> list[Check]:
    """The controller answers, the partition exists and is up, its nodes have the profile's
    GPUs, and accounting answers; each with the scheduler's own error text."""
    from nepactl import discover

    try:
        found = discover.partitions()
    except discover.SchedulerError as exc:
        return [Check("scheduler", False, str(exc))]
    out = [Check("scheduler", True, f"sinfo answered: {len(found)} partition(s)")]
    out.append(check_partition(profile.partition, found))
    partition = next((p for p in found if p.name == profile.partition or
                      (profile.partition is None and p.default)), None)
    if partition is not None:
        out.append(check_gpus(profile, partition, size))
    out.append(check_accounting())
    return out


def check_partition(name: str | None, found) -> Check:
    known = {p.name: p for p in found}
    if name is None:
        default = next((p for p in found if p.default), None)
        if default is None:
            return Check("partition", False, "none set and the cluster has no default partition; set "
                                             "cluster.partition (nepactl cluster init)")
        name = default.name
    partition = known.get(name)
    if partition is None:
        return Check("partition", False, f"'{name}' unknown to sinfo; set cluster.partition to one "
                                         f"of: {', '.join(known) or 'none'}")
    if not partition.usable:
        return Check("partition", False, f"'{name}' is {partition.available} (nodes "
                                         f"{'/'.join(partition.node_states)}): jobs would not start; "
                                         "choose another partition or ask the administrators")
    return Check("partition", True, partition.describe())


def check_gpus(profile, partition, size: str | None) -> Check:
    want, have = profile.gpus_per_node, partition.gpus
    if want > have:
        return Check("GPUs per node", False, f"the profile asks {want}, nodes of '{partition.name}' "
                                             f"have gpu:{have} (sinfo %G); set cluster.gpus_per_node")
    if want == 0 and profile.device != "cpu" and size in ("S", "B", "L", "H"):
        return Check("GPUs per node", False, f"the profile asks none for size {size} (nodes have "
                                             f"gpu:{have}); set cluster.gpus_per_node or cluster.device: cpu")
    note = " (cluster.device: cpu: not used)" if profile.device == "cpu" and want else ""
    return Check("GPUs per node", True, f"{want} of gpu:{have}{note}")


def check_accounting() -> Check:
    from nepactl import discover

    try:
        discover.run_tool(["sacct", "-n", "-X", "-S", "now", "-o", "JobID"])
    except discover.SchedulerError as exc:
        return Check("accounting", False, f"{exc}; nepactl status then follows jobs with squeue only")
    return Check("accounting", True, "sacct answered")


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


PROBE_TIMEOUT_S = 180.0


def cuda_problem(given: int) -> str | None:
    """One line when a process given GPUs cannot use CUDA (None when it can)."""
    import os

    import torch

    if torch.cuda.is_available():
        return None
    return (f"CUDA not visible: the job was given {given} GPU(s) per node but torch {torch.__version__} "
            f"sees none (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r}); "
            "fix cluster.setup/python/container, or set cluster.device=cpu to run on CPUs on purpose")


def check_probe(cluster_cfg, root: Path, data_path: str | None = None,
                timeout_s: float = PROBE_TIMEOUT_S) -> list[Check]:
    """A tiny job with the profile: its Python imports nepa and torch, sees CUDA when GPUs are
    asked for, and reads the runs root and the data path from a compute node."""
    import time
    from dataclasses import replace

    from nepactl.cluster import make_executor

    folder = Path(tempfile.mkdtemp(prefix=".doctor-probe-", dir=root))
    try:
        # One task that still holds the node's GPUs: the probe checks the node, not the geometry.
        gpus, extra = cluster_cfg.gpus_per_node, dict(cluster_cfg.sbatch_extra)
        if gpus and cluster_cfg.resolved_executor() == "slurm":
            extra["gpus_per_node"], gpus = gpus, 0
        cfg = replace(cluster_cfg, tasks_per_node=1, gpus_per_node=min(gpus, 1), sbatch_extra=extra,
                      time_min=min(cluster_cfg.time_min, 5), signal_delay_s=min(cluster_cfg.signal_delay_s, 30))
        executor = make_executor(cfg, folder, nodes=1, job_name="nepactl-doctor", code_dir=None)
        job = executor.submit(_probe, str(root.resolve()), data_path,
                              cluster_cfg.gpus_per_node if cluster_cfg.uses_gpus else 0, cluster_cfg.device == "cpu")
        deadline = time.monotonic() + timeout_s
        while not job.done():
            if time.monotonic() > deadline:
                job.cancel(check=False)
                return [Check("probe job", False, f"job {job.job_id} not done after {timeout_s:.0f} s "
                                                  f"(state {job.state}); is the partition busy?")]
            time.sleep(1)
        report = job.result()
        while job.state in ("RUNNING", "COMPLETING", "PENDING") and time.monotonic() < deadline:
            time.sleep(1)  # leave nothing behind: the job ends on its own after its result
    except Exception as exc:  # the probe reports any failure as a check line
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        return [Check("probe job", False, f"{type(exc).__name__}: {lines[-1] if lines else exc}")]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return [Check(name, ok, detail) for name, ok, detail in report]


def _probe(root: str, data_path: str | None, gpus: int, cpu: bool) -> list[tuple[str, bool, str]]:
    """Runs on the compute node: (check, ok, detail) rows."""
    import os
    import socket
    import sys

    host = socket.gethostname()
    rows = []
    try:
        import torch

        import nepa
    except ImportError as exc:
        return [("job python", False, f"{host}: {sys.executable} cannot import {exc.name} ({exc}); "
                                      "set cluster.python or cluster.setup")]
    rows.append(("job python", True, f"{host}: {sys.executable}, torch {torch.__version__}, "
                                     f"nepa {nepa.__version__}"))
    given = int(os.environ.get("SLURM_GPUS_ON_NODE") or 0) or gpus
    if gpus and not cpu:
        problem = cuda_problem(given)
        rows.append(("CUDA", problem is None, problem or f"{torch.cuda.device_count()} GPU(s) visible"))
    for name, path in (("runs root from a compute node", root), ("data from a compute node", data_path)):
        if path is None or "://" in path:
            continue
        ok = os.path.isdir(path) and os.access(path, os.R_OK | os.X_OK)
        rows.append((name, ok, f"{host}: {path} " + ("readable" if ok else "is not a readable directory "
                                                      "there; use a shared file system")))
    return rows


def run_checks(*, root: Path, probe: bool, size: str = "tiny", cluster: str | None = None,
               nodes: int | None = None, gpus_per_node: int | None = None, files: tuple[Path, ...] = (),
               sets: tuple[str, ...] = (), data: str | None = None) -> list[Check]:
    """Every check; a configuration error is one failed line and the other checks still run."""
    from nepa.config import from_dict
    from nepa.errors import NepaError
    from nepactl.cluster import ClusterConfig
    from nepactl.render import cluster_layer, render

    results, rendered = [], None
    try:
        source, _ = cluster_layer(cluster)
        rendered = render(size=size, cluster=cluster, files=files, sets=sets, nodes=nodes,
                          gpus_per_node=gpus_per_node, data=data)
        profile = rendered.cluster
        results.append(Check("config", True, f"size {size}, profile {source} -> "
                                             f"executor {profile.resolved_executor()}"))
    except NepaError as exc:
        results.append(Check("config", False, str(exc)))
        try:  # the profile alone, for the scheduler checks
            source, layer = cluster_layer(cluster)
            profile = from_dict(ClusterConfig, layer.get("cluster") or {}, path="cluster", source=source)
            if gpus_per_node is not None:
                profile = replace_gpus(profile, gpus_per_node)
        except NepaError:
            return results
    executor = profile.resolved_executor()
    results += check_binaries(executor)
    if executor == "slurm":
        results += check_scheduler(profile, size)
    results.append(check_runs_root(root))
    if rendered is not None:
        results.append(check_data(rendered.run.data))
    if probe:
        data_path = rendered.run.data.path if rendered is not None else None
        results += check_probe(profile, root, data_path)
    return results


def replace_gpus(profile, gpus: int):
    from dataclasses import replace

    return replace(profile, gpus_per_node=gpus, tasks_per_node=max(1, gpus))
