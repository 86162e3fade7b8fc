"""Evaluations chained by a pretraining run (nepactl.chain): milestones, completion, bad input."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from nepa.config import ConfigError
from nepactl.app import app
from nepactl.specs import EvalChainConfig

runner = CliRunner()
TINY = ["--size", "tiny", "--set", "model.depth=2", "--set", "train.global_batch=32",
        "--set", "train.micro_batch=32", "--set", "train.max_steps=12",
        "--set", "checkpoint.every_steps=10", "--set", "checkpoint.keep_last=1"]
FAST_PROBE = ["linprobe.epochs=3", "linprobe.lr_grid=[0.1]", "linprobe.blocks=[0]"]


def _chain_file(tmp_path, **fields) -> str:
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump({"evals": {"sets": FAST_PROBE, **fields}}))
    return str(path)


def _ledger(run) -> list[dict]:
    return [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines()]


def test_milestone_and_final_evaluations_run_and_are_not_repeated(tmp_path):
    root = tmp_path / "runs"
    result = runner.invoke(app, ["pretrain", *TINY, "--cluster", "debug", "--name", "chain",
                                 "--runs-root", str(root), "--evals", "linprobe",
                                 "--config", _chain_file(tmp_path, at_steps=[4])])
    assert result.exit_code == 0, result.output
    assert "chained evaluations (linprobe) at step 4, completion" in result.output
    run = root / "chain"
    # the milestone checkpoint is kept for its evaluation although keep_last=1
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*.pt")) == [
        "step_00000004.pt", "step_00000012.pt"]
    for name, step in (("linprobe-step4-seed0", 4), ("linprobe-step12-seed0", 12)):
        doc = json.loads((run / "evals" / name / "result.json").read_text())
        assert doc["checkpoint"]["step"] == step and doc["task"] == "linprobe"
        assert doc["protocol"] == "demo"
    chained = [e for e in _ledger(run) if e["event"] == "chain_submit"]
    assert [(e["why"], e["step"], len(e["job_ids"])) for e in chained] == [
        ("milestone", 4, 1), ("on completion", 12, 1)]
    again = runner.invoke(app, ["eval", "chain", "--tasks", "linprobe", "--cluster", "debug",
                                "--runs-root", str(root), *sum((["--set", s] for s in FAST_PROBE), [])])
    assert again.exit_code == 0 and "skip (done)" in again.output, again.output


def test_local_job_submits_its_chained_evaluations_as_local_jobs(tmp_path, monkeypatch):
    """The path `make demo` users take: the training job runs under the local executor, in its
    run directory, and submits the milestone and final evaluations as local jobs itself; the
    default relative runs root, started from the project directory."""
    import time

    from nepa import rundir

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NEPA_RUNS", raising=False)
    result = runner.invoke(app, ["pretrain", *TINY, "--cluster", "local", "--name", "lc", "--evals", "linprobe",
                                 "--config", _chain_file(tmp_path, at_steps=[4])])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "lc"
    results = [run / "evals" / name / "result.json" for name in ("linprobe-step4-seed0", "linprobe-step12-seed0")]
    deadline = time.time() + 300
    while not all(p.is_file() for p in results):
        failed = [d for d in (run / "evals").glob("*") if (rundir.read_json(d / "outcome.json") or {}).get(
            "status") == "FAILED"] if (run / "evals").is_dir() else []
        logs = "".join(p.read_text() for p in run.rglob("*_log.err"))
        assert not failed and time.time() < deadline, logs[-3000:]
        time.sleep(1)
    assert [json.loads(p.read_text())["checkpoint"]["step"] for p in results] == [4, 12]
    submits = [e for e in _ledger(run) if e["event"] == "eval_submit"]
    assert len(submits) == 2 and all(e["executor"] == "local" for e in submits)
    assert all(e["job_id"].isdigit() for e in submits)  # controller pids: real local jobs


@pytest.mark.parametrize("extra, message", [
    (["--set", "evals.tasks=[imagenet-val]"], "evals.tasks: unknown or unchainable task 'imagenet-val'"),
    (["--set", "evals.at_steps=[5]"], "evals.at_steps: milestones need evals.tasks"),
    (["--evals", "linprobe", "--set", "evals.sets=[linprobe.nonsense=1]"], "nonsense"),
    (["--evals", "ade20k", "--set", "evals.sets=[segmentation.data_root=/nowhere]"],
     "evals (chained ade20k): segmentation.data_root: /nowhere holds no images/"),
    (["--evals", "linprob"], "linprob"),
])
def test_bad_chained_evaluations_fail_before_anything_is_submitted(tmp_path, extra, message):
    root = tmp_path / "runs"
    result = runner.invoke(app, ["pretrain", *TINY, "--cluster", "local", "--name", "bad",
                                 "--runs-root", str(root), *extra])
    assert result.exit_code != 0
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (root / "bad").exists()


def test_dry_run_shows_the_chain_and_the_kept_milestone_checkpoints(tmp_path):
    result = runner.invoke(app, ["pretrain", *TINY, "--cluster", "local", "--dry-run",
                                 "--evals", "linprobe,finetune", "--set", "evals.at_steps=[8,4]",
                                 "--set", "checkpoint.keep_steps=[2]", "--runs-root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    spec = yaml.safe_load(result.stdout.split("# derived")[0])
    assert spec["evals"]["tasks"] == ["linprobe", "finetune"] and spec["evals"]["at_steps"] == [8, 4]
    assert spec["checkpoint"]["keep_steps"] == [2, 4, 8]


def test_the_chainable_tasks_are_the_evaluation_tasks_less_imagenet_val():
    from nepa.evals.spec import TASKS

    for task in TASKS:
        if task == "imagenet-val":
            with pytest.raises(ConfigError):
                EvalChainConfig(tasks=(task,))
        else:
            assert EvalChainConfig(tasks=(task,)).active
