"""The role in the settings reaches the brokers that every factory path builds."""

from datetime import timedelta
from typing import Any

import pytest
from logicblocks.event.persistence.postgres import ConnectionSettings
from logicblocks.event.processing import (
    LockManager,
    RaiseErrorHandler,
    SingletonEventBroker,
)
from logicblocks.event.processing.broker import (
    DistributedEventBrokerSettings as LogicblocksDistributedEventBrokerSettings,
)
from logicblocks.event.processing.broker import (
    EventBrokerStorageType,
    EventBrokerType,
    SingletonEventBrokerSettings,
)
from logicblocks.event.processing.broker.strategies.distributed import (
    EventSubscriberStateStore,
    EventSubscriptionCoordinator,
    EventSubscriptionStateStore,
)
from logicblocks.event.store import InMemoryEventStorageAdapter
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from eventcomposition import (
    Backoff,
    BrokerRole,
    DistributedEventBroker,
    DistributedEventBrokerSettings,
    InMemoryClusterState,
    make_event_broker,
)
from eventcomposition.broker import (
    CheckedPostgresLockManager,
    InMemoryDistributedEventBrokerBuilder,
    LeaderCheckingCoordinator,
    leader_checking_coordinator,
)


def closed_pool() -> AsyncConnectionPool[AsyncConnection]:
    # Never opened: building a broker must not connect.
    return AsyncConnectionPool("host=127.0.0.1 port=1 dbname=none", open=False)


CONNECTION = ConnectionSettings(
    host="127.0.0.1", port=1, dbname="none", user="none", password="not-used"
)


def test_settings_default_to_full_and_keep_logicblocks_defaults() -> None:
    settings = DistributedEventBrokerSettings()

    assert settings.role is BrokerRole.FULL
    assert isinstance(settings, LogicblocksDistributedEventBrokerSettings)
    assert settings.coordinator_distribution_interval == timedelta(seconds=20)
    assert settings.observer_synchronisation_interval == timedelta(seconds=20)


@pytest.mark.parametrize("role", list(BrokerRole))
def test_in_memory_factory_passes_the_role(role: BrokerRole) -> None:
    broker = make_event_broker(
        "node-a",
        EventBrokerType.Distributed,
        EventBrokerStorageType.InMemory,
        settings=DistributedEventBrokerSettings(role=role),
        adapter=InMemoryEventStorageAdapter(),
    )

    assert isinstance(broker, DistributedEventBroker)
    assert broker.role is role


@pytest.mark.parametrize("role", list(BrokerRole))
def test_postgres_factory_passes_the_role(role: BrokerRole) -> None:
    broker = make_event_broker(
        "node-a",
        EventBrokerType.Distributed,
        EventBrokerStorageType.Postgres,
        settings=DistributedEventBrokerSettings(role=role),
        connection_settings=CONNECTION,
        connection_pool=closed_pool(),
    )

    assert isinstance(broker, DistributedEventBroker)
    assert broker.role is role


def test_logicblocks_settings_make_a_full_broker() -> None:
    broker = make_event_broker(
        "node-a",
        EventBrokerType.Distributed,
        EventBrokerStorageType.InMemory,
        settings=LogicblocksDistributedEventBrokerSettings(),
        adapter=InMemoryEventStorageAdapter(),
    )

    assert broker.role is BrokerRole.FULL


def test_factory_passes_the_error_handler_and_backoff() -> None:
    handler = RaiseErrorHandler()
    backoff = Backoff(initial=timedelta(seconds=2), maximum=timedelta(seconds=4))

    broker = make_event_broker(
        "node-a",
        EventBrokerType.Distributed,
        EventBrokerStorageType.InMemory,
        settings=DistributedEventBrokerSettings(restart_backoff=backoff),
        adapter=InMemoryEventStorageAdapter(),
        error_handler=handler,
    )

    assert broker.error_handler is handler
    assert broker.restart_backoff == backoff


