"""Smoke tests of the loopback SLURM cluster: plain SLURM commands and submitit on it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import psutil
import pytest
import submitit

from tests.slurm import jobs
from tests.slurm.cluster import (
    ClusterError,
    ClusterSpec,
    SlurmCluster,
    sweep_orphans,
    wait_for,
    wait_submitit,
)

REPO = Path(__file__).resolve().parents[2]

# the job processes unpickle these without importing the test tree
cloudpickle.register_pickle_by_value(jobs)


def test_submitit_job_returns_its_result_and_sacct_says_completed(
        slurm_cluster, monkeypatch, tmp_path):
    slurm_cluster.activate(monkeypatch)
    ex = slurm_cluster.submitit_executor(tmp_path / "jobs")
    job = ex.submit(jobs.add, 2, 3)

    assert wait_submitit(job, timeout=60) == {
        "sum": 5, "job_id": job.job_id, "node": slurm_cluster.node}
    assert slurm_cluster.wait_state(job.job_id, ["COMPLETED"], source="sacct") == "COMPLETED"
    # submitit's own sacct reading agrees (its cache lags: force a refresh)
    wait_for(lambda: job.get_info(mode="force").get("State") == "COMPLETED", 30,
             lambda: f"submitit sees {job.get_info(mode='force')}")
    assert slurm_cluster.scontrol_show_job(job.job_id)["Partition"] == slurm_cluster.low


def test_checkpointable_job_signalled_usr2_resumes_from_its_saved_step(
        slurm_cluster, monkeypatch, tmp_path):
    slurm_cluster.activate(monkeypatch)
    events = tmp_path / "events.jsonl"
    ex = slurm_cluster.submitit_executor(tmp_path / "jobs", timeout_min=60)  # > 10: preempted
    job = ex.submit(jobs.Counter(events, steps=12, step_s=0.5))
    wait_for(lambda: any(e.get("i", 0) >= 3 for e in jobs.read_events(events)), 60,
             lambda: f"no progress: {jobs.read_events(events)}; {job.stderr()}")

    # no --batch/--full: the signal must reach the srun step (the Python worker), not bash
    slurm_cluster.run("scancel", "--signal=USR2", job.job_id)

    result = wait_submitit(job, timeout=90)
    first, second = result["starts"]
    assert first == 0 and second >= 3, result  # resumed from the checkpointed step
    assert result["i"] == 12 and result["restart"] == 1
    assert slurm_cluster.scontrol_show_job(job.job_id)["Restarts"] == "1"  # same job id
    wait_for(lambda: slurm_cluster.sacct_history(job.job_id) == ["REQUEUED", "COMPLETED"], 30,
             lambda: f"sacct -D: {slurm_cluster.sacct_history(job.job_id)}")
    assert "this job is preempted" in job.stderr()


def test_low_partition_job_is_preempted_by_a_high_job_and_requeued(
        slurm_cluster, monkeypatch, tmp_path):
    slurm_cluster.activate(monkeypatch)
    cpus = slurm_cluster.spec.cpus  # both jobs want the whole node
    grace = slurm_cluster.spec.grace_time_s
    events = tmp_path / "events.jsonl"
    ex = slurm_cluster.submitit_executor(tmp_path / "jobs", cpus_per_task=cpus)
    low = ex.submit(jobs.record_starts, events, first_run_s=grace + 30, rerun_s=0.5)
    wait_for(lambda: jobs.read_events(events), 60, lambda: f"low never started: {low.stderr()}")

    t_high = time.time()
    high = slurm_cluster.sbatch("--partition", slurm_cluster.high, f"--cpus-per-task={cpus}",
                                "--wrap", "sleep 1")

    result = wait_submitit(low, timeout=grace + 90)
    assert result == {"starts": [0, 1], "restart": 1}
    by_kind = {}
    for e in jobs.read_events(events):
        by_kind.setdefault(e["event"], []).append(e["t"] - t_high)
    # SIGTERM at once (again at the end of the grace time), SIGKILL after it, then a rerun
    assert by_kind["sigterm"][0] < grace / 2, by_kind
    assert by_kind["start"][1] > grace, by_kind
    assert slurm_cluster.wait_state(high, ["COMPLETED"]) == "COMPLETED"
    # the result pickle exists before the job's end reaches the accounting DB
    wait_for(lambda: slurm_cluster.sacct_history(low.job_id) == ["PREEMPTED", "COMPLETED"], 30,
             lambda: f"sacct -D: {slurm_cluster.sacct_history(low.job_id)}")
    assert slurm_cluster.scontrol_show_job(low.job_id)["Restarts"] == "1"


def test_without_accounting_sacct_fails_but_squeue_works(
        slurm_cluster_no_sacct, monkeypatch, tmp_path):
    cluster = slurm_cluster_no_sacct
    job_id = cluster.sbatch("--wrap", "sleep 60")
    assert cluster.wait_state(job_id, ["RUNNING"]) == "RUNNING"
    assert cluster.squeue(job_id)["State"] == "RUNNING"

    sacct = cluster.run("sacct", "-j", job_id, check=False)
    assert sacct.returncode != 0
    assert "accounting storage is disabled" in sacct.stderr
    assert cluster.sacct_history(job_id) == []

    cluster.run("scancel", job_id)
    assert cluster.wait_state(job_id, ["CANCELLED"]) == "CANCELLED"

    # submitit still gets the result (from its pickle), but cannot tell the state
    cluster.activate(monkeypatch)
    job = cluster.submitit_executor(tmp_path / "jobs").submit(jobs.add, 1, 1)
    assert wait_submitit(job, timeout=60)["sum"] == 2
    assert job.get_info(mode="force") == {}
    assert job.state == "UNKNOWN"


def test_unknown_partition_is_refused_with_a_clear_error(slurm_cluster, monkeypatch, tmp_path):
    r = slurm_cluster.run("sbatch", "--partition", "nosuch", "--wrap", "true", check=False)
    assert r.returncode != 0
    assert "Invalid partition name specified" in r.stderr

    slurm_cluster.activate(monkeypatch)
    ex = slurm_cluster.submitit_executor(tmp_path / "jobs", slurm_partition="nosuch")
    # submitit raises FailedJobError carrying sbatch's stderr
    with pytest.raises(submitit.core.utils.FailedJobError,
                       match="Invalid partition name specified"):
        ex.submit(jobs.add, 1, 1)


def test_failed_start_leaves_no_process_behind(tmp_path, monkeypatch):
    """Start fails at the very end, with every daemon and a job running: all of it is ended."""
    cluster = SlurmCluster(tmp_path / "c", ClusterSpec(cpus=1))
    seen = []

    def fail_at_registration(self):
        job_id = self.sbatch("--wrap", "sleep 300")
        self.wait_state(job_id, ["RUNNING"])
        wait_for(lambda: any("sleep" in p.name() for p in self.processes()), 30, "no job")
        seen.extend((p, p.name()) for p in self.processes())
        raise ClusterError("injected failure")

    monkeypatch.setattr(SlurmCluster, "_wait_registered", fail_at_registration)
    with pytest.raises(ClusterError, match="injected failure"):
        cluster.start()

    names = {name for _, name in seen}
    assert {"munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "slurmstepd",
            "sleep"} <= names, names
    alive = [name for p, name in seen if _alive(p)]
    assert alive == [] and cluster.processes() == []


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


CRASHING_OWNER = """
import sys, time
from tests.slurm.cluster import ClusterSpec, SlurmCluster
cluster = SlurmCluster(sys.argv[1], ClusterSpec(accounting=False, cpus=1)).start()
job_id = cluster.sbatch("--wrap", "sleep 300")
cluster.wait_state(job_id, ["RUNNING"])
print("running", flush=True)
time.sleep(300)
"""


def test_cluster_of_a_killed_test_process_is_cleaned_up(tmp_path):
    """The daemons die with their test process; the next start ends the orphaned job."""
    base = tmp_path / "c"
    owner = subprocess.Popen([sys.executable, "-c", CRASHING_OWNER, str(base)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "running", owner.stderr.read()
    finally:
        owner.kill()
        owner.wait(timeout=30)

    def processes() -> list[str]:  # names of the live processes that name the cluster's dir
        found = []
        for p in psutil.process_iter(["name", "cmdline", "cwd"]):
            with contextlib.suppress(psutil.Error):
                where = [p.info["cwd"] or "", *(p.info["cmdline"] or []),
                         p.environ().get("SLURM_CONF", "")]
                if str(base) in " ".join(where) and _alive(p):
                    found.append(p.info["name"])
        return found

    # the daemons go (PR_SET_PDEATHSIG); slurmstepd, srun and the job stay
    wait_for(lambda: not {"slurmctld", "slurmd", "munged"} & set(processes()), 30,
             lambda: f"daemons left: {processes()}")
    assert "slurmstepd" in processes()
    swept = sweep_orphans()
    assert any("slurmstepd" in s for s in swept) and any("sleep 300" in s for s in swept), swept
    wait_for(lambda: not processes(), 10, lambda: f"left: {processes()}")
