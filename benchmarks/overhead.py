"""1. Overhead of the composition: hand-wired logicblocks vs the container's runtime.

The same processor (``CountingProcessor``) consumes the same N events (the demo's
orders over its 8 shard categories, published before the clock starts) through:

- hand-wired: logicblocks' own ``make_event_broker`` and the five steps (make the
  subscriber; ``ErrorHandlingService(CallableService(consume_all),
  ContinueErrorHandler)``; ``PollingService``; ``broker.register``;
  ``ServiceManager.register``), then ``ServiceManager.start()``;
- composed: ``build_container(<EventRuntimeContainer subclass>, settings)``,
  ``await resolve(container.runtime)``, then ``runtime.start()``.

Both use the same subscriber factory (``make_subscription_consumer``: logicblocks'
``EventSubscriptionConsumer`` with one state store per source), the same broker
intervals and the same poll interval. The clock runs from ``start()`` until the
processor has seen all N events; runs alternate between the two sides, after one
unmeasured warm-up of each. The throughput ratio composed / hand-wired is reported
per pair of runs; the target is >= 0.98.
"""

import asyncio
import cProfile
import gc
import os
import pstats
import time
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from dependency_injector import providers
from logicblocks.event.processing import (
    CallableService,
    ContinueErrorHandler,
    ErrorHandlingService,
    EventBrokerStorageType,
    EventBrokerType,
    PollingService,
    ServiceManager,
    make_event_broker,
)
from logicblocks.event.processing.broker import (
    DistributedEventBrokerSettings as LogicblocksBrokerSettings,
)
from logicblocks.event.store import (
    EventStore,
    InMemoryEventStorageAdapter,
    PostgresEventStorageAdapter,
)
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition.broker import InMemoryClusterState
from eventcomposition.consumers import make_subscription_consumer
from eventcomposition.containers import (
    EventRuntimeContainer,
    build_container,
    resolve,
)
from eventcomposition.demo import DemoNames, Order, generate_orders
from eventcomposition.runtime import SubscriptionConsumerRegistration
from eventcomposition.settings import EventCompositionSettings, load_settings
from eventcomposition.testing import ConnectionInfo
from eventcomposition.testing.containers import postgres_overrides

from .common import (
    SETTINGS_DIR,
    BenchContext,
    CountingProcessor,
    Json,
    PostgresUnavailable,
    Spread,
    publish_by_category,
    say,
    table,
)

NAME = "overhead"
NAMES = DemoNames(run_id="overhead")
CUSTOMERS = 400

# Identical on both sides. Short, so that the allocation before the first event
# (a distribution and a synchronisation) is small next to the processing.
BROKER_INTERVALS: dict[str, float] = {
    "subscriber_manager_heartbeat_interval": 1.0,
    "subscriber_manager_purge_interval": 30.0,
    "subscriber_manager_subscriber_max_age": 60.0,
    "coordinator_subscriber_max_time_since_last_seen": 10.0,
    "coordinator_distribution_interval": 0.05,
    "coordinator_leadership_attempt_interval": 0.05,
    "observer_synchronisation_interval": 0.05,
}
POLL_INTERVAL = 0.05
RUN_TIMEOUT = 300.0


class BenchContainer(EventRuntimeContainer):
    """One consumer over the demo's categories, feeding a processor given per run."""

    subscriber_group = providers.Object("overhead")
    processor = providers.Object(CountingProcessor(0))
    categories = providers.Object(NAMES.partitions())

    consumers = providers.List(
        providers.Factory(
            SubscriptionConsumerRegistration,
            consumer=providers.Factory(
                make_subscription_consumer,
                event_store=EventRuntimeContainer.event_store,
                subscriber_group=subscriber_group,
                subscription_requests=categories,
                event_processor=processor,
            ),
        )
    )


@dataclass
class Timing:
    """Wall-clock and this process's CPU time from ``start()`` until all processed.

    The CPU time is less disturbed by other load on the machine than the wall
    clock; both are reported.
    """

    started: float
    cpu_started: float
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    profiler: cProfile.Profile | None = None

    @classmethod
    def begin(cls) -> "Timing":
        timing = cls(started=time.perf_counter(), cpu_started=time.process_time())
        timing.profiler = PROFILER.get()
        if timing.profiler is not None:
            timing.profiler.enable()
        return timing

    def end(self) -> "Timing":
        if self.profiler is not None:
            self.profiler.disable()
        self.cpu_seconds = time.process_time() - self.cpu_started
        self.seconds = time.perf_counter() - self.started
        return self


