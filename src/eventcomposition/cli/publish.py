"""``eventcomposition publish``: append events to streams in PostgreSQL.

One event from options, many from JSON Lines (a file or standard input), or the
sample application's orders to feed a running demo cluster.
"""

import argparse
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from logicblocks.event.store import EventStore, PostgresEventStorageAdapter

from ..database import connection_pool
from ..demo import DemoNames, generate_orders, publish_orders
from ..publishing import (
    EventToPublish,
    categories_of,
    parse_event,
    parse_json_lines,
    publish_events,
)
from ..settings import (
    EventCompositionSettings,
    environment_variable,
    load_settings,
)
from .errors import CommandError
from .options import configure_logging_from


async def publish(args: argparse.Namespace) -> int:
    if args.demo_orders is not None:
        if args.demo_orders < 1:
            raise CommandError("--demo-orders needs a positive number of orders")
        return await publish_demo_orders(args)
    events = events_from(args)
    async with event_store_for(
        load_settings(args.env, settings_dir=args.settings_dir)
    ) as store:
        stored = await publish_events(store, events)
    writes = len(categories_of(events))
    print(
        f"published {len(stored)} event{'s' if len(stored) != 1 else ''}"
        + (f" in {writes} writes, one per category" if writes > 1 else "")
    )
    for event in stored:
        print(
            f"  {event.category}/{event.stream} position {event.position} "
            f"(sequence number {event.sequence_number}): {event.name}"
        )
    return 0


def events_from(args: argparse.Namespace) -> list[EventToPublish]:
    if args.name is not None:
        if not args.category or not args.stream:
            raise CommandError("--name needs --category and --stream")
        return [parse_event(args.category, args.stream, args.name, args.payload)]
    if args.category or args.stream:
        raise CommandError("--category and --stream go with --name only")
    if args.file == "-":
        return parse_json_lines(sys.stdin, source="standard input")
    path = Path(args.file)
    try:
        with path.open(encoding="utf-8") as file:
            return parse_json_lines(file, source=str(path))
    except OSError as error:
        raise CommandError(f"cannot read {path}: {error.strerror}") from None


async def publish_demo_orders(args: argparse.Namespace) -> int:
    names = DemoNames(run_id=args.demo_run_id)
    orders = generate_orders(args.demo_orders, seed=args.seed)
    async with event_store_for(
        load_settings(args.env, settings_dir=args.settings_dir)
    ) as store:
        published = await publish_orders(store, orders, names=names)
    print(f"published {published} orders in category {names.category}")
    return 0


@asynccontextmanager
async def event_store_for(
    settings: EventCompositionSettings,
) -> AsyncIterator[EventStore]:
    configure_logging_from(settings)
    if settings.storage.type != "postgres":
        raise CommandError(
            "publish needs storage.type = postgres (events in memory would vanish "
            f"with this command); set {environment_variable('storage.type')}=postgres or "
            "choose an environment that uses PostgreSQL"
        )
    postgres = settings.storage.postgres
    async with connection_pool(
        postgres.conninfo(),
        where=postgres.location(),
        min_size=1,
        max_size=2,
        connect_timeout=postgres.connect_timeout,
    ) as pool:
        yield EventStore(adapter=PostgresEventStorageAdapter(connection_source=pool))
