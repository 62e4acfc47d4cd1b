"""The sample application: sharding, its batch processors (in memory and on
PostgreSQL), the per-event idempotent processor, malformed input, and whole nodes
processing orders in memory and on PostgreSQL."""

from collections.abc import Mapping, Sequence
from itertools import batched, groupby
from pathlib import Path
from typing import Any

import psycopg
import pytest
from dependency_injector import providers
from logicblocks.event.projection import (
    InMemoryProjectionStorageAdapter,
    PostgresProjectionStorageAdapter,
    ProjectionStore,
)
from logicblocks.event.store import EventStore, InMemoryEventStorageAdapter
from logicblocks.event.types import NewEvent, StoredEvent
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from structlog.testing import capture_logs

from eventcomposition import BrokerRole
from eventcomposition.consumers import (
    CheckpointStore,
    InMemoryCheckpointStore,
    PostgresCheckpointStore,
    source_key,
)
from eventcomposition.consumers.partitions import DEFAULT_PARTITION_COUNT
from eventcomposition.containers import resolve
from eventcomposition.containers.demo import DemoContainer, demo_node
from eventcomposition.demo import (
    CustomerTotals,
    CustomerTotalsProcessor,
    DemoCluster,
    DemoNames,
    Order,
    expected_totals,
    generate_orders,
    publish_orders,
    read_totals,
)
from eventcomposition.demo.batches import (
    CustomerTotalsBatchProcessor,
    InMemoryCustomerTotals,
    PostgresCustomerTotals,
)
from eventcomposition.metrics import PrometheusNodeMetrics
from eventcomposition.settings import EventCompositionSettings, load_settings
from eventcomposition.testing.containers import container_for_test, postgres_overrides
from eventcomposition.testing.postgres import ConnectionInfo
from eventcomposition.testing.waiting import wait_until

SETTINGS_DIR = Path(__file__).resolve().parents[2] / "settings"
NAMES = DemoNames()


@pytest.fixture(autouse=True)
def no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ["EVENTCOMPOSITION_ENV", "EVENTCOMPOSITION_SETTINGS_DIR"]:
        monkeypatch.delenv(name, raising=False)


def in_memory_store() -> EventStore:
    return EventStore(adapter=InMemoryEventStorageAdapter())


async def stored_events(store: EventStore, names: DemoNames) -> list[StoredEvent]:
    """Every published order event, in the category's order."""
    events: list[StoredEvent] = [
        event async for event in store.category(category=names.category).iterate()
    ]
    return events


def order_id_of(event: StoredEvent) -> str:
    payload = event.payload
    assert isinstance(payload, Mapping)
    order_id = payload["order_id"]
    assert isinstance(order_id, str)
    return order_id


def assert_two_rejections_logged(
    logs: Sequence[Mapping[str, Any]],
    orders: Sequence[Order],
    events: Sequence[StoredEvent],
) -> None:
    """The two malformed orders were each logged once, as errors, with where they
    are and why, never their payload."""
    rejected = [line for line in logs if line["event"] == "demo.order-rejected"]
    malformed_ids = {order.order_id for order in orders if order.malformed}
    broken = [event for event in events if order_id_of(event) in malformed_ids]
    assert len(broken) == 2
    assert [
        (line["category"], line["stream"], line["position"], line["sequence_number"])
        for line in rejected
    ] == [(e.category, e.stream, e.position, e.sequence_number) for e in broken]
    assert {line["reason"] for line in rejected} == {
        "amount_cents is missing",
        "amount_cents is not an integer (got str)",
    }
    assert all(line["log_level"] == "error" for line in rejected)
    assert all("payload" not in line for line in rejected)


def projection_store() -> ProjectionStore:
    return ProjectionStore(adapter=InMemoryProjectionStorageAdapter())


async def project(
    events: Sequence[StoredEvent], processor: CustomerTotalsProcessor
) -> None:
    for event in events:
        await processor.process_event(event)


# One category, read in partitions


