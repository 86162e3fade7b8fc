"""Run states from run directories and the scheduler; `status` stays fast and torch-free."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from nepactl import runs
from nepactl.status import collect, run_state


def _run_dir(root, name, *, executor="slurm", job_id="123", outcome=None, steps=0, beat_age=None):
    d = root / name
    d.mkdir(parents=True)
    runs.write_json(d / runs.RUN_INFO, {"name": name, "task": "pretrain", "size": "tiny",
                                        "nodes": 1, "procs_per_node": 1, "executor": executor,
                                        "created": time.time(), "max_steps": 10})
    runs.append_ledger(d, "submit", job_id=job_id, executor=executor, cause="new run")
    with open(d / "metrics.jsonl", "w") as f:
        for step in range(1, steps + 1):
            f.write(json.dumps({"step": step, "loss": -0.1 * step, "time": time.time() - steps + step}) + "\n")
    if outcome:
        runs.write_json(d / "outcome.json", {"status": outcome, "step": steps, "total_steps": 10})
    if beat_age is not None:
        (d / "heartbeats").mkdir()
        runs.write_json(d / "heartbeats" / "rank0.json", {"step": steps, "time": time.time() - beat_age})
    return d


@pytest.mark.parametrize(("scheduler", "outcome", "beat_age", "expected"), [
    ("PENDING", None, None, "PENDING"),
    ("RUNNING", None, 5, "RUNNING"),
    ("RUNNING", None, 3600, "STALLED"),
    ("PENDING", {"status": "STOPPED"}, 5, "REQUEUED"),
    ("COMPLETED", {"status": "COMPLETED"}, 5, "COMPLETED"),
    (None, {"status": "COMPLETED"}, 5, "COMPLETED"),
    ("FAILED", {"status": "DIVERGED"}, 5, "DIVERGED"),
    ("FAILED", None, 5, "FAILED"),
    ("CANCELLED by 0", None, None, "CANCELLED"),
    (None, None, None, "FAILED"),
])
def test_state_rules(scheduler, outcome, beat_age, expected):
    ledger = [{"event": "submit", "job_id": "1"}]
    assert run_state(ledger, outcome, scheduler, "slurm", False, beat_age) == expected


def test_cancel_in_ledger_wins():
    ledger = [{"event": "submit", "job_id": "1"}, {"event": "cancel"}]
    assert run_state(ledger, None, None, "slurm", False, None) == "CANCELLED"


def _fake_bin(directory, name, script):
    path = directory / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_status_with_a_failing_sacct_uses_squeue_and_the_run_directory(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_bin(bin_dir, "squeue", 'echo "101 RUNNING"')
    calls = tmp_path / "sacct-calls"
    _fake_bin(bin_dir, "sacct", f'echo call >> {calls}; echo "sacct: error: slurmdbd down" >&2; exit 1')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    root = tmp_path / "runs"
    _run_dir(root, "running", job_id="101", steps=4, beat_age=1)
    _run_dir(root, "done", job_id="102", steps=10, outcome="COMPLETED", beat_age=1)
    _run_dir(root, "gone", job_id="103", steps=3)
    rows, notes = collect(root)
    states = {r.run: r.state for r in rows}
    assert states == {"running": "RUNNING", "done": "COMPLETED", "gone": "FAILED"}
    assert calls.read_text().count("call") == 1  # one try, then sacct is left alone
    assert len(notes) == 1 and "sacct unavailable" in notes[0]
    running = next(r for r in rows if r.run == "running")
    assert running.step == 4 and running.percent == pytest.approx(40.0) and running.loss == pytest.approx(-0.4)


def test_status_json_and_table_without_torch(tmp_path):
    root = tmp_path / "runs"
    _run_dir(root, "a", executor="local", job_id="999999", steps=10, outcome="COMPLETED")
    code = ("import sys, json; from nepactl.app import app\n"
            f"try:\n    app(['status', '--json', '--runs-root', {str(root)!r}])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(done.stdout)
    assert row["run"] == "a" and row["state"] == "COMPLETED" and row["step"] == 10
    table = subprocess.run([sys.executable, "-c", code.replace("'--json', ", "")], capture_output=True,
                           text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    line = next(x for x in table.stdout.splitlines() if " a " in x or x.strip().startswith("a "))
    assert "COMPLETED" in line and "tiny" in line, table.stdout


def test_create_run_is_atomic_and_exclusive(tmp_path):
    def fill(d):
        (d / runs.RUN_INFO).write_text("{}")

    runs.create_run(tmp_path, "x", fill)
    with pytest.raises(runs.CliError, match="already exists.*nepactl resume x"):
        runs.create_run(tmp_path, "x", fill)

    def broken(d):
        (d / "half").write_text("...")
        raise RuntimeError("disk died")

    with pytest.raises(RuntimeError):
        runs.create_run(tmp_path, "y", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # nothing half-made


def test_concurrent_creations_of_one_name_have_one_winner(tmp_path):
    code = ("import sys, time; from pathlib import Path; from nepactl import runs\n"
            "def fill(d):\n    (d / 'run.json').write_text(sys.argv[1]); time.sleep(0.5)\n"
            "try:\n    runs.create_run(Path(sys.argv[2]), 'same', fill); print('won')\n"
            "except runs.CliError as e:\n    print('lost')\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True) for i in range(4)]
    results = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert results == ["lost", "lost", "lost", "won"]
    assert [p.name for p in tmp_path.iterdir()] == ["same"]


@pytest.mark.parametrize("name", ["a;rm -rf ~", "$(touch pwned)", "../escape", ".hidden", "a b"])
def test_run_names_with_shell_syntax_are_refused(name):
    with pytest.raises(runs.CliError, match="may only use letters"):
        runs.check_name(name)


def test_evaluations_show_per_task_and_never_lend_their_job_id(tmp_path):
    run = _run_dir(tmp_path, "r", executor="local", job_id="11", outcome="COMPLETED", steps=10)
    runs.append_ledger(run, "eval_submit", job_id="99", executor="local", eval="linprobe-step10-seed0")
    evals = run / "evals"
    for name, task, files in [("linprobe-step10-seed0", "linprobe", {"result.json": {"metrics": []}}),
                              ("finetune-step10-seed0", "finetune", {"progress.json": {"step": 3, "total": 12}}),
                              ("ade20k-step10-seed0", "ade20k", {"outcome.json": {"status": "FAILED"}})]:
        (evals / name).mkdir(parents=True)
        runs.write_json(evals / name / runs.RUN_INFO, {"task": task})
        for file, content in files.items():
            runs.write_json(evals / name / file, content)
    (row,), _ = collect(tmp_path)
    assert row.job_id == "11" and row.state == "COMPLETED"
    assert row.evals == "ade20k 0/1 (failed), finetune 0/1 (25%), linprobe 1/1"


@pytest.mark.parametrize("job, tasks", [("77", ["77"]), ("77_3", ["77_3"]), ("77_[0-2]", ["77_0", "77_1", "77_2"]),
                                        ("77_[1,4-5%2]", ["77_1", "77_4", "77_5"])])
def test_folded_array_ids_of_squeue_and_sacct_are_unfolded(job, tasks):
    from nepactl.status import array_tasks

    assert array_tasks(job) == tasks


def test_failed_runs_and_evaluations_say_why(tmp_path):
    from nepactl.results import gather

    run = _run_dir(tmp_path, "r", executor="local", job_id="999999", steps=3)
    runs.write_json(run / "outcome.json", {"status": "FAILED", "error": "boom",
                                           "reason": "RuntimeError: CUDA not visible"})
    evals = run / "evals" / "linprobe-step3-seed0"
    evals.mkdir(parents=True)
    runs.write_json(evals / runs.RUN_INFO, {"task": "linprobe", "executor": "local"})
    runs.append_ledger(evals, "submit", job_id="999998", executor="local", cause="new run")
    runs.write_json(evals / "outcome.json", {"status": "FAILED", "error": "x",
                                             "reason": "DataError: no val split"})
    (row,), _ = collect(tmp_path)
    assert row.state == "FAILED" and row.reason == "RuntimeError: CUDA not visible"
    assert row.evals == "linprobe 0/1 (failed: DataError: no val split)"
    (cell,) = [r for r in gather(tmp_path, reference=False) if r.task == "linprobe"]
    assert cell.cell() == "failed: DataError: no val split"
