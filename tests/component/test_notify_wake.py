"""Consumers woken by NOTIFY on PostgreSQL: an EventRuntime and a NotifyListener.

The consumer's poll interval is 30 s, so an event processed within a few seconds
was processed because a notification (or a reconnection) woke the consumer. How
fast that is, is measured by the latency benchmark, not here.
"""

from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from logicblocks.event.processing import (
    EventBrokerStorageType,
    EventBrokerType,
    EventSubscriptionConsumer,
    ProcessStatus,
    ServiceManager,
)
from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.types import (
    CategoryIdentifier,
    JsonValue,
    NewEvent,
    StoredEvent,
)
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition import (
    Backoff,
    BrokerRole,
    DistributedEventBrokerSettings,
    EventConsumerSettings,
    EventRuntime,
)
from eventcomposition.broker import make_event_broker
from eventcomposition.consumers import make_subscription_consumer
from eventcomposition.database import connection_pool
from eventcomposition.runtime import ExposesSources
from eventcomposition.schema import migrate
from eventcomposition.services import NotifyListener
from eventcomposition.testing import (
    ConnectionInfo,
    ThrowawayPostgres,
    create_database,
    unique_database_name,
)
from eventcomposition.testing.capture import CapturingProcessor
from eventcomposition.testing.waiting import wait_until

type Pool = AsyncConnectionPool[AsyncConnection[Any]]

HELD = frozenset({"held-a", "held-b"})
IDLE_POLL = timedelta(seconds=30)
# Far below IDLE_POLL: only a wake-up explains an event processed this fast.
WOKEN_WITHIN = 3.0
INTERVAL = timedelta(milliseconds=200)


class RecordingWaker:
    """Wakes the runtime's consumers and records each call and how many woke."""

    def __init__(self, runtime: EventRuntime) -> None:
        self._runtime = runtime
        self.calls: list[tuple[frozenset[str] | None, int]] = []

    def wake_consumers(self, categories: Collection[str] | None = None) -> int:
        woken = self._runtime.wake_consumers(categories)
        self.calls.append(
            (None if categories is None else frozenset(categories), woken)
        )
        return woken


@dataclass
class WakingNode:
    pool: Pool
    store: EventStore
    processor: CapturingProcessor
    consumer: EventSubscriptionConsumer[StoredEvent]
    waker: RecordingWaker
    listener: NotifyListener

    async def publish(self, category: str) -> str:
        event: NewEvent[str, JsonValue] = NewEvent(name="happened", payload={})
        stored = await self.store.stream(category=category, stream="s").publish(
            events=[event]
        )
        return stored[0].id

    def processed(self, event_id: str) -> bool:
        return event_id in self.processor.ids


@asynccontextmanager
async def waking_node(
    database: ConnectionInfo, *, reconnect_backoff: Backoff | None = None
) -> AsyncIterator[WakingNode]:
    """One FULL node polling every 30 s, with a NOTIFY listener, on ``database``."""
    async with connection_pool(database.conninfo, where="test", max_size=10) as pool:
        store = EventStore(adapter=PostgresEventStorageAdapter(connection_source=pool))
        processor = CapturingProcessor()
        broker = make_event_broker(
            "waking-node",
            EventBrokerType.Distributed,
            EventBrokerStorageType.Postgres,
            settings=DistributedEventBrokerSettings(
                role=BrokerRole.FULL,
                subscriber_manager_heartbeat_interval=INTERVAL,
                coordinator_distribution_interval=INTERVAL,
                coordinator_leadership_attempt_interval=INTERVAL,
                observer_synchronisation_interval=INTERVAL,
            ),
            connection_settings=database.connection_settings(),
            connection_pool=pool,
        )
        runtime = EventRuntime(
            "waking-node",
            broker,
            ServiceManager(),
            EventConsumerSettings(poll_interval=IDLE_POLL),
        )
        consumer = make_subscription_consumer(
            event_store=store,
            subscriber_group="woken",
            subscription_requests=[CategoryIdentifier(category=c) for c in HELD],
            event_processor=processor,
        )
        await runtime.register_subscription_consumer(consumer)
        waker = RecordingWaker(runtime)
        listener = NotifyListener(
            database.conninfo,
            waker,
            node_id="waking-node",
            backoff=reconnect_backoff,
        )
        assert isinstance(consumer, ExposesSources)
        async with runtime, listener:
            await wait_until(
                lambda: held_categories(consumer) == HELD,
                timeout=10,
                description="the node to hold its sources",
            )
            yield WakingNode(pool, store, processor, consumer, waker, listener)


