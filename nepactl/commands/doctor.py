"""`nepactl doctor`: check what a submission needs, one line per check."""

from __future__ import annotations

from typing import Annotated

import typer

from nepactl import console
from nepactl.commands.options import Cluster, ConfigFiles, Data, GpusPerNode, Nodes, RunsRoot, Sets, Size
from nepactl.errors import handled


@handled
def doctor(size: Size = "tiny", nodes: Nodes = None, gpus_per_node: GpusPerNode = None,
           cluster: Cluster = None, config: ConfigFiles = None, sets: Sets = None, data: Data = None,
           runs_root: RunsRoot = None,
           probe: Annotated[bool, typer.Option(
               "--probe", help="Also run a tiny job: its Python, CUDA, the runs root and the data as a "
                               "compute node sees them.")] = False) -> None:
    """Check the scheduler, partition, GPUs, accounting, runs root and data for a pretrain command
    (the same options); every probe has a timeout and a failure shows the real error.

    Example: nepactl doctor --size L --nodes 8 --data /data/imagenet --probe
    """
    from nepactl.doctor import run_checks
    from nepactl.runs import runs_root as resolve_root

    results = run_checks(root=resolve_root(runs_root), probe=probe, size=size, cluster=cluster, nodes=nodes,
                         gpus_per_node=gpus_per_node, files=tuple(config or ()), sets=tuple(sets or ()),
                         data=data)
    from rich.markup import escape

    for result in results:
        mark = "[green]ok[/green]  " if result.ok else "[red]FAIL[/red]"
        console.out.print(f"{mark} {escape(result.name)}: {escape(result.detail)}", highlight=False)
    if not all(r.ok for r in results):
        raise typer.Exit(1)
