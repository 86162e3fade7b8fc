"""The submitit job wrapper: warning signal -> collective save -> requeue -> resume -> done."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import submitit

from nepa.train.metrics import read_metrics
from nepactl.trainjob import TrainJob
from tests.train.runs import make_run


def _heartbeat(run_dir):
    path = run_dir / "heartbeats" / "rank0.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


@pytest.mark.slow
def test_warning_signal_saves_requeues_and_resumes_through_the_local_executor(tmp_path):
    run = make_run(tmp_path / "run", train={"max_steps": 60}, checkpoint={"every_steps": 1000})
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(timeout_min=15)  # >= 10 min: an early signal is a preemption
    job = executor.submit(TrainJob(run))
    deadline = time.time() + 120
    while time.time() < deadline:
        records = read_metrics(run)
        beat = _heartbeat(run)
        if records and records[-1]["step"] >= 3 and beat:
            break
        time.sleep(0.02)
    else:
        pytest.fail("the job did not reach step 3:\n" + job.stderr())
    first_pid = beat["pid"]
    os.kill(first_pid, signal.SIGUSR2)
    outcome = job.result()
    assert outcome["status"] == "COMPLETED" and outcome["step"] == 60
    assert _heartbeat(run)["pid"] != first_pid  # a second start resumed the run
    log = job.stderr() + job.stdout()
    assert "stop requested (SIGUSR2)" in log and "resumed from" in log
    assert "preempted" in log  # submitit classified and requeued it
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 61))
    ledger = [json.loads(line) for line in (run / "ledger.jsonl").read_text().splitlines()]
    assert [e["event"] for e in ledger] == ["start", "requeue", "start", "end"]
    assert ledger[1]["cause"] == "preemption" and ledger[3]["status"] == "COMPLETED"


def test_requeue_limits_count_preemptions_and_timeouts_separately(tmp_path):
    import yaml

    from nepactl import runs
    from nepactl.preempt import requeue_limit_reached

    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump({"max_preemptions": 2, "max_timeouts": 1}))
    for cause in ("preemption", "preemption", "timeout"):
        runs.append_ledger(tmp_path, "requeue", cause=cause)
    assert requeue_limit_reached(tmp_path, "preemption") is None
    assert requeue_limit_reached(tmp_path, "timeout") is None
    runs.append_ledger(tmp_path, "requeue", cause="preemption")
    assert requeue_limit_reached(tmp_path, "preemption").startswith(
        "3 preemptions since the last submission exceed cluster.max_preemptions=2; nepactl resume "
        "--max-preemptions N")
    runs.append_ledger(tmp_path, "requeue", cause="timeout")
    assert "2 timeouts since the last submission exceed" in requeue_limit_reached(tmp_path, "timeout")


def test_stop_cause_comes_from_slurm_time_left(monkeypatch):
    import subprocess as sp

    from nepactl import preempt as job

    assert job._parse_slurm_duration("1-02:03:04") == 93784
    assert job._parse_slurm_duration("05:00") == 300 and job._parse_slurm_duration("UNLIMITED") is None
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setattr(sp, "run", lambda *a, **k: sp.CompletedProcess(a, 0, stdout="00:01:30\n"))
    assert job.classify_stop(signal.SIGUSR2, None) == "timeout"
    monkeypatch.setattr(sp, "run", lambda *a, **k: sp.CompletedProcess(a, 0, stdout="3:10:00\n"))
    assert job.classify_stop(signal.SIGUSR2, None) == "preemption"
    assert job.classify_stop(signal.SIGTERM, None) == "preemption"


@pytest.mark.slow
def test_eval_job_saves_on_the_signal_requeues_and_finishes_with_a_result(tmp_path):
    """Evaluations are jobs like pretraining: signal -> save -> requeue -> resume -> result.json."""
    import psutil

    from nepa import checkpoint
    from nepa.data import DataConfig
    from nepa.evals.config import FinetuneConfig
    from nepa.evals.spec import SPEC_FILE, EvalSpec, dump_spec
    from nepa.model import build_model
    from nepactl import runs
    from nepactl.evaljob import EvalJob

    model = build_model("tiny", depth=2)
    weights = checkpoint.save(tmp_path / "pretrained.pt",
                              checkpoint.model_payload(model.cfg, model.state_dict(), step=5))
    eval_dir = tmp_path / "evals" / "finetune"
    eval_dir.mkdir(parents=True)
    spec = EvalSpec(task="finetune", weights=str(weights), protocol="demo",
                    data=DataConfig(source="digits", num_workers=0),
                    finetune=FinetuneConfig(global_batch=32, micro_batch=32, max_steps=40, epoch_steps=10,
                                            eval_batch=300, auto_augment=None))
    (eval_dir / SPEC_FILE).write_text(dump_spec(spec))
    runs.write_json(eval_dir / runs.RUN_INFO, {"run": "base", "task": "finetune", "size": "custom"})
    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(timeout_min=15)  # >= 10 min: an early signal is a preemption
    job = executor.submit(EvalJob(eval_dir))
    deadline = time.time() + 120
    while (runs.read_json(eval_dir / "progress.json") or {}).get("step", 0) < 3:
        assert time.time() < deadline, "the evaluation did not reach step 3:\n" + job.stderr()
        time.sleep(0.05)
    (worker,) = psutil.Process(int(job.job_id)).children()
    worker.send_signal(signal.SIGUSR2)
    record = job.result()
    assert record == {"status": "COMPLETED", "step": 40, "total_steps": 40}
    events = [e["event"] for e in runs.read_ledger(eval_dir)]
    assert events == ["start", "requeue", "start", "end"], events
    assert runs.read_ledger(eval_dir)[1]["cause"] == "preemption"
    log = job.stderr() + job.stdout()
    assert "resumed from" in log
    result = json.loads((eval_dir / "result.json").read_text())
    assert result["task"] == "finetune" and result["checkpoint"]["step"] == 5
    assert {(m["metric"], m["weights"]) for m in result["metrics"]} >= {("top1", "raw"), ("top1", "ema")}
    epochs = [json.loads(line)["epoch"] for line in (eval_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]  # each epoch once across the requeue
