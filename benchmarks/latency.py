"""7. Latency and idle load: waking consumers with NOTIFY against polling.

Per mode, one observer process (``eventcomposition run --role observer``, the
``production`` settings profile) runs a transactional consumer over the 16
partitions of the demo's category (``benchmarks/latency_app.py``), with a coordinator process beside it,
each mode on its own database of one throwaway PostgreSQL server, in the same run:

- ``notify`` (the default on PostgreSQL): the NOTIFY listener wakes the consumer;
  it polls every ``consumers.notify_poll_interval`` (10 s) as a safety net;
- ``poll``: polling only, every ``consumers.poll_interval`` (1 s, its default);
- ``notify`` with the broker at base.toml's intervals (heartbeat 10 s,
  synchronisation and distribution 20 s) instead of production's 5 s: how much of
  the idle load is the broker's.

Latency: single events are published at a steady rate (50 per second) from this
process, each in its own transaction, to a random one of 64 streams; an event's latency runs
from just before its publish call to the moment its batch has committed in the
observer (the processor logs the wall-clock time from the commit callback).
Target with notify: p99 <= 50 ms.

Idle load: with nothing published, the statements the observer sends per second,
from ``pg_stat_statements`` (calls of the observer's database user in its
database; the coordinator connects as another user, so its statements are apart),
split into the consumer's (reads of ``events``, checkpoints and claims), the
broker's (``subscribers``, ``subscriptions``, its locks), the transaction control
around them (``BEGIN``, ``COMMIT``: each a round trip too) and the rest (the
listener's health check, the pool's connection checks). Target with notify: <= 1
per second per node.
"""

import asyncio
import random
import statistics
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.types import JsonValue, NewEvent
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from eventcomposition.schema import migrate
from eventcomposition.testing import (
    ConnectionInfo,
    PostgresUnavailableError,
    ThrowawayPostgres,
    create_database,
    unique_database_name,
)
from eventcomposition.testing.processes import (
    NodeProcess,
    NodeProcesses,
    node_environment,
)

from .common import (
    PROJECT_ROOT,
    BenchContext,
    Json,
    first_logged,
    one_stream_per_partition,
    say,
    table,
)
from .latency_app import APP, COMMITTED, NAMES

NAME = "latency"
RATE = 50.0
TARGET_P99_SECONDS = 0.050
TARGET_IDLE_PER_SECOND = 1.0
START_TIMEOUT = 90.0
# The coordinator's database user: its statements stay out of the observer's.
COORDINATOR_USER = "latency_coordinator"
TRANSACTION_CONTROL = frozenset({"BEGIN", "COMMIT", "ROLLBACK"})
# The NOTIFY listener's health check; the coordinator's leadership check and the
# HTTP probes' database check name their column, so they read apart.
LISTENER_STATEMENTS = frozenset({"select 1", "select $1"})
ACCEPTED = "consumer.source-accepted"

type Pool = AsyncConnectionPool[AsyncConnection[Any]]


@dataclass(frozen=True)
class Mode:
    name: str
    key: str
    wake: str
    settings: Mapping[str, str | int | float]


# base.toml's broker intervals, against production.toml's 5 s: how much of the idle
# load is the broker's.
BASE_BROKER_INTERVALS = {
    "broker.subscriber_manager_heartbeat_interval": 10,
    "broker.coordinator_distribution_interval": 20,
    "broker.observer_synchronisation_interval": 20,
}
MODES = (
    Mode(
        "notify (safety-net poll 10 s)",
        "notify",
        "notify",
        {"consumers.wake": "notify"},
    ),
    Mode("poll (every 1 s, default)", "poll", "poll", {"consumers.wake": "poll"}),
    Mode(
        "notify, broker at base.toml intervals",
        "notify-base",
        "notify",
        {"consumers.wake": "notify", **BASE_BROKER_INTERVALS},
    ),
)


@dataclass
class Node:
    mode: Mode
    database: ConnectionInfo
    observer: NodeProcess
    store: EventStore
    sent_at: dict[int, float] = field(default_factory=dict)

    def committed_at(self) -> dict[int, float]:
        return first_logged(self.observer, COMMITTED, "at")


def environment(
    mode: Mode, database: ConnectionInfo, **settings: str | int | float
) -> dict[str, str]:
    return node_environment(
        database,
        environment="production",
        settings={"http.enabled": "false", **mode.settings, **settings},
    )


