"""7. Latency and idle load: waking consumers with NOTIFY against polling.

One node (role FULL, so coordinator and observer in one) runs in this process with
one subscription consumer over the demo's 8 categories, with the production broker
intervals (base.toml), once per variant:

- ``notify``: the NOTIFY listener wakes the consumer; polling every 10 s remains
  the safety net (and every 30 s, for comparison of the idle load);
- ``poll``: polling only, at the default interval of 1 s.

Latency: single events are published at a steady rate (50 per second) by a
publisher in the same process, each in its own transaction, to a random category;
an event's latency runs from just before its publish call to the moment the
processor sees it. Target with notify: p99 <= 50 ms.

Idle load: with nothing published, the statements each node sends per second, from
``pg_stat_statements`` (calls, per database), split into the consumer's (reads and
writes of ``events``: the poll and its state), the broker's (``subscribers``,
``subscriptions``, its leadership lock), the transaction control around them
(``BEGIN``, ``COMMIT``: each a round trip too) and the rest (the listener's health
check, the pool's connection checks). Target with notify: <= 1 per second per node.

The node runs in process: the CLI cannot start a node with a NOTIFY listener yet.
The server is a throwaway PostgreSQL with ``pg_stat_statements`` preloaded.
"""

import asyncio
import random
import statistics
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import psycopg
from logicblocks.event.processing import (
    EventBrokerStorageType,
    EventBrokerType,
    EventProcessor,
    ServiceManager,
)
from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.types import (
    JsonValue,
    NewEvent,
    StoredEvent,
)

from eventcomposition import (
    BrokerRole,
    DistributedEventBrokerSettings,
    EventConsumerSettings,
    EventRuntime,
)
from eventcomposition.broker import make_event_broker
from eventcomposition.consumers import make_subscription_consumer
from eventcomposition.database import connection_pool
from eventcomposition.demo import DemoNames
from eventcomposition.runtime import ExposesSources
from eventcomposition.schema import migrate
from eventcomposition.services import NotifyListener
from eventcomposition.testing import (
    ConnectionInfo,
    PostgresUnavailableError,
    ThrowawayPostgres,
    create_database,
    unique_database_name,
)
from eventcomposition.testing.waiting import wait_until

from .common import BenchContext, Json, say, table

NAME = "latency"
RATE = 50.0
TARGET_P99_SECONDS = 0.050
TARGET_IDLE_PER_SECOND = 1.0
ALLOCATION_TIMEOUT = 90.0

# base.toml's broker intervals: what a production node runs with.
PRODUCTION_BROKER = DistributedEventBrokerSettings(
    role=BrokerRole.FULL,
    subscriber_manager_heartbeat_interval=timedelta(seconds=10),
    subscriber_manager_purge_interval=timedelta(seconds=60),
    subscriber_manager_subscriber_max_age=timedelta(seconds=600),
    coordinator_subscriber_max_time_since_last_seen=timedelta(seconds=60),
    coordinator_distribution_interval=timedelta(seconds=20),
    coordinator_leadership_max_duration=timedelta(seconds=900),
    coordinator_leadership_attempt_interval=timedelta(seconds=5),
    observer_synchronisation_interval=timedelta(seconds=20),
)


@dataclass(frozen=True)
class Variant:
    name: str
    notify: bool
    poll_interval: timedelta


VARIANTS = (
    Variant("notify, poll 10 s", notify=True, poll_interval=timedelta(seconds=10)),
    Variant("notify, poll 30 s", notify=True, poll_interval=timedelta(seconds=30)),
    Variant("poll 1 s (default)", notify=False, poll_interval=timedelta(seconds=1)),
)
TRANSACTION_CONTROL = frozenset({"BEGIN", "COMMIT", "ROLLBACK"})


class TimingProcessor(EventProcessor[StoredEvent]):
    """Notes when each event (by its payload's ``n``) reaches the processor."""

    def __init__(self) -> None:
        self.seen_at: dict[int, float] = {}

    async def process_event(self, event: StoredEvent[str, JsonValue]) -> None:
        n = event.payload.get("n") if isinstance(event.payload, Mapping) else None
        if isinstance(n, int):
            self.seen_at.setdefault(n, time.perf_counter())


@dataclass
class Node:
    variant: Variant
    database: ConnectionInfo
    runtime: EventRuntime
    processor: TimingProcessor
    held: "asyncio.Future[None]"
    listener: NotifyListener | None = None
    store: EventStore | None = None
    sent_at: dict[int, float] = field(default_factory=dict)


