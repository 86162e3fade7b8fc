"""`nepactl convert`: released vit_nepa directories <-> nepa checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nepactl import console
from nepactl.errors import handled


@handled
def convert(
    src: Annotated[Path, typer.Argument(help="Release directory (config.json + model.safetensors), "
                                             "or with --to-hf a nepa checkpoint / run directory.")],
    out: Annotated[Path, typer.Argument(help="Output: a nepa checkpoint file, or with --to-hf a new "
                                             "release directory. Never overwritten.")],
    to_hf: Annotated[bool, typer.Option("--to-hf/--from-hf",
                                        help="Direction: nepa -> release format.")] = False,
    ema: Annotated[bool, typer.Option("--ema/--no-ema",
                                      help="From a release: read pytorch_model_ema.bin.")] = False,
) -> None:
    """Convert released NEPA weights to a nepa checkpoint, or back with --to-hf.

    Example: nepactl convert nepa-base-patch14-224/ nepa-base.pt
    """
    from nepa.pretrained import convert as run_convert

    written = run_convert(src, out, to_hf=to_hf, ema=ema)
    console.out.print(str(written))
