"""The sample application's events: orders placed by customers, in one category.

Every "order-placed" event goes to the stream of its customer in the one ``orders``
category. The subscriber group requests that category split into partitions (by a
stable hash of the stream name, see ``consumers.partitions``), so that the
coordinator can spread it over the observers while each customer's orders stay in
order in one stream. Writers know nothing of the partitions.
"""

import random
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from itertools import batched
from typing import Literal

from logicblocks.event.store import EventStore
from logicblocks.event.types import JsonValue, NewEvent

from ..consumers.partitions import (
    DEFAULT_PARTITION_COUNT,
    CategoryPartition,
    partitions_of,
)
from .totals import CustomerTotals

ORDER_PLACED = "order-placed"
DEFAULT_CUSTOMERS = 50
DEFAULT_BATCH_SIZE = 100

type Defect = Literal["missing-amount", "non-integer-amount"]
"""How a malformed order is broken."""


@dataclass(frozen=True)
class DemoNames:
    """The names one run of the sample application uses.

    A ``run_id`` scopes every name (category, subscriber group, projection), so
    runs sharing one database do not see each other's events, consumer state or
    projections. Without one the names are the plain ``orders``,
    ``customer-totals`` and ``customer-totals``.
    """

    run_id: str = ""

    def _scoped(self, base: str) -> str:
        return f"{base}-{self.run_id}" if self.run_id else base

    @property
    def subscriber_group(self) -> str:
        return self._scoped("customer-totals")

    @property
    def projection_name(self) -> str:
        return self._scoped("customer-totals")

    def node_id(self, base: str) -> str:
        """A node's id in this run: on a shared database, apart from other clusters."""
        return self._scoped(base)

    @property
    def category(self) -> str:
        """The one category every order is published to."""
        return self._scoped("orders")

    def partitions(
        self, count: int = DEFAULT_PARTITION_COUNT
    ) -> list[CategoryPartition]:
        """The order category split ``count`` ways: what the subscriber group
        requests."""
        return partitions_of(self.category, count)


@dataclass(frozen=True)
class Order:
    """One order to publish; a ``defect`` makes its event malformed."""

    order_id: str
    customer_id: str
    amount_cents: int
    defect: Defect | None = None

    @property
    def malformed(self) -> bool:
        return self.defect is not None

    def payload(self) -> dict[str, JsonValue]:
        payload: dict[str, JsonValue] = {
            "order_id": self.order_id,
            "customer_id": self.customer_id,
        }
        match self.defect:
            case None:
                payload["amount_cents"] = self.amount_cents
            case "non-integer-amount":
                payload["amount_cents"] = f"{self.amount_cents / 100:.2f}"
            case "missing-amount":
                pass
        return payload

    def event(self) -> NewEvent[str, JsonValue]:
        return NewEvent(name=ORDER_PLACED, payload=self.payload())


def generate_orders(
    count: int,
    *,
    customers: int = DEFAULT_CUSTOMERS,
    malformed: int = 0,
    seed: int = 0,
) -> list[Order]:
    """``count`` orders over ``customers`` customers, the same for the same seed.

    ``malformed`` of them (chosen by the seed) are broken, alternately without an
    amount and with a non-integer amount.
    """
    if count < 0 or customers < 1 or not 0 <= malformed <= count:
        raise ValueError(
            "need count >= 0, customers >= 1 and 0 <= malformed <= count; got "
            f"count={count}, customers={customers}, malformed={malformed}"
        )
    rng = random.Random(seed)
    customer_ids = [f"customer-{n:04d}" for n in range(customers)]
    broken = sorted(rng.sample(range(count), malformed))
    defects: dict[int, Defect] = {
        index: "missing-amount" if rank % 2 == 0 else "non-integer-amount"
        for rank, index in enumerate(broken)
    }
    return [
        Order(
            order_id=f"order-{n:06d}",
            customer_id=rng.choice(customer_ids),
            amount_cents=rng.randint(100, 50_000),
            defect=defects.get(n),
        )
        for n in range(count)
    ]


async def publish_in_batches(
    event_store: EventStore,
    orders: Iterable[Order],
    *,
    names: DemoNames,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> AsyncIterator[int]:
    """Publish ``orders`` in batches; yields how many are published after each.

    Within a batch the orders of one customer go out in one call, in order, so
    each customer's stream keeps the order of ``orders``.
    """
    published = 0
    for batch in batched(orders, batch_size, strict=False):
        by_customer: dict[str, list[Order]] = {}
        for order in batch:
            by_customer.setdefault(order.customer_id, []).append(order)
        for customer_id, customer_orders in by_customer.items():
            await event_store.stream(
                category=names.category, stream=customer_id
            ).publish(events=[order.event() for order in customer_orders])
        published += len(batch)
        yield published


async def publish_orders(
    event_store: EventStore,
    orders: Sequence[Order],
    *,
    names: DemoNames,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> int:
    """Publish ``orders`` (see ``publish_in_batches``); returns how many."""
    published = 0
    async for count in publish_in_batches(
        event_store, orders, names=names, batch_size=batch_size
    ):
        published = count
    return published


def expected_totals(orders: Iterable[Order]) -> dict[str, CustomerTotals]:
    """The projection the published ``orders`` must end in.

    Every customer with an event has totals, zero when all its orders were
    malformed (the projection records that it has seen them).
    """
    totals: dict[str, CustomerTotals] = {}
    for order in orders:
        current = totals.get(order.customer_id, CustomerTotals())
        totals[order.customer_id] = (
            current if order.malformed else current.add(order.amount_cents)
        )
    return totals
