"""Builders and the factory that make role-aware distributed brokers.

They reuse logicblocks' builders for the parts (subscriber manager, coordinator,
observer) and put them together in this package's role-aware broker.
"""

from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict, Unpack, overload

from logicblocks.event.persistence.postgres import ConnectionSettings
from logicblocks.event.processing import ErrorHandler, RetryErrorHandler
from logicblocks.event.processing.broker import (
    DistributedEventBroker as LogicblocksDistributedEventBroker,
)
from logicblocks.event.processing.broker import (
    DistributedEventBrokerSettings as LogicblocksDistributedEventBrokerSettings,
)
from logicblocks.event.processing.broker import (
    DistributedEventBrokerTypeType,
    EventBroker,
    EventBrokerStorageType,
    EventBrokerType,
    InMemoryEventBrokerStorageTypeType,
    PostgresEventBrokerStorageTypeType,
    SingletonEventBrokerSettings,
    SingletonEventBrokerTypeType,
)
from logicblocks.event.processing.broker import (
    make_event_broker as make_logicblocks_event_broker,
)
from logicblocks.event.processing.broker.strategies.distributed.builder import (
    DistributedEventBrokerBuilder,
    DistributedEventBrokerDependencies,
)
from logicblocks.event.processing.broker.strategies.distributed.factories import (
    PostgresDistributedEventBrokerBuilder as LogicblocksPostgresBuilder,
)
from logicblocks.event.store import EventStorageAdapter, EventStoreEventSourceFactory
from logicblocks.event.types import StoredEvent
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ..retry import Backoff
from .broker import DistributedEventBroker
from .leadership import CheckedPostgresLockManager, LeaderCheckingCoordinator
from .memory import InMemoryClusterState
from .role import BrokerRole


@dataclass(frozen=True)
class DistributedEventBrokerSettings(LogicblocksDistributedEventBrokerSettings):
    """logicblocks' distributed broker settings plus the node's role.

    ``restart_backoff`` spaces the broker's restarts after a failure (logicblocks
    retries at once).
    """

    role: BrokerRole = BrokerRole.FULL
    restart_backoff: Backoff = field(default_factory=Backoff)


def _role_aware(
    builder: DistributedEventBrokerBuilder[Any],
    broker: EventBroker[StoredEvent],
    settings: LogicblocksDistributedEventBrokerSettings,
    error_handler: ErrorHandler[None],
) -> DistributedEventBroker[StoredEvent]:
    # logicblocks' builder wires the parts; this takes the subscriber manager and
    # the observer over into the role-aware broker (the attribute names are pinned
    # by a test) with a coordinator that checks its leadership.
    if not isinstance(broker, LogicblocksDistributedEventBroker):
        raise TypeError(f"expected a distributed broker, got {type(broker).__name__}")
    role, backoff = BrokerRole.FULL, None
    if isinstance(settings, DistributedEventBrokerSettings):
        role, backoff = settings.role, settings.restart_backoff
    coordinator = LeaderCheckingCoordinator(
        node_id=builder.node_id,
        lock_manager=builder.lock_manager,
        subscriber_state_store=builder.event_subscriber_state_store,
        subscription_state_store=builder.event_subscription_state_store,
        subscriber_max_time_since_last_seen=settings.coordinator_subscriber_max_time_since_last_seen,
        distribution_interval=settings.coordinator_distribution_interval,
        leadership_max_duration=settings.coordinator_leadership_max_duration,
        leadership_attempt_interval=settings.coordinator_leadership_attempt_interval,
    )
    return DistributedEventBroker[StoredEvent](
        event_subscriber_manager=broker._event_subscriber_manager,
        event_subscription_coordinator=coordinator,
        event_subscription_observer=broker._event_subscription_observer,
        role=role,
        error_handler=error_handler,
        restart_backoff=backoff,
    )


class InMemoryDistributedEventBrokerBuilder(
    DistributedEventBrokerBuilder[(InMemoryClusterState,)]
):
    """Builds an in-memory broker over a (possibly shared) ``InMemoryClusterState``."""

    def dependencies(
        self, state: InMemoryClusterState
    ) -> DistributedEventBrokerDependencies:
        return DistributedEventBrokerDependencies(
            lock_manager=state.lock_manager,
            event_source_factory=EventStoreEventSourceFactory(adapter=state.adapter),
            event_subscriber_state_store=state.subscriber_state_store(self.node_id),
            event_subscription_state_store=state.subscription_state_store(self.node_id),
        )

    def build(
        self,
        settings: LogicblocksDistributedEventBrokerSettings,
        error_handler: ErrorHandler[None] | None = None,
    ) -> DistributedEventBroker[StoredEvent]:
        handler = error_handler or RetryErrorHandler()
        return _role_aware(self, super().build(settings, handler), settings, handler)


class PostgresDistributedEventBrokerBuilder(LogicblocksPostgresBuilder):
    """Builds a broker that coordinates through PostgreSQL."""

    def dependencies(
        self,
        connection_settings: ConnectionSettings,
        connection_pool: AsyncConnectionPool[AsyncConnection],
        adapter: EventStorageAdapter | None = None,
    ) -> DistributedEventBrokerDependencies:
        dependencies = super().dependencies(
            connection_settings, connection_pool, adapter
        )
        dependencies["lock_manager"] = CheckedPostgresLockManager(
            connection_settings=connection_settings
        )
        return dependencies

    def build(
        self,
        settings: LogicblocksDistributedEventBrokerSettings,
        error_handler: ErrorHandler[None] | None = None,
    ) -> DistributedEventBroker[StoredEvent]:
        handler = error_handler or RetryErrorHandler()
        return _role_aware(self, super().build(settings, handler), settings, handler)


