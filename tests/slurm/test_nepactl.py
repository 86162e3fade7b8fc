"""nepactl end to end on the loopback SLURM cluster (issue #7): submit, status, the warning
signal, real preemption, time limits, two tasks, cancel, no sacct, refused jobs.

The CLI runs in-process (typer's CliRunner) after ``cluster.activate(monkeypatch)``, so the
``sbatch``/``squeue``/``scancel`` it calls reach the test cluster. Jobs run this venv's python
(the profile's default) on the bundled digits with a 2-block tiny model.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from typer.testing import CliRunner

from nepactl.app import app
from tests.slurm.cluster import wait_for

pytestmark = pytest.mark.slow

runner = CliRunner()
TINY = ["--size", "tiny", "--set", "model.depth=2", "--set", "train.global_batch=32",
        "--set", "train.micro_batch=32", "--set", "data.num_workers=0"]
NEPACTL = str(Path(sys.executable).with_name("nepactl"))


# ------------------------------------------------------------------------------ helpers


def _profile(tmp_path: Path, **fields) -> Path:
    """A cluster profile for the test cluster; time_min >= 60 so USR2 means preemption."""
    cluster = {"executor": "slurm", "partition": "low", "tasks_per_node": 1, "cpus_per_task": 1,
               "mem_gb": 1, "time_min": 60, "signal_delay_s": 30, **fields}
    path = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump({"cluster": cluster}))
    return path


def _pretrain(root: Path, name: str, profile: Path, steps: int, every: int = 5,
              *extra: str) -> str:
    """Submit a tiny run; return its SLURM job id."""
    args = ["pretrain", *TINY, "--cluster", str(profile), "--name", name, "--runs-root", str(root),
            "--set", f"train.max_steps={steps}", "--set", f"checkpoint.every_steps={every}", *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    submits = [e for e in _ledger(root / name) if e["event"] == "submit"]
    assert len(submits) == 1 and submits[0]["executor"] == "slurm", submits
    return submits[0]["job_id"]


def _status(root: Path, name: str) -> dict:
    result = runner.invoke(app, ["status", name, "--json", "--runs-root", str(root)])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)[0]


def _wait(root: Path, name: str, predicate, timeout: float = 120) -> tuple[dict, list]:
    """Poll `nepactl status --json` until `predicate(row)`; return the row and the states seen."""
    seen: list[tuple[str, int, float]] = []  # (state, step, seconds since the wait began)
    t0 = time.monotonic()

    def check():
        row = _status(root, name)
        if not seen or seen[-1][:2] != (row["state"], row["step"]):
            seen.append((row["state"], row["step"], round(time.monotonic() - t0, 1)))
        return row if predicate(row) else None

    row = wait_for(check, timeout, lambda: f"{name}: states seen {seen}; log:\n"
                                           f"{_log(root / name)[-3000:]}", interval=0.5)
    return row, seen


def _wait_completed(root: Path, name: str, timeout: float = 150) -> dict:
    """Wait for COMPLETED; a FAILED or CANCELLED on the way (a status misreading) fails."""
    row, seen = _wait(root, name, lambda r: r["state"] == "COMPLETED", timeout=timeout)
    wrong = [s for s in seen if s[0] in ("FAILED", "CANCELLED", "STALLED")]
    assert not wrong, f"{name}: status said {wrong} before COMPLETED; all states seen: {seen}"
    return row


def _ledger(run: Path) -> list[dict]:
    path = run / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _log(run: Path, rank: int = 0) -> str:
    return "".join(p.read_text(errors="replace")
                   for p in sorted((run / "submitit").glob(f"*_{rank}_log.*")))


def _wait_steps(run: Path, steps: int, timeout: float = 90) -> None:
    wait_for(lambda: len(_metrics(run)) >= steps, timeout,
             lambda: f"fewer than {steps} steps in {run}; log:\n{_log(run)[-3000:]}", interval=0.2)


def _assert_each_step_once(run: Path, total: int) -> None:
    steps = [m["step"] for m in _metrics(run)]
    assert steps == list(range(1, total + 1)), steps


def _requeues(run: Path) -> list[dict]:
    return [e for e in _ledger(run) if e["event"] == "requeue"]


def _run_processes(run: Path) -> list[str]:
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if str(run) in " ".join(p.info["cmdline"] or ()) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{p.pid} {' '.join(p.info['cmdline'])}")
    return found


def _usr2_requeue_and_complete(cluster, root: Path, name: str, total: int,
                               timeout: float = 150) -> dict:
    """Send the warning signal after a few steps, then wait for the run to complete."""
    run = root / name
    job_id = _ledger(run)[0]["job_id"]
    _wait_steps(run, 4)
    cluster.run("scancel", "--signal=USR2", job_id)  # no --batch/--full: the srun step gets it
    row = _wait_completed(root, name, timeout=timeout)
    assert row["step"] == total and row["job_id"] == job_id
    return row


# ------------------------------------------------------------------------------ 1. submit


def test_pretrain_submits_through_sbatch_and_status_follows_it_to_completed(
        slurm_cluster, monkeypatch, tmp_path):
    slurm_cluster.activate(monkeypatch)
    root, profile = tmp_path / "runs", _profile(tmp_path)
    args = ["pretrain", *TINY, "--cluster", str(profile), "--name", "e2e", "--runs-root", str(root),
            "--set", "train.max_steps=12", "--set", "checkpoint.every_steps=5"]
    dry = runner.invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert not (root / "e2e").exists()
    dry_script = dry.stdout.split("# sbatch script\n", 1)[1]

    job_id = _pretrain(root, "e2e", profile, 12)
    run = root / "e2e"
    assert slurm_cluster.scontrol_show_job(job_id)["Partition"] == "low"
    row, _ = _wait(root, "e2e", lambda r: r["state"] in ("PENDING", "RUNNING")
                   and r["total"] == 12, timeout=30)
    row, _ = _wait(root, "e2e", lambda r: r["state"] == "RUNNING" and r["step"] > 0)
    assert 0 < row["percent"] <= 100 and row["job_id"] == job_id
    row, seen = _wait(root, "e2e", lambda r: r["state"] in ("COMPLETED", "FAILED"))
    assert row["state"] == "COMPLETED" and row["step"] == 12, seen
    assert slurm_cluster.wait_state(job_id, ["COMPLETED"], source="sacct") == "COMPLETED"
    assert _status(root, "e2e")["state"] == "COMPLETED"  # also once sacct has the end

    # keep_last=2: the two newest regular checkpoints
    assert {p.name for p in (run / "checkpoints").glob("step_*.pt")} >= {
        "step_00000010.pt", "step_00000012.pt"}
    _assert_each_step_once(run, 12)
    assert json.loads((run / "outcome.json").read_text())["status"] == "COMPLETED"
    # --dry-run printed exactly the script submitit wrote for the real job
    submitted = (run / "submitit" / f"{job_id}_submission.sh").read_text()
    assert dry_script.rstrip("\n") == submitted.rstrip("\n")  # print() adds the last newline


# ------------------------------------------------------------------------------ 2. USR2


def test_warning_signal_saves_requeues_the_same_job_and_resumes(
        slurm_cluster, monkeypatch, tmp_path):
    slurm_cluster.activate(monkeypatch)
    root = tmp_path / "runs"
    job_id = _pretrain(root, "usr2", _profile(tmp_path), 40, 100)
    run = root / "usr2"
    _usr2_requeue_and_complete(slurm_cluster, root, "usr2", 40)

    (requeue,) = _requeues(run)
    assert requeue["cause"] == "preemption" and requeue["job_id"] == job_id, requeue
    saved = requeue["step"]
    assert 4 <= saved < 40
    assert (run / "checkpoints" / f"step_{saved:08d}.pt").exists()  # saved at the next step
    assert slurm_cluster.scontrol_show_job(job_id)["Restarts"] == "1"  # same job id
    assert "resumed from" in _log(run) and f"at step {saved}" in _log(run)
    assert [e["event"] for e in _ledger(run)] == ["submit", "start", "requeue", "start", "end"]
    _assert_each_step_once(run, 40)
    row = _status(root, "usr2")
    assert (row["preemptions"], row["timeouts"]) == (1, 0)


# ------------------------------------------------------------------------------ 3. preemption


def test_high_partition_job_preempts_the_run_which_requeues_and_resumes(
        slurm_cluster, monkeypatch, tmp_path):
    slurm_cluster.activate(monkeypatch)
    cpus = slurm_cluster.spec.cpus  # the run takes the whole node: the high job cannot fit beside
    root = tmp_path / "runs"
    job_id = _pretrain(root, "pre", _profile(tmp_path, cpus_per_task=cpus), 40, 100)
    run = root / "pre"
    _wait_steps(run, 4)

    high = slurm_cluster.sbatch("--partition", slurm_cluster.high, f"--cpus-per-task={cpus}",
                                "--wrap", "sleep 1")
    row = _wait_completed(root, "pre", timeout=150)
    assert row["step"] == 40
    assert slurm_cluster.wait_state(high, ["COMPLETED"]) == "COMPLETED"
    (requeue,) = _requeues(run)
    assert requeue["cause"] == "preemption" and requeue["job_id"] == job_id, requeue
    assert "SIGTERM" in _log(run) and "resumed from" in _log(run)
    _assert_each_step_once(run, 40)
    assert slurm_cluster.scontrol_show_job(job_id)["Restarts"] == "1"


# ------------------------------------------------------------------------------ 4. timeout


def test_time_limit_requeues_as_a_timeout_and_the_run_completes(
        slurm_cluster, monkeypatch, tmp_path):
    slurm_cluster.activate(monkeypatch)
    root = tmp_path / "runs"
    # USR2 comes about 20 s into each 1-minute attempt. How many steps fit before it depends
    # on the CPU, so the run starts far longer than one attempt; once the time limit has
    # requeued it, the test shortens it (every attempt reads config.yaml afresh) so that the
    # next attempt finishes well inside its own 20 s.
    profile = _profile(tmp_path, time_min=1, signal_delay_s=40, max_timeouts=8)
    job_id = _pretrain(root, "limit", profile, 100_000, 1000)
    run = root / "limit"
    first = wait_for(lambda: next(iter(_requeues(run)), None), 120,
                     lambda: f"no requeue; log:\n{_log(run)[-3000:]}", interval=0.25)
    total = first["step"] + 10
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["max_steps"] = total
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "max_steps": total}))
    row = _wait_completed(root, "limit", timeout=200)
    assert row["step"] == total
    requeues = _requeues(run)
    assert requeues and all(r["cause"] == "timeout" for r in requeues), requeues
    assert all(r["job_id"] == job_id for r in requeues)
    assert (row["preemptions"], row["timeouts"]) == (0, len(requeues))
    _assert_each_step_once(run, total)


# ------------------------------------------------------------------------------ 5. two tasks


def test_two_tasks_use_gloo_save_together_on_the_signal_and_leave_no_process(
        slurm_cluster, monkeypatch, tmp_path):
    slurm_cluster.activate(monkeypatch)
    root = tmp_path / "runs"
    _pretrain(root, "ddp", _profile(tmp_path, tasks_per_node=2), 40, 100,
              "--set", "train.micro_batch=16")
    run = root / "ddp"
    _usr2_requeue_and_complete(slurm_cluster, root, "ddp", 40)

    attempt = json.loads((run / "attempts" / "attempt-1.json").read_text())
    assert attempt["slurm"]["SLURM_NTASKS"] == "2"
    assert {p.name for p in (run / "heartbeats").glob("rank*.json")} == {"rank0.json", "rank1.json"}
    (requeue,) = _requeues(run)
    assert requeue["cause"] == "preemption"
    from nepa import checkpoint

    payload = checkpoint.load(run / "checkpoints" / f"step_{requeue['step']:08d}.pt")
    assert payload["world_size"] == 2 and len(payload["rng"]) == 2  # both ranks' state
    assert "saved by 2 processes" in _log(run)
    # rank 1 stopped at the same step boundary (rank 0 leaves through submitit's requeue)
    assert f"stopped at step {requeue['step']}" in _log(run, 1)
    _assert_each_step_once(run, 40)
    wait_for(lambda: not _run_processes(run), 30, lambda: f"left behind: {_run_processes(run)}")


# ------------------------------------------------------------------------------ 6. cancel


def test_cancel_ends_the_job_and_its_dependent_jobs(slurm_cluster, monkeypatch, tmp_path):
    slurm_cluster.activate(monkeypatch)
    root = tmp_path / "runs"
    profile = _profile(tmp_path)
    job_id = _pretrain(root, "stop", profile, 10_000, 1000)
    run = root / "stop"
    # past the start, so that the job's own SIGTERM handler is installed when scancel comes
    _wait(root, "stop", lambda r: r["state"] == "RUNNING" and r["step"] >= 3, timeout=60)
    # evaluating a running SLURM run chains the evaluation on it (afterok)
    result = runner.invoke(app, ["eval", "stop", "--tasks", "linprobe", "--cluster", str(profile),
                                 "--format", "json", "--runs-root", str(root)])
    assert result.exit_code == 0, result.output
    (dependent,) = [e["job_id"] for e in _ledger(run) if e["event"] == "eval_submit"]
    (listed,) = json.loads(result.stdout)
    assert (listed["run"], listed["evaluation"], listed["job_id"]) == ("stop", "linprobe-final-seed0", dependent)
    info = slurm_cluster.scontrol_show_job(dependent)
    assert info["JobState"] == "PENDING" and f"afterok:{job_id}" in info.get("Dependency", ""), info

    result = runner.invoke(app, ["cancel", "stop", "--runs-root", str(root)])
    assert result.exit_code == 0, result.output
    assert job_id in result.stdout and dependent in result.stdout
    assert slurm_cluster.wait_state(job_id, ["CANCELLED"]) == "CANCELLED"
    assert slurm_cluster.wait_state(dependent, ["CANCELLED"]) == "CANCELLED"
    # and it stays cancelled: the job must not requeue itself on scancel's SIGTERM (a requeued
    # job would start again after the cred_expire hold)
    time.sleep(slurm_cluster.spec.cred_expire_s + 6)
    assert slurm_cluster.job_state(job_id) == "CANCELLED", slurm_cluster.scontrol_show_job(job_id)
    assert not _requeues(run), _ledger(run)
    assert _status(root, "stop")["state"] == "CANCELLED"
    wait_for(lambda: not _run_processes(run), 30, lambda: f"left behind: {_run_processes(run)}")


# ------------------------------------------------------------------------------ 7. no sacct


def test_status_without_sacct_follows_a_run_and_spots_a_stalled_one(
        slurm_cluster_no_sacct, monkeypatch, tmp_path):
    cluster = slurm_cluster_no_sacct
    cluster.activate(monkeypatch)
    root = tmp_path / "runs"
    profile = _profile(tmp_path)
    _pretrain(root, "quick", profile, 8)
    _pretrain(root, "hang", profile, 10_000, 1000)

    def timed_status(name):
        start = time.monotonic()
        row = _status(root, name)
        assert time.monotonic() - start < 5, "status must not hang on sacct"
        return row

    wait_for(lambda: timed_status("quick")["state"] == "RUNNING", 60,
             lambda: f"quick: {_status(root, 'quick')}")
    row = wait_for(lambda: (r := timed_status("quick"))["state"] in ("COMPLETED", "FAILED") and r,
                   120, lambda: f"quick: {_status(root, 'quick')}; {_log(root / 'quick')[-2000:]}")
    assert row["state"] == "COMPLETED" and row["step"] == 8

    # the table view, in a fresh process: at most one hint about sacct, quickly
    start = time.monotonic()
    done = subprocess.run([NEPACTL, "status", "--runs-root", str(root)],
                          env={**cluster.env, "COLUMNS": "250"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - start < 20
    assert done.stderr.count("sacct") <= 1, done.stderr
    assert "COMPLETED" in done.stdout

    run = root / "hang"
    wait_for(lambda: (run / "heartbeats" / "rank0.json").exists() and len(_metrics(run)) >= 2, 60,
             lambda: f"hang never ran: {_log(run)[-2000:]}")
    assert timed_status("hang")["state"] == "RUNNING"
    pid = json.loads((run / "heartbeats" / "rank0.json").read_text())["pid"]
    job_id = _ledger(run)[0]["job_id"]
    import nepactl.status

    monkeypatch.setattr(nepactl.status, "STALE_HEARTBEAT_S", 3.0)
    os.kill(pid, signal.SIGSTOP)
    try:
        row = wait_for(lambda: (r := timed_status("hang"))["state"] == "STALLED" and r, 30,
                       lambda: f"hang: {_status(root, 'hang')}")
        assert row["job_id"] == job_id
    finally:
        os.kill(pid, signal.SIGCONT)  # a stopped process cannot handle scancel's SIGTERM
        result = runner.invoke(app, ["cancel", "hang", "--runs-root", str(root)])
        assert result.exit_code == 0, result.output
    cluster.wait_state(job_id, ["FAILED", "CANCELLED"])
    assert timed_status("hang")["state"] == "CANCELLED"


# ------------------------------------------------------------------------------ 8. refused


def test_a_job_slurm_refuses_is_one_error_line_and_leaves_nothing(
        slurm_cluster, monkeypatch, tmp_path):
    slurm_cluster.activate(monkeypatch)
    root = tmp_path / "runs"
    result = runner.invoke(app, ["pretrain", *TINY, "--cluster", str(_profile(tmp_path, partition="nope")),
                                 "--name", "refused", "--runs-root", str(root)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: slurm refused the job") and "partition" in lines[0], lines
    assert not root.exists() or list(root.iterdir()) == []


# ------------------------------------------------------------------------------ 9. chained evals


def test_chained_evaluations_wait_for_the_run_follow_a_resume_and_run_at_milestones(
        slurm_cluster, monkeypatch, tmp_path):
    slurm_cluster.activate(monkeypatch)
    root, profile = tmp_path / "runs", _profile(tmp_path)
    chain = tmp_path / "chain.yaml"
    chain.write_text(yaml.safe_dump({"evals": {"at_steps": [5], "sets": [
        "linprobe.epochs=3", "linprobe.lr_grid=[0.1]", "linprobe.blocks=[0]"]}}))
    first = _pretrain(root, "chain", profile, 100_000, 1000, "--evals", "linprobe", "--config", str(chain))
    run = root / "chain"
    (final,) = [e["job_id"] for e in _ledger(run) if e["event"] == "eval_submit"]
    info = slurm_cluster.scontrol_show_job(final)
    assert info["JobState"] == "PENDING" and f"afterok:{first}" in info.get("Dependency", ""), info

    # the job itself submits the milestone's evaluation once step 5 is saved
    milestone = run / "evals" / "linprobe-step5-seed0"
    _wait(root, "chain", lambda r: r["state"] == "RUNNING" and r["step"] >= 6, timeout=90)
    wait_for(lambda: (milestone / "run.json").is_file(), 30, lambda: f"no milestone eval: {_ledger(run)}")

    # a plain scancel fails the dependency; resume points the final evaluation at the new job
    slurm_cluster.run("scancel", first)
    assert slurm_cluster.wait_state(first, ["CANCELLED"]) == "CANCELLED"
    _wait(root, "chain", lambda r: r["state"] == "CANCELLED", timeout=60)
    step = _status(root, "chain")["step"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["max_steps"] = step + 4
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    resumed = runner.invoke(app, ["resume", "chain", "--runs-root", str(root)])
    assert resumed.exit_code == 0, resumed.output
    second = [e for e in _ledger(run) if e["event"] == "submit"][-1]["job_id"]
    assert f"final evaluations now wait for job {second}" in resumed.output, resumed.output
    assert slurm_cluster.wait_state(final, ["CANCELLED"]) == "CANCELLED"
    moved = [e["job_id"] for e in _ledger(run) if e["event"] == "eval_submit"][-1]
    assert f"afterok:{second}" in slurm_cluster.scontrol_show_job(moved).get("Dependency", "")

    _wait_completed(root, "chain", timeout=120)
    results = {name: run / "evals" / name / "result.json"
               for name in ("linprobe-step5-seed0", "linprobe-final-seed0")}
    wait_for(lambda: all(p.is_file() for p in results.values()), 150,
             lambda: f"results missing: {[n for n, p in results.items() if not p.is_file()]}; "
                     f"ledger {_ledger(run)}")
    steps = {n: json.loads(p.read_text())["checkpoint"]["step"] for n, p in results.items()}
    assert steps == {"linprobe-step5-seed0": 5, "linprobe-final-seed0": step + 4}
    # the final evaluation is the newest checkpoint's: nepactl eval does not repeat it
    again = runner.invoke(app, ["eval", "chain", "--tasks", "linprobe", "--cluster", str(profile),
                                "--runs-root", str(root), "--set", "linprobe.epochs=3",
                                "--set", "linprobe.lr_grid=[0.1]", "--set", "linprobe.blocks=[0]"])
    assert again.exit_code == 0 and "skip (done)" in again.output, again.output


# ------------------------------------------------------------------------------ 10. ablations


def test_ablate_is_one_job_array_with_chained_evals_and_retry_failed_resubmits_one(
        slurm_cluster, monkeypatch, tmp_path):
    slurm_cluster.activate(monkeypatch)
    root, profile = tmp_path / "runs", _profile(tmp_path)
    args = ["ablate", "--cluster", str(profile), "--variants", "baseline,no-stopgrad", "--seeds", "0",
            "--steps", "8", "--name", "arr", "--runs-root", str(root), "--tasks", "linprobe",
            "--set", "model.depth=2", "--set", "train.global_batch=32", "--set", "train.micro_batch=32",
            "--set", "data.num_workers=0", "--set", "linprobe.epochs=3", "--set", "linprobe.lr_grid=[0.1]",
            "--set", "linprobe.features=[mean]", "--format", "json"]
    members = {"arr-baseline-s0": 0, "arr-no-stopgrad-s0": 1}
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    submits = {name: [e for e in _ledger(root / name) if e["event"] == "submit"] for name in members}
    (array,) = {s[0]["job_id"].split("_")[0] for s in submits.values()}
    assert {name: s[0]["job_id"] for name, s in submits.items()} == {n: f"{array}_{i}" for n, i in members.items()}
    # the second member fails (cancelled before or while it runs; SLURM keeps no record of an
    # array task cancelled while pending, which status reports as FAILED) ...
    slurm_cluster.run("scancel", f"{array}_1")
    _wait(root, "arr-no-stopgrad-s0", lambda r: r["state"] in ("CANCELLED", "FAILED"), timeout=60)
    evals = {e["eval"]: e["job_id"] for e in _ledger(root / "arr-no-stopgrad-s0") if e["event"] == "eval_submit"}
    assert set(evals) == {"linprobe-final-seed0"}, evals  # queued with the array, waiting for it

    # ... and --retry-failed resubmits it alone, in a new array, its evaluation re-pointed
    retried = runner.invoke(app, [*args, "--retry-failed"])
    assert retried.exit_code == 0, retried.output
    again = [e for e in _ledger(root / "arr-no-stopgrad-s0") if e["event"] == "submit"]
    assert [e["cause"] for e in again] == ["new run", "retry-failed"]
    assert again[-1]["job_id"].split("_")[0] != array
    assert len([e for e in _ledger(root / "arr-baseline-s0") if e["event"] == "submit"]) == 1
    for name in members:
        _wait_completed(root, name, timeout=150)
    results = [root / name / "evals" / "linprobe-final-seed0" / "result.json" for name in members]
    results.append(root / "arr-baseline-s0" / "evals" / "linprobe-random-seed0" / "result.json")
    wait_for(lambda: all(p.is_file() for p in results), 150,
             lambda: f"missing: {[str(p) for p in results if not p.is_file()]}")
    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.output
    rows = {r["variant"]: r for r in json.loads(table.stdout)}
    assert rows["baseline"]["probe_mean"] is not None and rows["no-stopgrad"]["probe_mean"] is not None
    assert rows["no-stopgrad"]["loss"] < rows["baseline"]["loss"]  # towards -1 without stop-gradient
