"""9. Overhead of operating a node: the HTTP server and metrics on vs off.

The same node processes the same N events (the demo's orders over its 8 shard
categories, published before the clock starts) with a batch consumer shaped like
the transactional one (events after a checkpoint per source, processed in batches
of 500, each batch recorded in the node's ``NodeMetrics``):

- off: ``NodeMetrics()`` (records nothing), no HTTP server;
- on: ``PrometheusNodeMetrics``, a ``NodeHttpServer`` in the node's services, its
  lag read by a ``LagReader`` (``PostgresHeadReader`` on PostgreSQL,
  ``InMemoryHeadReader`` in memory), and a separate process scraping ``/metrics`` every second, as
  Prometheus would.

The clock runs from entering the node until the last event is processed; runs
alternate between the sides (ABBA) after one unmeasured warm-up of each. The
throughput ratio on / off is reported per pair of runs; the target is >= 0.98. The
cost of one scrape alone (lag read, exposition) is measured apart.
"""

import asyncio
import gc
import os
import socket
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from itertools import batched
from typing import Any

from logicblocks.event.processing import (
    EventBrokerStorageType,
    EventBrokerType,
    EventConsumer,
    ServiceManager,
)
from logicblocks.event.processing.broker import (
    EventSubscriber,
    EventSubscriberHealth,
)
from logicblocks.event.sources import EventSource, constraints
from logicblocks.event.store import EventStorageAdapter, PostgresEventStorageAdapter
from logicblocks.event.types import EventSourceIdentifier, StoredEvent
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition import (
    DistributedEventBrokerSettings,
    EventConsumerSettings,
    EventNode,
    EventRuntime,
    InMemoryClusterState,
    make_event_broker,
)
from eventcomposition.lag import (
    HeadReader,
    HeldSource,
    InMemoryHeadReader,
    LagReader,
    PostgresHeadReader,
)
from eventcomposition.metrics import NodeMetrics, PrometheusNodeMetrics
from eventcomposition.runtime import ConsumerRegistration, SubscriberRegistration
from eventcomposition.services.health import DatabaseCheck, PostgresCheck
from eventcomposition.services.http import NodeHttpServer

from .common import (
    BenchContext,
    CountingProcessor,
    Json,
    PostgresUnavailable,
    Spread,
    say,
    table,
)
from .overhead import (
    BROKER_INTERVALS,
    NAMES,
    POLL_INTERVAL,
    RUN_TIMEOUT,
    Storage,
    prepare,
)

NAME = "http-overhead"
GROUP = "http-overhead"
BATCH_SIZE = 500
SCRAPE_INTERVAL = 1.0
TARGET = 0.98
SIDES = ("off", "on")

type Pool = AsyncConnectionPool[AsyncConnection[Any]]

# A separate process, as Prometheus is: says "ready", then prints each scrape's
# latency in ms.
SCRAPER = """
import sys, time, urllib.request
url = sys.argv[1]
print("ready", flush=True)
while True:
    started = time.perf_counter()
    try:
        urllib.request.urlopen(url, timeout=5).read()
    except OSError:
        time.sleep(0.05)
        continue
    print(f"{(time.perf_counter() - started) * 1000:.3f}", flush=True)
    time.sleep(max(0.0, float(sys.argv[2]) - (time.perf_counter() - started)))
"""


