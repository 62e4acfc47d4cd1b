"""NodeHttpServer in a real EventNode: an in-memory broker, a real service manager, a
consumer allocated its sources by the broker, and aiohttp's client on a real port."""

import json
import socket
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from logicblocks.event.processing import (
    EventBrokerStorageType,
    EventBrokerType,
    EventConsumer,
    EventSubscriberHealth,
    ProcessStatus,
    RaiseErrorHandler,
    RetryErrorHandler,
    ServiceManager,
)
from logicblocks.event.processing.broker import EventSubscriber
from logicblocks.event.sources import EventSource, constraints
from logicblocks.event.store import (
    EventStore,
    InMemoryEventStorageAdapter,
    PostgresEventStorageAdapter,
)
from logicblocks.event.types import (
    CategoryIdentifier,
    EventSourceIdentifier,
    NewEvent,
    StoredEvent,
)
from prometheus_client.parser import text_string_to_metric_families
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
from eventcomposition.services.http import HttpServerError, NodeHttpServer
from eventcomposition.testing import ConnectionInfo
from eventcomposition.testing.waiting import wait_until

NODE_ID = "node-1"
GROUP = "totals"
ORDERS = CategoryIdentifier(category="orders")
MAX_LAG = 5

type Pool = AsyncConnectionPool[AsyncConnection[Any]]

BROKER_SETTINGS = DistributedEventBrokerSettings(
    subscriber_manager_heartbeat_interval=timedelta(milliseconds=50),
    subscriber_manager_purge_interval=timedelta(milliseconds=200),
    subscriber_manager_subscriber_max_age=timedelta(seconds=5),
    coordinator_subscriber_max_time_since_last_seen=timedelta(seconds=2),
    coordinator_distribution_interval=timedelta(milliseconds=50),
    coordinator_leadership_max_duration=timedelta(minutes=1),
    coordinator_leadership_attempt_interval=timedelta(milliseconds=50),
    observer_synchronisation_interval=timedelta(milliseconds=50),
)
CONSUMER_SETTINGS = EventConsumerSettings(
    poll_interval=timedelta(milliseconds=20),
    stop_timeout=timedelta(seconds=5),
)


class ProcessingRefusedError(Exception):
    pass


class CheckpointingConsumer(EventConsumer, EventSubscriber[StoredEvent]):
    """A batch consumer in miniature: the sources the broker allocated it, a
    checkpoint per source, and the node's metrics recorded per batch.

    ``paused`` makes it skip its polls; ``failing`` makes every poll raise.
    """

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics
        self.sources: dict[EventSourceIdentifier, EventSource[Any, StoredEvent]] = {}
        self.checkpoints: dict[EventSourceIdentifier, int] = {}
        self.processed = 0
        self.paused = False
        self.failing = False
        self.unhealthy = False

    @property
    def group(self) -> str:
        return GROUP

    @property
    def id(self) -> str:
        return "c-1"

    @property
    def subscription_requests(self) -> Sequence[EventSourceIdentifier]:
        return [ORDERS]

    def health(self) -> EventSubscriberHealth:
        if self.unhealthy:
            raise ProcessingRefusedError("health check failed")
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
        if self.paused:
            return
        for identifier, source in list(self.sources.items()):
            if self.failing:
                self.metrics.consumer_failed(GROUP, identifier)
                raise ProcessingRefusedError(f"cannot process {identifier}")
            started = time.perf_counter()
            checkpoint = self.checkpoints.get(identifier)
            after = (
                frozenset()
                if checkpoint is None
                else frozenset({constraints.sequence_number_after(checkpoint)})
            )
            batch = [event async for event in source.iterate(constraints=after)]
            if batch:
                self.checkpoints[identifier] = batch[-1].sequence_number
                self.processed += len(batch)
                self.metrics.batch_processed(
                    GROUP, identifier, len(batch), time.perf_counter() - started
                )