class InMemoryDistributedBrokerParams(TypedDict):
    settings: LogicblocksDistributedEventBrokerSettings
    adapter: NotRequired[EventStorageAdapter]
    cluster_state: NotRequired[InMemoryClusterState]
    error_handler: NotRequired[ErrorHandler[None]]


class PostgresDistributedBrokerParams(TypedDict):
    settings: LogicblocksDistributedEventBrokerSettings
    connection_settings: ConnectionSettings
    connection_pool: AsyncConnectionPool[AsyncConnection]
    adapter: NotRequired[EventStorageAdapter | None]
    error_handler: NotRequired[ErrorHandler[None]]


class SingletonBrokerParams(TypedDict):
    settings: SingletonEventBrokerSettings
    adapter: NotRequired[EventStorageAdapter | None]
    cluster_state: NotRequired[InMemoryClusterState]
    connection_settings: NotRequired[ConnectionSettings]
    connection_pool: NotRequired[AsyncConnectionPool[AsyncConnection]]
    error_handler: NotRequired[ErrorHandler[None]]


class _AnyBrokerParams(TypedDict, total=False):
    settings: LogicblocksDistributedEventBrokerSettings | SingletonEventBrokerSettings
    adapter: EventStorageAdapter | None
    cluster_state: InMemoryClusterState
    connection_settings: ConnectionSettings
    connection_pool: AsyncConnectionPool[AsyncConnection]
    error_handler: ErrorHandler[None]


@overload
def make_event_broker(
    node_id: str,
    broker_type: DistributedEventBrokerTypeType,
    storage_type: InMemoryEventBrokerStorageTypeType,
    **kwargs: Unpack[InMemoryDistributedBrokerParams],
) -> DistributedEventBroker[StoredEvent]: ...


@overload
def make_event_broker(
    node_id: str,
    broker_type: DistributedEventBrokerTypeType,
    storage_type: PostgresEventBrokerStorageTypeType,
    **kwargs: Unpack[PostgresDistributedBrokerParams],
) -> DistributedEventBroker[StoredEvent]: ...


@overload
def make_event_broker(
    node_id: str,
    broker_type: SingletonEventBrokerTypeType,
    storage_type: InMemoryEventBrokerStorageTypeType
    | PostgresEventBrokerStorageTypeType,
    **kwargs: Unpack[SingletonBrokerParams],
) -> EventBroker[StoredEvent]: ...


def make_event_broker(
    node_id: str,
    broker_type: DistributedEventBrokerTypeType | SingletonEventBrokerTypeType,
    storage_type: InMemoryEventBrokerStorageTypeType
    | PostgresEventBrokerStorageTypeType,
    **kwargs: Unpack[_AnyBrokerParams],
) -> EventBroker[StoredEvent]:
    """Make a broker as logicblocks' ``make_event_broker`` does, role-aware.

    Distributed brokers take their role from ``settings.role`` (this package's
    ``DistributedEventBrokerSettings``; logicblocks' settings mean ``FULL``).
    In-memory distributed brokers that should cooperate in one process pass the same
    ``cluster_state``; without one, the broker gets private state over ``adapter``.
    Singleton brokers are logicblocks' own, unchanged (``cluster_state`` only lends
    them its adapter).
    """
    if broker_type is EventBrokerType.Singleton:
        singleton_kwargs = dict(kwargs)
        state = singleton_kwargs.pop("cluster_state", None)
        if state is not None and storage_type is EventBrokerStorageType.InMemory:
            singleton_kwargs["adapter"] = _in_memory_state(kwargs).adapter
        singleton: EventBroker[StoredEvent] = make_logicblocks_event_broker(  # type: ignore[call-overload]
            node_id, broker_type, storage_type, **singleton_kwargs
        )
        return singleton
    settings = kwargs.get("settings")
    if not isinstance(settings, LogicblocksDistributedEventBrokerSettings):
        raise TypeError(
            "a distributed broker needs settings=DistributedEventBrokerSettings(...), "
            f"got {type(settings).__name__}"
        )
    error_handler = kwargs.get("error_handler")
    if storage_type is EventBrokerStorageType.InMemory:
        return (
            InMemoryDistributedEventBrokerBuilder(node_id)
            .prepare(_in_memory_state(kwargs))
            .build(settings, error_handler)
        )
    if storage_type is EventBrokerStorageType.Postgres:
        connection_settings = kwargs.get("connection_settings")
        connection_pool = kwargs.get("connection_pool")
        if connection_settings is None or connection_pool is None:
            raise TypeError(
                "a PostgreSQL broker needs connection_settings= (for its leadership "
                "lock) and connection_pool= (for its state stores)"
            )
        return (
            PostgresDistributedEventBrokerBuilder(node_id)
            .prepare(connection_settings, connection_pool, kwargs.get("adapter"))
            .build(settings, error_handler)
        )
    raise ValueError(f"unknown broker storage type: {storage_type!r}")


def _in_memory_state(kwargs: _AnyBrokerParams) -> InMemoryClusterState:
    state = kwargs.get("cluster_state")
    adapter = kwargs.get("adapter")
    if state is None:
        if adapter is None:
            raise TypeError(
                "an in-memory broker needs the storage its events live in: pass "
                "adapter=... or cluster_state=InMemoryClusterState(...)"
            )
        return InMemoryClusterState(adapter)
    if adapter is not None and adapter is not state.adapter:
        raise ValueError(
            "adapter= and cluster_state= name different event storage: pass only "
            "cluster_state=, whose adapter every node shares"
        )
    return state