class BatchConsumer(EventConsumer, EventSubscriber[StoredEvent]):
    """Events after a checkpoint per allocated source, in batches of ``BATCH_SIZE``."""

    def __init__(self, processor: CountingProcessor, metrics: NodeMetrics) -> None:
        self.processor = processor
        self.metrics = metrics
        self.sources: dict[EventSourceIdentifier, EventSource[Any, StoredEvent]] = {}
        self.checkpoints: dict[EventSourceIdentifier, int] = {}

    @property
    def group(self) -> str:
        return GROUP

    @property
    def id(self) -> str:
        return "consumer-1"

    @property
    def subscription_requests(self) -> Sequence[EventSourceIdentifier]:
        return NAMES.partitions()

    def health(self) -> EventSubscriberHealth:
        return EventSubscriberHealth.HEALTHY

    async def accept(self, source: EventSource[Any, StoredEvent]) -> None:
        self.sources[source.identifier] = source

    async def withdraw(self, source: EventSource[Any, StoredEvent]) -> None:
        self.sources.pop(source.identifier, None)

    def held(self) -> Iterable[HeldSource]:
        return [HeldSource(GROUP, source) for source in self.sources]

    async def read_checkpoints(
        self, held: Sequence[HeldSource]
    ) -> Mapping[HeldSource, int | None]:
        return {holding: self.checkpoints.get(holding.source) for holding in held}

    async def consume_all(self) -> None:
        for identifier, source in list(self.sources.items()):
            checkpoint = self.checkpoints.get(identifier)
            after = (
                frozenset()
                if checkpoint is None
                else frozenset({constraints.sequence_number_after(checkpoint)})
            )
            events = [event async for event in source.iterate(constraints=after)]
            for batch in batched(events, BATCH_SIZE, strict=False):
                started = time.perf_counter()
                for event in batch:
                    await self.processor.process_event(event)
                self.checkpoints[identifier] = batch[-1].sequence_number
                self.metrics.batch_processed(
                    GROUP, identifier, len(batch), time.perf_counter() - started
                )


def broker_settings() -> DistributedEventBrokerSettings:
    intervals: dict[str, Any] = {
        name: timedelta(seconds=value) for name, value in BROKER_INTERVALS.items()
    }
    return DistributedEventBrokerSettings(**intervals)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class Run:
    side: str
    rep: int
    seconds: float
    cpu_seconds: float
    events: int
    window_seconds: float
    scrapes: int
    scrape_ms: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds

    @property
    def window_events_per_second(self) -> float:
        return self.events / self.window_seconds

    @property
    def events_per_cpu_second(self) -> float:
        return self.events / self.cpu_seconds


async def run_side(storage: Storage, side: str, events: int, rep: int) -> Run:
    tag = f"{storage.kind}-{side}-{rep}-{time.monotonic_ns()}"
    processor = CountingProcessor(events)
    metrics = PrometheusNodeMetrics() if side == "on" else NodeMetrics()
    consumer = BatchConsumer(processor, metrics)
    pool: Pool | None = None
    if storage.database is None:
        assert storage.memory is not None
        adapter: EventStorageAdapter = storage.memory
        broker = make_event_broker(
            tag,
            EventBrokerType.Distributed,
            EventBrokerStorageType.InMemory,
            settings=broker_settings(),
            cluster_state=InMemoryClusterState(adapter),
        )
        heads: HeadReader = InMemoryHeadReader(storage.memory)
        database: DatabaseCheck | None = None
    else:
        pool = AsyncConnectionPool(
            storage.database.conninfo, min_size=1, max_size=10, open=False
        )
        adapter = PostgresEventStorageAdapter(connection_source=pool)
        broker = make_event_broker(
            tag,
            EventBrokerType.Distributed,
            EventBrokerStorageType.Postgres,
            settings=broker_settings(),
            connection_settings=storage.database.connection_settings(),
            connection_pool=pool,
            adapter=adapter,
        )
        heads = PostgresHeadReader(pool)
        # As the container wires it: each probe asks the database first.
        database = PostgresCheck(pool)
    runtime = EventRuntime(
        tag,
        broker,
        ServiceManager(),
        default_consumer_settings=EventConsumerSettings(
            poll_interval=timedelta(seconds=POLL_INTERVAL)
        ),
    )
    services: list[NodeHttpServer] = []
    scraper: asyncio.subprocess.Process | None = None
    if isinstance(metrics, PrometheusNodeMetrics):
        port = free_port()
        services.append(
            NodeHttpServer(
                holdings=LagReader(
                    held=consumer.held,
                    checkpoints=consumer.read_checkpoints,
                    heads=heads,
                ),
                metrics=metrics,
                port=port,
                database=database,
            )
        )
        scraper = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SCRAPER,
            f"http://127.0.0.1:{port}/metrics",
            str(SCRAPE_INTERVAL),
            stdout=asyncio.subprocess.PIPE,
        )
        # Its interpreter starts before the clock does.
        assert scraper.stdout is not None
        await scraper.stdout.readline()
    node = EventNode(
        runtime,
        registrations=[
            SubscriberRegistration(consumer),
            ConsumerRegistration(consumer, name=f"{GROUP}/consumer-1"),
        ],
        services=services,
        database=pool,
    )
    gc.collect()
    gc.freeze()
    try:
        started, cpu_started = time.perf_counter(), time.process_time()
        async with node:
            await asyncio.wait_for(processor.done.wait(), RUN_TIMEOUT)
            seconds = time.perf_counter() - started
            cpu_seconds = time.process_time() - cpu_started
    finally:
        gc.unfreeze()
        latencies: list[float] = []
        if scraper is not None:
            scraper.terminate()
            output, _ = await asyncio.wait_for(scraper.communicate(), 10)
            latencies = [float(line) for line in output.decode().split()]
    assert processor.first_at is not None
    assert processor.done_at is not None
    window_seconds = processor.done_at - processor.first_at
    return Run(
        side=side,
        rep=rep,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        events=events,
        window_seconds=window_seconds,
        scrapes=len(latencies),
        scrape_ms=sum(latencies) / len(latencies) if latencies else 0.0,
    )


