"""``EventRuntimeContainer``: the providers that declare one node."""

from collections.abc import AsyncIterator
from operator import attrgetter
from typing import Any

from dependency_injector import containers, providers
from logicblocks.event.processing import ServiceManager
from logicblocks.event.processing.broker import EventBrokerStorageType
from logicblocks.event.store import EventStore, PostgresEventStorageAdapter

from ..broker import InMemoryClusterState, make_event_broker
from ..consumers import (
    ClaimReleaseCheck,
    InMemoryCheckpointStore,
    PostgresCheckpointStore,
    checkpoint_reader,
    make_transactional_consumer,
)
from ..lag import (
    InMemoryHeadReader,
    LagReader,
    PostgresHeadReader,
    checkpoints_of,
    held_sources_of,
)
from ..metrics import NodeMetrics, PrometheusNodeMetrics
from ..node import EventNode
from ..projections import make_versioned_consumer
from ..runtime import EventRuntime
from ..services import NotifyListener
from ..services.health import PostgresCheck
from ..services.http import NodeHttpServer
from ..settings import PostgresSettings, load_settings
from .mapping import (
    broker_settings_from,
    broker_type_from,
    consumer_settings_from,
    coordinator_from,
    node_services,
    postgres_database,
    switch,
    wakes_by_notification,
)
from .redefinitions import use_redefinitions


async def new_node(**parts: Any) -> EventNode:
    """An ``EventNode`` (async, so that ``await container.node()`` always works)."""
    return EventNode(**parts)


async def node_runtime(node: EventNode) -> AsyncIterator[EventRuntime]:
    """The node's runtime, registered but not started (``EventNode.prepared``)."""
    async with node.prepared() as runtime:
        yield runtime


