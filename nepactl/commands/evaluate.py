"""`nepactl eval` and `nepactl results`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from nepactl import console
from nepactl.commands.options import Cluster, ConfigFiles, DryRun, RunsRoot, Sets
from nepactl.errors import handled

Tasks = Annotated[str, typer.Option(
    "--tasks", "-t", help="Comma-separated: finetune, linprobe, ade20k, imagenet-val.")]
Seeds = Annotated[str, typer.Option("--seeds", help="Comma-separated seeds, e.g. 0,1,2.")]


def _seeds(text: str) -> tuple[int, ...]:
    from nepa.config import ConfigError

    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected whole numbers, e.g. 0,1,2") from None
    if not seeds or min(seeds) < 0:
        raise ConfigError(f"--seeds {text!r}: expected seeds >= 0, e.g. 0,1,2")
    return seeds


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
             runs_root: RunsRoot = None) -> None:
    """Submit evaluation jobs (preemptible, resumable); done (checkpoint, task, seed) are skipped.

    Example: nepactl eval my-run --tasks finetune,linprobe --seeds 0,1,2
    """
    import yaml

    from nepa.config import to_dict
    from nepactl.evaluate import parse_tasks, plan_evals, submit_evals
    from nepactl.runs import runs_root as resolve_root

    plan = plan_evals(run=run, weights=str(weights) if weights else None, root=resolve_root(runs_root),
                      tasks=parse_tasks(tasks), step=step, seeds=_seeds(seeds), random_init=random_init,
                      cluster=cluster, files=tuple(config or ()), sets=tuple(sets or ()), name=name)
    if dry_run:
        for planned in plan.evals:
            console.out.print(f"# {planned.name}: {planned.action}"
                              + (f", after job {planned.dependency}" if planned.dependency else ""))
            console.out.print(yaml.safe_dump(to_dict(planned.spec), sort_keys=False), markup=False)
        console.out.print("# cluster")
        console.out.print(yaml.safe_dump(to_dict(plan.cluster), sort_keys=False), markup=False)
        return
    for planned, job_id in submit_evals(plan):
        where = f"job {job_id}" if job_id else planned.action
        console.out.print(f"{plan.target.name}/{planned.name}\t{where}")
    console.hint(f"follow them with: nepactl status {plan.target.name}; then: nepactl results {plan.target.name}")


Format = Annotated[str, typer.Option("--format", "-f", help="table, md, csv or json.")]


@handled
def results(run: Annotated[list[str] | None, typer.Argument(help="Runs (default: all).")] = None,
            output: Format = "table",
            plots: Annotated[bool, typer.Option("--plots/--no-plots",
                                                help="Write loss and accuracy curves (PNG).")] = True,
            runs_root: RunsRoot = None) -> None:
    """Gather evaluation results: mean ± std over seeds, the paper's numbers as reference rows.

    Example: nepactl results my-run --format md
    """
    from nepa.config import ConfigError
    from nepactl.results import gather, make_plots, to_csv, to_json, to_markdown, to_table
    from nepactl.runs import runs_root as resolve_root

    formats = {"table": None, "md": to_markdown, "csv": to_csv, "json": to_json}
    if output not in formats:
        raise ConfigError(f"--format {output!r}: choose one of {', '.join(formats)}")
    root = resolve_root(runs_root)
    rows = gather(root, run)
    if plots:
        for path in make_plots(root, rows):
            console.hint(f"plot: {path}")
    if output == "table":
        console.out.print(to_table(rows))
    else:
        sys.stdout.write(formats[output](rows))
