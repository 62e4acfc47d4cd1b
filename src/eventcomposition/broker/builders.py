"""Builders and the factory that make role-aware distributed brokers.

Each builder prepares the cluster's shared parts (lock manager, event source
factory, subscriber and subscription state stores) in ``dependencies`` and, in
``build``, makes the broker's own parts from logicblocks' public constructors: the
subscriber manager, the coordinator (from the injected ``CoordinatorFactory``) and
the observer, put together in this package's role-aware broker.

The event source factory reads through a gap-safe adapter
(``consumers.visibility.gap_safe``): the sources logicblocks' subscription
consumers read stop at the visibility horizon, so none skips an event committed
after a higher sequence number.
"""

from dataclasses import dataclass, field
from typing import NotRequired, TypedDict, Unpack, overload

from logicblocks.event.persistence.postgres import ConnectionSettings
from logicblocks.event.processing import ErrorHandler, RetryErrorHandler
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
from logicblocks.event.processing.broker.strategies.distributed import (
    DefaultEventSubscriberManager,
    DefaultEventSubscriptionObserver,
)
from logicblocks.event.processing.broker.strategies.distributed.builder import (
    DistributedEventBrokerBuilder,
    DistributedEventBrokerDependencies,
)
from logicblocks.event.processing.broker.subscribers import (
    InMemoryEventSubscriberStore,
)
from logicblocks.event.store import (
    EventStorageAdapter,
    PostgresEventStorageAdapter,
)
from logicblocks.event.types import StoredEvent
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from ..consumers.visibility import gap_safe
from ..retry import Backoff
from .broker import DistributedEventBroker
from .coordination import CoordinatorFactory, leader_checking_coordinator
from .leadership import CheckedPostgresLockManager
from .memory import InMemoryClusterState
from .role import BrokerRole
from .stores import (
    AutocommitSubscriberStateStore,
    AutocommitSubscriptionStateStore,
    event_source_factory,
)


@dataclass(frozen=True)
class DistributedEventBrokerSettings(LogicblocksDistributedEventBrokerSettings):
    """logicblocks' distributed broker settings plus the node's role.

    ``restart_backoff`` spaces the broker's restarts after consecutive failures
    (logicblocks always restarts at once).
    """

    role: BrokerRole = BrokerRole.FULL
    restart_backoff: Backoff = field(default_factory=Backoff)


class _RoleAwareBuilder[**P](DistributedEventBrokerBuilder[P]):
    """Shared by the builders: ``build`` from prepared dependencies, by role."""

    def __init__(
        self,
        node_id: str,
        coordinator: CoordinatorFactory = leader_checking_coordinator,
    ) -> None:
        super().__init__(node_id)
        self.coordinator_factory = coordinator

    def build(
        self,
        settings: LogicblocksDistributedEventBrokerSettings,
        error_handler: ErrorHandler[None] | None = None,
    ) -> DistributedEventBroker[StoredEvent]:
        """Make the broker's parts and put them together; call ``prepare`` first.

        The role and restart backoff come from this package's settings;
        logicblocks' settings make a ``FULL`` broker with the default backoff.
        """
        role, backoff = BrokerRole.FULL, None
        if isinstance(settings, DistributedEventBrokerSettings):
            role, backoff = settings.role, settings.restart_backoff
        # The subscriber manager and the observer share the node's subscribers.
        subscribers: InMemoryEventSubscriberStore[StoredEvent] = (
            InMemoryEventSubscriberStore()
        )
        subscriber_manager = DefaultEventSubscriberManager[StoredEvent](
            node_id=self.node_id,
            subscriber_store=subscribers,
            subscriber_state_store=self.event_subscriber_state_store,
            heartbeat_interval=settings.subscriber_manager_heartbeat_interval,
            purge_interval=settings.subscriber_manager_purge_interval,
            subscriber_max_age=settings.subscriber_manager_subscriber_max_age,
        )
        coordinator = self.coordinator_factory(
            node_id=self.node_id,
            lock_manager=self.lock_manager,
            subscriber_state_store=self.event_subscriber_state_store,
            subscription_state_store=self.event_subscription_state_store,
            settings=settings,
        )
        observer = DefaultEventSubscriptionObserver[StoredEvent](
            node_id=self.node_id,
            subscriber_store=subscribers,
            subscription_state_store=self.event_subscription_state_store,
            event_source_factory=self.event_source_factory,
            synchronisation_interval=settings.observer_synchronisation_interval,
        )
        return DistributedEventBroker[StoredEvent](
            event_subscriber_manager=subscriber_manager,
            event_subscription_coordinator=coordinator,
            event_subscription_observer=observer,
            role=role,
            error_handler=error_handler or RetryErrorHandler(),
            restart_backoff=backoff,
        )


