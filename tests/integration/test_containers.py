"""The composition root builds a ready runtime for every configuration."""

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
from dependency_injector import providers
from logicblocks.event.processing import EventBroker, ProcessStatus
from logicblocks.event.store import (
    EventStore,
    InMemoryEventStorageAdapter,
    PostgresEventStorageAdapter,
)
from logicblocks.event.types import CategoryIdentifier, NewEvent, StoredEvent
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from pytest_mock import MockerFixture

from eventcomposition import (
    BrokerRole,
    DistributedEventBroker,
    EventRuntime,
    InMemoryClusterState,
)
from eventcomposition.consumers import (
    BatchProcessor,
    EventHandler,
    PoisonOrder,
    Transaction,
    TransactionalConsumer,
    make_subscription_consumer,
)
from eventcomposition.containers import EventRuntimeContainer, resolve, shutdown
from eventcomposition.runtime import (
    ConsumerRegistration,
    SubscriberRegistration,
    SubscriptionConsumerRegistration,
)
from eventcomposition.settings import load_settings
from eventcomposition.testing.capture import CapturingProcessor, CapturingSubscriber
from eventcomposition.testing.containers import container_for_test, postgres_overrides
from eventcomposition.testing.postgres import ConnectionInfo
from eventcomposition.testing.waiting import wait_until

SETTINGS_DIR = Path(__file__).resolve().parents[2] / "settings"
ENVIRONMENTS = ["development", "test", "production"]


@pytest.fixture(autouse=True)
def no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ["EVENTCOMPOSITION_ENV", "EVENTCOMPOSITION_SETTINGS_DIR"]:
        monkeypatch.delenv(name, raising=False)


def storage_overrides(storage: str, database: ConnectionInfo | None) -> dict[str, Any]:
    if storage == "postgres":
        assert database is not None
        overrides = postgres_overrides(database)
        # The test server trusts local logins; production insists on a password.
        overrides["storage"]["postgres"]["password"] = database.password or "unused"
        return overrides
    # Production defaults to PostgreSQL and needs a password to be valid at all;
    # the memory runs point PostgreSQL at a closed port to prove it stays unused.
    return {
        "storage": {
            "type": "memory",
            "postgres": {"port": 1, "password": "never-used"},
        }
    }


