"""`nepactl demo`: the main job on the embedded default, end to end on this machine."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from nepactl import console
from nepactl.commands.options import RunsRoot
from nepactl.errors import handled

Precision = Literal["fp32", "bf16"]


@handled
def demo(
    steps: Annotated[int | None, typer.Option(min=1, help="Override the pretraining steps.")] = None,
    fresh: Annotated[bool, typer.Option("--fresh/--reuse", help="Start over instead of reusing runs/demo.")] = False,
    precision: Annotated[Precision, typer.Option(
        help="Pretraining and fine-tuning precision; bf16 (CPU autocast) runs as 'demo-bf16'.")] = "fp32",
    quick: Annotated[bool, typer.Option(
        "--quick", help="Every step at a tiny scale (~3 minutes; numbers mean nothing), as run 'demo-quick'.")
    ] = False,
    runs_root: RunsRoot = None,
) -> None:
    """Pretrain tiny NEPA on the bundled digits (local executor), evaluate it, print the results.

    Evaluations (linear probe over 3 seeds, fine-tuning, ADE20K-layout segmentation; each
    also at random init) run as evaluation jobs, one after the other. Re-running reuses (or
    resumes) the run 'demo' and skips finished evaluations. Example: nepactl demo --steps 200 --fresh;
    compare precisions: nepactl demo --precision bf16, then nepactl results demo demo-bf16
    """
    from nepa.rundir import METRICS, last_jsonl
    from nepactl.demo import FULL, QUICK, evaluate_demo, pretrain_demo
    from nepactl.results import gather, make_plots, summary_table
    from nepactl.runs import runs_root as resolve_root

    root = resolve_root(runs_root)
    run_dir = pretrain_demo(root, steps=steps, fresh=fresh, precision=precision, quick=quick)
    evaluate_demo(run_dir, precision, QUICK if quick else FULL)
    rows = gather(root, [run_dir.name])
    for path in make_plots(root, rows):
        console.hint(f"plot: {path}")
    console.out.print(summary_table(rows, "NEPA demo: tiny, bundled digits (demo protocol)"))
    console.hint(f"every metric, raw and EMA: nepactl results {run_dir.name} --runs-root {root}")
    last = last_jsonl(run_dir / METRICS)
    console.hint(f"pretraining: {last['step']} steps, final loss {last['loss']:.4f}; run {run_dir}; "
                 "demo protocol: tiny NEPA on 10-class digits, not comparable to the paper rows")