async def measure(storage: Storage, events: int, reps: int) -> list[Run]:
    runs: list[Run] = []
    # The consumer keeps its checkpoints in memory and writes nothing to the store:
    # every run reads the same events, published once.
    await storage.renew()
    for rep in range(-1, reps):  # rep -1: the warm-up of each side, not kept
        order = SIDES if rep % 2 == 0 else tuple(reversed(SIDES))
        for side in order:
            run = await run_side(storage, side, events, rep)
            if rep >= 0:
                runs.append(run)
    return runs


async def scrape_cost(storage: Storage, samples: int) -> dict[str, float]:
    """One scrape's parts, apart: reading the holdings (every head) and rendering."""
    from prometheus_client import generate_latest

    pool: Pool | None = None
    if storage.database is None:
        assert storage.memory is not None
        heads: HeadReader = InMemoryHeadReader(storage.memory)
    else:
        pool = AsyncConnectionPool(
            storage.database.conninfo, min_size=1, max_size=2, open=False
        )
        await pool.open(wait=True)
        heads = PostgresHeadReader(pool)
    held = [HeldSource(GROUP, source) for source in NAMES.partitions()]

    async def no_checkpoints(
        holdings: Sequence[HeldSource],
    ) -> Mapping[HeldSource, int | None]:
        return dict.fromkeys(holdings)

    reader = LagReader(held=lambda: held, checkpoints=no_checkpoints, heads=heads)
    metrics = PrometheusNodeMetrics()
    for source in NAMES.partitions():
        metrics.batch_processed(GROUP, source, BATCH_SIZE, 0.01)
    try:
        await reader.holdings()  # warm: connection and plan
        started = time.perf_counter()
        for _ in range(samples):
            metrics.holdings_observed(await reader.holdings())
        read_ms = (time.perf_counter() - started) * 1000 / samples
        started = time.perf_counter()
        for _ in range(samples):
            generate_latest(metrics.registry)
        render_ms = (time.perf_counter() - started) * 1000 / samples
    finally:
        if pool is not None:
            await pool.close()
    return {"holdings_read_ms": read_ms, "exposition_ms": render_ms}


