"""One output sink: data on stdout, progress, hints and warnings on stderr."""

from __future__ import annotations

import os

from rich.console import Console

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def debug_enabled() -> bool:
    return os.environ.get("NEPA_DEBUG", "") not in ("", "0", "false")


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {message}")


def hint(message: str) -> None:
    err.print(f"[dim]{message}[/dim]")
