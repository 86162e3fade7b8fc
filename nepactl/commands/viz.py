"""`nepactl viz`: attention maps and next-embedding similarity maps of query patches."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nepactl import console
from nepactl.commands.options import RunsRoot
from nepactl.errors import CliError, handled


def parse_indices(text: str, flag: str) -> list[int]:
    """Comma-separated integers, e.g. '0,5' or '-1'."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CliError(f"{flag} {text!r} is not a comma-separated list of integers, e.g. 0,5") from None
    if not values:
        raise CliError(f"{flag} is empty; give integers like 0,5")
    return values


def _weights_and_out(run: str | None, weights: Path | None, out: Path | None,
                     runs_root: Path | None) -> tuple[Path, Path]:
    """What to load and where to write: RUN/viz/ for a run, ./viz-NAME/ for a weights path."""
    if (run is None) == (weights is None):
        raise CliError("give either a RUN name or --weights PATH (a checkpoint, run or release "
                       "directory), not both and not neither")
    if run is not None:
        from nepactl.runs import find_run
        from nepactl.runs import runs_root as resolve_root

        run_dir = find_run(resolve_root(runs_root), run)
        return run_dir, out or run_dir / "viz"
    if not weights.exists():
        raise CliError(f"{weights} does not exist; give a nepa checkpoint, a run directory or a "
                       "release directory")
    name = weights.resolve().stem if weights.is_file() else weights.resolve().name
    return weights, out or Path(f"viz-{name}")


@handled
def viz(
    run: Annotated[str | None, typer.Argument(help="Run name (see nepactl runs); or use --weights.",
                                              metavar="RUN", show_default=False)] = None,
    weights: Annotated[Path | None, typer.Option(
        "--weights", "-w", help="A nepa checkpoint, run directory or release directory.")] = None,
    image: Annotated[Path, typer.Option("--image", "-i", help="Any RGB or grey image file.",
                                        show_default=False)] = ...,  # type: ignore[assignment]
    layers: Annotated[str | None, typer.Option(
        "--layers", "-l", show_default="first,middle,last",
        help="Block indices, comma-separated; negative counts from the end.")] = None,
    heads: Annotated[str, typer.Option("--heads", help="'all' or head indices, e.g. 0,1.")] = "all",
    query: Annotated[str | None, typer.Option(
        "--query", "-q", help="Query patch indices (row-major, 0-based), e.g. 10,37.")] = None,
    query_grid: Annotated[int | None, typer.Option(
        "--query-grid", min=1, show_default="2",
        help="Instead of --query: an evenly spaced N x N grid of query patches.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", show_default="RUN/viz or ./viz-NAME",
        help="Output directory for the PNGs, sheet.png and index.json.")] = None,
    runs_root: RunsRoot = None,
) -> None:
    """Draw attention maps and next-embedding similarity maps of query patches on an image.

    Writes a PNG per (query, layer, head), a similarity PNG per query, sheet.png and index.json.

    The sheet has a row per query: image, similarity, attention per layer (mean of the heads).

    Example: nepactl viz --weights nepa-base-patch14-224/ --image cat.jpg --layers 0,11 --query 100,135
    """
    if query is not None and query_grid is not None:
        raise CliError("give either --query or --query-grid, not both")
    layer_list = parse_indices(layers, "--layers") if layers is not None else None
    head_list = None if heads.strip().lower() == "all" else parse_indices(heads, "--heads")
    query_list = parse_indices(query, "--query") if query is not None else None
    source, out_dir = _weights_and_out(run, weights, out, runs_root)
    if not image.is_file():
        raise CliError(f"{image}: no such image file; check --image")

    from nepa.viz import visualize

    with console.err.status("viz: starting") as status:
        written = visualize(source, image, out_dir, layers=layer_list, heads=head_list,
                            queries=query_list, query_grid=query_grid,
                            progress=lambda msg: status.update(f"viz: {msg}"))
    console.hint(f"wrote {len(written)} files to {out_dir}")
    for path in written[-2:]:  # sheet.png and index.json (which lists every file)
        console.out.print(str(path))