@asynccontextmanager
async def running_node(
    variant: Variant, database: ConnectionInfo, names: DemoNames
) -> AsyncIterator[Node]:
    async with AsyncExitStack() as stack:
        pool = await stack.enter_async_context(
            connection_pool(database.conninfo, where=variant.name, max_size=5)
        )
        store = EventStore(adapter=PostgresEventStorageAdapter(connection_source=pool))
        processor = TimingProcessor()
        node_id = f"latency-{'notify' if variant.notify else 'poll'}"
        broker = make_event_broker(
            node_id,
            EventBrokerType.Distributed,
            EventBrokerStorageType.Postgres,
            settings=PRODUCTION_BROKER,
            connection_settings=database.connection_settings(),
            connection_pool=pool,
        )
        runtime = EventRuntime(
            node_id,
            broker,
            ServiceManager(),
            EventConsumerSettings(poll_interval=variant.poll_interval),
        )
        consumer = make_subscription_consumer(
            event_store=store,
            subscriber_group=names.subscriber_group,
            subscription_requests=names.categories(),
            event_processor=processor,
        )
        await runtime.register_subscription_consumer(consumer)
        assert isinstance(consumer, ExposesSources)
        await stack.enter_async_context(runtime)
        node = Node(
            variant,
            database,
            runtime,
            processor,
            held=asyncio.ensure_future(_held(consumer, len(names.categories()))),
            store=store,
        )
        stack.callback(node.held.cancel)
        if variant.notify:
            node.listener = await stack.enter_async_context(
                NotifyListener(database.conninfo, runtime, node_id=node_id)
            )
        yield node


async def _held(consumer: ExposesSources, count: int) -> None:
    await wait_until(
        lambda: len(consumer.sources) >= count,
        timeout=ALLOCATION_TIMEOUT,
        interval=0.05,
        description="the node to hold every source",
    )


async def publish_steadily(
    node: Node, names: DemoNames, seconds: float, seed: int
) -> None:
    assert node.store is not None
    categories = [identifier.category for identifier in names.categories()]
    chooser = random.Random(seed)
    count = int(seconds * RATE)
    started = time.perf_counter()
    for n in range(count):
        delay = started + n / RATE - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        event: NewEvent[str, JsonValue] = NewEvent(name="placed", payload={"n": n})
        stream = node.store.stream(category=chooser.choice(categories), stream=f"s{n}")
        node.sent_at[n] = time.perf_counter()
        await stream.publish(events=[event])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


@dataclass(frozen=True)
class Latency:
    count: int
    p50: float
    p99: float
    maximum: float
    mean: float

    def as_json(self) -> Json:
        return {
            "events": self.count,
            "p50_seconds": self.p50,
            "p99_seconds": self.p99,
            "max_seconds": self.maximum,
            "mean_seconds": self.mean,
        }


async def measure_latency(node: Node, names: DemoNames, seconds: float) -> Latency:
    await publish_steadily(node, names, seconds, seed=7)
    deadline = time.perf_counter() + node.variant.poll_interval.total_seconds() + 10
    while len(node.processor.seen_at) < len(node.sent_at):
        if time.perf_counter() > deadline:
            raise RuntimeError(
                f"{node.variant.name}: only {len(node.processor.seen_at)} of "
                f"{len(node.sent_at)} events were processed"
            )
        await asyncio.sleep(0.05)
    latencies = [node.processor.seen_at[n] - sent for n, sent in node.sent_at.items()]
    return Latency(
        count=len(latencies),
        p50=percentile(latencies, 0.50),
        p99=percentile(latencies, 0.99),
        maximum=max(latencies),
        mean=statistics.fmean(latencies),
    )


# -- idle load -------------------------------------------------------------------

STATEMENTS = """
    SELECT s.query, sum(s.calls)::bigint
    FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
    WHERE d.datname = %s
    GROUP BY s.query
"""


def statement_calls(admin: ConnectionInfo, dbname: str) -> dict[str, int]:
    with psycopg.connect(admin.conninfo, autocommit=True) as connection:
        rows = connection.execute(STATEMENTS, [dbname]).fetchall()
    return {str(query): int(calls) for query, calls in rows}


def kind_of(query: str) -> str:
    if query.strip().upper() in TRANSACTION_CONTROL:
        return "begin/commit"
    text = query.lower()
    if "subscriber" in text or "subscription" in text or "advisory" in text:
        return "broker"
    if "events" in text:
        return "consumer"
    return "other"


def idle_rates(
    before: Mapping[str, int], after: Mapping[str, int], seconds: float
) -> dict[str, float]:
    rates = {"consumer": 0.0, "broker": 0.0, "begin/commit": 0.0, "other": 0.0}
    for query, calls in after.items():
        rates[kind_of(query)] += (calls - before.get(query, 0)) / seconds
    rates["total"] = sum(rates.values())
    return rates


# -- the run -----------------------------------------------------------------------


def start_server(ctx: BenchContext) -> ThrowawayPostgres:
    server = ThrowawayPostgres(
        settings={
            "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.track": "top",
        }
    )
    server.start()
    with psycopg.connect(server.connection_info.conninfo, autocommit=True) as admin:
        admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        row = admin.execute("SHOW server_version").fetchone()
    # This run's own server, not the shared one: the machine line names it.
    ctx.postgres.version = str(row[0]) if row else "unknown"
    return server


