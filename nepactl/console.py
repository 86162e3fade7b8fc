"""One output sink: data on stdout, progress, hints and warnings on stderr.

`out` and `err` are rich Consoles created on first use, so that machine-mode commands
(`status --json`) do not pay for importing rich.
"""

from __future__ import annotations

import os
from functools import cache


@cache
def _console(stderr: bool):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def __getattr__(name: str):
    if name == "out":
        return _console(False)
    if name == "err":
        return _console(True)
    raise AttributeError(name)


def debug_enabled() -> bool:
    return os.environ.get("NEPA_DEBUG", "") not in ("", "0", "false")


def warn(message: str) -> None:
    _console(True).print(f"[yellow]warning:[/yellow] {message}")


def hint(message: str) -> None:
    _console(True).print(f"[dim]{message}[/dim]")
