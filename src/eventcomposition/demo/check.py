"""Whether a demo run is correct: what it published, what the nodes did, the totals."""

from collections.abc import Sequence
from dataclasses import dataclass

from .cluster import NodeSummary
from .orders import Order, expected_totals
from .totals import CustomerTotals


@dataclass(frozen=True)
class DemoResult:
    """What a run published, what the nodes did, and whether it is correct."""

    orders: Sequence[Order]
    nodes: Sequence[NodeSummary]
    totals: dict[str, CustomerTotals]
    elapsed_seconds: float
    storage: str
    timed_out: bool

    @property
    def valid(self) -> int:
        return sum(not order.malformed for order in self.orders)

    @property
    def malformed(self) -> int:
        return len(self.orders) - self.valid

    @property
    def applied(self) -> int:
        return sum(node.applied for node in self.nodes)

    @property
    def rejected(self) -> int:
        return sum(node.malformed for node in self.nodes)

    def problem(self) -> str | None:
        """Why the run is not correct, in one line; ``None`` when it is."""
        if self.applied != self.valid:
            waited = " within the timeout" if self.timed_out else ""
            return f"{self.applied} of {self.valid} valid events were applied{waited}"
        if self.rejected != self.malformed:
            return f"{self.rejected} of {self.malformed} malformed events were rejected"
        expected = expected_totals(self.orders)
        wrong = sorted(
            customer
            for customer in expected.keys() | self.totals.keys()
            if expected.get(customer) != self.totals.get(customer)
        )
        if wrong:
            first = wrong[0]
            return (
                f"the projection is wrong for {len(wrong)} customer(s), e.g. {first}: "
                f"expected {_describe(expected.get(first))}, "
                f"found {_describe(self.totals.get(first))}"
            )
        return None


def _describe(totals: CustomerTotals | None) -> str:
    if totals is None:
        return "no totals"
    return f"{totals.order_count} orders, {totals.total_amount_cents} cents"