@pytest.fixture(params=["memory", "postgres"])
def storage(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def database(storage: str, request: pytest.FixtureRequest) -> ConnectionInfo | None:
    if storage != "postgres":
        return None
    info: ConnectionInfo = request.getfixturevalue("postgres_database")
    return info


@pytest.mark.parametrize("environment", ENVIRONMENTS)
@pytest.mark.parametrize("role", list(BrokerRole))
async def test_resolves_a_runtime_for_every_environment_role_and_storage(
    environment: str,
    role: BrokerRole,
    storage: str,
    database: ConnectionInfo | None,
) -> None:
    async with container_for_test(
        EventRuntimeContainer,
        environment=environment,
        settings_dir=SETTINGS_DIR,
        node={"id": f"node-{role}", "role": role},
        **storage_overrides(storage, database),
    ) as container:
        runtime = await resolve(container.runtime)
        adapter = await resolve(container.event_storage_adapter)

        assert isinstance(runtime, EventRuntime)
        assert runtime.node_id == f"node-{role}"
        assert not runtime.started
        broker = runtime.event_broker
        assert isinstance(broker, DistributedEventBroker)
        assert broker.role is role
        adapter_type = (
            PostgresEventStorageAdapter
            if storage == "postgres"
            else InMemoryEventStorageAdapter
        )
        assert isinstance(adapter, adapter_type)
        database = await resolve(container.database)
        if storage == "postgres":
            assert database is not None
            assert not (await resolve(container.connection_pool)).closed
        else:
            assert database is None


async def test_memory_storage_opens_no_postgres_connection() -> None:
    async with container_for_test(
        EventRuntimeContainer,
        environment="test",
        settings_dir=SETTINGS_DIR,
        storage={"type": "memory", "postgres": {"port": 1}},
    ) as container:
        runtime = await resolve(container.runtime)
        await runtime.start()
        await runtime.stop()

        assert await resolve(container.database) is None


async def test_shutdown_stops_the_runtime_and_closes_the_pool(
    postgres_database: ConnectionInfo,
) -> None:
    async with container_for_test(
        EventRuntimeContainer,
        environment="test",
        settings_dir=SETTINGS_DIR,
        **postgres_overrides(postgres_database),
    ) as container:
        # Declared as a plain object: the runtime reaches the pool only through
        # the broker, which dependency-injector does not see when ordering shutdown.
        store = await resolve(container.event_store)
        container.consumers.override(
            providers.List(
                providers.Object(registrations_of(store, CapturingProcessor()))
            )
        )
        runtime = await resolve(container.runtime)
        pool = await resolve(container.connection_pool)
        assert isinstance(pool, AsyncConnectionPool)
        await runtime.start()
        # The broker must unregister its subscribers before the pool closes.
        await wait_until(lambda: "event-broker" in runtime.service_statuses)
        shutting_down = asyncio.create_task(shutdown(container))
        await asyncio.wait_for(shutting_down, timeout=15)

    assert runtime.stopped
    assert pool.closed
    async with await AsyncConnection.connect(postgres_database.conninfo) as connection:
        cursor = await connection.execute("SELECT count(*) FROM subscribers")
        assert await cursor.fetchone() == (0,)


def registrations_of(
    event_store: EventStore, processor: CapturingProcessor
) -> SubscriptionConsumerRegistration:
    return SubscriptionConsumerRegistration(
        make_subscription_consumer(
            event_store=event_store,
            subscriber_group="totals",
            subscription_requests=[CategoryIdentifier(category="orders")],
            event_processor=processor,
        )
    )


class TwoConsumerApp(EventRuntimeContainer):
    """An application: two subscription consumers over two categories."""

    orders_processor = providers.Singleton(CapturingProcessor, "orders")
    payments_processor = providers.Singleton(CapturingProcessor, "payments")
    consumers = providers.List(
        providers.Factory(
            SubscriptionConsumerRegistration,
            consumer=providers.Factory(
                make_subscription_consumer,
                event_store=EventRuntimeContainer.event_store,
                subscriber_group="order-totals",
                subscription_requests=[CategoryIdentifier(category="orders")],
                event_processor=orders_processor,
            ),
        ),
        providers.Factory(
            SubscriptionConsumerRegistration,
            consumer=providers.Factory(
                make_subscription_consumer,
                event_store=EventRuntimeContainer.event_store,
                subscriber_group="payment-ledger",
                subscription_requests=[CategoryIdentifier(category="payments")],
                event_processor=payments_processor,
            ),
        ),
    )


async def publish(store: EventStore, category: str, count: int) -> set[str]:
    stored = await store.stream(category=category, stream="s").publish(
        events=[NewEvent(name="happened", payload={"n": n}) for n in range(count)]
    )
    return {event.id for event in stored}


async def test_an_application_container_runs_its_consumers_end_to_end() -> None:
    async with container_for_test(
        TwoConsumerApp, environment="test", settings_dir=SETTINGS_DIR
    ) as container:
        runtime = await resolve(container.runtime)
        store = await resolve(container.event_store)
        orders = await publish(store, "orders", 4)
        payments = await publish(store, "payments", 3)

        async with runtime:
            await wait_until(lambda: container.orders_processor().ids == orders)
            await wait_until(lambda: container.payments_processor().ids == payments)
            assert runtime.status is ProcessStatus.RUNNING
        assert set(runtime.service_statuses) >= {"event-broker"}


async def test_a_mock_broker_receives_the_declared_consumers(
    mocker: MockerFixture,
) -> None:
    broker = mocker.create_autospec(EventBroker, instance=True)
    async with container_for_test(
        TwoConsumerApp, environment="test", settings_dir=SETTINGS_DIR, broker=broker
    ) as container:
        runtime = await resolve(container.runtime)

    registered = [call.args[0].group for call in broker.register.await_args_list]
    assert registered == ["order-totals", "payment-ledger"]
    assert runtime.event_broker is broker


async def test_overriding_consumers_replaces_the_declared_ones(
    mocker: MockerFixture,
) -> None:
    broker = mocker.create_autospec(EventBroker, instance=True)
    subscriber = CapturingSubscriber("bare", "one", [CategoryIdentifier(category="x")])
    consumer = mocker.AsyncMock()
    consumer.name = "plain"
    async with container_for_test(
        TwoConsumerApp,
        environment="test",
        settings_dir=SETTINGS_DIR,
        broker=broker,
        consumers=[SubscriberRegistration(subscriber), ConsumerRegistration(consumer)],
    ) as container:
        runtime = await resolve(container.runtime)

    broker.register.assert_awaited_once_with(subscriber)
    assert list(runtime.service_statuses) == ["plain"]


async def test_settings_overridden_in_one_container_do_not_leak() -> None:
    async with container_for_test(
        EventRuntimeContainer,
        environment="test",
        settings_dir=SETTINGS_DIR,
        node={"id": "first"},
    ) as first:
        assert (await resolve(first.runtime)).node_id == "first"
    async with container_for_test(
        EventRuntimeContainer, environment="test", settings_dir=SETTINGS_DIR
    ) as second:
        assert (await resolve(second.runtime)).node_id != "first"


async def test_overriding_a_provider_in_a_test_reaches_the_runtime() -> None:
    async with container_for_test(
        EventRuntimeContainer,
        environment="test",
        settings_dir=SETTINGS_DIR,
        node={"id": "declared"},
    ) as container:
        with container.node_id.override("overridden"):
            runtime = await resolve(container.runtime)

    assert runtime.node_id == "overridden"


async def test_coordinator_nodes_register_no_consumers_and_say_so() -> None:
    with structlog.testing.capture_logs() as logs:
        async with container_for_test(
            TwoConsumerApp,
            environment="test",
            settings_dir=SETTINGS_DIR,
            node={"role": "coordinator"},
        ) as container:
            runtime = await resolve(container.runtime)

    assert runtime.service_statuses == {}
    skipped = [
        log for log in logs if log["event"] == "runtime.consumers-not-registered"
    ]
    assert len(skipped) == 1
    assert skipped[0]["declared"] == 2


async def test_containers_sharing_cluster_state_cooperate_in_memory() -> None:
    state = InMemoryClusterState()
    processor = CapturingProcessor()
    async with (
        container_for_test(
            EventRuntimeContainer,
            environment="test",
            settings_dir=SETTINGS_DIR,
            cluster_state=state,
            node={"id": "coordinator", "role": "coordinator"},
        ) as coordinator,
        container_for_test(
            EventRuntimeContainer,
            environment="test",
            settings_dir=SETTINGS_DIR,
            cluster_state=state,
            node={"id": "observer", "role": "observer"},
        ) as observer,
    ):
        store = await resolve(observer.event_store)
        observer.consumers.override(
            providers.List(providers.Object(registrations_of(store, processor)))
        )
        published = await publish(store, "orders", 5)
        async with (
            await resolve(coordinator.runtime),
            await resolve(observer.runtime),
        ):
            await wait_until(lambda: processor.ids == published)

    assert state.sources_by_node() == {}


async def test_a_subclass_redefinition_survives_reset_override() -> None:
    async with container_for_test(
        TwoConsumerApp, environment="test", settings_dir=SETTINGS_DIR
    ) as container:
        settings = container.settings()
        container.reset_override()
        container.settings.override(providers.Object(settings))
        runtime = await resolve(container.runtime)

    assert len(runtime.service_statuses) == 2


class ServiceJournal:
    """Extra node services that record what they saw of the node's runtime."""

    def __init__(self) -> None:
        self.entries: list[str] = []

    def service(self, name: str, runtime: EventRuntime) -> "JournalingService":
        return JournalingService(name, runtime, self.entries)


class JournalingService:
    def __init__(self, name: str, runtime: EventRuntime, entries: list[str]) -> None:
        self.name = name
        self._runtime = runtime
        self._entries = entries

    async def __aenter__(self) -> "JournalingService":
        self._entries.append(f"enter {self.name}: runtime {self._state()}")
        return self

    async def __aexit__(self, *_: object) -> None:
        self._entries.append(f"exit {self.name}: runtime {self._state()}")

    def _state(self) -> str:
        if self._runtime.stopped:
            return "stopped"
        return "started" if self._runtime.started else "new"


class AppWithServices(EventRuntimeContainer):
    journal = providers.Singleton(ServiceJournal)
    services = providers.List(
        providers.Factory(
            JournalingService,
            name="listener",
            runtime=EventRuntimeContainer.event_runtime,
            entries=journal.provided.entries,
        ),
        providers.Factory(
            JournalingService,
            name="http",
            runtime=EventRuntimeContainer.event_runtime,
            entries=journal.provided.entries,
        ),
    )


async def test_an_application_adds_services_that_run_inside_the_runtime(
    storage: str, database: ConnectionInfo | None
) -> None:
    async with container_for_test(
        AppWithServices,
        environment="test",
        settings_dir=SETTINGS_DIR,
        **storage_overrides(storage, database),
    ) as container:
        node = await container.node()
        journal = await resolve(container.journal)
        assert node is await resolve(container.node)
        assert not node.runtime.started
        async with node:
            assert set(node.service_statuses) >= {
                "JournalingService",
                "JournalingService#2",
                "event-broker",
            }
            if storage == "postgres":
                assert not (await resolve(container.connection_pool)).closed
        if storage == "postgres":
            assert (await resolve(container.connection_pool)).closed

    assert journal.entries == [
        "enter listener: runtime started",
        "enter http: runtime started",
        "exit http: runtime started",
        "exit listener: runtime started",
    ]


async def test_a_test_replaces_the_node_services() -> None:
    async with container_for_test(
        AppWithServices, environment="test", settings_dir=SETTINGS_DIR, services=[]
    ) as container:
        journal = await resolve(container.journal)
        node = await resolve(container.node)
        async with node:
            assert "JournalingService" not in node.service_statuses
    assert journal.entries == []


class BatchRecorder(BatchProcessor):
    """A batch processor that remembers the ids of the events it committed."""

    def __init__(self) -> None:
        self.ids: set[str] = set()

    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Any
    ) -> None:
        self.ids.update(event.id for event in events)


