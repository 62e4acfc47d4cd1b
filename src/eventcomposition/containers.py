"""The composition root: dependency-injector containers that declare a node.

``EventRuntimeContainer`` turns validated settings into a ready ``EventRuntime``:

    container = build_container(MyAppContainer, load_settings("production"))
    runtime = await container.runtime()          # typed: await resolve(container.runtime)
    async with runtime:
        ...
    await shutdown(container)                    # stops the runtime, closes the pool

Applications declare their consumers by subclassing the container and overriding
``consumers`` (a ``providers.List`` of registrations), and tests override any
provider (``container.broker.override(mock)``). This is the only module that imports
dependency-injector and the only one that chooses concrete classes.
"""

import inspect
from collections.abc import AsyncIterator, Sequence
from operator import attrgetter
from typing import Any

import structlog
from dependency_injector import containers, providers
from logicblocks.event.processing import (
    EventBroker,
    ServiceManager,
    SingletonEventBrokerSettings,
)
from logicblocks.event.processing import (
    IsolationMode as LogicblocksIsolationMode,
)
from logicblocks.event.processing.broker import EventBrokerStorageType, EventBrokerType
from logicblocks.event.store import EventStore, PostgresEventStorageAdapter
from logicblocks.event.types import StoredEvent
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from .broker import (
    BrokerRole,
    DistributedEventBrokerSettings,
    InMemoryClusterState,
    make_event_broker,
)
from .database import connection_pool
from .retry import Backoff
from .runtime import (
    EventConsumerSettings,
    EventRuntime,
    Registration,
    error_handler_for,
)
from .settings import (
    EventCompositionSettings,
    PostgresSettings,
    load_settings,
)

logger = structlog.get_logger("eventcomposition.containers")


def broker_settings_from(
    settings: EventCompositionSettings,
) -> DistributedEventBrokerSettings | SingletonEventBrokerSettings:
    broker = settings.broker
    if broker.type == "singleton":
        return SingletonEventBrokerSettings(
            distribution_interval=broker.distribution_interval
        )
    return DistributedEventBrokerSettings(
        role=settings.node.role,
        subscriber_manager_heartbeat_interval=broker.subscriber_manager_heartbeat_interval,
        subscriber_manager_purge_interval=broker.subscriber_manager_purge_interval,
        subscriber_manager_subscriber_max_age=broker.subscriber_manager_subscriber_max_age,
        coordinator_subscriber_max_time_since_last_seen=broker.coordinator_subscriber_max_time_since_last_seen,
        coordinator_distribution_interval=broker.coordinator_distribution_interval,
        coordinator_leadership_max_duration=broker.coordinator_leadership_max_duration,
        coordinator_leadership_attempt_interval=broker.coordinator_leadership_attempt_interval,
        observer_synchronisation_interval=broker.observer_synchronisation_interval,
        restart_backoff=Backoff(
            initial=broker.retry_initial_delay, maximum=broker.retry_max_delay
        ),
    )


def broker_type_from(
    settings: EventCompositionSettings,
) -> type[EventBrokerType]:
    if settings.broker.type == "singleton":
        return EventBrokerType.Singleton
    return EventBrokerType.Distributed


def consumer_settings_from(settings: EventCompositionSettings) -> EventConsumerSettings:
    consumers = settings.consumers
    return EventConsumerSettings(
        error_handler=error_handler_for(consumers.error_policy),
        poll_interval=consumers.poll_interval,
        isolation_mode=LogicblocksIsolationMode[consumers.isolation_mode.upper()],
        stop_timeout=consumers.stop_timeout,
        retry_backoff=Backoff(
            initial=consumers.retry_initial_delay, maximum=consumers.retry_max_delay
        ),
    )


def postgres_location(postgres: PostgresSettings) -> str:
    return f"{postgres.host}:{postgres.port}/{postgres.database}"


async def open_connection_pool(
    postgres: PostgresSettings,
) -> AsyncIterator[AsyncConnectionPool[AsyncConnection[Any]]]:
    async with connection_pool(
        postgres.conninfo(),
        where=postgres_location(postgres),
        min_size=postgres.pool_min_size,
        max_size=postgres.pool_max_size,
        connect_timeout=postgres.connect_timeout,
    ) as pool:
        yield pool


async def runtime_resource(
    node_id: str,
    event_broker: EventBroker[StoredEvent],
    service_manager: ServiceManager,
    default_consumer_settings: EventConsumerSettings,
    registrations: Sequence[Registration],
) -> AsyncIterator[EventRuntime]:
    runtime = EventRuntime(
        node_id, event_broker, service_manager, default_consumer_settings
    )
    # The broker's own role decides (a broker replaced in a test has none).
    if getattr(event_broker, "role", None) is BrokerRole.COORDINATOR:
        if registrations:
            logger.info(
                "runtime.consumers-not-registered",
                node_id=node_id,
                role=str(BrokerRole.COORDINATOR),
                declared=len(registrations),
                reason="a coordinator-only node processes nothing",
            )
    else:
        for registration in registrations:
            await runtime.register(registration)
    try:
        yield runtime
    finally:
        await runtime.stop()