def test_customers_spread_over_every_partition_of_the_one_category() -> None:
    orders = generate_orders(500, customers=50)

    partitions = {
        partition
        for order in orders
        for partition in NAMES.partitions(8)
        if partition.holds(order.customer_id)
    }

    assert partitions == set(NAMES.partitions(8))
    assert {partition.category for partition in partitions} == {"orders"}
    assert len(NAMES.partitions()) == DEFAULT_PARTITION_COUNT


def test_a_run_id_scopes_every_name() -> None:
    names = DemoNames(run_id="r1")

    assert names.category == "orders-r1"
    assert names.subscriber_group == "customer-totals-r1"
    assert names.projection_name == "customer-totals-r1"
    assert DemoNames().category == "orders"
    assert [source_key(p) for p in names.partitions(2)] == [
        "orders-r1#0/2",
        "orders-r1#1/2",
    ]


# Publishing


def test_the_same_seed_publishes_the_same_orders() -> None:
    first = generate_orders(200, customers=20, malformed=4, seed=7)

    assert first == generate_orders(200, customers=20, malformed=4, seed=7)
    assert first != generate_orders(200, customers=20, malformed=4, seed=8)
    assert sum(order.malformed for order in first) == 4
    assert {order.customer_id for order in first} <= {
        f"customer-{n:04d}" for n in range(20)
    }


def test_malformed_orders_lack_an_integer_amount() -> None:
    orders = [order for order in generate_orders(100, malformed=4) if order.malformed]

    payloads = [order.payload() for order in orders]

    assert "amount_cents" not in payloads[0]
    assert isinstance(payloads[1]["amount_cents"], str)
    assert all("order_id" in payload for payload in payloads)


def test_expected_totals_count_valid_orders_only() -> None:
    orders = [
        Order("o1", "c1", 100),
        Order("o2", "c1", 250),
        Order("o3", "c1", 999, defect="missing-amount"),
        Order("o4", "c2", 5, defect="non-integer-amount"),
    ]

    assert expected_totals(orders) == {
        "c1": CustomerTotals(order_count=2, total_amount_cents=350),
        "c2": CustomerTotals(),
    }


async def test_orders_are_published_to_their_customers_streams_in_order() -> None:
    store = in_memory_store()
    orders = generate_orders(250, customers=10)

    published = await publish_orders(store, orders, names=NAMES, batch_size=40)

    assert published == 250
    events = await stored_events(store, NAMES)
    assert len(events) == 250
    for event in events:
        assert event.category == NAMES.category
    customer = orders[0].customer_id
    in_stream = [
        order_id_of(event)
        async for event in store.stream(
            category=NAMES.category, stream=customer
        ).iterate()
    ]
    assert in_stream == [o.order_id for o in orders if o.customer_id == customer]


# The batch processors


class Aborted(Exception):
    """Raised inside a transaction to roll its batch back."""


async def project_batches(
    events: Sequence[StoredEvent],
    processor: CustomerTotalsBatchProcessor,
    checkpoints: CheckpointStore,
    *,
    batch_size: int = 40,
) -> int:
    """Hand ``events`` to ``processor`` as a transactional consumer would: batches
    of one category, each in a transaction of ``checkpoints``; how many batches."""
    count = 0
    for _, of_category in groupby(events, key=lambda event: event.category):
        for batch in batched(of_category, batch_size, strict=False):
            async with checkpoints.transaction() as transaction:
                await processor.process_batch(batch, transaction)
            count += 1
    return count


async def process_then_abort(
    events: Sequence[StoredEvent],
    processor: CustomerTotalsBatchProcessor,
    checkpoints: CheckpointStore,
) -> None:
    """Process ``events`` as one batch, then fail before the commit."""
    async with checkpoints.transaction() as transaction:
        await processor.process_batch(events, transaction)
        raise Aborted


