"""The main job on the embedded default: tiny NEPA pretrained on the bundled digits through
the local executor (the same render -> submit path as `nepactl pretrain`), then evaluated."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from nepactl import console, runs
from nepactl.errors import CliError

DEMO_NAME = "demo"


def _follow(run_dir: Path, total: int) -> dict:
    """Progress bar over metrics.jsonl until the local job's outcome is written."""
    from nepactl.status import _local_alive

    job_id = next(e["job_id"] for e in reversed(runs.read_ledger(run_dir)) if e.get("job_id"))
    columns = (TextColumn("pretraining"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console.err) as progress:
        task = progress.add_task("pretrain", total=total, loss="-")
        while True:
            last = runs.last_line(run_dir / "metrics.jsonl") or {}
            if last:
                progress.update(task, completed=last["step"], loss=f"{last['loss']:.4f}")
            outcome = runs.read_json(run_dir / "outcome.json")
            if outcome and outcome["status"] != "STOPPED" and outcome["step"] >= last.get("step", 0):
                return outcome
            if not _local_alive(job_id):
                time.sleep(1.0)  # the outcome file may land just after the process ends
                outcome = runs.read_json(run_dir / "outcome.json")
                if outcome and outcome["status"] != "STOPPED":
                    return outcome
                raise CliError(f"the demo job ended without finishing; see nepactl logs {DEMO_NAME} "
                               f"--runs-root {run_dir.parent}")
            time.sleep(0.5)


def pretrain_demo(root: Path, *, steps: int | None, fresh: bool) -> Path:
    from nepactl.render import render
    from nepactl.submit import submit_job, submit_new

    run_dir = root / DEMO_NAME
    if fresh and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    sets = (f"train.max_steps={steps}",) if steps else ()
    rendered = render(size="tiny", cluster="local", name=DEMO_NAME, sets=sets)
    outcome = runs.read_json(run_dir / "outcome.json")
    if not (run_dir / runs.RUN_INFO).is_file():
        submit_new(rendered, root, task="pretrain", size="tiny")
    elif outcome and outcome["status"] == "COMPLETED":
        console.hint(f"reusing the completed demo run in {run_dir} (--fresh starts over)")
        return run_dir
    else:
        submit_job(run_dir, attempt_cause="resume")
    outcome = _follow(run_dir, rendered.run.train.max_steps)
    if outcome["status"] != "COMPLETED":
        raise CliError(f"demo pretraining ended {outcome['status']}; see nepactl logs {DEMO_NAME}")
    return run_dir


DEMO_TASKS = ("linprobe", "finetune", "ade20k")
PROBE_SEEDS = (0, 1, 2)


def evaluate_demo(run_dir: Path) -> None:
    """The demo's evaluations, one local job after the other (the same path as nepactl eval).

    Linear probe over 3 seeds, fine-tuning and ADE20K-layout segmentation, each for the
    pretrained EMA weights and for the same architecture at random initialisation.
    Evaluations already done are skipped, so a re-run only prints the table.
    """
    from nepactl.evaluate import plan_evals, submit_evals

    root = run_dir.parent
    for task in DEMO_TASKS:
        seeds = PROBE_SEEDS if task == "linprobe" else (0,)
        plan = plan_evals(run=run_dir.name, weights=None, root=root, tasks=(task,), step=None,
                          seeds=seeds, random_init=True, cluster="local")
        for planned in plan.evals:
            if planned.action.startswith("skip"):
                continue
            single = replace(plan, evals=(planned,))
            ((_, job_id),) = submit_evals(single)
            _follow_eval(plan.target / "evals" / planned.name, job_id, planned.name)


def _follow_eval(eval_dir: Path, job_id: str, label: str) -> None:
    from nepactl.status import _local_alive

    columns = (TextColumn(f"{label:<28}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[note]}"), TimeElapsedColumn())
    with Progress(*columns, console=console.err) as progress:
        bar = progress.add_task(label, total=None, note="")
        while True:
            record = runs.read_json(eval_dir / "progress.json") or {}
            if record.get("total"):
                note = f"loss {record['loss']:.3f}" if isinstance(record.get("loss"), float) else ""
                progress.update(bar, completed=record.get("step", 0), total=record["total"], note=note)
            outcome = runs.read_json(eval_dir / "outcome.json") or {}
            if outcome.get("status") in ("COMPLETED", "FAILED"):
                break
            if not _local_alive(job_id):
                time.sleep(1.0)
                outcome = runs.read_json(eval_dir / "outcome.json") or {}
                break
            time.sleep(0.5)
    if outcome.get("status") != "COMPLETED":
        reason = outcome.get("error", "the job ended without a result")
        raise CliError(f"demo evaluation {label} failed: {reason}; see the logs in {eval_dir / 'submitit'}")
