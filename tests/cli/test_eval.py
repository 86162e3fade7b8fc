"""`nepactl eval` and `nepactl results`: specs, submission, skipping, result files, tables."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from nepactl.app import app

runner = CliRunner()
TINY = ["--size", "tiny", "--set", "model.depth=2", "--set", "train.global_batch=32",
        "--set", "train.micro_batch=32", "--set", "train.max_steps=20", "--set", "checkpoint.every_steps=10"]
FAST_PROBE = ["--set", "linprobe.epochs=5", "--set", "linprobe.lr_grid=[0.01,0.1]",
              "--set", "linprobe.blocks=[0]"]  # the model has 2 blocks


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A finished 20-step tiny run (debug executor: in-process, same submit path)."""
    root = tmp_path_factory.mktemp("evalruns") / "runs"
    result = runner.invoke(app, ["pretrain", *TINY, "--cluster", "debug", "--name", "base",
                                 "--runs-root", str(root)])
    assert result.exit_code == 0, result.output
    assert (root / "base" / "checkpoints" / "step_00000020.pt").is_file()
    return root


def _eval(root, *args):
    return runner.invoke(app, ["eval", "base", "--cluster", "debug", "--runs-root", str(root), *args])


def test_linprobe_results_per_seed_then_skipped_when_done(pretrained, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(pretrained, root)
    result = _eval(root, "--tasks", "linprobe", "--seeds", "0,1", "--random-init", *FAST_PROBE)
    assert result.exit_code == 0, result.output
    evals = root / "base" / "evals"
    names = sorted(p.name for p in evals.iterdir() if not p.name.startswith("."))
    assert names == ["linprobe-random-seed0", "linprobe-random-seed1",
                     "linprobe-step20-seed0", "linprobe-step20-seed1"]
    doc = json.loads((evals / "linprobe-step20-seed1" / "result.json").read_text())
    assert doc["schema"] == 1 and doc["task"] == "linprobe" and doc["seed"] == 1
    assert doc["protocol"] == "demo" and doc["paper_protocol"] is False
    assert doc["checkpoint"]["step"] == 20 and len(doc["checkpoint"]["sha256"]) == 64
    assert {m["detail"]["feature"] for m in doc["metrics"]} == {"mean", "last", "block0"}
    assert all(0 <= m["value"] <= 100 and m["split"] == "val" for m in doc["metrics"])
    random = json.loads((evals / "linprobe-random-seed0" / "result.json").read_text())
    assert random["checkpoint"]["random_init"] is True and random["checkpoint"]["step"] == 0
    # the checkpoint an evaluation read is kept by retention from now on
    assert json.loads((root / "base" / "checkpoints" / "protected.json").read_text()) == [20]

    again = _eval(root, "--tasks", "linprobe", "--seeds", "0,1", *FAST_PROBE)
    assert again.exit_code == 0 and again.output.count("skip (done)") == 2, again.output

    table = runner.invoke(app, ["results", "base", "--format", "json", "--no-plots", "--runs-root", str(root)])
    assert table.exit_code == 0, table.output
    rows = json.loads(table.output)
    mean = [r for r in rows if r["run"] == "base" and r["metric"] == "probe_top1 (mean)"]
    assert {r["weights"] for r in mean} == {"frozen", "random init"}
    pretrained_row = next(r for r in mean if r["weights"] == "frozen")
    values = [json.loads((evals / f"linprobe-step20-seed{s}" / "result.json").read_text())
              for s in (0, 1)]
    expected = [next(m["value"] for m in d["metrics"] if m["detail"]["feature"] == "mean") for d in values]
    assert pretrained_row["seeds"] == 2 and pretrained_row["value"] == pytest.approx(sum(expected) / 2)
    assert pretrained_row["std"] is not None and pretrained_row["step"] == 20
    missing = {r["task"]: r["state"] for r in rows if r["run"] == "base" and r["value"] is None}
    assert missing == {"finetune": "missing", "ade20k": "missing"}
    assert any(r["run"] == "paper" and r["value"] == 83.8 for r in rows)

    md = runner.invoke(app, ["results", "base", "--format", "md", "--runs-root", str(root)])
    assert md.exit_code == 0 and "| base | tiny | linprobe |" in md.output
    assert (root / "base" / "plots" / "pretrain_loss.png").is_file()
    csv = runner.invoke(app, ["results", "--format", "csv", "--no-plots", "--runs-root", str(root)])
    assert csv.exit_code == 0 and csv.output.splitlines()[0].startswith("run,size,task,metric")


def test_dry_run_prints_the_specs_and_creates_nothing(pretrained, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(pretrained, root)
    result = _eval(root, "--tasks", "linprobe,finetune", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "# linprobe-step20-seed0: submit" in result.output
    assert "# finetune-step20-seed0: submit" in result.output and "protocol: demo" in result.output
    assert not (root / "base" / "evals").exists()


@pytest.mark.parametrize("args, message", [
    (["--tasks", "linprob"], "unknown task 'linprob' (did you mean 'linprobe'?)"),
    (["--step", "7"], "no checkpoint of step 7; steps: 10, 20"),
    (["--seeds", "a"], "expected whole numbers"),
    (["--set", "linprobe.epoch=3"], "linprobe.epoch"),
])
def test_bad_input_is_one_line_and_leaves_nothing(pretrained, tmp_path, args, message):
    root = tmp_path / "runs"
    shutil.copytree(pretrained, root)
    result = _eval(root, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (root / "base" / "evals").exists()


def test_weights_evaluations_get_their_own_run(pretrained, tmp_path):
    root = tmp_path / "runs"
    checkpoint = pretrained / "base" / "checkpoints" / "step_00000010.pt"
    result = runner.invoke(app, ["eval", "--weights", str(checkpoint), "--tasks", "linprobe", "--cluster",
                                 "debug", "--name", "ext", "--runs-root", str(root), *FAST_PROBE])
    assert result.exit_code == 0, result.output
    doc = json.loads((root / "ext" / "evals" / "linprobe-weights-seed0" / "result.json").read_text())
    assert doc["run"] == "ext" and doc["checkpoint"]["step"] == 10
    assert doc["size"] == "custom"  # a 2-block tiny matches no size of the registry


def test_finetune_job_runs_one_process_per_task_and_other_tasks_one(pretrained, tmp_path):
    """Fine-tuning eval jobs take the profile's processes (DDP); a batch that cannot split is refused."""
    import time

    from nepactl.runs import read_json

    root = tmp_path / "runs"
    shutil.copytree(pretrained, root)
    two = ["--cluster", "local", "--set", "cluster.tasks_per_node=2", "--runs-root", str(root)]
    small = ["--set", "finetune.epochs=1", "--set", "finetune.epoch_steps=2", "--set", "finetune.global_batch=32",
             "--set", "finetune.micro_batch=16", "--set", "finetune.eval_batch=300"]
    refused = runner.invoke(app, ["eval", "base", "--tasks", "finetune", *two, *small,
                                  "--set", "finetune.micro_batch=32"])
    assert refused.exit_code == 2 and "finetune.micro_batch" in refused.output, refused.output
    assert not (root / "base" / "evals").exists()

    result = runner.invoke(app, ["eval", "base", "--tasks", "finetune,linprobe", *two, *small, *FAST_PROBE])
    assert result.exit_code == 0, result.output
    evals = root / "base" / "evals"
    assert read_json(evals / "finetune-step20-seed0" / "run.json")["procs_per_node"] == 2
    assert read_json(evals / "linprobe-step20-seed0" / "run.json")["procs_per_node"] == 1
    deadline = time.time() + 240
    done = [evals / n / "result.json" for n in ("finetune-step20-seed0", "linprobe-step20-seed0")]
    while not all(p.is_file() for p in done) and time.time() < deadline:
        time.sleep(1)
    logs = "".join(p.read_text() for p in (evals / "finetune-step20-seed0" / "submitit").glob("*_log.err"))
    assert all(p.is_file() for p in done), logs[-3000:]
    assert "world_size=2" in logs and len(list((evals / "finetune-step20-seed0" / "submitit").glob("*_1_log.err"))) == 1
    doc = json.loads(done[0].read_text())
    assert {m["metric"] for m in doc["metrics"]} >= {"top1", "top5"}


def test_summary_pairs_each_headline_with_random_init_and_the_paper():
    from nepactl.results import PAPER, ResultRow, summarize

    def row(task, metric, weights, value, std=None, seeds=1, run="r"):
        return ResultRow(run, "tiny", task, metric, weights, "demo", value, std, seeds, 10, "done")

    rows = [row("linprobe", "probe_top1 (mean)", "frozen", 80.0, 1.0, 3),
            row("linprobe", "probe_top1 (mean)", "random init", 50.0, 2.0, 3),
            row("finetune", "top1 (best_ema)", "ema", 70.0), row("finetune", "top1 (best_ema)", "raw", 60.0),
            row("finetune", "top1 (best_ema)", "random init (ema)", 65.0),
            row("finetune", "top1 (best_ema)", "random init (raw)", 1.0),
            row("ade20k", "mIoU", "raw", 5.0),
            *[ResultRow("paper", s, t, m, "paper", "reference", v, None, 0, None, "done") for s, t, m, v in PAPER]]
    lines = {(x.task, x.metric): x for x in summarize(rows)}
    assert set(lines) == {("linprobe", "probe_top1 (mean)"), ("finetune", "top1 (best_ema)"), ("ade20k", "mIoU")}
    probe, tune, seg = (lines[k] for k in sorted(lines, key=lambda k: ["linprobe", "finetune", "ade20k"].index(k[0])))
    assert probe.gap == 30.0 and probe.paper == {"B": 14.1}
    assert tune.nepa.value == 70.0 and tune.random.value == 65.0 and tune.gap == 5.0  # EMA against EMA
    assert tune.paper == {"B": 83.8, "L": 85.3}
    assert seg.random is None and seg.gap is None and seg.paper == {"B": 48.3, "L": 54.0}


def _wait_outcome(eval_dir, timeout=180):
    import time

    from nepactl.runs import read_json

    deadline = time.time() + timeout
    while time.time() < deadline:
        outcome = read_json(eval_dir / "outcome.json")
        if outcome and outcome.get("status") in ("COMPLETED", "FAILED"):
            return outcome
        time.sleep(0.5)
    logs = "".join(p.read_text() for p in (eval_dir / "submitit").glob("*_log.err"))
    raise AssertionError(f"no outcome in {timeout} s: {logs[-3000:]}")


def _hide_then_submit(checkpoint, hidden):
    from nepactl.submit import submit_job

    def submit(*args, **kwargs):
        checkpoint.rename(hidden)
        return submit_job(*args, **kwargs)

    return submit


def test_default_relative_runs_root_local_job_and_a_failed_evaluation_rendered_again(
        pretrained, tmp_path, monkeypatch):
    """As a user: started in the project directory, runs root `runs`, the local executor (whose
    job runs in the evaluation's directory). A failed evaluation asked for again is re-rendered."""
    import yaml

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NEPA_RUNS", raising=False)
    shutil.copytree(pretrained, tmp_path / "runs")
    checkpoint = tmp_path / "runs" / "base" / "checkpoints" / "step_00000020.pt"
    hidden = checkpoint.with_name("away.bin")
    args = ["eval", "base", "--tasks", "linprobe", "--cluster", "local", *FAST_PROBE]
    # the job will find no checkpoint: a failed evaluation (the plan saw step 20, the newest)
    monkeypatch.setattr("nepactl.submit.submit_job", _hide_then_submit(checkpoint, hidden))
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    eval_dir = tmp_path / "runs" / "base" / "evals" / "linprobe-step20-seed0"
    spec = yaml.safe_load((eval_dir / "eval.yaml").read_text())
    assert spec["weights"] == "../../checkpoints/step_00000020.pt"  # relative to eval.yaml, not the cwd
    assert _wait_outcome(eval_dir)["status"] == "FAILED"

    hidden.rename(checkpoint)
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NEPA_RUNS", raising=False)
    again = runner.invoke(app, [*args, "--set", "linprobe.epochs=3"])
    assert again.exit_code == 0, again.output
    assert re.search(r"linprobe-step20-seed0\s*│\s*redo \(failed\)\s*│\s*\d+", again.stdout), again.output
    assert yaml.safe_load((eval_dir / "eval.yaml").read_text())["linprobe"]["epochs"] == 3  # re-rendered
    outcome = _wait_outcome(eval_dir)
    assert outcome["status"] == "COMPLETED", outcome
    doc = json.loads((eval_dir / "result.json").read_text())
    assert doc["checkpoint"]["path"] == "../../checkpoints/step_00000020.pt" and doc["checkpoint"]["step"] == 20
    kept = [p for p in eval_dir.parent.iterdir() if p.name.startswith(".linprobe-step20-seed0.failed-")]
    assert len(kept) == 1 and (kept[0] / "outcome.json").is_file()  # the failed attempt's logs are kept