@asynccontextmanager
async def running_node(
    nodes: NodeProcesses, mode: Mode, database: ConnectionInfo
) -> AsyncIterator[Node]:
    observer = nodes.run_node(
        app=APP,
        role="observer",
        node_id=f"latency-{mode.key}",
        env=environment(mode, database),
        cwd=PROJECT_ROOT,
    )
    nodes.run_node(
        app=APP,
        role="coordinator",
        node_id=f"latency-{mode.key}-coordinator",
        env=environment(mode, database, **{"storage.postgres.user": COORDINATOR_USER}),
        cwd=PROJECT_ROOT,
    )
    async with AsyncConnectionPool[AsyncConnection[Any]](
        database.conninfo, min_size=1, max_size=2, open=False
    ) as pool:
        store = EventStore(adapter=PostgresEventStorageAdapter(connection_source=pool))
        yield Node(mode, database, observer, store)


async def held(node: Node) -> None:
    """Until the observer has accepted every partition."""
    count = len(NAMES.partitions())
    deadline = time.monotonic() + START_TIMEOUT
    while len(node.observer.logs(ACCEPTED)) < count:
        if time.monotonic() > deadline or not node.observer.running:
            raise RuntimeError(
                f"{node.mode.name}: the observer did not hold every partition\n"
                + node.observer.output_tail()
            )
        await asyncio.sleep(0.1)


async def publish(node: Node, n: int, stream_name: str) -> None:
    event: NewEvent[str, JsonValue] = NewEvent(name="placed", payload={"n": n})
    stream = node.store.stream(category=NAMES.category, stream=stream_name)
    node.sent_at[n] = time.time()
    await stream.publish(events=[event])


async def committed(node: Node, numbers: set[int], timeout: float) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not numbers <= node.committed_at().keys():
        if time.monotonic() > deadline:
            missing = len(numbers - node.committed_at().keys())
            raise RuntimeError(
                f"{node.mode.name}: {missing} of {len(numbers)} events not "
                f"committed\n{node.observer.output_tail()}"
            )
        await asyncio.sleep(0.05)


async def warm_up(node: Node) -> None:
    """One event per partition, so that every source is claimed before measuring."""
    streams = one_stream_per_partition(len(NAMES.partitions()))
    numbers = set(range(-len(streams), 0))
    for n, stream in zip(sorted(numbers), streams, strict=True):
        await publish(node, n, stream)
    await committed(node, numbers, timeout=60)


async def publish_steadily(node: Node, seconds: float, seed: int) -> set[int]:
    streams = [f"s{k}" for k in range(64)]
    chooser = random.Random(seed)
    count = int(seconds * RATE)
    started = time.perf_counter()
    for n in range(count):
        delay = started + n / RATE - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await publish(node, n, chooser.choice(streams))
    return set(range(count))


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
    slowest: list[tuple[float, float]]
    """The slowest events: (seconds since the first publish, latency in seconds)."""

    def as_json(self) -> Json:
        return {
            "events": self.count,
            "p50_seconds": self.p50,
            "p99_seconds": self.p99,
            "max_seconds": self.maximum,
            "mean_seconds": self.mean,
            "slowest": [
                {"at_seconds": at, "latency_seconds": latency}
                for at, latency in self.slowest
            ],
        }


async def measure_latency(node: Node, seconds: float) -> Latency:
    numbers = await publish_steadily(node, seconds, seed=7)
    await committed(node, numbers, timeout=30)
    at = node.committed_at()
    latencies = [at[n] - node.sent_at[n] for n in numbers]
    first = min(node.sent_at[n] for n in numbers)
    slowest = sorted(
        ((node.sent_at[n] - first, at[n] - node.sent_at[n]) for n in numbers),
        key=lambda pair: pair[1],
    )[-5:]
    return Latency(
        slowest=slowest[::-1],
        count=len(latencies),
        p50=percentile(latencies, 0.50),
        p99=percentile(latencies, 0.99),
        maximum=max(latencies),
        mean=statistics.fmean(latencies),
    )


# -- idle load -------------------------------------------------------------------

STATEMENTS = """
    SELECT s.query, sum(s.calls)::bigint
    FROM pg_stat_statements s
    JOIN pg_database d ON d.oid = s.dbid
    JOIN pg_roles r ON r.oid = s.userid
    WHERE d.datname = %s AND r.rolname = %s
    GROUP BY s.query
"""


