"""Submitting the ablation: pretraining runs (one job array on SLURM), then their evaluations.

Locally each job is followed to its end before the next; on SLURM everything is queued and
the evaluations wait for their run (afterok), so a later call only gathers the table.
"""

from __future__ import annotations

import shutil
from dataclasses import replace

from nepactl import console, runs
from nepactl.ablate.plan import RETRYABLE, AblationPlan, Member
from nepactl.ablate.variants import BASELINE
from nepactl.status import ACTIVE_STATES


def pretrain_members(plan: AblationPlan, *, retry_failed: bool) -> None:
    """Submit new runs and (with retry_failed) resume FAILED/CANCELLED ones; skip the rest."""
    from nepactl.launch import job_for, launch_run
    from nepactl.submit import submit_job

    new = [m for m in plan.members if m.state == "new"]
    failed = [m for m in plan.members if m.state in RETRYABLE]
    if failed and not retry_failed:
        console.warn(f"{len(failed)} run(s) ended {'/'.join(sorted({m.state for m in failed}))}: "
                     f"{', '.join(m.name for m in failed)}; resume them with --retry-failed")
    retry = failed if retry_failed else []
    if plan.arrays:
        if new or retry:
            submit_members_array(plan, new, retry)
        return
    for member in plan.members:
        run_dir = plan.root / member.name
        if member in new:
            launch_run(member.rendered, plan.root, task="pretrain", size="tiny")
        elif member in retry:
            submit_job(run_dir, job_for(run_dir), attempt_cause="retry-failed")
        elif member.state not in ACTIVE_STATES:
            continue  # done, or failed and not retried
        if plan.executor == "local":
            from nepactl.follow import follow_run

            outcome = follow_run(run_dir, member.rendered.run.train.max_steps, f"{member.name:<28}")
            if not outcome or outcome["status"] != "COMPLETED":
                console.warn(f"{member.name} did not complete; see nepactl logs {member.name}")


def submit_members_array(plan: AblationPlan, new: list[Member], retry: list[Member]) -> list[str]:
    """New and retried runs as ONE job array (nepactl.submit.submit_array); job ids in order."""
    from nepactl.chain import rechain
    from nepactl.launch import check_data
    from nepactl.submit import fill_run_dir, submit_array
    from nepactl.trainjob import TrainJob

    dirs = []
    for member in new:
        check_data(member.rendered)
        dirs.append(runs.create_run(plan.root, member.name,
                                    lambda d, m=member: fill_run_dir(d, m.rendered, "pretrain", "tiny")))
    dirs += [plan.root / m.name for m in retry]
    causes = ["new run"] * len(new) + ["retry-failed"] * len(retry)
    try:
        submissions = submit_array(dirs, [TrainJob(d.resolve()) for d in dirs], causes=causes,
                                   parent=plan.summary_dir / "arrays", job_name=f"{plan.prefix}-ablation")
    except BaseException:
        for member in new:  # nothing half-submitted is left behind
            shutil.rmtree(plan.root / member.name, ignore_errors=True)
        raise
    for submission in submissions[len(new):]:  # their evaluations waited for the failed job
        rechain(submission.run_dir, submission.job_id)
    console.hint(f"submitted {len(submissions)} pretraining run(s) as one job array "
                 f"({submissions[0].job_id.split('_')[0]})")
    return [s.job_id for s in submissions]


def evaluate_members(plan: AblationPlan) -> None:
    """Linear probe and fine-tune of every finished run (SLURM: of queued ones too, afterok)."""
    from nepactl.evaluate import plan_evals, submit_evals
    from nepactl.status import collect

    names = [m.name for m in plan.members if (plan.root / m.name / runs.RUN_INFO).is_file()]
    states = {row.run: row.state for row in collect(plan.root, names)[0]} if names else {}
    for member in plan.members:
        state = states.get(member.name, "new")
        if state != "COMPLETED" and not (plan.arrays and state in ACTIVE_STATES):
            continue
        sets = plan.eval_sets
        if not any(s.startswith("linprobe.blocks") for s in sets):  # an intermediate block too
            sets += (f"linprobe.blocks=[{max(0, member.rendered.run.model.depth // 2 - 1)}]",)
        evals = plan_evals(run=member.name, weights=None, root=plan.root, tasks=plan.tasks, step=None,
                           seeds=(member.seed,), random_init=member.variant == BASELINE,
                           cluster=plan.cluster, sets=sets)
        if plan.arrays:
            submit_evals(evals)
            continue
        for planned in evals.evals:
            if planned.action.startswith("skip"):
                continue
            ((_, job_id),) = submit_evals(replace(evals, evals=(planned,)))
            if plan.executor == "local":
                from nepactl.follow import follow_eval

                outcome = follow_eval(evals.target / "evals" / planned.name, job_id,
                                      f"{member.name} {planned.name}")
                if outcome.get("status") != "COMPLETED":
                    console.warn(f"{member.name} {planned.name} failed: {outcome.get('error', 'no result')}")
