"""Evaluations a pretraining run chains itself: at milestone steps and when it completes.

The `evals` section of a run spec (a template layer, `--set evals.tasks=[linprobe]` or
`nepactl pretrain --evals linprobe,finetune`) names them:
- when the run completes: on SLURM, `nepactl pretrain` submits them at once with
  `--dependency=afterok:<run job>`, so they start only when pretraining ends well (a requeued
  job keeps its id; `nepactl resume` points them at the new job). On the local executor the
  training job submits them itself when it completes.
- at `at_steps`: the run writes (and keeps) a checkpoint at each of these steps and its job
  submits that checkpoint's evaluations then, while pretraining goes on.
They are ordinary `nepactl eval` evaluations (same directories, skipping what is done), and a
failure to submit one is recorded in the run's ledger, never stops pretraining.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

from nepa.config import ConfigError, from_dict, load_yaml, to_dict
from nepactl import runs
from nepactl.render import Rendered
from nepactl.specs import EvalChainConfig

log = logging.getLogger("nepactl.chain")


def validate(chain: EvalChainConfig, rendered: Rendered, size: str) -> None:
    """Render every chained evaluation's spec now: a wrong path fails before submission."""
    from nepactl.evaluate import render_spec

    run_data = to_dict(rendered.run.data)
    for task in chain.tasks:
        try:
            render_spec(task=task, size=size, weights="(the run's checkpoint)", seed=chain.seeds[0],
                        random_init=False, run_data=run_data, sets=chain.sets)
        except ConfigError as exc:
            raise ConfigError(f"evals (chained {task}): {exc}") from None


def _plan(run_dir: Path, chain: EvalChainConfig, step: int | None) -> Any:
    from nepactl.cluster import ClusterConfig
    from nepactl.evaluate import plan_evals

    profile = run_dir / "cluster.yaml"
    cluster = from_dict(ClusterConfig, load_yaml(profile.read_text(), str(profile)) or {}, path="cluster")
    return plan_evals(run=run_dir.name, weights=None, root=run_dir.parent, tasks=chain.tasks,
                      step=step, seeds=chain.seeds, random_init=chain.random_init, cluster=cluster,
                      sets=chain.sets)


def submit_chained(run_dir: Path, chain: EvalChainConfig, step: int | None, *, why: str) -> list[str]:
    """Plan and submit; the job ids of what was submitted (done or running ones are skipped)."""
    from nepactl.evaluate import submit_evals

    submitted = [job for _, job in submit_evals(_plan(run_dir, chain, step)) if job is not None]
    runs.append_ledger(run_dir, "chain_submit", why=why, step=step, job_ids=submitted)
    return submitted


def submit_from_job(run_dir: Path, chain: EvalChainConfig, step: int, *, why: str) -> None:
    """Inside the training job: submit, and only log (and record) a failure."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM)}
    try:
        jobs = submit_chained(run_dir, chain, step, why=why)
        log.info("chained evaluations of step %d (%s): jobs %s", step, why, ", ".join(jobs) or "none new")
    except Exception as exc:  # the run must go on: `nepactl eval RUN --step N` can redo it
        log.exception("could not submit the chained evaluations of step %d", step)
        runs.append_ledger(run_dir, "chain_error", why=why, step=step, error=str(exc)[:500])
    finally:  # an in-process (debug) evaluation installs its own handlers
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def milestone_callback(run_dir: Path, chain: EvalChainConfig, *, final_chained: bool) -> Any:
    """A trainer callback submitting evaluations when a milestone checkpoint is written."""
    from nepa.train import Callback

    class MilestoneEvals(Callback):
        def on_checkpoint(self, trainer: Any, step: int, path: Path) -> None:
            if step not in chain.at_steps:
                return
            if final_chained and step >= trainer.total_steps:
                return  # the run's final evaluations cover its last checkpoint
            submit_from_job(run_dir, chain, step, why="milestone")

    return MilestoneEvals()


def rechain(run_dir: Path, job_id: str) -> list[str]:
    """After a resubmission: final evaluations that never started wait for the new job instead.

    SLURM never starts a job whose afterok dependency failed; such jobs are cancelled and
    submitted again with the new dependency.
    """
    import subprocess

    from nepactl.evaljob import EvalJob
    from nepactl.evaluate import eval_dirs
    from nepactl.submit import submit_job

    moved = []
    for eval_dir in eval_dirs(run_dir):
        ledger = runs.read_ledger(eval_dir)
        if "-final-" not in eval_dir.name or any(e["event"] == "start" for e in ledger):
            continue
        old = runs.own_job_id(ledger)
        if old:
            subprocess.run(["scancel", old], capture_output=True, text=True, timeout=30)
        submission = submit_job(eval_dir, EvalJob(eval_dir.resolve()), attempt_cause="rechained",
                                dependency=job_id)
        runs.append_ledger(run_dir, "eval_submit", job_id=submission.job_id,
                           executor=submission.executor, eval=eval_dir.name)
        moved.append(submission.job_id)
    return moved
