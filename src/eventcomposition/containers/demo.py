"""The sample application's container: how an application declares its consumers.

    eventcomposition run --app eventcomposition.containers.demo:DemoContainer --role observer

An application subclasses ``EventRuntimeContainer``, declares its own providers
(here a projection store and a batch processor) and redefines ``consumers``, here
with one transactional consumer specialised from the base's
``transactional_consumer`` (this node's batch size, lease and poison policy).
Providers of the base are referred to as ``EventRuntimeContainer.<name>`` in the
class body.
``demo_node`` is how the demo command builds its nodes without knowing containers.
"""

from dependency_injector import providers
from logicblocks.event.projection import (
    InMemoryProjectionStorageAdapter,
    PostgresProjectionStorageAdapter,
    ProjectionStore,
)

from ..consumers.partitions import CategoryPartition
from ..demo.batches import InMemoryCustomerTotals, PostgresCustomerTotals
from ..demo.cluster import DemoNode, SharedMemory
from ..demo.orders import DemoNames
from ..runtime import SubscriptionConsumerRegistration
from ..settings import EventCompositionSettings
from . import build_container, resolve
from .declarations import EventRuntimeContainer


def demo_partitions(
    names: DemoNames, settings: EventCompositionSettings
) -> list[CategoryPartition]:
    """The order category in as many partitions as the settings give its group."""
    return names.partitions(settings.consumers.partition_count(names.subscriber_group))


class DemoContainer(EventRuntimeContainer):
    """One node of the sample application: orders projected into customer totals.

    ``names`` scopes the categories, subscriber group and projection (override it
    with a ``DemoNames(run_id=...)`` to keep runs apart in one database).
    Projections are stored in memory or in PostgreSQL's ``projections`` table,
    following ``storage.type``: on PostgreSQL the processor writes each batch's
    totals in the batch's transaction, in memory once the batch commits; the
    projection store (which reads them) shares the node's pool.
    """

    names = providers.Object(DemoNames())

    projection_storage_adapter = providers.Selector(
        EventRuntimeContainer.storage_type,
        memory=providers.Singleton(InMemoryProjectionStorageAdapter),
        postgres=providers.Singleton(
            PostgresProjectionStorageAdapter,
            connection_source=EventRuntimeContainer.connection_pool,
        ),
    )
    projection_store = providers.Singleton(
        ProjectionStore, adapter=projection_storage_adapter
    )

    processor = providers.Selector(
        EventRuntimeContainer.storage_type,
        memory=providers.Singleton(
            InMemoryCustomerTotals,
            projection_store=projection_store,
            projection_name=names.provided.projection_name,
        ),
        postgres=providers.Singleton(
            PostgresCustomerTotals, projection_name=names.provided.projection_name
        ),
    )

    consumers = providers.List(
        providers.Factory(
            SubscriptionConsumerRegistration,
            consumer=providers.Factory(
                EventRuntimeContainer.transactional_consumer,
                subscriber_group=names.provided.subscriber_group,
                subscription_requests=providers.Callable(
                    demo_partitions, names, EventRuntimeContainer.settings
                ),
                processor=processor,
            ),
        )
    )


async def demo_node(
    settings: EventCompositionSettings,
    names: DemoNames,
    shared: SharedMemory | None = None,
) -> DemoNode:
    """One node of the sample application over ``settings``, not started.

    ``shared`` makes in-memory nodes of one process share their events,
    coordination state, checkpoints and claims, and projections.
    """
    container = build_container(DemoContainer, settings)
    container.names.override(providers.Object(names))
    if shared is not None:
        container.cluster_state.override(providers.Object(shared.cluster_state))
        container.checkpoint_store.override(providers.Object(shared.checkpoints))
        container.projection_storage_adapter.override(
            providers.Object(shared.projections)
        )
    return DemoNode(
        node=await resolve(container.node),
        processor=await resolve(container.processor),
        event_store=await resolve(container.event_store),
        projection_store=await resolve(container.projection_store),
        pool=await resolve(container.connection_pool)
        if settings.storage.type == "postgres"
        else None,
    )
