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
from typing import TextIO, cast
from uuid import uuid4

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from ..broker import BrokerRole
from ..containers.demo import demo_node
from ..demo import DemoCluster, DemoNames, Order, generate_orders, publish_in_batches
from ..demo.check import DemoResult
from ..logs import configure_logging
from ..settings import EventCompositionSettings, load_settings
from .db import prepare_database
from .demo_report import print_report
from .parsers import DEFAULT_MALFORMED

_REFRESH_SECONDS = 0.1


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
        library_events=settings.logging.library_events,
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
        options.settings_for, demo_node, observers=options.observers, names=names
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
    event_store = cluster.event_store
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


if __name__ == "__main__":
    from . import main

    sys.exit(main(["demo", *sys.argv[1:]]))
