"""`nepactl eval` and `nepactl results`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from nepactl import console
from nepactl.commands.options import Cluster, ConfigFiles, DryRun, OutputFormat, RunsRoot, Sets, parse_seeds
from nepactl.errors import handled
from nepactl.output import Format

Tasks = Annotated[str, typer.Option(
    "--tasks", "-t", help="Comma-separated: finetune, linprobe, ade20k, imagenet-val.")]
Seeds = Annotated[str, typer.Option("--seeds", help="Comma-separated seeds, e.g. 0,1,2.")]


@dataclass
class EvalListing:
    """One planned evaluation of `nepactl eval`: submitted (with its job) or skipped."""

    run: str
    evaluation: str
    action: str  # submit, resume, redo (failed), skip (done), ...
    job_id: str | None


@handled
def evaluate(run: Annotated[str | None, typer.Argument(help="Run to evaluate (see nepactl runs).")] = None,
             weights: Annotated[Path | None, typer.Option(
                 "--weights", "-w", help="Evaluate a nepa checkpoint or released directory instead.")] = None,
             tasks: Tasks = "finetune,linprobe,ade20k",
             step: Annotated[int | None, typer.Option("--step", min=0,
                                                      help="Checkpoint step (default: newest).")] = None,
             seeds: Seeds = "0",
             random_init: Annotated[bool, typer.Option(
                 "--random-init/--no-random-init", help="Also evaluate the architecture at random init.")] = False,
             cluster: Cluster = None, name: Annotated[str | None, typer.Option(
                 "--name", help="Run name holding --weights evaluations.")] = None,
             config: ConfigFiles = None, sets: Sets = None, dry_run: DryRun = False,
             output: OutputFormat = Format.table, runs_root: RunsRoot = None) -> None:
    """Submit evaluation jobs (preemptible, resumable); done (checkpoint, task, seed) are skipped.

    Example: nepactl eval my-run --tasks finetune,linprobe --seeds 0,1,2
    """
    import yaml

    from nepa.config import to_dict
    from nepactl import output as out
    from nepactl.evaluate import parse_tasks, plan_evals, submit_evals
    from nepactl.runs import runs_root as resolve_root

    plan = plan_evals(run=run, weights=str(weights) if weights else None, root=resolve_root(runs_root),
                      tasks=parse_tasks(tasks), step=step, seeds=parse_seeds(seeds), random_init=random_init,
                      cluster=cluster, files=tuple(config or ()), sets=tuple(sets or ()), name=name)
    if dry_run:
        for planned in plan.evals:
            console.out.print(f"# {planned.name}: {planned.action}"
                              + (f", after job {planned.dependency}" if planned.dependency else ""))
            console.out.print(yaml.safe_dump(to_dict(planned.spec), sort_keys=False), markup=False)
        console.out.print("# cluster")
        console.out.print(yaml.safe_dump(to_dict(plan.cluster), sort_keys=False), markup=False)
        return
    rows = [EvalListing(plan.target.name, planned.name, planned.action, job_id)
            for planned, job_id in submit_evals(plan)]
    out.emit(rows, output, row_type=EvalListing, title="evaluations", columns=(
        out.Column("run"), out.Column("evaluation"), out.Column("action"), out.Column("job_id", "job")))
    console.hint(f"follow them with: nepactl status {plan.target.name}; then: nepactl results {plan.target.name}")


@handled
def results(run: Annotated[list[str] | None, typer.Argument(help="Runs (default: all).")] = None,
            output: OutputFormat = Format.table,
            plots: Annotated[bool, typer.Option("--plots/--no-plots",
                                                help="Write loss and accuracy curves (PNG).")] = True,
            runs_root: RunsRoot = None) -> None:
    """Gather evaluation results: mean ± std over seeds, the paper's numbers as reference rows.

    Example: nepactl results my-run --format md
    """
    from nepactl import output as out
    from nepactl.results import COLUMNS, TITLE, ResultRow, gather, make_plots, row_style
    from nepactl.runs import runs_root as resolve_root

    root = resolve_root(runs_root)
    rows = gather(root, run)
    if plots:
        for path in make_plots(root, rows):
            console.hint(f"plot: {path}")
    out.emit(rows, output, columns=COLUMNS, row_type=ResultRow, title=TITLE, row_style=row_style)