async def publish(store: EventStore, count: int, stream: str = "o-1") -> None:
    await store.stream(category="orders", stream=stream).publish(
        events=[NewEvent(name="order-placed", payload={"n": n}) for n in range(count)]
    )


class Harness:
    """One node with the server, in memory (a ``cluster``) or on PostgreSQL."""

    def __init__(
        self,
        cluster: InMemoryClusterState | None = None,
        *,
        database: ConnectionInfo | None = None,
        port: int = 0,
        broker_gives_up: bool = False,
    ) -> None:
        self.metrics = PrometheusNodeMetrics()
        self.consumer = CheckpointingConsumer(self.metrics)
        handler = RaiseErrorHandler() if broker_gives_up else RetryErrorHandler()
        self.pool: Pool | None = None
        heads: HeadReader
        if database is None:
            cluster = cluster or InMemoryClusterState()
            adapter = cluster.adapter
            assert isinstance(adapter, InMemoryEventStorageAdapter)
            broker = make_event_broker(
                NODE_ID,
                EventBrokerType.Distributed,
                EventBrokerStorageType.InMemory,
                settings=BROKER_SETTINGS,
                cluster_state=cluster,
                error_handler=handler,
            )
            heads = InMemoryHeadReader(adapter)
        else:
            self.pool = AsyncConnectionPool(
                database.conninfo, min_size=1, max_size=5, open=False
            )
            adapter = PostgresEventStorageAdapter(connection_source=self.pool)
            broker = make_event_broker(
                NODE_ID,
                EventBrokerType.Distributed,
                EventBrokerStorageType.Postgres,
                settings=BROKER_SETTINGS,
                connection_settings=database.connection_settings(),
                connection_pool=self.pool,
                adapter=adapter,
                error_handler=handler,
            )
            heads = PostgresHeadReader(self.pool)
        self.store = EventStore(adapter=adapter)
        self.runtime = EventRuntime(
            NODE_ID,
            broker,
            ServiceManager(),
            default_consumer_settings=CONSUMER_SETTINGS,
        )
        self.server = NodeHttpServer(
            holdings=LagReader(
                held=self.consumer.held,
                checkpoints=self.consumer.read_checkpoints,
                heads=heads,
            ),
            metrics=self.metrics,
            port=port,
            max_lag_events=MAX_LAG,
        )
        self.node = EventNode(
            self.runtime,
            registrations=[
                SubscriberRegistration(self.consumer),
                ConsumerRegistration(self.consumer, name=f"{GROUP}/c-1"),
            ],
            services=[self.server],
            database=self.pool,
        )
        self.session: aiohttp.ClientSession | None = None

    async def get(self, path: str, method: str = "GET") -> tuple[int, str]:
        assert self.session is not None
        async with self.session.request(method, self.server.url + path) as response:
            return response.status, await response.text()

    async def get_json(self, path: str) -> tuple[int, Any]:
        status, text = await self.get(path)
        return status, json.loads(text)

    async def ready(self) -> bool:
        status, _ = await self.get("/health/ready")
        return status == 200

    async def metric(self, name: str, **labels: str) -> float | None:
        _, text = await self.get("/metrics")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return None


@asynccontextmanager
async def running(
    cluster: InMemoryClusterState | None = None, **options: Any
) -> AsyncIterator[Harness]:
    harness = Harness(cluster, **options)
    async with harness.node, aiohttp.ClientSession() as session:
        harness.session = session
        yield harness


async def caught_up(harness: Harness) -> None:
    async def all_processed_and_ready() -> bool:
        _, body = await harness.get_json("/status")
        sources = body["sources"]
        return bool(sources) and sources[0]["lag"] == 0 and await harness.ready()

    await wait_until(all_processed_and_ready, description="the node caught up")


