"""The sample application's container: how an application declares its consumers.

    eventcomposition run --app eventcomposition.demo:DemoContainer --role observer

An application subclasses ``EventRuntimeContainer``, declares its own providers
(here a projection store and a processor) and redefines ``consumers``. Providers of
the base are referred to as ``EventRuntimeContainer.<name>`` in the class body.
"""

from dependency_injector import providers
from logicblocks.event.projection import (
    InMemoryProjectionStorageAdapter,
    PostgresProjectionStorageAdapter,
    ProjectionStore,
)

from ..consumers import make_subscription_consumer
from ..containers import EventRuntimeContainer
from ..runtime import SubscriptionConsumerRegistration
from .orders import DemoNames
from .processor import CustomerTotalsProcessor


class DemoContainer(EventRuntimeContainer):
    """One node of the sample application: orders projected into customer totals.

    ``names`` scopes the categories, subscriber group and projection (override it
    with a ``DemoNames(run_id=...)`` to keep runs apart in one database).
    Projections are stored in memory or in PostgreSQL's ``projections`` table,
    following ``storage.type``; the PostgreSQL adapter shares the node's pool.
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

    processor = providers.Singleton(
        CustomerTotalsProcessor,
        projection_store=projection_store,
        projection_name=names.provided.projection_name,
    )

    consumers = providers.List(
        providers.Factory(
            SubscriptionConsumerRegistration,
            consumer=providers.Factory(
                make_subscription_consumer,
                event_store=EventRuntimeContainer.event_store,
                subscriber_group=names.provided.subscriber_group,
                subscription_requests=providers.Callable(DemoNames.categories, names),
                event_processor=processor,
            ),
        )
    )
