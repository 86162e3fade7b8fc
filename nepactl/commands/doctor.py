"""`nepactl doctor`: check what a submission needs, one line per check."""

from __future__ import annotations

from typing import Annotated

import typer

from nepactl import console
from nepactl.commands.options import Cluster, RunsRoot, Size
from nepactl.errors import handled


@handled
def doctor(cluster: Cluster = None, size: Size = "tiny", runs_root: RunsRoot = None,
           probe: Annotated[bool, typer.Option("--probe", help="Also run a probe job on a compute node.")]
           = False) -> None:
    """Check the scheduler, the runs root, the partition and the data path.

    Example: nepactl doctor --cluster my-cluster.yaml --probe
    """
    from nepactl.doctor import run_checks
    from nepactl.runs import runs_root as resolve_root

    results = run_checks(cluster=cluster, size=size, root=resolve_root(runs_root), probe=probe)
    for result in results:
        mark = "[green]ok[/green]  " if result.ok else "[red]FAIL[/red]"
        console.out.print(f"{mark} {result.name}: {result.detail}")
    if not all(r.ok for r in results):
        raise typer.Exit(1)
