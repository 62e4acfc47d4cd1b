"""Application containers inherit from each other at any depth.

A subclass may refer to a base's providers through any class of its ancestry
(``EventRuntimeContainer.transactional_consumer`` or ``OrdersApp.transactional_consumer``):
either way its consumers use the settings, stores and node id of the container
that is built. Nothing here connects to PostgreSQL: the pool is created closed.
"""

from collections.abc import Sequence

import pytest
from dependency_injector import providers
from logicblocks.event.types import CategoryIdentifier, StoredEvent

from eventcomposition.consumers import (
    BatchProcessor,
    PostgresCheckpointStore,
    Transaction,
    TransactionalConsumer,
)
from eventcomposition.consumers.postgres import PostgresEventReader
from eventcomposition.containers import EventRuntimeContainer, build_container
from eventcomposition.runtime import SubscriptionConsumerRegistration
from eventcomposition.settings import load_settings


class Recorder(BatchProcessor):
    async def process_batch(
        self, events: Sequence[StoredEvent], transaction: Transaction
    ) -> None:
        pass


def consumers_from(
    base: providers.Factory[TransactionalConsumer], group: str
) -> providers.List:
    return providers.List(
        providers.Factory(
            SubscriptionConsumerRegistration,
            consumer=providers.Factory(
                base,
                subscriber_group=group,
                subscription_requests=[CategoryIdentifier(category="orders")],
                processor=providers.Singleton(Recorder),
            ),
        )
    )


class OrdersApp(EventRuntimeContainer):
    consumers = consumers_from(EventRuntimeContainer.transactional_consumer, "d1")


class FixedByRoot(OrdersApp):
    consumers = consumers_from(EventRuntimeContainer.transactional_consumer, "d2")


class FixedByParent(OrdersApp):
    consumers = consumers_from(OrdersApp.transactional_consumer, "d2")


class VariantByRoot(FixedByRoot):
    consumers = consumers_from(EventRuntimeContainer.transactional_consumer, "d3")


class VariantByGrandparent(FixedByParent):
    consumers = consumers_from(OrdersApp.transactional_consumer, "d3")


class VariantByParent(FixedByParent):
    consumers = consumers_from(FixedByParent.transactional_consumer, "d3")


APPS = [
    OrdersApp,
    FixedByRoot,
    FixedByParent,
    VariantByRoot,
    VariantByGrandparent,
    VariantByParent,
]


@pytest.mark.parametrize("app", APPS, ids=lambda app: app.__name__)
def test_consumers_use_the_built_containers_postgres_parts(
    app: type[EventRuntimeContainer],
) -> None:
    settings = load_settings(
        "test",
        storage={"type": "postgres", "postgres": {"password": "unused"}},
        node={"id": "node-from-cli"},
    )
    container = build_container(app, settings)

    [registration] = container.consumers()
    consumer = registration.consumer

    assert isinstance(consumer, TransactionalConsumer)
    assert consumer.checkpoint_store is container.checkpoint_store()
    assert isinstance(consumer.checkpoint_store, PostgresCheckpointStore)
    assert isinstance(consumer.event_reader, PostgresEventReader)
    assert consumer.holder.node_id == "node-from-cli"


@pytest.mark.parametrize("app", APPS, ids=lambda app: app.__name__)
def test_the_node_registers_the_most_derived_consumers(
    app: type[EventRuntimeContainer],
) -> None:
    container = build_container(app, load_settings("test", node={"id": "n1"}))
    expected = container.consumers()[0].consumer.group

    assert expected == {1: "d1", 2: "d2", 3: "d3"}[depth(app)]
    assert container.event_runtime().node_id == "n1"


def depth(app: type) -> int:
    return app.__mro__.index(EventRuntimeContainer)
