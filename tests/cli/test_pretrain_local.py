"""`nepactl pretrain` end to end through submitit's local executor: status, resume, cancel."""

from __future__ import annotations

import json
import os
import time

import psutil
import pytest
from typer.testing import CliRunner

from nepactl.app import app

runner = CliRunner()
TINY = ["--size", "tiny", "--cluster", "local", "--set", "model.depth=2",
        "--set", "train.global_batch=32", "--set", "train.micro_batch=32"]


def _status(root, name):
    result = runner.invoke(app, ["status", name, "--json", "--runs-root", str(root)])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)[0]


def _wait(root, name, predicate, timeout=180):
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        row = _status(root, name)
        seen.append((row["state"], row["step"]))
        if predicate(row):
            return row, seen
        time.sleep(0.3)
    raise AssertionError(f"timed out; states seen: {seen[-10:]}")


@pytest.mark.slow
def test_submit_progress_completed_and_resume_refused(tmp_path):
    root = tmp_path / "runs"
    start = time.time()
    result = runner.invoke(app, ["pretrain", *TINY, "--name", "e2e", "--set", "train.max_steps=30",
                                 "--runs-root", str(root)])
    assert result.exit_code == 0, result.output
    assert time.time() - start < 30  # returns once queued, not when done
    run = root / "e2e"
    for name in ("config.yaml", "cluster.yaml", "run.json", "ledger.jsonl", "code/nepa/model.py"):
        assert (run / name).exists(), name
    row, _ = _wait(root, "e2e", lambda r: r["state"] == "RUNNING" and r["step"] > 0)
    assert row["total"] == 30 and 0 < row["percent"] <= 100
    row, seen = _wait(root, "e2e", lambda r: r["state"] == "COMPLETED")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 31))  # every step once
    losses = [r["loss"] for r in records]
    # status shows the job's own last loss (that the objective learns is shown by the probe tests)
    assert row["step"] == 30 and row["loss"] == pytest.approx(losses[-1])
    assert (run / "checkpoints" / "step_00000030.pt").exists()
    attempt = json.loads((run / "attempts" / "attempt-1.json").read_text())
    assert attempt["code"] == str((run / "code").resolve())  # the job ran the snapshot
    result = runner.invoke(app, ["resume", "e2e", "--runs-root", str(root)])
    assert result.exit_code == 2 and "is COMPLETED" in result.output


@pytest.mark.slow
def test_cancel_then_resume_continues_from_the_checkpoint(tmp_path):
    root = tmp_path / "runs"
    result = runner.invoke(app, ["pretrain", *TINY, "--name", "long", "--set", "train.max_steps=400",
                                 "--set", "checkpoint.every_steps=5", "--runs-root", str(root)])
    assert result.exit_code == 0, result.output
    job_id = int(json.loads((root / "long" / "ledger.jsonl").read_text().splitlines()[0])["job_id"])
    _wait(root, "long", lambda r: r["state"] == "RUNNING" and r["step"] >= 6)
    result = runner.invoke(app, ["cancel", "long", "--runs-root", str(root)])
    assert result.exit_code == 0, result.output
    assert not psutil.pid_exists(job_id) or psutil.Process(job_id).status() == psutil.STATUS_ZOMBIE
    row = _status(root, "long")
    assert row["state"] == "CANCELLED"
    stopped_at = row["step"]
    result = runner.invoke(app, ["resume", "long", "--runs-root", str(root)])
    assert result.exit_code == 0, result.output
    row, _ = _wait(root, "long", lambda r: r["state"] == "RUNNING" and r["step"] > stopped_at)
    again = runner.invoke(app, ["cancel", "long", "--runs-root", str(root)])
    assert again.exit_code == 0 and "cancelled long" in again.output, again.output
    assert _status(root, "long")["state"] == "CANCELLED"
    log = (root / "long" / "submitit")
    text = "".join(p.read_text() for p in log.glob("*_0_log.err"))
    assert "resumed from" in text  # continued from its checkpoint, not from scratch
    events = [json.loads(line)["event"] for line in (root / "long" / "ledger.jsonl").read_text().splitlines()]
    assert events.count("submit") == 2 and events.count("cancel") == 2


def test_missing_data_path_fails_before_anything_is_created(tmp_path):
    result = runner.invoke(app, ["pretrain", "--size", "tiny", "--cluster", "local",
                                 "--set", "data.source=imagefolder", "--set", f"data.path={tmp_path}/nope",
                                 "--runs-root", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "nope" in result.output
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []


@pytest.mark.slow
def test_editing_the_source_after_submit_changes_nothing_the_job_runs(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    checkout = tmp_path / "checkout"  # the user's working copy, edited while the job is queued
    for package in ("nepa", "nepactl", "templates"):
        shutil.copytree(repo / package, checkout / package, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(checkout),
           "NEPA_TEMPLATES": str(checkout / "templates")}
    root = tmp_path / "runs"
    cli = [sys.executable, "-m", "nepactl"]
    done = subprocess.run([*cli, "pretrain", *TINY, "--name", "snap", "--set", "train.max_steps=60",
                           "--set", "checkpoint.every_steps=5", "--runs-root", str(root)],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    loop = checkout / "nepa" / "train" / "loop.py"
    loop.write_text("raise RuntimeError('edited after submit')\n" + loop.read_text())
    _wait(root, "snap", lambda r: r["state"] == "RUNNING" and r["step"] >= 6)
    subprocess.run([*cli, "cancel", "snap", "--runs-root", str(root)], env=env, check=True, timeout=60)
    done = subprocess.run([*cli, "resume", "snap", "--runs-root", str(root)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    row, _ = _wait(root, "snap", lambda r: r["state"] in ("COMPLETED", "FAILED"), timeout=300)
    assert row["state"] == "COMPLETED" and row["step"] == 60
    attempts = sorted((root / "snap" / "attempts").glob("attempt-*.json"))
    assert len(attempts) == 2
    assert all(json.loads(a.read_text())["code"] == str((root / "snap" / "code").resolve()) for a in attempts)


def test_debug_profile_runs_in_process(tmp_path):
    root = tmp_path / "runs"
    result = runner.invoke(app, ["pretrain", "--size", "tiny", "--cluster", "debug", "--name", "dbg",
                                 "--set", "model.depth=1", "--set", "train.global_batch=32",
                                 "--set", "train.micro_batch=32", "--set", "train.max_steps=3",
                                 "--runs-root", str(root)])
    assert result.exit_code == 0, result.output
    assert json.loads((root / "dbg" / "outcome.json").read_text())["status"] == "COMPLETED"
    assert _status(root, "dbg")["state"] == "COMPLETED"