async def test_the_in_memory_batch_processor_projects_the_expected_totals() -> None:
    store = in_memory_store()
    orders = generate_orders(300, customers=15, malformed=3)
    await publish_orders(store, orders, names=NAMES)
    projections = projection_store()
    processor = InMemoryCustomerTotals(projections, NAMES.projection_name)

    await project_batches(
        await stored_events(store, NAMES), processor, InMemoryCheckpointStore()
    )

    assert await read_totals(projections, NAMES.projection_name) == expected_totals(
        orders
    )
    assert (processor.applied, processor.malformed) == (297, 3)


async def test_a_rolled_back_batch_changes_nothing_in_memory() -> None:
    store = in_memory_store()
    orders = generate_orders(40, customers=4, malformed=2)
    await publish_orders(store, orders, names=NAMES)
    events = await stored_events(store, NAMES)
    projections = projection_store()
    processor = InMemoryCustomerTotals(projections, NAMES.projection_name)

    with capture_logs() as logs, pytest.raises(Aborted):
        await process_then_abort(events, processor, InMemoryCheckpointStore())

    assert await read_totals(projections, NAMES.projection_name) == {}
    assert (processor.applied, processor.malformed) == (0, 0)
    assert logs == []


async def test_malformed_events_are_logged_with_their_position_and_skipped() -> None:
    store = in_memory_store()
    orders = generate_orders(60, customers=3, malformed=2)
    await publish_orders(store, orders, names=NAMES)
    events = await stored_events(store, NAMES)
    projections = projection_store()
    processor = InMemoryCustomerTotals(projections, NAMES.projection_name)

    with capture_logs() as logs:
        await project_batches(events, processor, InMemoryCheckpointStore())

    assert_two_rejections_logged(logs, orders, events)
    assert processor.malformed == 2
    assert await read_totals(projections, NAMES.projection_name) == expected_totals(
        orders
    )


async def test_the_batch_processor_ignores_events_of_other_names() -> None:
    store = in_memory_store()
    await store.stream(category=NAMES.category, stream="c1").publish(
        events=[
            Order("o1", "c1", 100).event(),
            NewEvent(name="order-cancelled", payload={"order_id": "o1"}),
        ]
    )
    projections = projection_store()
    processor = InMemoryCustomerTotals(projections, NAMES.projection_name)

    await project_batches(
        await stored_events(store, NAMES), processor, InMemoryCheckpointStore()
    )

    assert await read_totals(projections, NAMES.projection_name) == {
        "c1": CustomerTotals(order_count=1, total_amount_cents=100)
    }
    assert (processor.applied, processor.malformed) == (1, 0)


async def test_the_postgres_batch_processor_commits_or_rolls_back_with_the_batch(
    postgres_pool: AsyncConnectionPool[AsyncConnection[Any]],
) -> None:
    # Where the events come from does not matter to the processor.
    store = in_memory_store()
    orders = generate_orders(200, customers=10, malformed=2)
    await publish_orders(store, orders, names=NAMES)
    events = await stored_events(store, NAMES)
    processor = PostgresCustomerTotals(NAMES.projection_name)
    checkpoints = PostgresCheckpointStore(postgres_pool)

    await project_batches(events, processor, checkpoints)

    projections = ProjectionStore(
        adapter=PostgresProjectionStorageAdapter(connection_source=postgres_pool)
    )
    assert await read_totals(projections, NAMES.projection_name) == expected_totals(
        orders
    )
    assert (processor.applied, processor.malformed) == (198, 2)

    with pytest.raises(Aborted):
        await process_then_abort(events, processor, checkpoints)
    assert await read_totals(projections, NAMES.projection_name) == expected_totals(
        orders
    )
    assert (processor.applied, processor.malformed) == (198, 2)


# The per-event processor (at least once, idempotent of its own)


async def test_the_projection_equals_the_expected_totals() -> None:
    store = in_memory_store()
    orders = generate_orders(300, customers=15, malformed=3)
    await publish_orders(store, orders, names=NAMES)
    projections = projection_store()
    processor = CustomerTotalsProcessor(projections, NAMES.projection_name)

    await project(await stored_events(store, NAMES), processor)

    assert await read_totals(projections, NAMES.projection_name) == expected_totals(
        orders
    )
    assert (processor.applied, processor.malformed, processor.replayed) == (297, 3, 0)


