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


def render_table(title: str, rows: list[dict], floats: str = "{:.2f}") -> None:
    """One rich table from typed rows (the same rows serve --json)."""
    from rich.table import Table

    table = Table(title=title)
    columns = list(rows[0]) if rows else []
    for column in columns:
        numeric = bool(rows) and isinstance(rows[0][column], (int, float))
        table.add_column(column, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(floats.format(v) if isinstance(v, float) else str(v) for v in row.values()))
    _console(False).print(table)