def recorded_consumers(
    base: providers.Factory[TransactionalConsumer],
    recorder: providers.Provider[BatchRecorder],
) -> providers.List:
    return providers.List(
        providers.Factory(
            SubscriptionConsumerRegistration,
            consumer=providers.Factory(
                base,
                subscriber_group="layered",
                subscription_requests=[CategoryIdentifier(category="orders")],
                processor=recorder,
            ),
        )
    )


class CountingHandler(EventHandler):
    def __init__(self) -> None:
        self.ids: set[str] = set()

    async def process_event(self, event: StoredEvent, transaction: Transaction) -> None:
        transaction.on_commit(lambda: self.ids.add(event.id))


class HandlerApp(EventRuntimeContainer):
    handler = providers.Singleton(CountingHandler)
    consumers = providers.List(
        providers.Factory(
            SubscriptionConsumerRegistration,
            consumer=providers.Factory(
                EventRuntimeContainer.transactional_consumer,
                subscriber_group="counted",
                subscription_requests=[CategoryIdentifier(category="orders")],
                processor=handler,
            ),
        )
    )


class LayeredOrdersApp(EventRuntimeContainer):
    recorder = providers.Singleton(BatchRecorder)
    consumers = recorded_consumers(
        EventRuntimeContainer.transactional_consumer, recorder
    )


