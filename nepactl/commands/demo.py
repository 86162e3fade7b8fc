"""`nepactl demo`: the main job on the embedded default, end to end on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nepactl import console
from nepactl.errors import handled

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


@handled
def demo(
    runs_root: Annotated[Path, typer.Option(envvar="NEPA_RUNS", help="Where runs live.")] = Path("runs"),
    steps: Annotated[int | None, typer.Option(help="Override the number of pretraining steps.")] = None,
    fresh: Annotated[bool, typer.Option("--fresh/--reuse", help="Start over instead of resuming.")] = False,
) -> None:
    """Pretrain tiny NEPA on the bundled digits (local executor), then linear-probe it.

    Re-running resumes (or reuses) runs/demo. Example: nepactl demo --steps 200
    """
    from nepactl.demo import run_demo

    rows = run_demo(TEMPLATES / "demo.yaml", runs_root / "demo", steps=steps, fresh=fresh)
    console.render_table("NEPA demo: linear probe on digits val (300 images)", rows)