class RecordingCoordinatorFactory:
    """A coordinator factory that records what each broker hands it."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.made: list[EventSubscriptionCoordinator] = []

    def __call__(
        self,
        *,
        node_id: str,
        lock_manager: LockManager,
        subscriber_state_store: EventSubscriberStateStore,
        subscription_state_store: EventSubscriptionStateStore,
        settings: LogicblocksDistributedEventBrokerSettings,
    ) -> EventSubscriptionCoordinator:
        self.calls.append(
            {
                "node_id": node_id,
                "lock_manager": lock_manager,
                "subscriber_state_store": subscriber_state_store,
                "subscription_state_store": subscription_state_store,
                "settings": settings,
            }
        )
        coordinator = leader_checking_coordinator(
            node_id=node_id,
            lock_manager=lock_manager,
            subscriber_state_store=subscriber_state_store,
            subscription_state_store=subscription_state_store,
            settings=settings,
        )
        self.made.append(coordinator)
        return coordinator


def test_brokers_built_on_one_cluster_state_share_its_coordination_state() -> None:
    state = InMemoryClusterState()
    factory = RecordingCoordinatorFactory()
    for node_id, role in [("c", BrokerRole.COORDINATOR), ("o", BrokerRole.OBSERVER)]:
        make_event_broker(
            node_id,
            EventBrokerType.Distributed,
            EventBrokerStorageType.InMemory,
            settings=DistributedEventBrokerSettings(role=role),
            cluster_state=state,
            coordinator=factory,
        )

    assert [call["node_id"] for call in factory.calls] == ["c", "o"]
    assert all(call["lock_manager"] is state.lock_manager for call in factory.calls)


@pytest.mark.parametrize("storage", ["memory", "postgres"])
def test_the_coordinator_factory_makes_the_broker_coordinator(storage: str) -> None:
    factory = RecordingCoordinatorFactory()
    settings = DistributedEventBrokerSettings(role=BrokerRole.COORDINATOR)
    if storage == "memory":
        broker = make_event_broker(
            "node-a",
            EventBrokerType.Distributed,
            EventBrokerStorageType.InMemory,
            settings=settings,
            adapter=InMemoryEventStorageAdapter(),
            coordinator=factory,
        )
    else:
        broker = make_event_broker(
            "node-a",
            EventBrokerType.Distributed,
            EventBrokerStorageType.Postgres,
            settings=settings,
            connection_settings=CONNECTION,
            connection_pool=closed_pool(),
            coordinator=factory,
        )

    [call] = factory.calls
    assert broker.coordinator is factory.made[0]
    assert call["node_id"] == "node-a"
    assert call["settings"] is settings
    assert isinstance(call["subscriber_state_store"], EventSubscriberStateStore)
    assert isinstance(call["subscription_state_store"], EventSubscriptionStateStore)
    if storage == "postgres":
        assert isinstance(call["lock_manager"], CheckedPostgresLockManager)


def test_a_builder_takes_the_coordinator_factory() -> None:
    state = InMemoryClusterState()
    factory = RecordingCoordinatorFactory()

    broker = (
        InMemoryDistributedEventBrokerBuilder("node-a", coordinator=factory)
        .prepare(state)
        .build(DistributedEventBrokerSettings())
    )

    assert broker.coordinator is factory.made[0]
    assert factory.calls[0]["lock_manager"] is state.lock_manager


def test_the_default_coordinator_checks_its_leadership() -> None:
    broker = make_event_broker(
        "node-a",
        EventBrokerType.Distributed,
        EventBrokerStorageType.InMemory,
        settings=DistributedEventBrokerSettings(),
        adapter=InMemoryEventStorageAdapter(),
    )

    assert isinstance(broker.coordinator, LeaderCheckingCoordinator)


def test_a_singleton_broker_has_no_coordinator_to_make() -> None:
    factory = RecordingCoordinatorFactory()

    broker = make_event_broker(
        "node-a",
        EventBrokerType.Singleton,
        EventBrokerStorageType.InMemory,
        settings=SingletonEventBrokerSettings(),
        adapter=InMemoryEventStorageAdapter(),
        coordinator=factory,
    )

    assert isinstance(broker, SingletonEventBroker)
    assert factory.calls == []


def test_in_memory_factory_needs_storage() -> None:
    with pytest.raises(TypeError, match=r"adapter=\.\.\. or cluster_state="):
        make_event_broker(
            "node-a",
            EventBrokerType.Distributed,
            EventBrokerStorageType.InMemory,
            settings=DistributedEventBrokerSettings(),
        )


def test_in_memory_factory_rejects_a_second_adapter_beside_cluster_state() -> None:
    with pytest.raises(ValueError, match="different event storage"):
        make_event_broker(
            "node-a",
            EventBrokerType.Distributed,
            EventBrokerStorageType.InMemory,
            settings=DistributedEventBrokerSettings(),
            adapter=InMemoryEventStorageAdapter(),
            cluster_state=InMemoryClusterState(),
        )


def test_singleton_brokers_stay_logicblocks_own() -> None:
    broker = make_event_broker(
        "node-a",
        EventBrokerType.Singleton,
        EventBrokerStorageType.InMemory,
        settings=SingletonEventBrokerSettings(),
        adapter=InMemoryEventStorageAdapter(),
    )

    assert isinstance(broker, SingletonEventBroker)
