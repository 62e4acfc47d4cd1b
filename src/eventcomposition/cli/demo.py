"""``eventcomposition demo``: a coordinator and K observers of the sample app, at work.

In one process: one coordinator-only node and ``--observers`` observer-only nodes,
each built from its own ``DemoContainer``, share one storage (memory by default, or
the configured PostgreSQL database with ``--storage postgres``). The demo publishes
``--events`` orders (a few malformed), shows the progress, stops every node
gracefully and prints what each node did and whether the projection is right.

Exit status: 0 when every valid event was applied once, every malformed one was
rejected and the projection equals the expected totals; 1 otherwise (with the
reason); 2 for bad arguments.
"""

import argparse
import asyncio
import contextlib
import io
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TextIO, cast
from uuid import uuid4

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ..broker import BrokerRole
from ..containers import postgres_location
from ..database import wait_for_database
from ..demo import (
    SHARD_COUNT,
    CustomerTotals,
    DemoCluster,
    DemoNames,
    NodeSummary,
    Order,
    expected_totals,
    generate_orders,
    publish_in_batches,
)
from ..logs import configure_logging
from ..schema import migrate
from ..settings import EventCompositionSettings, PostgresSettings, load_settings
from .run import add_settings_arguments

DEFAULT_EVENTS = 2000
DEFAULT_OBSERVERS = 2
DEFAULT_MALFORMED = 3
DEFAULT_TIMEOUT = 60.0
_REFRESH_SECONDS = 0.1


def add_parser(
    subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a coordinator and observers of the sample app in one process",
        description="Start one coordinator-only and K observer-only nodes of the "
        "sample application (orders projected into totals per customer) in one "
        "process, publish N orders, show the progress, then what each node "
        "processed and whether the projection is correct. Exits 1 if it is not.",
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events",
        type=_positive_int,
        default=DEFAULT_EVENTS,
        metavar="N",
        help=f"orders to publish, malformed ones included (default: {DEFAULT_EVENTS})",
    )
    parser.add_argument(
        "--observers",
        type=_positive_int,
        default=DEFAULT_OBSERVERS,
        metavar="K",
        help=f"observer-only nodes (default: {DEFAULT_OBSERVERS})",
    )
    parser.add_argument(
        "--storage",
        choices=["memory", "postgres"],
        default="memory",
        help="where events, coordination and projections live (default: memory; "
        "postgres uses the configured database)",
    )
    parser.add_argument(
        "--malformed",
        type=_non_negative_int,
        default=None,
        metavar="M",
        help="how many of the orders to publish malformed, to show that they are "
        f"logged and skipped (default: {DEFAULT_MALFORMED}, at most N)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="how long to wait for the nodes to process everything "
        f"(default: {DEFAULT_TIMEOUT:g})",
    )
    add_settings_arguments(parser)


@dataclass(frozen=True)
class DemoOptions:
    events: int
    observers: int
    storage: str
    malformed: int
    timeout: float
    environment: str | None = None
    settings_dir: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "DemoOptions":
        malformed = (
            min(DEFAULT_MALFORMED, args.events)
            if args.malformed is None
            else args.malformed
        )
        if malformed > args.events:
            raise argparse.ArgumentTypeError(
                f"--malformed ({malformed}) must not exceed --events ({args.events})"
            )
        return cls(
            events=args.events,
            observers=args.observers,
            storage=args.storage,
            malformed=malformed,
            timeout=args.timeout,
            environment=args.env,
            settings_dir=args.settings_dir,
        )

    def settings_for(self, node_id: str, role: BrokerRole) -> EventCompositionSettings:
        return load_settings(
            self.environment,
            settings_dir=self.settings_dir,
            node={"id": node_id, "role": role},
            storage={"type": self.storage},
        )


@dataclass(frozen=True)
class DemoResult:
    """What a run published, what the nodes did, and whether it is correct."""

    orders: Sequence[Order]
    nodes: Sequence[NodeSummary]
    totals: dict[str, CustomerTotals]
    elapsed_seconds: float
    storage: str
    timed_out: bool

    @property
    def valid(self) -> int:
        return sum(not order.malformed for order in self.orders)

    @property
    def malformed(self) -> int:
        return len(self.orders) - self.valid

    @property
    def applied(self) -> int:
        return sum(node.applied for node in self.nodes)

    @property
    def rejected(self) -> int:
        return sum(node.malformed for node in self.nodes)

    def problem(self) -> str | None:
        """Why the run is not correct, in one line; ``None`` when it is."""
        if self.applied != self.valid:
            waited = " within the timeout" if self.timed_out else ""
            return f"{self.applied} of {self.valid} valid events were applied{waited}"
        if self.rejected != self.malformed:
            return f"{self.rejected} of {self.malformed} malformed events were rejected"
        expected = expected_totals(self.orders)
        wrong = sorted(
            customer
            for customer in expected.keys() | self.totals.keys()
            if expected.get(customer) != self.totals.get(customer)
        )
        if wrong:
            first = wrong[0]
            return (
                f"the projection is wrong for {len(wrong)} customer(s), e.g. {first}: "
                f"expected {_describe(expected.get(first))}, "
                f"found {_describe(self.totals.get(first))}"
            )
        return None


