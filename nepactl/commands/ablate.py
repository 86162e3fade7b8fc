"""`nepactl ablate`: the paper's ablations at small scale, in one command."""

from __future__ import annotations

from typing import Annotated

import typer

from nepactl import console
from nepactl.commands.options import Cluster, OutputFormat, RunsRoot, Sets, parse_seeds
from nepactl.errors import handled
from nepactl.output import Format


@handled
def ablate(
    variants: Annotated[str, typer.Option(
        "--variants", help="Comma-separated variants of templates/ablations.yaml, or all.")] = "all",
    seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated pretraining seeds, e.g. 0,1,2.")] = "0,1,2",
    steps: Annotated[int | None, typer.Option(min=1, help="Pretraining steps of every run (train.max_steps).")] = None,
    tasks: Annotated[str, typer.Option("--tasks", help="Evaluations: linprobe, finetune.")] = "linprobe,finetune",
    cluster: Cluster = "local",
    name: Annotated[str, typer.Option("--name", help="Prefix of the run names: PREFIX-VARIANT-sSEED.")] = "ablate",
    retry_failed: Annotated[bool, typer.Option(
        "--retry-failed", help="Resume runs that ended FAILED or CANCELLED (from their checkpoints).")] = False,
    sets: Sets = None,
    output: OutputFormat = Format.table,
    runs_root: RunsRoot = None,
) -> None:
    """Pretrain tiny NEPA once per (variant, seed) on the bundled digits, evaluate, compare.

    Every variant gets the same recipe, steps and seeds; only its overrides differ. Locally the
    runs go one after the other; on SLURM the pretraining runs are one job array and their
    evaluations wait for them. Re-running with the same --name skips what is done and prints
    the table (also RUNS/NAME-ablation/summary.json and loss_curves.png).
    --set linprobe.* / finetune.* go to the evaluations, everything else to pretraining.
    Example: nepactl ablate --variants baseline,no-stopgrad --seeds 0,1,2 --steps 300
    """
    from nepactl import output as out
    from nepactl.ablate.findings import COLUMNS, AblationStats, gather_rows, row_style, write_summary
    from nepactl.ablate.plan import plan_ablation
    from nepactl.ablate.run import evaluate_members, pretrain_members
    from nepactl.runs import runs_root as resolve_root

    plan = plan_ablation(
        prefix=name, root=resolve_root(runs_root), variants=variants, seeds=parse_seeds(seeds), steps=steps,
        cluster=cluster, sets=tuple(sets or ()),
        tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()))
    todo = sum(m.state == "new" for m in plan.members)
    console.hint(f"{len(plan.members)} run(s) ({todo} new) on the {plan.executor} executor: "
                 + ", ".join(f"{m.name} [{m.state}]" for m in plan.members))
    pretrain_members(plan, retry_failed=retry_failed)
    evaluate_members(plan)
    rows = gather_rows(plan)
    summary, plot = write_summary(plan, rows)
    out.emit([r.stats() for r in rows], output, columns=COLUMNS, row_type=AblationStats, row_style=row_style,
             title=f"NEPA ablations '{name}' (demo protocol: tiny, digits)")
    console.hint(f"summary: {summary}" + (f"; loss curves: {plot}" if plot else ""))
    if plan.arrays:
        console.hint("jobs are queued: follow them with nepactl runs; re-run this command to gather the table")
