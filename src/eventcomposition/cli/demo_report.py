"""The demo's report: what each node did and whether the projection is right."""

from collections.abc import Sequence
from functools import partial

from rich import box
from rich.console import Console
from rich.table import Table

from ..demo import SHARD_COUNT, expected_totals
from ..demo.check import DemoResult


def print_report(result: DemoResult, console: Console) -> None:
    table = Table(box=box.SIMPLE_HEAD, title=None, pad_edge=False)
    table.add_column("node")
    table.add_column("role")
    table.add_column("processed", justify="right")
    table.add_column("malformed", justify="right")
    table.add_column("shards held")
    for node in result.nodes:
        table.add_row(
            node.node_id,
            str(node.role),
            str(node.applied),
            str(node.malformed),
            _sources(node.sources),
        )
    table.add_section()
    held = sum(len(node.sources) for node in result.nodes)
    table.add_row(
        "total",
        "",
        str(result.applied),
        str(result.rejected),
        f"{held} of {SHARD_COUNT}",
    )
    console.print(table)
    line = partial(console.print, soft_wrap=True, markup=False, highlight=False)
    customers = len(expected_totals(result.orders))
    line(
        f"published {len(result.orders)} events ({result.valid} valid, "
        f"{result.malformed} malformed) for {customers} customers over "
        f"{SHARD_COUNT} categories; storage: {result.storage}"
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


def _sources(categories: Sequence[str]) -> str:
    # The categories are "orders[-<run id>]-<shard>": the shard numbers suffice.
    shards = [category.rsplit("-", 1)[-1] for category in categories]
    return ",".join(sorted(shards, key=_shard_key)) or "-"


def _shard_key(shard: str) -> tuple[int, str]:
    return (int(shard), shard) if shard.isdigit() else (SHARD_COUNT, shard)
