"""The sample application with per-event handlers, for the throughput benchmark.

``DemoContainer`` with its processor replaced by an ``EventHandler`` (per-event
code) on the same transactional consumer, in two styles:

- ``HandlerDemoContainer``: each order-placed event is folded into the batch's
  changes (``transaction.batch_state``), written once per batch with the demo's
  upsert: per-event code at batch speed.
- ``StatementHandlerDemoContainer``: one upsert per event through the
  transaction: the plain way, a round trip per event.

    eventcomposition run --app benchmarks.handler_app:HandlerDemoContainer

A subclass of a subclass refers to the providers it inherits through its direct
base (``DemoContainer.<name>``): those are the ones its node opens.
"""

from typing import Any

from dependency_injector import providers
from logicblocks.event.types import StoredEvent

from eventcomposition.consumers import EventHandler, Transaction
from eventcomposition.containers.demo import DemoContainer
from eventcomposition.demo import DemoNames
from eventcomposition.demo.batches import CustomerChange, PostgresCustomerTotals
from eventcomposition.demo.orders import ORDER_PLACED
from eventcomposition.demo.processor import MalformedOrderError, amount_of
from eventcomposition.demo.totals import CustomerTotals
from eventcomposition.runtime import SubscriptionConsumerRegistration

type Changes = dict[str, CustomerChange]


def _added(change: CustomerChange | None, event: StoredEvent) -> CustomerChange:
    """``change`` (or none yet) with ``event``'s order added; a malformed order
    adds nothing."""
    change = change or CustomerChange(event.category, event.stream, CustomerTotals())
    try:
        amount = amount_of(event.payload)
    except MalformedOrderError:
        return change
    return CustomerChange(
        change.category, change.customer_id, change.totals.add(amount)
    )


class CustomerTotalsHandler(EventHandler):
    """Folds each order into the batch's changes; writes them once per batch."""

    def __init__(self, projection_name: str) -> None:
        self._writer = PostgresCustomerTotals(projection_name)

    async def process_event(self, event: StoredEvent, transaction: Transaction) -> None:
        if event.name != ORDER_PLACED:
            return
        changes = transaction.batch_state(self, dict[str, CustomerChange], self._write)
        changes[event.stream] = _added(changes.get(event.stream), event)

    async def _write(self, changes: Changes, transaction: Transaction) -> None:
        await self._writer.write(list(changes.values()), transaction)


class StatementCustomerTotalsHandler(EventHandler):
    """Writes each order with one upsert of its own."""

    def __init__(self, projection_name: str) -> None:
        self._writer = PostgresCustomerTotals(projection_name)

    async def process_event(self, event: StoredEvent, transaction: Transaction) -> None:
        if event.name == ORDER_PLACED:
            await self._writer.write([_added(None, event)], transaction)


def _consumers(handler: providers.Provider[Any]) -> providers.List:
    return providers.List(
        providers.Factory(
            SubscriptionConsumerRegistration,
            consumer=providers.Factory(
                DemoContainer.transactional_consumer,
                subscriber_group=DemoContainer.names.provided.subscriber_group,
                subscription_requests=providers.Callable(
                    DemoNames.partitions, DemoContainer.names
                ),
                processor=handler,
            ),
        )
    )


class HandlerDemoContainer(DemoContainer):
    handler = providers.Singleton(
        CustomerTotalsHandler,
        projection_name=DemoContainer.names.provided.projection_name,
    )
    consumers = _consumers(handler)


class StatementHandlerDemoContainer(DemoContainer):
    handler = providers.Singleton(
        StatementCustomerTotalsHandler,
        projection_name=DemoContainer.names.provided.projection_name,
    )
    consumers = _consumers(handler)
