"""The `--report` table: every legacy key, its value and source, what it became, and why."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dbspec.convert.common.core import Conversion, KeyReport

_STYLE = {
    "mapped": "green",
    "defaulted": "cyan",
    "differs": "yellow",
    "unsupported": "red",
    "inert": "dim",
    "invalid": "bold red",
    "unreadable": "red",
}
_ORDER = ("invalid", "unreadable", "unsupported", "differs", "mapped", "defaulted", "inert")


def ordered(conv: Conversion) -> list[KeyReport]:
    """Problems first, then by source order of appearance within each fate."""
    rows = list(conv.reports.values())
    return sorted(rows, key=lambda r: _ORDER.index(r.fate))


def render_report(conv: Conversion, console: Console) -> None:
    table = Table(title=f"{conv.tool} keys", show_lines=False, expand=False)
    for name in ("legacy key", "value", "source", "fate", "dbspec", "note"):
        table.add_column(name, overflow="fold")
    for row in ordered(conv):
        cells = [escape(text) for text in (row.key, row.value, row.source)]
        table.add_row(*cells, f"[{_STYLE[row.fate]}]{row.fate}[/]", escape(row.target), escape(row.note))
    console.print(table)
    counts = {fate: sum(r.fate == fate for r in conv.reports.values()) for fate in _ORDER}
    console.print(", ".join(f"{n} {fate}" for fate, n in counts.items() if n))
