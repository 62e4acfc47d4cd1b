"""The role in the settings reaches the brokers that every factory path builds."""

from datetime import timedelta
from typing import Any

import pytest
from logicblocks.event.persistence.postgres import ConnectionSettings
from logicblocks.event.processing import (
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

    assert broker._error_handling_service._error_handler is handler
    assert broker._restart_backoff == backoff


def test_brokers_built_on_one_cluster_state_share_its_coordination_state() -> None:
    state = InMemoryClusterState()
    brokers = [
        make_event_broker(
            node_id,
            EventBrokerType.Distributed,
            EventBrokerStorageType.InMemory,
            settings=DistributedEventBrokerSettings(role=role),
            cluster_state=state,
        )
        for node_id, role in [("c", BrokerRole.COORDINATOR), ("o", BrokerRole.OBSERVER)]
    ]

    coordinators: list[Any] = [b._event_subscription_coordinator for b in brokers]
    assert all(c._lock_manager is state.lock_manager for c in coordinators)


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