async def test_every_endpoint_answers_while_the_node_runs() -> None:
    async with running() as harness:
        await publish(harness.store, 3)
        await caught_up(harness)

        status, live = await harness.get_json("/health/live")
        assert status == 200
        assert live == {"live": True, "status": "running", "reason": None}

        status, ready = await harness.get_json("/health/ready")
        assert status == 200
        assert ready["ready"] is True
        assert ready["failed"] == []
        assert set(ready["checks"]) == {"broker", "consumers", "database", "lag"}

        status, body = await harness.get_json("/status")
        assert status == 200
        assert body["node_id"] == NODE_ID
        assert body["role"] == "full"
        assert body["status"] == "running"
        assert body["services"] == {
            "totals/c-1": "running",
            "event-broker": "running",
            "http": "running",
        }
        assert body["sources"] == [
            {
                "group": GROUP,
                "source": "category:orders",
                "checkpoint": 2,  # in memory, sequence numbers start at 0
                "head": 2,
                "lag": 0,
            }
        ]


async def test_metrics_parse_and_count_what_was_processed() -> None:
    async with running() as harness:
        await publish(harness.store, 4)
        await caught_up(harness)
        await publish(harness.store, 2, stream="o-2")
        await wait_until(lambda: harness.consumer.processed == 6)

        labels = {"group": GROUP, "source": "category:orders"}
        assert (
            await harness.metric("eventcomposition_events_processed_total", **labels)
            == 6
        )
        assert (
            await harness.metric("eventcomposition_consumer_lag_events", **labels) == 0
        )
        assert await harness.metric("eventcomposition_sources_held", group=GROUP) == 1
        assert (
            await harness.metric("eventcomposition_batch_duration_seconds_count") == 2
        )
        assert await harness.metric("eventcomposition_coordinator_leader") == 0
        assert await harness.metric("eventcomposition_allocation_changes_total") == 0

        status, text = await harness.get("/metrics")
        assert status == 200
        families = {family.name for family in text_string_to_metric_families(text)}
        assert {
            "eventcomposition_events_processed",
            "eventcomposition_consumer_lag_events",
            "eventcomposition_batch_duration_seconds",
            "eventcomposition_consumer_errors",
            "eventcomposition_dead_letters",
            "eventcomposition_sources_held",
            "eventcomposition_coordinator_leader",
            "eventcomposition_allocation_changes",
        } <= families


async def test_unknown_paths_answer_404_and_other_methods_405() -> None:
    async with running() as harness:
        assert (await harness.get("/nowhere"))[0] == 404
        assert (await harness.get("/health"))[0] == 404
        assert (await harness.get("/settings"))[0] == 404
        for path in ("/health/live", "/health/ready", "/status", "/metrics"):
            for method in ("POST", "PUT", "DELETE"):
                assert (await harness.get(path, method))[0] == 405, (method, path)


async def test_a_failing_consumer_makes_ready_503_while_live_stays_200() -> None:
    async with running() as harness:
        await publish(harness.store, 2)
        await caught_up(harness)

        harness.consumer.failing = True
        await wait_until(
            lambda: (
                harness.runtime.service_statuses["totals/c-1"] is ProcessStatus.ERRORED
            ),
            description="the consumer errored",
        )
        status, ready = await harness.get_json("/health/ready")
        assert status == 503
        assert ready["failed"] == ["consumers"]
        assert ready["checks"]["consumers"]["reason"] == "errored: totals/c-1"
        assert (await harness.get("/health/live"))[0] == 200
        errors = await harness.metric(
            "eventcomposition_consumer_errors_total",
            group=GROUP,
            source="category:orders",
        )
        assert errors is not None
        assert errors >= 1

        harness.consumer.failing = False
        await wait_until(harness.ready, description="ready again after recovery")
        assert (await harness.get("/health/live"))[0] == 200