class EventRuntimeContainer(containers.DeclarativeContainer):
    """Declares one node: its settings, storage, broker, consumers, services and node.

    A subclass may redefine any provider (``consumers`` and ``services`` above all):
    the inherited providers that depend on it then use the redefinition.
    """

    settings = providers.Singleton(load_settings)

    node_id = providers.Callable(attrgetter("node.id"), settings)
    role = providers.Callable(attrgetter("node.role"), settings)
    storage_type = providers.Callable(attrgetter("storage.type"), settings)
    postgres_settings = providers.Callable(attrgetter("storage.postgres"), settings)

    # Memory storage: one process's events and coordination state. Nodes in one
    # process cooperate when their containers share this object.
    cluster_state = providers.Singleton(InMemoryClusterState)

    # PostgreSQL storage: a pool created closed, which the node opens first and
    # closes last. Nothing connects while the container is being resolved.
    connection_settings = providers.Callable(
        PostgresSettings.connection_settings, postgres_settings
    )
    database = providers.Selector(
        storage_type,
        memory=providers.Object(None),
        postgres=providers.Singleton(postgres_database, postgres_settings),
    )
    connection_pool = providers.Callable(attrgetter("pool"), database)

    event_storage_adapter = providers.Selector(
        storage_type,
        memory=cluster_state.provided.adapter,
        postgres=providers.Singleton(
            PostgresEventStorageAdapter, connection_source=connection_pool
        ),
    )
    event_store = providers.Singleton(EventStore, adapter=event_storage_adapter)

    # Checkpoints, claims and dead letters of transactional consumers. Nodes that
    # share memory in one process share this too (override it with one object).
    checkpoint_store = providers.Selector(
        storage_type,
        memory=providers.Singleton(InMemoryCheckpointStore),
        postgres=providers.Singleton(PostgresCheckpointStore, connection_pool),
    )

    # What the node records for its metrics (nothing unless the HTTP server runs).
    metrics = providers.Selector(
        providers.Callable(switch, settings.provided.http.enabled),
        on=providers.Singleton(PrometheusNodeMetrics),
        off=providers.Singleton(NodeMetrics),
    )

    # How the leading coordinator allocates sources: a CoordinatorFactory
    # (eventcomposition.broker), balanced or fill as broker.allocation says.
    coordinator = providers.Callable(
        coordinator_from,
        settings,
        release_check=providers.Singleton(ClaimReleaseCheck, checkpoint_store),
        metrics=metrics,
    )

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
            coordinator=coordinator,
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
            coordinator=coordinator,
        ),
    )

    service_manager = providers.Singleton(ServiceManager)
    consumer_settings = providers.Callable(consumer_settings_from, settings)

    # A transactional consumer with this node's settings; an application
    # declares one with its own group, requests and processor (an EventHandler
    # or a BatchProcessor):
    #   providers.Factory(EventRuntimeContainer.transactional_consumer,
    #       subscriber_group="totals", subscription_requests=[...], processor=p)
    transactional_consumer = providers.Factory(
        make_transactional_consumer,
        event_store=event_store,
        checkpoint_store=checkpoint_store,
        node_id=node_id,
        batch_size=settings.provided.consumers.batch_size,
        catch_up_batch_size=settings.provided.consumers.catch_up_batch_size,
        claim_lease=settings.provided.consumers.claim_lease,
        batch_timeout=settings.provided.consumers.batch_timeout,
        read_ahead=settings.provided.consumers.read_ahead,
        concurrent_batches=settings.provided.consumers.concurrent_batches,
        on_poison=settings.provided.consumers.on_poison,
        poison_attempts=settings.provided.consumers.poison_attempts,
        poison_order=settings.provided.consumers.poison_order,
        metrics=metrics,
    )

    # A versioned projection's consumer with this node's settings: the live
    # version and, while a rebuild runs, the next one (eventcomposition.projections):
    #   providers.Factory(EventRuntimeContainer.versioned_consumer,
    #       projection=VersionedProjection(...), subscription_requests=[...])
    versioned_consumer = providers.Factory(
        make_versioned_consumer,
        event_store=event_store,
        checkpoint_store=checkpoint_store,
        node_id=node_id,
        batch_size=settings.provided.consumers.batch_size,
        catch_up_batch_size=settings.provided.consumers.catch_up_batch_size,
        claim_lease=settings.provided.consumers.claim_lease,
        on_poison=settings.provided.consumers.on_poison,
        poison_attempts=settings.provided.consumers.poison_attempts,
        poison_order=settings.provided.consumers.poison_order,
        batch_timeout=settings.provided.consumers.batch_timeout,
        read_ahead=settings.provided.consumers.read_ahead,
        concurrent_batches=settings.provided.consumers.concurrent_batches,
        metrics=metrics,
    )

    # What the node registers on its runtime: redefine it in a subclass, or
    # override it.
    consumers = providers.List()

    # The application's own database migrations (eventcomposition.schema.Migration,
    # or paths of .sql files), applied in order after this package's schema by
    # `db migrate --app` and `run --migrate`: redefine it in a subclass.
    migrations = providers.List()

    event_runtime = providers.Singleton(
        EventRuntime,
        node_id=node_id,
        event_broker=broker,
        service_manager=service_manager,
        default_consumer_settings=consumer_settings,
        role=role,
        metrics=metrics,
    )

    # The node's own services, each on or off as the settings say.
    notify_listener = providers.Selector(
        providers.Callable(switch, providers.Callable(wakes_by_notification, settings)),
        on=providers.Singleton(
            NotifyListener,
            providers.Callable(PostgresSettings.conninfo, postgres_settings),
            event_runtime,
            node_id=node_id,
        ),
        off=providers.Object(None),
    )
    head_reader = providers.Selector(
        storage_type,
        memory=providers.Singleton(InMemoryHeadReader, cluster_state.provided.adapter),
        postgres=providers.Singleton(PostgresHeadReader, connection_pool),
    )
    holdings = providers.Singleton(
        LagReader,
        held=providers.Callable(held_sources_of, event_runtime),
        # Per-event consumers' positions from their state store, the others' from
        # the checkpoint store.
        checkpoints=providers.Callable(
            checkpoints_of,
            event_runtime,
            providers.Callable(checkpoint_reader, checkpoint_store),
        ),
        heads=head_reader,
    )
    http_server = providers.Selector(
        providers.Callable(switch, settings.provided.http.enabled),
        on=providers.Singleton(
            NodeHttpServer,
            holdings=holdings,
            metrics=metrics,
            host=settings.provided.http.host,
            port=settings.provided.http.port,
            max_lag_events=settings.provided.health.max_lag_events,
            lag_trend_window=settings.provided.health.lag_trend_window,
            database=providers.Selector(
                storage_type,
                memory=providers.Object(None),
                postgres=providers.Singleton(PostgresCheck, connection_pool),
            ),
        ),
        off=providers.Object(None),
    )

    # The application's extra services (async context managers), entered after
    # the node's own, once the runtime runs, and exited before it stops:
    # redefine or override it.
    services = providers.List()

    node = providers.Singleton(
        new_node,
        runtime=event_runtime,
        registrations=consumers,
        services=providers.Callable(
            node_services, providers.List(notify_listener, http_server), services
        ),
        database=database,
    )

    # The node's runtime, registered and not started; ``shutdown(container)``
    # stops it and closes the database.
    runtime = providers.Resource(node_runtime, node)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        use_redefinitions(cls)
