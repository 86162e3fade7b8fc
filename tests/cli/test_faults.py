"""Faults and hostile input on the user's path: one clear line, nothing lost, nothing half-done."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from nepa import rundir
from nepactl.app import app

runner = CliRunner()
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