PROFILER: ContextVar[cProfile.Profile | None] = ContextVar("PROFILER", default=None)
"""When set, the timed part of a run (start() until all processed) is profiled."""


@dataclass(frozen=True)
class Run:
    side: str
    rep: int
    seconds: float
    cpu_seconds: float
    first_event_seconds: float
    window_seconds: float
    events: int

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds

    @property
    def events_per_cpu_second(self) -> float:
        return self.events / self.cpu_seconds

    @property
    def window_events_per_second(self) -> float:
        return self.events / self.window_seconds if self.window_seconds else 0.0


def composed_settings(
    node_id: str, database: ConnectionInfo | None
) -> EventCompositionSettings:
    overrides: dict[str, Any] = {
        "node": {"id": node_id, "role": "full"},
        "broker": dict(BROKER_INTERVALS),
        "consumers": {"poll_interval": POLL_INTERVAL},
        "logging": {"level": "WARNING"},
    }
    if database is not None:
        overrides.update(postgres_overrides(database))
    return load_settings("development", settings_dir=SETTINGS_DIR, **overrides)


def logicblocks_settings() -> LogicblocksBrokerSettings:
    return LogicblocksBrokerSettings(
        **{name: timedelta(seconds=value) for name, value in BROKER_INTERVALS.items()}
    )


class Storage:
    """Where the N events are: a fresh in-memory adapter per run, or a database.

    In memory every run gets its own adapter with the same events: logicblocks'
    in-memory adapter copies its indexes on every read, so the state events that
    earlier runs wrote would slow the later runs down.
    """

    def __init__(
        self, database: ConnectionInfo | None, orders: Sequence[Order] = ()
    ) -> None:
        self.database = database
        self.orders = list(orders)
        self.memory: InMemoryEventStorageAdapter | None = None

    @property
    def kind(self) -> str:
        return "memory" if self.database is None else "postgres"

    async def renew(self) -> None:
        if self.database is None:
            self.memory = InMemoryEventStorageAdapter()
            await publish_by_category(
                EventStore(adapter=self.memory), self.orders, names=NAMES
            )


async def run_hand_wired(
    storage: Storage, processor: CountingProcessor, tag: str
) -> "Timing":
    """The five steps on logicblocks, timed from ``start()`` until all processed."""
    pool: AsyncConnectionPool[AsyncConnection[Any]] | None = None
    if storage.database is None:
        assert storage.memory is not None
        adapter: Any = storage.memory
        broker = make_event_broker(
            tag,
            EventBrokerType.Distributed,
            EventBrokerStorageType.InMemory,
            settings=logicblocks_settings(),
            adapter=adapter,
        )
    else:
        # A pool as an application would open it, of the same size as the
        # container's (pool_min_size 1, pool_max_size 10 by default).
        pool = AsyncConnectionPool[AsyncConnection[Any]](
            storage.database.conninfo, min_size=1, max_size=10, open=False
        )
        await pool.open(wait=True)
        adapter = PostgresEventStorageAdapter(connection_source=pool)
        broker = make_event_broker(
            tag,
            EventBrokerType.Distributed,
            EventBrokerStorageType.Postgres,
            settings=logicblocks_settings(),
            connection_settings=storage.database.connection_settings(),
            connection_pool=pool,
            adapter=adapter,
        )
    event_store = EventStore(adapter=adapter)
    # 1. the subscriber
    subscriber = make_subscription_consumer(
        event_store=event_store,
        subscriber_group=tag,
        subscription_requests=NAMES.partitions(),
        event_processor=processor,
    )
    # 2. error handling around consume_all
    error_handling = ErrorHandlingService[None](
        service=CallableService(subscriber.consume_all),
        error_handler=ContinueErrorHandler[None](value_factory=lambda _: None),
    )
    # 3. polling
    polling = PollingService(
        service=error_handling, poll_interval=timedelta(seconds=POLL_INTERVAL)
    )
    # 4. the broker allocates its sources
    await broker.register(subscriber)
    # 5. the service manager runs the consumer (and the broker)
    manager = ServiceManager()
    manager.register(polling, name=f"{tag}-consumer")
    manager.register(broker, name=f"{tag}-broker")
    try:
        timing = Timing.begin()
        await manager.start()
        await asyncio.wait_for(processor.done.wait(), RUN_TIMEOUT)
        return timing.end()
    finally:
        await manager.stop()
        if pool is not None:
            await pool.close()


