"""`nepactl demo`: the main job on the embedded default, end to end on this machine."""

from __future__ import annotations

from typing import Annotated

import typer

from nepactl import console
from nepactl.commands.options import RunsRoot
from nepactl.errors import handled


@handled
def demo(
    steps: Annotated[int | None, typer.Option(min=1, help="Override the pretraining steps.")] = None,
    fresh: Annotated[bool, typer.Option("--fresh/--reuse", help="Start over instead of reusing runs/demo.")] = False,
    runs_root: RunsRoot = None,
) -> None:
    """Pretrain tiny NEPA on the bundled digits (local executor), then linear-probe it.

    Re-running reuses (or resumes) the run 'demo'. Example: nepactl demo --steps 200 --fresh
    """
    from nepactl.demo import evaluate_demo, pretrain_demo
    from nepactl.runs import last_line
    from nepactl.runs import runs_root as resolve_root

    run_dir = pretrain_demo(resolve_root(runs_root), steps=steps, fresh=fresh)
    rows = evaluate_demo(run_dir)
    console.render_table("NEPA demo: linear probe on the bundled digits (val: 300 real scans)", rows)
    last = last_line(run_dir / "metrics.jsonl")
    console.hint(f"pretraining: {last['step']} steps, final loss {last['loss']:.4f}; run {run_dir}")