async def test_replaying_events_leaves_the_totals_unchanged() -> None:
    store = in_memory_store()
    orders = generate_orders(200, customers=8, malformed=2)
    await publish_orders(store, orders, names=NAMES)
    events = await stored_events(store, NAMES)
    projections = projection_store()
    processor = CustomerTotalsProcessor(projections, NAMES.projection_name)
    await project(events, processor)
    before = await read_totals(projections, NAMES.projection_name)

    # A node killed mid-batch: the next one replays from the last saved state.
    await project(events[len(events) // 2 :], processor)
    await project(events, processor)

    assert await read_totals(projections, NAMES.projection_name) == before
    assert before == expected_totals(orders)
    assert processor.applied == 198
    assert processor.malformed == 2
    assert processor.replayed == len(events) - len(events) // 2 + len(events)


async def test_a_second_processor_over_the_same_store_skips_what_was_applied() -> None:
    store = in_memory_store()
    orders = generate_orders(120, customers=6)
    await publish_orders(store, orders, names=NAMES)
    events = await stored_events(store, NAMES)
    projections = projection_store()
    first = CustomerTotalsProcessor(projections, NAMES.projection_name)
    await project(events[:70], first)

    # The source moves to another node, which replays some events first.
    second = CustomerTotalsProcessor(projections, NAMES.projection_name)
    await project(events[50:], second)

    assert await read_totals(projections, NAMES.projection_name) == expected_totals(
        orders
    )
    assert (first.applied, second.applied, second.replayed) == (70, 50, 20)


async def test_the_per_event_processor_logs_and_skips_malformed_events() -> None:
    store = in_memory_store()
    orders = generate_orders(60, customers=3, malformed=2)
    await publish_orders(store, orders, names=NAMES)
    events = await stored_events(store, NAMES)
    projections = projection_store()
    processor = CustomerTotalsProcessor(projections, NAMES.projection_name)

    with capture_logs() as logs:
        await project(events, processor)  # does not raise
        await project(events, processor)  # a replay logs nothing more

    assert_two_rejections_logged(logs, orders, events)
    assert processor.malformed == 2
    assert await read_totals(projections, NAMES.projection_name) == expected_totals(
        orders
    )


async def test_the_per_event_processor_ignores_events_of_other_names() -> None:
    store = in_memory_store()
    await store.stream(category=NAMES.category, stream="c1").publish(
        events=[Order("o1", "c1", 100).event()]
    )
    await store.stream(category=NAMES.category, stream="c1").publish(
        events=[NewEvent(name="order-cancelled", payload={"order_id": "o1"})]
    )
    projections = projection_store()
    processor = CustomerTotalsProcessor(projections, NAMES.projection_name)

    await project(await stored_events(store, DemoNames()), processor)

    assert await read_totals(projections, NAMES.projection_name) == {
        "c1": CustomerTotals(order_count=1, total_amount_cents=100)
    }
    assert (processor.applied, processor.malformed) == (1, 0)


# Whole nodes


async def test_a_full_node_in_memory_processes_published_orders() -> None:
    orders = generate_orders(400, customers=25, malformed=2)
    async with container_for_test(
        DemoContainer,
        settings_dir=SETTINGS_DIR,
        node={"id": "full-1", "role": "full"},
    ) as container:
        processor = await resolve(container.processor)
        runtime = await resolve(container.runtime)
        await runtime.start()

        await publish_orders(await resolve(container.event_store), orders, names=NAMES)
        await wait_until(
            lambda: processor.processed == len(orders),
            timeout=20,
            description="every order processed",
        )

        totals = await read_totals(
            await resolve(container.projection_store), NAMES.projection_name
        )
    assert totals == expected_totals(orders)
    assert (processor.applied, processor.malformed) == (398, 2)


async def test_a_full_node_records_its_batches_in_the_node_metrics() -> None:
    orders = generate_orders(120, customers=10)
    async with container_for_test(
        DemoContainer,
        settings_dir=SETTINGS_DIR,
        node={"id": "full-1", "role": "full"},
        http={"enabled": True, "port": 0},
    ) as container:
        processor = await resolve(container.processor)
        metrics = await resolve(container.metrics)
        runtime = await resolve(container.runtime)
        await runtime.start()

        await publish_orders(await resolve(container.event_store), orders, names=NAMES)
        await wait_until(
            lambda: processor.processed == len(orders),
            timeout=20,
            description="every order processed",
        )

    assert isinstance(metrics, PrometheusNodeMetrics)
    processed = [
        metrics.registry.get_sample_value(
            "eventcomposition_events_processed_total",
            {"group": NAMES.subscriber_group, "source": f"partition:{key}"},
        )
        or 0
        for key in map(source_key, NAMES.partitions())
    ]
    assert sum(processed) == len(orders)


def node_settings(node_id: str, role: BrokerRole) -> EventCompositionSettings:
    return load_settings(
        "test",
        settings_dir=SETTINGS_DIR,
        node={"id": node_id, "role": role},
        storage={"type": "memory"},
    )


async def test_a_coordinator_and_observers_in_memory_share_the_work() -> None:
    cluster = DemoCluster(node_settings, demo_node, observers=2)
    orders = generate_orders(300, customers=30, malformed=1)
    try:
        await cluster.start(registration_timeout=10)
        await publish_orders(cluster.event_store, orders, names=cluster.names)
        await wait_until(
            lambda: cluster.processed == len(orders),
            timeout=20,
            description="every order processed",
        )
        summaries = {summary.node_id: summary for summary in await cluster.summaries()}
        totals = await cluster.totals()
    finally:
        await cluster.stop()

    assert totals == expected_totals(orders)
    observers = [summaries["observer-1"], summaries["observer-2"]]
    assert all(
        len(observer.sources) == DEFAULT_PARTITION_COUNT // 2 for observer in observers
    )
    assert set(observers[0].sources).isdisjoint(observers[1].sources)
    assert all(observer.applied > 0 for observer in observers)
    coordinator = summaries["coordinator-1"]
    assert (coordinator.role, coordinator.applied, coordinator.sources) == (
        BrokerRole.COORDINATOR,
        0,
        (),
    )


async def test_a_full_node_on_postgres_persists_the_projection(
    postgres_database: ConnectionInfo,
) -> None:
    names = DemoNames(run_id="pg")
    orders = generate_orders(150, customers=12, malformed=1)
    async with container_for_test(
        DemoContainer,
        settings_dir=SETTINGS_DIR,
        node={"id": "full-1", "role": "full"},
        **postgres_overrides(postgres_database),
    ) as container:
        container.names.override(providers.Object(names))
        processor = await resolve(container.processor)
        runtime = await resolve(container.runtime)
        await runtime.start()
        try:
            await publish_orders(
                await resolve(container.event_store), orders, names=names
            )
            await wait_until(
                lambda: processor.processed == len(orders),
                timeout=30,
                description="every order processed",
            )
        finally:
            # Stop while the pool is open (the container's shutdown may close the
            # pool under a stopping broker).
            await runtime.stop()

    expected = expected_totals(orders)
    with psycopg.connect(postgres_database.conninfo) as connection:
        rows = connection.execute(
            "SELECT id, state, metadata FROM projections WHERE name = %s",
            [names.projection_name],
        ).fetchall()
    stored = {
        row[0]: CustomerTotals(
            order_count=row[1]["order_count"],
            total_amount_cents=row[1]["total_amount_cents"],
        )
        for row in rows
    }
    assert stored == expected
    # No idempotency of its own: the consumer's checkpoint does that.
    assert all(row[2] == {} for row in rows)
