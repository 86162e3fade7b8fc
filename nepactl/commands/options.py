"""Options shared by several commands, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nepactl.output import Format

RunsRoot = Annotated[Path | None, typer.Option(
    "--runs-root", envvar="NEPA_RUNS", show_default="./runs",
    help="Directory holding one directory per run.")]
Size = Annotated[str, typer.Option("--size", "-s", help="Model size: tiny, S, B, L, H (or base, large, ...).")]
Nodes = Annotated[int | None, typer.Option("--nodes", "-n", min=1, help="Number of nodes.")]
GpusPerNode = Annotated[int | None, typer.Option("--gpus-per-node", "-g", min=0,
                                                 help="GPUs per node (one process each).")]
Cluster = Annotated[str | None, typer.Option(
    "--cluster", "-c", show_default="$NEPA_CLUSTER, else ~/.config/nepactl/config.yaml, else auto",
    help="Cluster profile: local, auto, slurm, debug or a YAML file (`nepactl cluster init` writes yours).")]
Data = Annotated[str | None, typer.Option(
    "--data", show_default="$NEPA_DATA, else the user config file (tiny: the bundled digits)",
    help="Training data: an image folder (PATH/train/<class>/...), an HF dataset or `data pack` shards.")]
Name = Annotated[str | None, typer.Option("--name", help="Run name (default: TASK-SIZE-TIMESTAMP).")]
ConfigFiles = Annotated[list[Path] | None, typer.Option(
    "--config", help="YAML file(s) applied after the templates, in order.")]
Sets = Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE override, e.g. train.max_steps=100.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the resolved config and sbatch script; create nothing.")]
Json = Annotated[bool, typer.Option("--json", help="Same as --format json.")]
OutputFormat = Annotated[Format, typer.Option("--format", case_sensitive=False,
                                              help="Output on stdout: table, json, csv or md.")]


def chosen_format(fmt: Format, json_out: bool = False) -> Format:
    """--json is kept as the alias of --format json it always was."""
    return Format.json if json_out else fmt


def parse_seeds(text: str) -> tuple[int, ...]:
    """'0,1,2' -> (0, 1, 2); one line naming the flag otherwise."""
    from nepa.config import ConfigError

    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected whole numbers, e.g. 0,1,2") from None
    if not seeds or min(seeds) < 0:
        raise ConfigError(f"--seeds {text!r}: expected seeds >= 0, e.g. 0,1,2")
    return seeds
