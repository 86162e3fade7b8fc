"""Use cases over whole runs: launch a new pretraining run, resume a run or an evaluation."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

from nepactl import runs
from nepactl.errors import CliError
from nepactl.evaljob import EvalJob
from nepactl.render import Rendered
from nepactl.status import ACTIVE_STATES
from nepactl.submit import Submission, cancel_jobs, fill_run_dir, submit_job
from nepactl.trainjob import TrainJob


def job_for(directory: Path) -> Any:
    """The job that runs a directory: an evaluation (eval.yaml) or a pretraining run."""
    directory = directory.resolve()
    return EvalJob(directory) if (directory / "eval.yaml").is_file() else TrainJob(directory)


def check_data(rendered: Rendered) -> Any:
    """Validate the data path on the login node, before anything is queued; the report counts
    the images of each split (index or metadata) and decodes a few."""
    from nepa.data import check_dataset

    return check_dataset(rendered.run.data)


def preflight(rendered: Rendered, root: Path, size: str) -> Rendered:
    """Everything a submit checks, short of submitting (the dry run stops here): the run name,
    the data, the batch against the training set, chained evaluations. Returns the rendering
    with the steps derived from the counted training set."""
    from dataclasses import replace

    from nepa.model_config import resolve_size
    from nepactl import chain
    from nepactl.render import derive

    name = rendered.run.name
    runs.check_name(name)
    if (root / name).exists():
        raise CliError(f"run '{name}' already exists in {root}; choose another --name, or "
                       f"continue it with: nepactl resume {name}")
    report = check_data(rendered)
    images = next((s.images for s in report.splits if s.role == "train"), None)
    batch = rendered.run.train.global_batch
    if images is not None and images < batch:  # the job would stop at once (no full batch)
        raise CliError(f"the training split has {images:,} images, fewer than one global batch "
                       f"({batch}); lower train.global_batch or use a larger data set")
    if rendered.chain.active:
        chain.validate(rendered.chain, rendered, size)
    derived = derive(rendered.run, rendered.cluster, resolve_size(size), images)
    return replace(rendered, derived=derived)


def launch_run(rendered: Rendered, root: Path, *, task: str, size: str) -> Submission:
    """Check as the dry run does, create the run directory and submit; on any failure nothing is
    left behind."""
    from nepactl import chain

    rendered = preflight(rendered, root, size)
    run_dir = runs.create_run(root, rendered.run.name, lambda d: fill_run_dir(d, rendered, task, size))
    submission = None
    try:
        submission = submit_job(run_dir, job_for(run_dir), attempt_cause="new run")
        if rendered.chain.active and rendered.chain.on_complete and submission.executor == "slurm":
            chain.submit_chained(run_dir, rendered.chain, None, why="on completion (afterok)")
        return submission
    except BaseException:
        if submission is not None:  # all or nothing: the run's job goes with its evaluations
            with contextlib.suppress(Exception):
                cancel_jobs(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        raise


def resume_run(run_dir: Path, *, cause: str = "resume", budgets: dict[str, int] | None = None
               ) -> tuple[Submission, list[str]]:
    """Resubmit a run that is not active; final chained evaluations wait for the new job (their
    new job ids are returned). The requeue budgets start afresh; `budgets` ({"max_timeouts": N,
    "max_preemptions": N}) also changes the run's limits."""
    from nepactl.chain import rechain
    from nepactl.specs import read_chain
    from nepactl.status import collect

    (row,), _ = collect(run_dir.parent, [run_dir.name])
    if row.state in ACTIVE_STATES:
        raise CliError(f"'{run_dir.name}' is {row.state} (job {row.job_id}); cancel it first if it is stuck")
    if row.state == "COMPLETED":
        raise CliError(f"'{run_dir.name}' is COMPLETED; raise train.max_steps in a new run instead")
    _check_resumable(run_dir)
    upgrade_run(run_dir)
    if budgets:
        set_requeue_budgets(run_dir, budgets)
    submission = submit_job(run_dir, job_for(run_dir), attempt_cause=cause)
    chained = read_chain(run_dir)
    moved = rechain(run_dir, submission.job_id) if chained and chained.on_complete and \
        submission.executor == "slurm" else []
    return submission, moved


def set_requeue_budgets(run_dir: Path, budgets: dict[str, int]) -> None:
    """Write new requeue limits into the run's stored cluster profile (and the ledger)."""
    import dataclasses

    import yaml

    from nepa.config import from_dict, load_yaml, to_dict
    from nepactl.cluster import ClusterConfig

    path = run_dir / "cluster.yaml"
    current = load_yaml(path.read_text(), str(path)) if path.is_file() else {}
    cluster = from_dict(ClusterConfig, current or {}, path="cluster", source=str(path))
    cluster = dataclasses.replace(cluster, **budgets)
    path.write_text(yaml.safe_dump(to_dict(cluster), sort_keys=False))
    runs.append_ledger(run_dir, "budget", **budgets)


def _check_resumable(directory: Path) -> None:
    """The job reads only its spec: one that is missing or broken fails here, not in the queue."""
    from nepa.config import ConfigError

    try:
        if (directory / "eval.yaml").is_file():
            from nepa.evals.spec import load_spec

            load_spec(directory)
        else:
            from nepa.train.runconfig import load_run_config

            load_run_config(directory)
    except ConfigError as exc:
        raise CliError(f"'{directory.name}' cannot be resumed: {exc}") from None


def upgrade_run(run_dir: Path) -> None:
    """Bring a run directory of an older format to this one before a job runs in it again.

    Its code snapshot predates this version's job classes (the job is pickled by this code and
    unpickled by the snapshot), so a new one is taken and the old one kept as code.formatN.
    """
    from dataclasses import replace

    from nepa import rundir

    info = rundir.read_run_info(run_dir)
    if info is None or info.format >= rundir.FORMAT_VERSION:
        return
    data_path = (runs.read_yaml_mapping(run_dir / "config.yaml").get("data") or {}).get("path")
    if data_path and not Path(data_path).is_absolute():
        raise CliError(f"{run_dir / 'config.yaml'}: data.path '{data_path}' is relative (written by an older "
                       "nepactl, relative to a directory no longer known); make it absolute, then resume")
    kept = run_dir / f"code.format{info.format}"
    if (run_dir / "code").is_dir() and not kept.exists():
        (run_dir / "code").rename(kept)
    runs.snapshot_code(run_dir / "code")
    rundir.write_run_info(run_dir, replace(info, format=rundir.FORMAT_VERSION))
    runs.append_ledger(run_dir, "upgrade", from_format=info.format, to_format=rundir.FORMAT_VERSION,
                       kept=kept.name)