async def run_composed(
    storage: Storage, processor: CountingProcessor, tag: str
) -> "Timing":
    """The container's runtime, timed from ``start()`` until all processed."""
    container = build_container(
        BenchContainer, composed_settings(tag, storage.database)
    )
    container.subscriber_group.override(providers.Object(tag))
    container.processor.override(providers.Object(processor))
    if storage.memory is not None:
        container.cluster_state.override(
            providers.Object(InMemoryClusterState(storage.memory))
        )
    node = await resolve(container.node)
    async with node.prepared() as runtime:
        timing = Timing.begin()
        await runtime.start()
        await asyncio.wait_for(processor.done.wait(), RUN_TIMEOUT)
        return timing.end()


RUNNERS = {"hand-wired": run_hand_wired, "composed": run_composed}


async def measure(storage: Storage, events: int, reps: int) -> list[Run]:
    runs: list[Run] = []
    for rep in range(-1, reps):  # rep -1: the warm-up of each side, not kept
        order = (
            ["hand-wired", "composed"] if rep % 2 == 0 else ["composed", "hand-wired"]
        )
        for side in order:
            processor = CountingProcessor(events)
            await storage.renew()
            # The same heap for both sides: what set-up left is collected, and the
            # events (long-lived) are kept out of the collector's way.
            gc.collect()
            gc.freeze()
            tag = f"{storage.kind}-{side}-{rep + 1}-{time.monotonic_ns()}"
            try:
                timing = await RUNNERS[side](storage, processor, tag)
            finally:
                gc.unfreeze()
            assert processor.first_at is not None
            assert processor.done_at is not None
            if rep >= 0:
                runs.append(
                    Run(
                        side=side,
                        rep=rep,
                        seconds=processor.done_at - timing.started,
                        cpu_seconds=timing.cpu_seconds,
                        first_event_seconds=processor.first_at - timing.started,
                        window_seconds=processor.done_at - processor.first_at,
                        events=events,
                    )
                )
    return runs


async def count_calls(storage: Storage, events: int) -> dict[str, float]:
    """Python function calls per event on each side (cProfile): the work done,
    which unlike time does not depend on what else the machine is doing."""
    calls: dict[str, float] = {}
    for side, runner in RUNNERS.items():
        await storage.renew()
        profiler = cProfile.Profile()
        token = PROFILER.set(profiler)
        try:
            await runner(
                storage,
                CountingProcessor(events),
                f"calls-{side}-{time.monotonic_ns()}",
            )
        finally:
            PROFILER.reset(token)
        stats = pstats.Stats(profiler)
        total_calls: int = stats.total_calls  # type: ignore[attr-defined]
        calls[side] = total_calls / events
    return calls


async def prepare(ctx: BenchContext, kind: str, events: int) -> Storage:
    orders = generate_orders(events, customers=CUSTOMERS, seed=11)
    if kind == "memory":
        return Storage(None, orders)
    database = await ctx.postgres.new_database()
    async with AsyncConnectionPool[AsyncConnection[Any]](
        database.conninfo, min_size=1, max_size=2, open=False
    ) as pool:
        await pool.open(wait=True)
        store = EventStore(adapter=PostgresEventStorageAdapter(connection_source=pool))
        await publish_by_category(store, orders, names=NAMES)
    return Storage(database)


METRICS: dict[str, tuple[str, str]] = {
    # key: (what, format)
    "events_per_second": ("events/s, start() -> all processed", ".0f"),
    "events_per_cpu_second": ("events per CPU second of this process", ".0f"),
    "window_events_per_second": ("events/s, first -> last event", ".0f"),
}


def metric(run: Run, key: str) -> float:
    value: float = getattr(run, key)
    return value