async def test_a_backlog_over_the_limit_makes_ready_503_until_drained() -> None:
    async with running() as harness:
        await publish(harness.store, 1)
        await caught_up(harness)

        harness.consumer.paused = True
        await publish(harness.store, MAX_LAG + 10)
        status, ready = await harness.get_json("/health/ready")
        assert status == 503
        assert ready["failed"] == ["lag"]
        assert ready["checks"]["lag"]["reason"] == (
            f"totals category:orders is {MAX_LAG + 10} behind (limit {MAX_LAG}) and "
            "not falling"
        )
        _, body = await harness.get_json("/status")
        assert body["sources"][0]["checkpoint"] == 0
        assert body["sources"][0]["head"] == MAX_LAG + 10
        lag = await harness.metric(
            "eventcomposition_consumer_lag_events",
            group=GROUP,
            source="category:orders",
        )
        assert lag == MAX_LAG + 10

        harness.consumer.paused = False
        await caught_up(harness)
        assert (
            await harness.metric(
                "eventcomposition_consumer_lag_events",
                group=GROUP,
                source="category:orders",
            )
            == 0
        )


async def test_a_broker_that_ended_for_good_makes_live_503() -> None:
    async with running(broker_gives_up=True) as harness:
        await caught_up(harness)

        harness.consumer.unhealthy = True
        await wait_until(
            lambda: harness.runtime.broker_failed, description="the broker gave up"
        )
        status, live = await harness.get_json("/health/live")
        assert status == 503
        assert live["live"] is False
        assert "ended for good" in live["reason"]
        status, ready = await harness.get_json("/health/ready")
        assert status == 503
        assert "broker" in ready["failed"]


async def test_the_server_stops_with_the_node() -> None:
    harness = Harness(InMemoryClusterState())
    async with harness.node:
        url = harness.server.url
        async with (
            aiohttp.ClientSession() as session,
            session.get(url + "/health/live") as response,
        ):
            assert response.status == 200
    assert harness.server.status is ProcessStatus.STOPPED
    assert harness.node.status is ProcessStatus.STOPPED
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(url + "/health/live")


async def test_a_port_in_use_fails_the_node_start_with_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        harness = Harness(InMemoryClusterState(), port=port)

        with pytest.raises(HttpServerError) as raised:
            async with harness.node:
                pass

    message = str(raised.value)
    assert message == (
        f"cannot serve HTTP on 127.0.0.1:{port}: the port is already in use; stop "
        "what uses it or give this node another http.port"
    )
    assert "\n" not in message
    assert harness.runtime.stopped
    assert harness.server.status is ProcessStatus.ERRORED


async def test_two_nodes_in_one_process_keep_their_metrics_apart() -> None:
    cluster = InMemoryClusterState()
    async with running(cluster) as first:
        await publish(first.store, 3)
        await caught_up(first)
        second = Harness(InMemoryClusterState())
        async with second.node, aiohttp.ClientSession() as session:
            second.session = session
            labels = {"group": GROUP, "source": "category:orders"}
            assert await second.metric(
                "eventcomposition_events_processed_total", **labels
            ) in (None, 0)
            assert (
                await first.metric("eventcomposition_events_processed_total", **labels)
                == 3
            )


async def test_on_postgresql_lag_falls_to_zero_and_counters_match_the_events(
    postgres_database: ConnectionInfo,
) -> None:
    async with running(database=postgres_database) as harness:
        await publish(harness.store, 2)
        await caught_up(harness)

        harness.consumer.paused = True
        await publish(harness.store, 40, stream="o-2")
        _, body = await harness.get_json("/status")
        (source,) = body["sources"]
        assert source["lag"] == source["head"] - source["checkpoint"] == 40
        status, ready = await harness.get_json("/health/ready")
        assert status == 503
        assert ready["failed"] == ["lag"]

        harness.consumer.paused = False
        await caught_up(harness)
        labels = {"group": GROUP, "source": "category:orders"}
        assert (
            await harness.metric("eventcomposition_consumer_lag_events", **labels) == 0
        )
        assert (
            await harness.metric("eventcomposition_events_processed_total", **labels)
            == harness.consumer.processed
            == 42
        )
