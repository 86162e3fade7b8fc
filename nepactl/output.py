"""One output layer for listings: typed rows + a column spec -> table, json, csv or md on stdout.

JSON and CSV carry every field of the rows (machine mode: no rounding, None stays null/empty);
the rich table and Markdown show the columns, formatted for people. Rich is imported only for
the table, so `status --format json` stays cheap.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Format(str, Enum):
    """What --format accepts."""

    table = "table"
    json = "json"
    csv = "csv"
    md = "md"


@dataclass(frozen=True)
class Column:
    """One column of the human formats (table, md)."""

    key: str  # field of the row
    header: str = ""  # default: the key
    cell: Callable[[Any], str] | None = None  # row -> text (default: the field, floats with 2 digits)
    right: bool = False  # right-justified in the table (numbers)
    color: Callable[[Any], str | None] | None = None  # row -> rich style of this cell (table only)
    table: bool = True  # shown in the rich table (md always shows every column)
    link: bool = False  # md: a path shown as [key](path)

    def text(self, row: Any) -> str:
        if self.cell is not None:
            return self.cell(row)
        value = _field(row, self.key)
        if value is None:
            return ""
        return f"{value:.2f}" if isinstance(value, float) else str(value)


def _field(row: Any, key: str) -> Any:
    return row[key] if isinstance(row, Mapping) else getattr(row, key)


def as_dict(row: Any) -> dict[str, Any]:
    """A dataclass or mapping row as a plain dict (the machine formats' record)."""
    return dataclasses.asdict(row) if dataclasses.is_dataclass(row) else dict(row)


def auto_columns(rows: Sequence[Any]) -> tuple[Column, ...]:
    """Every field of the first row, numbers right-justified: for ad-hoc listings."""
    if not rows:
        return ()
    first = as_dict(rows[0])
    return tuple(Column(key, right=isinstance(v, (int, float)) and not isinstance(v, bool))
                 for key, v in first.items())


def field_names(rows: Sequence[Any], row_type: type | None) -> list[str]:
    """CSV header: the row type's fields, so an empty listing still has its header row."""
    if row_type is not None and dataclasses.is_dataclass(row_type):
        return [f.name for f in dataclasses.fields(row_type)]
    return list(as_dict(rows[0])) if rows else []


def _finite(value: Any) -> Any:
    """NaN and infinities (a diverged run's loss) as null: strict JSON that jq can read."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(rows: Sequence[Any]) -> str:
    return json.dumps([_finite(as_dict(r)) for r in rows], indent=1, allow_nan=False) + "\n"


def to_csv(rows: Sequence[Any], row_type: type | None = None) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=field_names(rows, row_type), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(as_dict(r) for r in rows)
    return buffer.getvalue()


def to_markdown(rows: Sequence[Any], columns: Sequence[Column]) -> str:
    def cell(column: Column, row: Any) -> str:
        text = column.text(row)
        if column.link and text:
            text = f"[{column.header or column.key}]({text})"
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(c.header or c.key for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c, r) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def rich_table(rows: Sequence[Any], columns: Sequence[Column], title: str = "",
               row_style: Callable[[Any], str | None] | None = None, **table_args: Any):
    """The rich Table (also what `status --watch` refreshes)."""
    from rich.table import Table
    from rich.text import Text

    shown = [c for c in columns if c.table]
    table = Table(title=title or None, **table_args)
    for column in shown:
        table.add_column(column.header or column.key, justify="right" if column.right else "left")
    for row in rows:
        cells = [Text(c.text(row), style=(c.color(row) if c.color else None) or "") for c in shown]
        table.add_row(*cells, style=row_style(row) if row_style else None)
    return table


def emit(rows: Sequence[Any], fmt: Format, *, columns: Sequence[Column] | None = None,
         row_type: type | None = None, title: str = "",
         row_style: Callable[[Any], str | None] | None = None) -> None:
    """Write the rows to stdout in the chosen format."""
    columns = auto_columns(rows) if columns is None else columns
    fmt = Format(fmt)
    if fmt is Format.table:
        from nepactl import console

        console.out.print(rich_table(rows, columns, title, row_style))
        return
    text = {Format.json: lambda: to_json(rows), Format.csv: lambda: to_csv(rows, row_type),
            Format.md: lambda: to_markdown(rows, columns)}[fmt]()
    sys.stdout.write(text)
    sys.stdout.flush()