async def run(ctx: BenchContext) -> None:
    plan = {
        "memory": (3_000 if ctx.quick else 250_000, 2 if ctx.quick else 8),
        "postgres": (3_000 if ctx.quick else 150_000, 2 if ctx.quick else 8),
    }
    say("\n== 9. Overhead of operating a node: HTTP server and metrics on vs off ==")
    say(
        "Same node, same batch consumer (batches of "
        f"{BATCH_SIZE}, metrics recorded per batch), same events (demo orders over 8 "
        "categories). On: PrometheusNodeMetrics, the HTTP server, and another process "
        f"scraping /metrics every {SCRAPE_INTERVAL:.0f}s (lag read each time). Runs "
        "alternate (ABBA) after one warm-up of each side; ratios are per pair."
    )
    results: Json = {"target_ratio": TARGET, "storage": {}}
    rows: list[list[object]] = []
    for kind, (events, reps) in plan.items():
        try:
            storage = await prepare(ctx, kind, events)
        except PostgresUnavailable as error:
            say(f"{kind}: skipped ({error})")
            results["storage"][kind] = {"skipped": str(error)}
            continue
        load_before = os.getloadavg()[0]
        runs = await measure(storage, events, reps)
        cost = await scrape_cost(storage, 20 if ctx.quick else 200)
        by_side = {side: [r for r in runs if r.side == side] for side in SIDES}
        pairs = list(zip(by_side["off"], by_side["on"], strict=True))
        ratio = Spread.of(
            on.events_per_second / off.events_per_second for off, on in pairs
        )
        cpu_ratio = Spread.of(
            on.events_per_cpu_second / off.events_per_cpu_second for off, on in pairs
        )
        window_ratio = Spread.of(
            on.window_events_per_second / off.window_events_per_second
            for off, on in pairs
        )
        scrapes = sum(r.scrapes for r in by_side["on"])
        results["storage"][kind] = {
            "events": events,
            "repetitions": reps,
            "load_average_1min": [load_before, os.getloadavg()[0]],
            "ratio_on_to_off": ratio.as_json(),
            "cpu_ratio_on_to_off": cpu_ratio.as_json(),
            "window_ratio_on_to_off": window_ratio.as_json(),
            "scrapes": scrapes,
            "scrape_cost": cost,
            "runs": [
                {**r.__dict__, "events_per_second": r.events_per_second} for r in runs
            ],
        }
        for side in SIDES:
            side_runs = by_side[side]
            rows.append(
                [
                    kind,
                    side,
                    f"{events} x {reps}",
                    Spread.of(r.events_per_second for r in side_runs).text(".0f"),
                    Spread.of(r.window_events_per_second for r in side_runs).text(
                        ".0f"
                    ),
                    Spread.of(r.events_per_cpu_second for r in side_runs).text(".0f"),
                    f"{sum(r.scrapes for r in side_runs)}"
                    + (
                        f" ({Spread.of(r.scrape_ms for r in side_runs).median:.1f} ms)"
                        if side == "on"
                        else ""
                    ),
                ]
            )
        verdict = "met" if ratio.median >= TARGET else "MISSED"
        if ctx.quick:
            verdict += ", too few runs in --quick to judge"
        rows.append(
            [
                kind,
                f"ratio on/off (target >= {TARGET}: {verdict})",
                "",
                ratio.text(".3f"),
                window_ratio.text(".3f"),
                cpu_ratio.text(".3f"),
                f"one scrape: lag read {cost['holdings_read_ms']:.2f} ms, "
                f"exposition {cost['exposition_ms']:.2f} ms",
            ]
        )
    say(
        table(
            "min / median / max over the repetitions",
            [
                "storage",
                "side",
                "N x reps",
                "events/s, start -> all processed",
                "events/s, first -> last event",
                "events per CPU second",
                "scrapes (median latency)",
            ],
            rows,
        )
    )
    ctx.save(NAME, results)