async def run(ctx: BenchContext) -> None:
    publish_seconds = 5.0 if ctx.quick else 20.0
    idle_seconds = 10.0 if ctx.quick else 60.0
    say("\n== 7. Latency and idle load: NOTIFY wake-ups against polling ==")
    say(
        f"One FULL node in process per variant (production broker intervals), one "
        f"subscription consumer over 8 categories; {RATE:g} single-event publishes "
        f"per second for {publish_seconds:g} s; idle load over {idle_seconds:g} s."
    )
    try:
        server = await asyncio.to_thread(start_server, ctx)
    except PostgresUnavailableError as error:
        say(f"latency: skipped ({str(error).splitlines()[0]})")
        return
    try:
        await measure(ctx, server, publish_seconds, idle_seconds)
    finally:
        await asyncio.to_thread(server.stop)


async def measure(
    ctx: BenchContext,
    server: ThrowawayPostgres,
    publish_seconds: float,
    idle_seconds: float,
) -> None:
    admin = server.connection_info
    names = DemoNames(run_id="latency")
    databases = []
    for _ in VARIANTS:
        database = create_database(admin, unique_database_name("latency"))
        await migrate(database.conninfo)
        databases.append(database)

    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(running_node(variant, database, names))
            for variant, database in zip(VARIANTS, databases, strict=True)
        ]
        # The first allocation comes one observer synchronisation (20 s) after start.
        started = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(*(node.held for node in nodes)), ALLOCATION_TIMEOUT
        )
        say(f"(sources allocated after {time.perf_counter() - started:.1f} s)")
        # Every node idles at once, each on its own database.
        before = [statement_calls(admin, node.database.dbname) for node in nodes]
        await asyncio.sleep(idle_seconds)
        after = [statement_calls(admin, node.database.dbname) for node in nodes]
        idle = [
            idle_rates(b, a, idle_seconds) for b, a in zip(before, after, strict=True)
        ]
        latencies = [
            await measure_latency(node, names, publish_seconds) for node in nodes
        ]
        listeners = [
            None if node.listener is None else node.listener.status.name
            for node in nodes
        ]

    rows = []
    cases = []
    for variant, latency, rates, listener in zip(
        VARIANTS, latencies, idle, listeners, strict=True
    ):
        p99_verdict = (
            ("met" if latency.p99 <= TARGET_P99_SECONDS else "MISSED")
            if variant.notify
            else "(comparison)"
        )
        idle_verdict = (
            ("met" if rates["total"] <= TARGET_IDLE_PER_SECOND else "MISSED")
            if variant.notify
            else "(comparison)"
        )
        rows.append(
            [
                variant.name,
                latency.count,
                f"{latency.p50 * 1000:.1f}",
                f"{latency.p99 * 1000:.1f}",
                f"{latency.maximum * 1000:.1f}",
                p99_verdict,
                f"{rates['total']:.2f}",
                f"{rates['consumer']:.2f} / {rates['broker']:.2f} / "
                f"{rates['begin/commit']:.2f} / {rates['other']:.2f}",
                idle_verdict,
            ]
        )
        cases.append(
            {
                "variant": variant.name,
                "notify": variant.notify,
                "poll_interval_seconds": variant.poll_interval.total_seconds(),
                "latency": latency.as_json(),
                "latency_verdict": p99_verdict,
                "idle_statements_per_second": rates,
                "idle_verdict": idle_verdict,
                "listener_status_at_end": listener,
            }
        )
    say(
        table(
            "publish -> processed latency (ms) and idle statements per second",
            [
                "variant",
                "events",
                "p50",
                "p99",
                "max",
                "p99 <= 50 ms",
                "idle stmts/s",
                "consumer / broker / begin+commit / other",
                "idle <= 1/s",
            ],
            rows,
        )
    )
    say(
        "Latency runs from just before the publish call (which commits) to the "
        "processor. Idle statements: pg_stat_statements calls per database while "
        "nothing is published; 'consumer' is the consumer's polls of its 8 sources "
        "(a read of the source and one of its state each), 'broker' the "
        "heartbeats, synchronisations and distributions of the production "
        "intervals, 'begin+commit' the transaction control around every one of "
        "those, 'other' the listener's health check and pool checks."
    )
    ctx.save(
        NAME,
        {
            "rate_per_second": RATE,
            "publish_seconds": publish_seconds,
            "idle_seconds": idle_seconds,
            "targets": {
                "notify_p99_seconds": TARGET_P99_SECONDS,
                "notify_idle_statements_per_second": TARGET_IDLE_PER_SECOND,
            },
            "node": "in process (role full), production broker intervals",
            "cases": cases,
        },
    )