class LayeredFixedApp(LayeredOrdersApp):
    consumers = recorded_consumers(
        EventRuntimeContainer.transactional_consumer, LayeredOrdersApp.recorder
    )


class LayeredVariantApp(LayeredFixedApp):
    consumers = recorded_consumers(
        LayeredOrdersApp.transactional_consumer, LayeredOrdersApp.recorder
    )


@pytest.mark.parametrize("app", [LayeredFixedApp, LayeredVariantApp])
async def test_a_layered_application_runs_its_node_on_postgres(
    app: type[LayeredOrdersApp], postgres_database: ConnectionInfo
) -> None:
    async with container_for_test(
        app,
        environment="test",
        settings_dir=SETTINGS_DIR,
        node={"id": "layered-node"},
        **postgres_overrides(postgres_database),
    ) as container:
        node = await resolve(container.node)
        recorder = await resolve(container.recorder)
        async with node:
            store = await resolve(container.event_store)
            published = await publish(store, "orders", 5)
            await wait_until(lambda: recorder.ids == published, timeout=20)

    assert node.runtime.node_id == "layered-node"
    async with await AsyncConnection.connect(postgres_database.conninfo) as connection:
        cursor = await connection.execute(
            "SELECT count(*) FROM consumer_checkpoints WHERE \"group\" = 'layered'"
        )
        assert await cursor.fetchone() == (1,)


async def test_the_transactional_consumer_provider_runs_an_event_handler() -> None:
    settings = load_settings(
        "test",
        settings_dir=SETTINGS_DIR,
        consumers={"poison_order": "none", "read_ahead": True},
    )
    async with container_for_test(HandlerApp, settings=settings) as container:
        runtime = await resolve(container.runtime)
        store = await resolve(container.event_store)
        orders = await publish(store, "orders", 5)
        (registration,) = await resolve(container.consumers)
        assert isinstance(registration.consumer, TransactionalConsumer)
        assert registration.consumer.poison_order is PoisonOrder.NONE
        assert registration.consumer.read_ahead is True

        async with runtime:
            await wait_until(lambda: container.handler().ids == orders)
