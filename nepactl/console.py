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


def render_table(title: str, rows: list[dict], floats: str = "{:.2f}") -> None:
    """One rich table from typed rows (the same rows serve --json)."""
    from rich.table import Table

    table = Table(title=title)
    columns = list(rows[0]) if rows else []
    for column in columns:
        table.add_column(column, justify="right" if rows and isinstance(rows[0][column], (int, float)) else "left")
    for row in rows:
        table.add_row(*(floats.format(v) if isinstance(v, float) else str(v) for v in row.values()))
    out.print(table)
