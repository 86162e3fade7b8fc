"""Faults and hostile input on the user's path: one clear line, nothing lost, nothing half-done."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from nepa import rundir
from nepactl.app import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
TINY = ["--size", "tiny", "--set", "model.depth=1", "--set", "model.dim=32", "--set", "model.num_heads=2",
        "--set", "model.mlp_dim=64", "--set", "train.global_batch=16", "--set", "train.micro_batch=16",
        "--set", "train.max_steps=4", "--set", "checkpoint.every_steps=2"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A COMPLETED 4-step run (debug executor: in-process, the same submit path)."""
    root = tmp_path_factory.mktemp("faults") / "runs"
    done = runner.invoke(app, ["pretrain", *TINY, "--cluster", "debug", "--name", "done", "--runs-root", str(root)])
    assert done.exit_code == 0, done.output
    return root


@pytest.fixture
def root(finished, tmp_path):
    copy = tmp_path / "runs"
    shutil.copytree(finished, copy)
    return copy


def test_a_run_name_too_long_for_the_filesystem_is_one_line(tmp_path):
    result = runner.invoke(app, ["pretrain", *TINY, "--cluster", "debug", "--name", "x" * 260,
                                 "--runs-root", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "longer than 100" in result.output and "Traceback" not in result.output
    assert not any((tmp_path / "runs").iterdir()) if (tmp_path / "runs").exists() else True


def test_resume_without_a_config_fails_before_submitting(root):
    run_dir = root / "done"
    (run_dir / "outcome.json").unlink()  # no longer COMPLETED: a resume would submit
    (run_dir / "config.yaml").unlink()
    before = rundir.read_jsonl(run_dir / rundir.LEDGER)
    result = runner.invoke(app, ["resume", "done", "--runs-root", str(root)])
    assert result.exit_code == 2 and "cannot be resumed" in result.output and "config.yaml" in result.output
    assert rundir.read_jsonl(run_dir / rundir.LEDGER) == before  # nothing submitted


def test_cancel_of_a_finished_run_changes_nothing_and_says_so(root):
    before = (root / "done" / rundir.LEDGER).read_bytes()
    result = runner.invoke(app, ["cancel", "done", "--runs-root", str(root)])
    assert result.exit_code == 0 and "nothing cancelled" in result.output
    assert (root / "done" / rundir.LEDGER).read_bytes() == before
    listed = runner.invoke(app, ["status", "--json", "--runs-root", str(root)])
    assert json.loads(listed.output)[0]["state"] == "COMPLETED"


def test_garbage_in_the_latest_pointer_falls_back_to_the_checkpoint_files(root):
    import nepa

    (root / "done" / "checkpoints" / rundir.LATEST).write_bytes(b"\xff\xfe\x00garbage/../../x")
    assert rundir.read_pointer(root / "done" / "checkpoints") is None
    assert rundir.checkpoint_files(root / "done")[0].name == rundir.checkpoint_name(4)
    assert nepa.load_pretrained(root / "done") is not None
    result = runner.invoke(app, ["eval", "done", "--tasks", "linprobe", "--dry-run", "--runs-root", str(root)])
    assert result.exit_code == 0 and "linprobe-step4-seed0: submit" in result.output, result.output


def test_status_lists_every_run_when_one_ledger_or_run_json_is_garbage(root):
    shutil.copytree(root / "done", root / "bad-ledger")
    shutil.copytree(root / "done", root / "bad-info")
    with open(root / "bad-ledger" / rundir.LEDGER, "ab") as f:
        f.write(b"\xff\xfe not utf-8 \x80\n{\"event\": \"submit\", \"job_id\": \n")  # and a torn line
    (root / "bad-info" / rundir.RUN_INFO).write_bytes(b"\x80\x81 not json")
    result = runner.invoke(app, ["status", "--json", "--runs-root", str(root)])
    assert result.exit_code == 0, result.output
    assert {r["run"] for r in json.loads(result.output)} >= {"done", "bad-ledger"}


def test_a_job_that_raises_records_its_end_and_reason(root, monkeypatch):
    from nepactl.launch import job_for
    from nepactl.submit import submit_job

    monkeypatch.setattr("pdb.post_mortem", lambda *args: None)  # submitit's debug executor would stop here
    run_dir = root / "done"
    (run_dir / "config.yaml").write_text("model: {dim: -1}\n")  # what the job reads, now invalid
    with pytest.raises(Exception, match="model.dim"):
        submit_job(run_dir, job_for(run_dir), attempt_cause="test")
    end = rundir.read_jsonl(run_dir / rundir.LEDGER)[-1]
    assert end["event"] == "end" and end["status"] == "FAILED" and "model.dim" in end["reason"]
    assert rundir.read_json(run_dir / rundir.OUTCOME)["status"] == "FAILED"


# -- local job control: a recorded pid is trusted only with its start time and command line ---


def _as_local_job(run_dir, pid: int, process: dict | None) -> None:
    """Make a finished run look like one whose local job (controller `pid`) is still going."""
    from dataclasses import replace

    (run_dir / rundir.OUTCOME).unlink()
    rundir.write_run_info(run_dir, replace(rundir.read_run_info(run_dir), executor="local"))
    record = {"event": "submit", "job_id": str(pid), "executor": "local", "cause": "test"}
    rundir.append_jsonl(run_dir / rundir.LEDGER, record | ({"process": process} if process else {}))


@pytest.fixture
def bystander():
    """An unrelated process (named like a submitit controller, to beat the old name check)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "submitit-lookalike"])
    yield proc
    proc.kill()
    proc.wait()


def test_cancel_never_signals_a_process_that_reused_a_recorded_pid(root, bystander):
    from nepactl.status import process_identity
    from nepactl.submit import cancel_jobs

    now = process_identity(bystander.pid)
    recorded = {"started": now["started"] - 3600, "cmdline": ["python", "-m", "submitit.local._local", "x"]}
    _as_local_job(root / "done", bystander.pid, recorded)  # the controller died; its pid was reused
    listed = runner.invoke(app, ["status", "--json", "--runs-root", str(root)])
    assert json.loads(listed.output)[0]["state"] == "FAILED"
    result = runner.invoke(app, ["cancel", "done", "--runs-root", str(root)])
    assert result.exit_code == 0 and "nothing cancelled" in result.output
    cancel_jobs(root / "done", [(str(bystander.pid), "local")])  # even when asked directly
    assert bystander.poll() is None, "an unrelated process was signalled"


def test_cancel_stops_the_controller_it_recorded(root, bystander):
    from nepactl.status import process_identity

    _as_local_job(root / "done", bystander.pid, process_identity(bystander.pid))
    listed = runner.invoke(app, ["status", "--json", "--runs-root", str(root)])
    assert json.loads(listed.output)[0]["state"] == "RUNNING"
    result = runner.invoke(app, ["cancel", "done", "--runs-root", str(root)])
    assert result.exit_code == 0 and f"jobs {bystander.pid}" in result.output
    assert bystander.wait(timeout=10) is not None


# -- status: one unreadable run hides no other -------------------------------------------------


def test_status_lists_an_unreadable_run_with_its_reason(root):
    """Root reads everything: `status` runs without the capabilities that bypass file modes
    (setpriv), so a run of mode 000 is unreadable to it as to any user."""
    import os
    import subprocess
    import sys

    shutil.copytree(root / "done", root / "locked")
    (root / "locked").chmod(0)
    try:
        code = ("import json, sys; from pathlib import Path; from nepactl.status import collect; "
                "rows, notes = collect(Path(sys.argv[1])); "
                "print(json.dumps([[r.run, r.state, r.problem] for r in rows])); print(notes)")
        done = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search",
                               sys.executable, "-c", code, str(root)], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stderr
        rows = json.loads(done.stdout.splitlines()[0])
        assert rows[0][:2] == ["done", "COMPLETED"]
        assert rows[1][:2] == ["locked", "UNREADABLE"] and "Permission denied" in rows[1][2]
        assert "locked is unreadable (Permission denied" in done.stdout.splitlines()[1]
    finally:
        (root / "locked").chmod(0o755)


def test_status_marks_a_run_whose_files_are_malformed(root):
    (root / "done" / rundir.METRICS).write_text('{"step": "seven", "loss": 0.1}\n')
    result = runner.invoke(app, ["status", "--json", "--runs-root", str(root)])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["state"] == "UNREADABLE" and "malformed" in row["problem"]


# -- bounded YAML --------------------------------------------------------------------------------


def _alias_bomb(levels: int = 9) -> str:
    lines = ['  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        name, prev = chr(ord("a") + i), chr(ord("a") + i - 1)
        lines.append(f"  {name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    return "cluster:\n sbatch_extra:\n" + "\n".join(" " + line for line in lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_in_one_line(tmp_path):
    import time

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb())
    start = time.perf_counter()
    result = runner.invoke(app, ["pretrain", *TINY, "--cluster", "debug", "--config", str(bomb), "--dry-run",
                                 "--runs-root", str(tmp_path / "runs")])
    assert time.perf_counter() - start < 10
    assert result.exit_code == 2 and "aliases (*name) expand to over 100000 values" in result.output
    assert "Traceback" not in result.output and str(bomb) in result.output


def test_oversized_and_deeply_nested_yaml_are_refused(tmp_path):
    from nepa.config import ConfigError, load_yaml

    big = tmp_path / "big.yaml"
    big.write_text("train:\n  max_steps: 4\n" + "# padding\n" * 200_000)
    result = runner.invoke(app, ["render", "--size", "tiny", "--config", str(big)])
    assert result.exit_code == 2 and "MiB of YAML, over the 1 MiB" in result.output
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_yaml("[" * 5000 + "]" * 5000, "deep.yaml")
    assert load_yaml("a: &x {b: 1}\nc: *x\n", "ok.yaml") == {"a": {"b": 1}, "c": {"b": 1}}  # aliases still work


def test_yaml_tags_and_bad_numbers_are_refused(tmp_path):
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    result = runner.invoke(app, ["render", "--size", "tiny", "--config", str(tagged)])
    assert result.exit_code == 2 and "not valid YAML" in result.output and "pwned" not in result.output
    for value in ("nan", "-3", "1e999", "four"):
        result = runner.invoke(app, ["render", "--size", "tiny", "--set", f"train.max_steps={value}"])
        assert result.exit_code == 2 and "train.max_steps" in result.output, (value, result.output)


# -- requeue budgets -----------------------------------------------------------------------------


def test_resume_starts_fresh_requeue_budgets_and_can_raise_them(root):
    from nepactl.preempt import requeue_limit_reached

    run_dir = root / "done"
    limit = yaml.safe_load((run_dir / "cluster.yaml").read_text())["max_timeouts"]
    for _ in range(limit + 1):
        rundir.append_jsonl(run_dir / rundir.LEDGER, {"event": "requeue", "cause": "timeout"})
    assert f"{limit + 1} timeouts since the last submission exceed cluster.max_timeouts={limit}" in \
        requeue_limit_reached(run_dir, "timeout")
    (run_dir / rundir.OUTCOME).unlink()  # the job ended FAILED at the limit
    result = runner.invoke(app, ["resume", "done", "--max-timeouts", "60", "--max-preemptions", "70",
                                 "--runs-root", str(root)])
    assert result.exit_code == 0, result.output
    assert requeue_limit_reached(run_dir, "timeout") is None
    cluster = yaml.safe_load((run_dir / "cluster.yaml").read_text())
    assert (cluster["max_timeouts"], cluster["max_preemptions"]) == (60, 70)
    assert any(e["event"] == "budget" and e["max_timeouts"] == 60 for e in rundir.read_jsonl(run_dir / rundir.LEDGER))


def test_a_diverged_run_records_its_end_with_a_reason(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from nepa.train import RunResult, RunStatus
    from nepactl import preempt
    from nepactl.trainjob import TrainJob

    job = TrainJob(tmp_path)
    job._trainer = SimpleNamespace(fit=lambda: RunResult(RunStatus.DIVERGED, 5, 10),
                                   request_stop=lambda reason: None)
    job._rank = 0
    env = SimpleNamespace(job_id="7", global_rank=0, num_tasks=1)
    monkeypatch.setattr(preempt, "_start_attempt", lambda directory: env)
    monkeypatch.setattr(preempt, "_install_stop_handlers", lambda request_stop: [])  # pytest's own stay
    monkeypatch.setattr(preempt, "_ignore_stop_signals", lambda: None)
    monkeypatch.setattr(TrainJob, "start", lambda self, directory, env: job._trainer.request_stop)
    monkeypatch.setattr(TrainJob, "finished", lambda self, directory, env, ending: None)
    with pytest.raises(SystemExit) as exited:
        job()
    assert exited.value.code == 3
    end = rundir.read_jsonl(tmp_path / rundir.LEDGER)[-1]
    assert end["event"] == "end" and end["status"] == "DIVERGED" and "non-finite loss" in end["reason"]