@dataclass(frozen=True)
class Summary:
    by_side: dict[str, dict[str, Spread]]
    ratios: dict[str, Spread]
    first_event: dict[str, Spread]

    def as_json(self, runs: Sequence[Run]) -> Json:
        return {
            "by_side": {
                side: {key: spread.as_json() for key, spread in spreads.items()}
                for side, spreads in self.by_side.items()
            },
            "first_event_seconds": {
                side: spread.as_json() for side, spread in self.first_event.items()
            },
            "ratio_composed_to_hand_wired": {
                key: spread.as_json() for key, spread in self.ratios.items()
            },
            "runs": [
                {
                    **run.__dict__,
                    **{key: metric(run, key) for key in METRICS},
                }
                for run in runs
            ],
        }


def summarise(runs: Sequence[Run]) -> Summary:
    """Spreads per side, and of the ratio composed / hand-wired per pair of runs."""
    by_side = {side: [run for run in runs if run.side == side] for side in RUNNERS}
    pairs = list(zip(by_side["hand-wired"], by_side["composed"], strict=True))
    return Summary(
        by_side={
            side: {
                key: Spread.of(metric(run, key) for run in side_runs) for key in METRICS
            }
            for side, side_runs in by_side.items()
        },
        ratios={
            key: Spread.of(metric(c, key) / metric(h, key) for h, c in pairs)
            for key in METRICS
        },
        first_event={
            side: Spread.of(run.first_event_seconds for run in side_runs)
            for side, side_runs in by_side.items()
        },
    )


TARGET = 0.98


async def run(ctx: BenchContext) -> None:
    plan = {
        "memory": (3_000 if ctx.quick else 30_000, 2 if ctx.quick else 8),
        "postgres": (1_500 if ctx.quick else 10_000, 2 if ctx.quick else 8),
    }
    say(
        "\n== 1. Overhead of the composition: hand-wired logicblocks vs EventRuntime "
        "from the container =="
    )
    say(
        f"Same processor (counting), same events (demo orders, {CUSTOMERS} customers "
        "over 8 categories), same subscriber factory, one FULL node. Broker intervals "
        f"on both sides: {BROKER_INTERVALS} (seconds); poll interval {POLL_INTERVAL}s. "
        "Runs alternate (ABBA) after one warm-up of each side; ratios are per pair."
    )
    results: Json = {
        "broker_intervals_seconds": BROKER_INTERVALS,
        "poll_interval_seconds": POLL_INTERVAL,
        "target_ratio": TARGET,
        "storage": {},
    }
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
        summary = summarise(runs)
        calls = await count_calls(storage, events)
        results["storage"][kind] = {
            "events": events,
            "repetitions": reps,
            "load_average_1min": [load_before, os.getloadavg()[0]],
            "python_calls_per_event": calls,
            **summary.as_json(runs),
        }
        for side in RUNNERS:
            rows.append(
                [
                    kind,
                    side,
                    f"{events} x {reps}",
                    *(summary.by_side[side][key].text(".0f") for key in METRICS),
                    summary.first_event[side].text(".2f", " s"),
                    f"{calls[side]:.1f}",
                ]
            )
        verdict = (
            "met" if summary.ratios["events_per_second"].median >= TARGET else "MISSED"
        )
        if ctx.quick:
            verdict += ", too few runs in --quick to judge"
        rows.append(
            [
                kind,
                f"ratio composed/hand (target >= {TARGET}: {verdict})",
                "",
                *(summary.ratios[key].text(".3f") for key in METRICS),
                "",
                f"{calls['composed'] / calls['hand-wired']:.3f}",
            ]
        )
    say(
        table(
            "min / median / max over the repetitions",
            [
                "storage",
                "side",
                "N x reps",
                *(what for what, _ in METRICS.values()),
                "start() -> first event",
                "Python calls/event",
            ],
            rows,
        )
    )
    say(
        "The target applies to the median ratio of events/s from start() until all N "
        "are processed; the CPU-time ratio is less disturbed by other load, and the "
        "Python calls per event (one cProfile'd run of each side, start() until all "
        "processed) count the work itself, whatever else the machine does."
    )
    ctx.save(NAME, results)