def _describe(totals: CustomerTotals | None) -> str:
    if totals is None:
        return "no totals"
    return f"{totals.order_count} orders, {totals.total_amount_cents} cents"


def run(args: argparse.Namespace) -> int:
    """The command: run the demo, print its report, return the exit status."""
    try:
        options = DemoOptions.from_args(args)
    except argparse.ArgumentTypeError as error:
        print(f"eventcomposition demo: error: {error}", file=sys.stderr)
        return 2
    settings = options.settings_for("demo", BrokerRole.FULL)
    # The settings' format (json in production), but at least WARNING: the
    # libraries' INFO lines (one per projection saved) would bury the progress bar.
    configure_logging(
        _at_least_warning(settings.logging.level),
        settings.logging.format,
        stream=_CURRENT_STDERR,
    )
    result = asyncio.run(
        run_demo(options, settings, Console(stderr=True, highlight=False))
    )
    print_report(result, Console(soft_wrap=True, highlight=False))
    return 0 if result.problem() is None else 1


async def run_demo(
    options: DemoOptions, settings: EventCompositionSettings, console: Console
) -> DemoResult:
    """Run the nodes, publish, wait until everything is processed, stop the nodes.

    ``settings`` are the run's common settings (the nodes get their own, with
    their ids and roles); ``console`` shows the progress.
    """
    names = DemoNames()
    if options.storage == "postgres":
        await prepare_database(settings.storage.postgres)
        # The database outlives the run: scope this run's names to keep it apart.
        names = DemoNames(run_id=uuid4().hex[:8])
    orders = generate_orders(options.events, malformed=options.malformed)
    cluster = DemoCluster(
        options.settings_for, observers=options.observers, names=names
    )
    try:
        await cluster.start(registration_timeout=options.timeout)
        elapsed, timed_out = await publish_and_follow(
            cluster, orders, patience=options.timeout, console=console
        )
        nodes = await cluster.summaries()
        totals = await cluster.totals()
    finally:
        await cluster.stop()
    return DemoResult(
        orders=orders,
        nodes=nodes,
        totals=totals,
        elapsed_seconds=elapsed,
        storage=options.storage,
        timed_out=timed_out,
    )


async def prepare_database(postgres: PostgresSettings) -> None:
    """Wait for the database (with retries), then apply the schema (idempotent)."""
    await wait_for_database(
        postgres.conninfo(),
        where=postgres_location(postgres),
        connect_timeout=postgres.connect_timeout,
    )
    await migrate(postgres.conninfo())


async def publish_and_follow(
    cluster: DemoCluster,
    orders: Sequence[Order],
    *,
    patience: float,
    console: Console,
) -> tuple[float, bool]:
    """Publish while showing progress, until every order is processed or
    ``patience`` seconds have passed; returns (seconds taken, whether timed out).
    """
    event_store = await cluster.event_store()
    total = len(orders)
    with Progress(
        TextColumn("{task.description:>9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        published_bar = progress.add_task("published", total=total)
        processed_bar = progress.add_task("processed", total=total)

        async def publish() -> None:
            async for count in publish_in_batches(
                event_store, orders, names=cluster.names
            ):
                progress.update(published_bar, completed=count)
                await asyncio.sleep(0)  # let the nodes work between batches

        started = time.monotonic()
        publishing = asyncio.create_task(publish())
        try:
            while not _finished(publishing, cluster.processed, total):
                if time.monotonic() - started > patience:
                    break
                progress.update(processed_bar, completed=cluster.processed)
                await asyncio.sleep(_REFRESH_SECONDS)
            elapsed = time.monotonic() - started
            progress.update(processed_bar, completed=cluster.processed)
        finally:
            if not publishing.done():
                publishing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await publishing
    if not publishing.cancelled():
        publishing.result()  # raises the publisher's failure, if any
    return elapsed, cluster.processed < total


def _finished(publishing: "asyncio.Task[None]", processed: int, total: int) -> bool:
    if not publishing.done():
        return False
    return publishing.exception() is not None or processed >= total


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
    replayed = sum(node.replayed for node in result.nodes)
    if replayed:
        line(f"replayed deliveries skipped: {replayed}")
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


def _at_least_warning(level: str) -> str:
    levels = logging.getLevelNamesMapping()
    return max(level.upper(), "WARNING", key=levels.__getitem__)


class _CurrentStderr(io.TextIOBase):
    # Looks sys.stderr up at every write, so log lines go through rich's redirection
    # while the progress bar is live.
    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


_CURRENT_STDERR = cast(TextIO, _CurrentStderr())


def _positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = _number(text, float)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value:g}")
    return value


def _number[N: (int, float)](text: str, kind: type[N]) -> N:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None


if __name__ == "__main__":
    from . import main

    sys.exit(main(["demo", *sys.argv[1:]]))
