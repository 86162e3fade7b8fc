"""What the scheduler has: partitions, GPUs per node (GRES), CPUs, memory, time limits, accounts.

Every query has a timeout and turns a failure into one line with the scheduler's own error
text (`nepactl doctor` reports it; `nepactl cluster init` proposes a profile from the answers).
"""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from nepactl.errors import CliError

TIMEOUT_S = 15.0  # per scheduler query
DEFAULT_TIME_MIN = 2880  # ClusterConfig's default attempt length, used when the partition allows it


class SchedulerError(CliError):
    """A scheduler command failed or did not answer (the message carries its error text)."""


@dataclass(frozen=True)
class Partition:
    name: str
    default: bool
    available: str  # sinfo %a: up, down, drain, inact
    time_limit_min: int | None  # None: unlimited
    nodes: int
    cpus: int  # per node (the smallest node)
    mem_mb: int  # per node (the smallest node)
    gpus: int  # per node, from GRES (the smallest node)
    gpu_type: str | None
    node_states: tuple[str, ...]  # sinfo %t of its node groups: idle, mix, alloc, down, drain, ...

    @property
    def usable(self) -> bool:
        bad = ("down", "drain", "drng", "fail", "maint", "inval", "unk", "futr")
        return self.available == "up" and any(not s.rstrip("*~#!%$@^-").startswith(bad)
                                              for s in self.node_states)

    def describe(self) -> str:
        gpus = f"{self.gpus}x {self.gpu_type or 'gpu'}" if self.gpus else "no GPUs"
        limit = f"{self.time_limit_min} min" if self.time_limit_min else "no time limit"
        return (f"{self.name}: {self.available}, {self.nodes} node(s) {'/'.join(self.node_states)}, "
                f"{gpus}, {self.cpus} CPUs, {self.mem_mb // 1024} GiB per node, {limit}")


def run_tool(argv: list[str], timeout: float = TIMEOUT_S) -> str:
    """stdout of a scheduler command, or a SchedulerError with its stderr."""
    command = " ".join(argv)
    if shutil.which(argv[0]) is None:
        raise SchedulerError(f"{argv[0]} is not on PATH; load SLURM's module or add it to PATH")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"`{command}` did not answer within {timeout:.0f} s; is slurmctld "
                             "reachable from this machine?") from None
    except OSError as exc:
        raise SchedulerError(f"`{command}` could not run ({exc.strerror})") from None
    if done.returncode != 0:
        error = (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}").splitlines()
        raise SchedulerError(f"`{command}` failed: {error[-1]}")
    return done.stdout


def parse_gres(gres: str) -> tuple[int, str | None]:
    """'gpu:a100:8(S:0-1),nvme:1' -> (8, 'a100'); '(null)' -> (0, None)."""
    total, kind = 0, None
    for match in re.finditer(r"(?:^|,)gpu(?::([A-Za-z][^:,()]*))?:(\d+)", gres):
        total += int(match.group(2))
        kind = kind or match.group(1)
    return total, kind


def parse_time(limit: str) -> int | None:
    """sinfo's %l ('infinite', '2-00:00:00', '4:00:00', '30:00', '30') in minutes; None: unlimited."""
    limit = limit.strip()
    if limit.lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if len(parts) == 1:  # minutes
        minutes = parts[0]
    else:
        hours, mins, secs = ([0] * (3 - len(parts)) + parts)
        minutes = hours * 60 + mins + (1 if secs else 0)
    return minutes + int(days or 0) * 1440


def partitions(timeout: float = TIMEOUT_S) -> list[Partition]:
    """Every partition sinfo lists (one sinfo call; node groups folded per partition)."""
    out = run_tool(["sinfo", "-h", "-o", "%P|%a|%l|%D|%c|%m|%G|%t"], timeout)
    found: dict[str, dict[str, Any]] = {}
    for line in out.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 8:
            continue
        name, avail, limit, nodes, cpus, mem, gres, state = fields
        default = name.endswith("*")
        name = name.rstrip("*")
        gpus, kind = parse_gres(gres)
        entry = found.setdefault(name, {"default": default, "available": avail, "limit": parse_time(limit),
                                        "nodes": 0, "cpus": [], "mem": [], "gpus": [], "kind": kind,
                                        "states": []})
        entry["nodes"] += int(nodes or 0)
        entry["cpus"].append(int(re.sub(r"\D.*", "", cpus) or 0))
        entry["mem"].append(int(re.sub(r"\D.*", "", mem) or 0))
        entry["gpus"].append(gpus)
        entry["kind"] = entry["kind"] or kind
        entry["states"].append(state)
    return [Partition(name, e["default"], e["available"], e["limit"], e["nodes"], min(e["cpus"]),
                      min(e["mem"]), min(e["gpus"]), e["kind"], tuple(e["states"]))
            for name, e in found.items()]


def associations(timeout: float = TIMEOUT_S) -> tuple[list[str], list[str]]:
    """(accounts, QOS) of this user where accounting shows them; ([], []) where it does not."""
    try:
        out = run_tool(["sacctmgr", "-n", "-P", "show", "assoc", f"user={getpass.getuser()}",
                        "format=account,qos"], timeout)
    except SchedulerError:
        return [], []
    accounts, qos = [], []
    for line in out.splitlines():
        account, _, names = line.partition("|")
        if account and account not in accounts:
            accounts.append(account)
        qos += [q for q in names.split(",") if q and q not in qos]
    return accounts, qos


def choose(found: list[Partition], name: str | None) -> Partition:
    """The named partition, else the default one if it has GPUs, else the one with most GPUs."""
    if name is not None:
        for partition in found:
            if partition.name == name:
                return partition
        raise CliError(f"partition '{name}' is unknown to sinfo; partitions: "
                       f"{', '.join(p.name for p in found) or 'none'}")
    if not found:
        raise CliError("sinfo lists no partition; ask your administrators which one to use")
    usable = [p for p in found if p.usable] or found
    default = next((p for p in usable if p.default), None)
    if default is not None and default.gpus:
        return default
    return max(usable, key=lambda p: (p.gpus, p.default))


def propose(partition: Partition, accounts: list[str]) -> dict[str, Any]:
    """A cluster profile for one partition: one task per GPU, the node's CPUs and memory shared."""
    tasks = max(1, partition.gpus)
    profile: dict[str, Any] = {
        "executor": "slurm", "partition": partition.name,
        "account": accounts[0] if len(accounts) == 1 else None,
        "gpus_per_node": partition.gpus, "tasks_per_node": tasks,
        "cpus_per_task": max(1, partition.cpus // tasks),
        "mem_gb": int(partition.mem_mb * 0.9 / 1024) or None,
        "time_min": min(partition.time_limit_min or DEFAULT_TIME_MIN, DEFAULT_TIME_MIN),
        "python": sys.executable,
    }
    if partition.time_limit_min is not None and partition.time_limit_min <= 2:
        profile["signal_delay_s"] = 30
    return profile