def statement_calls(admin: ConnectionInfo, database: ConnectionInfo) -> dict[str, int]:
    with psycopg.connect(admin.conninfo, autocommit=True) as connection:
        rows = connection.execute(
            STATEMENTS, [database.dbname, database.user]
        ).fetchall()
    return {str(query): int(calls) for query, calls in rows}


def kind_of(query: str) -> str:
    """The origin of a node's statement: consumer, broker, listener (its LISTEN
    and health check), HTTP (its probes' database check; their lag reads come
    only from scrapes, and nothing scrapes here), transaction control, or other."""
    if query.strip().upper() in TRANSACTION_CONTROL:
        return "begin/commit"
    text = query.lower()
    if "database_check" in text:
        return "http"
    if "leadership_check" in text:
        return "broker"
    if text.strip() in LISTENER_STATEMENTS or text.lstrip().startswith("listen"):
        return "listener"
    # Claims name their holder's subscriber: look for the consumer's tables first.
    if "consumer_claims" in text or "checkpoint" in text or "from events" in text:
        return "consumer"
    if "subscriber" in text or "subscription" in text or "advisory" in text:
        return "broker"
    if "events" in text:
        return "consumer"
    return "other"


def idle_rates(
    before: Mapping[str, int], after: Mapping[str, int], seconds: float
) -> dict[str, float]:
    rates = {
        "consumer": 0.0,
        "broker": 0.0,
        "listener": 0.0,
        "http": 0.0,
        "begin/commit": 0.0,
        "other": 0.0,
    }
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
        },
        # The production profile insists on a password.
        auth="scram-sha-256",
    )
    server.start()
    info = server.connection_info
    with psycopg.connect(info.conninfo, autocommit=True) as admin:
        admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                sql.Identifier(COORDINATOR_USER), sql.Literal(info.password)
            )
        )
        row = admin.execute("SHOW server_version").fetchone()
    # This run's own server, not the shared one: the machine line names it.
    ctx.postgres.version = str(row[0]) if row else "unknown"
    return server


