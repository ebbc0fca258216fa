"""Plain-text tables for the listing commands (`autotl searches`, `trials`, `plugins`, `cache ls`)."""

from __future__ import annotations

from typing import Any

import click


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """`rows` as left-aligned columns under a header line; ``(none)`` for no rows."""
    if not rows:
        click.echo("(none)")
        return
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for r in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
