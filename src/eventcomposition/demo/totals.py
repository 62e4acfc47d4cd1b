"""The sample projection: order count and total amount per customer."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

from logicblocks.event.projection import ProjectionStore
from logicblocks.event.query import (
    FilterClause,
    OffsetPagingClause,
    Operator,
    Path,
    SortClause,
    SortField,
    SortOrder,
)
from logicblocks.event.types import JsonValue

_PAGE_SIZE = 500


@dataclass(frozen=True)
class CustomerTotals:
    """The state of one customer's projection."""

    order_count: int = 0
    total_amount_cents: int = 0

    def add(self, amount_cents: int) -> Self:
        return type(self)(
            order_count=self.order_count + 1,
            total_amount_cents=self.total_amount_cents + amount_cents,
        )

    def serialise(self, fallback: Callable[[object], JsonValue]) -> JsonValue:
        return {
            "order_count": self.order_count,
            "total_amount_cents": self.total_amount_cents,
        }

    @classmethod
    def deserialise(
        cls, value: JsonValue, fallback: Callable[[type[Any], JsonValue], Any]
    ) -> Self:
        match value:
            case {"order_count": int(count), "total_amount_cents": int(total)}:
                return cls(order_count=count, total_amount_cents=total)
        result: Self = fallback(cls, value)
        return result


@dataclass(frozen=True)
class AppliedPosition:
    """The metadata of one customer's projection: the last stream position applied.

    Delivery is at least once, so an event may come again; one at or below this
    position has been applied already.
    """

    position: int = -1

    def serialise(self, fallback: Callable[[object], JsonValue]) -> JsonValue:
        return {"last_applied_position": self.position}

    @classmethod
    def deserialise(
        cls, value: JsonValue, fallback: Callable[[type[Any], JsonValue], Any]
    ) -> Self:
        match value:
            case {"last_applied_position": int(position)}:
                return cls(position=position)
        result: Self = fallback(cls, value)
        return result


async def read_totals(
    projection_store: ProjectionStore, projection_name: str
) -> dict[str, CustomerTotals]:
    """Every customer's totals in the projection ``projection_name``, by customer."""
    totals: dict[str, CustomerTotals] = {}
    page = 1
    while True:
        found = await projection_store.search(
            filters=[FilterClause(Operator.EQUAL, Path("name"), projection_name)],
            sort=SortClause(fields=[SortField(Path("id"), SortOrder.ASC)]),
            paging=OffsetPagingClause(page_number=page, item_count=_PAGE_SIZE),
            state_type=CustomerTotals,
        )
        totals.update((projection.id, projection.state) for projection in found)
        if len(found) < _PAGE_SIZE:
            return totals
        page += 1