class EventRuntimeContainer(containers.DeclarativeContainer):
    """Declares one node: its settings, storage, broker, consumers and runtime.

    A subclass may redefine any provider (``consumers`` above all): the inherited
    providers that depend on it then use the redefinition.
    """

    settings = providers.Singleton(load_settings)

    node_id = providers.Callable(attrgetter("node.id"), settings)
    role = providers.Callable(attrgetter("node.role"), settings)
    storage_type = providers.Callable(attrgetter("storage.type"), settings)
    postgres_settings = providers.Callable(attrgetter("storage.postgres"), settings)

    # Memory storage: one process's events and coordination state. Nodes in one
    # process cooperate when their containers share this object.
    cluster_state = providers.Singleton(InMemoryClusterState)

    # PostgreSQL storage: resolved only when selected (nothing here is an eager
    # resource, so choosing memory opens no connection).
    connection_settings = providers.Callable(
        PostgresSettings.connection_settings, postgres_settings
    )
    connection_pool = providers.Resource(open_connection_pool, postgres_settings)

    event_storage_adapter = providers.Selector(
        storage_type,
        memory=cluster_state.provided.adapter,
        postgres=providers.Singleton(
            PostgresEventStorageAdapter, connection_source=connection_pool
        ),
    )
    event_store = providers.Singleton(EventStore, adapter=event_storage_adapter)

    broker_type = providers.Callable(broker_type_from, settings)
    broker_settings = providers.Callable(broker_settings_from, settings)
    broker = providers.Selector(
        storage_type,
        memory=providers.Singleton(
            make_event_broker,
            node_id,
            broker_type,
            EventBrokerStorageType.InMemory,
            settings=broker_settings,
            cluster_state=cluster_state,
        ),
        postgres=providers.Singleton(
            make_event_broker,
            node_id,
            broker_type,
            EventBrokerStorageType.Postgres,
            settings=broker_settings,
            connection_settings=connection_settings,
            connection_pool=connection_pool,
            adapter=event_storage_adapter,
        ),
    )

    service_manager = providers.Singleton(ServiceManager)
    consumer_settings = providers.Callable(consumer_settings_from, settings)

    # What the runtime registers: redefine it in a subclass, or override it.
    consumers = providers.List()
    migrations = providers.List()  # the application's, after ours: schema.Migration

    runtime = providers.Resource(
        runtime_resource,
        node_id=node_id,
        event_broker=broker,
        service_manager=service_manager,
        default_consumer_settings=consumer_settings,
        registrations=consumers,
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _use_redefinitions(cls)


def _use_redefinitions(container: type[containers.DeclarativeContainer]) -> None:
    """Make the inherited providers of ``container`` use the ones it redefines.

    dependency-injector keeps inherited providers pointing at the base's originals,
    so a subclass that redefines ``consumers`` would not change what ``runtime``
    registers. Here every provider of the subclass is copied in one pass (so copies
    refer to copies), and the copy of each redefined base provider is overridden by
    the subclass's: overrides made later on an instance still reach the runtime.
    """
    redefined = [
        name
        for name in container.cls_providers
        if name in container.inherited_providers
    ]
    originals: dict[str, providers.Provider[Any]] = {
        **{
            f"inherited {name}": container.inherited_providers[name]
            for name in redefined
        },
        **container.providers,
    }
    copies = providers.deepcopy(originals)
    for name in redefined:
        copies[f"inherited {name}"].override(copies[name])
    for name in container.providers:
        setattr(container, name, copies[name])


async def resolve[T](provider: providers.Provider[T]) -> T:
    """The provider's object, awaited when it depends on an async resource.

    dependency-injector hands out an awaitable from providers that depend on an
    async resource (the PostgreSQL pool) and a plain object from the others, while
    its stubs always say the plain object. This works for both.
    """
    provided: Any = provider()
    if inspect.isawaitable(provided):
        provided = await provided
    resolved: T = provided
    return resolved


async def shutdown(container: containers.Container) -> None:
    """Release every resource the container opened: stop the runtime, close the pool.

    dependency-injector returns an awaitable only when an async resource was
    opened; this awaits it then, so it suits every container.
    """
    # The runtime first: dependency-injector orders shutdown by direct dependencies
    # only, and the runtime reaches the pool through the broker, so it would
    # otherwise stop while the pool closes under its broker.
    runtime = getattr(container, "runtime", None)
    if isinstance(runtime, providers.Resource) and runtime.initialized:
        stopping = runtime.shutdown()
        if inspect.isawaitable(stopping):
            await stopping
    pending = container.shutdown_resources()
    if inspect.isawaitable(pending):
        await pending


def build_container[C: EventRuntimeContainer](
    container_class: type[C],
    settings: EventCompositionSettings | None = None,
) -> C:
    """A container of ``container_class`` over ``settings`` (or loaded ones)."""
    container = container_class()
    container.settings.override(
        providers.Object(settings if settings is not None else load_settings())
    )
    return container
