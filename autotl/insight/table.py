"""Plain-text tables for the listing commands (`autotl searches`, `trials`, `plugins`, `cache ls`)."""

from __future__ import annotations

from typing import Any, Collection

import click


def print_table(rows: list[dict[str, Any]], columns: list[str], paths: Collection[str] = ()) -> None:
    """`rows` as left-aligned columns under a header line; ``(none)`` for no rows. The columns of `paths` hold
    paths, shortened when long (`shorten`)."""
    if not rows:
        click.echo("(none)")
        return
    cells = [[shorten(cell(row.get(c))) if c in paths else cell(row.get(c)) for c in columns] for row in rows]
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


MAX_CELL = 40  # a table's path cells are cut to this width (--json gives every value whole)


def shorten(text: str, width: int = MAX_CELL) -> str:
    """`text` when it fits `width`; a path kept to what tells it apart, its start and its last parts
    (``kerashub:/home/me/models/bert_tiny_en_uncased`` -> ``kerashub:/…/models/bert_tiny_en_uncased``);
    anything else cut in the middle."""
    if len(text) <= width:
        return text
    head, sep, rest = text.partition("/")
    if sep and len(head) < width // 3:
        parts = rest.split("/")
        tail = parts.pop()
        while parts and len(head) + len(parts[-1]) + len(tail) + 4 <= width:
            tail = f"{parts.pop()}/{tail}"
        shortened = f"{head}/…/{tail}"
        if len(shortened) <= width:
            return shortened
    keep = width - 1
    return text[: keep // 2] + "…" + text[len(text) - (keep - keep // 2):]


def clip(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
