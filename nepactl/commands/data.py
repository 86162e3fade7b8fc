"""`nepactl data pack|check`: convert datasets to webdataset shards and validate them."""

from __future__ import annotations

import typer

app = typer.Typer(help="Pack datasets into webdataset shards and check datasets before a job.",
                  no_args_is_help=True)