class InMemoryDistributedEventBrokerBuilder(_RoleAwareBuilder[(InMemoryClusterState,)]):
    """Builds an in-memory broker over a (possibly shared) ``InMemoryClusterState``."""

    def dependencies(
        self, state: InMemoryClusterState
    ) -> DistributedEventBrokerDependencies:
        return DistributedEventBrokerDependencies(
            lock_manager=state.lock_manager,
            event_source_factory=event_source_factory(gap_safe(state.adapter)),
            event_subscriber_state_store=state.subscriber_state_store(self.node_id),
            event_subscription_state_store=state.subscription_state_store(self.node_id),
        )


class PostgresDistributedEventBrokerBuilder(
    _RoleAwareBuilder[
        (
            ConnectionSettings,
            AsyncConnectionPool[AsyncConnection],
            EventStorageAdapter | None,
        )
    ]
):
    """Builds a broker that coordinates through PostgreSQL.

    The leadership lock takes its own connection (``connection_settings``), named
    after the node; the state stores and, without an ``adapter``, the events use
    ``connection_pool`` (the state stores in autocommit: see ``broker.stores``).
    """

    def dependencies(
        self,
        connection_settings: ConnectionSettings,
        connection_pool: AsyncConnectionPool[AsyncConnection],
        adapter: EventStorageAdapter | None = None,
    ) -> DistributedEventBrokerDependencies:
        events = adapter or PostgresEventStorageAdapter(
            connection_source=connection_pool
        )
        return DistributedEventBrokerDependencies(
            lock_manager=CheckedPostgresLockManager(
                connection_settings, node_id=self.node_id
            ),
            event_source_factory=event_source_factory(gap_safe(events)),
            event_subscriber_state_store=AutocommitSubscriberStateStore(
                node_id=self.node_id, connection_pool=connection_pool
            ),
            event_subscription_state_store=AutocommitSubscriptionStateStore(
                node_id=self.node_id, connection_pool=connection_pool
            ),
        )


class InMemoryDistributedBrokerParams(TypedDict):
    settings: LogicblocksDistributedEventBrokerSettings
    adapter: NotRequired[EventStorageAdapter]
    cluster_state: NotRequired[InMemoryClusterState]
    error_handler: NotRequired[ErrorHandler[None]]
    coordinator: NotRequired[CoordinatorFactory]


class PostgresDistributedBrokerParams(TypedDict):
    settings: LogicblocksDistributedEventBrokerSettings
    connection_settings: ConnectionSettings
    connection_pool: AsyncConnectionPool[AsyncConnection]
    adapter: NotRequired[EventStorageAdapter | None]
    error_handler: NotRequired[ErrorHandler[None]]
    coordinator: NotRequired[CoordinatorFactory]


class SingletonBrokerParams(TypedDict):
    settings: SingletonEventBrokerSettings
    adapter: NotRequired[EventStorageAdapter | None]
    cluster_state: NotRequired[InMemoryClusterState]
    connection_settings: NotRequired[ConnectionSettings]
    connection_pool: NotRequired[AsyncConnectionPool[AsyncConnection]]
    error_handler: NotRequired[ErrorHandler[None]]
    # Accepted so one call can serve both broker types; a singleton has no coordinator.
    coordinator: NotRequired[CoordinatorFactory]


class _AnyBrokerParams(TypedDict, total=False):
    settings: LogicblocksDistributedEventBrokerSettings | SingletonEventBrokerSettings
    adapter: EventStorageAdapter | None
    cluster_state: InMemoryClusterState
    connection_settings: ConnectionSettings
    connection_pool: AsyncConnectionPool[AsyncConnection]
    error_handler: ErrorHandler[None]
    coordinator: CoordinatorFactory


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
    ``coordinator`` makes each distributed broker's coordinator (see
    ``CoordinatorFactory``); by default logicblocks' coordinator, checking its
    leadership. Singleton brokers are logicblocks' own, unchanged: they have no
    coordinator, and ``cluster_state`` only lends them its adapter.
    """
    if broker_type is EventBrokerType.Singleton:
        singleton_kwargs = dict(kwargs)
        state = singleton_kwargs.pop("cluster_state", None)
        # A singleton broker allocates without a coordinator.
        singleton_kwargs.pop("coordinator", None)
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
    coordinator = kwargs.get("coordinator", leader_checking_coordinator)
    if storage_type is EventBrokerStorageType.InMemory:
        return (
            InMemoryDistributedEventBrokerBuilder(node_id, coordinator)
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
            PostgresDistributedEventBrokerBuilder(node_id, coordinator)
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
