"""The demo's report: what each node did and whether the projection is right."""

from collections.abc import Sequence
from functools import partial

from rich import box
from rich.console import Console
from rich.table import Table

from ..consumers.partitions import partition_from_key
from ..demo import expected_totals
from ..demo.check import DemoResult


def print_report(result: DemoResult, console: Console) -> None:
    if not console.is_terminal:
        # Piped or captured: one line per row, however many partitions a node holds.
        console.width = max(console.width, 120)
    table = Table(box=box.SIMPLE_HEAD, title=None, pad_edge=False)
    table.add_column("node")
    table.add_column("role")
    table.add_column("processed", justify="right")
    table.add_column("malformed", justify="right")
    table.add_column("partitions held")
    for node in result.nodes:
        table.add_row(
            node.node_id,
            str(node.role),
            str(node.applied),
            str(node.malformed),
            _sources(node.sources),
        )
    table.add_section()
    held = [source for node in result.nodes for source in node.sources]
    table.add_row(
        "total",
        "",
        str(result.applied),
        str(result.rejected),
        f"{len(held)} of {_count(held)}",
    )
    console.print(table)
    line = partial(console.print, soft_wrap=True, markup=False, highlight=False)
    customers = len(expected_totals(result.orders))
    line(
        f"published {len(result.orders)} events ({result.valid} valid, "
        f"{result.malformed} malformed) for {customers} customers in one "
        f"category read in {_count(held)} partitions; storage: {result.storage}"
    )
    rate = len(result.orders) / max(result.elapsed_seconds, 1e-3)
    line(
        f"elapsed: {result.elapsed_seconds:.2f}s from the first publish to the last "
        f"event processed ({rate:.0f} events/s)"
    )
    problem = result.problem()
    if problem is None:
        line(
            f"check: passed: all {result.valid} valid events applied once, "
            f"{result.malformed} malformed events logged and skipped, projection "
            f"of {customers} customers correct"
        )
    else:
        line(f"check: FAILED: {problem}")


def _sources(keys: Sequence[str]) -> str:
    # The sources are partitions "orders[-<run id>]#<index>/<count>": the indexes
    # suffice.
    indexes = []
    for key in keys:
        partition = partition_from_key(key)
        indexes.append(
            (partition.index, str(partition.index)) if partition else (-1, key)
        )
    return ",".join(label for _, label in sorted(indexes)) or "-"


def _count(keys: Sequence[str]) -> str:
    counts = {p.count for p in map(partition_from_key, keys) if p is not None}
    return "/".join(str(count) for count in sorted(counts)) or "0"
