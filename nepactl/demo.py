"""The main job on the embedded default: tiny NEPA pretrained on the bundled digits through
the local executor (the same render -> submit path as `nepactl pretrain`), then evaluated."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from nepactl import console, runs
from nepactl.errors import CliError

DEMO_NAME = "demo"


def demo_name(precision: str) -> str:
    """fp32 is the demo; a bf16 demo is its own run, so the two can be compared side by side."""
    return DEMO_NAME if precision == "fp32" else f"{DEMO_NAME}-{precision}"


def pretrain_demo(root: Path, *, steps: int | None, fresh: bool, precision: str = "fp32") -> Path:
    from nepactl.render import render
    from nepactl.submit import submit_job, submit_new

    name = demo_name(precision)
    run_dir = root / name
    if fresh and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    sets = (f"train.precision={precision}", *((f"train.max_steps={steps}",) if steps else ()))
    rendered = render(size="tiny", cluster="local", name=name, sets=sets)
    outcome = runs.read_json(run_dir / "outcome.json")
    if not (run_dir / runs.RUN_INFO).is_file():
        submit_new(rendered, root, task="pretrain", size="tiny")
    elif outcome and outcome["status"] == "COMPLETED":
        console.hint(f"reusing the completed demo run in {run_dir} (--fresh starts over)")
        return run_dir
    else:
        submit_job(run_dir, attempt_cause="resume")
    from nepactl.follow import follow_run

    outcome = follow_run(run_dir, rendered.run.train.max_steps)
    if outcome is None:
        raise CliError(f"the demo job ended without finishing; see nepactl logs {name} "
                       f"--runs-root {run_dir.parent}")
    if outcome["status"] != "COMPLETED":
        raise CliError(f"demo pretraining ended {outcome['status']}; see nepactl logs {name}")
    return run_dir


DEMO_TASKS = ("linprobe", "finetune", "ade20k")
PROBE_SEEDS = (0, 1, 2)


def evaluate_demo(run_dir: Path, precision: str = "fp32") -> None:
    """The demo's evaluations, one local job after the other (the same path as nepactl eval).

    Linear probe over 3 seeds, fine-tuning and ADE20K-layout segmentation, each for the
    pretrained EMA weights and for the same architecture at random initialisation.
    Evaluations already done are skipped, so a re-run only prints the table. `precision`
    applies to fine-tuning as to pretraining; the probe's features and mmseg stay fp32.
    """
    from nepactl.evaluate import plan_evals, submit_evals

    root = run_dir.parent
    for task in DEMO_TASKS:
        seeds = PROBE_SEEDS if task == "linprobe" else (0,)
        plan = plan_evals(run=run_dir.name, weights=None, root=root, tasks=(task,), step=None,
                          seeds=seeds, random_init=True, cluster="local",
                          sets=(f"finetune.precision={precision}",) if task == "finetune" else ())
        for planned in plan.evals:
            if planned.action.startswith("skip"):
                continue
            single = replace(plan, evals=(planned,))
            ((_, job_id),) = submit_evals(single)
            _follow_eval(plan.target / "evals" / planned.name, job_id, planned.name)


def _follow_eval(eval_dir: Path, job_id: str, label: str) -> None:
    from nepactl.follow import follow_eval

    outcome = follow_eval(eval_dir, job_id, label)
    if outcome.get("status") != "COMPLETED":
        reason = outcome.get("error", "the job ended without a result")
        raise CliError(f"demo evaluation {label} failed: {reason}; see the logs in {eval_dir / 'submitit'}")
