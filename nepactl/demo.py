"""The main job on the embedded default: tiny NEPA pretrained on the bundled digits through
the local executor (the same render -> submit path as `nepactl pretrain`), then evaluated."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from nepactl import console, runs
from nepactl.errors import CliError

DEMO_NAME = "demo"


@dataclass(frozen=True)
class DemoScale:
    """How much of the demo runs: the full one, or a quick pass over the same path."""

    steps: int | None  # pretraining steps; None: the tiny recipe's
    probe_seeds: tuple[int, ...]
    eval_sets: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per task, as --set


FULL = DemoScale(steps=None, probe_seeds=(0, 1, 2))
# Every step of the full demo (pretraining, each evaluation job, the table) at a scale that
# takes about two minutes: what the README test runs; its numbers mean nothing.
QUICK = DemoScale(steps=40, probe_seeds=(0,), eval_sets={
    "linprobe": ("linprobe.epochs=10",),
    "finetune": ("finetune.epochs=1",),
    "ade20k": ("segmentation.iters=6", "segmentation.warmup_iters=1", "segmentation.val_interval=6",
               "segmentation.checkpoint_interval=6", "segmentation.log_interval=2"),
})


def demo_name(precision: str, quick: bool = False) -> str:
    """fp32 is the demo; a bf16 or quick demo is its own run, so none reuses another's."""
    parts = [DEMO_NAME] + ([precision] if precision != "fp32" else []) + (["quick"] if quick else [])
    return "-".join(parts)


def pretrain_demo(root: Path, *, steps: int | None, fresh: bool, precision: str = "fp32",
                  quick: bool = False) -> Path:
    from nepactl.launch import job_for, launch_run
    from nepactl.render import render
    from nepactl.submit import submit_job

    name = demo_name(precision, quick)
    steps = steps or (QUICK.steps if quick else None)
    run_dir = root / name
    if fresh and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    sets = (f"train.precision={precision}", *((f"train.max_steps={steps}",) if steps else ()))
    rendered = render(size="tiny", cluster="local", name=name, sets=sets)
    outcome = runs.read_json(run_dir / "outcome.json")
    if not (run_dir / runs.RUN_INFO).is_file():
        launch_run(rendered, root, task="pretrain", size="tiny")
    elif outcome and outcome["status"] == "COMPLETED":
        console.hint(f"reusing the completed demo run in {run_dir} (--fresh starts over)")
        return run_dir
    else:
        submit_job(run_dir, job_for(run_dir), attempt_cause="resume")
    from nepactl.follow import follow_run

    outcome = follow_run(run_dir, rendered.run.train.max_steps)
    if outcome is None:
        raise CliError(f"the demo job ended without finishing; see nepactl logs {name} "
                       f"--runs-root {run_dir.parent}")
    if outcome["status"] != "COMPLETED":
        raise CliError(f"demo pretraining ended {outcome['status']}; see nepactl logs {name}")
    return run_dir


DEMO_TASKS = ("linprobe", "finetune", "ade20k")


def evaluate_demo(run_dir: Path, precision: str = "fp32", scale: DemoScale = FULL) -> None:
    """The demo's evaluations, one local job after the other (the same path as nepactl eval).

    Linear probe over 3 seeds, fine-tuning and ADE20K-layout segmentation, each for the
    pretrained EMA weights and for the same architecture at random initialisation.
    Evaluations already done are skipped, so a re-run only prints the table. `precision`
    applies to fine-tuning as to pretraining; the probe's features and mmseg stay fp32.
    """
    from nepactl.evaluate import plan_evals, submit_evals

    root = run_dir.parent
    for task in DEMO_TASKS:
        seeds = scale.probe_seeds if task == "linprobe" else (0,)
        sets = scale.eval_sets.get(task, ()) + ((f"finetune.precision={precision}",) if task == "finetune" else ())
        plan = plan_evals(run=run_dir.name, weights=None, root=root, tasks=(task,), step=None,
                          seeds=seeds, random_init=True, cluster="local", sets=sets)
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
