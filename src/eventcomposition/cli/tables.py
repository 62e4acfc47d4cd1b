"""The commands' tables, drawn with rich and never wrapped or cut.

Reports are read by scripts and tests as well as people, so a row stays on one line
however narrow the terminal (or pipe) is.
"""

import io
from collections.abc import Collection

from rich import box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

# Wide enough for any row: a table is only as wide as its content.
_UNWRAPPED_WIDTH = 10_000


def new_table(*columns: str, numeric: Collection[str] = ()) -> Table:
    """A table with a rule under its header, numbers right-aligned."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in columns:
        table.add_column(column, justify="right" if column in numeric else "left")
    return table


def add_plain_row(table: Table, *cells: str) -> None:
    """A row of plain text: a node id or value is never read as rich markup."""
    table.add_row(*(Text(cell) for cell in cells))


def render(*parts: RenderableType) -> str:
    """``parts`` (tables or lines of text), one after another, as plain text."""
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=_UNWRAPPED_WIDTH,
        highlight=False,
        markup=False,
        emoji=False,
        color_system=None,
    )
    for part in parts:
        console.print(part)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())