async def run(ctx: BenchContext) -> None:
    publish_seconds = 5.0 if ctx.quick else 20.0
    idle_seconds = 20.0 if ctx.quick else 60.0
    say("\n== 7. Latency and idle load: NOTIFY wake-ups against polling ==")
    say(
        "Per mode an observer process (eventcomposition run, production profile) "
        "with a transactional consumer over 16 partitions of one category, and a coordinator "
        f"process; {RATE:g} single-event publishes per second for "
        f"{publish_seconds:g} s; idle load over {idle_seconds:g} s."
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


@contextmanager
def node_processes(ctx: BenchContext) -> Iterator[NodeProcesses]:
    with NodeProcesses(log_dir=ctx.results_dir / "latency-nodes") as nodes:
        yield nodes


async def measure(
    ctx: BenchContext,
    server: ThrowawayPostgres,
    publish_seconds: float,
    idle_seconds: float,
) -> None:
    admin = server.connection_info
    databases = []
    for _ in MODES:
        database = create_database(admin, unique_database_name("latency"))
        await migrate(database.conninfo)
        databases.append(database)

    with node_processes(ctx) as processes:
        async with AsyncExitStack() as stack:
            nodes = [
                await stack.enter_async_context(running_node(processes, mode, database))
                for mode, database in zip(MODES, databases, strict=True)
            ]
            started = time.perf_counter()
            await asyncio.gather(*(held(node) for node in nodes))
            await asyncio.gather(*(warm_up(node) for node in nodes))
            say(
                f"(sources held and claimed after {time.perf_counter() - started:.1f} s)"
            )
            # Every observer idles at once, each on its own database; its
            # coordinator (another user) is measured apart.
            coordinators = [
                replace(node.database, user=COORDINATOR_USER) for node in nodes
            ]
            before = [statement_calls(admin, node.database) for node in nodes]
            before_c = [statement_calls(admin, c) for c in coordinators]
            await asyncio.sleep(idle_seconds)
            after = [statement_calls(admin, node.database) for node in nodes]
            after_c = [statement_calls(admin, c) for c in coordinators]
            idle = [
                idle_rates(b, a, idle_seconds)
                for b, a in zip(before, after, strict=True)
            ]
            coordinator_idle = [
                idle_rates(b, a, idle_seconds)
                for b, a in zip(before_c, after_c, strict=True)
            ]
            top = [
                top_statements(b, a, idle_seconds)
                for b, a in zip(before, after, strict=True)
            ]
            latencies = [await measure_latency(node, publish_seconds) for node in nodes]
            for node in nodes:
                node.observer.terminate()
            stopped = [await node.observer.await_exit(60) for node in nodes]
    report(
        ctx,
        latencies,
        idle,
        top,
        stopped,
        publish_seconds,
        idle_seconds,
        coordinator_idle,
    )


ORIGINS_HEADER = "consumer / broker / listener / http / begin+commit / other"


def origins(rates: Mapping[str, float]) -> str:
    return " / ".join(
        f"{rates[kind]:.2f}"
        for kind in ("consumer", "broker", "listener", "http", "begin/commit", "other")
    )


def top_statements(
    before: Mapping[str, int], after: Mapping[str, int], seconds: float, count: int = 6
) -> list[tuple[float, str]]:
    """The statements sent most often while idle, per second, with their text."""
    rates = [
        ((calls - before.get(query, 0)) / seconds, " ".join(query.split())[:90])
        for query, calls in after.items()
    ]
    return sorted((rate, query) for rate, query in rates if rate > 0)[::-1][:count]


def report(
    ctx: BenchContext,
    latencies: list["Latency"],
    idle: list[dict[str, float]],
    top: list[list[tuple[float, str]]],
    stopped: list[int],
    publish_seconds: float,
    idle_seconds: float,
    coordinator_idle: list[dict[str, float]],
) -> None:
    rows = []
    cases = []
    for mode, latency, rates, statements, exit_status, coordinator_rates in zip(
        MODES, latencies, idle, top, stopped, coordinator_idle, strict=True
    ):
        notify = mode.wake == "notify"
        p99_verdict = (
            ("met" if latency.p99 <= TARGET_P99_SECONDS else "MISSED")
            if notify
            else "(comparison)"
        )
        idle_verdict = (
            ("met" if rates["total"] <= TARGET_IDLE_PER_SECOND else "MISSED")
            if notify
            else "(comparison)"
        )
        rows.append(
            [
                mode.name,
                latency.count,
                f"{latency.p50 * 1000:.1f}",
                f"{latency.p99 * 1000:.1f}",
                f"{latency.maximum * 1000:.1f}",
                p99_verdict,
                f"{rates['total']:.2f}",
                origins(rates),
                idle_verdict,
            ]
        )
        cases.append(
            {
                "mode": mode.name,
                "wake": mode.wake,
                "latency": latency.as_json(),
                "latency_verdict": p99_verdict,
                "idle_statements_per_second": rates,
                "coordinator_idle_statements_per_second": coordinator_rates,
                "idle_top_statements": [
                    {"per_second": rate, "statement": query}
                    for rate, query in statements
                ],
                "idle_verdict": idle_verdict,
                "observer_exit_status": exit_status,
            }
        )
    say(
        table(
            "publish -> committed latency (ms) and the observer's idle statements/s",
            [
                "mode",
                "events",
                "p50",
                "p99",
                "max",
                "p99 <= 50 ms",
                "idle stmts/s",
                ORIGINS_HEADER,
                "idle <= 1/s",
            ],
            rows,
        )
    )
    say(
        table(
            "the coordinator-only node beside each observer: idle statements/s",
            ["mode", "idle stmts/s", ORIGINS_HEADER, "idle <= 1/s"],
            [
                [
                    mode.name,
                    f"{rates['total']:.2f}",
                    origins(rates),
                    "met" if rates["total"] <= TARGET_IDLE_PER_SECOND else "MISSED",
                ]
                for mode, rates in zip(MODES, coordinator_idle, strict=True)
            ],
        )
    )
    for mode, statements in zip(MODES, top, strict=True):
        say(f"Idle statements of the {mode.name} observer, most frequent first:")
        for rate, query in statements:
            say(f"  {rate:6.2f}/s  {query}")
    say(
        "Latency runs from just before the publish call (which commits) to the "
        "observer's commit of the batch. Idle statements: pg_stat_statements calls "
        "of the observer's user in its database while nothing is published."
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
            "node": "observer process (eventcomposition run, production profile), "
            "transactional consumer over 16 partitions, coordinator apart",
            "cases": cases,
        },
    )