def held_categories(consumer: ExposesSources) -> set[str]:
    return {
        source.category
        for source in consumer.sources
        if isinstance(source, CategoryIdentifier)
    }


def status_of(listener: NotifyListener) -> ProcessStatus:
    # A call, so that mypy does not narrow the status between two checks.
    return listener.status


async def listener_pid(pool: Pool, application_name: str) -> int | None:
    async with pool.connection() as connection:
        cursor = await connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
            [application_name],
        )
        row = await cursor.fetchone()
    return None if row is None else int(row[0])


async def test_an_event_wakes_an_idle_consumer_at_once(
    postgres_database: ConnectionInfo,
) -> None:
    async with waking_node(postgres_database) as node:
        assert node.listener.status is ProcessStatus.RUNNING

        event_id = await node.publish("held-a")

        await wait_until(
            lambda: node.processed(event_id),
            timeout=WOKEN_WITHIN,
            description="the event to be processed",
        )
        assert (frozenset({"held-a"}), 1) in node.waker.calls


async def test_an_event_in_a_category_the_node_does_not_hold_wakes_nothing(
    postgres_database: ConnectionInfo,
) -> None:
    async with waking_node(postgres_database) as node:
        await node.publish("elsewhere")

        await wait_until(
            lambda: any(c == frozenset({"elsewhere"}) for c, _ in node.waker.calls),
            description="the notification of 'elsewhere'",
        )
        assert (frozenset({"elsewhere"}), 0) in node.waker.calls
        assert all(woken == 0 for c, woken in node.waker.calls if c is not None)


async def test_the_listener_reconnects_after_its_backend_is_terminated(
    postgres_database: ConnectionInfo,
) -> None:
    # A long first delay, so that the outage is there to see and to publish in.
    backoff = Backoff(initial=timedelta(seconds=1.5), maximum=timedelta(seconds=2))
    async with waking_node(postgres_database, reconnect_backoff=backoff) as node:
        listener = node.listener
        before = await listener_pid(node.pool, listener.application_name)
        assert before is not None

        async with node.pool.connection() as connection:
            await connection.execute("SELECT pg_terminate_backend(%s)", [before])
        await wait_until(
            lambda: listener.status is ProcessStatus.ERRORED,
            description="the listener to show the outage",
        )
        event_id = await node.publish("held-b")
        assert status_of(listener) is ProcessStatus.ERRORED, "reconnected too soon"

        await wait_until(
            lambda: node.processed(event_id),
            timeout=WOKEN_WITHIN + 2,
            description="the event published during the outage to be processed",
        )
        # Usually the reconnection's wake processed it; a poll the node's start-up
        # still had going (its sources allocated in two steps) can get there first,
        # so the reconnection is waited for rather than assumed done.
        await wait_until(
            lambda: listener.status is ProcessStatus.RUNNING,
            timeout=WOKEN_WITHIN,
            description="the listener to listen again",
        )
        assert listener.connections == 2
        after = await listener_pid(node.pool, listener.application_name)
        assert after not in (None, before)
        # After reconnecting it woke everything, since it may have missed some.
        assert [c for c, _ in node.waker.calls].count(None) == 2


async def test_the_listener_comes_back_after_a_server_restart(
    throwaway_postgres: ThrowawayPostgres,
) -> None:
    database = create_database(
        throwaway_postgres.connection_info, unique_database_name("notify")
    )
    await migrate(database.conninfo)
    backoff = Backoff(initial=timedelta(milliseconds=200), maximum=timedelta(seconds=1))
    async with waking_node(database, reconnect_backoff=backoff) as node:
        listener = node.listener

        throwaway_postgres.shutdown(mode="fast")
        await wait_until(
            lambda: listener.status is ProcessStatus.ERRORED,
            description="the listener to show the outage",
        )
        throwaway_postgres.start()
        published: list[str] = []

        async def publish_once_the_server_is_back() -> bool:
            # The test's own pooled connections died with the server too.
            try:
                published.append(await node.publish("held-a"))
            except psycopg.OperationalError:
                return False
            return True

        await wait_until(publish_once_the_server_is_back, timeout=10)
        event_id = published[0]

        await wait_until(
            lambda: node.processed(event_id),
            timeout=WOKEN_WITHIN + 5,
            description="the event published after the restart to be processed",
        )
        await wait_until(lambda: listener.status is ProcessStatus.RUNNING)
        assert listener.connections >= 2
