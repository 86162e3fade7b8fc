"""`nepactl pretrain` and `nepactl render`: templates -> validated spec -> submitted run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer

from nepactl import console
from nepactl.commands.options import (
    Cluster,
    ConfigFiles,
    Data,
    DryRun,
    GpusPerNode,
    Name,
    Nodes,
    OutputFormat,
    RunsRoot,
    Sets,
    Size,
)
from nepactl.errors import handled
from nepactl.output import Format

ChainedEvals = Annotated[str | None, typer.Option(
    "--evals", help="Evaluations to chain when the run completes (afterok on SLURM), e.g. "
                    "linprobe,finetune,ade20k; milestones: --set evals.at_steps=[50000,100000].")]


def _render(size, nodes, gpus_per_node, cluster, name, config, sets, evals=None, data=None):
    from nepactl.render import render

    tasks = None
    if evals is not None:
        from nepactl.evaluate import parse_tasks

        tasks = parse_tasks(evals)
    return render(size=size, task="pretrain", cluster=cluster, files=tuple(config or ()),
                  sets=tuple(sets or ()), nodes=nodes, gpus_per_node=gpus_per_node, name=name,
                  evals=tasks, data=data)


def _print_rendered(rendered, root) -> None:
    import yaml

    from nepactl.submit import dry_run_script

    console.out.print("# resolved config (layers: " + " < ".join(rendered.layers) + ")")
    console.out.print(yaml.safe_dump(rendered.spec(), sort_keys=False), markup=False)
    console.out.print("# derived")
    for key, value in rendered.derived.items():
        console.out.print(f"#   {key}: {value}", markup=False)
    script = dry_run_script(rendered, root)
    if script is not None:
        console.out.print("# sbatch script")
        console.out.print(script, markup=False)


@dataclass
class SubmittedRun:
    """What `nepactl pretrain` submitted (one row: scripts read the job id from --format json)."""

    run: str
    executor: str
    job_id: str
    run_dir: str


@handled
def pretrain(size: Size = "tiny", nodes: Nodes = None, gpus_per_node: GpusPerNode = None,
             cluster: Cluster = None, name: Name = None, config: ConfigFiles = None,
             sets: Sets = None, evals: ChainedEvals = None, data: Data = None, dry_run: DryRun = False,
             output: OutputFormat = Format.table, runs_root: RunsRoot = None) -> None:
    """Render, validate, create the run and submit its pretraining job (and chained evaluations).
    --dry-run checks everything a submit checks (name, data, batch, profile) and prints the
    resolved config, the derived steps and wall time, and the sbatch script.

    Example: nepactl pretrain --size L --nodes 8 --data /data/imagenet --evals finetune,linprobe
    """
    from nepactl import output as out
    from nepactl.launch import launch_run, preflight
    from nepactl.runs import runs_root as resolve_root

    root = resolve_root(runs_root)
    rendered = _render(size, nodes, gpus_per_node, cluster, name, config, sets, evals, data)
    if dry_run:
        _print_rendered(preflight(rendered, root, size), root)
        return
    submission = launch_run(rendered, root, task="pretrain", size=size)
    row = SubmittedRun(rendered.run.name, submission.executor, submission.job_id, str(submission.run_dir))
    out.emit([row], output, row_type=SubmittedRun, title="submitted", columns=(
        out.Column("run"), out.Column("executor"), out.Column("job_id", "job")))
    chained = rendered.chain
    if chained.active:
        when = ", ".join([f"step {s}" for s in chained.at_steps] + (["completion"] if chained.on_complete else []))
        console.hint(f"chained evaluations ({', '.join(chained.tasks)}) at {when}")
    console.hint(f"run directory {submission.run_dir}; follow it with: nepactl status {rendered.run.name}")


@handled
def render(size: Size = "tiny", nodes: Nodes = None, gpus_per_node: GpusPerNode = None,
           cluster: Cluster = None, name: Name = None, config: ConfigFiles = None,
           sets: Sets = None, data: Data = None, runs_root: RunsRoot = None) -> None:
    """Print the resolved config, derived values and sbatch script without checking the data
    (pretrain --dry-run also counts the data and checks what a submit checks).

    Example: nepactl render --size B --nodes 4 --gpus-per-node 8 --cluster slurm --data /data/imagenet
    """
    from nepactl.runs import runs_root as resolve_root

    _print_rendered(_render(size, nodes, gpus_per_node, cluster, name, config, sets, data=data),
                    resolve_root(runs_root))
